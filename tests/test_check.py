"""``python -m sqlitesaver check`` and ``scripts/validate_sqlite_integrity.sh``.

Every test that checks a database hashes the database and its -wal / -journal before and after
(only while no connection to it is open in this process: the check itself runs in a child
process) and asserts they did not change. One thing SQLite does for any reader of a WAL
database is allowed: if there was no -wal, it creates an empty one (and a -shm), which hold no
data.

Never import the stdlib ``sqlite3`` here: other databases are made with APSW.

SQLite by nature: the validator on a file (on a server: tests/test_postgres_check.py).
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
from sqlitesaver import CorruptDatabaseError, Saver, integrity, schema
from test_bad_input import (MARKER, big_db, child_env, damage_middle_page,
                            foreign_db, newer_version_in_wal_only, small_db)

# Run once per CI, in the main pass (pyproject.toml, the "once" marker).
pytestmark = pytest.mark.once

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                      "validate_sqlite_integrity.sh")
EMPTY = hashlib.sha256(b"").hexdigest()
CHECKS = ["file", "sqlitesaver", "integrity_check", "foreign_key_check", "journal_mode", "schema",
          "checksums", "files", "writes_point_at_checkpoints", "ids_monotonic",
          "parents_exist_unless_pruned"]
INVARIANTS = CHECKS[-3:]


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlitesaver", "check", *args],
                          capture_output=True, text=True, env=child_env(), timeout=120)


def check_json(*args: str) -> tuple[int, dict]:
    done = run_check("--json", *args)
    assert done.returncode in (0, 1, 2), done.stderr
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
    assert list(found) == CHECKS
    assert {status for status, _ in found.values()} == {"ok"}, done.stdout
    assert found["checksums"][1] == "4 checkpoints, 2 pending writes, 1 log events: all match"
    assert found["writes_point_at_checkpoints"][1] == ("all 2 pending write(s) belong to an "
                                                       "existing checkpoint")
    assert found["ids_monotonic"][1].startswith("next checkpoint id '0000000000000005', next "
                                                "log seq 2: ")
    assert found["parents_exist_unless_pruned"][1] == (
        "1 parent link(s): 1 to an existing checkpoint of the same thread and namespace, 0 to "
        "a pruned one")
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
    assert statuses(report) == dict(dict.fromkeys(CHECKS, "ok"), checksums="failed"), context
    assert report["result"] == "damaged" and report["exit_status"] == 1
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
    found = {c["name"]: c for c in report["checks"]}
    assert code == 1 and found["checksums"]["status"] == "failed"
    assert "no such table: log" in found["checksums"]["detail"]
    # the invariant that reads the log table cannot pass either; the others can
    assert found["ids_monotonic"]["status"] == "failed"
    assert "no such table: log" in found["ids_monotonic"]["detail"]
    assert found["writes_point_at_checkpoints"]["status"] == "ok"
    assert found["parents_exist_unless_pruned"]["status"] == "ok"
    assert_unchanged(db_path, before)


# --- structural invariants: each one made to fail alone, with valid checksums ------------------

def tamper(path: str, *statements: tuple[str, tuple]) -> None:
    """Run raw SQL on a closed database (foreign keys off, as APSW opens it), then recompute
    every checkpoint's checksum so that only the invariant is wrong. Leaves no -wal."""
    conn = apsw.Connection(path)
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 0
    with conn:
        for sql, bindings in statements:
            conn.execute(sql, bindings)
        rows = conn.execute("SELECT seq, thread_id, namespace, parent_seq, created_at, state, "
                            "metadata FROM checkpoints").fetchall()
        conn.executemany("UPDATE checkpoints SET checksum = ? WHERE seq = ?",
                         [(integrity.checkpoint_checksum(*row), row[0]) for row in rows])
    conn.close()
    assert not os.path.exists(path + "-wal")


