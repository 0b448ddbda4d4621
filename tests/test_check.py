"""``python -m sqlitesaver check`` and ``scripts/validate_sqlite_integrity.sh``.

Every test that checks a database hashes the database and its -wal / -journal before and after
(only while no connection to it is open in this process: the check itself runs in a child
process) and asserts they did not change. One thing SQLite does for any reader of a WAL
database is allowed: if there was no -wal, it creates an empty one (and a -shm), which hold no
data.

Never import the stdlib ``sqlite3`` here: other databases are made with APSW.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import textwrap

import apsw
import pytest

from conftest import family_digest, file_digest
from sqlitesaver import CorruptDatabaseError, Saver, schema
from test_bad_input import (MARKER, big_db, child_env, damage_middle_page,
                            foreign_db, newer_version_in_wal_only, small_db)
from test_bad_input import shared_dir  # noqa: F401  (a fixture: pytest finds it by name)

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                      "validate_sqlite_integrity.sh")
EMPTY = hashlib.sha256(b"").hexdigest()


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlitesaver", "check", *args],
                          capture_output=True, text=True, env=child_env(), timeout=120)


def check_json(*args: str) -> tuple[int, dict]:
    done = run_check("--json", *args)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def assert_unchanged(path: str, before: dict[str, str | None]) -> None:
    after = family_digest(path)
    for suffix, digest in before.items():
        if suffix == "-wal" and digest is None:
            assert after[suffix] in (None, EMPTY), "the check wrote into a new -wal"
        else:
            assert after[suffix] == digest, f"the check changed {path + suffix!r}"


def statuses(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def steps(stdout: str) -> dict[str, tuple[str, str]]:
    """The text report's check lines, ``  STATUS  NAME  DETAIL``, by check name."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("  ") and not line.startswith("  =>"):
            status, name, detail = line.split(None, 2)
            found[name] = (status, detail)
    return found


# --- healthy databases ----------------------------------------------------------------------------

def test_healthy_closed_database_passes(db_path):
    small_db(db_path)
    before = family_digest(db_path)
    done = run_check(db_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_unchanged(db_path, before)
    assert done.stdout.splitlines()[0] == db_path
    found = steps(done.stdout)
    assert list(found) == ["file", "sqlitesaver", "integrity_check", "foreign_key_check",
                           "journal_mode", "checksums"]
    assert {status for status, _ in found.values()} == {"ok"}, done.stdout
    assert found["checksums"][1] == "4 checkpoints, 2 pending writes, 1 log events: all match"
    assert done.stdout.rstrip().endswith("=> ok")


_WRITER = textwrap.dedent("""
    import sys
    from sqlitesaver import Saver
    with Saver(sys.argv[1]) as saver:
        n = 0
        while True:
            n += 1
            with saver.transaction():
                ref = saver.put("t", {"n": n, "pad": "x" * 300}, metadata={"step": n})
                saver.put_writes("t", ref.checkpoint_id, "task", [("ch", n)])
                saver.append_log("t", {"n": n})
            if n == int(sys.argv[2]):
                print("ready", flush=True)
                if sys.argv[3] == "idle":
                    sys.stdin.read()  # hold the Saver, and its WAL, open until told to stop
                    break
""")


def start_writer(path: str, transitions: int, mode: str) -> subprocess.Popen:
    """A Saver in a child process that commits ``transitions`` transitions, prints 'ready',
    then either idles with the Saver open or keeps writing ('busy')."""
    child = subprocess.Popen([sys.executable, "-c", _WRITER, path, str(transitions), mode],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=child_env())
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


@pytest.mark.parametrize("writer", ["open in another process", "killed with SIGKILL"])
def test_healthy_database_with_data_only_in_the_wal_passes(db_path, writer):
    child = start_writer(db_path, 20, "idle")
    try:
        if writer == "killed with SIGKILL":
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert os.path.getsize(db_path + "-wal") > 0
        before = family_digest(db_path)
        code, result = check_json(db_path)
        (report,) = result["databases"]
        assert code == 0 and result["ok"], report
        assert report["payloads_checked"] == {"checkpoints": 20, "writes": 20, "log": 20}
        # a checkpoint (on close, or by anything else) would have changed the database file
        assert_unchanged(db_path, before)
    finally:
        if child.poll() is None:
            child.stdin.close()
            assert child.wait(timeout=30) == 0
    with Saver(db_path) as saver:  # the data was in the WAL, and it is still all there
        assert len(list(saver.list("t"))) == 20


def test_database_can_be_checked_while_another_process_writes(db_path):
    child = start_writer(db_path, 5, "busy")
    try:
        for _ in range(3):
            code, result = check_json(db_path)
            assert code == 0, result
            assert result["databases"][0]["payloads_checked"]["checkpoints"] >= 5
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    before = family_digest(db_path)
    code, result = check_json(db_path)  # what the killed writer left is fine too
    assert code == 0, result
    assert_unchanged(db_path, before)


# --- damage ---------------------------------------------------------------------------------------

def flip_a_byte_of_the_marker(path: str, seed: int) -> int:
    """Flip one byte of the only copy of MARKER in a closed database; return its offset."""
    with open(path, "rb") as f:
        data = f.read()
    assert data.count(MARKER) == 1
    rng = random.Random(seed)
    offset = data.index(MARKER) + rng.randrange(len(MARKER))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([data[offset] ^ rng.randrange(1, 256)]))
    return offset


