"""Bounded resources (issue #5): no leaked descriptors or threads across many Savers, a very
large state round-trips, and listing a long history streams in flat memory."""

from __future__ import annotations

import gc
import os
import random
import threading
import tracemalloc

from sqlitesaver import Saver

SEED = 7310


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def native_threads() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_opening_and_closing_a_thousand_savers_leaks_no_descriptors_or_threads(db_path):
    with Saver(db_path) as saver:  # create once; then every open is a plain reopen
        saver.put("t", {"n": 0})
    gc.collect()
    fds, threads, py_threads = open_fds(), native_threads(), threading.active_count()
    for n in range(1000):
        with Saver(db_path) as saver:
            if n % 100 == 0:  # readers too: the pool must close them
                assert saver.get("t").state["n"] == n // 100
                saver.put("t", {"n": n // 100 + 1})
    gc.collect()
    assert open_fds() == fds, "file descriptors leaked"
    assert native_threads() == threads and threading.active_count() == py_threads


def test_a_64_mib_state_round_trips(db_path):
    rng = random.Random(SEED)
    state = {"blob": rng.randbytes(64 * 1024 * 1024), "tail": "end"}
    with Saver(db_path) as saver:
        ref = saver.put("big", state)
    with Saver(db_path) as saver:
        got = saver.get("big", ref.checkpoint_id)
        assert got.state == state, f"seed {SEED}"


def _peak_while_listing(saver: Saver, thread: str, count: int) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        seen = 0
        for checkpoint in saver.list(thread):
            seen += 1
        assert seen == count
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_listing_100000_checkpoints_streams_in_flat_memory(tmp_path):
    path = str(tmp_path / "long.db")
    with Saver(path, durability="normal", integrity_check="off") as saver:
        for thread, count in (("short", 10_000), ("long", 100_000)):
            for start in range(0, count, 10_000):
                with saver.transaction():
                    for n in range(start, start + 10_000):
                        saver.put(thread, {"n": n, "text": "x" * 200})
        short = _peak_while_listing(saver, "short", 10_000)
        long = _peak_while_listing(saver, "long", 100_000)
    # Ten times the checkpoints must not need noticeably more memory: the iterator holds one
    # checkpoint (and SQLite's page cache) at a time, never the whole history.
    assert long < short * 1.5 + 1024 * 1024, f"peak {long} bytes for 100,000 vs {short} for 10,000"
