"""The PostgreSQL engine's reads: :class:`Reads` (on :class:`~.transactions.Transactions`, a
base of :class:`~sqlitesaver.postgres.engine.Engine`): a get, a page of a list, a page of the
log, the threads, the statistics, and the lookup of a checkpoint's seq that writes share.

A read is one statement (one snapshot), or several in one ``REPEATABLE READ READ ONLY``
transaction (one snapshot per page, as on SQLite); a get and the common page are one round trip
(a libpq pipeline: :meth:`Reads._read_pipelined`). Inside the calling thread's transaction
block, a read runs on the block's connection, in a savepoint, and sees its uncommitted writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..errors import CheckpointNotFoundError, SaverError
from ..ids import INT64_MAX, checkpoint_query, is_generated, parse_id
from . import schema
from .pool import _rollback_if_open
from .sql import (_CHECKPOINT_COLUMNS, _GET_BY_KEY, _GET_BY_SEQ, _GET_LATEST, _LOG_LAST,
                  _LOG_PAGE, _PAGE_ROWS, _PAGE_ROWS_ONE, _PAGE_RUN, _PAGE_WRITES, _S,
                  _THREADS, _WRITE_COLUMNS, _has_nul, _page_sizes)
from .transactions import Transactions

T = TypeVar("T")


class Reads(Transactions):
    """The reads, and the seq lookup writes share (see the module docstring)."""

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
                    if not begun and self._stale(conn, exc, stale, doing):
                        stale += 1
                        continue
                    schema._rollback(conn)
                    if isinstance(exc, SaverError) or not isinstance(exc, Exception):
                        raise
                    raise self._error(conn, exc, doing) from exc

    def _read_pipelined(self, doing: str, statements: Sequence[tuple[str, Sequence[object]]],
                        *, snapshot: bool = False) -> list[list[tuple]]:
        """The rows of each statement (binary results), in one round trip. On a pooled
        connection whose session carries the timeouts and plan cache mode
        (``conn.sqlitesaver_session``, see pool.py's ``_session``), one statement without
        ``snapshot`` is sent alone: the implicit transaction of one statement, one snapshot,
        no pipeline (psycopg's cost ~80 us of client CPU a get here, session 24). Otherwise a
        libpq pipeline sends the SET LOCAL timeouts (``set_config(..., true)``; not where the
        session has them) and the statements, with a ``BEGIN ISOLATION LEVEL REPEATABLE READ
        READ ONLY`` and ``COMMIT`` around them if ``snapshot`` (several statements, one
        snapshot), and one Sync; without, they run in the implicit transaction the server
        opens up to the Sync (one statement: one snapshot). Measured against the same read as
        a simple-query string of literals: less wall time and CPU (the statements are
        prepared, the bytea binary). Not inside a transaction block (callers use
        :meth:`_read` there). Run once more on a checked connection if the pooled one was
        dead (:meth:`_stale`)."""
        stale = 0
        alone = len(statements) == 1 and not snapshot
        while True:
            with self._connection(doing) as conn:
                try:
                    session = conn.sqlitesaver_session  # set by pooled.configure
                    if alone and session:
                        return [conn.execute(*statements[0], binary=True).fetchall()]
                    with conn.pipeline():
                        if snapshot:
                            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        if not session:
                            conn.execute(self._set_timeouts)
                        cursors = [conn.execute(query, params, binary=True)
                                   for query, params in statements]
                        if snapshot:
                            conn.execute("COMMIT")
                    return [cursor.fetchall() for cursor in cursors]
                except BaseException as exc:
                    if self._stale(conn, exc, stale, doing):
                        stale += 1
                        continue
                    _rollback_if_open(conn)
                    if isinstance(exc, SaverError) or not isinstance(exc, Exception):
                        raise
                    raise self._error(conn, exc, doing) from exc

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
        # Each row comes with its size, the running total and the count found (the last
        # three columns); one namespace's page in one statement (_PAGE_ROWS_ONE), every
        # namespace's by the seqs the sizes chose (_PAGE_ROWS).
        bound = INT64_MAX if upper is None else upper
        sizes, sized_params = _page_sizes(thread_id, namespace, bound, want)
        sized = f"WITH sized AS ({sizes}), {_PAGE_RUN}"
        page_rows = f"{sized}{_PAGE_ROWS}" if namespace is None else _PAGE_ROWS_ONE
        rows, writes = self._read_pipelined("listing checkpoints", [
            (page_rows, (*sized_params, budget)),
            (f"{sized}{_PAGE_WRITES}", (*sized_params, budget))], snapshot=True)
        if not rows:
            return bound, [], [], False
        total, found = rows[-1][-2], rows[0][-1]
        more = len(rows) < found or found == want or total >= budget
        return bound, [row[:-3] for row in rows], writes, more

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
        return self._read("listing threads",
                          lambda conn: [row[0] for row in conn.execute(_THREADS)])

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
