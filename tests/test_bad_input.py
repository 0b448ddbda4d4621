"""Bad input gets a clear, specific error and changes nothing.

Every test checks three things: the exact exception class, a message that names the file (when
a file is involved) and says what to do, and the bytes of the database and its -wal / -journal
identical before and after (hashed only while no connection to the file is open in this
process: closing a plain open() of the file would drop SQLite's POSIX locks). Where it is
cheap, a second attempt must give the same error, showing nothing was "repaired" in between.

Bad arguments, unserializable values, missing checkpoints, a closed Saver and one used after
fork run on both engines (on a server the digest of our tables' rows stands for the bytes);
the file cases (not a database, truncated, damaged pages, foreign or newer, read-only, paths,
SQLite options) are SQLite's by nature (tests/test_postgres_connect.py has a server's).

Never import the stdlib ``sqlite3`` here: other databases are made with APSW.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import apsw
import pytest

import sqlitesaver
from conftest import family_digest, file_digest, is_server, store_digest
from sqlitesaver import (CannotOpenError, CheckpointNotFoundError, ChecksumError,
                         CorruptDatabaseError, ForkedProcessError, InvalidArgumentError,
                         NotASaverDatabaseError, ReadOnlyDatabaseError, Saver,
                         SaverClosedError, SchemaVersionError, SerializationError, check,
                         schema)

#: Where this process imported sqlitesaver from: child processes must test the same code.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sqlitesaver.__file__)))
MARKER = b"MARKER" * 100


# --- small helpers ------------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    return dict(os.environ,
                PYTHONPATH=SOURCE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def refused(path: str, exc_class: type, **options: object) -> str:
    """Open ``path`` twice; both attempts must raise exactly ``exc_class`` with the same
    message, naming the path. Returns the message."""
    messages = []
    for _ in range(2):
        with pytest.raises(exc_class) as info:
            Saver(path, **options).close()
        assert type(info.value) is exc_class, f"{type(info.value).__name__}: {info.value}"
        assert info.value.path == path
        assert repr(path) in str(info.value), str(info.value)
        messages.append(str(info.value))
    assert messages[0] == messages[1], "the second attempt saw a different file"
    return messages[0]


def small_db(path: str) -> dict[str, str]:
    """A closed database with a little of everything: two threads, a namespace, pending
    writes, log events. Returns checkpoint ids by name."""
    with Saver(path) as saver:
        a = saver.put("t", {"n": 1}, metadata={"step": 1})
        b = saver.put("t", {"n": 2}, metadata={"step": 2}, parent_id=a.checkpoint_id)
        saver.put_writes("t", b.checkpoint_id, "task", [("ch", 1), ("ch2", [1, 2])])
        ns = saver.put("t", {"sub": True}, namespace="ns")
        u = saver.put("u", "other thread")
        saver.append_log("t", {"event": "started"})
    if not path.startswith("postgresql://"):
        assert not os.path.exists(path + "-wal"), "close() should have checkpointed the WAL"
    return {"a": a.checkpoint_id, "b": b.checkpoint_id, "ns": ns.checkpoint_id,
            "u": u.checkpoint_id}


def snapshot(saver: Saver) -> dict:
    """Everything the database holds, through the public API."""
    return {thread: (list(saver.list(thread)), list(saver.read_log(thread)))
            for thread in saver.threads()}


def big_db(path: str, seed: int, count: int = 200) -> dict[str, dict]:
    """A closed database spanning many pages: ``count`` checkpoints of ~3 KiB of seeded
    random bytes. Returns the stored states by checkpoint id."""
    rng = random.Random(seed)
    states = {}
    with Saver(path) as saver:
        with saver.transaction():
            for i in range(count):
                state = {"i": i, "blob": rng.randbytes(3000)}
                states[saver.put("t", state).checkpoint_id] = state
    assert not os.path.exists(path + "-wal"), "close() should have checkpointed the WAL"
    return states


def page_geometry(path: str) -> tuple[int, int]:
    """(page size, page count) from the header of a closed database."""
    with open(path, "rb") as f:
        header = f.read(100)
    size = int.from_bytes(header[16:18], "big")
    size = 65536 if size == 1 else size
    count = int.from_bytes(header[28:32], "big")
    assert count == os.path.getsize(path) // size
    return size, count


def foreign_db(path: str, application_id: int, wal: bool) -> None:
    conn = apsw.Connection(path)
    if wal:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    if application_id:
        conn.execute(f"PRAGMA application_id={application_id}")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i}",) for i in range(50)])
    conn.close()


def run_child(code: str, *args: str) -> None:
    subprocess.run([sys.executable, "-c", code, *args], check=True, env=child_env())


# --- files that are not a sqlitesaver database at all -------------------------------------------

@pytest.mark.parametrize("kind", ["text", "random", "empty"])
def test_not_sqlite_file_is_refused(db_path, kind):
    seed = 1234
    content = {"text": b"this is a text file\n" * 200,
               "random": random.Random(seed).randbytes(8192),
               "empty": b""}[kind]
    with open(db_path, "wb") as f:
        f.write(content)
    before = family_digest(db_path)
    message = refused(db_path, NotASaverDatabaseError)
    if kind == "empty":
        assert "empty file" in message and "delete it" in message
        assert "path that does not exist" in message
    else:
        assert "not an SQLite database" in message, f"seed={seed}: {message}"
    assert family_digest(db_path) == before
    assert sorted(os.listdir(os.path.dirname(db_path))) == ["state.db"]


@pytest.mark.parametrize("keep, exc_class, phrase", [
    ("50 bytes", NotASaverDatabaseError, "truncated SQLite file"),
    ("half", CorruptDatabaseError, "restore from a backup"),
])
def test_truncated_database_is_refused(db_path, keep, exc_class, phrase):
    big_db(db_path, seed=11)
    size = os.path.getsize(db_path)
    page_size, _ = page_geometry(db_path)
    assert size >= 100 * page_size
    new_size = 50 if keep == "50 bytes" else (size // 2) // page_size * page_size
    os.truncate(db_path, new_size)
    before = family_digest(db_path)
    message = refused(db_path, exc_class)
    assert phrase in message
    assert family_digest(db_path) == before
    assert os.path.getsize(db_path) == new_size
    assert sorted(os.listdir(os.path.dirname(db_path))) == ["state.db"]


# --- structural damage and changed payloads ----------------------------------------------------

def damage_middle_page(path: str, seed: int) -> int:
    """Overwrite one whole page of the checkpoints table, in the middle of the file, with
    seeded garbage. Returns the page number."""
    page_size, page_count = page_geometry(path)
    page = page_count // 2
    assert 2 < page < page_count
    conn = apsw.Connection(path)  # read-write: a read-only one leaves an empty -wal behind
    try:
        owner = conn.execute("SELECT name FROM dbstat WHERE pageno = ?", (page,)).fetchone()
    finally:
        conn.close()
    assert owner == ("checkpoints",), f"page {page} belongs to {owner}"
    assert not os.path.exists(path + "-wal")
    garbage = random.Random(seed).randbytes(page_size)
    with open(path, "r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(garbage)
    return page


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_damaged_page_fails_the_startup_integrity_check(db_path, mode):
    seed = 21
    big_db(db_path, seed=seed)
    page = damage_middle_page(db_path, seed)
    before = family_digest(db_path)
    message = refused(db_path, CorruptDatabaseError, integrity_check=mode)
    assert "damaged" in message or "failed PRAGMA" in message, message
    assert "backup" in message, f"seed={seed} page={page}: {message}"
    assert family_digest(db_path) == before
    assert sorted(os.listdir(os.path.dirname(db_path))) == ["state.db"]


def test_damaged_page_with_integrity_check_off_never_returns_wrong_data(db_path):
    seed = 22
    states = big_db(db_path, seed=seed)
    page = damage_middle_page(db_path, seed)
    before = family_digest(db_path)
    context = f"seed={seed} page={page}"
    with Saver(db_path, integrity_check="off") as saver:
        assert saver.recovery.integrity_check == "off"
        with pytest.raises(CorruptDatabaseError) as info:
            list(saver.list("t"))
        assert db_path in str(info.value) and "backup" in str(info.value), context
        failed = 0
        for checkpoint_id, state in states.items():
            try:
                found = saver.get("t", checkpoint_id)
            except CorruptDatabaseError as exc:  # ChecksumError included
                assert db_path in str(exc)
                failed += 1
            else:
                assert found is not None and found.state == state, f"{context} {checkpoint_id}"
        assert 0 < failed < len(states), context
    assert family_digest(db_path) == before, context
    # the error's advice: a full integrity check on open lists the damage, and writes nothing
    if "integrity_check='full'" in str(info.value):
        with pytest.raises(CorruptDatabaseError, match="failed PRAGMA integrity_check"):
            Saver(db_path, integrity_check="full")
        assert family_digest(db_path) == before, context
    else:
        assert isinstance(info.value, ChecksumError), f"{context}: {info.value}"


@pytest.mark.parametrize("where", ["state", "pending write", "log event"])
def test_flipped_byte_in_a_payload_raises_checksum_error(db_path, where):
    seed = 31
    with Saver(db_path) as saver:
        parent = saver.put("t", {"n": 1})
        ref = saver.put("t", {"m": MARKER if where == "state" else b"plain"},
                        parent_id=parent.checkpoint_id)
        saver.put_writes("t", ref.checkpoint_id, "task",
                         [("ch", MARKER if where == "pending write" else 0)])
        saver.append_log("t", {"e": MARKER if where == "log event" else 0})
    with open(db_path, "rb") as f:
        data = f.read()
    assert data.count(MARKER) == 1
    rng = random.Random(seed)
    offset = data.index(MARKER) + rng.randrange(len(MARKER))
    with open(db_path, "r+b") as f:
        f.seek(offset)
        f.write(bytes([data[offset] ^ rng.randrange(1, 256)]))
    before = family_digest(db_path)
    context = f"seed={seed} offset={offset}"

    with Saver(db_path) as saver:  # SQLite's checks cannot see it: open succeeds
        assert saver.recovery.integrity_check == "quick"
        reads = [lambda: saver.get("t"), lambda: saver.get("t", ref.checkpoint_id),
                 lambda: list(saver.list("t")), lambda: list(saver.list("t", limit=1))]
        if where == "log event":
            reads = [lambda: list(saver.read_log("t"))]
            assert saver.get("t").state == {"m": b"plain"}  # the damage is only in the log
        for read in reads:
            for _ in range(2):
                with pytest.raises(ChecksumError) as info:
                    read()
                assert db_path in str(info.value), context
                assert "checksum" in str(info.value) and "backup" in str(info.value)
        # the undamaged older checkpoint is still readable, with its exact data
        assert saver.get("t", parent.checkpoint_id).state == {"n": 1}
    assert family_digest(db_path) == before, context


# --- SQLite databases that are not ours ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["application_id 0", "other application_id", "wal",
                                  "wal left by a crashed writer"])
def test_another_applications_database_is_refused(db_path, kind):
    if kind == "wal left by a crashed writer":
        run_child(textwrap.dedent("""
            import os, sys, apsw
            conn = apsw.Connection(sys.argv[1])
            assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            conn.execute("INSERT INTO notes (body) VALUES ('kept only in the WAL')")
            os._exit(0)  # no close, no checkpoint: the -wal holds the data
        """), db_path)
        assert os.path.getsize(db_path + "-wal") > 0
    else:
        foreign_db(db_path, 0x12345678 if kind == "other application_id" else 0,
                   wal=kind == "wal")
    files = sorted(os.listdir(os.path.dirname(db_path)))
    before = family_digest(db_path)
    shm_before = file_digest(db_path + "-shm")
    message = refused(db_path, NotASaverDatabaseError)
    assert "application_id" in message and "another application" in message
    assert "separate file" in message
    assert family_digest(db_path) == before
    assert file_digest(db_path + "-shm") == shm_before
    assert sorted(os.listdir(os.path.dirname(db_path))) == files  # no -wal/-shm created


# --- a newer schema -----------------------------------------------------------------------------

def test_newer_schema_version_is_refused(db_path):
    small_db(db_path)
    conn = apsw.Connection(db_path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    assert not os.path.exists(db_path + "-wal")
    before = family_digest(db_path)
    message = refused(db_path, SchemaVersionError)
    assert "schema version 99" in message and "Upgrade sqlitesaver" in message
    assert family_digest(db_path) == before
    assert sorted(os.listdir(os.path.dirname(db_path))) == ["state.db"]


_SET_VERSION_IN_WAL_ONLY = textwrap.dedent("""
    import os, sys, apsw
    conn = apsw.Connection(sys.argv[1])
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA user_version=99")
    os._exit(0)  # no close, so no checkpoint: only the -wal knows about version 99
