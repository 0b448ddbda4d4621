"""The fault-injecting VFS (``sqlitesaver.faults``, issue #4).

* The power-loss model on plain files, in-process (``apply_power_loss`` without the exit):
  drop-all gives back the last synced bytes exactly, keep-all the written ones, torn sectors are
  the documented mixes, every byte ends as one of its historical values.
* Power loss under a real Saver in child processes that exit with ``CRASH_EXIT_STATUS``: FULL
  loses nothing acknowledged; NORMAL and unsafe journal settings do lose or corrupt for some seed
  (the proof that the simulation has teeth).
* The I/O-fault loop: fail the k-th write / sync / read, once and persistently, EIO and a full
  disk; the Saver raises the right error, keeps what it acknowledged, and works again.
* Installing makes every Saver connection use the VFS; uninstalling restores the default.

Every random choice is seeded; the seed is in every assertion message.

SQLite by nature: the APSW VFS and power loss on the database's files.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator

import apsw
import pytest

from sqlitesaver import (CorruptDatabaseError, DatabaseIOError, DiskFullError,
                         NotASaverDatabaseError, Saver, SaverClosedError, SaverError, faults)

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
PLAIN = apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
S = faults.SECTOR_SIZE


@pytest.fixture
def installed() -> Iterator[list]:
    """VFSs a test installs; each is uninstalled at teardown, even when the test failed."""
    made: list = []
    yield made
    for vfs in reversed(made):
        vfs.uninstall()
    assert not {"sqlitesaver-power-loss", "sqlitesaver-io-faults"} & set(apsw.vfs_names())


def _power(installed: list, **options: object) -> faults.PowerLossVFS:
    vfs = faults.install_power_loss(**options)
    installed.append(vfs)
    return vfs


def _read(path: str) -> bytes | None:
    """A plain (non-database) test file's bytes; no SQLite lock is ever held on these."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _data(rng: random.Random, n: int) -> bytes:
    """Random bytes without zeros, so a zero in a result can only come from a hole."""
    return bytes(rng.randint(1, 255) for _ in range(n))


def _uninstall(vfs: faults.PowerLossVFS, installed: list) -> None:
    vfs.uninstall()
    installed.remove(vfs)


# --- the model on plain files ---------------------------------------------------------------

def _random_history(vfs: faults.PowerLossVFS, path: str, seed: int, *, syncs: bool = True
                    ) -> tuple[object, bytes, list[bytes]]:
    """Open ``path`` through ``vfs``, write a synced base, then a seeded mix of overlapping,
    unaligned, extending writes, shrinking and growing truncates and (optionally) syncs.
    Returns (open file, content at the last sync, every content the file went through since)."""
    rng = random.Random(seed)
    f = vfs.xOpen(path, [PLAIN, 0])
    f.xWrite(_data(rng, rng.randint(0, 5000)), 0)
    f.xSync(apsw.SQLITE_SYNC_NORMAL)
    synced = f.xRead(f.xFileSize(), 0) if f.xFileSize() else b""
    history = [synced]
    for _ in range(rng.randint(1, 25)):
        size = f.xFileSize()
        roll = rng.random()
        if roll < 0.7:
            f.xWrite(_data(rng, rng.randint(1, 3 * S)), rng.randint(0, size + 2 * S))
        elif roll < 0.85:
            f.xTruncate(rng.randint(0, size + S))
        elif syncs:
            f.xSync(apsw.SQLITE_SYNC_NORMAL)
            synced = f.xRead(f.xFileSize(), 0) if f.xFileSize() else b""
            history = []
        size = f.xFileSize()
        history.append(f.xRead(size, 0) if size else b"")
    return f, synced, history


@pytest.mark.parametrize("seed", range(40))
def test_drop_all_gives_back_the_last_synced_content_exactly(tmp_path, installed, seed):
    vfs = _power(installed, seed=seed, keep=0, drop=1, tear=0, vanish=0)
    path = str(tmp_path / "plain.bin")
    f, synced, history = _random_history(vfs, path, seed)
    report = vfs.apply_power_loss()
    f.xClose()
    assert _read(path) == synced, f"seed {seed}: {report}"
    assert report["sectors"]["kept"] == report["sectors"]["torn"] == 0, f"seed {seed}"


