"""The write queue (sqlitesaver/sqlite/queue.py, issue #15): a put, put_writes or append_log that
finds another thread's batch open is queued for that batch's leader, which runs it in its own
savepoint and COMMITs once for all; the queue is handed to its first caller when a batch ends,
and a caller nobody runs withdraws its job and writes through the write lock itself.
SQLite by nature: the SQLite engine's group commit."""

from __future__ import annotations

import threading

import pytest

from test_group_commit import queued, run_batch
from sqlitesaver import CheckpointNotFoundError, Saver, SaverClosedError, UsageError
from sqlitesaver.sqlite import queue as write_queue
from sqlitesaver.sqlite import transaction as write_path


def _hold_batch(saver: Saver, n: int, calls: dict) -> dict:
    """test_group_commit.run_batch (a transaction held open until the ``n`` calls wait for its
    batch), recording under "queued" how many were queued and how many waited for the lock."""
    seen: dict = {}
    results = run_batch(saver, calls,
                        then=lambda: seen.update(queued=(len(saver._jobs), saver._waiting)))
    assert len(calls) == n
    return {**results, **seen}


@pytest.fixture
def withdrawals(monkeypatch) -> list:
    """Every job withdrawn from the queue (the fallback for a hand-over nobody made)."""
    seen: list = []
    withdraw = write_queue._withdraw

    def counting(saver, job):
        taken = withdraw(saver, job)
        if taken:
            seen.append(job.doing)
        return taken
    monkeypatch.setattr(write_queue, "_withdraw", counting)
    return seen


def test_writes_of_other_threads_are_run_by_the_leader_in_one_commit(db_path, hang_detector,
                                                                     withdrawals, monkeypatch):
    hang_detector(120)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 60.0)  # a job left waiting hangs the test
    with Saver(db_path) as saver:
        base = saver.put("w", {"n": 0}).checkpoint_id
        before = dict(saver._stats)
        calls = {f"put{i}": (lambda i=i: saver.put(f"t{i}", {"n": i})) for i in range(6)}
        calls["writes"] = lambda: saver.put_writes("w", base, "task", [("ch", 1)])
        calls["log"] = lambda: saver.append_log("w", "event")
        results = _hold_batch(saver, len(calls), calls)
        # All eight were queued for the leader; none waited for the write lock.
        assert results["queued"] == (8, 0), results
        assert not any(isinstance(r, BaseException) for r in results.values()), results
        assert saver._stats["commits"] - before["commits"] == 1, saver._stats
        assert saver._stats["transitions"] - before["transitions"] == 9, saver._stats
        assert saver._jobs == [] and not saver._jobs_open
    assert withdrawals == []
    with Saver(db_path) as saver:
        for i in range(6):
            assert saver.get(f"t{i}").checkpoint_id == results[f"put{i}"].checkpoint_id
        assert [w.value for w in saver.get("w").pending_writes] == [1]
        assert [e.event for e in saver.read_log("w")] == ["event"]


def test_a_failing_queued_write_fails_alone_with_its_own_error(db_path, hang_detector):
    hang_detector(120)
    with Saver(db_path) as saver:
        calls = {"good": lambda: saver.put("a", {"n": 1}),
                 "bad": lambda: saver.put_writes("a", "00000000000fffff", "task", [("c", 1)]),
                 "parent": lambda: saver.put("b", {"n": 2}, parent_id="00000000000ffffe")}
        results = _hold_batch(saver, 3, calls)
        assert results["queued"] == (3, 0), results
        assert isinstance(results["bad"], CheckpointNotFoundError), results
        assert isinstance(results["parent"], CheckpointNotFoundError), results
        assert "00000000000ffffe" in str(results["parent"])
        assert saver.get("a").checkpoint_id == results["good"].checkpoint_id
        assert saver.get("b") is None and saver.get("a").pending_writes == ()


def test_a_full_batch_hands_the_queue_to_its_first_caller(db_path, hang_detector, withdrawals,
                                                          monkeypatch):
    """With batches of two, the leader runs one queued write and commits; the next queued
    caller is woken to lead, and runs the rest. A hand-over that never happened would leave
    them waiting for QUEUE_POLL (60 s here: the hang detector fails the test first)."""
    hang_detector(120)
    monkeypatch.setattr(write_path, "MAX_BATCH", 2)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 60.0)
    led: list = []
    hand_over = write_queue.hand_over

    def recording(saver):
        led.extend(job.doing for job in saver._jobs[:1])
        hand_over(saver)
    monkeypatch.setattr(write_queue, "hand_over", recording)
    with Saver(db_path) as saver:
        before = dict(saver._stats)
        calls = {f"put{i}": (lambda i=i: saver.put(f"t{i}", {"n": i})) for i in range(5)}
        results = _hold_batch(saver, 5, calls)
        assert results["queued"] == (5, 0), results
        assert not any(isinstance(r, BaseException) for r in results.values()), results
        assert saver._stats["transitions"] - before["transitions"] == 6
        assert saver._stats["commits"] - before["commits"] == 3, saver._stats
        assert led, "no queued caller was handed the queue"
        assert saver._jobs == [] and not saver._jobs_open
        for i in range(5):
            assert saver.get(f"t{i}").checkpoint_id == results[f"put{i}"].checkpoint_id
    assert withdrawals == []


