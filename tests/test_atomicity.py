"""All or nothing: transactions, migrations, and a writer killed with SIGKILL (transactions
and the killed writer on both engines: ``any_target``)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap

import apsw
import pytest

from sqlitesaver import BusyTimeoutError, CannotOpenError, MigrationError, Saver, schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Boom(Exception):
    pass


def test_exception_inside_transaction_leaves_nothing(any_target, open_saver):
    saver = open_saver(any_target)
    before = saver.put("t", {"n": 0})
    with pytest.raises(Boom):
        with saver.transaction():
            ref = saver.put("t", {"n": 1}, parent_id=before.checkpoint_id)
            saver.put_writes("t", ref.checkpoint_id, "task", [("ch", 1)])
            saver.append_log("t", "event")
            saver.put("other", 1)
            raise Boom()
    assert saver.get("t").checkpoint_id == before.checkpoint_id
    assert [c.checkpoint_id for c in saver.list("t")] == [before.checkpoint_id]
    assert list(saver.read_log("t")) == []
    assert saver.threads() == ["t"]
    # and the write connection is usable again, not stuck inside a transaction
    assert saver.put("t", {"n": 2}).checkpoint_id > before.checkpoint_id


def test_inner_failure_undoes_only_the_inner_block(any_target, open_saver):
    saver = open_saver(any_target)
    with saver.transaction():
        saver.put("t", "outer-1")
        with pytest.raises(Boom):
            with saver.transaction():
                saver.put("t", "inner")
                raise Boom()
        saver.put("t", "outer-2")
    assert [c.state for c in saver.list("t")] == ["outer-2", "outer-1"]


def test_failed_internal_write_inside_transaction_rolls_back_that_call_only(any_target,
                                                                            open_saver):
    saver = open_saver(any_target)
    with saver.transaction():
        ref = saver.put("t", 1)
        with pytest.raises(Exception):
            saver.put_writes("t", "no-such-checkpoint", "task", [("c", 1)])
        saver.put_writes("t", ref.checkpoint_id, "task", [("c", 2)])
    got = saver.get("t")
    assert [(w.channel, w.value) for w in got.pending_writes] == [("c", 2)]


def _tables(path: str) -> dict[str, str]:
    conn = apsw.Connection(path)
    try:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master ORDER BY name"))
    finally:
        conn.close()


def test_migration_failing_half_way_leaves_old_schema(db_path, monkeypatch):
    with Saver(db_path) as saver:
        ref = saver.put("t", {"kept": True})
    old_tables = _tables(db_path)
    broken = schema.Migration(schema.latest_version() + 1, (
        "CREATE TABLE added_by_v2 (x)",          # succeeds ...
        "ALTER TABLE checkpoints ADD COLUMN y",   # ... succeeds ...
        "THIS IS NOT SQL",                        # ... and then the migration fails
    ))
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + (broken,))
    with pytest.raises(MigrationError) as info:
        Saver(db_path)
    assert db_path in str(info.value) and "rolled back" in str(info.value)
    monkeypatch.undo()
    assert _tables(db_path) == old_tables
    with Saver(db_path) as saver:
        assert saver.recovery.schema_version_found == schema.latest_version()
        assert saver.get("t").checkpoint_id == ref.checkpoint_id
        assert saver.get("t").state == {"kept": True}


def test_migration_applies_once_and_is_recorded(db_path, monkeypatch):
    with Saver(db_path) as saver:
        saver.put("t", 1)
    extra = schema.Migration(schema.latest_version() + 1,
                             ("CREATE TABLE added_by_test (x)",))
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + (extra,))
    with Saver(db_path) as saver:
        assert saver.recovery.migrations_applied == (extra.version,)
        assert saver.recovery.schema_version == extra.version
    with Saver(db_path) as saver:
        assert saver.recovery.migrations_applied == ()
    assert "added_by_test" in _tables(db_path)


# --- SIGKILL in a write loop --------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import hashlib, sys
    from sqlitesaver import Saver
    path, thread = sys.argv[1], sys.argv[2]
    with Saver(path) as saver:
        n = 0
        while True:
            n += 1
            state = {"n": n, "pad": "x" * (n % 5000)}
            with saver.transaction():
                ref = saver.put(thread, state)
                saver.put_writes(thread, ref.checkpoint_id, "task", [("n", n), ("pad", n)])
                saver.append_log(thread, n)
            # acknowledged only after COMMIT returned
            print(ref.checkpoint_id, n, flush=True)
""")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_in_write_loop_keeps_last_acknowledged(any_target, seed):
    db_path = any_target  # a file, or a PostgreSQL database: a client killed mid-transaction
    rng = random.Random(seed)
    kill_after = rng.randrange(1, 300)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", _WRITER, db_path, "t"],
                             stdout=subprocess.PIPE, text=True, env=env)
    acked = []
    try:
        for line in child.stdout:
            acked.append(line.split())
            if len(acked) >= kill_after:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, f"seed={seed}"
    assert len(acked) == kill_after, f"seed={seed}: writer stopped early"
    last_id, last_n = acked[-1][0], int(acked[-1][1])
    options = {} if db_path.startswith("postgresql://") else {"integrity_check": "full"}
    with Saver(db_path, **options) as saver:
        latest = saver.get("t")
        assert latest is not None, f"seed={seed}"
        # the last acknowledged checkpoint is there; at most the one in flight is newer
        assert latest.checkpoint_id >= last_id, f"seed={seed}"
        got = saver.get("t", last_id)
        assert got is not None and got.state["n"] == last_n, f"seed={seed}"
        # each transition is whole: checkpoint, both writes and the log event, or none of it
        for checkpoint in saver.list("t"):
            n = checkpoint.state["n"]
            assert [(w.channel, w.value) for w in checkpoint.pending_writes] == \
                [("n", n), ("pad", n)], f"seed={seed}"
        events = [e.event for e in saver.read_log("t")]
        assert events == list(range(1, len(events) + 1)), f"seed={seed}"
        assert len(events) == latest.state["n"], f"seed={seed}"


