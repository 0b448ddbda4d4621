"""What tests/test_files.py and tests/test_workspace.py share to run on both engines (with
conftest's ``db_target``): ways to look at what is stored behind the Saver's back."""

from __future__ import annotations

import re

import apsw

from conftest import family_digest

TABLES = ("checkpoints", "writes", "log", "files", "file_contents", "file_chunks")


def is_server(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def server_sql(sql: str) -> str:
    """A statement written for SQLite, for the server: the tables in our schema, and the one
    SQLite-only function the tests use to zero a chunk."""
    sql = re.sub(r"\b(FROM|INTO|UPDATE|JOIN|TABLE)\s+(files|file_contents|file_chunks|"
                 r"schema_version|checkpoints|writes|log)\b", r"\1 sqlitesaver.\2", sql)
    return sql.replace("CAST(zeroblob(length(data)) AS BLOB)",
                       "decode(repeat('00', length(data)), 'hex')")


def raw(target: str, sql: str, params: tuple = ()) -> list:
    """A statement behind the Saver's back, with foreign keys not enforced (damage does not
    ask): through APSW on a closed SQLite file (never the stdlib sqlite3), or as a
    superuser session on the server."""
    if not is_server(target):
        conn = apsw.Connection(target)
        try:
            conn.execute("PRAGMA foreign_keys=OFF")
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no foreign key triggers
        cursor = conn.execute(server_sql(sql).replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description else []


def counts(target: str) -> tuple[int, int, int]:
    """Rows in files, file_contents, file_chunks."""
    return tuple(raw(target, f"SELECT count(*) FROM {table}")[0][0]
                 for table in ("files", "file_contents", "file_chunks"))


def stored(saver, target: str) -> tuple[int, int]:
    """(distinct contents, their bytes): from stats() on SQLite, where it reports them."""
    if not is_server(target):
        stats = saver.stats()
        return stats["file_contents"], stats["file_bytes"]
    return tuple(raw(target, "SELECT count(*), coalesce(sum(size), 0)::bigint "
                             "FROM file_contents")[0])


def stored_digest(target: str) -> object:
    """What a refused call must leave unchanged: a file's bytes (with its -wal/-journal), or
    every row of every sqlitesaver table on the server (sequences aside: a refused put may
    draw a seq, a gap, never a reuse)."""
    if not is_server(target):
        return family_digest(target)
    return tuple(tuple(raw(target, f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY "
                                   f"t::text), '')) FROM {table} AS t")[0])
                 for table in (*TABLES, "schema_version"))
