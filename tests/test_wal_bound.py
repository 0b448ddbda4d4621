"""Readers never let the WAL grow without bound (issue #5, item 3), and stats() reports it.

SQLite restarts a WAL from its beginning only when no reader still uses it, and its automatic
checkpoint never waits; so readers that overlap (threads listing all the time) or one that never
ends (an iterator kept open) let it grow with every commit (measured before the fix: 92 MiB
after 6,000 puts of 4 KiB). Here ``WAL_LIMIT`` is lowered to 1 MiB so a few hundred puts would
pass it many times over.

SQLite by nature: the -wal file (a server's WAL is its own).
"""

from __future__ import annotations

import os
import threading

import pytest

from sqlitesaver import Saver
from sqlitesaver.sqlite import wal

LIMIT = 1 << 20
STATE = {"text": "x" * 4000}


@pytest.fixture
def small_wal_limit(monkeypatch) -> int:
    monkeypatch.setattr(wal, "WAL_LIMIT", LIMIT)
    return LIMIT


def test_the_wal_stays_bounded_under_continuous_reads_and_writes(db_path, small_wal_limit):
    with Saver(db_path, durability="normal") as saver:
        for _ in range(300):
            saver.put("read", STATE)
        # A reader that never ends: an iterator taken one step and kept open all along.
        held = saver.list("read")
        first = next(held)
        stop = threading.Event()
        reads = {"list": 0, "get": 0, "log": 0}
        failures: list[BaseException] = []

        def reader(kind: str) -> None:
            try:
                while not stop.is_set():
                    if kind == "list":
                        assert len(list(saver.list("read", limit=20))) == 20
                    elif kind == "get":
                        assert saver.get("read") is not None
                    else:
                        list(saver.read_log("write"))
                    reads[kind] += 1
            except BaseException as exc:  # handed to the test thread
                failures.append(exc)

        threads = [threading.Thread(target=reader, args=(kind,))
                   for kind in ("list", "list", "get", "log")]
        for thread in threads:
            thread.start()
        peak = 0
        try:
            for n in range(1500):  # about 18 MiB of WAL frames if nothing reset it
                saver.put("write", STATE)
                if n % 10 == 0:
                    saver.append_log("write", n)
                peak = max(peak, saver.stats()["wal_bytes"])
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert failures == []
        assert all(reads.values()), reads  # every reader really ran alongside the writes
        stats = saver.stats()
        # Bounded: the limit, plus the commit that crossed it.
        assert peak <= LIMIT + 64 * 1024, (peak, stats)
        assert stats["wal_checkpoints"] >= 1, stats
        # The kept iterator still works, and goes on from where it was, in order.
        rest = list(held)
        assert [c.checkpoint_id for c in [first, *rest]] == \
            [c.checkpoint_id for c in saver.list("read")]
        assert len(rest) == 299


def test_stats_report_the_wal_and_database_sizes_and_the_counters(db_path):
    with Saver(db_path) as saver:
        stats = saver.stats()
        assert set(stats) == {"commits", "transitions", "lock_waits", "wal_checkpoints",
                              "wal_checkpoints_busy", "wal_bytes", "db_bytes",
                              "readers_open", "readers_idle", "reader_waits", "file_contents",
                              "file_bytes"}
        assert stats["wal_bytes"] == os.path.getsize(db_path + "-wal")
        assert stats["db_bytes"] == os.path.getsize(db_path)
        assert stats["commits"] == stats["transitions"] == 0
        saver.put("t", STATE)
        with saver.transaction():
            saver.put("t", 1)
            saver.append_log("t", "e")
        after = saver.stats()
        assert after["commits"] == 2 and after["transitions"] == 2
        assert after["wal_bytes"] == os.path.getsize(db_path + "-wal") > stats["wal_bytes"]


def test_a_reader_in_another_connection_that_never_ends_is_outwaited_then_left(
        db_path, small_wal_limit, monkeypatch):
    """A snapshot held by a connection the Saver does not own (another process's long read)
    cannot be ended from here: the forced checkpoint waits WAL_CHECKPOINT_WAIT, reports busy,
    and is not tried again on every commit (that would stall each one)."""
    import apsw
    monkeypatch.setattr(wal, "WAL_CHECKPOINT_WAIT", 0.05)
    with Saver(db_path, durability="normal") as saver:
        saver.put("t", STATE)
        other = apsw.Connection(db_path)
        try:
            other.execute("BEGIN")
            other.execute("SELECT count(*) FROM checkpoints").fetchall()  # holds a snapshot
            for _ in range(300):  # ~3.5 MiB of frames: past the limit, and past it again
                saver.put("t", STATE)
            held = saver.stats()
            other.execute("COMMIT")
        finally:
            other.close()
        assert held["wal_checkpoints_busy"] >= 1, held
        # Tried again only after each further LIMIT of growth, not at every commit.
        assert held["wal_checkpoints"] <= held["wal_bytes"] // LIMIT + 1, held
        # Once the reader has gone, SQLite's own checkpoint resets the WAL again: it is reused
        # from its beginning and grows no further.
        for _ in range(300):
            saver.put("t", STATE)
        assert saver.stats()["wal_bytes"] <= held["wal_bytes"] + 64 * 1024
