"""The PostgreSQL engine's connections: :class:`Connections`, the base of
:class:`~sqlitesaver.postgres.engine.Engine`, opens the engine (arguments checked, the server's
durability settings read back and enforced, the schema migrated, the ``BEGIN`` strings built)
and lends pooled connections (:meth:`Connections._connection`: the pool's ``getconn`` and
``putconn``, not its ``connection()``, and how a connection comes back whatever line an
exception lands at, in :class:`_Lent`).

A pooled connection is not checked before use (a round trip per call): one found dead by a
transaction's ``BEGIN`` is replaced (:meth:`Connections._stale`). Every connection out of the
pool carries the token of its checkout in ``_checkouts`` until it is back, which the thread's
pin on a transaction block checks (:mod:`.transactions`). A caller that finds every connection
in use past ``busy_timeout`` gets BusyTimeoutError; a server that cannot be reached,
CannotOpenError (:meth:`Connections._probe`). What an operator needs to see goes to the
``sqlitesaver`` logger (sqlitesaver/log.py): a dead pooled connection replaced, a connection
lost inside a transaction (:meth:`Connections._error`), a long wait for a connection.
"""

from __future__ import annotations

import threading
import time
from threading import get_ident
from collections.abc import Callable, Iterator
from typing import Any

from .. import interrupts, log
from ..interrupts import _MAIN_THREAD
from ..errors import (BusyTimeoutError, DatabaseIOError, InvalidArgumentError,
                      SaverClosedError, SaverError)
from . import connect, pool_class, pooled, schema
from . import errors as pg_errors
from . import target as pg_target
from .sql import (_APPEND_LOG, _LOCK_ALL_THREADS, _LOCKED, _PUT, _PUT_WRITES, ALL_THREADS_LOCK,
                  positional)

_DURABILITY = {"full": "on", "normal": "off"}


def _rollback_if_open(conn: Any) -> None:
    """ROLLBACK if the connection is still inside a transaction (a COMMIT string whose
    statement failed leaves it aborted; a COMMIT that ran left none)."""
    from psycopg.pq import TransactionStatus

    if not conn.broken and conn.info.transaction_status in (TransactionStatus.INTRANS,
                                                           TransactionStatus.INERROR):
        schema._rollback(conn)


def _idle(conn: Any) -> bool:
    """Whether ``conn`` can go back to the pool as it is: outside any transaction
    (``transaction_status`` IDLE, 0: not in one, not mid-statement, not broken) and out of
    libpq's pipeline mode (``pipeline_status`` OFF, 0; always 0 with a libpq before 14). One a
    Ctrl-C left in pipeline mode (at the entry of psycopg's pipeline exit, after its results
    were read) reads IDLE, but the next statement sent on it is pipelined: a transaction
    block's BEGIN then reads ACTIVE, and the block's writes ran outside it
    (tests/test_review20_giveback.py)."""
    pgconn = conn.pgconn
    return not pgconn.transaction_status and not pgconn.pipeline_status


def _close_quietly(conn: Any) -> None:
    """Close ``conn`` (no round trip: libpq's PQfinish sends Terminate on the non-blocking
    socket and closes it), whatever state it is in."""
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closed or broken all the same: the pool discards it
        pass


def _returning(box: list, give_back: Callable[[list], None]) -> Iterator[None]:
    """The fallback of a :class:`_Lent`: a generator suspended while its connection is out,
    which gives back a connection still in ``box`` if it is finalized there (see
    :class:`_Lent`); run to its end by a normal return, with ``box`` empty."""
    try:
        yield
    finally:
        if box:
            give_back(box)


class _ThreadState(threading.local):
    """``txn``: the thread's open transaction block (``_Pinned``) or None; a class default,
    so a thread that never set it reads None without an AttributeError (~80 ns, not ~620)."""

    txn: Any = None