def chain(path: str, length: int, *, keep_last: int | None = None) -> list[str]:
    """Thread 't': a chain of checkpoints, each the parent of the next, optionally pruned."""
    with Saver(path) as saver:
        ids = [saver.put("t", {"n": 0}).checkpoint_id]
        for n in range(1, length):
            ids.append(saver.put("t", {"n": n}, parent_id=ids[-1]).checkpoint_id)
        if keep_last is not None:
            assert saver.prune("t", keep_last=keep_last) == length - keep_last
    return ids


def ghost_write(seq: int) -> tuple[str, tuple]:
    value = b"\x01"
    return ("INSERT INTO writes (checkpoint_seq, task_id, idx, channel, value, task_path, "
            "checksum) VALUES (?, 'ghost', 0, 'ch', ?, '', ?)",
            (seq, value, integrity.write_checksum(seq, "ghost", 0, "ch", "", value)))


def assert_only_invariant_fails(path: str, invariant: str, named: str,
                                also: tuple[str, ...] = ()) -> None:
    before = family_digest(path)
    done = run_check(path)
    assert done.returncode == 1, done.stdout + done.stderr
    found = steps(done.stdout)
    status, detail = found[invariant]
    assert status == "FAILED" and named in detail, detail
    assert detail.startswith("1 violation(s): "), detail
    assert {name for name, (status, _) in found.items() if status != "ok"} == \
        {invariant, *also}, done.stdout
    assert done.stdout.rstrip().endswith(f"=> FAILED: damage found ({1 + len(also)} check(s) "
                                         "failed)")
    assert_unchanged(path, before)


def test_a_pending_write_of_a_missing_checkpoint_fails(db_path):
    small_db(db_path)
    tamper(db_path, ghost_write(999))
    # foreign_key_check sees it too, through the foreign key; the invariant asks the tables
    assert_only_invariant_fails(
        db_path, "writes_point_at_checkpoints",
        "pending write ('ghost', 0) of checkpoint '00000000000003e7', which does not exist",
        also=("foreign_key_check",))


@pytest.mark.parametrize("case", ["parent not older", "high_water row missing",
                                  "high_water not an integer", "high_water below a pruned id"])
def test_ids_that_are_not_monotonic_fail(db_path, case):
    if case == "parent not older":
        ids = chain(db_path, 3)
        # the first checkpoint names the third as its parent: a cycle, which put() cannot make
        tamper(db_path, ("UPDATE checkpoints SET parent_seq = 3 WHERE seq = 1", ()))
        named = f"checkpoint {ids[0]!r} of thread 't' has parent {ids[2]!r}, which is not older"
    elif case == "high_water row missing":
        small_db(db_path)
        tamper(db_path, ("DELETE FROM high_water WHERE name = 'checkpoints'", ()))
        named = "high_water has no 'checkpoints' row: the next checkpoints seq would be chosen"
    elif case == "high_water not an integer":
        small_db(db_path)
        tamper(db_path, ("UPDATE high_water SET value = 'x' WHERE name = 'log'", ()))
        named = "high_water 'log' is 'x' (text), not an integer"
    else:
        ids = chain(db_path, 4, keep_last=2)  # prune raised high_water to 4
        tamper(db_path, ("UPDATE high_water SET value = 1 WHERE name = 'checkpoints'", ()))
        named = (f"checkpoint {ids[2]!r} of thread 't' has parent {ids[1]!r}, which is gone but "
                 "above high_water (1): that id could be handed out again")
    assert_only_invariant_fails(db_path, "ids_monotonic", named)


