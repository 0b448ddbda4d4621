"""The SQLite read path: the connections a :class:`~sqlitesaver.sqlite.saver.SqliteFileSaver` reads
on, and how each read holds, and lets go of, its snapshot.

Guarantees:

* A read (:class:`_Read`) sees committed data from one consistent snapshot (with
  ``snapshot=False``, one per statement); inside the calling thread's own transaction it reads
  on the write connection instead, and sees that transaction's uncommitted writes.
* At most ``max_readers`` read connections are open at once (:class:`_ReaderPool`). A read
  past that waits, in arrival order, and fails only if the Saver is closed meanwhile; an
  exception anywhere in a read or its wait (``KeyboardInterrupt`` included) gives its
  connection or slot back. Once reads stop, at most :data:`MAX_IDLE_READERS` stay open.
* No read leaves a snapshot behind: its read transaction ends before it returns, a page of
  rows (:func:`_fetch_page`) resets its statement first, and a connection still in a read
  transaction is closed rather than pooled (``SqliteFileSaver._release_reader``). An iterator the
  caller keeps open (``list``, ``read_log``) therefore pins nothing and cannot keep the
  ``-wal`` from resetting.
* An APSW error, or stored text that is not UTF-8, raises the library's own error
  (``SqliteFileSaver._translate``: an I/O error also shuts the Saver down), never a raw exception.

The statements each read runs are the Saver's (:mod:`sqlitesaver.sqlite.sql`, sent by
:mod:`sqlitesaver.sqlite.read_steps`); this module holds none of the schema's. It imports
:mod:`sqlitesaver.sqlite.saver` for type checking only.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import apsw

from .. import interrupts
from .. import saver as _core  # PAGE_BYTES, read at call time
from ..errors import SaverError
# The module, for WAL_CHECKPOINT_WAIT read at call time: a value set on it (tests lower it)
# holds for the checkpoint and for the reads that wait for it alike.
from . import wal

if TYPE_CHECKING:
    from .saver import SqliteFileSaver

#: Read connections kept open once reads stop: a burst of concurrent reads opens up to
#: ``max_readers`` connections (two file descriptors each); when the last read of the burst
#: ends, or once a surplus connection has stayed unused for READER_IDLE_SECONDS, connections
#: past this many are closed. Opening one costs ~0.2 ms (about six get()s), so they are not
#: closed while reads keep overlapping.
MAX_IDLE_READERS = 4
READER_IDLE_SECONDS = 1.0


class _Waiter:
    """A read waiting for a connection: served, in arrival order, with a connection someone
    released (``conn``) or the right to open one (``slot``), or told the pool closed."""

    __slots__ = ("event", "conn", "slot", "closed")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.conn: apsw.Connection | None = None
        self.slot = False
        self.closed = False


class _ReaderPool:
    """The Saver's read connections (issue #13, class 5): at most ``limit`` open at once,
    reads past it wait in arrival order (never fail), and no more than
    :data:`MAX_IDLE_READERS` idle ones stay open once reads stop.

    ``_open`` counts connections open or being opened (idle ones included): a slot is taken
    before opening and given back, or to the next waiter, when a connection is closed or
    fails to open. Every wait and hand-over is undone on any exception (KeyboardInterrupt
    included), so no slot leaks. Reads inside a caller's own transaction never come here.
    """

    __slots__ = ("limit", "_lock", "_idle", "_open", "_waiters", "_closed", "waits")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._idle: collections.deque[tuple[apsw.Connection, float]] = collections.deque()
        self._open = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._closed = False
        self.waits = 0

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"readers_open": self._open, "readers_idle": len(self._idle),
                    "reader_waits": self.waits}

    def acquire(self, open_conn: Callable[[], apsw.Connection],
                closed_error: Callable[[], SaverError],
                section: interrupts.deferred | None = None) -> apsw.Connection:
        """A connection: an idle one, a new one (``open_conn``) while fewer than ``limit`` are
        open, else the next one released, after those already waiting. Raises
        ``closed_error()`` once the pool is closed. (The callables are passed in, not kept:
        no reference cycle through the Saver.) ``section``, the caller's active deferral of
        signals, is ended while this waits (Ctrl-C interrupts the wait) and begun again once
        it is served."""
        waiter = None
        slot = False  # this call holds a slot (to open a connection with) outside any waiter
        try:
            with self._lock:
                if self._closed:
                    raise closed_error()
                if self._waiters or (not self._idle and self._open >= self.limit):
                    waiter = _Waiter()  # behind those already waiting: no overtaking
                    self._waiters.append(waiter)
                    self.waits += 1
                elif self._idle:
                    return self._idle.pop()[0]  # the most recently used: the surplus ages out
                else:
                    self._open += 1
                    slot = True
            if waiter is not None:
                if section is not None:
                    section.__exit__(None, None, None)  # a signal held meanwhile: raised here
                waiter.event.wait()
                if section is not None:
                    section.__enter__()
                if waiter.closed:
                    raise closed_error()
                if waiter.conn is not None:
                    return waiter.conn
                # else served with waiter.slot: open a connection
            return open_conn()
        except BaseException:
            # Whatever was raised where (a KeyboardInterrupt while waiting, a failed open):
            # leave the queue, and pass on the connection or slot this call was holding.
            if waiter is not None:
                self._abandon(waiter)
            elif slot:
                self._free_slot()
            raise

    def release(self, conn: apsw.Connection, reusable: bool) -> None:
        """Take back a connection: to the first waiter, else idle; closed if not
        ``reusable``, after close(), or when it is surplus."""
        surplus = []
        with self._lock:
            if not reusable or self._closed:
                surplus.append(conn)
            elif self._waiters:
                waiter = self._waiters.popleft()
                waiter.conn = conn
                waiter.event.set()
            else:
                now = time.monotonic()
                self._idle.append((conn, now))
                quiet = self._open == len(self._idle)  # nothing else is reading
                while len(self._idle) > MAX_IDLE_READERS and (
                        quiet or now - self._idle[0][1] > READER_IDLE_SECONDS):
                    surplus.append(self._idle.popleft()[0])
        for extra in surplus:
            try:
                extra.close(True)  # a read connection: nothing to lose by forcing it
            except apsw.Error:
                pass
            finally:
                self._free_slot()

    def close(self) -> list[apsw.Connection]:
        """Refuse new reads, fail the waiting ones, and return the idle connections for the
        caller to close; connections in use are closed as they come back."""
        with self._lock:
            self._closed = True
            idle = [conn for conn, _ in self._idle]
            self._idle.clear()
            self._open -= len(idle)
            waiters, self._waiters = self._waiters, collections.deque()
            for waiter in waiters:
                waiter.closed = True
                waiter.event.set()
        return idle

    def _free_slot(self) -> None:
        """A connection was closed or not opened: its slot goes to the first waiter."""
        with self._lock:
            if self._waiters and not self._closed:
                waiter = self._waiters.popleft()
                waiter.slot = True
                waiter.event.set()
            else:
                self._open -= 1

    def _abandon(self, waiter: _Waiter) -> None:
        """``waiter`` gave up (an exception while it waited or was served): take it out of
        the queue, or pass on what it was given."""
        with self._lock:
            try:
                self._waiters.remove(waiter)
                return
            except ValueError:
                pass  # already served
            conn, waiter.conn = waiter.conn, None
            slot, waiter.slot = waiter.slot, False
        if conn is not None:
            self.release(conn, True)
        elif slot:
            self._free_slot()


class _Read:
    """Reads on a pooled read connection, or, inside the calling thread's own transaction, on
    the write connection so the transaction's writes are visible.

    ``snapshot=True`` wraps the block in a read transaction (one consistent snapshot);
    ``snapshot=False`` leaves it to the caller, who may open one with :meth:`snapshot`.
    """

    __slots__ = ("_saver", "_doing", "conn", "_pooled", "_snapshot")

    def __init__(self, saver: SqliteFileSaver, doing: str, *, snapshot: bool = True) -> None:
        self._saver = saver
        self._doing = doing
        self._snapshot = snapshot
        self._pooled = False
        self.conn: apsw.Connection | None = None

    def __enter__(self) -> "_Read":
        saver = self._saver
        saver._check_usable()
        if saver._depth and saver._owner == threading.get_ident():
            self._pooled = False
            self.conn = saver._writer
            return self
        self._pooled = True
        if not saver._readers_open.is_set():  # a forced WAL checkpoint is running
            saver._readers_open.wait(wal.WAL_CHECKPOINT_WAIT)
        if threading.get_ident() != _MAIN_THREAD:
            # Python runs signal handlers in the main thread only: here nothing can land
            # between the lines below, and no deferral (or finalizer) is paid for: ~5% of a
            # get_tuple's instructions (bench/instructions.py, adapter-get).
            conn = saver._reader()  # may wait for a connection: max_readers are in use
            try:
                if self._snapshot:
                    conn.execute("BEGIN")
            except BaseException as exc:
                saver._release_reader(conn, False)  # closed, as below
                if isinstance(exc, apsw.Error):
                    raise saver._translate(exc, self._doing) from exc
                raise
            self.conn = conn
            return self
        # The main thread: this read gives its connection back from a finalizer if a signal
        # skips __exit__ (see _MainThreadRead). Signals are deferred until the connection is
        # bound to this read: in between it is only on the stack, where a KeyboardInterrupt
        # (CPython raises them as a call returns) lost it and its slot for good, until every
        # read waited forever (max_readers lost). The pool lets signals through while the
        # read waits.
        self.__class__ = _MainThreadRead
        held = interrupts.deferred()
        held.__enter__()
        conn = None
        try:
            conn = saver._reader(held)  # may wait for a connection: max_readers are in use
            if self._snapshot:
                conn.execute("BEGIN")
            self.conn = conn
            held.__exit__(None, None, None)  # a signal that came meanwhile: raised here
        except BaseException as exc:
            try:
                if conn is not None:
                    with interrupts.deferred():
                        self.conn = None
                        # Closed, not pooled: a BEGIN that ran would still be open in it.
                        saver._release_reader(conn, False)  # its slot, whatever the exception
            finally:
                held.__exit__(None, None, None)
            if isinstance(exc, apsw.Error):
                raise saver._translate(exc, self._doing) from exc
            raise
        return self

    def _give_back(self, saver: SqliteFileSaver) -> None:
        """End the read snapshot, if any, and give the connection back to the pool (closed
        if it cannot end it)."""
        conn, self.conn = self.conn, None  # one statement: nothing can come between
        reusable = False
        try:
            if not conn.get_autocommit():
                conn.execute("COMMIT")  # ends the read snapshot; nothing to write
            reusable = True
        except apsw.Error:
            pass  # closed by the release below
        finally:
            saver._release_reader(conn, reusable)  # its slot, whatever the exception

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction for the enclosed queries (already there on the writer)."""
        if not self._pooled:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            if not self.conn.get_autocommit():
                self.conn.execute("COMMIT")

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        saver = self._saver
        if self._pooled:
            if type(self) is _MainThreadRead:
                with interrupts.deferred():  # no signal until it is back (see _MainThreadRead)
                    self._give_back(saver)
            else:
                self._give_back(saver)  # no signal can come in this thread
        if isinstance(exc, (apsw.Error, UnicodeDecodeError)):  # the latter: damaged text
            raise saver._translate(exc, self._doing) from exc


