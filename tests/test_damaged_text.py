"""Damage in any column of any row surfaces as CorruptDatabaseError (reads) or a FAILED check
(validator), never as a raw exception, and never hides another path's result (issue #13,
class 2).

APSW decodes every TEXT value it returns and raises UnicodeDecodeError on bytes that are not
UTF-8; a damaged record header can also hand back a column as another type (an int where bytes
were). The databases here are damaged with APSW on a closed file (one byte of a stored value set
to 0xFF and the value retyped as TEXT, or a payload replaced by an int), or by writing 0xFF into
the file itself; every read then runs twice (the same error both times) and the files are hashed
before and after: a failed read changes nothing.

SQLite by nature: TEXT that is not UTF-8 (a server's UTF8 database refuses it).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import apsw
import pytest

from conftest import family_digest
from sqlitesaver import (CheckpointNotFoundError, ChecksumError, CorruptDatabaseError, Saver,
                         SaverError, check)
from test_bad_input import child_env
from test_check import assert_unchanged

# --- a database with every kind of row, and ways to damage one of its values --------------------


def build(path: str) -> dict[str, str]:
    """Threads 't' (namespaces '' and 'ns', a caller-supplied id with a caller-supplied parent,
    pending writes, a log event) and 'u'. Returns checkpoint ids by name; leaves no -wal."""
    with Saver(path) as saver:
        a = saver.put("t", {"n": 1}, metadata={"step": 1})
        b = saver.put("t", {"n": 2}, metadata={"step": 2}, parent_id=a.checkpoint_id)
        saver.put_writes("t", b.checkpoint_id, "task", [("ch", 1), ("ch2", [2])],
                         task_path="path")
        saver.put("t", {"n": 3}, metadata={"step": 3}, checkpoint_id="parent-id")
        saver.put("t", {"n": 4}, metadata={"step": 4}, checkpoint_id="own-id",
                  parent_id="parent-id")
        ns = saver.put("t", {"sub": 1}, metadata={"step": 5}, namespace="ns")
        saver.put("u", "other thread")
        saver.append_log("t", {"event": 1})
    assert not os.path.exists(path + "-wal")
    return {"a": a.checkpoint_id, "b": b.checkpoint_id, "ns": ns.checkpoint_id}


def not_utf8(column: str) -> str:
    """SQL for ``column`` with its second byte set to 0xFF, stored as TEXT: not UTF-8."""
    return (f"CAST(substr(CAST({column} AS BLOB), 1, 1) || x'ff' || "
            f"substr(CAST({column} AS BLOB), 3) AS TEXT)")


def damage(path: str, sql: str) -> None:
    conn = apsw.Connection(path)
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 0
    conn.execute(sql)
    assert conn.changes() == 1, sql
    conn.close()
    assert not os.path.exists(path + "-wal")


B = "seq = 2"  # checkpoint b: the one with pending writes
OWN = "key = 'own-id'"
NS = "namespace = 'ns'"

# case: (UPDATE, reads that must raise CorruptDatabaseError, calls that write after reading the
# damaged row and must raise it too, having written nothing)
CASES = {
    "checkpoints.thread_id": (f"UPDATE checkpoints SET thread_id = {not_utf8('thread_id')} "
                              f"WHERE {B}", {"threads"}, {"delete_matching"}),
    "checkpoints.namespace": (f"UPDATE checkpoints SET namespace = {not_utf8('namespace')} "
                              f"WHERE {NS}", {"list"}, {"copy_thread", "delete_matching"}),
    "checkpoints.key": (f"UPDATE checkpoints SET key = {not_utf8('key')} WHERE {OWN}",
                        {"list"}, {"copy_thread", "delete_matching"}),
    "checkpoints.parent_key": (f"UPDATE checkpoints SET parent_key = {not_utf8('parent_key')} "
                               f"WHERE {OWN}", {"get by own id", "get latest", "list"},
                               {"copy_thread", "delete_matching"}),
    "checkpoints.created_at": (f"UPDATE checkpoints SET created_at = {not_utf8('created_at')} "
                               f"WHERE {B}", {"get each", "list"},
                               {"copy_thread", "delete_matching"}),
    "checkpoints.created_at of a caller-supplied id": (
        f"UPDATE checkpoints SET created_at = {not_utf8('created_at')} WHERE {OWN}",
        {"get by own id", "get latest", "list"},
        {"copy_thread", "delete_matching", "put own id again"}),
    "checkpoints.state": (f"UPDATE checkpoints SET state = {not_utf8('state')} WHERE {B}",
                          {"get each", "list"}, {"copy_thread", "delete_matching"}),
    "checkpoints.metadata": (f"UPDATE checkpoints SET metadata = {not_utf8('metadata')} "
                             f"WHERE {B}", {"get each", "list", "list by metadata"},
                             {"copy_thread", "delete_matching"}),
    "checkpoints.checksum": (f"UPDATE checkpoints SET checksum = {not_utf8('checksum')} "
                             f"WHERE {B}", {"get each", "list"},
                             {"copy_thread", "delete_matching"}),
    "checkpoints.state as an int": (f"UPDATE checkpoints SET state = 7 WHERE {B}",
                                    {"get each", "list"}, {"copy_thread", "delete_matching"}),
    "checkpoints.metadata as an int": (f"UPDATE checkpoints SET metadata = 3 WHERE {B}",
                                     {"get each", "list", "list by metadata"},
                                     {"copy_thread", "delete_matching"}),
    "writes.task_id": ("UPDATE writes SET task_id = " + not_utf8("task_id") + " WHERE idx = 0",
                       {"get each", "list"}, {"copy_thread"}),
    "writes.channel": ("UPDATE writes SET channel = " + not_utf8("channel") + " WHERE idx = 0",
                       {"get each", "list"}, {"copy_thread"}),
    "writes.task_path": ("UPDATE writes SET task_path = " + not_utf8("task_path")
                         + " WHERE idx = 0", {"get each", "list"}, {"copy_thread"}),
    "writes.value": ("UPDATE writes SET value = " + not_utf8("value") + " WHERE idx = 0",
                     {"get each", "list"}, {"copy_thread"}),
    "writes.value as an int": ("UPDATE writes SET value = 7 WHERE idx = 0",
                               {"get each", "list"}, {"copy_thread"}),
    "log.thread_id": ("UPDATE log SET thread_id = " + not_utf8("thread_id"), {"threads"}, set()),
    "log.created_at": ("UPDATE log SET created_at = " + not_utf8("created_at"), {"read_log"},
                       set()),
    "log.event": ("UPDATE log SET event = " + not_utf8("event"), {"read_log"}, set()),
    "log.event as a float": ("UPDATE log SET event = 1.5", {"read_log"}, set()),
}

READS = {
    "threads": lambda s, ids: s.threads(),
    "get latest": lambda s, ids: s.get("t"),
    "get each": lambda s, ids: [s.get("t", ids["a"]), s.get("t", ids["b"]),
                                s.get("t", ids["ns"], namespace="ns"), s.get("u")],
    "get by own id": lambda s, ids: s.get("t", "own-id"),
    "list": lambda s, ids: list(s.list("t")),
    "list one namespace": lambda s, ids: list(s.list("t", namespace="ns")),
    "list by metadata": lambda s, ids: list(s.list("t", metadata={"step": 2})),
    "list before": lambda s, ids: list(s.list("t", before=ids["ns"], limit=1)),
    "read_log": lambda s, ids: list(s.read_log("t")),
}

WRITES = {
    "copy_thread": lambda s, ids: s.copy_thread("t", "copy"),
    "delete_matching": lambda s, ids: s.delete_matching({"step": 99}),
    "put own id again": lambda s, ids: s.put("t", {"n": 5}, checkpoint_id="own-id"),
    "put with a parent": lambda s, ids: s.put("t", {"n": 6}, parent_id=ids["b"]),
    "put_writes": lambda s, ids: s.put_writes("t", ids["b"], "task2", [("ch", 3)]),
}


def outcome(call, saver: Saver, ids: dict, times: int = 2) -> type | None:
    """None if ``call`` returned, else the class of the SaverError it raised (the same one
    each time); anything that is not a SaverError fails the test."""
    raised = []
    for _ in range(times):
        try:
            call(saver, ids)
            raised.append(None)
        except SaverError as exc:
            if isinstance(exc, CorruptDatabaseError):
                assert repr(saver.path) in str(exc) and "backup" in str(exc), str(exc)
            raised.append(type(exc))
    assert len(set(raised)) == 1, raised
    return raised[0]


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_value_is_reported_as_corruption_by_every_read(db_path, case):
    ids = build(db_path)
    sql, must_raise, _ = CASES[case]
    damage(db_path, sql)
    before = family_digest(db_path)
    with Saver(db_path) as saver:  # SQLite's quick_check sees no damage: the open succeeds
        found = {name: outcome(read, saver, ids) for name, read in READS.items()}
    assert family_digest(db_path) == before
    corrupt = {name for name, error in found.items()
               if error is not None and issubclass(error, CorruptDatabaseError)}
    assert must_raise <= corrupt, found
    assert {error for error in found.values()} <= {None, CorruptDatabaseError, ChecksumError}


@pytest.mark.parametrize("case", list(CASES))
def test_a_write_that_reads_a_damaged_value_raises_and_writes_nothing(db_path, case):
    ids = build(db_path)
    sql, _, must_raise = CASES[case]
    damage(db_path, sql)
    pristine = db_path + ".damaged"
    shutil.copyfile(db_path, pristine)
    for name, call in WRITES.items():
        shutil.copyfile(pristine, db_path)
        before = family_digest(db_path)
        with Saver(db_path) as saver:
            error = outcome(call, saver, ids, times=1)  # a write that succeeded changed things
        assert error in (None, CorruptDatabaseError, ChecksumError, CheckpointNotFoundError), \
            (name, error)
        if name in must_raise:
            assert error is not None and issubclass(error, CorruptDatabaseError), (name, error)
        if error is not None:
            assert family_digest(db_path) == before, name


# --- damage written into the file ---------------------------------------------------------------

def pages_of(path: str, btree: str) -> list[int]:
    conn = apsw.Connection(path)  # writable: closing it removes the -wal a reader leaves
    try:
        return [page for (page,) in conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? ORDER BY pageno", (btree,))]
    finally:
        conn.close()
        assert not os.path.exists(path + "-wal")


def set_ff(path: str, btree: str, marker: bytes, at: int = 3) -> int:
    """Set byte ``at`` of ``marker`` to 0xFF where it sits in a page of ``btree`` (a table or an
    index) of a closed database. Returns the file offset."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    size = int.from_bytes(data[16:18], "big")
    offsets = [page_start + found
               for page_start in ((page - 1) * size for page in pages_of(path, btree))
               for found in [bytes(data[page_start:page_start + size]).find(marker)]
               if found != -1]
    assert len(offsets) == 1, offsets
    data[offsets[0] + at] = 0xFF
    with open(path, "wb") as f:
        f.write(data)
    return offsets[0] + at