def test_a_hand_over_that_never_came_costs_queue_poll_not_a_hang(db_path, hang_detector,
                                                                 withdrawals, monkeypatch):
    """If the thread ending a batch never hands the queue over (an interruption at the wrong
    instant), a queued caller withdraws its job after QUEUE_POLL and writes it itself."""
    hang_detector(120)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 0.05)
    monkeypatch.setattr(write_path, "MAX_BATCH", 1)  # the leader's batch is full: none runs
    lost = {"once": True}
    hand_over = write_queue.hand_over

    def forgetful(saver):
        if lost.pop("once", False):
            return  # the queue stays open, and nobody is woken
        hand_over(saver)
    monkeypatch.setattr(write_queue, "hand_over", forgetful)
    with Saver(db_path) as saver:
        results = _hold_batch(saver, 2, {"a": lambda: saver.put("a", {"n": 1}),
                                         "b": lambda: saver.put("b", {"n": 2})})
        assert results["queued"] == (2, 0), results
        assert not any(isinstance(r, BaseException) for r in results.values()), results
        assert sorted(withdrawals) == ["putting a checkpoint"] * 2 or \
            withdrawals == ["putting a checkpoint"], withdrawals
        assert saver.get("a").checkpoint_id == results["a"].checkpoint_id
        assert saver.get("b").checkpoint_id == results["b"].checkpoint_id
        assert saver._jobs == [] and not saver._jobs_open


def test_close_hands_queued_writes_back_refused(db_path, hang_detector, monkeypatch):
    """close() while writes are queued (the batch that would have run them is over, its
    hand-over not taken up): each caller gets SaverClosedError, and nothing of it is written."""
    hang_detector(120)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 60.0)  # only close() can wake them
    monkeypatch.setattr(write_path, "MAX_BATCH", 1)  # the leader's batch is full: none runs
    monkeypatch.setattr(write_queue, "hand_over", lambda saver: None)
    saver = Saver(db_path)
    results: dict = {}

    def call(name: str) -> None:
        try:
            results[name] = saver.put(name, {"n": 1})
        except BaseException as exc:  # noqa: BLE001
            results[name] = exc

    callers = [threading.Thread(target=call, args=(name,)) for name in ("a", "b")]
    with saver.transaction():
        saver.put("lead", {"n": 0})
        for t in callers:
            t.start()
        with saver._waiting_cond:
            assert saver._waiting_cond.wait_for(lambda: len(saver._jobs) == 2, timeout=60)
    assert len(saver._jobs) == 2 and saver._jobs_open  # nobody will run them
    saver.close()
    for t in callers:
        t.join(30)  # well before QUEUE_POLL: only close() could have woken them
        assert not t.is_alive(), "a queued caller was not woken by close()"
    assert all(isinstance(results[name], SaverClosedError) for name in "ab"), results
    with Saver(db_path) as check:
        assert check.get("a") is None and check.get("b") is None
        assert check.get("lead") is not None


def _while_beginning(saver: Saver, monkeypatch, n: int, then=None
                     ) -> tuple[dict, list[threading.Thread]]:
    """A put (its result or exception under "lead") whose BEGIN IMMEDIATE first starts ``n``
    puts from other threads (under "put0", ...), waits until they are queued or wait for the
    lock, and runs ``then()`` (which may raise, as BEGIN would): as if that BEGIN had given the
    GIL away (it does: APSW releases it while SQLite works) and other writes ran meanwhile.
    Returns the results and the puts' threads, not yet joined (see _joined)."""
    begin, entered = saver._begin_step, []
    results: dict = {}
    threads: list[threading.Thread] = []

    def put(i: int) -> None:
        try:
            results[f"put{i}"] = saver.put(f"t{i}", {"n": i})
        except Exception as exc:  # reported through the results
            results[f"put{i}"] = exc

    def slow_begin():
        if not entered:
            entered.append(True)
            threads.extend(threading.Thread(target=put, args=(i,)) for i in range(n))
            for thread in threads:
                thread.start()
            queued(saver, n)
            if then is not None:
                then()
        return begin()
    monkeypatch.setattr(saver, "_begin_step", slow_begin)
    try:
        results["lead"] = saver.put("lead", {"n": 0})
    except Exception as exc:  # reported through the results
        results["lead"] = exc
    return results, threads


