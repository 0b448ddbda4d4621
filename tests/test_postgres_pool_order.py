"""The engine's pool lends its idle connections most recently given back first, and its shrink
after ``max_idle`` closes the least recently used one (sqlitesaver/postgres/pool_class.py,
``_IdleConnections``): psycopg_pool's own order (first in, first out) made a lone caller after a
burst cycle through every connection the burst had opened, each call waking a server process
whose caches were cold."""

from __future__ import annotations

import contextlib
import os

import pytest

from sqlitesaver.postgres import engine as pg_engine

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")


def test_the_most_recently_given_back_connection_is_lent_first(pg_url, hang_detector):
    hang_detector(60)
    e = pg_engine.Engine(pg_url, busy_timeout=5.0, max_connections=3)
    try:
        with contextlib.ExitStack() as outer:
            first = outer.enter_context(e._connection("one"))
            with e._connection("two") as second:
                with e._connection("three") as third:
                    assert len({id(first), id(second), id(third)}) == 3
                # given back: third, then second (first still held)
        with e._connection("next") as lent:
            assert lent is first  # given back last of the three
        with e._connection("again") as lent:
            assert lent is first  # and again: a lone caller keeps one connection
        with e._connection("a") as a, e._connection("b") as b, e._connection("c") as c:
            assert {a, b, c} == {first, second, third}
            assert (a, b) == (first, second)  # newest first: first, second, then third
    finally:
        e.close()


def test_a_shrink_closes_the_least_recently_used_idle_connection(pg_url, hang_detector):
    """psycopg_pool closes one idle connection per ``max_idle`` interval in which some stayed
    unused throughout (its _shrink_pool, called here as its scheduler would): the coldest."""
    hang_detector(60)
    e = pg_engine.Engine(pg_url, busy_timeout=5.0, max_connections=3)
    try:
        with e._connection("a") as a, e._connection("b") as b, e._connection("c") as c:
            pass  # given back c, b, a: a is the most recent, c the least
        pool = e._pool
        pool._shrink_pool()  # starts the interval (psycopg_pool: none stayed unused yet)
        pool._shrink_pool()  # all three stayed unused: one goes
        with e._connection("x") as x, e._connection("y") as y:
            assert (x, y) == (a, b)  # c was closed
        assert c.closed and not a.closed and not b.closed
    finally:
        e.close()


def test_a_check_of_the_idle_connections_keeps_their_order(pg_url, hang_detector):
    """psycopg_pool's check (the engine runs it when it finds a dead connection: pool.py,
    _stale) puts the idle connections back one by one from the end of their list, which
    reversed them: the coldest was lent next."""
    hang_detector(60)
    e = pg_engine.Engine(pg_url, busy_timeout=5.0, max_connections=3)
    try:
        with e._connection("a") as a, e._connection("b") as b, e._connection("c") as c:
            pass  # given back c, b, a: a is the most recent
        e._pool.check()
        with e._connection("x") as x, e._connection("y") as y, e._connection("z") as z:
            assert (x, y, z) == (a, b, c)
    finally:
        e.close()
