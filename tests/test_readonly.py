"""``Saver(path, readonly=True)``: everything is readable, every write raises
ReadOnlyDatabaseError, and no byte of the database or its -wal changes.

The permission cases run as 'nobody' when the tests run as root (root ignores permission bits).

SQLite by nature: readonly=True and file permissions (not an option on a server yet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import apsw
import pytest

from conftest import family_digest
from sqlitesaver import (CannotOpenError, InvalidArgumentError, ReadOnlyDatabaseError, Saver,
                         SchemaVersionError, schema)

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env() -> dict[str, str]:
    return dict(os.environ,
                PYTHONPATH=SOURCE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def fill(saver: Saver) -> None:
    a = saver.put("t", {"n": 1}, metadata={"step": 1})
    b = saver.put("t", {"n": 2}, metadata={"step": 2}, parent_id=a.checkpoint_id)
    saver.put_writes("t", b.checkpoint_id, "task", [("ch", 1), ("ch2", (1, 2))])
    saver.put("t", {"sub": True}, namespace="ns")
    saver.put("u", b"other thread")
    saver.append_log("t", {"event": "started"})


def contents(saver: Saver) -> dict:
    """Everything readable through the API, in comparable form."""
    return {
        "threads": saver.threads(),
        "latest": {t: saver.get(t) for t in ("t", "u")},
        "listed": {t: list(saver.list(t)) for t in ("t", "u")},
        "log": {t: list(saver.read_log(t)) for t in ("t", "u")},
    }


# One call per write method, each of which must be refused.
WRITES = {
    "put": lambda s, cid: s.put("t", {"n": 3}),
    "put_writes": lambda s, cid: s.put_writes("t", cid, "task2", [("ch", 2)]),
    "append_log": lambda s, cid: s.append_log("t", "more"),
    "delete_thread": lambda s, cid: s.delete_thread("t"),
    "prune": lambda s, cid: s.prune("t", keep_last=1),
    "transaction": lambda s, cid: s.transaction().__enter__(),
}


def assert_writes_refused(saver: Saver) -> None:
    checkpoint_id = saver.get("t").checkpoint_id
    for name, write in WRITES.items():
        with pytest.raises(ReadOnlyDatabaseError) as info:
            write(saver, checkpoint_id)
        assert repr(saver.path) in str(info.value) and "readonly=True" in str(info.value), name


@pytest.mark.parametrize("integrity_check", ["quick", "full", "off"])
def test_readonly_reads_everything_and_refuses_every_write(db_path, integrity_check):
    with Saver(db_path) as saver:
        fill(saver)
        expected = contents(saver)
    before = family_digest(db_path)

    with Saver(db_path, readonly=True, integrity_check=integrity_check) as reader:
        assert reader.readonly
        assert contents(reader) == expected
        assert_writes_refused(reader)
        assert contents(reader) == expected
        assert reader.settings()["reader"]["query_only"] == 1
        assert reader.recovery.migrations_applied == () and not reader.recovery.created
    assert family_digest(db_path)[""] == before[""]
    assert not family_digest(db_path)["-wal"] or os.path.getsize(db_path + "-wal") == 0
    # The database is still writable by a normal Saver afterwards.
    with Saver(db_path) as saver:
        saver.put("t", {"n": 3})


_WRITE_AND_DIE = textwrap.dedent("""
    import os, sys
    from sqlitesaver import Saver
    saver = Saver(sys.argv[1])
    saver.put("t", {"only": "in the wal"})
    saver.append_log("t", "wal event")
    os._exit(0)  # no close, no checkpoint
