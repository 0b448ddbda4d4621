"""Backup and restore (``sqlitesaver.backup``; ``python -m sqlitesaver backup`` / ``restore``).

A backup taken while a writer runs (a thread of the same Saver, or another process) must be one
consistent snapshot: a validated database holding every checkpoint acknowledged before the
backup began, each whole, and no gap (a prefix of the writer's sequence). Restore must never
touch a database in use, and never leave an old ``-wal`` beside the restored file.

Never ``open()`` a database file here while this process has a connection to it (see
conftest); hashes are taken only while every connection of this process is closed.

SQLite by nature: SQLite's backup API (a server: the pg_dump recipe, tests/test_postgres_saver.py).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading

import apsw
import pytest

from conftest import family_digest
from sqlitesaver import (BusyTimeoutError, CorruptDatabaseError, DatabaseIOError,
                         InvalidArgumentError, Saver, files, opening)
from sqlitesaver.backup import backup, restore
from sqlitesaver.check import check_database
from test_bad_input import MARKER, child_env, small_db, snapshot

WRITER = textwrap.dedent("""
    import sys
    from sqlitesaver import Saver
    with Saver(sys.argv[1]) as saver:
        n = 0
        while True:
            n += 1
            with saver.transaction():
                ref = saver.put("w", {"n": n, "pad": "x" * 300}, metadata={"n": n})
                saver.put_writes("w", ref.checkpoint_id, "task", [("n", n)])
                saver.append_log("w", {"n": n})
            print(n, flush=True)
""")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlitesaver", *args], capture_output=True,
                          text=True, env=child_env(), timeout=120)


def assert_prefix(path: str, at_least: int) -> int:
    """The copy holds transitions 1..k of the writer, each whole, with k >= at_least."""
    report = check_database(path)
    assert report.ok, [(s.name, s.status, s.detail) for s in report.steps]
    with Saver(path, readonly=True) as saver:
        listed = list(saver.list("w"))
        log = [e.event["n"] for e in saver.read_log("w")]
    ns = [c.state["n"] for c in reversed(listed)]
    k = len(ns)
    assert ns == list(range(1, k + 1)), "not a prefix: a hole or a duplicate"
    assert k >= at_least, (k, at_least)
    for c in listed:
        n = c.state["n"]
        assert c.state == {"n": n, "pad": "x" * 300} and c.metadata == {"n": n}
        assert [w.value for w in c.pending_writes] == [n]
    assert log == list(range(1, k + 1)), "the log is not the same snapshot"
    return k


def test_backup_while_a_thread_of_the_same_saver_writes(tmp_path):
    src = str(tmp_path / "src.db")
    stop = threading.Event()
    written = threading.Semaphore(0)
    acknowledged = [0]
    with Saver(src) as saver:
        def write() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                with saver.transaction():
                    ref = saver.put("w", {"n": n, "pad": "x" * 300}, metadata={"n": n})
                    saver.put_writes("w", ref.checkpoint_id, "task", [("n", n)])
                    saver.append_log("w", {"n": n})
                acknowledged[0] = n
                written.release()

        writer = threading.Thread(target=write)
        writer.start()
        try:
            copies = []
            for i in range(3):
                for _ in range(40):  # the writer runs ahead, and keeps running during the copy
                    written.acquire()
                before = acknowledged[0]
                report = saver.backup(str(tmp_path / f"copy{i}.db"))
                assert report.check.ok and report.path == str(tmp_path / f"copy{i}.db")
                copies.append((report.path, before))
        finally:
            stop.set()
            writer.join()
        final = acknowledged[0]
    # each copy is one file: no -wal, no -shm, no temporary left beside it
    assert sorted(os.listdir(tmp_path)) == ["copy0.db", "copy1.db", "copy2.db", "src.db"]
    counts = [assert_prefix(path, before) for path, before in copies]
    assert counts == sorted(counts) and counts[-1] <= final


def test_backup_while_another_process_writes_then_restore(tmp_path):
    src, dst = str(tmp_path / "src.db"), str(tmp_path / "backup.db")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, src], stdout=subprocess.PIPE,
                              text=True, env=child_env())
    try:
        assert writer.stdout is not None
        for line in writer.stdout:
            if int(line) >= 50:
                break
        before = int(line)
        done = cli("backup", src, dst, "--json")  # a Saver(readonly=True) on a live database
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["check"] == "ok" and result["path"] == dst and result["bytes"] > 0
        after = int(writer.stdout.readline())  # it was writing all along
        assert after > before
        # restore over the live database is refused, and changes nothing
        done = cli("restore", dst, src, "--force")
        assert done.returncode == 2 and "in use" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout:
            writer.stdout.close()
    k = assert_prefix(dst, before)
    assert cli("check", dst).returncode == 0
    # now that nobody uses it: restore puts the backup in place, the old one moved aside
    done = cli("restore", dst, src, "--json")
    assert done.returncode == 2 and "--force" in done.stderr  # exists: asked for explicitly
    done = cli("restore", dst, src, "--force", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    aside = result["replaced"]
    assert aside.startswith(src + ".replaced-") and result["check"] == "ok"
    assert not os.path.exists(src + "-wal") or os.path.getsize(src + "-wal") == 0
    assert assert_prefix(src, k) == k  # exactly the backup
    with Saver(aside, readonly=True) as saver:  # the killed writer's database, whole
        assert len(list(saver.list("w"))) >= after


def test_restore_moves_a_database_aside_with_its_wal(tmp_path):
    dst, saved = str(tmp_path / "db"), str(tmp_path / "saved.db")
    small_db(saved)
    # a database whose last transactions are only in its -wal (its writer was killed)
    subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, sys
        from sqlitesaver import Saver
        saver = Saver(sys.argv[1])
        saver.put("only-in-wal", {"kept": True})
        os._exit(0)
    """), dst], check=True, env=child_env())
    assert os.path.getsize(dst + "-wal") > 0
    with Saver(saved, readonly=True) as saver:
        expected = snapshot(saver)
    report = restore(saved, dst, force=True)
    assert report.replaced and os.path.getsize(report.replaced + "-wal") > 0
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["db", os.path.basename(report.replaced), os.path.basename(report.replaced) + "-wal",
         "saved.db", "saved.db-shm", "saved.db-wal"])
    with Saver(dst) as saver:  # no stale -wal was applied to the restored file
        assert snapshot(saver) == expected and "only-in-wal" not in saver.threads()
    with Saver(report.replaced) as saver:  # the old database found its own -wal
        assert saver.get("only-in-wal").state == {"kept": True}


