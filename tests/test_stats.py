"""``stats()`` on both engines: the keys they share mean the same (commits, transitions, stored
file contents, bytes stored), each engine's own keys are documented in its ``stats``
docstring, and the counters count what they say. (SQLite's WAL counters are tested with the
WAL bound, tests/test_wal_bound.py; its lock waits in tests/test_contention.py.)"""

from __future__ import annotations

import os
import random
import threading

import pytest

from sqlitesaver import InvalidArgumentError, Saver, SaverClosedError

from conftest import inject_retryable_failures

#: The keys both engines report, with the same meaning.
SHARED = {"commits", "transitions", "db_bytes", "file_contents", "file_bytes"}
OWN = {"sqlite": {"wal_checkpoints", "wal_checkpoints_busy", "lock_waits", "readers_open",
                  "readers_idle", "reader_waits", "wal_bytes"},
       "postgres": {"retries", "connections_open", "connections_idle", "connection_waits"}}


def engine_of(target: str) -> str:
    return "postgres" if target.startswith("postgresql://") else "sqlite"


def stored_bytes(stats: dict[str, int]) -> int:
    """What the store takes now: on SQLite the file and its -wal (a commit lands in the -wal
    first), on a server our tables (``db_bytes``)."""
    return stats["db_bytes"] + stats.get("wal_bytes", 0)


def test_keys_are_the_shared_ones_and_the_engines_own_each_documented(any_empty_target):
    with Saver(any_empty_target) as saver:
        stats = saver.stats()
        assert set(stats) == SHARED | OWN[engine_of(any_empty_target)]
        assert all(type(value) is int and value >= 0 for value in stats.values()), stats
        doc = type(saver).stats.__doc__
        undocumented = [key for key in stats if f"``{key}``" not in doc]
        assert not undocumented, f"{type(saver).__name__}.stats does not explain {undocumented}"


def test_commits_and_transitions_count_what_was_committed(any_empty_target):
    seed = random.randrange(2**32)
    print("seed", seed)
    rng = random.Random(seed)
    with Saver(any_empty_target) as saver:
        start = saver.stats()
        assert start["commits"] == start["transitions"] == 0  # opening counts nothing
        puts = rng.randrange(3, 12)
        ref = None
        for n in range(puts):
            ref = saver.put("t", {"n": n}, parent_id=ref and ref.checkpoint_id)
        saver.put_writes("t", ref.checkpoint_id, "task", [("ch", 1)])
        saver.append_log("t", {"e": 1})
        alone = saver.stats()
        assert alone["commits"] == alone["transitions"] == puts + 2, seed
        with saver.transaction():  # one transition, one commit, however many calls
            for n in range(rng.randrange(2, 6)):
                saver.put("u", {"n": n})
        assert saver.stats()["commits"] == saver.stats()["transitions"] == puts + 3, seed
        with pytest.raises(InvalidArgumentError):  # refused before anything is written
            saver.put("", {})
        assert saver.get("t").state == {"n": puts - 1}  # reads commit nothing
        assert list(saver.list("t", limit=1)) and list(saver.read_log("t"))
        assert saver.stats()["commits"] == puts + 3, seed


def test_stored_bytes_grow_with_what_is_stored(any_empty_target):
    payload = os.urandom(1 << 20)  # incompressible: a server's TOAST stores it whole
    with Saver(any_empty_target) as saver:
        before = stored_bytes(saver.stats())
        saver.put("t", {"blob": payload})
        after = saver.stats()
        assert stored_bytes(after) - before >= len(payload), (before, after)
        assert after["file_contents"] == after["file_bytes"] == 0  # no files stored


def test_a_closed_saver_refuses_stats(any_empty_target):
    saver = Saver(any_empty_target)
    saver.close()
    with pytest.raises(SaverClosedError):
        saver.stats()


def test_postgres_connections_and_waits_for_one(pg_empty_url, hang_detector):
    """``connections_open``/``_idle`` describe the pool; a call that found every connection in
    use counts in ``connection_waits``."""
    hang_detector(60)
    with Saver(pg_empty_url, max_connections=1) as saver:
        stats = saver.stats()
        assert stats["connections_open"] == 1 and stats["connections_idle"] == 1, stats
        assert stats["connection_waits"] == 0, stats
        pool = saver._engine._pool
        done = threading.Event()
        failures: list[BaseException] = []

        def reader() -> None:
            try:
                saver.get("t")  # waits: the only connection is in the block below
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)
            finally:
                done.set()

        with saver.transaction():
            saver.put("t", {"n": 1})
            thread = threading.Thread(target=reader)
            thread.start()
            # The reader is queued once the pool says so (bounded by the hang detector).
            while pool.get_stats().get("requests_waiting", 0) < 1:
                assert not done.is_set(), failures
                done.wait(0.005)
        thread.join()
        assert not failures, failures
        stats = saver.stats()
        assert stats["connection_waits"] >= 1 and stats["connections_open"] == 1, stats


def test_postgres_retries_count_transactions_run_again(pg_empty_url, monkeypatch):
    with Saver(pg_empty_url) as saver:
        failures = inject_retryable_failures(monkeypatch, 3)
        saver.put("t", {"n": 1})
        stats = saver.stats()
        assert failures["left"] == 0
        assert stats["retries"] == 3 and stats["commits"] == 1, stats