""")


def test_readonly_sees_what_only_the_wal_holds_and_leaves_it_there(db_path):
    with Saver(db_path) as saver:
        fill(saver)
    subprocess.run([sys.executable, "-c", _WRITE_AND_DIE, db_path], check=True, env=child_env())
    assert os.path.getsize(db_path + "-wal") > 0
    before = family_digest(db_path)
    with Saver(db_path, readonly=True) as reader:
        assert reader.get("t").state == {"only": "in the wal"}
        assert [e.event for e in reader.read_log("t")][-1] == "wal event"
        assert_writes_refused(reader)
    assert family_digest(db_path) == before, "the read-only Saver changed the database or -wal"


def test_readonly_beside_a_live_writer_sees_each_commit(db_path):
    with Saver(db_path) as writer, Saver(db_path, readonly=True) as reader:
        for n in range(5):
            ref = writer.put("t", {"n": n})
            latest = reader.get("t")
            assert (latest.checkpoint_id, latest.state) == (ref.checkpoint_id, {"n": n})


def test_readonly_never_creates_a_database(tmp_path):
    path = str(tmp_path / "missing.db")
    with pytest.raises(CannotOpenError) as info:
        Saver(path, readonly=True)
    assert repr(path) in str(info.value) and "never creates" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_readonly_cannot_migrate_an_older_schema(db_path):
    conn = apsw.Connection(db_path)  # ours by application_id, but no schema yet (version 0)
    conn.execute(f"PRAGMA application_id={schema.APPLICATION_ID}")
    conn.execute("CREATE TABLE placeholder (x)")
    conn.close()
    before = family_digest(db_path)
    with pytest.raises(SchemaVersionError) as info:
        Saver(db_path, readonly=True)
    assert "without readonly=True" in str(info.value)
    assert family_digest(db_path) == before


def test_readonly_option_must_be_a_bool(db_path):
    with pytest.raises(InvalidArgumentError):
        Saver(db_path, readonly="yes")
    assert not os.path.exists(db_path)


# --- file and directory permissions --------------------------------------------------------------

_UNPRIVILEGED_READ = textwrap.dedent("""
    import json, os, sys
    import sqlitesaver  # before dropping privileges: the interpreter may live under /root
    import sqlitesaver.errors
    if os.geteuid() == 0:
        try:
            os.setgroups([]); os.setgid(65534); os.setuid(65534)
        except OSError as exc:
            print(json.dumps({"cannot_drop": str(exc)})); sys.exit(0)
    result = {"uid": os.geteuid()}
    try:
        sqlitesaver.Saver(sys.argv[1]).close()
        result["default"] = "opened"
    except sqlitesaver.SaverError as exc:
        result["default"] = type(exc).__name__
    with sqlitesaver.Saver(sys.argv[1], readonly=True) as saver:
        latest = saver.get("t")
        result["latest"] = [latest.checkpoint_id, latest.state]
        result["threads"] = saver.threads()
        result["log"] = [e.event for e in saver.read_log("t")]
        try:
            saver.put("t", {"n": 99})
            result["put"] = "written"
        except sqlitesaver.SaverError as exc:
            result["put"] = type(exc).__name__
    print(json.dumps(result))
""")



@pytest.mark.parametrize("case", ["read-only file", "read-only directory",
                                  "read-only directory with a -wal"])
def test_readonly_reads_a_database_it_may_not_write(shared_dir, case):
    directory = os.path.join(shared_dir, "db")
    os.mkdir(directory)
    path = os.path.join(directory, "state.db")
    with Saver(path) as saver:
        fill(saver)
        latest = saver.get("t")
    if case == "read-only directory with a -wal":
        subprocess.run([sys.executable, "-c", _WRITE_AND_DIE, path], check=True,
                       env=child_env())
        with Saver(path, readonly=True) as reader:  # as ourselves, to know what to expect
            latest = reader.get("t")
    for name in os.listdir(directory):
        os.chmod(os.path.join(directory, name), 0o444)  # nobody may read, not write
    os.chmod(directory, 0o755 if case == "read-only file" else 0o555)
    files = sorted(os.listdir(directory))
    before = family_digest(path)

    done = subprocess.run([sys.executable, "-c", _UNPRIVILEGED_READ, path], capture_output=True,
                          text=True, env=child_env(), cwd="/")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    if "cannot_drop" in result:
        pytest.skip(f"cannot drop root privileges: {result['cannot_drop']}")

    assert result["default"] == "ReadOnlyDatabaseError"
    assert result["latest"] == [latest.checkpoint_id, latest.state]
    assert result["threads"] == ["t", "u"]
    assert result["log"][0] == {"event": "started"}
    assert result["put"] == "ReadOnlyDatabaseError"
    assert family_digest(path) == before
    if case != "read-only file":
        assert sorted(os.listdir(directory)) == files
