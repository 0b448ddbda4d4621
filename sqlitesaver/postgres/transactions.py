"""The PostgreSQL engine's transactions: :class:`Transactions` (on :class:`~.pool.Connections`,
a base of :class:`~sqlitesaver.postgres.engine.Engine`) runs every operation's work in one.

* **The write protocol** (:meth:`Transactions._write`): the ``BEGIN`` string (settings, the
  all-threads lock, the threads' locks, a first lookup) and the ``COMMIT`` string (the last
  statements, then ``COMMIT``, checked to have committed), a serialization failure or deadlock
  retried whole until ``busy_timeout``, a connection lost during COMMIT "maybe committed".
  :meth:`Transactions._write_statement` is the same in one round trip, for a write whose one
  statement decides everything on the server (a put): its settings, locks and writes in one
  statement, its own transaction, "maybe committed" once it is sent.
* **The caller's transaction blocks** (:meth:`Transactions.transaction`): one server
  transaction pinned to the calling thread's connection, each call in a savepoint of its own,
  a nested block a savepoint; the pin is trusted only while its checkout is current
  (:meth:`Transactions._pinned`).
* **Logged** (sqlitesaver/log.py): each retry (DEBUG), a call's retries past
  ``log.BUSY_WAIT_THRESHOLD`` seconds in all (WARNING), a connection lost (WARNING).
* **Lock order**: the all-threads lock (shared, or exclusive), then each thread's, sorted
  (:meth:`Transactions._lock_threads`, :meth:`Transactions._begin_locking`).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from .. import log
from ..errors import DatabaseIOError, SaverError
from . import errors as pg_errors
from . import schema
from .pool import Connections, _rollback_if_open
from .pooled import closed_while_idle
from .sql import _LOCK_ALL_THREADS, _LOCK_THREAD, THREAD_LOCK

T = TypeVar("T")


class _Pinned:
    """The calling thread's open :meth:`Engine.transaction`: its connection, how many blocks
    deep it is (1: the outermost), and the token of the connection's checkout (see
    :meth:`Engine._pinned`)."""

    __slots__ = ("conn", "depth", "token")

    def __init__(self, conn: Any, token: object) -> None:
        self.conn = conn
        self.depth = 1
        self.token = token


def _undo_savepoint(conn: Any, name: str) -> None:
    """Roll back to the savepoint and drop it; if the connection cannot (lost), the error
    being raised is the one that matters, and the transaction's COMMIT will fail."""
    try:
        conn.execute(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}", prepare=False)
    except Exception:
        pass


def _inline(conn: Any, query: str, params: Sequence[object]) -> str:
    """``query`` with ``params`` merged in as literals, quoted by psycopg for ``conn`` (its
    encoding, ``standard_conforming_strings``), to go into a string of several statements:
    the simple-query protocol takes such a string in one round trip, but binds no parameters
    (the extended protocol, which binds them, takes one statement per round trip)."""
    from psycopg import ClientCursor

    return ClientCursor(conn).mogrify(query, params)


def _last(cursor: Any) -> Any:
    """``cursor`` moved to the result of the last statement of its string."""
    while cursor.nextset():
        pass
    return cursor


class _Tx:
    """A write's connection as its work sees it (everything not here is the connection's):
    ``row`` is the result row of the statement sent in the ``BEGIN`` string (``first``, or
    None), and :meth:`later` queues a statement to be sent in the ``COMMIT`` string, so a
    put is two round trips. Inside a transaction block (a savepoint) there is no such
    string: ``later`` runs the statement at once."""

    __slots__ = ("conn", "row", "finals", "_now")

    def __init__(self, conn: Any, row: Any, *, now: bool = False) -> None:
        self.conn, self.row, self.finals, self._now = conn, row, [], now

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.conn.execute(*args, **kwargs)

    def later(self, query: str, params: Sequence[object]) -> None:
        if self._now:
            self.conn.execute(query, params)
        else:
            self.finals.append((query, params))


class _Step:
    """How far one attempt at a write got (:meth:`Transactions._retrying`): ``begun``, past
    the point where a dead connection can no longer be replaced (something of it may have
    run); ``committing``, past the point where a lost connection is "maybe committed"."""

    __slots__ = ("begun", "committing")

    def __init__(self) -> None:
        self.begun = self.committing = False


