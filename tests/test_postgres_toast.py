"""PostgreSQL: the engine's writes ask for LZ4 TOAST compression where the server has it
(sqlitesaver/postgres/connect.py, TOAST_COMPRESSION), on every write path, and leave the
server's own compression alone where it does not."""

from __future__ import annotations

import os

import pytest

from sqlitesaver import Saver
from sqlitesaver.postgres import connect

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")

# Compressible and past the ~2 KB at which PostgreSQL compresses a row's values.
BIG = {"text": "the agent looked up the contract and the payment history. " * 200}


def compression(url: str) -> dict[str, set]:
    """The compression of every stored value of ours, by table (None: stored uncompressed)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return {table: {row[0] for row in conn.execute(
            f"SELECT pg_column_compression({column}) FROM sqlitesaver.{table}")}
            for table, column in (("checkpoints", "state"), ("writes", "value"),
                                  ("log", "event"))}


def write_every_way(saver: Saver) -> None:
    """A value through each write path: the one-statement put, put_writes and append_log,
    and the two-round-trip ones (a put with files, a transaction() block)."""
    ref = saver.put("t", BIG)
    saver.put_writes("t", ref.checkpoint_id, "task", [("ch", BIG)])
    saver.append_log("t", BIG)
    saver.put("t", BIG, files={"a.txt": b"x"})
    with saver.transaction():
        saver.put("t", BIG)
        saver.append_log("t", BIG)


def test_every_write_path_compresses_with_lz4_where_the_server_has_it(pg_url):
    with Saver(pg_url) as saver:
        if not saver._engine.server_settings.lz4:
            pytest.skip("this server has no LZ4 (PostgreSQL 13 or older, or built without it)")
        assert saver.settings()["toast_compression"] == "lz4"
        write_every_way(saver)
    assert compression(pg_url) == {"checkpoints": {"lz4"}, "writes": {"lz4"}, "log": {"lz4"}}
    with Saver(pg_url) as saver:  # and it reads back
        assert saver.get("t").state == BIG
        assert [event.event for event in saver.read_log("t")] == [BIG] * 2


def test_without_lz4_the_server_default_applies(pg_url, monkeypatch):
    read = connect.read_settings

    def without_lz4(conn, server):
        return connect.ServerSettings(**{**read(conn, server).__dict__, "lz4": False})

    monkeypatch.setattr(connect, "read_settings", without_lz4)
    with Saver(pg_url) as saver:
        assert saver.settings()["toast_compression"] == "server default"
        write_every_way(saver)
    assert compression(pg_url) == {"checkpoints": {"pglz"}, "writes": {"pglz"},
                                   "log": {"pglz"}}


def test_an_operators_choice_of_compression_stands(pg_url):
    """A default_toast_compression set for the database (source 'database', not 'default')
    is the operator's: the engine's writes leave it alone."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        dbname = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f'ALTER DATABASE "{dbname}" SET default_toast_compression = pglz')
    with Saver(pg_url) as saver:
        assert saver.settings()["toast_compression"] == "server default"
        write_every_way(saver)
    assert compression(pg_url) == {"checkpoints": {"pglz"}, "writes": {"pglz"},
                                   "log": {"pglz"}}
