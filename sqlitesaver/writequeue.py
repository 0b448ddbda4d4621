"""Group commit for the library's own writes: callers queue their statements, one thread runs
them all in one transaction (issue #15).

A ``put``, ``put_writes`` or ``append_log`` is a few statements that need nothing from the
calling thread once their arguments are encoded. So instead of each caller taking the write
connection in turn (a lock handed from thread to thread, each hand-off a context switch), a
caller appends its statements (``work``, a function of the write connection) to the queue and
waits. The first caller to find no leader leads: it takes everything queued, runs each item
under its own SAVEPOINT inside one transition of the write connection (``_Transaction``, the
interrupt-hardened protocol in saver.py, which also lets ``transaction()`` blocks of other
threads join the same commit), COMMITs once, and tells every item its outcome. Items queued
while it worked are led by the first of them. A lone writer finds no leader and leads at once:
it never waits to gather.

Guarantees, the same as a write that takes the connection itself:

* An item's caller returns normally only if the COMMIT that holds its statements returned:
  ``done`` is set with a value only after ``_Transaction.__exit__`` returned and its batch
  reports ``committed``.
* An item that fails (its own error: a missing parent, a constraint) is rolled back to its
  savepoint and fails alone; the others commit. An error that ends the whole transaction (an
  I/O error, a failed COMMIT, an interruption of the leader) fails every item that was not
  already refused, each with its own exception object; an interruption after the COMMIT was
  issued says ``maybe_committed``.
* Every item is taken by exactly one leader (one assignment under the queue's lock) and gets
  an outcome from that leader, however it ends (``try``/``finally``).
* Nobody waits forever: a caller waits in bounded slices and, when it finds no live leader
  (one that was interrupted before it could hand over), leads itself. Two leaders at once are
  harmless (each runs its own items; the write connection's lock orders them).

Lock order: ``WriteQueue._lock`` is a leaf (never held while taking another lock or waiting);
the leader runs the transition without it.
"""

from __future__ import annotations

import _thread
import collections
import copy
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import apsw

from . import interrupts
from .errors import InterruptedTransitionError, SaverError, translate

if TYPE_CHECKING:
    from .saver import Saver

__all__ = ["WriteQueue"]

#: Seconds a queued caller waits before checking that its batch still has a live leader.
#: Only a leader interrupted between taking the lead and handing it on leaves one without;
#: everything else wakes callers at once.
POLL = 0.2


class _Wake:
    """A wake-up for one waiting thread: :meth:`set` any number of times, :meth:`wait`
    returns True (and consumes it) once set. A bare lock, much cheaper than threading.Event
    (a Condition and a new lock per wait), which every queued write would pay."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        # Callers hold the queue's lock, so no other set() runs meanwhile; a wait() that
        # consumes a wake-up between the test and the release only makes this one early.
        if self._lock.locked():
            try:
                self._lock.release()
            except RuntimeError:
                pass  # consumed and set again by a caller without the queue's lock

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout)


class _Item:
    """One caller's statements and, once known, their outcome."""

    __slots__ = ("work", "doing", "ready", "taken", "done", "value", "error", "thread")

    def __init__(self, work: Callable[[apsw.Connection], Any], doing: str) -> None:
        self.work = work
        self.doing = doing
        self.ready = _Wake()  # set when done, or when handed the lead
        self.taken = False   # a leader holds it: its statements may run and commit
        self.done = False    # value or error is final
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.get_ident()


