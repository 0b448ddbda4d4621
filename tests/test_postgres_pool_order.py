"""The engine's pool lends its idle connections most recently given back first, and its shrink
after ``max_idle`` closes the least recently used one (sqlitesaver/postgres/pool_class.py,
``_IdleConnections``): psycopg_pool's own order (first in, first out) made a lone caller after a
burst cycle through every connection the burst had opened, each call waking a server process
whose caches were cold."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time

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


# --- many threads at once ------------------------------------------------------------------------

SEED = 1


def _settled(pool) -> tuple[list, int, dict]:
    """The pool's idle connections, its count of connections and its stats, once its own
    workers have finished replacing and growing (polled, with a deadline)."""
    deadline = time.monotonic() + 10
    while True:
        stats = pool.get_stats()
        with pool._lock:
            idle, count, growing = list(pool._pool), pool._nconns, pool._growing
        if (not growing and len(idle) == count == stats["pool_available"]) \
                or time.monotonic() > deadline:
            return idle, count, stats
        time.sleep(0.05)


def test_many_threads_lending_while_the_pool_shrinks_and_checks_lose_nothing(pg_url,
                                                                             hang_detector):
    """16 threads lend and give back through the engine on a pool of 8, holding each for a
    random while and pausing between calls, as another thread runs the pool's shrink and check again and again (the
    order's two overrides): no connection lent to two threads at once, none lost or leaked,
    every thread done."""
    hang_detector(120)
    e = pg_engine.Engine(pg_url, busy_timeout=30.0, max_connections=8)
    pool, chooser = e._pool, random.Random(SEED)
    stop, guard = threading.Event(), threading.Lock()
    errors: list[str] = []
    holders: dict[int, int] = {}
    shared: list[tuple[int, int]] = []
    done: list[int] = []
    closed: list = []  # connections the pool closed (its shrinks: none is broken here)

    def lender(number: int) -> None:
        holds = random.Random(SEED * 100 + number)
        try:
            for _ in range(50):
                with e._connection("stress") as conn:
                    with guard:
                        if id(conn) in holders:
                            shared.append((number, holders[id(conn)]))
                        holders[id(conn)] = number
                    conn.execute("SELECT 1").fetchall()
                    time.sleep(holds.random() * 0.003)  # work while holding it
                    with guard:
                        del holders[id(conn)]
                time.sleep(holds.random() * 0.003)  # and between calls: some stay idle
            done.append(number)
        except BaseException as exc:  # reported below
            errors.append(repr(exc))

    def maintainer() -> None:
        while not stop.is_set():
            try:
                pool._shrink_pool()
                if chooser.random() < 0.3:
                    pool.check()
            except BaseException as exc:  # reported below
                errors.append(f"maintenance: {exc!r}")
            time.sleep(chooser.random() * 0.002)  # paced: each shrink closes a connection

    close = pool._close_connection  # what the shrink closes an idle connection with

    def counted(conn) -> None:
        closed.append(conn)
        close(conn)
    pool._close_connection = counted
    try:
        threads = [threading.Thread(target=lender, args=(n,)) for n in range(16)]
        maintenance = threading.Thread(target=maintainer)
        maintenance.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        maintenance.join()
        assert not errors and not shared, (f"seed {SEED}", errors[:5], shared[:5])
        assert sorted(done) == list(range(16)), f"seed {SEED}"
        idle, count, stats = _settled(pool)
        assert len(idle) == count == stats["pool_size"] == stats["pool_available"], (
            f"seed {SEED}", stats, count, len(idle))
        assert len({id(conn) for conn in idle}) == len(idle) and 1 <= count <= 8
        assert not any(conn.closed for conn in idle) and pool._pool.shrinking == 0
        assert closed, f"seed {SEED}: no shrink closed a connection: nothing was exercised"
        with contextlib.ExitStack() as stack:  # every one of them still usable
            held = [stack.enter_context(e._connection("all")) for _ in range(8)]
            assert len({id(conn) for conn in held}) == 8
            for conn in held:
                conn.execute("SELECT 1")
    finally:
        stop.set()
        e.close()


def test_cold_connections_the_server_closed_are_replaced_when_lent(pg_url, hang_detector):
    """Lent last, the connections a burst opened stay idle longest, and a server's idle timeout
    may close them: a burst of transaction() blocks, reads and one-statement writes that meets
    them goes through (pool.py, _stale; pooled.closed_while_idle)."""
    hang_detector(120)
    e = pg_engine.Engine(pg_url, busy_timeout=5.0, max_connections=4)
    killer = psycopg.connect(pg_url, autocommit=True)
    try:
        first, _ = e.put_checkpoint("t", "", None, None, b"\x80", b"\x80")
        with contextlib.ExitStack() as stack:
            grown = [stack.enter_context(e._connection("grow")) for _ in range(4)]
        with e._connection("lone") as top:
            pass
        victims = [conn.info.backend_pid for conn in grown if conn is not top]
        for pid in victims:
            killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while killer.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                             (victims,)).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server says they are gone
        errors: list[str] = []
        start = threading.Barrier(4)

        def call(number: int) -> None:
            try:
                start.wait()
                with e.transaction():
                    e.append_log("t", b"\x80")
                assert e.get_rows("t", "", None)
                e.put_writes("t", "", first, f"task-{number}", "", [(0, "c", b"\x80")], False)
            except BaseException as exc:  # reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=call, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
    finally:
        killer.close()
        e.close()
