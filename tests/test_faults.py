"""I/O faults on a live Saver: a failed fsync and a full disk, injected through an APSW VFS.

The shim below wraps SQLite's ``unix`` VFS and fails the next sync or write of the ``-wal`` while
a flag is set; it is a test fixture, not the library's fault-injection layer.

SQLite by nature: faults injected through an APSW VFS.
"""

from __future__ import annotations

from collections.abc import Iterator

import apsw
import pytest

from sqlitesaver import DatabaseIOError, DiskFullError, Saver, SaverClosedError


class _File(apsw.VFSFile):
    def __init__(self, vfs: "_FaultyVFS", name: object, flags: list[int]) -> None:
        self._vfs = vfs
        self._wal = str(name.filename() if hasattr(name, "filename") else name).endswith("-wal")
        super().__init__("unix", name, flags)

    def xSync(self, flags: int) -> None:
        if self._wal and self._vfs.fail_sync:
            raise apsw.exception_for(apsw.SQLITE_IOERR_FSYNC)
        super().xSync(flags)

    def xWrite(self, data: bytes, offset: int) -> None:
        if self._wal and self._vfs.disk_full:
            raise apsw.exception_for(apsw.SQLITE_FULL)
        super().xWrite(data, offset)


class _FaultyVFS(apsw.VFS):
    def __init__(self) -> None:
        self.fail_sync = False
        self.disk_full = False
        super().__init__("sqlitesaver-test-faults", "unix", makedefault=True)

    def xOpen(self, name: object, flags: list[int]) -> _File:
        return _File(self, name, flags)


@pytest.fixture
def faults() -> Iterator[_FaultyVFS]:
    vfs = _FaultyVFS()
    try:
        yield vfs
    finally:
        vfs.unregister()  # every Saver of the test is closed by then (with-blocks)


def test_failed_fsync_raises_maybe_committed_and_shuts_the_saver_down(db_path, faults):
    with Saver(db_path) as saver:
        first = saver.put("t", "acknowledged")
        faults.fail_sync = True
        with pytest.raises(DatabaseIOError) as info:
            saver.put("t", "in doubt", parent_id=first.checkpoint_id)
        assert info.value.sqlite_extended_result == apsw.SQLITE_IOERR_FSYNC
        assert "maybe committed" in str(info.value) and db_path in str(info.value)
        faults.fail_sync = False
        # never retried on the same connection: the Saver refuses further use
        with pytest.raises(SaverClosedError, match="I/O error"):
            saver.get("t")
        with pytest.raises(SaverClosedError):
            saver.put("t", "again")
    with Saver(db_path, integrity_check="full") as saver:
        states = [c.state for c in saver.list("t")]
        # the acknowledged one is there; the one in doubt is there whole or not at all
        assert states in (["acknowledged"], ["in doubt", "acknowledged"]), states
        assert saver.put("t", "after").checkpoint_id > first.checkpoint_id


def test_full_disk_rolls_back_and_the_same_saver_writes_again(db_path, faults):
    with Saver(db_path) as saver:
        saver.put("t", "before")
        faults.disk_full = True
        with pytest.raises(DiskFullError) as info:
            with saver.transaction():
                saver.put("t", "lost")
                saver.append_log("t", "lost")
        assert "intact" in str(info.value) and db_path in str(info.value)
        assert [c.state for c in saver.list("t")] == ["before"]
        faults.disk_full = False  # space returns
        saver.put("t", "after")
        assert [c.state for c in saver.list("t")] == ["after", "before"]
        assert list(saver.read_log("t")) == []
    with Saver(db_path, integrity_check="full") as saver:
        assert [c.state for c in saver.list("t")] == ["after", "before"]