class _Lent:
    """One checkout of a pooled connection, as a ``with`` block
    (:meth:`Connections._connection`): ``__enter__`` takes a connection from the pool
    (``getconn``), ``__exit__`` gives it back (``putconn``), whatever the block raised.

    Not the pool's own ``connection()``: through it and a ``contextlib`` generator of ours, a
    checkout and its return cost 11 us of client CPU, against 6 us here (measured ad hoc, one
    thread, best of 3 rounds of 3,000), on the critical path of every call. What it adds is
    ``with conn:``, which after an exception rolls back a transaction that every caller here
    already rolls back itself, and that the give-back rolls back anyway
    (:meth:`Connections._give_back_ended`; ``putconn`` also closes a connection returned
    mid-statement, and replaces a broken one); and which after a normal end COMMITs a
    transaction left open, which no caller leaves: the give-back rolls one back, the safer
    end (tests/test_postgres_engine.py).

    An exception may land at any line (a KeyboardInterrupt, or one raised into the thread with
    ``PyThreadState_SetAsyncExc``: tests/test_interrupts.py injects one at each), including
    the lines that return the connection. The connection therefore lives in ``box`` (a list)
    from the line that takes it from the pool to the line that returns it (``box.pop()``
    inside the ``putconn`` call, no line between), and a generator (:func:`_returning`),
    started before the connection is taken and run to its end after it is returned, gives
    back whatever is still in ``box`` when it is finalized: when this object is released
    (with the exception that skipped a line, in CPython), or by ``__exit__`` after a
    give-back that raised. It gives it back with no round trip
    (:meth:`Connections._give_back_now`: a connection still inside a transaction is closed,
    and the pool opens another). No ``__del__``: a finalizer run at
    every checkout would be where a Ctrl-C could land and be lost ("Exception ignored in");
    a generator run to its end has nothing left to run when it is released.

    What no line can guard: CPython also delivers an asynchronous exception right after a
    C function returns, so one can land between ``box.pop()`` and ``putconn`` receiving the
    connection, as it can inside psycopg_pool's own ``getconn`` and ``putconn`` (and, before
    this class, its ``connection()``) and inside psycopg's waits. (A Ctrl-C lands in neither
    that gap nor ``putconn``: signals are deferred across both, see
    :meth:`Connections._give_back`; one raised into the thread with
    ``PyThreadState_SetAsyncExc`` can. No deferral spans a round trip: ``putconn`` gets an
    idle or a closed connection, one given back inside a transaction being rolled back
    before it, interruptibly, in :meth:`Connections._give_back_ended`; a deferral held past
    ``interrupts.STALE_AFTER`` delivered its Ctrl-C inside ``putconn``'s own rollback, where
    psycopg_pool caught it and the Ctrl-C was lost: tests/test_review19_putconn.py.) The
    connection is then lost to the pool, never lent twice (a connection left in ``box``
    until ``putconn`` returned could be given back a second time by the fallback, while
    another thread held it)."""

    __slots__ = ("_owner", "_doing", "_box", "_guard")

    def __init__(self, owner: Connections, doing: str) -> None:
        self._owner = owner
        self._doing = doing

    def __enter__(self) -> Any:
        self._box = box = []
        self._guard = guard = _returning(box, self._owner._give_back_now)
        next(guard)
        return self._owner._lend(box, self._doing)

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._owner._give_back(self._box)
        finally:
            # Run to its end even if the give-back raised (a Ctrl-C as its deferral began,
            # before putconn): it gives back what is still in the box now, not only when this
            # object is released, which a kept exception delays (tests/
            # test_postgres_interrupts.py, a signal at every place of interrupts.py's code).
            next(self._guard, None)


