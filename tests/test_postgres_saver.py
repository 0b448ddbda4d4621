"""``Saver("postgresql://...")``: the same Saver on a server. The model-based machine of
tests/test_stateful.py runs on PostgreSQL too (tests/test_stateful.py's PostgresSaverMachine);
this file holds what only a server has: choosing the engine from the target, options that
belong to SQLite refused, what is not available there yet saying so, a fork, reopening."""

from __future__ import annotations

import os
import threading

import pytest

from sqlitesaver import (Checkpoint, CheckpointNotFoundError, ChecksumError, DatabaseIOError,
                         ForkedProcessError, InvalidArgumentError, Saver, SaverClosedError,
                         SaverError, UsageError)
from sqlitesaver.postgres.saver import PostgresServerSaver
from sqlitesaver.sqlite.saver import SqliteFileSaver

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")


@pytest.fixture
def saver(pg_url):
    with Saver(pg_url) as opened:
        yield opened


def test_a_postgres_url_opens_the_same_saver_on_the_server(saver, pg_url):
    assert isinstance(saver, Saver) and type(saver) is PostgresServerSaver
    assert saver.path.startswith("postgresql://postgres@/t_") and "?host=" in saver.path
    ref = saver.put("t", {"n": 1, "when": (1, 2)}, metadata={"step": 1})
    child = saver.put("t", {"n": 2}, parent_id=ref.checkpoint_id)
    saver.put_writes("t", child.checkpoint_id, "task", [("ch", b"\x00bytes")])
    got = saver.get("t")
    assert isinstance(got, Checkpoint) and got.state == {"n": 2}
    assert got.parent_id == ref.checkpoint_id and got.pending_writes[0].value == b"\x00bytes"
    assert saver.get("t", ref.checkpoint_id).state == {"n": 1, "when": (1, 2)}  # exact types
    assert [cp.checkpoint_id for cp in saver.list("t")] == [child.checkpoint_id,
                                                            ref.checkpoint_id]
    assert [e.event for e in saver.read_log("t")] == []
    assert saver.append_log("t", {"e": 1}) >= 1 and saver.threads() == ["t"]
    assert saver.settings()["engine"] == "postgresql"
    assert repr(saver) == f"<Saver {saver.path!r} full>"


def test_a_path_is_still_a_sqlite_file(tmp_path):
    """Only a postgresql:// or postgres:// URL names a server: a file may be called
    'host=db dbname=app'."""
    path = tmp_path / "host=db dbname=app"
    with Saver(str(path)) as saver:
        assert type(saver) is SqliteFileSaver and saver.path == str(path)


@pytest.mark.parametrize("option", [{"readonly": True}, {"integrity_check": "full"},
                                    {"max_readers": 4}])
def test_sqlite_options_are_refused_on_a_server(pg_url, option):
    with pytest.raises(InvalidArgumentError, match="SQLite engine"):
        Saver(pg_url, **option)


def test_backup_is_refused_with_the_pg_dump_recipe_and_writes_nothing(saver, tmp_path):
    ref = saver.put("t", {"n": 1})
    with pytest.raises(UsageError, match="pg_dump --schema=sqlitesaver") as refused:
        saver.backup(str(tmp_path / "b.db"))
    assert "Nothing was written" in str(refused.value) and saver.path in str(refused.value)
    assert os.listdir(tmp_path) == []
    assert [cp.checkpoint_id for cp in saver.list("t")] == [ref.checkpoint_id]


def test_damage_on_the_server_is_a_checksum_error_naming_it(saver, pg_url):
    ref = saver.put("t", {"n": 1})
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE sqlitesaver.checkpoints SET state = '\\x81a1'")
    with pytest.raises(ChecksumError, match="restore the server") as caught:
        saver.get("t")
    assert caught.value.path == saver.path
    assert list(saver.list("t", skip_damaged=True)) == []
    assert ref.checkpoint_id in str(caught.value)