@pytest.mark.parametrize("seed", range(10))
def test_keep_all_leaves_the_written_content(tmp_path, installed, seed):
    vfs = _power(installed, seed=seed, keep=1, drop=0, tear=0, vanish=0)
    path = str(tmp_path / "plain.bin")
    f, _, history = _random_history(vfs, path, seed)
    report = vfs.apply_power_loss()
    f.xClose()
    assert _read(path) == history[-1], f"seed {seed}: {report}"
    assert report["sectors"]["dropped"] == report["sectors"]["torn"] == 0, f"seed {seed}"


@pytest.mark.parametrize("seed", range(40))
def test_every_byte_ends_as_one_of_its_historical_values(tmp_path, installed, seed):
    """Random fates, tears that split (no garbage): each surviving byte held that value at the
    last sync or after some later operation, or is a zero of a hole left by a dropped sector;
    the size is at least the smallest it has been."""
    vfs = _power(installed, seed=seed, tear_modes=("new-prefix", "old-prefix"), vanish=0)
    path = str(tmp_path / "plain.bin")
    f, _, history = _random_history(vfs, path, seed)
    report = vfs.apply_power_loss()
    f.xClose()
    result = _read(path)
    assert len(result) >= min(len(h) for h in history), f"seed {seed}: {report}"
    for position, byte in enumerate(result):
        allowed = {h[position] for h in history if position < len(h)} | {0}
        assert byte in allowed, f"seed {seed}: byte {position} = {byte}, {report}"


def test_overlapping_writes_truncates_and_extensions_undo_in_reverse(tmp_path, installed):
    vfs = _power(installed, seed=0, keep=0, drop=1, tear=0, vanish=0)
    path = str(tmp_path / "plain.bin")
    f = vfs.xOpen(path, [PLAIN, 0])
    f.xWrite(b"A" * 2000, 0)
    f.xSync(apsw.SQLITE_SYNC_NORMAL)
    f.xWrite(b"B" * 700, 300)     # overlaps ...
    f.xWrite(b"C" * 700, 600)     # ... and is overlapped
    f.xTruncate(1000)             # cuts both and the synced tail
    f.xWrite(b"D" * 1500, 1700)   # extends past the old end, with a hole
    f.xTruncate(5000)             # extends with zeros
    assert f.xFileSize() == 5000
    report = vfs.apply_power_loss()
    f.xClose()
    assert _read(path) == b"A" * 2000, report
    assert report["truncates"] == {"kept": 0, "dropped": 2}


def test_an_extending_write_shrinks_back_and_keeps_only_leading_kept_sectors(tmp_path,
                                                                            installed):
    for seed in range(30):
        vfs = _power(installed, seed=seed, tear=0, vanish=0)  # keep or drop, one each
        path = str(tmp_path / f"plain{seed}.bin")
        f = vfs.xOpen(path, [PLAIN, 0])
        f.xWrite(b"A" * S, 0)
        f.xSync(apsw.SQLITE_SYNC_NORMAL)
        f.xWrite(b"B" * (4 * S), S)  # four sectors past the synced end
        vfs.apply_power_loss()
        f.xClose()
        result = _read(path)
        assert result[:S] == b"A" * S and len(result) % S == 0, f"seed {seed}"
        sectors = [result[i:i + S] for i in range(S, len(result), S)]
        # dropped sectors before a kept one are a hole; the file ends at a kept sector
        assert all(s in (b"B" * S, b"\0" * S) for s in sectors), f"seed {seed}"
        assert not sectors or sectors[-1] == b"B" * S, f"seed {seed}: {len(result)}"
        _uninstall(vfs, installed)


