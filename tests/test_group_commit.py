"""Group commit and many writers (issue #5): concurrent transitions share one COMMIT, a failing
one is rolled back alone, a failed COMMIT fails every member, and many processes with several
threads each lose nothing and see no lock errors. The processes case runs on both engines; the
batches are the SQLite engine's (a server shares WAL flushes between COMMITs itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import is_server, queued_writes
from sqlitesaver import (CheckpointNotFoundError, DatabaseIOError, Saver, SaverClosedError,
                         faults)

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def queued(saver: Saver, n: int) -> None:
    """Block until ``n`` transitions wait for the open batch (event-driven, no sleep)."""
    with saver._waiting_cond:
        assert saver._waiting_cond.wait_for(lambda: queued_writes(saver) == n, timeout=60), \
            f"{queued_writes(saver)} transitions queued, expected {n}"


def run_batch(saver: Saver, calls: dict, lead_work=None, then=None) -> dict:
    """Hold a transaction open until every call in ``calls`` waits for the connection, so
    they all join its batch; return each call's result or exception (the leader's under
    "lead"). In the leader's block, ``lead_work()`` (default: a put to thread "lead") runs
    first, and ``then()``, if given, once the calls are queued."""
    results: dict = {}
    inside = threading.Event()

    def lead() -> None:
        try:
            with saver.transaction():
                results["lead"] = (lead_work or (lambda: saver.put("lead", {"n": 1})))()
                inside.set()
                queued(saver, len(calls))
                if then is not None:
                    then()
        except Exception as exc:  # reported through results
            results["lead"] = exc
        finally:
            inside.set()

    def member(name: str, call) -> None:
        try:
            results[name] = call()
        except Exception as exc:
            results[name] = exc

    leader = threading.Thread(target=lead)
    leader.start()
    assert inside.wait(60)
    members = [threading.Thread(target=member, args=item) for item in calls.items()]
    for t in members:
        t.start()
    for t in [leader, *members]:
        t.join(60)
        assert not t.is_alive()
    return results


def test_a_failing_transition_does_not_take_its_batch_down(db_path):
    with Saver(db_path) as saver:
        before = dict(saver._stats)
        results = run_batch(saver, {
            "put": lambda: saver.put("a", {"n": 2}),
            "bad": lambda: saver.put_writes("a", "00000000000fffff", "task", [("ch", 1)]),
            "log": lambda: saver.append_log("a", "event"),
        })
        assert isinstance(results["bad"], CheckpointNotFoundError), results
        assert not any(isinstance(r, Exception) for k, r in results.items() if k != "bad"), \
            results
        # One COMMIT carried the three transitions that succeeded.
        assert saver._stats["commits"] - before["commits"] == 1, saver._stats
        assert saver._stats["transitions"] - before["transitions"] == 3, saver._stats
    with Saver(db_path) as saver:
        assert saver.get("lead").checkpoint_id == results["lead"].checkpoint_id
        assert saver.get("a").checkpoint_id == results["put"].checkpoint_id
        assert saver.get("a").pending_writes == ()
        assert [e.event for e in saver.read_log("a")] == ["event"]


class Boom(Exception):
    pass


def test_a_failing_leader_is_rolled_back_whole_and_the_writers_queued_behind_it_commit(db_path):
    """A batch's leader works in no SAVEPOINT (it is alone in its batch until its work is done,
    see sqlite.transaction._Transaction._join): when its block fails, all of its work goes, none of it
    leaks into the COMMIT of the transitions that queued meanwhile, and they all commit."""
    with Saver(db_path) as saver:
        saver.put("warm", {})
        before = dict(saver._stats)

        def lead_work() -> None:
            saver.put("lead", {"n": 1})
            saver.append_log("lead", "event")

        def fail() -> None:
            raise Boom()
        results = run_batch(saver, {"put": lambda: saver.put("a", {"n": 2}),
                                    "log": lambda: saver.append_log("a", "event")},
                            lead_work, then=fail)
        assert isinstance(results.pop("lead"), Boom), results
        assert not any(isinstance(r, Exception) for r in results.values()), results
        assert saver._stats["transitions"] - before["transitions"] == 2, saver._stats
    with Saver(db_path) as saver:
        assert saver.get("lead") is None and list(saver.read_log("lead")) == []
        assert saver.get("a").checkpoint_id == results["put"].checkpoint_id
        assert [e.event for e in saver.read_log("a")] == ["event"]


def test_a_lone_writer_never_gathers_and_makes_no_event(db_path, monkeypatch):
    """What a lone writer does not pay for group commit: no Event for members to wait on, no
    gathering wait, no count of waiters (sqlite.transaction._Transaction._join, _finish)."""
    from sqlitesaver.sqlite import transaction as write_path
    made: list = []
    waitable = write_path._Batch.waitable
    monkeypatch.setattr(write_path._Batch, "waitable",
                        lambda batch: made.append(batch) or waitable(batch))
    yields: list = []
    monkeypatch.setattr(write_path, "_yield", lambda: yields.append(1))
    with Saver(db_path) as saver:
        waits: list = []
        wait = saver._batch_cond.wait
        saver._batch_cond.wait = lambda *args: waits.append(args) or wait(*args)
        counts: set = set()
        parent = None
        for i in range(20):
            parent = saver.put("t", {"i": i}, parent_id=parent).checkpoint_id
            saver.put_writes("t", parent, "task", [("ch", i)])
            counts.add(saver._waiting)
        with saver.transaction():
            saver.append_log("t", "event")
        assert made == [] and waits == [] and counts == {0} and yields == []
        assert saver._stats["commits"] == saver._stats["transitions"] == 41, saver._stats


def test_after_a_shared_batch_the_next_leader_yields_once_and_a_write_queued_then_joins(
        db_path, monkeypatch, hang_detector):
    """After a batch of several members, the next leader, with nothing queued, yields the GIL
    once before it COMMITs (sqlite.transaction._Transaction._finish): a write another thread
    queues right then joins its batch, one fsync for both. Once per batch; after a batch of
    one, no more."""
    from sqlitesaver.sqlite import transaction as write_path
    hang_detector(60)
    with Saver(db_path) as saver:
        run_batch(saver, {"put": lambda: saver.put("a", {"n": 1})})  # two members
        assert saver._concurrent
        yields: list = []
        joiners: list = []
        joined: dict = {}

        def join() -> None:
            joined["ref"] = saver.put("b", {"n": 2})

        def on_yield() -> None:
            # In the leader, holding the write lock, with nothing queued: a write queued now
            # is one a thread waiting for the GIL would have made during the sleep(0).
            yields.append(threading.get_ident())
            assert len(yields) <= 2, "a leader yields again and again"  # fail, not spin
            if len(yields) == 1:
                joiners.append(threading.Thread(target=join))
                joiners[0].start()
                queued(saver, 1)
        monkeypatch.setattr(write_path, "_yield", on_yield)
        before = dict(saver._stats)
        led = saver.put("c", {"n": 3})
        joiners[0].join(60)
        assert not joiners[0].is_alive()
        assert yields == [threading.get_ident()]  # the leader's, once
        assert saver._stats["commits"] - before["commits"] == 1, saver._stats
        assert saver._stats["transitions"] - before["transitions"] == 2, saver._stats
        assert saver._concurrent  # that batch was shared too
        saver.put("d", {})  # alone, after a shared batch: yields once, commits alone
        assert len(yields) == 2 and not saver._concurrent
        saver.put("e", {})  # alone after a batch of one: no yield
        assert len(yields) == 2
        assert saver._stats["commits"] - before["commits"] == 3, saver._stats
    with Saver(db_path) as saver:
        assert saver.get("b").checkpoint_id == joined["ref"].checkpoint_id
        assert saver.get("c").checkpoint_id == led.checkpoint_id


def test_a_failed_commit_fails_every_member_and_shuts_the_saver_down(db_path):
    io = faults.install_io_faults()
    try:
        with Saver(db_path) as saver:
            saver.put("warm", {})
            io.arm(1, kinds=("sync",))  # the batch's COMMIT: its WAL fsync fails
            results = run_batch(saver, {"put": lambda: saver.put("a", {"n": 2}),
                                        "log": lambda: saver.append_log("a", "event")})
            io.clear()
            for name, result in results.items():
                assert isinstance(result, DatabaseIOError), (name, results)
                assert repr(db_path) in str(result)
            with pytest.raises(SaverClosedError):
                saver.put("a", {"n": 3})
    finally:
        io.clear()
        io.uninstall()
    with Saver(db_path, integrity_check="full") as saver:  # maybe committed: whole or absent
        found = saver.get("a")
        log = [e.event for e in saver.read_log("a")]
        assert (found is None and log == []) or (found.state == {"n": 2} and log == ["event"])


_WRITER = textwrap.dedent("""
    import json, sys, threading
    from sqlitesaver import Saver
    path, name = sys.argv[1], sys.argv[2]
    saver = Saver(path)
    go = threading.Event()
    acked = {}
    errors = []

    def work(t):
        thread = f"{name}-{t}"
        ids = acked.setdefault(thread, [])
        go.wait()
        try:
            for i in range(50):
                if i % 2:
                    ids.append(["log", saver.append_log(thread, {"i": i})])
                else:
                    ids.append(["ck", saver.put(thread, {"i": i}).checkpoint_id])
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    sys.stdin.readline()  # every process is released at once
    go.set()
    for t in threads:
        t.join()
    saver.close()
    print(json.dumps({"acked": acked, "errors": errors}), flush=True)