def test_a_flipped_byte_in_a_channel_name_is_corruption(db_path):
    with Saver(db_path) as saver:
        ref = saver.put("t", {"n": 1})
        saver.put_writes("t", ref.checkpoint_id, "task", [("CHANNEL-MARKER", 1)])
        saver.put("u", 2)
    set_ff(db_path, "writes", b"CHANNEL-MARKER")
    before = family_digest(db_path)
    with Saver(db_path) as saver:
        for read in (lambda: saver.get("t"), lambda: list(saver.list("t")),
                     lambda: saver.copy_thread("t", "copy")):
            for _ in range(2):
                with pytest.raises(CorruptDatabaseError, match="not valid UTF-8"):
                    read()
        assert saver.get("u").state == 2
        assert saver.threads() == ["t", "u"]
    assert family_digest(db_path) == before
    report = check.check_database(db_path)
    assert report.result == "damaged"
    assert report.payload_failures == [{"table": "writes", "checkpoint_id": ref.checkpoint_id,
                                        "task_id": "task", "index": 0,
                                        "error": "channel: text that is not valid UTF-8"}]
    assert_unchanged(db_path, before)


def test_a_flipped_byte_in_a_thread_id_of_the_table_is_corruption(db_path):
    # The index keeps the thread id as it was, and SQLite takes the column from the index when
    # it finds the row through it: such reads return the checkpoint whole, its checksum
    # verified against that id. Whatever reads the table's own copy must report the damage.
    with Saver(db_path) as saver:
        saver.put("THREAD-MARKER", {"n": 1})
        saver.put("u", 2)
    set_ff(db_path, "checkpoints", b"THREAD-MARKER")
    before = family_digest(db_path)
    with Saver(db_path) as saver:
        for read in (lambda: saver.get("THREAD-MARKER").state,
                     lambda: [c.state for c in saver.list("THREAD-MARKER")][0]):
            try:
                assert read() == {"n": 1}
            except CorruptDatabaseError:
                pass
        with pytest.raises(CorruptDatabaseError, match="not valid UTF-8"):
            saver.delete_matching({"x": 1})  # reads every row from the table
        assert saver.get("u").state == 2
    assert family_digest(db_path) == before
    report = check.check_database(db_path)
    assert report.payload_failures[0]["error"] == "thread_id: text that is not valid UTF-8"
    failed = {step.name for step in report.steps if step.status == check.FAILED}
    assert failed == {"integrity_check", "checksums"}, check.format_report(report)
    assert_unchanged(db_path, before)