class _MainThreadRead(_Read):
    """A :class:`_Read` in the main thread, where signal handlers run: ``_Read.__enter__``
    makes a pooled read one (``__class__`` assignment: the same slots), so that only such
    reads pay for a finalizer."""

    __slots__ = ()

    def __del__(self) -> None:
        # CPython checks for signals at every function's entry, so a KeyboardInterrupt can
        # leave __exit__ before any line of it ran, with this read's connection still out:
        # it goes back (closed, its slot passed on) as this object dies with the frame of the
        # `with` statement (as _Transaction.__del__ does for a write). From another thread:
        # a finalizer may run wherever the garbage collector does, even inside the pool's lock.
        if self._pooled and self.conn is not None:  # no call: no place for a signal to land
            try:
                threading.Thread(target=self._saver._release_reader, args=(self.conn, False),
                                 daemon=True).start()
            except BaseException:  # in a finalizer: nowhere to raise to
                pass


_MAIN_THREAD = threading.main_thread().ident


def _fetch_page(cursor: apsw.Cursor, want: int, payloads: tuple[int, ...]
                ) -> tuple[list[tuple], bool]:
    """The cursor's rows, stopping once the columns ``payloads`` of the rows read hold
    :data:`sqlitesaver.saver.PAGE_BYTES` (the core's, read at call time, as for both engines);
    and whether more rows may follow (``want`` read, or stopped early)."""
    rows = []
    size = 0
    try:
        for row in cursor:
            rows.append(row)
            for column in payloads:
                try:
                    size += len(row[column])
                except TypeError:  # not bytes: damage, which the row's checksum reports
                    pass
            if size >= _core.PAGE_BYTES:
                return rows, True
    finally:
        # An unfinished statement keeps the connection's WAL snapshot alive even past
        # COMMIT: reset it before the read ends, or this pooled reader would serve stale
        # data later (seen on Python 3.10, where the frame outlived the loop).
        _close_cursors(cursor)
    return rows, len(rows) == want


def _close_cursors(*cursors: apsw.Cursor | None) -> None:
    for cursor in cursors:
        if cursor is not None:
            cursor.close(True)  # force: reset even a statement that has rows left