def test_reopening_sees_everything_and_close_is_final(pg_url):
    with Saver(pg_url, durability="normal") as first:
        ref = first.put("t", {"n": 1})
    with pytest.raises(SaverClosedError):
        first.get("t")
    with Saver(pg_url) as second:
        assert second.get("t").checkpoint_id == ref.checkpoint_id


def test_a_forked_child_is_refused_and_leaves_the_parents_connections_alone(saver):
    saver.put("t", {"n": 1})
    pid = os.fork()
    if pid == 0:  # the child: refused, and closing must not end the parent's sessions
        code = 1
        try:
            try:
                saver.get("t")
            except ForkedProcessError:
                saver.close()
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert saver.get("t").state == {"n": 1}  # the parent's pooled connection still works
    saver.put("t", {"n": 2})


# --- transaction() ----------------------------------------------------------------------------

def test_a_transaction_is_all_or_nothing_and_nests_as_savepoints(saver, pg_url):
    with saver.transaction() as same:
        assert same is saver and saver.in_transaction and saver._depth == 1
        first = saver.put("t", {"n": 1})
        with pytest.raises(RuntimeError):
            with saver.transaction():
                assert saver._depth == 2
                saver.put("t", {"n": 2})
                raise RuntimeError("inner block fails")
        assert saver._depth == 1
        # a failing call is undone alone; the block goes on
        with pytest.raises(CheckpointNotFoundError):
            saver.put("t", {"n": 3}, parent_id="ffffffffffffffff")
        second = saver.put("t", {"n": 4}, parent_id=first.checkpoint_id)
        assert [cp.state for cp in saver.list("t")] == [{"n": 4}, {"n": 1}]  # its own writes
        # another thread (another connection) sees none of it before COMMIT
        seen: list = []
        reader = threading.Thread(target=lambda: seen.append(saver.get("u")))
        reader.start()
        reader.join()
        assert seen == [None]
        with psycopg.connect(pg_url) as other:
            assert other.execute("SELECT count(*) FROM sqlitesaver.checkpoints").fetchone() \
                == (0,)
    assert not saver.in_transaction and saver._depth == 0
    assert [cp.checkpoint_id for cp in saver.list("t")] == [second.checkpoint_id,
                                                            first.checkpoint_id]
    with pytest.raises(KeyError):
        with saver.transaction():
            saver.put("t", {"n": 5})
            saver.append_log("t", "gone too")
            raise KeyError("the block fails")
    assert len(list(saver.list("t"))) == 2 and list(saver.read_log("t")) == []


def test_close_inside_a_transaction_is_refused(saver):
    with saver.transaction():
        with pytest.raises(UsageError, match="inside this thread's transaction"):
            saver.close()
    saver.close()


def test_a_block_holds_its_threads_lock_until_commit(saver, pg_url, hang_detector):
    """A writer of the same thread waits for the block (as on SQLite, where every writer
    does); a writer of another thread does not."""
    hang_detector(60)
    done: list = []
    with saver.transaction():
        saver.put("t", {"n": 1})
        other = threading.Thread(target=lambda: done.append(saver.put("u", {"n": 1})))
        other.start()
        other.join()  # another thread: not blocked by the block
        same = threading.Thread(target=lambda: done.append(saver.put("t", {"n": 2})))
        same.start()
        with psycopg.connect(pg_url, autocommit=True) as watcher:
            while not watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = "
                                      "'advisory' AND NOT granted").fetchone()[0]:
                assert same.is_alive()
        assert len(done) == 1
    same.join()
    assert len(done) == 2 and saver.get("t").state == {"n": 2}


