"""The tables on a PostgreSQL server and their migrations.

Every table lives in a PostgreSQL schema of its own, :data:`SCHEMA` (``sqlitesaver``), so that
nothing of ours meets another application's tables in ``public``: LangGraph's PostgresSaver,
the library our users most often come from, has a ``checkpoints`` table there.

Migrations (guaranteed by :func:`migrate`):

* each runs in one transaction that also records its version, under a transaction-level
  advisory lock (:data:`MIGRATION_LOCK`), and re-reads the version after taking the lock: many
  workers starting at once apply each migration exactly once, and one that fails leaves the
  previous schema exactly as it was (PostgreSQL's DDL is transactional);
* an up-to-date schema is recognised without the lock and without writing;
* a schema of a newer version (:class:`~sqlitesaver.errors.SchemaVersionError`), or a
  ``sqlitesaver`` schema holding tables without our version table
  (:class:`~sqlitesaver.errors.NotASaverDatabaseError`), is refused before anything is written.
  An empty ``sqlitesaver`` schema (one an administrator created and granted) is used.

The columns are those of the SQLite schema (sqlitesaver/schema.py) in PostgreSQL's types:
``bytea`` payloads, ``bigint`` ids, times and checksums. Ids come from sequences: unique and
never reused, so a deleted checkpoint's id is never handed out again (SQLite's ``high_water``
table does this there). Their order is the engine's business (commit order within a thread).
"""

from __future__ import annotations

from typing import Any

from .. import log
from ..errors import MigrationError, NotASaverDatabaseError, SchemaVersionError
from ..schema import APPLICATION_ID, Migration
from . import errors as pg_errors

__all__ = ["SCHEMA", "MIGRATIONS", "MIGRATION_LOCK", "latest_version", "migrate",
           "read_version"]

#: The PostgreSQL schema (namespace) holding every table.
SCHEMA = "sqlitesaver"
#: pg_advisory_xact_lock(key1, key2) taken by every migration: our application id, then 0.
MIGRATION_LOCK = (APPLICATION_ID, 0)

_S = SCHEMA
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, (
        f"CREATE SCHEMA IF NOT EXISTS {_S}",
        f"""CREATE TABLE {_S}.schema_version (
            application_id bigint  NOT NULL,
            version        integer NOT NULL,
            only_row       boolean PRIMARY KEY DEFAULT true CHECK (only_row)
        )""",
        f"CREATE SEQUENCE {_S}.checkpoints_seq AS bigint MINVALUE 1 NO CYCLE",
        f"CREATE SEQUENCE {_S}.log_seq AS bigint MINVALUE 1 NO CYCLE",
        f"""CREATE TABLE {_S}.checkpoints (
            seq        bigint PRIMARY KEY,  -- the checkpoint id is its 16-digit hex form
            thread_id  text   NOT NULL,
            namespace  text   NOT NULL,
            parent_seq bigint,              -- not a foreign key: parents may be pruned
            created_at bigint NOT NULL,     -- microseconds since the Unix epoch, UTC
            state      bytea  NOT NULL,     -- msgpack (sqlitesaver.codec)
            metadata   bytea  NOT NULL,     -- msgpack dict
            checksum   bigint NOT NULL,     -- sqlitesaver.integrity.checkpoint_checksum
            key        text,                -- a caller-supplied id, else NULL
            parent_key text
        )""",
        f"CREATE INDEX checkpoints_by_thread ON {_S}.checkpoints (thread_id, namespace, seq)",
        f"CREATE UNIQUE INDEX checkpoints_by_key ON {_S}.checkpoints (thread_id, namespace, key)"
        " WHERE key IS NOT NULL",
        f"""CREATE TABLE {_S}.writes (
            checkpoint_seq bigint  NOT NULL
                           REFERENCES {_S}.checkpoints (seq) ON DELETE CASCADE,
            task_id        text    NOT NULL,
            idx            bigint  NOT NULL,
            channel        text    NOT NULL,
            value          bytea   NOT NULL,
            task_path      text    NOT NULL DEFAULT '',
            checksum       bigint  NOT NULL,
            PRIMARY KEY (checkpoint_seq, task_id, idx)
        )""",
        f"""CREATE TABLE {_S}.log (
            seq        bigint PRIMARY KEY,
            thread_id  text   NOT NULL,
            created_at bigint NOT NULL,
            event      bytea  NOT NULL,
            checksum   bigint NOT NULL
        )""",
        f"CREATE INDEX log_by_thread ON {_S}.log (thread_id, seq)",
        f"""CREATE TABLE {_S}.file_contents (
            digest   bytea   PRIMARY KEY,
            size     bigint  NOT NULL,
            chunks   integer NOT NULL,
            checksum bigint  NOT NULL
        )""",
        f"""CREATE TABLE {_S}.file_chunks (
            digest   bytea   NOT NULL REFERENCES {_S}.file_contents (digest) ON DELETE CASCADE,
            idx      integer NOT NULL,
            data     bytea   NOT NULL,
            checksum bigint  NOT NULL,
            PRIMARY KEY (digest, idx)
        )""",
        f"""CREATE TABLE {_S}.files (
            checkpoint_seq bigint  NOT NULL
                           REFERENCES {_S}.checkpoints (seq) ON DELETE CASCADE,
            name           text    NOT NULL,
            digest         bytea   NOT NULL REFERENCES {_S}.file_contents (digest),
            mode           integer NOT NULL,
            checksum       bigint  NOT NULL,
            PRIMARY KEY (checkpoint_seq, name)
        )""",
        f"CREATE INDEX files_by_digest ON {_S}.files (digest)",
    )),
    # Version 2 changes no table: from it on, a checkpoint's, pending write's or log event's
    # checksum may be in the form the server completes (the one-round-trip writes,
    # sqlitesaver/integrity.py server_checksum, server_write_checksum, server_log_checksum),
    # which a version that reads only version 1 would take for damage (ChecksumError, "restore
    # from a backup", for intact rows). With the version raised, such a version refuses the
    # database at open, saying to upgrade (SchemaVersionError), and so does its validator.
    Migration(2, ()),
)