""")


def newer_version_in_wal_only(path: str) -> None:
    small_db(path)
    run_child(_SET_VERSION_IN_WAL_ONLY, path)
    with open(path, "rb") as f:
        assert int.from_bytes(f.read(100)[60:64], "big") == schema.latest_version()
    assert os.path.getsize(path + "-wal") > 0


def test_newer_schema_version_only_in_the_wal_is_refused(db_path):
    newer_version_in_wal_only(db_path)
    message = refused(db_path, SchemaVersionError)
    assert "schema version 99" in message and "Upgrade sqlitesaver" in message


def test_newer_schema_version_only_in_the_wal_leaves_bytes_unchanged(db_path):
    newer_version_in_wal_only(db_path)
    before = family_digest(db_path)
    with pytest.raises(SchemaVersionError):
        Saver(db_path)
    assert family_digest(db_path) == before


# --- permissions (run as an unprivileged user: root ignores permission bits) --------------------

_UNPRIVILEGED_OPEN = textwrap.dedent("""
    import json, os, sys
    import sqlitesaver  # imported before dropping privileges: the interpreter may live where
                        # 'nobody' cannot read (e.g. under /root)
    if os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        except OSError as exc:
            print(json.dumps({"cannot_drop": str(exc)}))
            sys.exit(0)
    assert os.geteuid() != 0 and os.getuid() != 0
    results = []
    for _ in range(2):
        try:
            sqlitesaver.Saver(sys.argv[1]).close()
            results.append(["opened", ""])
        except Exception as exc:
            results.append([type(exc).__name__, str(exc)])
    print(json.dumps({"uid": os.geteuid(), "results": results}))
