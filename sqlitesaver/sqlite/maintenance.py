"""The SQLite engine's maintenance steps: deleting a thread (``delete_thread``), keeping a
thread's newest checkpoints (``prune``), copying a thread (``copy_thread``) and deleting
checkpoints by metadata (``delete_matching``).

:class:`MaintenanceSteps` is a base of :class:`~sqlitesaver.sqlite.saver.SqliteFileSaver`: its
methods are the storage steps the backend-neutral core (:mod:`sqlitesaver.saver`) calls, after
it checked their arguments. They use the Saver's ``_path``, ``_damage`` and the core's checksum
checks (``_verify``, ``_verify_writes``: :mod:`sqlitesaver.saver_reads`).

Guarantees: each step is one write transaction
(:class:`~sqlitesaver.sqlite.transaction._Transaction`: its own ``BEGIN IMMEDIATE ... COMMIT``,
or a savepoint in the calling thread's transaction), so it happens whole or not at all. A
deletion first raises the ``high_water`` mark, so a deleted checkpoint's (or log event's) seq,
and with it a generated id, is never given out again; and in the same transaction it deletes
the file content no checkpoint names any more. A copy or a deletion by metadata verifies the
checksum of each checkpoint it reads and raises on damage, writing nothing. The statements are
:mod:`sqlitesaver.sqlite.sql`'s.
"""

from __future__ import annotations

from .. import attachments, codec, integrity
from ..errors import InvalidArgumentError
from ..ids import INT64_MAX as _INT64_MAX
from ..ids import format_id as _format_id
from ..saver_reads import matches as _matches
from .reads import _close_cursors
from .sql import (_CHECKPOINT_COLUMNS, _INSERT_KEYED_CHECKPOINT, _INSERT_WRITE,
                  _NEXT_SEQ_CHECKPOINTS, _RAISE_HIGH_WATER, _WRITE_COLUMNS)
from .transaction import _Transaction

__all__ = ["MaintenanceSteps"]


class MaintenanceSteps:
    """The maintenance storage steps of :class:`~sqlitesaver.sqlite.saver.SqliteFileSaver` (see
    the module docstring)."""

    def _delete_thread(self, thread_id: str) -> int:
        with _Transaction(self, "deleting a thread") as conn:
            conn.execute(_RAISE_HIGH_WATER.format(table="checkpoints"))
            conn.execute(_RAISE_HIGH_WATER.format(table="log"))
            conn.execute("DELETE FROM checkpoints WHERE thread_id = ?", (thread_id,))
            deleted = conn.changes()
            conn.execute("DELETE FROM log WHERE thread_id = ?", (thread_id,))
            attachments.collect_deleted(attachments.FileDb(conn))
        return deleted

    def _prune(self, thread_id: str, keep_last: int) -> int:
        with _Transaction(self, "pruning a thread") as conn:
            conn.execute(_RAISE_HIGH_WATER.format(table="checkpoints"))
            conn.execute(
                "DELETE FROM checkpoints WHERE seq IN (SELECT seq FROM (SELECT seq, "
                "row_number() OVER (PARTITION BY namespace ORDER BY seq DESC) AS rank "
                "FROM checkpoints WHERE thread_id = ?) WHERE rank > ?)",
                (thread_id, min(keep_last, _INT64_MAX)))  # more than can exist: keep all
            deleted = conn.changes()
            attachments.collect_deleted(attachments.FileDb(conn))
            return deleted

    def _copy_thread(self, source_thread_id: str, target_thread_id: str) -> int:
        with _Transaction(self, "copying a thread") as conn, self._damage("copying a thread"):
            if conn.execute("SELECT 1 FROM checkpoints WHERE thread_id = ? LIMIT 1",
                            (target_thread_id,)).fetchone() is not None:
                raise InvalidArgumentError(
                    f"target thread {target_thread_id!r} already has checkpoints in "
                    f"{self._path!r}; copy to a new thread id (or delete_thread it first). "
                    "Nothing was written.", path=self._path)
            # seqs first: SQLite leaves undefined what a statement still reading a table sees
            # of rows the same connection inserts meanwhile.
            old_seqs = [seq for (seq,) in conn.execute(
                "SELECT seq FROM checkpoints WHERE thread_id = ? ORDER BY seq",
                (source_thread_id,))]
            copied: dict[int, int] = {}
            for old in old_seqs:
                row = conn.execute(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints AS c "
                                   "WHERE c.seq = ?", (old,)).fetchone()
                self._verify(row)
                _, _, namespace, parent, created, state, meta, _, key, parent_key = row
                parent = copied.get(parent, parent)
                seq = copied[old] = conn.execute(_NEXT_SEQ_CHECKPOINTS).fetchone()[0]
                conn.execute(_INSERT_KEYED_CHECKPOINT, (
                    seq, target_thread_id, namespace, parent, created, state, meta,
                    integrity.checkpoint_checksum(seq, target_thread_id, namespace, parent,
                                                  created, state, meta, key, parent_key),
                    key, parent_key))
                writes = conn.execute(f"SELECT {_WRITE_COLUMNS} FROM writes AS w "
                                      "WHERE checkpoint_seq = ?", (old,)).fetchall()
                self._verify_writes(key or _format_id(old), writes)
                conn.executemany(_INSERT_WRITE, [
                    (seq, task_id, index, channel, value, task_path,
                     integrity.write_checksum(seq, task_id, index, channel, task_path, value))
                    for _, task_id, index, channel, value, task_path, _ in writes])
            attachments.copy(attachments.FileDb(conn), copied, self._path)
        return len(old_seqs)

    def _delete_matching(self, filters: tuple[dict, ...], thread_id: str | None) -> int:
        where, params = ("WHERE thread_id = ?", (thread_id,)) if thread_id is not None \
            else ("", ())
        with _Transaction(self, "deleting checkpoints by metadata") as conn, \
                self._damage("deleting checkpoints by metadata"):
            doomed: set[int] = set()
            orphans = []
            rows = conn.execute(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints AS c {where} "
                                "ORDER BY c.seq", params)
            try:
                for row in rows:
                    self._verify(row)
                    found = codec.decode(row[6])
                    if any(_matches(found, wanted) for wanted in filters):
                        doomed.add(row[0])
                    elif row[3] in doomed:  # seq order: a parent is classified before its child
                        orphans.append(row)
            finally:
                _close_cursors(rows)
            if not doomed:
                return 0
            conn.execute(_RAISE_HIGH_WATER.format(table="checkpoints"))
            conn.executemany(
                "UPDATE checkpoints SET parent_seq = NULL, parent_key = NULL, checksum = ? "
                "WHERE seq = ?",
                [(integrity.checkpoint_checksum(seq, thread, namespace, None, created, state,
                                                meta, key, None), seq)
                 for seq, thread, namespace, _, created, state, meta, _, key, _ in orphans])
            conn.executemany("DELETE FROM checkpoints WHERE seq = ?",
                             [(seq,) for seq in sorted(doomed)])
            attachments.collect_deleted(attachments.FileDb(conn))
            return len(doomed)