@pytest.mark.parametrize("where, table, named", [
    ("state", "checkpoints", "checkpoints: checkpoint '{id}' of thread 't'"),
    ("pending write", "writes", "writes: pending write ('task', 0) of checkpoint '{id}'"),
    ("log event", "log", "log: log event 1 of thread 't'"),
])
def test_flipped_byte_in_a_payload_fails_the_checksums_only(db_path, where, table, named):
    seed = 41
    with Saver(db_path) as saver:
        parent = saver.put("t", {"n": 1})
        ref = saver.put("t", {"m": MARKER if where == "state" else b"plain"},
                        parent_id=parent.checkpoint_id)
        saver.put_writes("t", ref.checkpoint_id, "task",
                         [("ch", MARKER if where == "pending write" else 0)])
        saver.append_log("t", {"e": MARKER if where == "log event" else 0})
    offset = flip_a_byte_of_the_marker(db_path, seed)
    before = family_digest(db_path)
    context = f"seed={seed} offset={offset}"

    done = run_check(db_path)
    assert done.returncode == 1, f"{context}\n{done.stdout}{done.stderr}"
    status, line = steps(done.stdout)["checksums"]
    assert status == "FAILED", line
    assert line.startswith("1 payload(s) do not match their checksum (checked 2 "
                           "checkpoints, 1 pending writes, 1 log events): "), line
    assert named.format(id=ref.checkpoint_id) in line, line
    code, result = check_json(db_path)
    (report,) = result["databases"]
    assert code == 1
    assert statuses(report) == {"file": "ok", "sqlitesaver": "ok", "integrity_check": "ok",
                                "foreign_key_check": "ok", "journal_mode": "ok",
                                "checksums": "failed"}, context
    (failure,) = report["payload_failures"]
    assert failure["table"] == table and report["payloads_failed"] == 1
    assert_unchanged(db_path, before)


def test_damaged_page_fails_the_integrity_check(db_path):
    seed = 42
    big_db(db_path, seed=seed)
    page = damage_middle_page(db_path, seed)
    before = family_digest(db_path)
    done = run_check(db_path)
    assert done.returncode == 1, f"seed={seed} page={page}\n{done.stdout}"
    status, detail = steps(done.stdout)["integrity_check"]
    assert status == "FAILED" and detail, detail
    assert "FAILED" in done.stdout.splitlines()[-1]
    assert_unchanged(db_path, before)