@pytest.mark.parametrize("case", ["other thread", "other namespace", "missing, not pruned"])
def test_a_parent_that_cannot_have_been_pruned_fails(db_path, case):
    if case == "missing, not pruned":
        ids = chain(db_path, 3)
        # the middle one deleted without prune (high_water raised, so only this is wrong)
        tamper(db_path, ("UPDATE high_water SET value = 3 WHERE name = 'checkpoints'", ()),
               ("DELETE FROM checkpoints WHERE seq = 2", ()))
        named = (f"checkpoint {ids[2]!r} of thread 't' has parent {ids[1]!r}, which is missing "
                 f"but not older than {ids[0]!r}, the oldest remaining checkpoint of that thread "
                 "and namespace: it was not pruned")
    else:
        ids = small_db(db_path)
        child = ids["u"] if case == "other thread" else ids["ns"]
        tamper(db_path, ("UPDATE checkpoints SET parent_seq = 1 WHERE seq = ?",
                         (int(child, 16),)))
        named = (f"checkpoint {child!r} of thread {'u' if case == 'other thread' else 't'!r}"
                 + ("" if case == "other thread" else " (namespace 'ns')")
                 + f" has parent checkpoint {ids['a']!r} of thread 't': another thread or "
                 "namespace")
    assert_only_invariant_fails(db_path, "parents_exist_unless_pruned", named)


def test_pruned_parents_and_deleted_threads_pass(db_path):
    ids = chain(db_path, 6, keep_last=2)
    with Saver(db_path) as saver:
        saver.put_writes("t", ids[-1], "task", [("ch", 1)])
        for n in range(3):  # a thread deleted: its ids are below high_water now
            saver.put("gone", {"n": n}, namespace="x")
            saver.append_log("gone", n)
        assert saver.delete_thread("gone") == 3
    before = family_digest(db_path)
    done = run_check(db_path)
    assert done.returncode == 0, done.stdout
    found = steps(done.stdout)
    assert found["parents_exist_unless_pruned"] == ("ok", (
        "2 parent link(s): 1 to an existing checkpoint of the same thread and namespace, 1 to "
        "a pruned one"))
    assert found["ids_monotonic"][1].startswith("next checkpoint id '000000000000000a', next "
                                                "log seq 4: "), found["ids_monotonic"]
    assert_unchanged(db_path, before)


# --- files that are not a sqlitesaver database ----------------------------------------------------

@pytest.mark.parametrize("kind, phrase, code, status", [
    ("text", "is not an SQLite database (it starts with b'this is a text f'), so not a "
             "sqlitesaver database", 2, "UNUSABLE"),
    ("empty", "is an empty file (0 bytes), not an SQLite database", 2, "UNUSABLE"),
    ("missing", "does not exist", 2, "UNUSABLE"),
    ("directory", "is a directory, not a database file", 2, "UNUSABLE"),
    # whose it was cannot be told (the application_id is past byte 50): reported as damage
    ("truncated", "is a truncated SQLite file (50 bytes", 1, "FAILED"),
])
def test_a_file_that_is_not_a_database_is_named_with_what_it_is(db_path, kind, phrase, code,
                                                                status):
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
    assert done.returncode == code, done.stdout + done.stderr
    assert list(steps(done.stdout)) == ["file"]
    found, detail = steps(done.stdout)["file"]
    assert found == status and f"{db_path!r} {phrase}" in detail, detail
    if before is not None:
        assert_unchanged(db_path, before)
    assert sorted(os.listdir(os.path.dirname(db_path))) == files


def test_a_missing_database_whose_wal_is_there_says_so(db_path):
    with open(db_path + "-wal", "wb") as f:
        f.write(b"\0" * 32)
    done = run_check(db_path)
    assert done.returncode == 2
    assert f"{db_path + '-wal'!r} exists without it" in done.stdout, done.stdout
    assert os.listdir(os.path.dirname(db_path)) == ["state.db-wal"]


_HOT_JOURNAL = textwrap.dedent("""
    import os, sys, apsw
    conn = apsw.Connection(sys.argv[1])
    conn.execute(f"PRAGMA application_id={int(sys.argv[2])}")
    conn.execute("CREATE TABLE t (x)")
    with conn:
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * 500)
    conn.execute("PRAGMA cache_size=2")  # the update spills into the file before COMMIT
    conn.execute("BEGIN")
    conn.execute("UPDATE t SET x = zeroblob(1000)")
    os._exit(0)  # the rollback journal is left hot
""")


