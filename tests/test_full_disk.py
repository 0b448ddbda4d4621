"""A real full disk: a small tmpfs mounted for the test (root only; skipped elsewhere).

The I/O-fault loop (tests/test_torture_iofaults.py) fails every write in turn with a simulated
SQLITE_FULL; this checks the same promise against the kernel's own ENOSPC: the write that did
not fit raises DiskFullError naming the file, nothing acknowledged is lost, the database stays
intact, and the same Saver writes again once space returns.

SQLite by nature: the database's files on a full filesystem.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess

import pytest

from sqlitesaver import DiskFullError, Saver
from sqlitesaver.check import check_database

SEED = 5150
FS_BYTES = 4 * 1024 * 1024


@pytest.fixture
def small_fs(tmp_path):
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs",
                           str(mountpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def fill(path: str) -> None:
    """Take all the free space but a little with one file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, bytes(64 * 1024))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def test_a_full_disk_loses_nothing_and_the_same_saver_writes_again(small_fs):
    path = str(small_fs / "state.db")
    filler = str(small_fs / "filler")
    rng = random.Random(SEED)
    acked: dict[str, str] = {}
    with Saver(path) as saver:
        for n in range(5):
            ref = saver.put("t", {"n": n})
            acked[ref.checkpoint_id] = hashlib.sha256(repr({"n": n}).encode()).hexdigest()
        fill(filler)
        error = None
        for _ in range(10_000):
            state = rng.randbytes(8192)
            try:
                ref = saver.put("t", state)
            except DiskFullError as exc:
                error = exc
                break
            acked[ref.checkpoint_id] = hashlib.sha256(state).hexdigest()
        assert error is not None, f"seed {SEED}: the disk never filled up"
        assert error.path == path and repr(path) in str(error) and "Free space" in str(error)

        # The same Saver still reads everything acknowledged...
        found = {c.checkpoint_id for c in saver.list("t")}
        assert found == set(acked), f"seed {SEED}"
        # ...and once space returns, writes again.
        os.remove(filler)
        ref = saver.put("t", {"after": "space returned"})
        saver.append_log("t", "still writing")

    assert check_database(path).ok
    with Saver(path, integrity_check="full") as reopened:
        stored = {}
        for c in reopened.list("t"):
            data = c.state if isinstance(c.state, bytes) else repr(c.state).encode()
            stored[c.checkpoint_id] = hashlib.sha256(data).hexdigest()
        assert reopened.get("t").state == {"after": "space returned"}
        assert [e.event for e in reopened.read_log("t")] == ["still writing"]
    del stored[ref.checkpoint_id]
    assert stored == acked, f"seed {SEED}"
