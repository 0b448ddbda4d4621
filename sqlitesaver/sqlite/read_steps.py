"""The SQLite engine's read steps: how :class:`~sqlitesaver.sqlite.saver.SqliteFileSaver` reads
checkpoints (``get``, ``list``), the log (``read_log``) and the thread ids (``threads``).

:class:`ReadSteps` is a base of ``SqliteFileSaver``: its methods are the storage steps the
backend-neutral core (:mod:`sqlitesaver.saver`) calls (``_get_rows``, ``_list``,
``_read_log``, ``_threads``), and the core verifies the rows they return and builds the records.
They use the Saver's ``_path``, ``_checkpoint_seq`` (a checkpoint id's seq, which the write
path uses too), ``_checksum_error`` and the core's ``_merge`` (:mod:`sqlitesaver.saver_reads`).

Guarantees: each read runs in a :class:`~sqlitesaver.sqlite.reads._Read` (committed data, or
the calling thread's own transaction; an APSW error or stored text that is not UTF-8 raises
the library's own error). ``get`` is one statement, so one snapshot. ``list`` and
``read_log`` read in pages, each from one snapshot that ends before its rows are handed out:
an iterator the caller keeps pins nothing. A log event's checksum is verified before it is
decoded. The statements are :mod:`sqlitesaver.sqlite.sql`'s.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Sequence

import apsw

from .. import codec, integrity
from .. import saver as _core  # PAGE_ROWS, MAX_PAGE_ROWS: read at call time, as tests set them
from ..errors import ChecksumError, CheckpointNotFoundError
from ..ids import INT64_MAX as _INT64_MAX
from ..ids import is_generated as _is_generated
from ..ids import parse_id as _parse_id
from ..ids import checkpoint_query
from ..records import Checkpoint, LogEvent
from ..saver_reads import to_datetime as _to_datetime
from .reads import _fetch_page, _Read
from .sql import (_CHECKPOINT_COLUMNS, _GET_BY_KEY, _GET_BY_SEQ, _GET_LATEST, _NAMESPACE_RANGE,
                  _THREADS, _WRITE_COLUMNS)

__all__ = ["ReadSteps"]


class ReadSteps:
    """The read storage steps of :class:`~sqlitesaver.sqlite.saver.SqliteFileSaver` (see the
    module docstring)."""

    def _get_rows(self, thread_id: str, namespace: str, checkpoint_id: str | None
                  ) -> builtins.list[tuple]:
        """One statement (its own snapshot): see _get_query."""
        found = checkpoint_query(thread_id, namespace, checkpoint_id, _GET_LATEST, _GET_BY_KEY,
                                 _GET_BY_SEQ)
        if found is None:
            return []
        with _Read(self, "reading a checkpoint", snapshot=False) as read:
            return read.conn.execute(*found).fetchall()

    def _list(self, thread_id: str, namespace: str | None, before: str | None,
              limit: int | None, metadata: dict | None,
              damaged: Callable[[str, ChecksumError], None] | None = None
              ) -> Iterator[Checkpoint]:
        where = "thread_id = ?"
        params: builtins.list[object] = [thread_id]
        if namespace is not None:
            where += " AND namespace = ?"
            params.append(namespace)
        upper: int | None = None  # list checkpoints with seq <= upper
        produced = pages = 0
        while True:
            with _Read(self, "listing checkpoints") as read:
                if upper is None:
                    upper = _INT64_MAX if before is None else \
                        self._before_seq(read.conn, thread_id, namespace, before) - 1
                    if limit == 0:  # after the check of `before`: a bad id raises at any limit
                        return
                    if namespace is None:
                        # A thread with one namespace (the usual case) is listed in that
                        # namespace's index order, without sorting. Exact across pages: a
                        # checkpoint put in another namespace later has a larger seq and is
                        # never listed.
                        low, high = read.conn.execute(_NAMESPACE_RANGE,
                                                      (thread_id, thread_id)).fetchone()
                        if low is not None and low == high:
                            namespace = low
                            where += " AND namespace = ?"
                            params.append(namespace)
                want = min(_core.MAX_PAGE_ROWS, _core.PAGE_ROWS << pages)
                if limit is not None and metadata is None:
                    want = min(want, limit - produced)
                rows, full = self._page(read.conn, where, [*params, upper], namespace, want)
                writes = self._page_writes(read.conn, rows)
            # The snapshot has ended: a caller holding this iterator pins nothing.
            remaining = None if limit is None else limit - produced
            produced += yield from self._merge(iter(rows), iter(writes), remaining, metadata,
                                               damaged)
            if not full or (limit is not None and produced >= limit):
                return
            upper = rows[-1][0] - 1
            pages += 1

    def _page(self, conn: apsw.Connection, where: str, params: builtins.list[object],
              namespace: str | None, want: int) -> tuple[builtins.list[tuple], bool]:
        """Up to ``want`` checkpoint rows with ``seq <= params[-1]``, newest first (see
        :func:`~sqlitesaver.sqlite.reads._fetch_page`); and whether more may follow.

        Across namespaces each page reads the seqs of all the thread's older checkpoints
        from the index to sort them, so listing a whole thread of n checkpoints reads about
        n / :data:`MAX_PAGE_ROWS` times n index entries; within one namespace a page reads
        only its own rows."""
        if namespace is not None:
            # The index is (thread_id, namespace, seq): rows stream in order, no sort.
            query = (f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints AS c WHERE {where} "
                     "AND seq <= ? ORDER BY c.seq DESC LIMIT ?")
        else:
            # Across namespaces the index order is not seq order: sort the seqs alone (8
            # bytes each, from the covering index), then fetch rows in that order, instead
            # of letting SQLite sort whole rows with their payloads.
            query = (f"WITH s(seq) AS MATERIALIZED (SELECT seq FROM checkpoints WHERE {where} "
                     f"AND seq <= ? ORDER BY seq DESC LIMIT ?) SELECT {_CHECKPOINT_COLUMNS} "
                     "FROM s CROSS JOIN checkpoints AS c ON c.seq = s.seq")
        return _fetch_page(conn.execute(query, [*params, want]), want, (5, 6))

    @staticmethod
    def _page_writes(conn: apsw.Connection, rows: Sequence[tuple]) -> builtins.list[tuple]:
        """The pending writes of a page's checkpoints, in the page's order (one query: an
        index lookup per checkpoint)."""
        if not rows:
            return []
        seqs = "[" + ",".join(str(row[0]) for row in rows) + "]"
        return conn.execute(
            f"SELECT {_WRITE_COLUMNS} FROM writes AS w WHERE w.checkpoint_seq IN "
            "(SELECT value FROM json_each(?)) ORDER BY w.checkpoint_seq DESC, w.task_id, w.idx",
            (seqs,)).fetchall()

    def _read_log(self, thread_id: str, after: int) -> Iterator[LogEvent]:
        last: int | None = None  # the newest event when the read began: where it stops
        pages = 0
        while True:
            with _Read(self, "reading the log") as read:
                conn = read.conn
                if last is None:
                    last = conn.execute("SELECT max(seq) FROM log WHERE thread_id = ?",
                                        (thread_id,)).fetchone()[0]
                    if last is None:
                        return
                want = min(_core.MAX_PAGE_ROWS, _core.PAGE_ROWS << pages)
                rows, full = _fetch_page(conn.execute(
                    "SELECT seq, thread_id, created_at, event, checksum FROM log "
                    "WHERE thread_id = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                    (thread_id, after, last, want)), want, (3,))
            # The snapshot has ended: a caller holding this iterator pins nothing.
            for seq, thread, created, event, checksum in rows:
                try:
                    intact = integrity.expected_log_checksum(  # in its stored form
                        checksum, seq, thread, created, event) == checksum
                except (TypeError, ValueError, OverflowError):  # a column of the wrong type
                    intact = False
                if not intact:
                    raise self._checksum_error(f"log event {seq} of thread {thread!r}")
                yield LogEvent(seq, thread, _to_datetime(created), codec.decode(event))
            if not full:
                return
            after = rows[-1][0]
            pages += 1

    def _threads(self) -> builtins.list[str]:
        with _Read(self, "listing threads") as read:
            return [row[0] for row in read.conn.execute(_THREADS)]

    def _before_seq(self, conn: apsw.Connection, thread_id: str, namespace: str | None,
                    before: str) -> int:
        if namespace is not None:
            return self._checkpoint_seq(conn, thread_id, namespace, before, "before")
        if _is_generated(before):
            seq = _parse_id(before)
            if seq is not None and conn.execute(
                    "SELECT 1 FROM checkpoints WHERE seq = ? AND thread_id = ? AND key IS NULL",
                    (seq, thread_id)).fetchone() is None:
                seq = None
        else:
            seq = conn.execute("SELECT max(seq) FROM checkpoints WHERE thread_id = ? AND "
                               "key = ?", (thread_id, before)).fetchone()[0]
        if seq is None:
            raise CheckpointNotFoundError(
                f"before {before!r} is not a checkpoint of thread {thread_id!r} in "
                f"{self._path!r}", path=self._path)
        return seq