@pytest.mark.parametrize("seed", range(10))
def test_torn_sectors_are_old_new_or_a_documented_mix(tmp_path, installed, seed):
    vfs = _power(installed, seed=seed, keep=0, drop=0, tear=1, vanish=0,
                 tear_modes=("new-prefix", "old-prefix"))
    rng = random.Random(seed)
    path = str(tmp_path / "plain.bin")
    f = vfs.xOpen(path, [PLAIN, 0])
    old = _data(rng, 6 * S)
    f.xWrite(old, 0)
    f.xSync(apsw.SQLITE_SYNC_NORMAL)
    offset, new = 100, _data(rng, 4 * S + 50)  # unaligned at both ends
    f.xWrite(new, offset)
    report = vfs.apply_power_loss()
    f.xClose()
    result = _read(path)
    assert len(result) == len(old), f"seed {seed}"
    written = old[:offset] + new + old[offset + len(new):]
    assert result[:offset] == old[:offset] and result[offset + len(new):] == \
        old[offset + len(new):], f"seed {seed}: bytes outside the write changed"
    start, mixes = offset, 0
    while start < offset + len(new):
        stop = min(offset + len(new), (start // S + 1) * S)
        got, was, now = result[start:stop], old[start:stop], written[start:stop]
        splits = [k for k in range(1, stop - start)
                  if got in (now[:k] + was[k:], was[:k] + now[k:])]
        assert got in (was, now) or splits, f"seed {seed}: sector at {start} is no mix"
        mixes += bool(splits)
        start = stop
    assert report["sectors"]["torn"] == 5 and mixes >= 1, f"seed {seed}: {report}"


def test_garbage_tears_stay_inside_the_written_bytes(tmp_path, installed):
    for seed in range(10):
        vfs = _power(installed, seed=seed, keep=0, drop=0, tear=1, tear_modes=("garbage",))
        rng = random.Random(seed)
        path = str(tmp_path / f"plain{seed}.bin")
        f = vfs.xOpen(path, [PLAIN, 0])
        old = _data(rng, 4 * S)
        f.xWrite(old, 0)
        f.xSync(apsw.SQLITE_SYNC_NORMAL)
        f.xWrite(_data(rng, 2 * S), S + 10)
        vfs.apply_power_loss()
        f.xClose()
        result = _read(path)
        assert len(result) == len(old), f"seed {seed}"
        assert result[:S + 10] == old[:S + 10] and result[3 * S + 10:] == old[3 * S + 10:], \
            f"seed {seed}"
        assert result[S + 10:3 * S + 10] != old[S + 10:3 * S + 10], f"seed {seed}"
        _uninstall(vfs, installed)


def test_a_sync_makes_only_its_own_file_durable(tmp_path, installed):
    vfs = _power(installed, seed=0, keep=0, drop=1, tear=0, vanish=0)
    a, b = str(tmp_path / "a.bin"), str(tmp_path / "b.bin")
    fa, fb = vfs.xOpen(a, [PLAIN, 0]), vfs.xOpen(b, [PLAIN, 0])
    for f in (fa, fb):
        f.xWrite(b"old" * 100, 0)
        f.xSync(apsw.SQLITE_SYNC_NORMAL)
        f.xWrite(b"new" * 100, 0)
    fa.xSync(apsw.SQLITE_SYNC_NORMAL)
    vfs.apply_power_loss()
    fa.xClose()
    fb.xClose()
    assert (_read(a), _read(b)) == (b"new" * 100, b"old" * 100)


def test_writes_through_a_closed_handle_are_undone_through_a_new_one(tmp_path, installed):
    vfs = _power(installed, seed=0, keep=0, drop=1, tear=0, vanish=0)
    path = str(tmp_path / "plain.bin")
    f = vfs.xOpen(path, [PLAIN, 0])
    f.xWrite(b"old", 0)
    f.xSync(apsw.SQLITE_SYNC_NORMAL)
    f.xWrite(b"new", 0)
    f.xClose()  # closing syncs nothing
    vfs.apply_power_loss()
    assert _read(path) == b"old"


@pytest.mark.parametrize("vanish", [0.0, 1.0])
def test_a_created_file_never_synced_may_vanish_a_synced_one_never(tmp_path, installed,
                                                                     vanish):
    vfs = _power(installed, seed=0, keep=1, drop=0, tear=0, vanish=vanish)
    fresh, synced = str(tmp_path / "fresh.bin"), str(tmp_path / "synced.bin")
    f1, f2 = vfs.xOpen(fresh, [PLAIN, 0]), vfs.xOpen(synced, [PLAIN, 0])
    f1.xWrite(b"x" * 100, 0)
    f2.xWrite(b"y" * 100, 0)
    f2.xSync(apsw.SQLITE_SYNC_NORMAL)
    report = vfs.apply_power_loss()
    f1.xClose()
    f2.xClose()
    assert _read(fresh) == (None if vanish else b"x" * 100), report
    assert _read(synced) == b"y" * 100
    assert report["vanished"] == ([fresh] if vanish else [])


def test_the_shm_of_each_database_is_deleted_at_power_loss(tmp_path, installed):
    for delete_shm in (True, False):
        vfs = _power(installed, seed=0, delete_shm=delete_shm)
        path = str(tmp_path / f"db{delete_shm}")
        with open(path + "-shm", "wb") as shm:  # stands for SQLite's; no lock involved
            shm.write(b"index")
        f = vfs.xOpen(path, [PLAIN, 0])
        vfs.apply_power_loss()
        f.xClose()
        assert os.path.exists(path + "-shm") is not delete_shm
        _uninstall(vfs, installed)


class _Crashed(Exception):
    pass


def _no_exit(vfs: faults.PowerLossVFS) -> list[dict]:
    """Replace the exit by an exception, so the crash point is testable in-process."""
    reports: list[dict] = []

    def crash() -> None:
        reports.append(vfs.apply_power_loss())
        raise _Crashed

    vfs.crash = crash  # type: ignore[method-assign]
    return reports


def test_crash_at_the_nth_sync_happens_instead_of_that_sync(tmp_path, installed):
    vfs = _power(installed, seed=0, crash_on="sync", crash_after=3, keep=0, drop=1, tear=0)
    reports = _no_exit(vfs)
    path = str(tmp_path / "plain.bin")
    f = vfs.xOpen(path, [PLAIN, 0])
    for n in (1, 2):
        f.xWrite(b"%d" % n * 10, 0)
        f.xSync(apsw.SQLITE_SYNC_NORMAL)
    f.xWrite(b"3" * 10, 0)
    with pytest.raises(_Crashed):
        f.xSync(apsw.SQLITE_SYNC_NORMAL)
    assert reports[0]["at"] == {"op": "sync", "n": 3, "file": path}
    with pytest.raises(apsw.IOError):  # the power is out
        f.xWrite(b"late", 0)
    f.xClose()
    assert _read(path) == b"2" * 10


def test_crash_at_the_nth_write_leaves_that_write_pending(tmp_path, installed):
    vfs = _power(installed, seed=0, crash_on="write", crash_after=4, keep=1, drop=0, tear=0)
    reports = _no_exit(vfs)
    path = str(tmp_path / "plain.bin")
    f = vfs.xOpen(path, [PLAIN, 0])
    for n in (1, 2, 3):
        f.xWrite(b"%d" % n, n - 1)
    f.xSync(apsw.SQLITE_SYNC_NORMAL)  # not counted with crash_on="write"
    with pytest.raises(_Crashed):
        f.xWrite(b"4", 3)
    f.xClose()
    assert reports[0]["at"]["n"] == 4 and reports[0]["counts"] == \
        {"write": 4, "sync": 1, "truncate": 0}
    assert _read(path) == b"1234"  # keep=1: the crashing write was kept


def test_random_crash_points_are_seeded(tmp_path, installed):
    points = []
    for attempt in range(2):
        vfs = _power(installed, seed=7, crash_on="any", crash_probability=0.05)
        reports = _no_exit(vfs)
        f = vfs.xOpen(str(tmp_path / f"plain{attempt}.bin"), [PLAIN, 0])
        with pytest.raises(_Crashed):
            for n in range(1000):
                f.xWrite(b"x", n)
                if n % 3 == 0:
                    f.xSync(apsw.SQLITE_SYNC_NORMAL)
        f.xClose()
        points.append(reports[0]["at"]["n"])
        _uninstall(vfs, installed)
    assert points[0] == points[1] and points[0] < 1000, points


def test_counting_mode_never_crashes_and_temp_files_do_not_count(tmp_path, installed):
    vfs = _power(installed, seed=0)
    f = vfs.xOpen(str(tmp_path / "plain.bin"), [PLAIN, 0])
    temp = vfs.xOpen(None, [apsw.SQLITE_OPEN_TEMP_DB | apsw.SQLITE_OPEN_READWRITE
                            | apsw.SQLITE_OPEN_CREATE | apsw.SQLITE_OPEN_DELETEONCLOSE, 0])
    for n in range(50):
        f.xWrite(b"x" * 10, n * 10)
        temp.xWrite(b"y" * 10, n * 10)
        f.xSync(apsw.SQLITE_SYNC_NORMAL)
    f.xTruncate(7)
    temp.xClose()
    f.xClose()
    assert vfs.counts == {"write": 50, "sync": 50, "truncate": 1}
    assert vfs.crashed_at is None and vfs.opens == {"db": 1, "wal": 0, "journal": 0}


# --- a real Saver goes through it; uninstalling restores the default ---------------------------

def test_every_saver_connection_goes_through_the_installed_vfs(db_path, installed):
    vfs = _power(installed, seed=0)
    with Saver(db_path) as saver:
        saver.put("t", "a")
        assert [c.state for c in saver.list("t")] == ["a"]
        # SQLite names the file's VFS by the Python class that serves it
        writer_vfs = saver._writer.vfsname("main")
    opened = dict(vfs.opens)
    assert "_PowerLossFile" in writer_vfs, writer_vfs
    # the temporary file of the creation, the writer, a reader; the -wal; the creation journal
    assert opened["db"] >= 3 and opened["wal"] >= 1, opened
    assert vfs.counts["sync"] >= 3 and vfs.counts["write"] >= 3, vfs.counts
    io = faults.install_io_faults()
    installed.append(io)
    with Saver(db_path) as saver:
        assert [c.state for c in saver.list("t")] == ["a"]
    assert io.opens["db"] >= 3 and io.counts["read"] > 0, (io.opens, io.counts)
    assert vfs.opens == opened  # the newest default wins


def test_uninstall_restores_the_previous_default_and_leaves_new_connections_alone(
        tmp_path, installed):
    before = apsw.vfs_names()[0]
    vfs = _power(installed, seed=0)
    assert apsw.vfs_names()[0] == "sqlitesaver-power-loss"
    with pytest.raises(RuntimeError, match="already registered"):
        faults.install_power_loss(seed=1)
    vfs.uninstall()
    vfs.uninstall()  # idempotent
    assert apsw.vfs_names()[0] == before and "sqlitesaver-power-loss" not in apsw.vfs_names()
    counts = dict(vfs.counts)
    conn = apsw.Connection(str(tmp_path / "after.db"))
    try:
        conn.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        assert conn.vfsname("main") == before
    finally:
        conn.close()
    assert vfs.counts == counts and vfs.opens == {"db": 0, "wal": 0, "journal": 0}


def test_uninstall_gives_the_default_back_to_a_vfs_that_was_not_unix(installed):
    class Other(apsw.VFS):
        def __init__(self) -> None:
            super().__init__("sqlitesaver-test-other", "unix", makedefault=True)

    other = Other()
    try:
        with faults.install_io_faults() as io:
            assert apsw.vfs_names()[0] == io.vfs_name
        assert apsw.vfs_names()[0] == "sqlitesaver-test-other"
    finally:
        other.unregister()
    assert "sqlitesaver-test-other" not in apsw.vfs_names()


# --- power loss under a Saver, in child processes ----------------------------------------------

#: The writer: each transition puts a checkpoint, logs its number and prunes to the last three,
#: in one transaction; "ack N" only after the transaction returned. A low autocheckpoint puts
#: WAL checkpoints (database writes, database sync, WAL reset) inside the crash window.
_CHILD = r"""
import json, sys
args = json.loads(sys.argv[1])
sys.path.insert(0, args["tests"])
from sqlitesaver import Saver, faults

vfs = faults.install_power_loss(seed=args["seed"], crash_on=args["crash_on"],
                                crash_after=args["crash_after"], report_fd=2)
if args["unsafe"]:
    from torture_writers import _unsafe_journal
    _unsafe_journal(*args["unsafe"])
saver = Saver(args["path"], durability=args["durability"])
saver._writer.execute("PRAGMA wal_autocheckpoint=40")
for i in range(args["transitions"]):
    with saver.transaction():
        saver.put("t", {"i": i, "pad": "%d:" % i + "abcdefghij" * ((i * 7919) % 900)})
        saver.append_log("t", i)
        saver.prune("t", keep_last=3)
    print("ack", i, flush=True)
print("counts", json.dumps(vfs.counts), flush=True)
saver.close()
"""

_TRANSITIONS = 40


def _pad(i: int) -> str:
    return "%d:" % i + "abcdefghij" * ((i * 7919) % 900)


def _children(runs: list[dict]) -> list[tuple[int, list[str], str]]:
    """Run the writer once per dict of arguments, two at a time; (status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    results: list[tuple[int, list[str], str]] = []
    for first in range(0, len(runs), 2):
        procs = [subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps({"tests": TESTS, "unsafe": None,
                                                       "transitions": _TRANSITIONS, **run})],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for run in runs[first:first + 2]]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            results.append((proc.returncode, out.splitlines(), err))
    return results


def _measure(tmp_path, durability: str, unsafe: list | None = None) -> dict[str, int]:
    """How many writes and syncs the whole workload does (counting mode, no crash)."""
    path = str(tmp_path / f"measure-{durability}-{bool(unsafe)}.db")
    ((status, out, err),) = _children([{"path": path, "seed": 0, "crash_on": "sync",
                                        "crash_after": None, "durability": durability,
                                        "unsafe": unsafe}])
    assert status == 0 and out[-1].startswith("counts "), err
    assert out[:-1] == [f"ack {i}" for i in range(_TRANSITIONS)]
    return json.loads(out[-1].split(" ", 1)[1])


def _recover(path: str) -> tuple[str, int, str]:
    """Open after the crash like a user would (integrity_check='full'): ("ok", transitions
    found, "") if the database holds a consistent prefix, else ("corrupt", -1, why)."""
    try:
        with Saver(path, integrity_check="full") as saver:
            log = [e.event for e in saver.read_log("t")]
            states = [c.state for c in saver.list("t")]
    except (CorruptDatabaseError, NotASaverDatabaseError) as exc:
        return "corrupt", -1, f"{type(exc).__name__}: {exc}"[:300]
    except SaverError as exc:  # e.g. a checksum mismatch on read
        return "corrupt", -1, f"{type(exc).__name__}: {exc}"[:300]
    found = len(log)
    expected = [{"i": i, "pad": _pad(i)} for i in range(found - 1, max(found - 4, -1), -1)]
    if log != list(range(found)) or states != expected:
        return "corrupt", -1, f"inconsistent: log {log}, states {[s['i'] for s in states]}"
    return "ok", found, ""


def _power_loss_runs(tmp_path, durability: str, seeds: range, crash_ons: tuple[str, ...],
                     unsafe: list | None = None) -> list[tuple[int, str, int, int, str]]:
    """For each seed: crash the writer at a seeded op (uniform over the measured workload),
    recover, and return (seed, outcome, acknowledged, found, detail)."""
    counts = _measure(tmp_path, durability, unsafe)
    runs = []
    for seed in seeds:
        rng = random.Random(seed)
        crash_on = rng.choice(crash_ons)
        runs.append({"path": str(tmp_path / f"{durability}-{seed}.db"), "seed": seed,
                     "crash_on": crash_on, "crash_after": rng.randint(1, counts[crash_on]),
                     "durability": durability, "unsafe": unsafe})
    results = []
    for run, (status, out, err) in zip(runs, _children(runs)):
        seed = run["seed"]
        assert status == faults.CRASH_EXIT_STATUS, f"seed {seed}: {run} status {status}: {err}"
        report = json.loads(err.strip().splitlines()[-1])["power_loss"]
        assert report["at"]["op"] == run["crash_on"] and report["at"]["n"] == \
            run["crash_after"], f"seed {seed}: {report}"
        acked = len(out)
        assert out == [f"ack {i}" for i in range(acked)], f"seed {seed}: {out}"
        assert not os.path.exists(run["path"] + "-shm"), f"seed {seed}: -shm left behind"
        outcome, found, detail = _recover(run["path"])
        results.append((seed, outcome, acked, found, f"{detail} {report}"))
    return results


def test_power_loss_with_full_durability_loses_nothing_acknowledged(tmp_path):
    results = _power_loss_runs(tmp_path, "full", range(12), ("sync", "write"))
    for seed, outcome, acked, found, detail in results:
        assert outcome == "ok", f"seed {seed}: {detail}"
        # every acknowledged transition, plus at most the one in flight ("maybe committed")
        assert found in (acked, acked + 1), f"seed {seed}: acked {acked} found {found} {detail}"


@pytest.mark.tooling
def test_power_loss_with_normal_durability_can_lose_acknowledged_transitions(tmp_path):
    """NORMAL does not sync at COMMIT: the database stays consistent (a prefix of what was
    committed), but some seed must lose acknowledged transitions, or the simulation is blind."""
    results = _power_loss_runs(tmp_path, "normal", range(8), ("write",))
    for seed, outcome, acked, found, detail in results:
        assert outcome == "ok" and found <= acked + 1, f"seed {seed}: {detail}"
    lost = [(seed, acked - found) for seed, _, acked, found, _ in results if found < acked]
    assert lost, f"no seed in 0..7 lost anything under NORMAL: {results}"


@pytest.mark.tooling
@pytest.mark.parametrize("unsafe", [["OFF", "OFF"], ["DELETE", "OFF"]],
                         ids=["journal_mode=OFF", "rollback-journal+synchronous=OFF"])
def test_power_loss_exposes_unsafe_journal_settings(tmp_path, unsafe):
    """The proof of teeth: a setting that is unsafe on power loss yields corruption or loss of
    acknowledged transitions for some seed (SIGKILL cannot show this; see torture_writers)."""
    results = _power_loss_runs(tmp_path, "full", range(8), ("write",), unsafe)
    bad = [(seed, outcome, acked, found) for seed, outcome, acked, found, _ in results
           if outcome != "ok" or found < acked]
    assert bad, f"{unsafe}: no seed in 0..7 showed damage: {results}"



def test_power_loss_with_a_rollback_journal_and_full_sync_loses_nothing(tmp_path):
    """The control for the test above: the same rollback journal with synchronous=FULL
    survives, so the damage there comes from synchronous=OFF, not from a model harsher than
    the disk SQLite assumes."""
    results = _power_loss_runs(tmp_path, "full", range(8), ("sync", "write"),
                               ["DELETE", "FULL"])
    for seed, outcome, acked, found, detail in results:
        assert outcome == "ok" and found in (acked, acked + 1), f"seed {seed}: {detail}"

# --- I/O faults under a Saver, in-process -----------------------------------------------------

_EXPECTED = {("write", "eio"): (DatabaseIOError, apsw.SQLITE_IOERR_WRITE),
             ("write", "full"): (DiskFullError, apsw.SQLITE_FULL),
             ("sync", "eio"): (DatabaseIOError, apsw.SQLITE_IOERR_FSYNC),
             ("read", "eio"): (DatabaseIOError, apsw.SQLITE_IOERR_READ)}


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
@pytest.mark.parametrize("op,error", list(_EXPECTED), ids=[f"{o}-{e}" for o, e in _EXPECTED])
def test_io_fault_loop(db_path, installed, op, error, persistent):
    """For k = 1, 2, ...: fail the k-th ``op`` from the Saver's open on; the Saver raises the
    mapped error, keeps every acknowledged event, reopens intact and works once it clears."""
    io = faults.install_io_faults()
    installed.append(io)
    acked: list[str] = []
    with Saver(db_path) as saver:
        saver.append_log("t", "start")
        acked.append("start")
    expected_type, expected_code = _EXPECTED[op, error]
    for k in range(1, 41):
        io.arm(k, kinds=(op,), persistent=persistent, error=error)
        raised: SaverError | None = None
        in_doubt: str | None = None
        saver = None
        try:
            saver = Saver(db_path)
            for j in range(3):
                in_doubt = f"{k}.{j}"
                saver.append_log("t", in_doubt)
                acked.append(in_doubt)
                in_doubt = None
                assert [e.event for e in saver.read_log("t")] == acked
        except SaverError as exc:
            raised = exc
        context = f"k={k} {op} {error} persistent={persistent} fault={io.last_fault}"
        if io.injected == 0:
            assert raised is None, f"{context}: {raised!r}"
            io.clear()  # before close(): see test_close_with_a_fault_armed_raises_a_saver_error
            saver.close()
            break  # k is past the workload's operations: the loop is complete
        assert type(raised) is expected_type, f"{context}: {raised!r}"
        assert raised.sqlite_extended_result == expected_code, context
        if saver is not None and expected_type is DatabaseIOError:
            # after any I/O error the Saver shuts down: never retried on the same connection
            # (fsyncgate), and a failing disk is not written on as if nothing happened
            with pytest.raises(SaverClosedError):
                saver.append_log("t", "after an I/O error")
        io.clear()
        if saver is not None and expected_type is DiskFullError:
            saver.append_log("t", f"{k}.after")  # space is back: the same Saver goes on
            acked.append(f"{k}.after")
            in_doubt = None  # a full disk rolled the failed one back, it must not be there
        if saver is not None:
            saver.close()  # the fault is cleared: see test_close_with_a_fault_armed_...
        with Saver(db_path, integrity_check="full") as reopened:
            found = [e.event for e in reopened.read_log("t")]
            if in_doubt is not None and in_doubt in found:  # "maybe committed" after EIO
                acked.append(in_doubt)
            assert found == acked, f"{context}: found {found}"
            reopened.append_log("t", f"{k}.reopened")
            acked.append(f"{k}.reopened")
    else:
        pytest.fail(f"the {op} fault still hit after k=40: raise the bound")
    assert k > 1


def test_io_faults_validate_their_arguments(installed):
    io = faults.install_io_faults()
    installed.append(io)
    for bad in ({"at": 0}, {"at": 1, "kinds": ("fsync",)}, {"at": 1, "files": ("shm",)},
                {"at": 1, "error": "enospc"}, {"at": 1, "kinds": ("sync",), "error": "full"}):
        with pytest.raises(ValueError):
            io.arm(**bad)


def test_io_fault_on_a_truncate_raises_its_extended_code(tmp_path, installed):
    io = faults.install_io_faults()
    installed.append(io)
    f = io.xOpen(str(tmp_path / "plain.bin"), [PLAIN, 0])
    f.xWrite(b"x" * 100, 0)
    io.arm(1, kinds=("truncate",))
    with pytest.raises(apsw.IOError) as info:
        f.xTruncate(10)
    assert info.value.extendedresult == apsw.SQLITE_IOERR_TRUNCATE
    f.xTruncate(10)  # once: the next one goes through
    assert f.xFileSize() == 10 and io.counts["truncate"] == 2 and io.injected == 1
    f.xClose()


# --- library gaps these tools found (fixed; these failed before) ---------------------------------

def test_close_with_a_fault_armed_raises_a_saver_error(db_path, installed):
    io = faults.install_io_faults()
    installed.append(io)
    saver = Saver(db_path)
    saver.append_log("t", "a")
    io.arm(1, kinds=("write",))  # the close's checkpoint writes the database file
    try:
        with pytest.raises(DatabaseIOError, match="closing the database"):
            saver.close()
    finally:
        io.clear()
        saver.close()  # idempotent: already closed, raises nothing
    with Saver(db_path, integrity_check="full") as reopened:
        assert [e.event for e in reopened.read_log("t")] == ["a"]


def test_an_io_error_opening_a_reader_shuts_the_saver_down(db_path, installed):
    io = faults.install_io_faults()
    installed.append(io)
    with Saver(db_path) as saver:
        saver.append_log("t", "a")
        io.arm(1, kinds=("read",), persistent=True)
        with pytest.raises(DatabaseIOError):
            list(saver.read_log("t"))  # no idle reader yet: opens one
        io.clear()
        with pytest.raises(SaverClosedError):
            saver.append_log("t", "b")