@pytest.mark.parametrize("integrity_check", ["full", "off"])
def test_the_advice_in_corrupt_database_error_runs_the_check(db_path, integrity_check):
    seed = 43
    big_db(db_path, seed=seed)
    damage_middle_page(db_path, seed)
    before = family_digest(db_path)
    with pytest.raises(CorruptDatabaseError) as info:
        with Saver(db_path, integrity_check=integrity_check) as saver:
            list(saver.list("t"))  # with the check off, reading finds the damage
    assert_unchanged(db_path, before)
    found = re.search(r"'(python -m sqlitesaver check [^']+)'", str(info.value))
    assert found, str(info.value)
    command = shlex.split(found.group(1))
    assert command[-1] == db_path
    done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True,
                          env=child_env())
    assert done.returncode == 1, done.stdout + done.stderr
    assert steps(done.stdout)["integrity_check"][0] == "FAILED"
    assert_unchanged(db_path, before)


def test_a_missing_table_fails_the_payload_check(db_path):
    small_db(db_path)
    conn = apsw.Connection(db_path)
    conn.execute("DROP TABLE log")
    conn.close()
    before = family_digest(db_path)
    code, result = check_json(db_path)
    (report,) = result["databases"]
    assert code == 1 and statuses(report)["checksums"] == "failed"
    assert "no such table: log" in report["checks"][-1]["detail"]
    assert_unchanged(db_path, before)


# --- files that are not a sqlitesaver database ----------------------------------------------------