@pytest.mark.parametrize("application_id, code, status", [
    (schema.APPLICATION_ID, 1, "FAILED"),  # ours (the file header says so): damage
    (0x12345678, 2, "UNUSABLE"),           # another application's: not validated
])
def test_a_hot_rollback_journal_is_reported_not_rolled_back(db_path, application_id, code,
                                                            status):
    subprocess.run([sys.executable, "-c", _HOT_JOURNAL, db_path, str(application_id)],
                   check=True, env=child_env())
    assert os.path.getsize(db_path + "-journal") > 0
    files = sorted(os.listdir(os.path.dirname(db_path)))
    before = family_digest(db_path)
    done = run_check(db_path)
    assert done.returncode == code, done.stdout
    found, detail = steps(done.stdout)["open"]
    assert found == status and "hot rollback journal" in detail, detail
    if code == 2:
        assert "another application" in detail and "0x12345678" in detail, detail
    assert_unchanged(db_path, before)
    assert sorted(os.listdir(os.path.dirname(db_path))) == files


@pytest.mark.parametrize("application_id", [0x12345678, 0])
@pytest.mark.parametrize("journal", ["rollback", "wal"])
def test_another_applications_database_exits_2_naming_it(db_path, journal, application_id):
    foreign_db(db_path, application_id, wal=journal == "wal")
    files = sorted(os.listdir(os.path.dirname(db_path)))
    before = family_digest(db_path)

    done = run_check(db_path)
    assert done.returncode == 2, done.stdout
    found = steps(done.stdout)
    assert list(found) == ["file", "sqlitesaver"]
    status, detail = found["sqlitesaver"]
    assert status == "UNUSABLE"
    assert detail.startswith(f"{db_path!r} is an SQLite database of another application: "), \
        detail
    assert (f"application_id 0x{application_id:08x}" if application_id
            else "no application_id (0)") in detail, detail
    assert "not a sqlitesaver database, so it was not validated" in detail
    assert done.stdout.rstrip().endswith("=> UNUSABLE: not validated (see above)")
    code, result = check_json(db_path)
    (report,) = result["databases"]
    assert code == 2 and result["exit_status"] == 2 and not result["ok"]
    assert report["result"] == "unusable" and report["sqlitesaver"] is False
    assert_unchanged(db_path, before)
    if journal == "rollback":  # nothing at all appears beside a rollback-journal database
        assert sorted(os.listdir(os.path.dirname(db_path))) == files


@pytest.mark.parametrize("where", ["file", "wal only"])
def test_a_newer_schema_version_cannot_be_validated(db_path, where):
    if where == "file":
        small_db(db_path)
        conn = apsw.Connection(db_path)
        conn.execute("PRAGMA user_version=99")
        conn.close()
    else:
        newer_version_in_wal_only(db_path)  # the file's header still says version 1
    before = family_digest(db_path)
    done = run_check(db_path)
    assert done.returncode == 2, done.stdout
    found = steps(done.stdout)
    status, line = found["sqlitesaver"]
    assert status == "UNUSABLE"
    assert "schema version 99" in line and "Cannot validate: upgrade sqlitesaver" in line, line
    assert f"up to {schema.latest_version()}" in line
    # the SQLite-level checks still run (damage they find would make it exit 1); ours do not
    assert found["integrity_check"][0] == "ok" and found["foreign_key_check"][0] == "ok"
    assert {found[name][0] for name in ["checksums", *INVARIANTS]} == {"skipped"}
    assert_unchanged(db_path, before)