def test_delete_matching_over_every_thread_in_a_block_keeps_other_writers_out(saver, pg_url,
                                                                             hang_detector):
    """Inside a transaction block, delete_matching over every thread runs in a savepoint of
    the block: another thread must not link a child to a checkpoint it deletes (which would be
    left with a parent that is gone, not detached). The other thread waits for the block."""
    hang_detector(60)
    parent = saver.put("t", 1, metadata={"k": 1})
    results: list = []

    def put_child():
        try:
            results.append(saver.put("t", 2, parent_id=parent.checkpoint_id))
        except Exception as exc:  # noqa: BLE001 - checked below
            results.append(exc)

    with saver.transaction():
        assert saver.delete_matching({"k": 1}) == 1
        other = threading.Thread(target=put_child)
        other.start()
        # Until the put waits on the server for the block's lock (a state, not a guess of how
        # long it takes to get there on a loaded machine).
        with psycopg.connect(pg_url, autocommit=True) as watcher:
            while not watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = "
                                      "'advisory' AND NOT granted").fetchone()[0]:
                assert other.is_alive() and not results, results
        assert other.is_alive() and not results
    other.join(20)
    assert isinstance(results[0], CheckpointNotFoundError)
    assert [cp.state for cp in saver.list("t")] == []


def test_an_exception_at_any_line_of_a_block_leaves_no_stale_pin(pg_url):
    """A signal (or PyThreadState_SetAsyncExc) lands between any two lines. Injected at each
    line of Engine.transaction in turn: afterwards the thread is not in a transaction, its
    next put is committed on its own (seen at once by another connection), and the pool
    lends every connection again. Before the fix, one landing between the block's body and
    the line unpinning its connection left the thread pinned to a connection already back in
    the pool: its calls failed ("SAVEPOINT can only be used in transaction blocks"), or ran
    inside the transaction of whichever thread had that connection next."""
    import sys

    from sqlitesaver.postgres import engine as pg_engine

    code = pg_engine.Engine.transaction.__wrapped__.__code__
    lines = sorted({line for _, _, line in code.co_lines() if line is not None})
    with Saver(pg_url, max_connections=2) as saver, psycopg.connect(pg_url,
                                                                      autocommit=True) as other:
        fired = []
        for number, line in enumerate(lines):
            def tracer(frame, event, arg, line=line):
                if frame.f_code is not code:
                    return None

                def at_line(frame, event, arg):
                    if event == "line" and frame.f_lineno == line and len(fired) <= number:
                        fired.append(line)
                        raise KeyboardInterrupt(f"injected at line {line}")
                    return at_line
                return at_line

            sys.settrace(tracer)
            try:
                with saver.transaction():
                    saver.put("t", number)
            except KeyboardInterrupt:
                pass
            finally:
                sys.settrace(None)
            if len(fired) <= number:
                fired.append(None)  # the line did not run on this path
            assert not saver.in_transaction, f"pinned after an exception at line {line}"
            ref = saver.put("alone", number)
            assert other.execute("SELECT count(*) FROM sqlitesaver.checkpoints WHERE seq = %s",
                                 (int(ref.checkpoint_id, 16),)).fetchone()[0] == 1
        assert any(fired)

        def block(name):
            with saver.transaction():
                saver.put(name, 1)
                barrier.wait(10)

        barrier = threading.Barrier(2)
        workers = [threading.Thread(target=block, args=(f"w{i}",)) for i in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(20)
        assert [cp.state for cp in saver.list("w0")] == [1] == [cp.state for cp in
                                                               saver.list("w1")]


def test_a_block_whose_server_transaction_was_aborted_raises_at_its_end(saver):
    """PostgreSQL answers COMMIT in an aborted transaction with the tag ROLLBACK, not an
    error. A statement failing outside any call's savepoint (here on the block's connection
    directly; through the API, a SAVEPOINT cancelled by a Ctrl-C the caller caught) aborts
    the whole transaction: before, the block then ended as if committed, nothing stored."""
    with pytest.raises(SaverError, match="rolled the transaction back"):
        with saver.transaction():
            saver.put("t", 1)
            with pytest.raises(psycopg.errors.DivisionByZero):
                saver._engine._pinned().conn.execute("SELECT 1/0")
    assert list(saver.list("t")) == [] and not saver.in_transaction
    saver.put("t", 2)


def test_a_block_whose_connection_was_lost_commits_nothing_of_it(saver, pg_url):
    """The block's connection dies (its backend killed) between two calls. Every later call
    in the block must fail saying the block was lost, and the block must end without
    committing, even if the caller swallows those errors: before the fix, the lost connection
    unpinned the thread and its next puts committed each on its own connection, outside the
    block whose first put the server had rolled back (half a block stored)."""
    with pytest.raises(DatabaseIOError, match="nothing of the block was committed"):
        with saver.transaction():
            saver.put("t", 1)
            with psycopg.connect(pg_url, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)",
                              (saver._engine._pinned().conn.info.backend_pid,))
            for state in (2, 3):
                with pytest.raises(DatabaseIOError, match="block"):
                    saver.put("t", state)
            assert saver.in_transaction
            with pytest.raises(DatabaseIOError, match="block"):
                with saver.transaction():  # a nested block cannot open on it either
                    pass
    assert not saver.in_transaction
    assert list(saver.list("t")) == []
    saver.put("t", 4)  # the pool replaced the dead connection
    assert [cp.state for cp in saver.list("t")] == [4]