class WriteQueue:
    """The queue of one Saver. :meth:`run` is the only entry point."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[_Item] = collections.deque()
        self._leader: _Item | None = None  # the item whose thread leads now

    def run(self, saver: "Saver", doing: str, work: Callable[[apsw.Connection], Any],
            transaction: Callable[["Saver", str], Any]) -> Any:
        """Run ``work(conn)`` in a transition of ``saver``'s write connection and return what
        it returned, after the COMMIT that holds it returned; raise what it raised (it alone
        is rolled back), or the error that ended its transaction."""
        item = _Item(work, doing)
        try:
            with interrupts.deferred(), self._lock:
                self._items.append(item)
                if self._leader is None:
                    self._leader = item
            while not item.done:
                if self._leader is not item:
                    if not item.ready.wait(POLL):  # state is read again below either way
                        self._check_leader(item)
                if self._leader is item and not item.done:
                    self._lead(saver, item, transaction)
        except BaseException:
            self._withdraw(item)
            raise
        if item.error is not None:
            raise item.error
        return item.value

    def _check_leader(self, item: _Item) -> None:
        """After a slice of waiting: lead if nobody does (a leader interrupted before it
        handed on leaves ``_leader`` empty, or naming an item that is done or withdrawn)."""
        with interrupts.deferred(), self._lock:
            leader = self._leader
            if not item.taken and (leader is None or leader.done or leader not in self._items
                                   and not leader.taken):
                self._leader = item

    def _lead(self, saver: "Saver", mine: _Item,
              transaction: Callable[["Saver", str], Any]) -> None:
        """Open a transition, then take everything queued (what arrived while the connection
        was busy joins this batch), run it, give each item its outcome, and hand the lead to
        the first item queued meanwhile. An exception of this thread's own (an interruption)
        is re-raised after all that."""
        fresh: collections.deque[_Item] = collections.deque()
        batch: collections.deque[_Item] = fresh
        box = _Run()
        try:
            try:
                try:
                    # The transaction object is referenced by this `with` statement
                    # alone: an exception at the first line of its __exit__ (which no code
                    # can guard) then ends it in its __del__ as the exception leaves the
                    # block (see _Transaction.__del__). No exception is bound to a name here
                    # either: its traceback holds this frame; the cycle would keep them all.
                    with transaction(saver, mine.doing) as conn:
                        box.batch = saver._batch  # this thread holds the connection
                        with interrupts.deferred(), self._lock:
                            batch, self._items = self._items, fresh
                            for item in batch:
                                item.taken = True
                        ran = 0
                        for item in batch:
                            if saver._failure is not None:
                                break  # an I/O error: nothing more runs; all of it fails
                            ran += _run_item(saver, conn, item)
                        if not ran:
                            # Every item failed alone: leave nothing in the batch (it may be
                            # another thread's, which must not count this transition in).
                            raise _NothingRan
                        box.batch.members += ran - 1  # the transition counts as one already
                finally:
                    self._finish(saver, batch, box)
            finally:
                # Again: the one fault the protocol survives may land on the line above.
                self._finish(saver, batch, box)
        except _NothingRan:
            pass  # each item has its own error; the transition was rolled back, as meant
        # An exception propagates to the caller (run() withdraws its item): an interruption
        # of this thread, the transition's error (each other item has its own copy), or an
        # error before this thread's item was taken (the Saver shut down, a busy timeout).

    def _finish(self, saver: "Saver", batch: collections.deque[_Item], box: "_Run") -> None:
        """Give every item of the batch its outcome from how the transition ended (the
        exception propagating through the caller's ``finally``, if any), then wake them and
        hand on the lead. Idempotent; settled twice, for the same reason as in _lead."""
        error = sys.exc_info()[1]
        try:
            _settle(saver, batch, box, error)
        finally:
            _settle(saver, batch, box, error)
            self._hand_on(batch)

    def _hand_on(self, batch: collections.deque[_Item]) -> None:
        """Wake every item of the batch and pass the lead to the first item queued since."""
        with interrupts.deferred(), self._lock:
            self._leader = self._items[0] if self._items else None
            for item in batch:
                item.ready.set()
            if self._leader is not None:
                self._leader.ready.set()

    def _withdraw(self, item: _Item) -> None:
        """The caller is leaving with an exception: an item no leader took is removed (its
        statements never run); an item taken is left to its leader, whose outcome nobody
        reads. A lead this item held passes on."""
        with interrupts.deferred(), self._lock:
            if not item.taken and item in self._items:
                self._items.remove(item)
            if self._leader is item:
                self._leader = self._items[0] if self._items else None
                if self._leader is not None:
                    self._leader.ready.set()


class _NothingRan(Exception):
    """Raised inside a leader's transition whose every item failed: rolls its part back."""


class _Run:
    """The batch of a leader's transition, whose ``committed`` says whether the COMMIT
    returned (the transaction object itself is not kept: see WriteQueue._lead)."""

    __slots__ = ("batch",)

    def __init__(self) -> None:
        self.batch: Any = None

    @property
    def committed(self) -> bool:
        return self.batch is not None and self.batch.committed


def _settle(saver: "Saver", batch: collections.deque[_Item], box: _Run,
            error: BaseException | None) -> None:
    """Give every item of the batch that has no outcome yet the transition's: if its COMMIT
    returned, the items not refused are committed (the only way an item returns normally);
    else each gets the transition's error (its own copy), or InterruptedTransitionError."""
    committed = box.committed
    for item in batch:
        if item.done:
            continue
        if committed:
            pass  # its statements ran and were released into the committed transaction
        elif saver._failure_error is not None and saver._failure is not None:
            # An I/O error ended the transition: every item gets it, as a batch member does.
            item.error = translate(saver._failure_error, saver.path, item.doing)
        elif isinstance(error, SaverError):
            item.error = copy.copy(error)
        else:
            item.error = _interrupted(saver, item.doing, error, box.batch)
        item.done = True


def _run_item(saver: "Saver", conn: apsw.Connection, item: _Item) -> int:
    """An item's statements under their own savepoint; False (and the item done with its
    error) if they raised, rolled back alone."""
    try:
        conn.execute("SAVEPOINT item")
        try:
            item.value = item.work(conn)
        except BaseException:
            _rollback_item(conn)
            raise
        conn.execute("RELEASE item")
    except Exception as exc:
        if isinstance(exc, apsw.Error):
            error = saver._translate(exc, item.doing)
            error.__cause__ = exc  # as `raise ... from exc` would: the SQLite error behind it
            item.error = error
        else:
            item.error = exc
        item.done = True
        return 0
    return 1


def _rollback_item(conn: apsw.Connection) -> None:
    try:
        conn.execute("ROLLBACK TO item")
        conn.execute("RELEASE item")
    except apsw.Error:
        pass  # the transaction itself ended (SQLite rolled it back): the batch fails


def _interrupted(saver: "Saver", doing: str, exc: BaseException | None,
                 batch: Any = None) -> SaverError:
    """The error an item gets when the transition holding it ended with another thread's
    interruption (or a bug) instead of a COMMIT: the same as a member of an interrupted
    batch gets (saver._interrupted), ``maybe_committed`` if its COMMIT had begun."""
    from .saver import _interrupted as interrupted  # saver.py imports this module

    if batch is not None and not batch.done.is_set():
        # Another thread leads the batch the statements were released into, and it has not
        # ended: they may yet commit (the leader's wait for it was interrupted).
        error = InterruptedTransitionError(
            f"{doing} in {saver.path!r}: the thread running the queued writes was interrupted "
            f"({type(exc).__name__}) while another thread's COMMIT of them was pending, so "
            "they may or may not be committed: re-read to find out.", path=saver.path)
        error.maybe_committed = True
        return error
    if batch is not None:
        return interrupted(saver, doing, batch)
    then = "Try again: the Saver stays usable." if saver._failure is None else \
        f"The Saver then shut down ({saver._failure}): open a new one."
    return InterruptedTransitionError(
        f"{doing} in {saver.path!r}: the thread running the queued writes was interrupted "
        f"({type(exc).__name__}) before their transaction began; nothing of it was written. "
        f"{then}", path=saver.path)
