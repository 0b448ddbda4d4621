"""Bounded resources (issue #5): no leaked descriptors or threads across many Savers, a very
large state round-trips, and listing a long history streams in flat memory. Over both engines;
on a server fewer opens (each starts a pool) and a tenth of the long history, in smaller pages,
written with COPY (rows with valid checksums: 22,000 puts would take 30 s), for CI's time."""

from __future__ import annotations

import gc
import os
import random
import threading
import tracemalloc

from conftest import is_server
from sqlitesaver import Saver, codec, integrity
from sqlitesaver import saver as saver_module

SEED = 7310


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def native_threads() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_opening_and_closing_many_savers_leaks_no_descriptors_or_threads(any_empty_target):
    db_path = any_empty_target
    opens, every = (50, 10) if is_server(db_path) else (1000, 100)
    with Saver(db_path) as saver:  # create once; then every open is a plain reopen
        saver.put("t", {"n": 0})
    gc.collect()
    fds, threads, py_threads = open_fds(), native_threads(), threading.active_count()
    for n in range(opens):
        with Saver(db_path) as saver:
            if n % every == 0:  # readers too: the pool must close them
                assert saver.get("t").state["n"] == n // every
                saver.put("t", {"n": n // every + 1})
    gc.collect()
    assert open_fds() == fds, "file descriptors leaked"
    assert native_threads() == threads and threading.active_count() == py_threads


def test_a_64_mib_state_round_trips(any_empty_target):
    db_path = any_empty_target
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


def _copy_history(url: str, histories: tuple[tuple[str, int], ...]) -> None:
    """Checkpoints ``{"n": n, "text": ...}`` of each (thread, count), as put() stores them
    (valid checksums, seqs from the table's sequence), written with COPY."""
    import psycopg

    # The schema first: the session's shared database has it only if an earlier test in this
    # worker opened a Saver there (this test failed when run alone).
    Saver(url).close()
    with psycopg.connect(url) as conn:
        metadata = codec.encode({})
        for thread, count in histories:
            first = conn.execute("SELECT nextval('sqlitesaver.checkpoints_seq')").fetchone()[0]
            conn.execute("SELECT setval('sqlitesaver.checkpoints_seq', %s)", (first + count,))
            with conn.cursor().copy(
                    "COPY sqlitesaver.checkpoints (seq, thread_id, namespace, parent_seq, "
                    "created_at, state, metadata, checksum) FROM STDIN") as copy:
                for n in range(count):
                    seq, state = first + n, codec.encode({"n": n, "text": "x" * 200})
                    copy.write_row((seq, thread, "", None, 0, state, metadata,
                                    integrity.checkpoint_checksum(seq, thread, "", None, 0,
                                                                  state, metadata)))


def test_listing_a_long_history_streams_in_flat_memory(any_empty_target, tmp_path,
                                                          monkeypatch):
    # Pages of at most 256 rows, so that both histories span many full pages. 20,000
    # checkpoints tell a stream from a materialised history (4 MiB of states at least, against
    # the 1 MiB margin below); 100,000 under tracemalloc took 8-15 s of CI's time.
    histories = (("short", 2_000), ("long", 20_000))
    monkeypatch.setattr(saver_module, "MAX_PAGE_ROWS", 256)
    if is_server(any_empty_target):
        _copy_history(any_empty_target, histories)
        path = any_empty_target
    else:
        path = str(tmp_path / "long.db")
    options = {} if is_server(path) else {"integrity_check": "off"}
    with Saver(path, durability="normal", **options) as saver:
        if not is_server(path):
            for thread, count in histories:
                for start in range(0, count, 2_000):
                    with saver.transaction():
                        for n in range(start, start + 2_000):
                            saver.put(thread, {"n": n, "text": "x" * 200})
        (_, few), (_, many) = histories
        short = _peak_while_listing(saver, "short", few)
        long = _peak_while_listing(saver, "long", many)
    # Ten times the checkpoints must not need noticeably more memory: the iterator holds one
    # checkpoint (and SQLite's page cache) at a time, never the whole history.
    assert long < short * 1.5 + 1024 * 1024, \
        f"peak {long} bytes for {many:,} vs {short} for {few:,}"