def test_the_pg_dump_recipe_backup_names_restores_a_store_that_verifies(pg_url, pg_cluster,
                                                                         tmp_path):
    """What backup()'s message says to do, done: pg_dump of the sqlitesaver schema, restored
    with pg_restore into an empty database; the copy passes the validator, holds what was
    stored, and never hands out an id the original had used."""
    import subprocess

    from conftest import _fresh_database, store_digest
    from sqlitesaver.postgres import check as pg_check

    with Saver(pg_url) as saver:
        first = saver.put("t", {"n": 1}, metadata={"step": 1})
        second = saver.put("t", {"n": 2}, parent_id=first.checkpoint_id)
        saver.put_writes("t", second.checkpoint_id, "task", [("ch", b"\x00\xff")])
        saver.put("u", {"other": True}, checkpoint_id="custom-id")
        saver.append_log("t", {"event": 1})
        doomed = saver.put("gone", {"n": 0})
        saver.delete_thread("gone")  # its id must not come back in the copy either
        with pytest.raises(UsageError) as refused:
            saver.backup(str(tmp_path / "copy.db"))
    recipe = str(refused.value)
    dump = tmp_path / "sqlitesaver.dump"
    assert "pg_dump --schema=sqlitesaver --format=custom" in recipe
    assert "pg_restore --single-transaction --exit-on-error" in recipe
    bindir = pg_cluster.bindir
    subprocess.run([os.path.join(bindir, "pg_dump"), "--schema=sqlitesaver", "--format=custom",
                    f"--file={dump}", pg_url], check=True, capture_output=True, timeout=60)
    with _fresh_database(pg_cluster, "restored from the pg_dump recipe") as copy:
        subprocess.run([os.path.join(bindir, "pg_restore"), "--single-transaction",
                        "--exit-on-error", f"--dbname={copy}", str(dump)], check=True,
                       capture_output=True, timeout=60)
        report = pg_check.check_server(copy)
        assert report.result == "ok", report.steps
        assert store_digest(copy) == store_digest(pg_url)
        with Saver(copy) as restored:
            assert restored.get("t").pending_writes[0].value == b"\x00\xff"
            assert [cp.state for cp in restored.list("t")] == [{"n": 2}, {"n": 1}]
            assert restored.get("u", "custom-id").state == {"other": True}
            assert [e.event for e in restored.read_log("t")] == [{"event": 1}]
            assert restored.threads() == ["t", "u"]
            after = restored.put("t", {"n": 3}, parent_id=second.checkpoint_id)
            assert int(after.checkpoint_id, 16) > int(doomed.checkpoint_id, 16)