# --- the validator: every path checked, each on its own ------------------------------------------

def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlitesaver", "check", *args],
                          capture_output=True, text=True, env=child_env(), timeout=120)


@pytest.mark.parametrize("case", list(CASES))
def test_the_validator_fails_the_damaged_path_and_still_checks_the_others(tmp_path, case):
    damaged, healthy = str(tmp_path / "damaged.db"), str(tmp_path / "healthy.db")
    build(damaged)
    build(healthy)
    damage(damaged, CASES[case][0])
    before = family_digest(damaged)
    for args in ([damaged, healthy], [healthy, damaged], ["--json", damaged, healthy]):
        done = run_check(*args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr == "" and "Traceback" not in done.stdout, done.stdout + done.stderr
    result = json.loads(done.stdout)
    by_path = {db["path"]: db for db in result["databases"]}
    assert by_path[healthy]["result"] == "ok"
    assert by_path[damaged]["result"] == "damaged"
    failed = {c["name"]: c["detail"] for c in by_path[damaged]["checks"] if c["status"] == "failed"}
    table = case.split(".")[0]
    assert "checksums" in failed, failed
    assert by_path[damaged]["payload_failures"][0]["table"] == table, by_path[damaged]
    assert_unchanged(damaged, before)


def test_damaged_high_water_fails_the_invariant_not_the_command(db_path):
    build(db_path)
    damage(db_path, f"UPDATE high_water SET value = {not_utf8('value')} WHERE name = 'log'")
    report = check.check_database(db_path)
    steps = {step.name: step for step in report.steps}
    assert steps["ids_monotonic"].status == check.FAILED
    assert "not valid UTF-8" in steps["ids_monotonic"].detail, steps["ids_monotonic"].detail
    assert steps["checksums"].status == check.OK  # the other checks ran


def test_a_check_that_cannot_finish_fails_alone(tmp_path, monkeypatch):
    first, second = str(tmp_path / "first.db"), str(tmp_path / "second.db")
    build(first)
    build(second)

    def breaks(report, conn):
        raise RuntimeError("a shape of damage no check foresaw")

    checks = list(check.command._CHECKS)
    checks.insert(1, ("foreign_key_check", breaks))
    # Where check_database reads it (sqlitesaver.check re-exports it, but patching that would
    # change nothing that runs).
    monkeypatch.setattr(check.command, "_CHECKS", tuple(checks))
    out = io.StringIO()
    assert check.run([first, second], out=out) == 1
    text = out.getvalue()
    assert text.count("could not finish (RuntimeError: a shape of damage no check foresaw)") \
        == 2, text
    for report in (check.check_database(first), check.check_database(second)):
        assert [step.name for step in report.steps if step.status == check.FAILED] == \
            ["foreign_key_check"]
        names = [step.name for step in report.steps]
        assert names[-3:] == ["writes_point_at_checkpoints", "ids_monotonic",
                              "parents_exist_unless_pruned"], names  # the later checks ran
        assert report.exit_status == 1
