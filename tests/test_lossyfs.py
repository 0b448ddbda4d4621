"""LossyFS (sqlitesaver/torture/lossyfs.py): unsynced file data is visible at once and lost at a
crash; fsync'd data and metadata survive. Skipped where fusepy, /dev/fuse or mounting is not."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator

import pytest

from sqlitesaver.torture import lossyfs

_WHY_NOT = lossyfs.available()
if _WHY_NOT is not None:
    pytest.skip(f"LossyFS cannot run here: {_WHY_NOT}", allow_module_level=True)

HANG_SECONDS = 60  # the whole module's budget; then the FUSE child is killed (ops fail, no hang)


@pytest.fixture(scope="module")
def mount() -> Iterator[lossyfs.LossyMount]:
    top = tempfile.mkdtemp(prefix="lossyfs-test-")
    os.mkdir(os.path.join(top, "backing"))
    os.mkdir(os.path.join(top, "mnt"))
    # LOSSYFS_THREADS=1 runs the file system multithreaded (the default is one thread).
    fs = lossyfs.LossyMount(os.path.join(top, "backing"), os.path.join(top, "mnt"), timeout=20,
                            threads=bool(os.environ.get("LOSSYFS_THREADS")))
    try:
        try:
            fs.start()
        except RuntimeError as exc:
            pytest.skip(f"LossyFS could not be mounted here: {exc}")
        watchdog = threading.Timer(HANG_SECONDS, fs.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            yield fs
        finally:
            watchdog.cancel()
    finally:
        fs.close()
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def d(mount: lossyfs.LossyMount, request: pytest.FixtureRequest) -> str:
    """A fresh directory in the mount for one test."""
    path = os.path.join(mount.mountpoint, request.node.name)
    os.mkdir(path)
    return path


def backing(mount: lossyfs.LossyMount, path: str) -> str:
    return os.path.join(mount.backing, os.path.relpath(path, mount.mountpoint))


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes, *, offset: int = 0, sync: bool = False,
          flags: int = os.O_CREAT | os.O_RDWR) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        os.pwrite(fd, data, offset) if not flags & os.O_APPEND else os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_synced_write_survives_and_unsynced_is_lost(mount, d):
    f = os.path.join(d, "f")
    write(f, b"a" * 10_000, sync=True)
    write(f, b"b" * 5_000, offset=10_000)  # grows the file, not synced
    write(f, b"c" * 100, offset=50)  # overwrites inside a synced page, not synced
    expected = b"a" * 50 + b"c" * 100 + b"a" * 9_850 + b"b" * 5_000
    assert read(f) == expected  # every reader sees the unsynced data at once
    assert os.stat(f).st_size == 15_000
    assert read(backing(mount, f)) == b"a" * 10_000  # the 'disk' has only the synced part
    mount.crash()
    assert os.stat(f).st_size == 10_000
    assert read(f) == b"a" * 10_000


def test_close_does_not_sync_and_fdatasync_does(mount, d):
    f, g = os.path.join(d, "f"), os.path.join(d, "g")
    with open(f, "wb") as out:
        out.write(b"closed, never synced")
    fd = os.open(g, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"datasynced")
    os.fdatasync(fd)
    os.close(fd)
    assert read(f) == b"closed, never synced"
    mount.crash()
    assert os.path.exists(f) and read(f) == b""  # the create was metadata: it stays, empty
    assert read(g) == b"datasynced"


def test_sparse_write_past_eof_reads_zeros_and_syncs(mount, d):
    f = os.path.join(d, "f")
    write(f, b"x" * 10, sync=True)
    write(f, b"y" * 3, offset=20_000, sync=True)
    assert read(f) == b"x" * 10 + bytes(19_990) + b"yyy"
    mount.crash()
    assert read(f) == b"x" * 10 + bytes(19_990) + b"yyy"
    assert read(backing(mount, f)) == read(f)


def test_unsynced_truncate_is_undone_by_a_crash(mount, d):
    f = os.path.join(d, "f")
    write(f, b"z" * 9_000, sync=True)
    os.truncate(f, 100)
    assert os.stat(f).st_size == 100
    os.truncate(f, 9_000)  # cut then grown back: the cut bytes read as zeros, not as before
    assert read(f) == b"z" * 100 + bytes(8_900)
    assert read(backing(mount, f)) == b"z" * 9_000
    mount.crash()
    assert read(f) == b"z" * 9_000


def test_synced_truncate_and_o_trunc(mount, d):
    f = os.path.join(d, "f")
    write(f, b"q" * 5_000, sync=True)
    fd = os.open(f, os.O_RDWR | os.O_TRUNC)  # unsynced truncation to 0 ...
    os.write(fd, b"new")
    assert read(f) == b"new"
    os.close(fd)
    mount.crash()
    assert read(f) == b"q" * 5_000  # ... undone
    fd = os.open(f, os.O_RDWR)
    os.ftruncate(fd, 4_097)
    os.fsync(fd)
    os.close(fd)
    mount.crash()
    assert read(f) == b"q" * 4_097


def test_rename_and_unlink_take_effect_at_once_and_stay(mount, d):
    a, b, c = (os.path.join(d, n) for n in "abc")
    write(a, b"synced a", sync=True)
    write(b, b"old b", sync=True)
    write(c, b"c")
    os.rename(a, b)  # over an existing file
    os.unlink(c)
    assert sorted(os.listdir(d)) == ["b"]
    assert sorted(os.listdir(backing(mount, d))) == ["b"]
    mount.crash()
    assert sorted(os.listdir(d)) == ["b"]
    assert read(b) == b"synced a"


def test_renamed_file_keeps_its_unsynced_data_until_the_crash(mount, d):
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    write(a, b"1" * 100, sync=True)
    write(a, b"2" * 100, offset=100)
    os.rename(a, b)
    assert read(b) == b"1" * 100 + b"2" * 100
    fd = os.open(b, os.O_RDONLY)  # a sync through a read-only handle reaches the disk too
    os.fsync(fd)
    os.close(fd)
    mount.crash()
    assert read(b) == b"1" * 100 + b"2" * 100


def test_unlinked_file_leaves_nothing_for_a_new_file(mount, d):
    for i in range(20):  # a new file may reuse the unlinked one's inode number
        f = os.path.join(d, f"f{i}")
        write(f, b"stale" * 1000)
        os.unlink(f)
        write(f, b"")
        assert read(f) == b"", i
        os.unlink(f)


def test_unlink_of_an_open_file(mount, d):
    f = os.path.join(d, "f")
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"still readable")
        os.unlink(f)
        assert os.pread(fd, 100, 0) == b"still readable"
        assert os.listdir(d) == []  # hard_remove: no .fuse_hidden file left in the directory
    finally:
        os.close(fd)


def test_o_append(mount, d):
    f = os.path.join(d, "f")
    write(f, b"one ", sync=True)
    write(f, b"two ", flags=os.O_WRONLY | os.O_APPEND)
    write(f, b"three", flags=os.O_WRONLY | os.O_APPEND)
    assert read(f) == b"one two three"
    mount.crash()
    assert read(f) == b"one "


def test_directory_fsync_statfs_and_hidden_control_file(mount, d):
    os.mkdir(os.path.join(d, "sub"))
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)  # PostgreSQL syncs directories: nothing pending, must succeed
    finally:
        os.close(fd)
    assert os.statvfs(d).f_bsize > 0
    assert lossyfs.CONTROL not in os.listdir(mount.mountpoint)
    mount.crash()
    assert os.listdir(d) == ["sub"]