def test_recovery_checkpoints_the_wal_left_by_a_killed_writer(db_path):
    code = textwrap.dedent("""
        import os, sys
        from sqlitesaver import Saver
        saver = Saver(sys.argv[1])
        for n in range(50):
            saver.put("t", n)
        os._exit(0)   # no close(): the WAL keeps its frames
    """)
    env = dict(os.environ, PYTHONPATH=REPO)
    subprocess.run([sys.executable, "-c", code, db_path], check=True, env=env)
    assert os.path.getsize(db_path + "-wal") > 0
    with Saver(db_path) as saver:
        report = saver.recovery
        assert report.checkpoint_busy is False
        assert report.wal_frames > 0 and report.wal_frames_checkpointed == report.wal_frames
        assert [c.state for c in saver.list("t", limit=3)] == [49, 48, 47]
        # TRUNCATE: the WAL was emptied by the recovery checkpoint
        assert os.path.getsize(db_path + "-wal") == 0


def test_checkpoint_blocked_by_a_reader_in_another_process_is_reported(db_path):
    with Saver(db_path) as saver:
        saver.put("t", 1)
    # A reader in another process holds a snapshot while a third writer adds WAL frames.
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, apsw
            conn = apsw.Connection(sys.argv[1])
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM checkpoints").fetchone()
            print("reading", flush=True)
            sys.stdin.readline()      # hold the snapshot until told to stop
        """), db_path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert reader.stdout.readline().strip() == "reading"
        with Saver(db_path) as saver:
            saver.put("t", 2)
        with Saver(db_path) as saver:
            assert saver.recovery.checkpoint_busy is True
            assert saver.get("t").state == 2
    finally:
        reader.stdin.close()
        reader.wait()
        reader.stdout.close()


def test_creation_is_atomic_and_cleans_up_after_a_killed_creator(tmp_path):
    path = str(tmp_path / "new.db")
    # Simulate a creator killed half-way: its temporary file exists, its process is gone.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".new.db.sqlitesaver-new-{dead.pid}-deadbeef"
    leftover.write_bytes(b"half-written")
    with Saver(path) as saver:
        assert saver.recovery.created is True
        assert saver.recovery.stale_files_removed == (str(leftover),)
    assert sorted(os.listdir(tmp_path)) == ["new.db"]
    with open(path, "rb") as f:
        header = f.read(100)
    assert header.startswith(b"SQLite format 3\x00")
    assert int.from_bytes(header[68:72], "big") == schema.APPLICATION_ID
    assert header[18:20] == b"\x02\x02", "created in WAL mode"


def test_two_processes_creating_the_same_database_share_one(tmp_path):
    path = str(tmp_path / "race.db")
    code = textwrap.dedent("""
        import sys
        from sqlitesaver import Saver
        with Saver(sys.argv[1]) as s:
            print(s.put(sys.argv[2], 1).checkpoint_id, flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", code, path, f"t{i}"],
                              stdout=subprocess.PIPE, text=True, env=env) for i in range(4)]
    ids = []
    for proc in procs:
        out, _ = proc.communicate()
        assert proc.returncode == 0
        ids.append(out.strip())
    assert len(set(ids)) == 4
    with Saver(path) as saver:
        assert saver.threads() == ["t0", "t1", "t2", "t3"]