class Transactions(Connections):
    """Running work in a transaction: the write protocol and the caller's transaction blocks
    (see the module docstring)."""

    # --- the write protocol ---------------------------------------------------------------

    def _write(self, doing: str, work: Callable[[_Tx], T], *, every_thread: bool = False,
               threads: Sequence[str] = (),
               first: tuple[str, Sequence[object]] | None = None) -> T:
        """``work(conn)`` in one transaction, committed; retried whole on serialization
        failures and deadlocks until the busy timeout (see the module docstring), and on a
        pooled connection its BEGIN found dead (:meth:`_stale`). Inside the
        calling thread's :meth:`transaction`, in a savepoint of that transaction instead.
        ``threads``: their advisory locks are taken before ``work`` runs (in the ``BEGIN``
        string: no round trip of their own), and so is ``first`` (a statement whose row
        ``work`` finds in ``tx.row``); what ``work`` queues with ``tx.later`` goes in the
        ``COMMIT`` string. ``every_thread``: holding :data:`ALL_THREADS_LOCK` exclusively, no
        other write runs (inside a transaction block, from that call until the block ends)."""
        pinned = self._pinned()
        if pinned is not None:
            def in_block(conn: Any) -> T:
                if every_thread:  # the block holds the lock shared (its BEGIN): exclusive now
                    conn.execute(_LOCK_ALL_THREADS)
                self._lock_threads(conn, *threads)
                row = None if first is None else conn.execute(*first).fetchone()
                return work(_Tx(conn, row, now=True))
            return self._in_savepoint(pinned, doing, in_block)

        def attempt(conn: Any, step: _Step) -> T:
            begin = self._begin_locking(conn, every_thread, threads)
            if first is not None:
                begin = f"{begin}; {_inline(conn, *first)}"
            cursor = conn.execute(begin, prepare=False)  # several statements
            row = None if first is None else _last(cursor).fetchone()
            step.begun = True
            tx = _Tx(conn, row)
            result = work(tx)
            step.committing = True
            self._commit(conn, doing, tx.finals)
            return result

        return self._retrying(doing, attempt)

    def _write_statement(self, doing: str, query: tuple[str, tuple[str, ...]],
                         params: Mapping[str, object],
                         wrote: Callable[[list[tuple]], bool]) -> list[tuple]:
        """One write transaction in one round trip: ``query``, one statement on an autocommit
        connection, is the whole transaction (its parameters bound, binary results, prepared
        as psycopg prepares any statement); return its rows. It must begin with its settings
        and locks (sql._LOCKED) and decide everything else itself, after the locks: what it
        writes, and what it leaves unwritten (the caller then reads why from its rows).
        ``wrote(rows)``: whether it wrote, for the commit count. Not inside a transaction
        block (callers use :meth:`_write` there).

        Measured against the same put as a pipeline of BEGIN, the locks, the statement and
        COMMIT (bench/pg_put_shapes.py, research/postgres_engine_plan.md "Session 15"): less
        client CPU, and one wait on the socket rather than one per statement, each of which
        gives up the GIL. What one statement cannot have: a statement_timeout of its own (one
        it sets does not apply to itself: it runs under the pooled session's, pool.py
        ``_session``, or behind a pooler none; its lock waits are bounded by lock_timeout),
        and a snapshot taken after its locks (see sql._put_statement for what the put reads).

        The same guarantees as :meth:`_write` (retries, locks, lock timeout), with one
        difference on a dead pooled connection: whatever is sent may commit, so a connection
        lost once the statement is sent is "maybe committed" and not run again; a pooled
        connection the server closed while it was idle is recognised before anything is sent
        (:func:`.pooled.closed_while_idle`) and replaced (:meth:`_stale`)."""
        def attempt(conn: Any, step: _Step) -> list[tuple]:
            closed_while_idle(conn)
            step.begun = step.committing = True  # from here on, it may commit
            rows = self._send(conn, query, params)  # returned: its commit did
            if wrote(rows):
                self._count_commit()
            return rows

        return self._retrying(doing, attempt)

    def _send(self, conn: Any, query: tuple[str, tuple[str, ...]],
              params: Mapping[str, object]) -> list[tuple]:
        """``query``'s rows, run on ``conn`` (autocommit: its own transaction) through the
        connection's RawCursor (pooled.py, ``configure``): ``query`` is a statement with
        ``$n`` parameters and their names in order (sql.positional, done once per
        statement). Measured ad hoc: 75 us of client CPU per execute of a seven-parameter
        statement, against 99 us for ``conn.execute`` with named parameters (a new cursor,
        and the names converted, at every call)."""
        raw, names = query
        return conn.sqlitesaver_cursor.execute(raw, [params[name] for name in names],
                                               binary=True).fetchall()

    def _retrying(self, doing: str, attempt: Callable[[Any, _Step], T]) -> T:
        """``attempt(conn, step)`` on a pooled connection, until it returns: run again on
        another connection if this one was found dead before anything of the transaction may
        have run (``step.begun`` still False, :meth:`_stale`), and whole after a
        serialization failure or deadlock until the busy timeout; rolled back if it raised
        (a connection lost with ``step.committing`` set is "maybe committed")."""
        started = time.monotonic()
        deadline = started + self.busy_timeout
        delay = 0.001
        stale = retried = 0  # retried: this call's retries, logged (log.server_retries)
        while True:
            with self._connection(doing) as conn:
                step = _Step()
                try:
                    result = attempt(conn, step)
                    if retried:
                        log.server_retries(self.server, doing, retried,
                                           time.monotonic() - started, gave_up=False)
                    return result
                except BaseException as exc:
                    if not step.begun and self._stale(conn, exc, stale, doing):
                        stale += 1
                        continue  # out of the block: the pool drops the dead connection
                    _rollback_if_open(conn)
                    if isinstance(exc, SaverError) or not isinstance(exc, Exception):
                        raise  # the work's own verdict (not found...), or KeyboardInterrupt
                    state = pg_errors.sqlstate_of(exc)
                    if state not in pg_errors.RETRYABLE or time.monotonic() >= deadline:
                        if state in pg_errors.RETRYABLE:
                            log.server_retries(self.server, doing, retried,
                                               time.monotonic() - started, gave_up=True)
                        raise self._error(conn, exc, doing,
                                          committing=step.committing) from exc
            # Rolled back and out of the connection's block: back off (jittered, doubling
            # up to 0.1 s, never past the deadline) and run the whole transaction again.
            with self._count_lock:
                self.retries += 1
            retried += 1
            log.server_retry(self.server, doing, state, retried)
            time.sleep(min(delay * (1 + random.random()), max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)

    def _begin_locking(self, conn: Any, every_thread: bool, threads: Sequence[str]) -> str:
        """The ``BEGIN`` string of a write, with the advisory lock of each of ``threads``
        after the all-threads lock (sorted, as :meth:`_lock_threads`). A thread id goes in as
        a literal psycopg quotes for this connection (check_text refused NUL, the one
        character a literal cannot hold)."""
        begin = self._begin_all if every_thread else self._begin
        if not threads:
            return begin
        from psycopg import sql

        locks = "; ".join(_LOCK_THREAD % (THREAD_LOCK, sql.Literal(thread_id).as_string(conn))
                          for thread_id in sorted(set(threads)))
        return f"{begin}; {locks}"

    # --- the calling thread's own transaction (Saver.transaction) -------------------------------

    def in_transaction(self) -> bool:
        """Whether the calling thread is inside a :meth:`transaction` block."""
        return self._pinned() is not None

    def depth(self) -> int:
        """How many :meth:`transaction` blocks the calling thread is inside (0: none)."""
        pinned = self._pinned()
        return 0 if pinned is None else pinned.depth

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One server transaction for the block, on a connection pinned to the calling thread:
        every operation the thread makes inside it runs there (each in a savepoint of its own,
        so a failing call is undone alone, as on SQLite) and reads see its uncommitted writes;
        other threads see nothing of it until COMMIT. The block's exception rolls it all back
        and propagates; a block nested in it is a savepoint. The COMMIT follows the engine's
        rules (a lost connection then is "maybe committed"). Not retried: a serialization
        failure or deadlock inside fails the call with BusyTimeoutError, and the block decides
        (rolling back and running it again is safe)."""
        pinned = self._pinned()
        if pinned is not None:
            yield from self._nested(pinned)
            return
        with self._begun("opening a transaction") as conn:
            self._local.txn = _Pinned(conn, self._checkouts.get(id(conn)))
            try:
                try:
                    yield
                except BaseException:
                    self._local.txn = None
                    schema._rollback(conn)
                    raise
                self._local.txn = None
                if conn.broken:  # lost before the COMMIT, which is never sent: not committed
                    raise self._lost_block("committing it")
                try:
                    self._commit(conn, "committing a transaction")
                except SaverError:
                    raise
                except Exception as exc:
                    raise self._error(conn, exc, "committing a transaction",
                                      committing=True) from exc
            finally:
                self._local.txn = None  # whatever skipped the lines above

    @contextlib.contextmanager
    def _begun(self, doing: str) -> Iterator[Any]:
        """A pooled connection inside a just-begun write transaction (``self._begin``); one
        found dead by the BEGIN is replaced (see :meth:`_stale`)."""
        stale = 0
        while True:
            with self._connection(doing) as conn:
                try:
                    conn.execute(self._begin, prepare=False)  # several statements
                except Exception as exc:
                    if self._stale(conn, exc, stale, doing):
                        stale += 1
                        continue
                    schema._rollback(conn)
                    raise self._error(conn, exc, doing) from exc
                yield conn
                return

    def _commit(self, conn: Any, doing: str,
                finals: Sequence[tuple[str, Sequence[object]]] = ()) -> None:
        """COMMIT, after ``finals`` in the same string (one round trip), and check that it
        committed: in a transaction the server had aborted (a statement that failed outside
        any savepoint, e.g. one cancelled by Ctrl-C that the caller caught), COMMIT succeeds
        with the tag ROLLBACK and raises nothing. A failing final statement raises, and the
        server skips the rest of the string: the COMMIT never runs."""
        if finals:
            string = "; ".join(_inline(conn, query, params) for query, params in finals)
            tag = _last(conn.execute(f"{string}; COMMIT", prepare=False)).statusmessage
        else:
            tag = conn.execute("COMMIT").statusmessage
        if tag != "COMMIT":
            raise SaverError(
                f"the PostgreSQL server {self.server} rolled the transaction back instead of "
                f"committing it while {doing} (COMMIT answered {tag!r}): a statement of it had "
                "failed outside any call's savepoint, which aborts the whole transaction. "
                "Nothing of it was written; run it again.", path=self.server)
        self._count_commit()

    def _count_commit(self) -> None:
        with self._count_lock:
            self.commits += 1

    def _pinned(self) -> _Pinned | None:
        """The calling thread's open transaction, or None. A pin is trusted only while its
        connection is still out of the pool on the same checkout and inside a transaction: an
        exception landing between the block's end and its unpinning (a signal, or
        PyThreadState_SetAsyncExc, can land on any line) left the thread pinned to a
        connection already back in the pool, and its later calls ran on it: failing
        ("SAVEPOINT can only be used in transaction blocks"), or, once another thread had
        that connection in a block, inside that thread's transaction."""
        pinned = self._local.txn
        if pinned is None:
            return None
        from psycopg.pq import TransactionStatus

        if self._checkouts.get(id(pinned.conn)) is not pinned.token:
            self._local.txn = None
            return None
        if pinned.conn.broken:
            # Lost inside the block, which is still open: the pin stays, so that the block's
            # later calls fail (_lost_block) instead of each committing on its own, outside
            # the block whose earlier writes the server has just rolled back.
            return pinned
        if pinned.conn.info.transaction_status not in (TransactionStatus.INTRANS,
                                                       TransactionStatus.INERROR):
            self._local.txn = None
            return None
        return pinned

    def _lost_block(self, doing: str) -> DatabaseIOError:
        return DatabaseIOError(
            f"the connection to the PostgreSQL server {self.server} of this thread's "
            f"transaction block was lost before {doing}: nothing of the block was committed, "
            "and nothing more of it can be. Let the block end (raise) and run it again once "
            "the server is reachable.", path=self.server)

    def _nested(self, pinned: _Pinned) -> Iterator[None]:
        pinned.depth += 1
        name = f"sqlitesaver_block_{pinned.depth}"
        try:
            if pinned.conn.broken:
                raise self._lost_block("opening a nested block")
            self._in_block(pinned.conn, f"SAVEPOINT {name}", "opening a nested block")
            try:
                yield
            except BaseException:
                _undo_savepoint(pinned.conn, name)
                raise
            self._in_block(pinned.conn, f"RELEASE SAVEPOINT {name}", "ending a nested block")
        finally:
            pinned.depth -= 1

    def _in_savepoint(self, pinned: _Pinned, doing: str, work: Callable[[Any], T]) -> T:
        conn = pinned.conn
        if conn.broken:
            raise self._lost_block(doing)
        self._in_block(conn, "SAVEPOINT sqlitesaver_call", doing)
        try:
            result = work(conn)
        except BaseException as exc:
            _undo_savepoint(conn, "sqlitesaver_call")
            if isinstance(exc, SaverError) or not isinstance(exc, Exception):
                raise
            raise self._error(conn, exc, doing, in_transaction=True) from exc
        self._in_block(conn, "RELEASE SAVEPOINT sqlitesaver_call", doing)
        return result

    def _in_block(self, conn: Any, statement: str, doing: str) -> None:
        """``statement`` (a savepoint's) on the block's connection; its failure translated
        as inside a transaction (and a lost connection logged)."""
        try:
            conn.execute(statement)
        except Exception as exc:
            raise self._error(conn, exc, doing, in_transaction=True) from exc

    def _lock_threads(self, conn: Any, *thread_ids: str) -> None:
        # Sorted, so that two calls locking the same two threads cannot deadlock.
        for thread_id in sorted(set(thread_ids)):
            conn.execute(_LOCK_THREAD, (THREAD_LOCK, thread_id))