def latest_version() -> int:
    """The schema version this library writes (read at call time so tests can extend it)."""
    return MIGRATIONS[-1].version if MIGRATIONS else 0


# One snapshot for both: our version table's presence and the count of every relation in our
# schema. From pg_class rather than to_regclass(), which looks through the catalog cache: under
# concurrent migrations the two disagreed (8 workers starting at once: one saw a schema full of
# tables and no version table, and refused it as foreign). A migration commits its tables and
# its version row together, so one MVCC snapshot sees all of them or none.
_LOOK = ("SELECT count(*) FILTER (WHERE c.relname = 'schema_version' AND c.relkind = 'r'), "
         "count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
         "WHERE n.nspname = %s")


def read_version(conn: Any, server: str) -> int:
    """The schema version on the server: 0 if there is nothing of ours (nor anything else in
    our schema); raises as :func:`migrate` does for a foreign or newer schema."""
    try:
        exists, relations = conn.execute(_LOOK, (SCHEMA,)).fetchone()
        row = None
        if exists:
            row = conn.execute(f"SELECT application_id, version FROM {SCHEMA}.schema_version"
                               ).fetchone()
    except Exception as exc:
        raise pg_errors.translate(exc, server, "reading the schema version") from exc
    if row is None:
        if exists or relations:
            raise NotASaverDatabaseError(
                f"the PostgreSQL schema {SCHEMA!r} on {server} holds tables that sqlitesaver "
                f"did not create (no version row of ours): another application's. Nothing was "
                f"written. Drop or rename that schema, or use another database.", path=server)
        return 0
    application_id, version = row
    if application_id != APPLICATION_ID:
        raise NotASaverDatabaseError(
            f"the PostgreSQL schema {SCHEMA!r} on {server} belongs to another application "
            f"(application id {application_id:#x}); nothing was written.", path=server)
    if version > latest_version():
        raise SchemaVersionError(
            f"the sqlitesaver tables on {server} have schema version {version}, newer than "
            f"the {latest_version()} this version reads: upgrade sqlitesaver. Nothing was "
            "written.", path=server)
    return version


def migrate(conn: Any, server: str, *, begin: str = "BEGIN") -> tuple[int, ...]:
    """Bring the schema to :func:`latest_version`, one transaction per migration; return the
    versions this call applied, and log them (INFO). ``conn`` is in autocommit mode and outside
    a transaction; ``begin`` starts each migration's transaction (the engine's adds ``SET
    LOCAL`` timeouts)."""
    if read_version(conn, server) == latest_version():
        return ()  # the common case: no lock, no write
    applied: list[int] = []
    for migration in MIGRATIONS:
        try:
            conn.execute(begin, prepare=False)  # maybe several statements: unpreparable
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", MIGRATION_LOCK)
                current = read_version(conn, server)
                if current >= migration.version:
                    conn.execute("COMMIT")
                    continue
                if current != migration.version - 1:
                    raise MigrationError(
                        f"schema version {current} on {server} cannot be migrated by "
                        f"migration {migration.version}", path=server)
                for statement in migration.statements:
                    conn.execute(statement)
                if current == 0:
                    conn.execute(f"INSERT INTO {SCHEMA}.schema_version (application_id, "
                                 "version) VALUES (%s, %s)", (APPLICATION_ID, migration.version))
                else:
                    conn.execute(f"UPDATE {SCHEMA}.schema_version SET version = %s",
                                 (migration.version,))
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except (NotASaverDatabaseError, SchemaVersionError, MigrationError):
            raise
        except Exception as exc:
            error = pg_errors.translate(exc, server, f"applying migration {migration.version}")
            raise MigrationError(
                f"migration {migration.version} of the sqlitesaver tables on {server} failed "
                f"and was rolled back, the previous schema is intact: {error}",
                path=server, sqlstate=error.sqlstate) from exc
        applied.append(migration.version)
    if applied:  # from the version before the first this call applied (INFO)
        log.server_migrated(server, applied[0] - 1, applied[-1])
    return tuple(applied)


def _rollback(conn: Any) -> None:
    """ROLLBACK if the connection still can; the error being raised is the one that matters
    (a lost connection has no transaction left to roll back)."""
    try:
        if not conn.closed:
            conn.execute("ROLLBACK")
    except Exception:
        pass