""")


def open_unprivileged(path: str) -> tuple[str, str]:
    """Open ``path`` in a child process running as 'nobody' (when we are root) or as us;
    return the exception class name and message of both attempts (which must agree)."""
    try:
        done = subprocess.run([sys.executable, "-c", _UNPRIVILEGED_OPEN, path],
                              capture_output=True, text=True, env=child_env(), cwd="/",
                              check=True)
    except PermissionError as exc:
        pytest.skip(f"cannot start an unprivileged child process: {exc}")
    report = json.loads(done.stdout)
    if "cannot_drop" in report:
        pytest.skip(f"cannot drop root privileges to uid 65534: {report['cannot_drop']}")
    assert report["uid"] != 0
    first, second = report["results"]
    assert first == second, "the second attempt gave a different result"
    return first[0], first[1]



def _give_to_nobody(path: str) -> None:
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)


@pytest.mark.parametrize("case", ["read-only file", "read-only directory",
                                  "new file in read-only directory"])
def test_read_only_database_is_refused(shared_dir, case):
    directory = os.path.join(shared_dir, "db")
    os.mkdir(directory)
    path = os.path.join(directory, "state.db")
    if case != "new file in read-only directory":
        small_db(path)
        _give_to_nobody(path)
    if case == "read-only file":
        _give_to_nobody(directory)   # the directory is writable: only the file is not
        os.chmod(path, 0o444)
    else:
        os.chmod(directory, 0o555)
    files = sorted(os.listdir(directory))
    before = family_digest(path)

    name, message = open_unprivileged(path)

    assert name == ReadOnlyDatabaseError.__name__, f"{name}: {message}"
    assert repr(path) in message
    phrase = {"read-only file": "Make it writable",
              "read-only directory": "Make the directory writable",
              "new file in read-only directory": "not writable"}[case]
    assert phrase in message, message
    assert family_digest(path) == before
    assert sorted(os.listdir(directory)) == files  # nothing created, not even a temporary


# --- paths that cannot be a database file -------------------------------------------------------

def test_missing_directory_is_not_created(tmp_path):
    missing = tmp_path / "missing"
    path = str(missing / "sub" / "state.db")
    message = refused(path, CannotOpenError)
    assert repr(str(missing / "sub")) in message
    assert "does not create directories" in message
    assert not missing.exists()
    assert os.listdir(tmp_path) == []


def test_directory_instead_of_a_file_is_refused(tmp_path):
    path = tmp_path / "state.db"
    path.mkdir()
    message = refused(str(path), CannotOpenError)
    assert "is a directory" in message
    assert os.listdir(path) == [] and os.listdir(tmp_path) == ["state.db"]


# --- bad arguments on a valid database ----------------------------------------------------------

BAD_CALLS = {
    "thread id int": (lambda s, ids: s.put(1, {}), "thread_id must be a str"),
    "thread id None": (lambda s, ids: s.get(None), "thread_id must be a str"),
    "thread id bytes": (lambda s, ids: s.append_log(b"t", 1), "thread_id must be a str"),
    "thread id empty": (lambda s, ids: s.put("", {}), "thread_id must not be empty"),
    "list thread id int": (lambda s, ids: s.list(7), "thread_id must be a str"),
    "metadata list": (lambda s, ids: s.put("t", {}, metadata=[("k", 1)]),
                      "metadata must be a dict"),
    "metadata str": (lambda s, ids: s.put("t", {}, metadata="k=1"), "metadata must be a dict"),
    "list metadata filter": (lambda s, ids: s.list("t", metadata=["k"]),
                             "metadata must be a dict"),
    "prune keep_last -1": (lambda s, ids: s.prune("t", keep_last=-1), "keep_last must be"),
    "prune keep_last True": (lambda s, ids: s.prune("t", keep_last=True), "keep_last must be"),
    "prune keep_last 1.0": (lambda s, ids: s.prune("t", keep_last=1.0), "keep_last must be"),
    "list limit -1": (lambda s, ids: s.list("t", limit=-1), "limit must be"),
    "list limit True": (lambda s, ids: s.list("t", limit=True), "limit must be"),
    "writes str": (lambda s, ids: s.put_writes("t", ids["b"], "task", "ab"),
                   "writes must be a list of (channel, value) pairs"),
    "writes int": (lambda s, ids: s.put_writes("t", ids["b"], "task", 5),
                   "writes must be a list of (channel, value) pairs"),
    "writes dict": (lambda s, ids: s.put_writes("t", ids["b"], "task", {"ch": 1}),
                    "writes must be a list of (channel, value) pairs"),
    "writes single": (lambda s, ids: s.put_writes("t", ids["b"], "task", [("ch", 1), ("ch",)]),
                      "writes[1] must be a (channel, value) pair"),
    "writes triple": (lambda s, ids: s.put_writes("t", ids["b"], "task", [("ch", 1, 2)]),
                      "writes[0] must be a (channel, value) pair"),
    "writes channel int": (lambda s, ids: s.put_writes("t", ids["b"], "task", [(3, 1)]),
                           "writes[0] channel must be a str"),
    "get checkpoint id int": (lambda s, ids: s.get("t", 5), "checkpoint_id must be a str"),
    "read_log after str": (lambda s, ids: s.read_log("t", after="1"), "after must be"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_argument_is_refused_and_changes_nothing(any_empty_target, case):
    call, phrase = BAD_CALLS[case]
    message = call_refused_twice(any_empty_target, call, InvalidArgumentError, ValueError)
    assert phrase in message, message


def call_refused_twice(db_path: str, call, error: type, builtin: type) -> str:
    """Make ``call`` on a small database twice: both raise ``error`` (also a ``builtin``)
    with the same message, and neither the content nor what is stored changes. ``db_path``
    may be a PostgreSQL URL (``any_empty_target``)."""
    ids = small_db(db_path)
    before = store_digest(db_path)
    with Saver(db_path) as saver:
        content = snapshot(saver)
        messages = []
        for _ in range(2):
            with pytest.raises(error) as info:
                call(saver, ids)
            assert isinstance(info.value, builtin)
            messages.append(str(info.value))
        assert messages[0] == messages[1]
        assert snapshot(saver) == content
    assert store_digest(db_path) == before
    return messages[0]


BAD_OPTIONS = {
    "durability fast": ({"durability": "fast"}, "durability must be one of"),
    "integrity_check maybe": ({"integrity_check": "maybe"}, "integrity_check must be one of"),
    "busy_timeout -1": ({"busy_timeout": -1}, "busy_timeout must be a number"),
    "busy_timeout str": ({"busy_timeout": "30"}, "busy_timeout must be a number"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option_is_refused_before_touching_the_file(db_path, case):
    options, phrase = BAD_OPTIONS[case]
    small_db(db_path)
    before = family_digest(db_path)
    for _ in range(2):
        with pytest.raises(InvalidArgumentError, match=phrase):
            Saver(db_path, **options)
    assert family_digest(db_path) == before
    assert sorted(os.listdir(os.path.dirname(db_path))) == ["state.db"]


@pytest.mark.parametrize("path", [":memory:", "file:x.db?mode=memory", "file:state.db", ""])
def test_memory_and_uri_paths_are_refused(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        with pytest.raises(InvalidArgumentError) as info:
            Saver(path)
        assert isinstance(info.value, ValueError)
        assert "must name a file on a local filesystem" in str(info.value)
        assert repr(path) in str(info.value)
    assert os.listdir(tmp_path) == []


# --- values that cannot be stored ---------------------------------------------------------------

UNSERIALIZABLE = {
    "state": (lambda s, ids: s.put("t", {"a": [1, object()]}), "state['a'][1]"),
    "metadata": (lambda s, ids: s.put("t", {"ok": 1}, metadata={"k": {"deep": object()}}),
                 "metadata['k']['deep']"),
    "pending write": (lambda s, ids: s.put_writes("t", ids["b"], "task2",
                                                  [("ch", 1), ("ch", object())]),
                      "writes[1] value"),
    "log event": (lambda s, ids: s.append_log("t", {"e": (1, 2, object())}), "event['e'][2]"),
}


@pytest.mark.parametrize("case", list(UNSERIALIZABLE))
def test_unserializable_value_is_refused_and_changes_nothing(any_empty_target, case):
    call, where = UNSERIALIZABLE[case]
    message = call_refused_twice(any_empty_target, call, SerializationError, TypeError)
    assert f"cannot serialize {where}: object is not supported" in message, message


MISSING_CHECKPOINT = {
    "put_writes unknown id": lambda s, ids: s.put_writes("t", "ffffffffffffffff", "task",
                                                         [("ch", 1)]),
    "put_writes other thread": lambda s, ids: s.put_writes("u", ids["b"], "task", [("ch", 1)]),
    "put_writes other namespace": lambda s, ids: s.put_writes("t", ids["ns"], "task",
                                                              [("ch", 1)]),
    "put parent unknown": lambda s, ids: s.put("t", {"n": 3}, parent_id="nope"),
    "put parent of other thread": lambda s, ids: s.put("u", 1, parent_id=ids["a"]),
    # a caller-supplied id: the parent is looked up with the id (one statement on SQLite)
    "keyed put parent unknown": lambda s, ids: s.put("t", 3, checkpoint_id="k",
                                                     parent_id="nope"),
    "keyed put generated parent unknown": lambda s, ids: s.put(
        "t", 3, checkpoint_id="k", parent_id="ffffffffffffffff"),
    "keyed put parent of other thread": lambda s, ids: s.put("u", 1, checkpoint_id="k",
                                                             parent_id=ids["a"]),
    "keyed put parent of other namespace": lambda s, ids: s.put(
        "t", 1, namespace="ns", checkpoint_id="k", parent_id=ids["a"]),
}


@pytest.mark.parametrize("case", list(MISSING_CHECKPOINT))
def test_missing_checkpoint_is_refused_and_changes_nothing(any_empty_target, case):
    # The second attempt would fail differently had the first left its transaction open.
    message = call_refused_twice(any_empty_target, MISSING_CHECKPOINT[case],
                                 CheckpointNotFoundError, LookupError)
    with Saver(any_empty_target) as saver:
        named = saver.path  # the file, or the server without its password
    assert named in message and "nothing was written" in message, message


# --- a Saver that cannot be used any more -------------------------------------------------------

USES = {
    "get": lambda s: s.get("t"),
    "list": lambda s: list(s.list("t")),
    "read_log": lambda s: list(s.read_log("t")),
    "threads": lambda s: s.threads(),
    "put": lambda s: s.put("t", {"n": 9}),
    "put_writes": lambda s: s.put_writes("t", "0000000000000001", "task", [("ch", 1)]),
    "append_log": lambda s: s.append_log("t", 1),
    "prune": lambda s: s.prune("t", keep_last=0),
    "delete_thread": lambda s: s.delete_thread("t"),
    "transaction": lambda s: s.transaction().__enter__(),
}


def test_closed_saver_raises_saver_closed_error(any_empty_target):
    db_path = any_empty_target
    small_db(db_path)
    before = store_digest(db_path)
    saver = Saver(db_path)
    named = saver.path if is_server(db_path) else repr(db_path)  # a server: no password
    saver.close()
    saver.close()  # idempotent
    for name, use in USES.items():
        for _ in range(2):
            with pytest.raises(SaverClosedError) as info:
                use(saver)
            assert type(info.value) is SaverClosedError, name
            assert named in str(info.value) and "Open a new Saver" in str(info.value)
    assert store_digest(db_path) == before


def test_saver_used_in_forked_child_raises_forked_process_error(any_empty_target, open_saver):
    db_path = any_empty_target
    ids = small_db(db_path)
    saver = open_saver(db_path)
    named = saver.path if is_server(db_path) else repr(db_path)
    latest = saver.get("t")  # a pooled reader exists too
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_end)
            outcome = {}
            for name, use in USES.items():
                try:
                    use(saver)
                    outcome[name] = ["no error", ""]
                except BaseException as exc:
                    outcome[name] = [type(exc).__name__, str(exc)]
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = json.loads(pipe.read())
    assert os.waitpid(pid, 0)[1] == 0
    for name, (exc_name, message) in outcome.items():
        assert exc_name == ForkedProcessError.__name__, f"{name}: {exc_name}: {message}"
        assert named in message and "Open a new Saver in this process" in message

    # the parent's Saver is untouched and still works
    assert saver.get("t") == latest
    ref = saver.put("t", {"after fork": True}, parent_id=ids["b"])
    saver.put_writes("t", ref.checkpoint_id, "task", [("ch", 1)])
    assert saver.get("t").state == {"after fork": True}
    saver.close()
    if is_server(db_path):  # the child sent nothing on the parent's connections
        report = check.check_database(db_path)
        assert report.ok, check.format_report(report)
        return
    conn = apsw.Connection(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
