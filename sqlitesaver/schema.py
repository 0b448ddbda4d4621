"""The on-disk schema and its migrations.

A sqlitesaver database is recognised by ``PRAGMA application_id`` (:data:`APPLICATION_ID`) and
versioned by ``PRAGMA user_version``. Migration ``n`` takes a database from version ``n - 1`` to
``n`` inside one ``BEGIN IMMEDIATE ... COMMIT`` that also sets ``user_version``, so a migration
that fails half-way leaves the previous schema exactly as it was.

Ordering: ``seq`` columns grow with commit order and are never reused, even after deletes (see
``high_water``). Generated checkpoint ids are ``seq`` as 16 hex digits, so they sort the same
way; a checkpoint put with a caller-supplied id (``key``, schema version 2) is still ordered by
its ``seq``.
"""

from __future__ import annotations

from dataclasses import dataclass

import apsw

__all__ = ["APPLICATION_ID", "Migration", "MIGRATIONS", "latest_version", "migrate"]

#: "SSav" in ASCII. Written at creation; a database with any other value is not ours.
APPLICATION_ID = 0x53536176


@dataclass(frozen=True)
class Migration:
    """The statements that take the schema from ``version - 1`` to ``version``."""

    version: int
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    # Every page a put touches is a WAL frame written (and, with synchronous=FULL, synced) on
    # each commit, so this schema is as lean as the queries allow: one index per table, no
    # AUTOINCREMENT (its sqlite_sequence page would be rewritten by every insert), checkpoint
    # ids derived from seq instead of indexed (bench/core.py measured 7 frames per commit ->
    # 0.80x a bare insert; 4 frames -> 0.92x).
    Migration(1, (
        """CREATE TABLE checkpoints (
            seq        INTEGER PRIMARY KEY,  -- commit order; the checkpoint id is its hex form
            thread_id  TEXT    NOT NULL,
            namespace  TEXT    NOT NULL,
            parent_seq INTEGER,              -- not a foreign key: parents may be pruned
            created_at INTEGER NOT NULL,     -- microseconds since the Unix epoch, UTC
            state      BLOB    NOT NULL,     -- msgpack (sqlitesaver.codec)
            metadata   BLOB    NOT NULL,     -- msgpack dict
            checksum   INTEGER NOT NULL      -- sqlitesaver.integrity.checkpoint_checksum
        )""",
        "CREATE INDEX checkpoints_by_thread ON checkpoints (thread_id, namespace, seq)",
        """CREATE TABLE writes (
            checkpoint_seq INTEGER NOT NULL REFERENCES checkpoints (seq) ON DELETE CASCADE,
            task_id        TEXT    NOT NULL,
            idx            INTEGER NOT NULL,
            channel        TEXT    NOT NULL,
            value          BLOB    NOT NULL,  -- msgpack
            task_path      TEXT    NOT NULL DEFAULT '',
            checksum       INTEGER NOT NULL,  -- sqlitesaver.integrity.write_checksum
            PRIMARY KEY (checkpoint_seq, task_id, idx)
        ) WITHOUT ROWID""",
        """CREATE TABLE log (
            seq        INTEGER PRIMARY KEY,
            thread_id  TEXT    NOT NULL,
            created_at INTEGER NOT NULL,
            event      BLOB    NOT NULL,  -- msgpack
            checksum   INTEGER NOT NULL   -- sqlitesaver.integrity.log_checksum
        )""",
        "CREATE INDEX log_by_thread ON log (thread_id, seq)",
        # The largest seq ever handed out per table, raised only when rows are deleted, so a
        # new row never reuses the seq (and id) of a deleted one.
        """CREATE TABLE high_water (
            name  TEXT    PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO high_water (name, value) VALUES ('checkpoints', 0), ('log', 0)",
    )),
    # Caller-supplied checkpoint ids (LangGraph's uuid6 ids, kept by copy_thread): `key` is the
    # checkpoint's own id when the caller gave one, `parent_key` its parent's id when that
    # parent had one, so the parent's id survives the parent's deletion. Both NULL for
    # Saver-generated ids, whose rows stay exactly as in version 1 (and so do their
    # checksums). The index is partial so that a put without a key writes no extra index
    # page (one WAL frame fewer per commit); ADD COLUMN with no default rewrites no rows.
    Migration(2, (
        "ALTER TABLE checkpoints ADD COLUMN key TEXT",
        "ALTER TABLE checkpoints ADD COLUMN parent_key TEXT",
        "CREATE UNIQUE INDEX checkpoints_by_key ON checkpoints (thread_id, namespace, key) "
        "WHERE key IS NOT NULL",
    )),
)


def latest_version() -> int:
    """The schema version this library writes (read at call time so tests can extend it)."""
    return MIGRATIONS[-1].version if MIGRATIONS else 0


def migrate(conn: apsw.Connection) -> tuple[int, ...]:
    """Bring the schema to :func:`latest_version`, one transaction per migration.

    Each transaction re-reads ``user_version`` after taking the write lock, so two processes
    opening an old database at once apply every migration exactly once. Returns the versions
    this call applied. Exceptions propagate after ROLLBACK; the caller translates them.
    """
    applied: list[int] = []
    # The common case, an up-to-date schema, must not take the write lock: opening a Saver
    # would otherwise wait behind (or time out on) every writer in other processes.
    if conn.execute("PRAGMA user_version").fetchone()[0] >= latest_version():
        return ()
    for migration in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current >= migration.version:
                conn.execute("COMMIT")
                continue
            if current != migration.version - 1:
                raise RuntimeError(f"schema version {current} cannot be migrated by "
                                   f"migration {migration.version}")
            for statement in migration.statements:
                conn.execute(statement)
            if current == 0:
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={migration.version}")
            conn.execute("COMMIT")
            applied.append(migration.version)
        except BaseException:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            raise
    return tuple(applied)
