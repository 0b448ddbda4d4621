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

import functools
import re
from dataclasses import dataclass

import apsw

__all__ = ["APPLICATION_ID", "Migration", "MIGRATIONS", "latest_version", "migrate",
           "expected_schema", "describe_schema", "schema_differences", "normalize_sql"]

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
    # Files that belong to a checkpoint (issue #18; sqlitesaver.attachments). Three new tables
    # and nothing on the existing ones, so a put without files writes exactly the pages it
    # wrote in version 2 (inserting a checkpoint never looks at the tables that refer to it;
    # deleting one looks up `files` by its primary key, as it does `writes`).
    # - file_contents: one row per distinct content (SHA-256 digest), however many
    #   checkpoints hold it: identical bytes are stored once.
    # - file_chunks: the bytes, CHUNK_SIZE (1 MiB) per row, each with its own CRC-32, so no
    #   value comes near SQLite's 1 GB limit and a read holds one chunk in memory. A rowid
    #   table: its rows are large, which WITHOUT ROWID handles badly (sqlite.org/withoutrowid).
    # - files: a checkpoint's manifest, one row per relative path. Its digest refers to
    #   file_contents without ON DELETE: SQLite refuses to delete content a manifest still
    #   names. files_by_digest makes that check, and the sweep of unreferenced content, one
    #   index lookup per content.
    Migration(3, (
        """CREATE TABLE file_contents (
            digest   BLOB    PRIMARY KEY,  -- SHA-256 of the content, 32 bytes
            size     INTEGER NOT NULL,
            chunks   INTEGER NOT NULL,
            checksum INTEGER NOT NULL      -- sqlitesaver.attachments.content_checksum
        ) WITHOUT ROWID""",
        """CREATE TABLE file_chunks (
            digest   BLOB    NOT NULL REFERENCES file_contents (digest) ON DELETE CASCADE,
            idx      INTEGER NOT NULL,
            data     BLOB    NOT NULL,
            checksum INTEGER NOT NULL,     -- sqlitesaver.attachments.chunk_checksum
            PRIMARY KEY (digest, idx)
        )""",
        """CREATE TABLE files (
            checkpoint_seq INTEGER NOT NULL REFERENCES checkpoints (seq) ON DELETE CASCADE,
            name           TEXT    NOT NULL,  -- a relative POSIX path, '/'-separated
            digest         BLOB    NOT NULL REFERENCES file_contents (digest),
            mode           INTEGER NOT NULL,  -- permission bits
            checksum       INTEGER NOT NULL,  -- sqlitesaver.attachments.entry_checksum
            PRIMARY KEY (checkpoint_seq, name)
        ) WITHOUT ROWID""",
        "CREATE INDEX files_by_digest ON files (digest)",
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


# --- what the schema must be ------------------------------------------------------------------
# A database holds exactly the schema its migrations created: the Saver (at open) and the
# validator compare it, object by object, with the schema these statements create in memory for
# the same user_version. So a migration, once released, is never edited, only followed by a new
# one (comments and whitespace aside: they are not compared). Anything added, dropped or
# changed behind the Saver's back is reported: an extra trigger can delete what put() wrote,
# a missing index makes reads slow and lets duplicate caller-supplied ids in. SQLite's own
# sqlite_stat* tables (written by ANALYZE and PRAGMA optimize) only steer its query planner and
# are left out.

def expected_schema(version: int) -> dict[str, tuple]:
    """:func:`describe_schema` of a new database after migrations 1 to ``version``."""
    return _expected(MIGRATIONS, version)


@functools.lru_cache(maxsize=8)
def _expected(migrations: tuple[Migration, ...], version: int) -> dict[str, tuple]:
    conn = apsw.Connection(":memory:")
    try:
        for migration in migrations:
            if migration.version <= version:
                for statement in migration.statements:
                    conn.execute(statement)
        return describe_schema(conn)
    finally:
        conn.close()


def describe_schema(conn: apsw.Connection) -> dict[str, tuple]:
    """Every object of the main database's schema, SQLite's sqlite_stat* tables aside, by
    ``"<type> <name>"``: its table, its normalized SQL, and what SQLite's PRAGMAs say of it
    (for a table: its columns, foreign keys, WITHOUT ROWID and STRICT; for an index: its
    columns, uniqueness, origin and partiality). Raises ``apsw.Error`` (or UnicodeDecodeError
    for a damaged schema) untranslated."""
    found: dict[str, tuple] = {}
    objects = conn.execute("SELECT type, name, tbl_name, sql FROM main.sqlite_schema WHERE "
                           "name NOT LIKE 'sqlite\\_stat%' ESCAPE '\\' ORDER BY type, name"
                           ).fetchall()
    shapes = {name: (without_rowid, strict) for _, name, _, _, without_rowid, strict
              in conn.execute("PRAGMA main.table_list")}
    for kind, name, table, sql in objects:
        details: tuple = ()
        if kind == "table" and (sql or "").lstrip()[:14].upper() != "CREATE VIRTUAL":
            details = (tuple(conn.execute("SELECT * FROM pragma_table_xinfo(?, 'main')",
                                          (name,))),
                       tuple(conn.execute("SELECT * FROM pragma_foreign_key_list(?, 'main')",
                                          (name,))),
                       shapes.get(name))
        elif kind == "index":
            flags = [row[2:] for row in conn.execute(
                "SELECT * FROM pragma_index_list(?, 'main')", (table,)) if row[1] == name]
            details = (tuple(conn.execute("SELECT * FROM pragma_index_xinfo(?, 'main')",
                                          (name,))),
                       tuple(flags))
        found[f"{kind} {name}"] = (table, normalize_sql(sql), details)
    return found


def schema_differences(expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    """Each way ``found`` differs from ``expected`` (both from :func:`describe_schema`), one
    sentence each, naming the object: missing, extra, or changed (and how)."""
    problems = []
    for key in sorted(expected.keys() - found.keys()):
        problems.append(f"missing {_named(key, expected[key])}")
    for key in sorted(found.keys() - expected.keys()):
        sql = found[key][1] or ""
        problems.append(f"extra {_named(key, found[key])}"
                        + (f": {sql[:120]}{'...' if len(sql) > 120 else ''}" if sql else ""))
    for key in sorted(expected.keys() & found.keys()):
        if expected[key] != found[key]:
            problems.append(f"{_named(key, found[key])} differs: "
                            f"{_how(key, expected[key], found[key])}")
    return problems


def _named(key: str, entry: tuple) -> str:
    kind, name = key.split(" ", 1)
    return f"{kind} {name!r}" + (f" (on table {entry[0]!r})" if kind in ("index", "trigger")
                                 else "")


def _how(key: str, expected: tuple, found: tuple) -> str:
    kind = key.split(" ", 1)[0]
    if expected[0] != found[0]:
        return f"it is on table {found[0]!r}, not {expected[0]!r}"
    if kind == "table":
        want = {column[1]: column for column in expected[2][0]}
        have = {column[1]: column for column in found[2][0]}
        notes = [f"missing column {name!r}" for name in want if name not in have]
        notes += [f"extra column {name!r}" for name in have if name not in want]
        notes += [f"column {name!r} is {_column(have[name])}, not {_column(want[name])}"
                  for name in want if name in have and want[name][2:] != have[name][2:]]
        if not notes and [c[1] for c in want.values()] != [c[1] for c in have.values()]:
            notes.append("its columns are in another order")
        if expected[2][1] != found[2][1]:
            notes.append("its foreign keys differ")
        if expected[2][2] != found[2][2]:
            notes.append("its WITHOUT ROWID / STRICT differ")
        if notes:
            return "; ".join(notes)
    elif kind == "index":
        if expected[2][0] != found[2][0]:
            return (f"it indexes ({', '.join(str(c[2]) for c in found[2][0] if c[5])}), not "
                    f"({', '.join(str(c[2]) for c in expected[2][0] if c[5])})")
        if expected[2][1] != found[2][1]:
            return "its UNIQUE or WHERE differs"
    return f"its SQL is {found[1]!r}, not {expected[1]!r}"


def _column(column: tuple) -> str:
    _, _, declared, notnull, default, pk, hidden = column
    text = declared or "untyped"
    if notnull:
        text += " NOT NULL"
    if default is not None:
        text += f" DEFAULT {default}"
    if pk:
        text += f" (primary key #{pk})"
    if hidden:
        text += " (hidden or generated)"
    return text


# A quoted name or string (SQLite's four quotes, a doubled quote inside), or a comment.
_QUOTED_OR_COMMENT = re.compile(r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?"""
                                r"|--[^\n]*|/\*.*?(?:\*/|\Z)", re.S)
_PLACEHOLDER = re.compile(r"\0(\d+)\0")


def normalize_sql(sql: str | None) -> str | None:
    """``sql`` without comments, with runs of whitespace made one space (none next to
    punctuation) and case folded, except inside quotes: the same definition written another way
    compares equal, and any other change does not."""
    if sql is None:
        return None
    quoted: list[str] = []

    def set_aside(match: re.Match) -> str:
        token = match.group(0)
        if token[0] in "-/":
            return " "  # a comment
        quoted.append(token)
        return f"\0{len(quoted) - 1}\0"

    text = " ".join(_QUOTED_OR_COMMENT.sub(set_aside, sql).split()).casefold()
    text = re.sub(r" ?([(),]) ?", r"\1", text)
    return _PLACEHOLDER.sub(lambda match: quoted[int(match.group(1))], text)