def _joined(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


def test_writes_arriving_during_the_leaders_begin_are_queued_not_sent_to_the_lock(
        db_path, hang_detector, withdrawals, monkeypatch):
    # Session 27: the queue opened only once BEGIN had returned, so every write arriving while
    # it ran waited for the write lock and joined by a hand-off of it (1.8 members of every
    # batch of 8 threads' puts). Now it opens before BEGIN.
    hang_detector(120)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 60.0)  # a job left waiting hangs the test
    with Saver(db_path) as saver:
        before = dict(saver._stats)
        seen: dict = {}
        results, threads = _while_beginning(
            saver, monkeypatch, 5, lambda: seen.update(queued=(len(saver._jobs), saver._waiting)))
        _joined(threads)
        assert seen["queued"] == (5, 0), seen  # queued for the leader; none at the lock
        assert not any(isinstance(r, BaseException) for r in results.values()), results
        assert saver._stats["commits"] - before["commits"] == 1, saver._stats
        assert saver._stats["transitions"] - before["transitions"] == 6, saver._stats
        for i in range(5):
            assert saver.get(f"t{i}").checkpoint_id == results[f"put{i}"].checkpoint_id
        assert saver._jobs == [] and not saver._jobs_open
    assert withdrawals == []


def _fail_begin() -> None:
    raise RuntimeError("BEGIN failed (injected)")


def test_writes_queued_during_a_begin_that_fails_are_handed_over_and_committed(
        db_path, hang_detector, withdrawals, monkeypatch):
    hang_detector(120)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 60.0)  # a job nobody hands over hangs
    with Saver(db_path) as saver:
        results, threads = _while_beginning(saver, monkeypatch, 4, _fail_begin)
        _joined(threads)
        assert isinstance(results.pop("lead"), RuntimeError), results
        assert not any(isinstance(r, BaseException) for r in results.values()), results
        for i in range(4):
            assert saver.get(f"t{i}").checkpoint_id == results[f"put{i}"].checkpoint_id
        assert saver.get("lead") is None
        assert saver._jobs == [] and not saver._jobs_open and saver._batch is None
        assert saver.put("after", {"n": 9}).checkpoint_id  # still usable
    assert withdrawals == []


def test_a_write_re_entering_the_leaders_thread_during_its_begin_is_refused_alone(
        db_path, hang_detector, withdrawals, monkeypatch):
    # A signal handler or finalizer in the leader's thread while its BEGIN runs (review,
    # session 27): it used to nest as a SAVEPOINT outside any batch and release the leader's
    # lock, so that another thread could use the connection while the leader was still in it.
    hang_detector(120)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 60.0)  # a job left waiting hangs the test
    with Saver(db_path) as saver:
        seen: dict = {}

        def re_enter() -> None:
            try:
                saver.put("re-entrant", {"n": 1})
            except UsageError as exc:
                seen["error"] = exc
            seen["lock"] = saver._lock._is_owned()  # still this thread's, BEGIN still ahead
        results, threads = _while_beginning(saver, monkeypatch, 2, re_enter)
        _joined(threads)
        assert "signal handler or finalizer" in str(seen["error"]) and seen["lock"], seen
        assert not any(isinstance(r, BaseException) for r in results.values()), results
        assert saver.get("re-entrant") is None
        for thread_id, name in (("lead", "lead"), ("t0", "put0"), ("t1", "put1")):
            assert saver.get(thread_id).checkpoint_id == results[name].checkpoint_id
    assert withdrawals == []


def test_writes_queued_during_a_begin_whose_recovery_fails_are_refused_at_once(
        db_path, hang_detector, monkeypatch):
    # BEGIN fails, then its recovery fails too (injected into the hand-over): the Saver shuts
    # down, and the queued writes are refused now, not after QUEUE_POLL (review, session 27).
    hang_detector(120)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 60.0)  # a job left waiting hangs the test
    with Saver(db_path) as saver:
        hand_over = write_queue.hand_over
        broken: list = []

        def breaking(s) -> None:
            if not broken:
                broken.append(True)
                raise RuntimeError("the recovery failed (injected)")
            hand_over(s)
        monkeypatch.setattr(write_queue, "hand_over", breaking)
        results, threads = _while_beginning(saver, monkeypatch, 3, _fail_begin)
        # Closed by the failed recovery itself, before the leader's put returned:
        assert saver._jobs == [] and not saver._jobs_open, saver._jobs
        _joined(threads)
        assert broken and isinstance(results.pop("lead"), RuntimeError), results
        assert all(isinstance(r, SaverClosedError) for r in results.values()), results
        assert "reopen" in str(results["put0"])
