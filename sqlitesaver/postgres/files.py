"""Files stored with a checkpoint, on a PostgreSQL server: the file statements' dialect and
the row locks that make them safe with many writers at once.

The file logic is :mod:`sqlitesaver.attachments`'s, shared with the SQLite engine (the same
statements, checksums and checks on every read); :class:`ServerFileDb` runs its statements on
a server: ``?`` becomes ``%s``, the tables are those of the ``sqlitesaver`` schema, results
come in binary (``bytea`` as bytes). The tables are migration 1's (sqlitesaver/postgres/
schema.py): ``files`` (each checkpoint's manifest), ``file_contents`` (one row per distinct
SHA-256), ``file_chunks`` (1 MiB pieces).

Guarantees (what differs from SQLite, where one writer at a time holds the whole file):

* **A put's files are in the put's own transaction.** The engine's
  :meth:`~sqlitesaver.postgres.engine.Engine.put_checkpoint` calls the core's file writer in
  the transaction that writes the checkpoint row, so a checkpoint that committed has all of its
  files and one that did not has none; if the engine runs that transaction again (a deadlock, a
  dead pooled connection) the files are written again in the new one.
* **Content is stored once, and never collected from under a writer.** Many writers run at
  once, each in ``READ COMMITTED``. A writer that needs a content (:meth:`ServerFileDb.claim`)
  inserts its record with ``ON CONFLICT DO NOTHING``; if it was already stored it locks that
  record ``FOR KEY SHARE`` (so does the foreign key check of every ``files`` row). A collector
  (:meth:`ServerFileDb.unreferenced`: ``prune``, ``delete_thread``, ``delete_matching``, a
  replacing ``attach_files``, ``collect_garbage``) locks its candidates ``FOR UPDATE``, which
  waits for every writer holding such a lock to end, and only then looks for references, in a
  statement of its own: in ``READ COMMITTED`` that statement's snapshot is taken after the
  locks were granted, so it sees the ``files`` rows of every writer that referenced the content
  and committed. A writer that comes after the collector's lock waits for it; if the content
  was deleted meanwhile, the writer stores it again. Writers claim contents and collectors lock
  them in digest order, so they do not deadlock on each other's contents (a deadlock with a
  writer that also collects is retried by the engine, as any).
* **Waits are bounded**: by the engine's ``lock_timeout`` (``busy_timeout``), past which the
  call raises :class:`~sqlitesaver.errors.BusyTimeoutError` and writes nothing. A writer
  waits for another storing the same new content until that one commits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from .. import attachments
from ..errors import BusyTimeoutError
from .schema import SCHEMA

__all__ = ["ServerFileDb", "collecting", "copy"]

_TABLE = re.compile(r"\b(FROM|INTO|UPDATE|JOIN)\s+(files|file_contents|file_chunks|checkpoints)\b")

#: A claim that finds the content deleted between its two statements stores it itself; each
#: turn needs a collector to commit a deletion of that very content in between, so a few are
#: plenty. Past this bound something else is wrong: raise rather than loop.
_CLAIM_TURNS = 100


@lru_cache(maxsize=256)
def server_sql(sql: str) -> str:
    """A statement of :mod:`sqlitesaver.attachments` (SQLite's dialect) for the server."""
    if "%" in sql:  # would be taken for a psycopg placeholder
        raise ValueError(f"a file statement holds '%': {sql!r}")
    return _TABLE.sub(rf"\1 {SCHEMA}.\2", sql).replace("?", "%s")


class ServerFileDb(attachments.FileDb):
    """:class:`~sqlitesaver.attachments.FileDb` on a psycopg connection inside one of the
    engine's transactions (see the module docstring for the locks)."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        return self.conn.execute(server_sql(sql), params, binary=True)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        rows = list(rows)
        if rows:
            with self.conn.cursor() as cursor:
                cursor.executemany(server_sql(sql), rows)

    def claim(self, digest: bytes, size: int, count: int) -> bool:
        checksum = attachments.content_checksum(digest, size, count)
        for _ in range(_CLAIM_TURNS):
            # Waits for a writer storing the same content right now: it commits (then this
            # conflicts) or rolls back (then this inserts).
            if self.conn.execute(
                    f"INSERT INTO {SCHEMA}.file_contents (digest, size, chunks, checksum) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (digest) DO NOTHING",
                    (digest, size, count, checksum)).rowcount:
                return True  # ours: the caller writes its chunks
            # Stored already: hold it until COMMIT. A collector's FOR UPDATE waits for this
            # lock, and this waits for a collector's; none is returned if it deleted it.
            if self.conn.execute(f"SELECT 1 FROM {SCHEMA}.file_contents WHERE digest = %s "
                                 "FOR KEY SHARE", (digest,)).fetchone() is not None:
                return False
        raise BusyTimeoutError(
            f"content {digest.hex()[:16]}... was deleted by collectors {_CLAIM_TURNS} times "
            "while this transaction claimed it (prune, delete_thread, delete_matching or "
            "collect_garbage running without pause on the files it stores); nothing was "
            "written. Retry once they have finished.")

    def unreferenced(self, candidates: Iterable[bytes] | None) -> list[tuple[bytes, int]]:
        if candidates is None:  # collect_garbage: every content no manifest names now
            digests = [digest for (digest,) in self.conn.execute(
                f"SELECT digest FROM {SCHEMA}.file_contents AS c WHERE NOT EXISTS (SELECT 1 "
                f"FROM {SCHEMA}.files AS f WHERE f.digest = c.digest)", binary=True)]
        else:
            digests = list(set(candidates))
        if not digests:
            return []
        # In digest order (as writers claim them); waits for every writer that holds one.
        self.conn.execute(f"SELECT 1 FROM {SCHEMA}.file_contents WHERE digest = ANY(%s) "
                          "ORDER BY digest FOR UPDATE", (sorted(digests),))
        # A statement of its own: its snapshot is taken now, after the locks, and sees what
        # every writer that referenced one of them committed.
        return self.conn.execute(
            f"SELECT digest, size FROM {SCHEMA}.file_contents AS c WHERE digest = ANY(%s) "
            f"AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.files AS f WHERE f.digest = c.digest) "
            "ORDER BY digest", (digests,), binary=True).fetchall()

    def manifests(self, seqs: Sequence[int]) -> Iterator[tuple]:
        # One statement for all of them: a copy_thread of checkpoints without files costs one
        # round trip, not one per checkpoint.
        if not seqs:
            return iter(())
        return iter(self.conn.execute(
            f"SELECT checkpoint_seq, name, digest, mode, checksum FROM {SCHEMA}.files WHERE "
            "checkpoint_seq = ANY(%s) ORDER BY checkpoint_seq, name COLLATE \"C\"",
            (list(seqs),), binary=True).fetchall())

    def delete_contents(self, digests: Sequence[bytes]) -> None:
        # Locked FOR UPDATE by unreferenced(): nobody references them until this commits.
        self.conn.execute(f"DELETE FROM {SCHEMA}.file_chunks WHERE digest = ANY(%s)",
                          (list(digests),))
        self.conn.execute(f"DELETE FROM {SCHEMA}.file_contents WHERE digest = ANY(%s)",
                          (list(digests),))


@contextmanager
def collecting(conn: Any, where: str, params: Sequence[object]) -> Iterator[None]:
    """Around a statement that deletes checkpoints (their ``files`` rows cascade): the
    contents named by the ``files`` rows matching ``where`` (a condition on ``files``,
    evaluated before the block) are collected after it, in the same transaction, if no
    manifest names them any more. Costs one indexed statement when nothing is stored."""
    digests = [digest for (digest,) in conn.execute(
        f"SELECT DISTINCT digest FROM {SCHEMA}.files WHERE {where}", params, binary=True)]
    yield
    if digests:
        attachments.collect(ServerFileDb(conn), digests)


def copy(conn: Any, seqs: Mapping[int, int], server: str) -> None:
    """In ``copy_thread``'s transaction: the copies (old seq -> new seq) get their sources'
    files, every source entry's checksum verified (sharing the content: each new ``files``
    row's foreign key check locks its content ``FOR KEY SHARE`` until COMMIT)."""
    if seqs:
        attachments.copy(ServerFileDb(conn), seqs, server)