def test_restore_refuses_a_database_open_in_this_process(tmp_path):
    dst, saved = str(tmp_path / "db"), str(tmp_path / "saved.db")
    small_db(saved)
    small_db(dst)
    with Saver(dst) as live:
        with pytest.raises(BusyTimeoutError, match="in use"):
            restore(saved, dst, force=True)
        live.put("t", {"still": "works"})
    with Saver(dst) as saver:
        assert saver.get("t").state == {"still": "works"}


@pytest.mark.parametrize("holder", ["Saver", "readonly Saver", "check"])
def test_restore_refuses_a_database_another_process_has_open_even_idle(tmp_path, holder):
    dst, saved = str(tmp_path / "db"), str(tmp_path / "saved.db")
    small_db(saved)
    small_db(dst)
    opener = {"Saver": "Saver(path)", "readonly Saver": "Saver(path, readonly=True)",
              "check": None}[holder]
    code = (f"import sys\nfrom sqlitesaver import Saver\npath = sys.argv[1]\n"
            f"saver = {opener}\nsaver.get('t')\n" if opener else
            "import sys, apsw\nconn = apsw.Connection(sys.argv[1], "
            "flags=apsw.SQLITE_OPEN_READONLY)\nconn.execute('SELECT 1 FROM checkpoints')"
            ".fetchall()\n") + "print('ready', flush=True)\nsys.stdin.read()\n"
    child = subprocess.Popen([sys.executable, "-c", code, dst], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        before = family_digest(dst)
        done = cli("restore", saved, dst, "--force")
        assert done.returncode == 2, done.stdout + done.stderr
        assert "in use" in done.stderr and dst in done.stderr
        assert family_digest(dst) == before
        assert sorted(os.listdir(tmp_path)) == sorted(
            ["db", "db-shm", "db-wal", "saved.db", "saved.db-shm", "saved.db-wal"])
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
        child.stdout.close()


def test_restore_refuses_a_damaged_backup_and_changes_nothing(tmp_path):
    dst, saved = str(tmp_path / "db"), str(tmp_path / "saved.db")
    small_db(dst)
    with Saver(saved) as saver:
        saver.put("t", {"m": MARKER})
    _flip_marker_byte(saved, seed=71)
    before = family_digest(dst)
    with pytest.raises(CorruptDatabaseError, match="salvage"):
        restore(saved, dst, force=True)
    assert family_digest(dst) == before
    assert not [n for n in os.listdir(tmp_path) if files.NEW_MARK in n]


def test_restore_replaces_a_file_that_is_not_a_database(tmp_path):
    dst, saved = str(tmp_path / "db"), str(tmp_path / "saved.db")
    small_db(saved)
    with open(dst, "wb") as f:
        f.write(random.Random(72).randbytes(10_000))
    report = restore(saved, dst, force=True)
    with open(report.replaced, "rb") as f:
        assert f.read() == random.Random(72).randbytes(10_000)
    assert check_database(dst).ok


def test_backup_refuses_an_existing_destination_and_a_transaction(tmp_path):
    src, dst = str(tmp_path / "src.db"), str(tmp_path / "dst.db")
    small_db(src)
    small_db(dst)
    before = family_digest(dst)
    with Saver(src) as saver:
        with pytest.raises(InvalidArgumentError, match="already exists"):
            saver.backup(dst)
        with saver.transaction():
            saver.put("t", "uncommitted")
            with pytest.raises(InvalidArgumentError, match="transaction"):
                saver.backup(str(tmp_path / "new.db"))
    assert family_digest(dst) == before
    orphan = str(tmp_path / "orphan.db")
    with open(orphan + "-wal", "wb") as f:
        f.write(b"a -wal without its database")
    with pytest.raises(InvalidArgumentError, match="replayed"):
        backup(src, orphan)
    assert not os.path.exists(orphan) and not os.path.exists(str(tmp_path / "new.db"))


def test_backup_of_a_damaged_database_fails_loudly_and_leaves_nothing(tmp_path):
    src, dst = str(tmp_path / "src.db"), str(tmp_path / "dst.db")
    with Saver(src) as saver:
        saver.put("t", {"ok": 1})
        saver.put("t", {"m": MARKER})
    _flip_marker_byte(src, seed=73)
    done = cli("backup", src, dst)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed validation" in done.stderr and "salvage" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith("src.db")) == []


def test_backup_cli_text_output_and_missing_source(tmp_path):
    src = str(tmp_path / "src.db")
    small_db(src)
    done = cli("backup", src, str(tmp_path / "b.db"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"backed up {src} to {tmp_path / 'b.db'}: ")
    assert "validated: ok" in done.stdout
    done = cli("backup", str(tmp_path / "missing.db"), str(tmp_path / "c.db"))
    assert done.returncode == 2 and "does not exist" in done.stderr
    assert not os.path.exists(tmp_path / "missing.db")  # read-only: never created


def test_the_temporary_name_is_the_one_opening_cleans_up():
    # A killed backup, restore or salvage leaves .NAME.sqlitesaver-new-PID-...; the next
    # Saver(NAME) removes it once that process is gone (opening._remove_stale_new_files).
    assert files.NEW_MARK == opening._NEW_MARK
    name = os.path.basename(files.temp_beside("/x/agent.db"))
    assert name.startswith(f".agent.db{opening._NEW_MARK}{os.getpid()}-")


def _flip_marker_byte(path: str, seed: int) -> None:
    with open(path, "rb") as f:
        data = f.read()
    assert data.count(MARKER) == 1
    rng = random.Random(seed)
    offset = data.index(MARKER) + rng.randrange(len(MARKER))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([data[offset] ^ rng.randrange(1, 256)]))


class _FailingCopyFile(apsw.VFSFile):
    def xWrite(self, data: bytes, offset: int) -> None:
        raise apsw.exception_for(apsw.SQLITE_IOERR_WRITE)


class _FailingCopyVFS(apsw.VFS):
    """Every write to a file under construction (the copy) fails with EIO; nothing else."""

    def __init__(self) -> None:
        super().__init__("sqlitesaver-test-failing-copy", "unix", makedefault=True)

    def xOpen(self, name: object, flags: list[int]) -> apsw.VFSFile:
        text = str(name.filename() if hasattr(name, "filename") else name)
        if files.NEW_MARK in text:
            return _FailingCopyFile("unix", name, flags)
        return apsw.VFSFile("unix", name, flags)


def test_a_failing_backup_disk_does_not_shut_the_saver_down(tmp_path):
    src, dst = str(tmp_path / "src.db"), str(tmp_path / "dst.db")
    with Saver(src) as saver:
        saver.put("t", "before")
        vfs = _FailingCopyVFS()
        try:
            with pytest.raises(DatabaseIOError) as info:
                saver.backup(dst)
        finally:
            vfs.unregister()
        assert info.value.path == dst and "copying" in str(info.value)
        saver.put("t", "after")  # the Saver's own disk is fine: it goes on
        assert [c.state for c in saver.list("t")] == ["after", "before"]
    assert sorted(os.listdir(tmp_path)) == ["src.db"]