class Connections:
    """Opening a PostgreSQL server as a store, and its pool of connections: the base of
    :class:`~sqlitesaver.postgres.engine.Engine` (see engine.py's docstring for what is
    guaranteed)."""

    def __init__(self, target: str, *, durability: str = "full", busy_timeout: float = 5.0,
                 options: connect.Options | None = None, max_connections: int = 10) -> None:
        if durability not in _DURABILITY:
            raise InvalidArgumentError(f"durability must be 'full' or 'normal', not "
                                       f"{durability!r}")
        if (type(busy_timeout) not in (int, float) or not busy_timeout >= 0
                or busy_timeout == float("inf")):
            raise InvalidArgumentError(f"busy_timeout must be a finite number of seconds "
                                       f">= 0, not {busy_timeout!r}")
        if type(max_connections) is not int or max_connections < 1:
            raise InvalidArgumentError(f"max_connections must be an int >= 1, not "
                                       f"{max_connections!r}")
        options = options or connect.Options()
        options.check()
        connect.require_psycopg()
        params = pg_target.parse(target)
        self.server = pg_target.describe(params)
        self.durability = durability
        self.busy_timeout = float(busy_timeout)
        self._options = options
        timeouts = connect.local_timeouts(options)
        first = connect.open_connection(params, self.server, options, doing="opening",
                                        session_timeouts=False)
        try:
            self.server_settings = connect.read_settings(first, self.server)
            connect.check_settings(self.server_settings, durability, self.server,
                                   writing=True)
            self.applied = schema.migrate(first, self.server, begin=f"BEGIN; {timeouts}")
        finally:
            first.close()
        # Writes ask for LZ4 TOAST compression where the server has it (connect.toast_setting)
        toast = connect.toast_setting(self.server_settings)
        begin = f"BEGIN; SET LOCAL synchronous_commit TO {_DURABILITY[durability]}; {timeouts}"
        if toast:
            begin += f"; SET LOCAL default_toast_compression TO {connect.TOAST_COMPRESSION}"
        key1, key2 = ALL_THREADS_LOCK  # after the timeouts: its wait is bounded too
        self._begin = f"{begin}; SELECT pg_advisory_xact_lock_shared({key1}, {key2})"
        self._begin_all = f"{begin}; {_LOCK_ALL_THREADS}"
        self._begin_read = f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {timeouts}"
        self._set_timeouts = connect.set_local_timeouts(options)  # for a pipelined read
        # Session settings on each pooled connection (connect.session_settings), unless it may
        # sit behind a transaction-pooling PgBouncer: prepare_threshold None (the setting for
        # it), or a pooler found between (ServerSettings.direct). There a session-level SET
        # would stay on a server connection other clients get next, and not follow this
        # client's next transaction. The check is made again on each connection the pool
        # opens (connect.session_settings' WHERE, pooled.configure), for a URL of several hosts
        # or a name moved onto a pooler later. With them, a one-statement read needs no
        # transaction or pipeline to set them (reads._read_pipelined: ~80 us of a ~230 us get,
        # session 24), and one-statement writes run under the statement timeout too (it
        # cannot reach their COMMIT: the server stops a statement's timer when its Execute
        # completes, before the implicit COMMIT at Sync; postgres.c, exec_execute_message and
        # finish_xact_command).
        self._session = (connect.session_settings(options)
                         if options.prepare_threshold is not None
                         and self.server_settings.direct else None)
        # A write sent as one statement: its settings and locks first (sql._LOCKED). Of the
        # settings, lock_timeout bounds its lock waits and synchronous_commit its commit; a
        # statement_timeout or plan_cache_mode it sets cannot apply to itself (its timer and
        # plan came first), so it sets neither. default_toast_compression is read when the
        # insert compresses a value, after its settings ran.
        locked = _LOCKED.format(settings=connect.set_write_settings(
            options, synchronous_commit=_DURABILITY[durability], toast=toast),
            key1=key1, key2=key2)
        # As the RawCursor of Transactions._send takes them: $n parameters, names in order.
        self._put = {parent: positional(f"{locked}, {statement}")
                     for parent, statement in _PUT.items()}
        self._put_writes = {kind: positional(f"{locked}, {statement}")
                            for kind, statement in _PUT_WRITES.items()}
        self._append_log = positional(f"{locked}, {_APPEND_LOG}")
        self._params = params  # for a probe when the pool cannot hand out a connection
        self._max_connections = max_connections
        self._connect_errors = 0  # the pool's failed connection attempts, when last looked
        self._count_lock = threading.Lock()
        self.commits = 0  # COMMITs that committed (under _count_lock), for stats()
        self.retries = 0  # transactions run again after a 40001/40P01 (under _count_lock)
        self._pool = self._open_pool(params, max_connections)
        self._closed = False
        self._close_lock = threading.Lock()
        self._local = _ThreadState()  # .txn: the thread's open transaction (_Pinned)
        # id(connection) -> the token of its current checkout from the pool, while out
        self._checkouts: dict[int, object] = {}

    def _open_pool(self, params: dict[str, str], size: int) -> Any:
        from psycopg_pool import PoolTimeout

        pool_class.interruptible_waits()
        ConnectionPool = pool_class.pool_class()

        self._pool_timeout = PoolTimeout  # for _lend's except clauses (no import per call)

        options = self._options
        server = self.server
        kwargs = connect.libpq_params(params, options)
        settings = self._session
        pool = ConnectionPool(
            kwargs=dict(kwargs, autocommit=True, prepare_threshold=options.prepare_threshold),
            # No check= on checkout (a round trip per call): a dead connection is found by the
            # transaction's own statements instead and replaced (see _stale).
            min_size=1, max_size=size, open=False, timeout=max(self.busy_timeout, 0.001),
            configure=lambda conn: pooled.configure(conn, settings),
            name=f"sqlitesaver {server}")
        try:
            pool.open(wait=True, timeout=options.connect_timeout)
        except BaseException as exc:
            pool.close()  # its threads stopped, whatever ended the wait (a Ctrl-C too)
            if not isinstance(exc, Exception):
                raise
            raise pg_errors.translate(exc, server, "opening the connection pool",
                                      connecting=True) from exc
        return pool

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every pooled connection. Idempotent."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._pool.close()

    def settings(self) -> dict[str, object]:
        """The server's durability settings as read at open, and this engine's."""
        s = self.server_settings
        return {"engine": "postgresql", "server": self.server, "durability": self.durability,
                "server_version": s.server_version, "fsync": s.fsync,
                "full_page_writes": s.full_page_writes,
                "synchronous_commit": _DURABILITY[self.durability],
                "server_synchronous_commit": s.synchronous_commit,
                "busy_timeout": self.busy_timeout,
                "prepare_threshold": self._options.prepare_threshold,
                "session_settings": self._session is not None,
                "toast_compression": connect.TOAST_COMPRESSION if s.lz4 else "server default"}

    def _connection(self, doing: str) -> _Lent:
        """A pooled connection for a ``with`` block (see :class:`_Lent`)."""
        return _Lent(self, doing)

    def _lend(self, box: list, doing: str) -> Any:
        """A connection from the pool, put into ``box`` by the line that takes it, and
        registered in ``_checkouts`` (:meth:`_Lent.__enter__`); BusyTimeoutError if every
        connection stays in use past busy_timeout, CannotOpenError if the server cannot be
        reached (:meth:`_probe`)."""
        if self._closed:
            raise SaverClosedError(f"this Saver for {self.server} was closed; open a new "
                                   "Saver.", path=self.server)
        started = time.monotonic()
        try:
            self._take(box, doing, None)
        except self._pool_timeout as exc:
            self._take_late(box, doing, started, exc)
        else:
            waited = time.monotonic() - started
            if waited >= log.BUSY_WAIT_THRESHOLD:  # no call (nor formatting) below it
                log.server_pool_wait(self.server, doing, waited, gave_up=False)
        conn = box[0]
        self._checkouts[id(conn)] = object()
        return conn

    def _take_late(self, box: list, doing: str, started: float, timeout: BaseException
                   ) -> None:
        """After the pool gave no connection within busy_timeout (``timeout``, its
        PoolTimeout): BusyTimeoutError, CannotOpenError, or a connection into ``box``."""
        # Not necessarily busy: with fewer connections than max_connections, the pool was
        # (re)connecting, to a server that is down (say so, as when opening) or was just
        # restarted (give it connect_timeout, as a reconnect, not an error).
        # In use: the connections lent now (_checkouts), not the pool's size minus its idle
        # ones: its size also counts a connection it is reconnecting, which after a failed
        # attempt waits out a backoff (see _ReconnectingPool): counted as in use, a restart
        # made every call BusyTimeoutError until the pool's next attempt, though none was.
        # An exception landing between a checkout and its bookkeeping can only make this
        # count low for a moment (its fallback gives the connection back): the caller then
        # waits connect_timeout more before it is told the pool is busy.
        stats = self._pool.get_stats()
        errors = stats.get("connections_errors", 0)
        failing, self._connect_errors = errors > self._connect_errors, errors
        if len(self._checkouts) >= self._max_connections:
            raise self._busy(doing, started) from timeout
        if failing:
            self._probe(doing, timeout)
        try:
            self._take(box, doing, self._options.connect_timeout)
        except self._pool_timeout as exc:
            self._probe(doing, exc)
            raise self._busy(doing, started) from exc

    def _take(self, box: list, doing: str, timeout: float | None) -> None:
        """A pooled connection appended to ``box`` in the line that takes it (see
        :class:`_Lent`); PoolTimeout raised."""
        try:
            box.append(self._pool.getconn(timeout))
        except self._pool_timeout:
            raise
        except Exception as exc:
            from psycopg_pool import PoolClosed

            if isinstance(exc, PoolClosed):
                raise SaverClosedError(f"this Saver for {self.server} was closed; open a new "
                                       "Saver.", path=self.server) from exc
            raise pg_errors.translate(exc, self.server, doing, connecting=True) from exc

    def _give_back(self, box: list) -> None:
        """The connection in ``box`` back to the pool, its checkout ended first (a stale pin
        never matches a connection back in the pool). It leaves ``box`` in the line that
        returns it (see :class:`_Lent`). One that is not idle is handed to
        :meth:`_give_back_ended`."""
        self._checkouts.pop(id(box[0]), None)
        if not _idle(box[0]):
            self._give_back_ended(box)
            return
        # Signals deferred across putconn: a Ctrl-C inside it (its logging, its reset, before
        # it puts the connection back or schedules a broken one's replacement) lost the
        # connection for good, the pool still counting it (tests/test_block_signals.py).
        # Deferred only in the main thread, where signal handlers run: elsewhere not even made
        # (~0.6 us), as on the SQLite write path (sqlite/transaction.py, _MAIN_THREAD).
        # An idle connection: putconn makes no round trip, so the deferral is short.
        if get_ident() != _MAIN_THREAD:
            self._pool.putconn(box.pop())
            return
        with interrupts.deferred():
            self._pool.putconn(box.pop())

    def _give_back_ended(self, box: list) -> None:
        """Give back the connection in ``box``, which is not idle (:func:`_idle`): inside a
        transaction (no call leaves one; an interruption does, a second Ctrl-C interrupting a
        block's own ROLLBACK), mid-statement, still in libpq's pipeline mode (an interruption
        at the entry of psycopg's pipeline exit), or broken. A transaction is rolled back
        here, before ``putconn`` and with signals not deferred; if that rollback fails (a
        psycopg error) or is interrupted (any other exception: a Ctrl-C, or whatever a
        program's own signal handler raises, which must reach the caller), and in every other
        case, the connection is closed instead and given back all the same
        (:meth:`_give_back_now`), and the interruption raised.

        Why not let ``putconn`` roll it back: it would do so with signals deferred (see
        :meth:`_give_back`), a round trip; with a server that did not answer, a Ctrl-C was
        held for ``interrupts.STALE_AFTER`` s, then delivered inside that rollback, where
        psycopg_pool catches it ("rollback failed: KeyboardInterrupt", its CLIENT_EXCEPTIONS
        being BaseException here, see :func:`~sqlitesaver.postgres.pool_class.interruptible_waits`) and returns normally: the
        Ctrl-C was lost (tests/test_review19_putconn.py). Why not always close it: a rollback
        that works keeps the connection (no reconnect); the pool replaces a closed one in a
        background thread. Here a Ctrl-C during the rollback is psycopg's, as in any statement
        of a call: it sends a cancel request and waits for the server to end the statement
        (each bounded by 5 s from psycopg 3.3, the extra's floor: up to about 10 s with a
        server that does not answer at all, tests/test_review20_giveback.py; a second Ctrl-C
        ends the wait, and the connection is closed), then raises the KeyboardInterrupt.
        Whatever line an exception lands at, the connection is given back once: by the
        ``finally`` below, or, before it, by :class:`_Lent`'s fallback, which closes it (no
        round trip either)."""
        from psycopg import Error
        from psycopg.pq import TransactionStatus

        conn = box[0]
        pgconn = conn.pgconn
        try:
            # Not in pipeline mode: a rollback there would leave it on (closed below instead).
            if not pgconn.pipeline_status and pgconn.transaction_status in (
                    TransactionStatus.INTRANS, TransactionStatus.INERROR):
                conn.rollback()  # psycopg's: also forgets the statements it had prepared
        except Error as exc:  # not rolled back: closed below, as putconn would have
            log.server_rollback_failed(self.server, exc)  # as putconn logged it
        finally:
            self._give_back_now(box)

    def _give_back_now(self, box: list) -> None:
        """The connection in ``box`` back to the pool with no round trip, closed if it is not
        idle (the pool discards a closed connection and opens another in the background), all
        of it with signals deferred: what :meth:`_give_back_ended` ends with, and the
        fallback of a :class:`_Lent` whose give-back an exception interrupted (a rollback
        there could be interrupted again, and the fallback then raise with the connection
        still out). The connection leaves ``box`` in the line that returns it."""
        with interrupts.deferred():
            conn = box[0]
            self._checkouts.pop(id(conn), None)
            if not _idle(conn):  # closing is local (no waiting)
                _close_quietly(conn)
            self._pool.putconn(box.pop())

    def _probe(self, doing: str, cause: BaseException) -> None:
        """A connection of our own, closed at once: raise why the server cannot be reached
        (CannotOpenError, nothing written), or return if it can."""
        try:
            probe = connect.open_connection(self._params, self.server, self._options,
                                            doing=doing, session_timeouts=False)
        except SaverError as exc:
            raise exc from cause
        probe.close()

    def _busy(self, doing: str, started: float) -> BusyTimeoutError:
        """The error of a call that waited for a pooled connection since ``started`` (a
        ``time.monotonic()``) and got none, logged."""
        log.server_pool_wait(self.server, doing, time.monotonic() - started, gave_up=True)
        return BusyTimeoutError(
            f"every connection to {self.server} stayed in use past the busy timeout "
            f"({self.busy_timeout} s) while {doing}; nothing was written. Raise "
            "max_connections or busy_timeout, or make fewer calls at once.", path=self.server)

    def _stale(self, conn: Any, exc: BaseException, tries: int, doing: str) -> bool:
        """Whether ``exc``, raised by a transaction's ``BEGIN`` string (its first statement), or
        by the poll before a one-round-trip put is sent (:func:`.pooled.closed_while_idle`), comes
        from a pooled connection that was already dead (closed by the server while idle in the
        pool, or by a restart): then nothing of the transaction ran, and it runs on another
        connection. Only the BEGIN (or the poll): a connection lost after it (the backend killed
        while running the transaction's own statements) is not retried, as a statement that
        crashes its backend would crash it again on every try, each a crash recovery of the
        whole cluster; the caller gets DatabaseIOError and decides. Once: the pool first
        checks its idle connections (a restart killed them all) and replaces the dead ones,
        so the second try gets a live one or, with the server down, none (the error is then
        raised as usual). A pipelined or one-statement read (:meth:`_read_pipelined`) has no BEGIN
        of its own: one that kills its backend is run twice
        at most. Logged (INFO)."""
        if (tries or not isinstance(exc, Exception) or isinstance(exc, SaverError)
                or not conn.broken):
            return False
        try:
            self._pool.check()
        except Exception:  # the retry's own connection attempt will say why
            pass
        log.server_connection_replaced(self.server, doing)
        return True

    def _error(self, conn: Any, exc: BaseException, doing: str, *, committing: bool = False,
               in_transaction: bool = False) -> SaverError:
        """``exc`` as pg_errors.translate maps it, for the caller to raise ``from exc``; a
        connection lost inside a transaction (DatabaseIOError, ``conn`` broken) logged as a
        WARNING, "maybe committed" if ``committing``."""
        error = pg_errors.translate(exc, self.server, doing, committing=committing,
                                    in_transaction=in_transaction)
        if isinstance(error, DatabaseIOError) and conn.broken:
            log.server_connection_lost(self.server, doing, committing=committing)
        return error