""")


def test_twenty_processes_with_two_threads_each_lose_nothing(any_empty_target, hang_detector):
    """On both engines (a server's writers are its connections; the rest of this file is the
    SQLite engine's batch: group commit on a server is the server's, see engine.py)."""
    hang_detector(280)
    db_path = any_empty_target
    Saver(db_path).close()
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, db_path, f"p{n}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for n in range(20)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        reports.append(json.loads(out))
    assert [e for r in reports for e in r["errors"]] == []
    with Saver(db_path, **({} if is_server(db_path) else {"integrity_check": "full"})) as saver:
        for report in reports:
            for thread, acked in report["acked"].items():
                assert len(acked) == 50
                checkpoints = [ck for kind, ck in acked if kind == "ck"]
                assert [c.checkpoint_id for c in saver.list(thread)] == checkpoints[::-1]
                events = list(saver.read_log(thread))
                assert [e.seq for e in events] == [seq for kind, seq in acked if kind == "log"]
                assert [e.event["i"] for e in events] == list(range(1, 50, 2))


# An I/O error inside a nested call shuts the Saver down while the outer transaction, and maybe
# a batch of other threads' transitions, is still open. Found by the torture harness (issue #5,
# --threads): the outer block used to meet a closed connection (apsw.ConnectionClosedError
# leaked) and the batch's leader waited for ever.

def _spill_early(saver: Saver) -> None:
    # A tiny page cache makes a large insert write pages to the WAL in the middle of its
    # transition, so a write fault fires inside the nested call, not at COMMIT.
    saver._writer.execute("PRAGMA cache_size=2")


def test_an_io_error_inside_a_nested_call_fails_the_whole_batch_and_nobody_hangs(db_path):
    io = faults.install_io_faults()
    try:
        with Saver(db_path) as saver:
            saver.put("warm", {})
            _spill_early(saver)

            def nested() -> None:
                with saver.transaction():
                    io.arm(1, kinds=("write",))  # the next write: the spill below
                    saver.append_log("m", b"x" * 200_000)

            results = run_batch(saver, {"nested": nested,
                                        "log": lambda: saver.append_log("b", "event")})
            io.clear()
            for name in ("lead", "nested"):
                assert isinstance(results[name], DatabaseIOError), (name, results)
                assert repr(db_path) in str(results[name])
            # In the failed batch, or queued behind it and refused once the Saver shut down:
            # never a success and never an APSW error either way.
            assert isinstance(results["log"], (DatabaseIOError, SaverClosedError)), results
            with pytest.raises(SaverClosedError, match="I/O error"):
                saver.put("warm", {})
    finally:
        io.clear()
        io.uninstall()
    with Saver(db_path, integrity_check="full") as saver:  # the batch never committed
        assert saver.threads() == ["warm"]


def test_an_io_error_swallowed_inside_a_transaction_still_fails_it(db_path):
    io = faults.install_io_faults()
    try:
        with Saver(db_path) as saver:
            _spill_early(saver)
            with pytest.raises(DatabaseIOError):
                with saver.transaction():
                    saver.put("t", 1)
                    io.arm(1, kinds=("write",))
                    with pytest.raises(DatabaseIOError):
                        saver.append_log("t", b"x" * 200_000)
                    io.clear()
                    with pytest.raises(SaverClosedError):  # shut down: nothing more runs
                        saver.put("t", 2)
                    # the block ends normally, yet nothing of it may be committed
    finally:
        io.clear()
        io.uninstall()
    with Saver(db_path, integrity_check="full") as saver:
        assert saver.threads() == []