@pytest.mark.parametrize("kind, phrase", [
    ("text", "is not an SQLite database (it starts with b'this is a text f')"),
    ("empty", "is an empty file (0 bytes), not an SQLite database"),
    ("truncated", "is a truncated SQLite file (50 bytes"),
    ("missing", "does not exist"),
    ("directory", "is a directory, not a database file"),
])
def test_a_file_that_is_not_a_database_fails_with_a_clear_message(db_path, kind, phrase):
    if kind == "text":
        with open(db_path, "wb") as f:
            f.write(b"this is a text file\n" * 200)
    elif kind == "empty":
        open(db_path, "wb").close()
    elif kind == "truncated":
        small_db(db_path)
        os.truncate(db_path, 50)
    elif kind == "directory":
        os.mkdir(db_path)
    files = sorted(os.listdir(os.path.dirname(db_path)))
    before = family_digest(db_path) if kind != "directory" else None
    done = run_check(db_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert list(steps(done.stdout)) == ["file"]
    status, detail = steps(done.stdout)["file"]
    assert status == "FAILED" and f"{db_path!r} {phrase}" in detail, detail
    if before is not None:
        assert_unchanged(db_path, before)
    assert sorted(os.listdir(os.path.dirname(db_path))) == files


def test_a_missing_database_whose_wal_is_there_says_so(db_path):
    with open(db_path + "-wal", "wb") as f:
        f.write(b"\0" * 32)
    done = run_check(db_path)
    assert done.returncode == 1
    assert f"{db_path + '-wal'!r} exists without it" in done.stdout, done.stdout
    assert os.listdir(os.path.dirname(db_path)) == ["state.db-wal"]


_HOT_JOURNAL = textwrap.dedent("""
    import os, sys, apsw
    conn = apsw.Connection(sys.argv[1])
    conn.execute("CREATE TABLE t (x)")
    with conn:
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * 500)
    conn.execute("PRAGMA cache_size=2")  # the update spills into the file before COMMIT
    conn.execute("BEGIN")
    conn.execute("UPDATE t SET x = zeroblob(1000)")
    os._exit(0)  # the rollback journal is left hot
""")


def test_a_hot_rollback_journal_is_reported_not_rolled_back(db_path):
    subprocess.run([sys.executable, "-c", _HOT_JOURNAL, db_path], check=True, env=child_env())
    assert os.path.getsize(db_path + "-journal") > 0
    files = sorted(os.listdir(os.path.dirname(db_path)))
    before = family_digest(db_path)
    done = run_check(db_path)
    assert done.returncode == 1
    status, detail = steps(done.stdout)["open"]
    assert status == "FAILED" and "hot rollback journal" in detail, detail
    assert_unchanged(db_path, before)
    assert sorted(os.listdir(os.path.dirname(db_path))) == files


@pytest.mark.parametrize("journal", ["rollback", "wal"])
def test_another_applications_database_gets_the_generic_checks(db_path, journal):
    foreign_db(db_path, 0x12345678, wal=journal == "wal")
    files = sorted(os.listdir(os.path.dirname(db_path)))
    before = family_digest(db_path)

    code, result = check_json(db_path)
    (report,) = result["databases"]
    assert code == 0, report
    assert statuses(report) == {
        "file": "ok", "sqlitesaver": "note", "integrity_check": "ok",
        "foreign_key_check": "ok", "journal_mode": "ok" if journal == "wal" else "note",
        "checksums": "skipped"}
    assert report["sqlitesaver"] is False
    assert "not a sqlitesaver database (application_id 0x12345678" in report["checks"][1][
        "detail"]
    assert "payload checks skipped" in report["checks"][1]["detail"]

    done = run_check("--require-saver", db_path)
    assert done.returncode == 1, done.stdout
    status, detail = steps(done.stdout)["sqlitesaver"]
    assert status == "FAILED" and detail.endswith("(--require-saver)"), detail
    assert_unchanged(db_path, before)
    if journal == "rollback":  # nothing at all appears beside a rollback-journal database
        assert sorted(os.listdir(os.path.dirname(db_path))) == files


@pytest.mark.parametrize("where", ["file", "wal only"])
def test_a_newer_schema_version_fails(db_path, where):
    if where == "file":
        small_db(db_path)
        conn = apsw.Connection(db_path)
        conn.execute("PRAGMA user_version=99")
        conn.close()
    else:
        newer_version_in_wal_only(db_path)  # the file's header still says version 1
    before = family_digest(db_path)
    done = run_check(db_path)
    assert done.returncode == 1, done.stdout
    found = steps(done.stdout)
    status, line = found["sqlitesaver"]
    assert status == "FAILED"
    assert "schema version 99" in line and "upgrade sqlitesaver" in line, line
    assert f"up to {schema.latest_version()}" in line
    assert found["checksums"][0] == "skipped" and found["integrity_check"][0] == "ok"
    assert_unchanged(db_path, before)


def test_several_paths_fail_if_any_fails(db_path, tmp_path):
    small_db(db_path)
    code, result = check_json(db_path, str(tmp_path / "missing.db"))
    assert code == 1 and [d["ok"] for d in result["databases"]] == [True, False]
    done = run_check(db_path, db_path)
    assert done.returncode == 0 and "2 of 2 database(s) ok" in done.stdout


# --- usage ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [[], ["--no-such-option", "x.db"], ["--json"]])
def test_bad_usage_exits_2(tmp_path, args):
    done = subprocess.run([sys.executable, "-m", "sqlitesaver", "check", *args],
                          capture_output=True, text=True, env=child_env(), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "usage:" in done.stderr
    assert os.listdir(tmp_path) == []


# --- the shell script -----------------------------------------------------------------------------

def run_script(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True,
                          env=dict(child_env(), PYTHON=python), timeout=120)


def test_script_is_executable_and_propagates_the_exit_status(db_path, tmp_path):
    assert os.access(SCRIPT, os.X_OK)
    small_db(db_path)
    before = family_digest(db_path)
    done = run_script(db_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "=> ok" in done.stdout
    assert_unchanged(db_path, before)
    done = run_script(db_path, str(tmp_path / "missing.db"))
    assert done.returncode == 1 and "does not exist" in done.stdout
    assert run_script().returncode == 2


def test_script_says_when_sqlitesaver_is_not_importable(tmp_path):
    bare = tmp_path / "bare-python"
    # -I -S: no PYTHONPATH, no site-packages, so neither apsw nor sqlitesaver can be imported
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    bare.chmod(0o755)
    done = run_script(str(tmp_path / "x.db"), python=str(bare))
    assert done.returncode == 2
    assert "sqlitesaver is not importable" in done.stderr and "PYTHON" in done.stderr
    done = run_script(str(tmp_path / "x.db"), python=str(tmp_path / "no-such-python"))
    assert done.returncode == 2 and "not found" in done.stderr


# --- a directory the checker cannot write (run as 'nobody': root ignores permissions) ----------

_UNPRIVILEGED_CHECK = textwrap.dedent("""
    import json, locale, os, sys  # locale: argparse's gettext imports it lazily, and the
    from sqlitesaver.__main__ import main  # interpreter may live where 'nobody' cannot read
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        except OSError as exc:
            print(json.dumps({"cannot_drop": str(exc)}))
            sys.exit(0)
    assert os.geteuid() != 0
    sys.exit(main(["check", "--json", sys.argv[1]]))
""")


def check_unprivileged(path: str) -> tuple[int, dict]:
    try:
        done = subprocess.run([sys.executable, "-c", _UNPRIVILEGED_CHECK, path],
                              capture_output=True, text=True, env=child_env(), cwd="/")
    except PermissionError as exc:
        pytest.skip(f"cannot start an unprivileged child process: {exc}")
    result = json.loads(done.stdout)
    if "cannot_drop" in result:
        pytest.skip(f"cannot drop root privileges to uid 65534: {result['cannot_drop']}")
    return done.returncode, result["databases"][0]


def test_an_unreadable_file_is_named(shared_dir):
    path = os.path.join(shared_dir, "state.db")
    small_db(path)
    os.chmod(path, 0)
    before = family_digest(path)
    code, report = check_unprivileged(path)
    assert code == 1
    (step,) = report["checks"]
    assert step["name"] == "file" and step["status"] == "failed"
    assert f"{path!r} cannot be read" in step["detail"] and "permissions" in step["detail"]
    assert family_digest(path) == before


_CRASHED_WRITER = textwrap.dedent("""
    import os, sys
    from sqlitesaver import Saver
    saver = Saver(sys.argv[1])
    for n in range(10):
        saver.put("t", {"n": n})
    os._exit(0)  # no close: the -wal and -shm stay, holding the last transitions
""")


@pytest.mark.parametrize("case", ["wal and shm present", "shm missing", "no wal"])
def test_read_only_directory(shared_dir, case):
    directory = os.path.join(shared_dir, "db")
    os.mkdir(directory)
    path = os.path.join(directory, "state.db")
    if case == "no wal":
        small_db(path)
    else:
        subprocess.run([sys.executable, "-c", _CRASHED_WRITER, path], check=True,
                       env=child_env())
        assert os.path.getsize(path + "-wal") > 0
        if case == "shm missing":
            os.unlink(path + "-shm")
    os.chmod(directory, 0o555)
    files = sorted(os.listdir(directory))
    before = family_digest(path)
    shm_before = file_digest(path + "-shm")

    code, report = check_unprivileged(path)

    assert family_digest(path) == before
    assert file_digest(path + "-shm") == shm_before
    assert sorted(os.listdir(directory)) == files
    if case == "wal and shm present":
        assert code == 0, report
        assert report["payloads_checked"]["checkpoints"] == 10  # read from the WAL
        return
    assert code == 1
    step = report["checks"][-1]
    assert step["name"] == "open" and step["status"] == "failed"
    missing = path + ("-shm" if case == "shm missing" else "-wal")
    assert f"{missing!r} is missing" in step["detail"], step["detail"]
    assert "not writable" in step["detail"] and "copy the database" in step["detail"]