def test_a_newer_schema_version_with_damage_exits_1(db_path):
    seed = 44
    big_db(db_path, seed=seed)
    conn = apsw.Connection(db_path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    page = damage_middle_page(db_path, seed)
    done = run_check(db_path)
    assert done.returncode == 1, f"seed={seed} page={page}\n{done.stdout}"
    found = steps(done.stdout)
    assert found["sqlitesaver"][0] == "UNUSABLE" and found["integrity_check"][0] == "FAILED"


def test_several_paths_exit_with_the_worst_status(db_path, tmp_path):
    small_db(db_path)
    damaged = str(tmp_path / "damaged.db")
    big_db(damaged, seed=45)
    damage_middle_page(damaged, 45)
    missing = str(tmp_path / "missing.db")
    # 1 (damage) wins over 2 (unusable), whatever the order; 2 wins over 0
    for paths, code in [([db_path, missing], 2), ([missing, db_path], 2),
                        ([db_path, damaged, missing], 1), ([missing, damaged], 1),
                        ([damaged, db_path], 1), ([db_path, db_path], 0)]:
        done, result = check_json(*paths)
        assert done == code and result["exit_status"] == code, (paths, result)
        assert [d["result"] for d in result["databases"]] == [
            {db_path: "ok", damaged: "damaged", missing: "unusable"}[p] for p in paths]
    done = run_check(db_path, damaged, missing)
    assert done.returncode == 1
    assert "1 of 3 database(s) ok, 1 damaged, 1 unusable" in done.stdout, done.stdout
    done = run_check(db_path, db_path)
    assert done.returncode == 0 and "2 of 2 database(s) ok" in done.stdout


# --- usage ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [[], ["--no-such-option", "x.db"], ["--json"],
                                  ["--require-saver", "x.db"]])
