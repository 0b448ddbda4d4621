"""The PostgreSQL tables and their migrations (sqlitesaver/postgres/schema.py) on a real server:
created once however many workers start at once, an up-to-date schema left unwritten, a newer
or foreign schema refused with nothing written, a failing migration rolled back whole."""

from __future__ import annotations

import os
import threading

import pytest

from sqlitesaver.errors import MigrationError, NotASaverDatabaseError, SchemaVersionError
from sqlitesaver.postgres import connect, schema, target
from sqlitesaver.schema import APPLICATION_ID, Migration

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")


def open_url(url: str):
    params = target.parse(url)
    return connect.open_connection(params, target.describe(params), connect.Options())


def catalog(conn) -> tuple:
    """Everything a migration could have written: every relation outside the system schemas,
    every schema, and our version row; plus the database's WAL position would be too strict
    (autovacuum writes), so the catalog is what is compared."""
    relations = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN "
        "('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1, 2").fetchall()
    schemas = conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1").fetchall()
    version = None
    if conn.execute("SELECT to_regclass('sqlitesaver.schema_version')").fetchone()[0]:
        version = conn.execute("SELECT * FROM sqlitesaver.schema_version").fetchall()
    return relations, schemas, version


def test_a_fresh_database_gets_every_table_once(pg_url):
    conn = open_url(pg_url)
    try:
        assert schema.migrate(conn, "srv") == (1, 2)
        after = catalog(conn)
        assert schema.migrate(conn, "srv") == ()  # up to date: nothing applied
        assert catalog(conn) == after
        assert after[2] == [(APPLICATION_ID, 2, True)]
        tables = {name for space, name, kind in after[0] if space == "sqlitesaver" and kind == "r"}
        assert tables == {"schema_version", "checkpoints", "writes", "log", "file_contents",
                          "file_chunks", "files"}
        assert schema.read_version(conn, "srv") == 2
    finally:
        conn.close()


def test_an_up_to_date_schema_takes_no_lock(pg_url):
    """Opening must not wait behind a migration lock someone holds (e.g. a worker busy
    migrating a big table) when there is nothing to migrate."""
    first, holder = open_url(pg_url), open_url(pg_url)
    try:
        schema.migrate(first, "srv")
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s, %s)", schema.MIGRATION_LOCK)
        conn = open_url(pg_url)
        try:
            conn.execute("SET lock_timeout = '100ms'")
            assert schema.migrate(conn, "srv") == ()
        finally:
            conn.close()
        holder.execute("ROLLBACK")
    finally:
        first.close()
        holder.close()


def test_many_workers_starting_at_once_migrate_exactly_once(pg_url, hang_detector):
    hang_detector(60)
    count = 8
    conns = [open_url(pg_url) for _ in range(count)]
    start = threading.Barrier(count)
    results: list = [None] * count

    def work(i: int) -> None:
        start.wait()
        try:
            results[i] = schema.migrate(conns[i], "srv")
        except BaseException as exc:  # reported below, with the others
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        # Each migration runs in its own transaction under the advisory lock, so one worker
        # may apply 1 and another 2: what must hold is that every version is applied exactly
        # once across all workers, in order, and nobody fails (CI saw the (1,), (2,) split).
        assert all(isinstance(r, tuple) for r in results), results
        applied = [version for r in results for version in r]
        assert sorted(applied) == [1, 2], results
        assert all(list(r) == sorted(r) for r in results), results
        assert catalog(conns[0])[2] == [(APPLICATION_ID, 2, True)]
    finally:
        for conn in conns:
            conn.close()


def test_a_newer_schema_is_refused_and_nothing_written(pg_url):
    conn = open_url(pg_url)
    try:
        schema.migrate(conn, "srv")
        conn.execute("UPDATE sqlitesaver.schema_version SET version = 99")
        before = catalog(conn)
        with pytest.raises(SchemaVersionError, match="version 99.*upgrade sqlitesaver"):
            schema.migrate(conn, "postgresql://h/db")
        assert catalog(conn) == before
    finally:
        conn.close()


@pytest.mark.parametrize("setup", [
    # another application's table in a schema of that name
    ["CREATE SCHEMA sqlitesaver", "CREATE TABLE sqlitesaver.checkpoints (id int)"],
    # a version table that is not ours
    ["CREATE SCHEMA sqlitesaver",
     "CREATE TABLE sqlitesaver.schema_version (application_id bigint, version int, "
     "only_row boolean)", "INSERT INTO sqlitesaver.schema_version VALUES (1234, 1, true)"],
    # our version table, emptied
    ["CREATE SCHEMA sqlitesaver",
     "CREATE TABLE sqlitesaver.schema_version (application_id bigint, version int, "
     "only_row boolean)"],
])
def test_foreign_tables_are_refused_and_nothing_written(pg_url, setup):
    conn = open_url(pg_url)
    try:
        for statement in setup:
            conn.execute(statement)
        before = catalog(conn)
        with pytest.raises(NotASaverDatabaseError, match="sqlitesaver"):
            schema.migrate(conn, "srv")
        assert catalog(conn) == before
    finally:
        conn.close()


def test_tables_of_our_names_in_public_are_left_alone(pg_url):
    """LangGraph's PostgresSaver has a public.checkpoints: ours live in their own schema."""
    conn = open_url(pg_url)
    try:
        conn.execute("CREATE TABLE public.checkpoints (thread_id text, checkpoint jsonb)")
        conn.execute("INSERT INTO public.checkpoints VALUES ('t', '{}')")
        assert schema.migrate(conn, "srv") == (1, 2)
        assert conn.execute("SELECT * FROM public.checkpoints").fetchall() == [("t", {})]
    finally:
        conn.close()


def test_an_empty_schema_made_by_an_administrator_is_used(pg_url):
    conn = open_url(pg_url)
    try:
        conn.execute("CREATE SCHEMA sqlitesaver")
        assert schema.migrate(conn, "srv") == (1, 2)
    finally:
        conn.close()


def test_a_failing_migration_is_rolled_back_whole(pg_url, monkeypatch):
    conn = open_url(pg_url)
    try:
        schema.migrate(conn, "srv")
        before = catalog(conn)
        broken = Migration(3, ("CREATE TABLE sqlitesaver.extra (x int)",
                               "INSERT INTO sqlitesaver.extra VALUES (1 / 0)"))
        monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, broken))
        with pytest.raises(MigrationError, match="migration 3.*rolled back") as caught:
            schema.migrate(conn, "srv")
        assert caught.value.sqlstate == "22012"  # division_by_zero, kept from the server
        assert catalog(conn) == before  # no table extra, still version 2
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        conn.close()