def test_digest_helper_sees_changes(tmp_path):
    # the bad-input tests rely on the hash helper; make sure it is not vacuous
    from conftest import family_digest
    path = tmp_path / "f"
    path.write_bytes(b"a")
    first = family_digest(path)
    path.write_bytes(b"b")
    assert family_digest(path) != first
    assert first[""] == hashlib.sha256(b"a").hexdigest()


def test_transaction_as_gives_the_saver_and_relative_paths_survive_chdir(tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Saver("rel.db") as saver:
        assert saver.path == str(tmp_path / "rel.db")
        with saver.transaction() as inside:
            assert inside is saver
            inside.put("t", 1)
        monkeypatch.chdir("/")
        assert saver.get("t").state == 1  # a new read connection, opened after chdir
        assert not os.path.exists("/rel.db")


def test_lock_held_by_another_process_gives_busy_timeout_and_writes_nothing(db_path):
    with Saver(db_path) as saver:
        saver.put("t", "before")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, apsw
            conn = apsw.Connection(sys.argv[1])
            conn.execute("BEGIN IMMEDIATE")      # hold the write lock
            print("locked", flush=True)
            sys.stdin.readline()
            conn.execute("ROLLBACK")
        """), db_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # opening needs no write lock: the recovery checkpoint reports busy instead of waiting
        with Saver(db_path, busy_timeout=0.2) as saver:
            assert saver.recovery.checkpoint_busy is True
            with pytest.raises(BusyTimeoutError) as info:
                saver.put("t", "blocked")
            assert db_path in str(info.value) and "nothing was written" in str(info.value)
            assert saver.get("t").state == "before"   # readers are not blocked by the writer
    finally:
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()
    with Saver(db_path) as saver:
        assert [c.state for c in saver.list("t")] == ["before"]
        saver.put("t", "after")                       # and the database is writable again


# Forking a multi-threaded process is the scenario under test (Python >= 3.12 warns about it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_gets_an_error_even_if_a_parent_thread_held_the_lock(db_path):
    import threading
    with Saver(db_path) as saver:
        saver.put("t", 1)
        inside, release = threading.Event(), threading.Event()

        def hold() -> None:
            with saver.transaction():
                inside.set()
                release.wait()

        holder = threading.Thread(target=hold)
        holder.start()
        inside.wait()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: must raise at once, not wait for a lock no thread will release
            os.close(read_end)
            try:
                saver.put("t", 2)
                outcome = b"no error"
            except Exception as exc:  # reported to the parent by name
                outcome = type(exc).__name__.encode()
            os.write(write_end, outcome)
            os._exit(0)
        os.close(write_end)
        import select
        # A bound on failure, not synchronisation: a regressed child hangs on the lock forever.
        ready, _, _ = select.select([read_end], [], [], 20)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        with os.fdopen(read_end, "rb") as pipe:
            outcome = pipe.read() if ready else b"child hung waiting for the lock"
        os.waitpid(pid, 0)
        release.set()
        holder.join()
        assert outcome == b"ForkedProcessError"
        assert saver.get("t").state == 1


@pytest.mark.parametrize("suffix", ["-wal", "-journal"])
def test_no_new_database_beside_an_orphaned_journal(db_path, suffix):
    # A writer leaves its -wal behind (killed, no close); then the database file alone is
    # removed. Creating a fresh database there would let SQLite replay the old frames into it.
    code = textwrap.dedent("""
        import os, sys
        from sqlitesaver import Saver
        saver = Saver(sys.argv[1])
        saver.put("t", "old")
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code, db_path], check=True,
                   env=dict(os.environ, PYTHONPATH=REPO))
    if suffix == "-journal":
        os.rename(db_path + "-wal", db_path + "-journal")
    os.unlink(db_path)
    from conftest import file_digest
    before = file_digest(db_path + suffix)
    with pytest.raises(CannotOpenError) as info:
        Saver(db_path)
    assert "exists without its database" in str(info.value)
    assert not os.path.exists(db_path)
    assert file_digest(db_path + suffix) == before