def test_bad_usage_exits_2(tmp_path, args):
    done = subprocess.run([sys.executable, "-m", "sqlitesaver", "check", *args],
                          capture_output=True, text=True, env=child_env(), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "usage:" in done.stderr
    assert os.listdir(tmp_path) == []


# --- the shell script -----------------------------------------------------------------------------

def run_script(*args: str, python: str = sys.executable,
               **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True,
                          env=dict(child_env(), PYTHON=python, **env), timeout=120)


def test_script_is_executable_and_propagates_the_exit_status(db_path, tmp_path):
    assert os.access(SCRIPT, os.X_OK)
    small_db(db_path)
    before = family_digest(db_path)
    done = run_script(db_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "=> ok" in done.stdout
    assert_unchanged(db_path, before)
    done = run_script(db_path, str(tmp_path / "missing.db"))
    assert done.returncode == 2 and "does not exist" in done.stdout
    damaged = str(tmp_path / "damaged.db")
    big_db(damaged, seed=46)
    damage_middle_page(damaged, 46)
    done = run_script(damaged, str(tmp_path / "missing.db"))
    assert done.returncode == 1 and "integrity_check" in done.stdout


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


def _script_in_a_clone(tmp_path, *, venv: bool) -> tuple[str, str]:
    """A copy of the script in a fake clone (``repo/scripts/``), with a ``repo/.venv`` whose
    python has sqlitesaver when ``venv``; and a PATH whose ``python3`` does not."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    script = repo / "scripts" / "validate_sqlite_integrity.sh"
    script.write_bytes(open(SCRIPT, "rb").read())
    script.chmod(0o755)
    if venv:
        (repo / ".venv" / "bin").mkdir(parents=True)
        python = repo / ".venv" / "bin" / "python"
        python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
        python.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    bare = bin_dir / "python3"  # -I -S: neither apsw nor sqlitesaver importable
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -I -S \"$@\"\n")
    bare.chmod(0o755)
    return str(script), f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"


def test_script_finds_the_clones_virtualenv_and_says_so(tmp_path, db_path):
    # Issue #19: right after the README's venv steps the script used the system python3.
    small_db(db_path)
    script, path = _script_in_a_clone(tmp_path, venv=True)
    env = {k: v for k, v in child_env().items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    done = subprocess.run([script, db_path], capture_output=True, text=True,
                          env=dict(env, PATH=path), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    venv_python = str(tmp_path / "repo" / ".venv" / "bin" / "python")
    assert done.stderr.startswith(f"{script}: using {venv_python} (the first of ")
    assert "=> ok" in done.stdout
    # an active virtualenv comes first; $PYTHON, when set, is the only one tried
    active = tmp_path / "active"
    (active / "bin").mkdir(parents=True)
    os.symlink(venv_python, active / "bin" / "python")
    done = subprocess.run([script, db_path], capture_output=True, text=True,
                          env=dict(env, PATH=path, VIRTUAL_ENV=str(active)), timeout=120)
    assert done.returncode == 0 and f"using {active}/bin/python (" in done.stderr
    done = subprocess.run([script, db_path], capture_output=True, text=True,
                          env=dict(env, PATH=path, PYTHON=sys.executable), timeout=120)
    assert done.returncode == 0 and f"using {sys.executable} (from $PYTHON)" in done.stderr


def test_script_without_any_python_with_sqlitesaver_says_what_it_tried(tmp_path):
    script, path = _script_in_a_clone(tmp_path, venv=False)
    env = {k: v for k, v in child_env().items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    done = subprocess.run([script, "x.db"], capture_output=True, text=True,
                          env=dict(env, PATH=path), timeout=120)
    assert done.returncode == 2
    assert "no Python with sqlitesaver found" in done.stderr
    assert f"'{tmp_path}/repo/.venv/bin/python' 'python3'" in done.stderr
    assert "PYTHON" in done.stderr and done.stdout == ""


def test_script_without_a_path_runs_one_crash_recovery_cycle(tmp_path):
    done = run_script(TMPDIR=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("no PATH given: one simulated crash-recovery cycle (write, SIGKILL, "
                        "recover, validate)")
    assert lines[1].startswith(f"  database:  {tmp_path}/sqlitesaver-validate.")
    assert any(line.startswith("  write, SIGKILL, recover: passed ") and "PASS (seed " in line
               for line in lines), done.stdout
    assert any(re.match(r" +1/1 .*killed", line) for line in lines), done.stdout
    assert "  validate: passed (python -m sqlitesaver check): ok" in lines
    assert lines[-1] == "ok: the cycle ran and the check passed (temporary directory removed)"
    assert len(lines) <= 8
    assert os.listdir(tmp_path) == []  # removed on success


def test_script_without_a_path_keeps_the_database_when_the_cycle_fails(tmp_path):
    fake = tmp_path / "python"
    # the harness fails (as it does when it finds a lost transition); the rest is the real one
    fake.write_text(f"#!/bin/sh\n[ \"$2\" = sqlitesaver.torture ] && "
                    f"{{ echo 'FAIL (seed 7)'; exit 1; }}\nexec {sys.executable} \"$@\"\n")
    fake.chmod(0o755)
    work = tmp_path / "tmp"
    work.mkdir()
    done = run_script(python=str(fake), TMPDIR=str(work))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "write, SIGKILL, recover: FAILED, exit 1" in done.stdout
    assert "validate: FAILED, exit 2 (python -m sqlitesaver check): no database was left" \
        in done.stdout
    (kept,) = os.listdir(work)
    assert done.stdout.splitlines()[-1] == f"FAILED: the database and both outputs are kept in " \
                                          f"{work / kept}"


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
    assert code == 2
    (step,) = report["checks"]
    assert step["name"] == "file" and step["status"] == "unusable"
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
    assert code == 2
    step = report["checks"][-1]
    assert step["name"] == "open" and step["status"] == "unusable"
    missing = path + ("-shm" if case == "shm missing" else "-wal")
    assert f"{missing!r} is missing" in step["detail"], step["detail"]
    assert "not writable" in step["detail"] and "copy the database" in step["detail"]
