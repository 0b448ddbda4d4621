"""The PostgreSQL engine: what each storage operation does on a server (issue #16).

:class:`~sqlitesaver.postgres.saver.PostgresServerSaver` (what ``Saver("postgresql://...")``
returns) calls it for every storage step; tests/test_postgres_engine.py also drives it directly.
It takes what the backend-neutral core prepares (bytes already encoded by sqlitesaver.codec,
arguments already checked) and returns rows in the SQLite engine's shapes, so the core verifies
checksums and builds records the same way for both:

* a checkpoint row: ``(seq, thread_id, namespace, parent_seq, created_at, state, metadata,
  checksum, key, parent_key)``;
* a pending-write row: ``(checkpoint_seq, task_id, idx, channel, value, task_path, checksum)``.

Guarantees:

* **One transaction per operation**, ``BEGIN`` ... ``COMMIT`` written by the engine on an
  autocommit connection from a pool. A pooled connection is not checked before use (a round
  trip per call): one found dead by the transaction's ``BEGIN`` (a server restarted
  meanwhile) is dropped and the transaction run on another, which is safe because nothing of
  it ran; so a restart costs a reconnect, not an error. A connection lost after the ``BEGIN``
  is never retried (a statement that kills its backend would, on every try, put the whole
  cluster through crash recovery): the call raises DatabaseIOError. A call returns after its
  COMMIT returned. ``synchronous_commit`` is set per transaction
  (``SET LOCAL``): ``on`` for ``durability="full"``, ``off`` for ``"normal"``; a
  transaction-pooling PgBouncer keeps it. So are ``statement_timeout`` and ``lock_timeout``,
  in every transaction, reads included: pooled connections carry no session-level setting
  (behind PgBouncer one would stay on a server connection other clients get next, and not
  bound this client's next transaction).
* **Ids**: unique in the database and never reused (sequences). Within one thread they follow
  commit order: every write to a thread first takes a transaction-level advisory lock on the
  thread (:data:`THREAD_LOCK`, ``hashtext(thread_id)``), and draws its seq after that, so a seq
  committed later in a thread is larger than every seq already committed in it (a reader never
  sees a new checkpoint appear below one it has seen). Writers of different threads do not wait
  for each other (a hash collision only makes two threads share a lock), and their ids are not
  in commit order with each other. ``created_at`` is the server's clock, one for all writers.
* **Statements**: psycopg costs CPU for every statement, and a local server a context switch
  for every round trip. A write sends its ``BEGIN``, settings, locks and first lookup as one
  simple-query string (values inlined as literals psycopg quotes for the connection), and its
  last statements with its ``COMMIT`` as another (the server skips the rest of a string after
  a failing statement: the COMMIT then never runs): a put, a put of writes and a log append
  are two round trips. A get, and a page of a list (the common case: a first page, or one
  below a known seq), are one: a libpq pipeline of the ``set_config`` timeouts and the
  statements (prepared, binary results: bytea arrives as bytes, not as hex text), with
  ``BEGIN``/``COMMIT`` around a page's two. Measured against the same reads as simple-query
  strings of literals, and as a transaction of several round trips: less wall time and CPU
  (bench/postgres.py measures the whole).
* **Every thread at once**: each write first takes :data:`ALL_THREADS_LOCK` in shared mode (in
  the ``BEGIN`` string: no round trip), before any thread's lock; ``delete_matching`` over
  every thread takes it in exclusive mode instead of one lock per thread, which on a large
  database exhausted the server's shared lock table (``max_locks_per_transaction``: "out of
  shared memory" past about 20,000 threads with the defaults, for every session at once).
* **Retries**: a serialization failure or deadlock (``40001``, ``40P01``) re-runs the whole
  transaction until ``busy_timeout`` has passed, then raises
  :class:`~sqlitesaver.errors.BusyTimeoutError`. The operations here are pure functions of
  their arguments, so re-running them is safe.
* **Maybe committed**: a connection lost while COMMIT was in flight raises
  :class:`~sqlitesaver.errors.DatabaseIOError` saying so, and is never retried; lost before
  COMMIT, the transaction was not committed (also ``DatabaseIOError``, saying that).
* **Reads**: one statement (one snapshot), or several inside one ``REPEATABLE READ READ
  ONLY`` transaction: one snapshot per page, as on SQLite.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from .. import integrity
from ..errors import (BusyTimeoutError, CheckpointNotFoundError, DatabaseIOError,
                      InvalidArgumentError, SaverClosedError, SaverError)
from ..ids import INT64_MAX, checkpoint_query, format_id, is_generated, parse_id
from ..schema import APPLICATION_ID
from . import connect, schema
from . import errors as pg_errors
from . import files as pg_files
from . import target as pg_target

__all__ = ["Engine", "THREAD_LOCK", "ALL_THREADS_LOCK"]

T = TypeVar("T")

#: key1 of ``pg_advisory_xact_lock(key1, hashtext(thread_id))``, taken by every write to a
#: thread (the migration lock is ``(APPLICATION_ID, 0)``: another key1, no clash).
THREAD_LOCK = APPLICATION_ID + 1
#: ``(key1, key2)`` of the advisory lock every write takes in shared mode before its thread's,
#: and ``delete_matching`` over every thread in exclusive mode.
ALL_THREADS_LOCK = (APPLICATION_ID + 2, 0)
_DURABILITY = {"full": "on", "normal": "off"}

_S = schema.SCHEMA
_CHECKPOINT_COLUMNS = ("c.seq, c.thread_id, c.namespace, c.parent_seq, c.created_at, c.state, "
                       "c.metadata, c.checksum, c.key, c.parent_key")
_WRITE_COLUMNS = ("w.checkpoint_seq, w.task_id, w.idx, w.channel, w.value, w.task_path, "
                  "w.checksum")
_LOCK_THREAD = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
_LOCK_ALL_THREADS = "SELECT pg_advisory_xact_lock({}, {})".format(*ALL_THREADS_LOCK)
# The seq and the time, after the thread's lock: the lock is a statement before this one (the
# order in which one select list is evaluated is not defined).
_NEXT_CHECKPOINT = (f"SELECT nextval('{_S}.checkpoints_seq'), "
                    "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
_NEXT_LOG = _NEXT_CHECKPOINT.replace("checkpoints_seq", "log_seq")
_INSERT_CHECKPOINT = (f"INSERT INTO {_S}.checkpoints (seq, thread_id, namespace, parent_seq, "
                      "created_at, state, metadata, checksum, key, parent_key) "
                      "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
_INSERT_WRITE = (f"INSERT INTO {_S}.writes (checkpoint_seq, task_id, idx, channel, value, "
                 "task_path, checksum) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
_REPLACE_WRITE = (_INSERT_WRITE.removesuffix("DO NOTHING")
                  + "(checkpoint_seq, task_id, idx) DO UPDATE SET channel = excluded.channel, "
                  "value = excluded.value, task_path = excluded.task_path, "
                  "checksum = excluded.checksum")


def _get_query(match: str) -> str:
    """The checkpoint matching ``match`` with each of its pending writes, in one statement."""
    return (f"SELECT {_CHECKPOINT_COLUMNS}, {_WRITE_COLUMNS} FROM {_S}.checkpoints AS c "
            f"LEFT JOIN {_S}.writes AS w ON w.checkpoint_seq = c.seq WHERE {match} "
            "ORDER BY w.task_id COLLATE \"C\", w.idx")


# One thread's rows through checkpoints_by_thread (thread_id, namespace, seq), whatever the
# plan. psycopg prepares a statement after a few executions, and PostgreSQL may then keep a
# generic plan, which cannot see the thread: it estimates "thread_id = $1" as one thread in as
# many as there are, so with few threads it expected a walk of checkpoints_pkey backwards
# (newest first) to meet the thread's rows at once. On a thread whose checkpoints are old, with
# 100,000 newer ones of another thread, that walk read all 100,000 for every get (about 20 ms;
# the thread's own index reads one row). An equality cannot steer it: "thread_id = $1" makes
# thread_id a constant to the planner, so "ORDER BY thread_id, seq" is only "ORDER BY seq",
# which the pkey provides too. A range that admits one value ("namespace >= $2 AND namespace
# <= $2") is the same condition (text compares equal only when identical in a deterministic
# collation, and a database's default collation is one) but no equality: ordered by that column
# then seq, the rows come without a sort only from checkpoints_by_thread, and a generic plan
# estimates the range as narrow, so a DELETE with no order takes that index too. The range is
# on namespace where the statement knows it (thread_id = $1 then bounds the index scan on both
# columns), else on thread_id. tests/test_postgres_plans.py checks each statement's generic
# plan on such skewed data.
#
# The newest checkpoint of (thread, namespace): parameters (thread, namespace, namespace).
_GET_LATEST = _get_query(f"c.seq = (SELECT seq FROM {_S}.checkpoints WHERE thread_id = %s "
                         "AND namespace >= %s AND namespace <= %s "
                         "ORDER BY namespace DESC, seq DESC LIMIT 1)")
_GET_BY_KEY = _get_query("c.thread_id = %s AND c.namespace = %s AND c.key = %s")
_GET_BY_SEQ = _get_query("c.seq = %s AND c.thread_id = %s AND c.namespace = %s "
                         "AND c.key IS NULL")
#: A page's ``(seq, payload size)`` rows, newest first: parameters (thread, namespace,
#: namespace, highest seq, how many).
_PAGE_SIZES = (f"SELECT seq, octet_length(state) + octet_length(metadata) AS size FROM "
               f"{_S}.checkpoints WHERE thread_id = %s AND namespace >= %s AND namespace <= %s "
               "AND seq <= %s ORDER BY namespace DESC, seq DESC LIMIT %s")
#: The same over every namespace of the thread: parameters (thread, thread, thread, highest
#: seq, how many, how many). No index holds a thread's rows in seq order across namespaces:
#: the thread's namespaces are found one index descent each (a recursive walk), the newest of
#: each (up to a page) read as in _PAGE_SIZES, and those merged. A page reads at most the
#: thread's own rows (as on SQLite, whose pages across namespaces sort the thread's seqs), and
#: a page's worth with one namespace, never other threads' rows.
_PAGE_SIZES_ALL = (
    f"WITH RECURSIVE spaces (namespace) AS ((SELECT namespace FROM {_S}.checkpoints "
    "WHERE thread_id = %s ORDER BY namespace LIMIT 1) UNION ALL SELECT (SELECT n.namespace "
    f"FROM {_S}.checkpoints AS n WHERE n.thread_id = %s AND n.namespace > s.namespace "
    "ORDER BY n.namespace LIMIT 1) FROM spaces AS s WHERE s.namespace IS NOT NULL) "
    "SELECT p.seq, p.size FROM spaces AS s CROSS JOIN LATERAL (SELECT seq, "
    f"octet_length(state) + octet_length(metadata) AS size FROM {_S}.checkpoints "
    "WHERE thread_id = %s AND namespace >= s.namespace AND namespace <= s.namespace "
    "AND seq <= %s ORDER BY namespace DESC, seq DESC LIMIT %s) AS p "
    "ORDER BY p.seq DESC LIMIT %s")


def _page_sizes(thread_id: str, namespace: str | None, upper: int, want: int
                ) -> tuple[str, list[object]]:
    """The statement (and its parameters) of a page's sizes: :data:`_PAGE_SIZES`, or
    :data:`_PAGE_SIZES_ALL` when ``namespace`` is None (every namespace)."""
    if namespace is None:
        return _PAGE_SIZES_ALL, [thread_id, thread_id, thread_id, upper, want, want]
    return _PAGE_SIZES, [thread_id, namespace, namespace, upper, want]


#: The page's checkpoint rows, and their pending writes, after ``WITH sized AS (<a page's
#: sizes>), run AS (...)``: the seqs chosen go in as an array (an InitPlan), so both tables
#: are read by primary key whatever the plan. A join or IN on the CTE let a generic plan scan
#: the whole table and hash it (100,006 checkpoints read for a page of 6).
_PAGE_RUN = ("run AS (SELECT seq, size, sum(size) OVER (ORDER BY seq DESC) AS total, "
             "count(*) OVER () AS found FROM sized) ")
_PAGE_ROWS = (f"SELECT {_CHECKPOINT_COLUMNS}, run.total, run.found FROM run JOIN "
              f"{_S}.checkpoints AS c ON c.seq = run.seq WHERE c.seq = ANY(ARRAY(SELECT seq "
              "FROM run WHERE total - size < %s)) ORDER BY c.seq DESC")
_PAGE_WRITES = (f"SELECT {_WRITE_COLUMNS} FROM {_S}.writes AS w WHERE w.checkpoint_seq = "
                "ANY(ARRAY(SELECT seq FROM run WHERE total - size < %s)) "
                "ORDER BY w.checkpoint_seq DESC, w.task_id COLLATE \"C\", w.idx")

#: The newest log event's seq of a thread (NULL if none): parameters (thread, thread).
_LOG_LAST = (f"SELECT (SELECT seq FROM {_S}.log WHERE thread_id >= %s AND thread_id <= %s "
             "ORDER BY thread_id DESC, seq DESC LIMIT 1)")
#: Log rows of a thread in a seq range: (thread, thread, after, last, how many).
_LOG_PAGE = (f"SELECT seq, thread_id, created_at, event, checksum FROM {_S}.log "
             "WHERE thread_id >= %s AND thread_id <= %s AND seq > %s AND seq <= %s "
             "ORDER BY thread_id, seq LIMIT %s")
#: Whether the thread has a checkpoint: (thread, thread).
_HAS_CHECKPOINTS = (f"SELECT 1 FROM {_S}.checkpoints WHERE thread_id >= %s AND thread_id <= %s "
                    "ORDER BY thread_id LIMIT 1")
#: The seqs of the thread's checkpoints, as a condition on ``seq`` (``checkpoint_seq`` of the
#: files' rows: see delete_thread): (thread, thread).
_THREAD_SEQS = (f"seq = ANY(ARRAY(SELECT seq FROM {_S}.checkpoints WHERE thread_id >= %s "
                "AND thread_id <= %s))")
#: The thread's whole checkpoints in seq order, read through a cursor (copy_thread,
#: delete_matching): (thread, thread). "thread_id = %s ORDER BY seq": a cursor's plan favours
#: its first rows, and walked the primary key over every thread's rows, filtering (a thread of
#: 1,000 checkpoints below 100,000 of another: 101,000 rows read, 23 ms; 4 ms now). Ordered by
#: (thread_id, seq), the thread's rows come from its index and are sorted: the same order.
_THREAD_CHECKPOINTS = (f"SELECT {_CHECKPOINT_COLUMNS} FROM {_S}.checkpoints AS c "
                       "WHERE c.thread_id >= %s AND c.thread_id <= %s ORDER BY c.thread_id, c.seq")
#: Deleting a thread's checkpoints, and its log: (thread, thread).
_DELETE_CHECKPOINTS = (f"DELETE FROM {_S}.checkpoints WHERE thread_id >= %s "
                       "AND thread_id <= %s")
_DELETE_LOG = f"DELETE FROM {_S}.log WHERE thread_id >= %s AND thread_id <= %s"
#: The checkpoints prune deletes: all but the newest ``keep_last`` of each namespace of the
#: thread, as a condition on ``seq``: (thread, thread, keep_last).
_PRUNED = ("seq = ANY(ARRAY(SELECT seq FROM (SELECT seq, row_number() OVER (PARTITION BY "
           f"namespace ORDER BY seq DESC) AS rank FROM {_S}.checkpoints WHERE "
           "thread_id >= %s AND thread_id <= %s) AS ranked WHERE rank > %s))")


#: Rows a scan of whole checkpoints (copy_thread, delete_matching) holds at once: it reads
#: through a server-side cursor, not the whole result, so memory does not grow with the data.
SCAN_ROWS = 16


@contextlib.contextmanager
def _scan(conn: Any, query: str, params: Sequence[object]) -> Iterator[Any]:
    """Rows of ``query`` fetched :data:`SCAN_ROWS` at a time from a cursor declared in the
    current transaction (its snapshot is the DECLARE's: rows inserted meanwhile by the same
    transaction are not seen)."""
    with conn.cursor(name="sqlitesaver_scan") as cursor:
        cursor.itersize = SCAN_ROWS
        cursor.execute(query, params)
        yield cursor


def check_text(**named: str | None) -> None:
    """PostgreSQL's text cannot hold NUL (U+0000), which SQLite's can: refuse it up front
    with a typed error, before anything is written, rather than fail inside the transaction."""
    for name, value in named.items():
        if value is not None and "\x00" in value:
            raise InvalidArgumentError(
                f"{name} {value!r:.80} contains a NUL character (U+0000), which PostgreSQL "
                "cannot store in text; nothing was written. Remove it, or use the SQLite "
                "engine.")


def _has_nul(*values: str | None) -> bool:
    return any(value is not None and "\x00" in value for value in values)


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


def _rollback_if_open(conn: Any) -> None:
    """ROLLBACK if the connection is still inside a transaction (a COMMIT string whose
    statement failed leaves it aborted; a COMMIT that ran left none)."""
    from psycopg.pq import TransactionStatus

    if not conn.broken and conn.info.transaction_status in (TransactionStatus.INTRANS,
                                                           TransactionStatus.INERROR):
        schema._rollback(conn)


class Engine:
    """A PostgreSQL server as a sqlitesaver store. Thread-safe: every call takes a pooled
    connection for its transaction. See the module docstring for what is guaranteed."""

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
        begin = f"BEGIN; SET LOCAL synchronous_commit TO {_DURABILITY[durability]}; {timeouts}"
        key1, key2 = ALL_THREADS_LOCK  # after the timeouts: its wait is bounded too
        self._begin = f"{begin}; SELECT pg_advisory_xact_lock_shared({key1}, {key2})"
        self._begin_all = f"{begin}; {_LOCK_ALL_THREADS}"
        self._begin_read = f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {timeouts}"
        self._set_timeouts = connect.set_local_timeouts(options)  # for a pipelined read
        first = connect.open_connection(params, self.server, options, doing="opening",
                                        session_timeouts=False)
        try:
            self.server_settings = connect.read_settings(first, self.server)
            connect.check_settings(self.server_settings, durability, self.server,
                                   writing=True)
            self.applied = schema.migrate(first, self.server, begin=f"BEGIN; {timeouts}")
        finally:
            first.close()
        self._params = params  # for a probe when the pool cannot hand out a connection
        self._max_connections = max_connections
        self._connect_errors = 0  # the pool's failed connection attempts, when last looked
        self._count_lock = threading.Lock()
        self.commits = 0  # COMMITs that committed (under _count_lock), for stats()
        self.retries = 0  # transactions run again after a 40001/40P01 (under _count_lock)
        self._pool = self._open_pool(params, max_connections)
        self._closed = False
        self._close_lock = threading.Lock()
        self._local = threading.local()  # .txn: the thread's open transaction (_Pinned)
        # id(connection) -> the token of its current checkout from the pool, while out
        self._checkouts: dict[int, object] = {}

    def _open_pool(self, params: dict[str, str], size: int) -> Any:
        from psycopg_pool import ConnectionPool

        options = self._options
        server = self.server
        # No configure callback: no session state (the timeouts are SET LOCAL, see _begin).
        kwargs = connect.libpq_params(params, options)
        pool = ConnectionPool(
            kwargs=dict(kwargs, autocommit=True, prepare_threshold=options.prepare_threshold),
            # No check= on checkout (a round trip per call): a dead connection is found by the
            # transaction's own statements instead and replaced (see _stale).
            min_size=1, max_size=size, open=False, timeout=max(self.busy_timeout, 0.001),
            name=f"sqlitesaver {server}")
        try:
            pool.open(wait=True, timeout=options.connect_timeout)
        except Exception as exc:
            pool.close()
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
                "prepare_threshold": self._options.prepare_threshold}

    @contextlib.contextmanager
    def _connection(self, doing: str) -> Iterator[Any]:
        if self._closed:
            raise SaverClosedError(f"this Saver for {self.server} was closed; open a new "
                                   "Saver.", path=self.server)
        from psycopg_pool import PoolTimeout

        try:
            cm, conn = self._take(doing, None)
        except PoolTimeout as exc:
            timeout = exc
        else:
            timeout = None
        if timeout is not None:
            # Not necessarily busy: with fewer connections than max_connections, the pool was
            # (re)connecting, to a server that is down (say so, as when opening) or was just
            # restarted (give it connect_timeout, as a reconnect, not an error).
            # In use: the pool's own count (open minus idle), not one of ours, which an
            # exception landing between a checkout and its bookkeeping would make drift.
            stats = self._pool.get_stats()
            errors = stats.get("connections_errors", 0)
            failing, self._connect_errors = errors > self._connect_errors, errors
            open_now = stats.get("pool_size", 0)
            if open_now - stats.get("pool_available", 0) >= self._max_connections or (
                    not failing and open_now >= self._max_connections):
                raise self._busy(doing) from timeout
            if failing:
                self._probe(doing, timeout)
            try:
                cm, conn = self._take(doing, self._options.connect_timeout)
            except PoolTimeout as exc:
                self._probe(doing, exc)
                raise self._busy(doing) from exc
        self._checkouts[id(conn)] = object()
        try:
            yield conn
        except BaseException as exc:
            self._release(cm, conn, exc)
            raise
        self._release(cm, conn, None)

    def _take(self, doing: str, timeout: float | None) -> tuple[Any, Any]:
        """A pooled connection's context manager and the connection; PoolTimeout raised."""
        from psycopg_pool import PoolClosed, PoolTimeout

        try:
            cm = self._pool.connection(timeout=timeout)
            return cm, cm.__enter__()
        except PoolTimeout:
            raise
        except PoolClosed as exc:
            raise SaverClosedError(f"this Saver for {self.server} was closed; open a new "
                                   "Saver.", path=self.server) from exc
        except Exception as exc:
            raise pg_errors.translate(exc, self.server, doing, connecting=True) from exc

    def _probe(self, doing: str, cause: BaseException) -> None:
        """A connection of our own, closed at once: raise why the server cannot be reached
        (CannotOpenError, nothing written), or return if it can."""
        try:
            probe = connect.open_connection(self._params, self.server, self._options,
                                            doing=doing, session_timeouts=False)
        except SaverError as exc:
            raise exc from cause
        probe.close()

    def _release(self, cm: Any, conn: Any, exc: BaseException | None) -> None:
        self._checkouts.pop(id(conn), None)  # before it is back: a stale pin never matches
        if exc is None:
            cm.__exit__(None, None, None)
        else:
            cm.__exit__(type(exc), exc, exc.__traceback__)

    def _busy(self, doing: str) -> BusyTimeoutError:
        return BusyTimeoutError(
            f"every connection to {self.server} stayed in use past the busy timeout "
            f"({self.busy_timeout} s) while {doing}; nothing was written. Raise "
            "max_connections or busy_timeout, or make fewer calls at once.", path=self.server)

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
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        stale = 0
        while True:
            with self._connection(doing) as conn:
                begun = committing = False
                try:
                    begin = self._begin_locking(conn, every_thread, threads)
                    if first is not None:
                        begin = f"{begin}; {_inline(conn, *first)}"
                    cursor = conn.execute(begin, prepare=False)  # several statements
                    row = None if first is None else _last(cursor).fetchone()
                    begun = True
                    tx = _Tx(conn, row)
                    result = work(tx)
                    committing = True
                    self._commit(conn, doing, tx.finals)
                    return result
                except BaseException as exc:
                    if not begun and self._stale(conn, exc, stale):
                        stale += 1
                        continue  # out of the block: the pool drops the dead connection
                    _rollback_if_open(conn)
                    if isinstance(exc, SaverError) or not isinstance(exc, Exception):
                        raise  # the work's own verdict (not found...), or KeyboardInterrupt
                    state = pg_errors.sqlstate_of(exc)
                    if state not in pg_errors.RETRYABLE or time.monotonic() >= deadline:
                        raise pg_errors.translate(exc, self.server, doing,
                                                  committing=committing) from exc
            # Rolled back and out of the connection's block: back off (jittered, doubling
            # up to 0.1 s, never past the deadline) and run the whole transaction again.
            with self._count_lock:
                self.retries += 1
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

    def _stale(self, conn: Any, exc: BaseException, tries: int) -> bool:
        """Whether ``exc``, raised by a transaction's ``BEGIN`` string (its first statement),
        comes from a pooled connection that was already dead (closed by the server while idle
        in the pool, or by a restart): then nothing of the transaction ran, and it runs on
        another connection. Only the BEGIN: a connection lost after it (the backend killed
        while running the transaction's own statements) is not retried, as a statement that
        crashes its backend would crash it again on every try, each a crash recovery of the
        whole cluster; the caller gets DatabaseIOError and decides. Once: the pool first
        checks its idle connections (a restart killed them all) and replaces the dead ones,
        so the second try gets a live one or, with the server down, none (the error is then
        raised as usual). A pipelined read (:meth:`_read_pipelined`) has no BEGIN of its own:
        one that kills its backend is run twice at most."""
        if (tries or not isinstance(exc, Exception) or isinstance(exc, SaverError)
                or not conn.broken):
            return False
        try:
            self._pool.check()
        except Exception:  # the retry's own connection attempt will say why
            pass
        return True

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
                    raise pg_errors.translate(exc, self.server, "committing a transaction",
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
                    if self._stale(conn, exc, stale):
                        stale += 1
                        continue
                    schema._rollback(conn)
                    raise pg_errors.translate(exc, self.server, doing) from exc
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
        pinned = getattr(self._local, "txn", None)
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
            try:
                pinned.conn.execute(f"SAVEPOINT {name}")
            except Exception as exc:
                raise pg_errors.translate(exc, self.server, "opening a nested block",
                                          in_transaction=True) from exc
            try:
                yield
            except BaseException:
                _undo_savepoint(pinned.conn, name)
                raise
            try:
                pinned.conn.execute(f"RELEASE SAVEPOINT {name}")
            except Exception as exc:
                raise pg_errors.translate(exc, self.server, "ending a nested block",
                                          in_transaction=True) from exc
        finally:
            pinned.depth -= 1

    def _in_savepoint(self, pinned: _Pinned, doing: str, work: Callable[[Any], T]) -> T:
        conn = pinned.conn
        if conn.broken:
            raise self._lost_block(doing)
        try:
            conn.execute("SAVEPOINT sqlitesaver_call")
        except Exception as exc:
            raise pg_errors.translate(exc, self.server, doing, in_transaction=True) from exc
        try:
            result = work(conn)
        except BaseException as exc:
            _undo_savepoint(conn, "sqlitesaver_call")
            if isinstance(exc, SaverError) or not isinstance(exc, Exception):
                raise
            raise pg_errors.translate(exc, self.server, doing, in_transaction=True) from exc
        try:
            conn.execute("RELEASE SAVEPOINT sqlitesaver_call")
        except Exception as exc:
            raise pg_errors.translate(exc, self.server, doing, in_transaction=True) from exc
        return result

    def _lock_threads(self, conn: Any, *thread_ids: str) -> None:
        # Sorted, so that two calls locking the same two threads cannot deadlock.
        for thread_id in sorted(set(thread_ids)):
            conn.execute(_LOCK_THREAD, (THREAD_LOCK, thread_id))

    @staticmethod
    def _seq_query(thread_id: str, namespace: str, checkpoint_id: str
                   ) -> tuple[str, Sequence[object]]:
        """The statement finding the seq of the checkpoint (one row, or none)."""
        if is_generated(checkpoint_id):
            seq = parse_id(checkpoint_id)
            if seq is None:  # generated-looking, but no seq has that id
                return "SELECT 1 WHERE false", ()
            return (f"SELECT seq FROM {_S}.checkpoints WHERE seq = %s AND thread_id = %s "
                    "AND namespace = %s AND key IS NULL", (seq, thread_id, namespace))
        return (f"SELECT seq FROM {_S}.checkpoints WHERE thread_id = %s AND namespace = %s "
                "AND key = %s", (thread_id, namespace, checkpoint_id))

    def _not_found(self, thread_id: str, namespace: str, checkpoint_id: str,
                   argument: str) -> CheckpointNotFoundError:
        return CheckpointNotFoundError(
            f"{argument} {checkpoint_id!r} is not a checkpoint of thread {thread_id!r} "
            f"in namespace {namespace!r} on {self.server}; nothing was written.",
            path=self.server)

    def _seq_of(self, conn: Any, thread_id: str, namespace: str, checkpoint_id: str,
                argument: str) -> int:
        found = conn.execute(*self._seq_query(thread_id, namespace, checkpoint_id)).fetchone()
        if found is None:
            raise self._not_found(thread_id, namespace, checkpoint_id, argument)
        return found[0]

    # --- writes ---------------------------------------------------------------------------

    def put_checkpoint(self, thread_id: str, namespace: str, parent_id: str | None,
                       checkpoint_id: str | None, state: bytes, metadata: bytes,
                       files: Callable[[Any, int], None] | None = None) -> tuple[str, int]:
        """Insert a checkpoint (or replace the one with caller-supplied id ``checkpoint_id``,
        keeping its seq, ``created_at`` and pending writes); return ``(id, created_at)``.
        ``files(conn, seq)`` stores its files in the same transaction (postgres/files.py)."""
        check_text(thread_id=thread_id, namespace=namespace, parent_id=parent_id,
                   checkpoint_id=checkpoint_id)
        parent_key = None if parent_id is None or is_generated(parent_id) else parent_id

        # The next seq, the time, the parent's seq and the replaced checkpoint's seq and time,
        # in one statement (one round trip), after the thread's lock (the BEGIN string's). A
        # seq drawn by a put that then replaces a checkpoint, or fails, is a gap: ids are never
        # reused, not dense.
        query = [f"{_NEXT_CHECKPOINT.removeprefix('SELECT ')}"]
        params: list[object] = []
        if parent_id is not None:
            parent_seq_of = parse_id(parent_id) if parent_key is None else None
            if parent_key is None and parent_seq_of is None:
                query.append("NULL::bigint")  # generated-looking, but no seq has that id
            elif parent_key is None:
                query.append(f"(SELECT seq FROM {_S}.checkpoints WHERE seq = %s AND "
                             "thread_id = %s AND namespace = %s AND key IS NULL)")
                params += [parent_seq_of, thread_id, namespace]
            else:
                query.append(f"(SELECT seq FROM {_S}.checkpoints WHERE thread_id = %s AND "
                             "namespace = %s AND key = %s)")
                params += [thread_id, namespace, parent_key]
        if checkpoint_id is not None:
            query.append(f"(SELECT ARRAY[seq, created_at] FROM {_S}.checkpoints WHERE "
                         "thread_id = %s AND namespace = %s AND key = %s)")
            params += [thread_id, namespace, checkpoint_id]
        lookup = "SELECT " + ", ".join(query)

        def work(tx: _Tx) -> tuple[str, int]:
            # With files, the checkpoint's row is written at once, not in the COMMIT string:
            # its files' rows refer to it (a foreign key), and are written after it.
            write = tx.later if files is None else tx.execute
            drawn, created_now, *looked = tx.row
            parent_seq = None
            if parent_id is not None:
                parent_seq = looked.pop(0)
                if parent_seq is None:
                    raise CheckpointNotFoundError(
                        f"parent_id {parent_id!r} is not a checkpoint of thread {thread_id!r} "
                        f"in namespace {namespace!r} on {self.server}; nothing was written.",
                        path=self.server)
            if checkpoint_id is not None:
                found = looked.pop(0)
                if found is not None:
                    seq, created = found
                    if parent_seq is not None and parent_seq >= seq:
                        raise InvalidArgumentError(
                            f"parent_id {parent_key or format_id(parent_seq)!r} is not older "
                            f"than checkpoint {checkpoint_id!r} of thread {thread_id!r}, which "
                            "it would replace; a checkpoint's parent must be older than it. "
                            "Nothing was written.", path=self.server)
                    write(
                        f"UPDATE {_S}.checkpoints SET parent_seq = %s, parent_key = %s, "
                        "state = %s, metadata = %s, checksum = %s WHERE seq = %s",
                        (parent_seq, parent_key, state, metadata,
                         integrity.checkpoint_checksum(seq, thread_id, namespace, parent_seq,
                                                       created, state, metadata, checkpoint_id,
                                                       parent_key), seq))
                    if files is not None:
                        files(tx, seq)
                    return checkpoint_id, created
            seq, created = drawn, created_now
            write(_INSERT_CHECKPOINT, (
                seq, thread_id, namespace, parent_seq, created, state, metadata,
                integrity.checkpoint_checksum(seq, thread_id, namespace, parent_seq, created,
                                              state, metadata, checkpoint_id, parent_key),
                checkpoint_id, parent_key))
            if files is not None:
                files(tx, seq)
            return (checkpoint_id if checkpoint_id is not None else format_id(seq)), created

        return self._write("putting a checkpoint", work, threads=(thread_id,),
                           first=(lookup, params))

    def put_writes(self, thread_id: str, namespace: str, checkpoint_id: str, task_id: str,
                   task_path: str, encoded: Sequence[tuple[int, str, bytes]],
                   replace: bool) -> None:
        """Store ``(index, channel, value bytes)`` writes of a task, all or none."""
        check_text(thread_id=thread_id, namespace=namespace, checkpoint_id=checkpoint_id,
                   task_id=task_id, task_path=task_path)
        check_text(**{f"writes[{i}] channel": channel
                      for i, (_, channel, _) in enumerate(encoded)})

        def work(tx: _Tx) -> None:
            if tx.row is None:
                raise self._not_found(thread_id, namespace, checkpoint_id, "checkpoint_id")
            (seq,) = tx.row
            insert = _REPLACE_WRITE if replace else _INSERT_WRITE
            for index, channel, value in encoded:  # in the COMMIT string: no round trip each
                tx.later(insert, (seq, task_id, index, channel, value, task_path,
                                  integrity.write_checksum(seq, task_id, index, channel,
                                                           task_path, value)))

        self._write("putting pending writes", work, threads=(thread_id,),
                    first=self._seq_query(thread_id, namespace, checkpoint_id))

    def append_log(self, thread_id: str, event: bytes) -> int:
        """Append an event to the thread's log; return its seq."""
        check_text(thread_id=thread_id)

        def work(tx: _Tx) -> int:
            seq, created = tx.row
            tx.later(f"INSERT INTO {_S}.log (seq, thread_id, created_at, event, checksum) "
                     "VALUES (%s, %s, %s, %s, %s)",
                     (seq, thread_id, created, event,
                      integrity.log_checksum(seq, thread_id, created, event)))
            return seq

        return self._write("appending a log event", work, threads=(thread_id,),
                           first=(_NEXT_LOG, ()))

    def delete_thread(self, thread_id: str) -> int:
        """Delete the thread's checkpoints (their writes cascade) and log; return how many
        checkpoints were deleted."""
        if _has_nul(thread_id):
            return 0  # no stored text holds NUL (check_text): there is no such thread

        def work(conn: Any) -> int:
            both = (thread_id, thread_id)
            with pg_files.collecting(conn, f"checkpoint_{_THREAD_SEQS}", both):
                deleted = conn.execute(_DELETE_CHECKPOINTS, both).rowcount
            conn.execute(_DELETE_LOG, both)
            return deleted

        return self._write("deleting a thread", work, threads=(thread_id,))

    def prune(self, thread_id: str, keep_last: int) -> int:
        """Keep the newest ``keep_last`` checkpoints of each namespace of the thread."""
        if _has_nul(thread_id):
            return 0  # no such thread, as in delete_thread

        params = (thread_id, thread_id, min(keep_last, INT64_MAX))

        def work(conn: Any) -> int:
            # The same condition on files' column: "checkpoint_seq = ANY(...)".
            with pg_files.collecting(conn, f"checkpoint_{_PRUNED}", params):
                return conn.execute(f"DELETE FROM {_S}.checkpoints WHERE {_PRUNED}",
                                    params).rowcount

        return self._write("pruning a thread", work, threads=(thread_id,))

    def copy_thread(self, source: str, target: str, verify: Callable[[tuple], None],
                    verify_writes: Callable[[str, list[tuple]], None]) -> int:
        """Copy the source thread's checkpoints (new seqs, in order, parents remapped) and
        their writes to the empty target thread; ``verify`` / ``verify_writes`` (the core's
        checksum checks) see every source row first and raise to copy nothing. Both threads
        are locked, in sorted order."""
        check_text(source_thread_id=source, target_thread_id=target)

        def work(conn: Any) -> int:
            if conn.execute(_HAS_CHECKPOINTS, (target, target)).fetchone() is not None:
                raise InvalidArgumentError(
                    f"target thread {target!r} already has checkpoints on {self.server}; "
                    "copy to a new thread id (or delete_thread it first). Nothing was "
                    "written.", path=self.server)
            copied: dict[int, int] = {}
            with _scan(conn, _THREAD_CHECKPOINTS, (source, source)) as rows:
                for row in rows:
                    verify(row)
                    old, _, namespace, parent, created, state, meta, _, key, parent_key = row
                    parent = copied.get(parent, parent)
                    seq = copied[old] = conn.execute(_NEXT_CHECKPOINT).fetchone()[0]
                    conn.execute(_INSERT_CHECKPOINT, (
                        seq, target, namespace, parent, created, state, meta,
                        integrity.checkpoint_checksum(seq, target, namespace, parent, created,
                                                      state, meta, key, parent_key),
                        key, parent_key))
                    writes = conn.execute(f"SELECT {_WRITE_COLUMNS} FROM {_S}.writes AS w "
                                          "WHERE w.checkpoint_seq = %s", (old,)).fetchall()
                    verify_writes(key or format_id(old), writes)
                    if writes:
                        with conn.cursor() as cursor:
                            cursor.executemany(_INSERT_WRITE, [
                                (seq, task_id, index, channel, value, task_path,
                                 integrity.write_checksum(seq, task_id, index, channel, task_path,
                                                          value))
                                for _, task_id, index, channel, value, task_path, _ in writes])
            pg_files.copy(conn, copied, self.server)
            return len(copied)

        return self._write("copying a thread", work, threads=(source, target))

    def delete_matching(self, thread_id: str | None, matches: Callable[[tuple], bool]
                        ) -> int:
        """Delete every checkpoint (of ``thread_id``, or of every thread) whose row
        ``matches`` (the core verifies its checksum and compares its metadata) and detach the
        remaining children of deleted ones; return how many were deleted. The thread is
        locked first (every thread: :data:`ALL_THREADS_LOCK`, exclusively), so no put into it
        can link a new child to a checkpoint being deleted."""
        if thread_id is not None and _has_nul(thread_id):
            return 0  # no such thread, as in delete_thread

        def work(conn: Any) -> int:
            query = f"SELECT {_CHECKPOINT_COLUMNS} FROM {_S}.checkpoints AS c ORDER BY c.seq"
            params: tuple = ()
            if thread_id is not None:
                self._lock_threads(conn, thread_id)
                query, params = _THREAD_CHECKPOINTS, (thread_id, thread_id)
            doomed: set[int] = set()
            orphans = []
            with _scan(conn, query, params) as rows:
                for row in rows:
                    if matches(row):
                        doomed.add(row[0])
                    elif row[3] in doomed:  # seq order: a parent is classified before its child
                        seq, thread, ns, _, created, state, meta, _, key, _ = row
                        orphans.append((integrity.checkpoint_checksum(  # detached: its new one
                            seq, thread, ns, None, created, state, meta, key, None), seq))
            if not doomed:
                return 0
            with conn.cursor() as cursor:
                if orphans:
                    cursor.executemany(
                        f"UPDATE {_S}.checkpoints SET parent_seq = NULL, parent_key = NULL, "
                        "checksum = %s WHERE seq = %s",
                        orphans)
                with pg_files.collecting(conn, "checkpoint_seq = ANY(%s)", (sorted(doomed),)):
                    cursor.execute(f"DELETE FROM {_S}.checkpoints WHERE seq = ANY(%s)",
                                   (sorted(doomed),))
            return len(doomed)

        return self._write("deleting checkpoints by metadata", work,
                           every_thread=thread_id is None)

    # --- reads ----------------------------------------------------------------------------

    def _read(self, doing: str, work: Callable[[Any], T]) -> T:
        """``work(conn)`` in one read-only REPEATABLE READ transaction (one snapshot), or,
        inside the calling thread's :meth:`transaction`, on its connection (seeing its
        uncommitted writes; each statement its own snapshot, READ COMMITTED). Run again on
        another connection if the pooled one is found dead by the BEGIN (:meth:`_stale`)."""
        pinned = self._pinned()
        if pinned is not None:
            return self._in_savepoint(pinned, doing, work)
        stale = 0
        while True:
            with self._connection(doing) as conn:
                begun = False
                try:
                    conn.execute(self._begin_read, prepare=False)  # several statements
                    begun = True
                    result = work(conn)
                    conn.execute("COMMIT")
                    return result
                except BaseException as exc:
                    if not begun and self._stale(conn, exc, stale):
                        stale += 1
                        continue
                    schema._rollback(conn)
                    if isinstance(exc, SaverError) or not isinstance(exc, Exception):
                        raise
                    raise pg_errors.translate(exc, self.server, doing) from exc

    def _read_pipelined(self, doing: str, statements: Sequence[tuple[str, Sequence[object]]],
                        *, snapshot: bool = False) -> list[list[tuple]]:
        """The rows of each statement (binary results), in one round trip: a libpq pipeline
        sends the SET LOCAL timeouts (``set_config(..., true)``) and the statements, with a
        ``BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`` and ``COMMIT`` around them if
        ``snapshot`` (several statements, one snapshot), and one Sync; without, they run in
        the implicit transaction the server opens up to the Sync (one statement: one
        snapshot). Measured against the same read as a simple-query string of literals: less
        wall time and CPU (the statements are prepared, the bytea binary). Not inside a
        transaction block (callers use :meth:`_read` there). Run once more on a checked
        connection if the pooled one was dead (:meth:`_stale`)."""
        stale = 0
        while True:
            with self._connection(doing) as conn:
                try:
                    with conn.pipeline():
                        if snapshot:
                            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        conn.execute(self._set_timeouts)
                        cursors = [conn.execute(query, params, binary=True)
                                   for query, params in statements]
                        if snapshot:
                            conn.execute("COMMIT")
                    return [cursor.fetchall() for cursor in cursors]
                except BaseException as exc:
                    if self._stale(conn, exc, stale):
                        stale += 1
                        continue
                    _rollback_if_open(conn)
                    if isinstance(exc, SaverError) or not isinstance(exc, Exception):
                        raise
                    raise pg_errors.translate(exc, self.server, doing) from exc

    def get_rows(self, thread_id: str, namespace: str, checkpoint_id: str | None
                 ) -> list[tuple]:
        """The checkpoint (the latest when ``checkpoint_id`` is None) joined with each of its
        pending writes in (task_id, idx) order, from one statement; [] if there is none."""
        if _has_nul(thread_id, namespace, checkpoint_id):
            return []  # no stored text holds NUL (check_text): there is no such checkpoint
        found = checkpoint_query(thread_id, namespace, checkpoint_id, _GET_LATEST, _GET_BY_KEY,
                                 _GET_BY_SEQ)
        if found is None:
            return []
        if found[0] is _GET_LATEST:  # the namespace twice (see _GET_LATEST)
            found = (_GET_LATEST, (thread_id, namespace, namespace))
        if self._pinned() is not None:
            return self._read("reading a checkpoint",
                              lambda conn: conn.execute(*found, binary=True).fetchall())
        return self._read_pipelined("reading a checkpoint", [found])[0]

    def page(self, thread_id: str, namespace: str | None, before: str | None,
             upper: int | None, want: int, budget: int) -> tuple[int, list[tuple],
                                                                  list[tuple], bool]:
        """One page of :meth:`Saver.list`, from one snapshot: checkpoint rows of the thread
        (and namespace, unless None) with ``seq <= upper``, newest first, at most ``want`` and
        stopping after the row whose payloads (state and metadata) bring the page to
        ``budget`` bytes, as the SQLite engine's pages do; then their pending writes ordered by
        (checkpoint_seq desc, task_id, idx). ``upper`` None means "below ``before``" (looked up
        in the same snapshot), or everything. Returns ``(upper used, checkpoint rows, write
        rows, whether more rows may follow)``. The sizes come first (octet_length reads a
        stored value's length without reading the value), so a page never holds more than
        one row past the budget in memory."""
        if _has_nul(before):
            raise CheckpointNotFoundError(
                f"before {before!r} is not a checkpoint of thread {thread_id!r} on "
                f"{self.server}", path=self.server)
        if _has_nul(thread_id, namespace):
            return (INT64_MAX if upper is None else upper), [], [], False

        def work(conn: Any) -> tuple[int, list[tuple], list[tuple], bool]:
            bound = upper
            if bound is None:
                bound = INT64_MAX if before is None else \
                    self._before_seq(conn, thread_id, namespace, before) - 1
            sizes = conn.execute(*_page_sizes(thread_id, namespace, bound, want)).fetchall()
            taken, total = [], 0
            for seq, size in sizes:
                taken.append(seq)
                total += size
                if total >= budget:
                    break
            more = len(taken) < len(sizes) or len(sizes) == want or total >= budget
            if not taken:
                return bound, [], [], False
            rows = conn.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM {_S}.checkpoints AS c "
                "WHERE c.seq = ANY(%s) ORDER BY c.seq DESC", (taken,), binary=True).fetchall()
            writes = conn.execute(
                f"SELECT {_WRITE_COLUMNS} FROM {_S}.writes AS w WHERE w.checkpoint_seq = "
                "ANY(%s) ORDER BY w.checkpoint_seq DESC, w.task_id COLLATE \"C\", w.idx",
                (taken,), binary=True).fetchall()
            return bound, rows, writes, more

        if (upper is None and before is not None) or self._pinned() is not None:
            return self._read("listing checkpoints", work)
        # The common case (a first page, or a next one below a known seq) in one round trip:
        # the same rows as work's, chosen in SQL (a running sum of the sizes, newest first),
        # and their writes, in one REPEATABLE READ transaction, pipelined.
        bound = INT64_MAX if upper is None else upper
        sizes, sized_params = _page_sizes(thread_id, namespace, bound, want)
        sized = f"WITH sized AS ({sizes}), {_PAGE_RUN}"
        rows, writes = self._read_pipelined("listing checkpoints", [
            (f"{sized}{_PAGE_ROWS}", (*sized_params, budget)),
            (f"{sized}{_PAGE_WRITES}", (*sized_params, budget))], snapshot=True)
        if not rows:
            return bound, [], [], False
        total, found = rows[-1][-2], rows[0][-1]
        more = len(rows) < found or found == want or total >= budget
        return bound, [row[:-2] for row in rows], writes, more

    def _before_seq(self, conn: Any, thread_id: str, namespace: str | None,
                    before: str) -> int:
        if namespace is not None:
            return self._seq_of(conn, thread_id, namespace, before, "before")
        if is_generated(before):
            seq = parse_id(before)
            if seq is not None and conn.execute(
                    f"SELECT 1 FROM {_S}.checkpoints WHERE seq = %s AND thread_id = %s "
                    "AND key IS NULL", (seq, thread_id)).fetchone() is None:
                seq = None
        else:
            seq = conn.execute(f"SELECT max(seq) FROM {_S}.checkpoints WHERE thread_id = %s "
                               "AND key = %s", (thread_id, before)).fetchone()[0]
        if seq is None:
            raise CheckpointNotFoundError(
                f"before {before!r} is not a checkpoint of thread {thread_id!r} on "
                f"{self.server}", path=self.server)
        return seq

    def log_page(self, thread_id: str, after: int, last: int | None, want: int
                 ) -> tuple[int | None, list[tuple]]:
        """Up to ``want`` log rows ``(seq, thread_id, created_at, event, checksum)`` with
        ``after < seq <= last`` in seq order, from one snapshot; ``last`` None: the newest
        event now (returned, None if the thread has none)."""
        if _has_nul(thread_id):
            return None, []

        def work(conn: Any) -> tuple[int | None, list[tuple]]:
            bound = last
            if bound is None:
                bound = conn.execute(_LOG_LAST, (thread_id, thread_id)).fetchone()[0]
                if bound is None:
                    return None, []
            return bound, conn.execute(
                _LOG_PAGE, (thread_id, thread_id, after, bound, want)).fetchall()

        return self._read("reading the log", work)

    def threads(self) -> list[str]:
        """Every thread id with a checkpoint or a log event, sorted (by code point, as on
        SQLite: ``COLLATE "C"``)."""
        return self._read("listing threads", lambda conn: [row[0] for row in conn.execute(
            f"SELECT thread_id COLLATE \"C\" FROM {_S}.checkpoints UNION "
            f"SELECT thread_id COLLATE \"C\" FROM {_S}.log ORDER BY 1")])

    def stats(self) -> dict[str, int]:
        """Counters since this engine opened, its pool now, and what our tables hold now:
        see :meth:`sqlitesaver.postgres.saver.PostgresServerSaver.stats`."""
        with self._count_lock:
            counters = {"commits": self.commits, "transitions": self.commits,
                        "retries": self.retries}
        pool = self._pool.get_stats()
        counters["connections_open"] = pool.get("pool_size", 0)
        counters["connections_idle"] = pool.get("pool_available", 0)
        counters["connection_waits"] = pool.get("requests_queued", 0)

        def work(conn: Any) -> tuple[int, int, int]:
            return conn.execute(
                "SELECT (SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'S')), "
                f"count(*), coalesce(sum(size), 0)::bigint FROM {_S}.file_contents",
                (_S,)).fetchone()

        (counters["db_bytes"], counters["file_contents"],
         counters["file_bytes"]) = self._read("reading the statistics", work)
        return counters
