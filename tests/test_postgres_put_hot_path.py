"""What the one-statement writes' hot path keeps while it is trimmed (session 21): the put and
the log append are one prepared statement each whatever the values of their ints (a CRC-32
spans int4 and int8), and a NUL in any text of a put is refused by name, before anything is
sent."""

from __future__ import annotations

import os

import pytest

from sqlitesaver import Saver
from sqlitesaver.errors import InvalidArgumentError

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")


def prepared(saver: Saver, like: str) -> list[str]:
    """The parameter types of the statements like ``like`` prepared on the pooled connection
    (one thread: the pool's one connection)."""
    engine = saver._engine
    assert engine._pool.get_stats()["pool_size"] == 1
    with engine._connection("test") as conn:
        return [row[0] for row in conn.execute(
            "SELECT parameter_types::text FROM pg_prepared_statements WHERE statement LIKE %s",
            (like,), prepare=False)]


def test_a_put_and_a_log_append_are_one_prepared_statement_whatever_their_ints(pg_url):
    with Saver(pg_url) as saver:
        # From the second put on, a generated parent (its seq an int parameter): one shape,
        # run 39 times; the first put's shape runs once, under psycopg's prepare threshold.
        parent = None
        for n in range(40):  # CRC-32s below and above 2**31: int4 and int8 to psycopg
            parent = saver.put("t", {"n": n}, parent_id=parent).checkpoint_id
            saver.append_log("t", {"n": n})
        rows = saver.list("t")
        assert len(list(rows)) == 40
        puts = prepared(saver, "%INSERT INTO%checkpoints%")
        logs = prepared(saver, "%INSERT INTO%log%")
    assert len(puts) == 1 and "bigint" in puts[0], puts
    assert len(logs) == 1 and "bigint" in logs[0], logs


@pytest.mark.parametrize("argument", ["thread_id", "namespace", "parent_id", "checkpoint_id"])
def test_a_nul_in_any_text_of_a_put_is_refused_by_name_and_nothing_is_written(pg_url, argument):
    with Saver(pg_url) as saver:
        saver.put("t", {"n": 0}, checkpoint_id="first")
        texts = {"thread_id": "t", "namespace": "", "parent_id": "first",
                 "checkpoint_id": "second"}
        texts[argument] = texts[argument] + "\x00"
        thread_id = texts.pop("thread_id")
        with pytest.raises(InvalidArgumentError, match=f"^{argument} .*NUL"):
            saver.put(thread_id, {"n": 1}, **texts)
        assert [c.checkpoint_id for c in saver.list("t")] == ["first"]
