"""Review of the write queue (sqlitesaver/sqlite/queue.py): interruptions at instants the
line-by-line injection of test_interrupts never reaches (it has at most one queued job, which
the leader always claims, so hand_over and close never hand a job back there).

An asynchronous exception (PyThreadState_SetAsyncExc, or Ctrl-C in the main thread) can land at
the first instruction of any function (CPython checks at every function's entry): here it is
simulated by making ``_Job.wake`` raise at its entry once, in the thread that hands jobs back."""

from __future__ import annotations

import threading

import pytest

from sqlitesaver import InterruptedTransitionError, Saver, SaverClosedError
from sqlitesaver.sqlite import queue as write_queue
from sqlitesaver.sqlite import transaction as write_path


class Injected(BaseException):
    """The simulated asynchronous exception."""


def _raise_once_in_wake(monkeypatch, when) -> list:
    """``_Job.wake`` raises Injected at its entry the first time ``when(job)`` holds."""
    fired: list = []
    wake = write_queue._Job.wake

    def wake_or_raise(job):
        if not fired and when(job):
            fired.append(job.doing)
            raise Injected("landed at _Job.wake's entry")
        wake(job)
    monkeypatch.setattr(write_queue._Job, "wake", wake_or_raise)
    return fired


def _queue_two_puts(saver: Saver, results: dict) -> list:
    """Two threads' puts, queued for the calling thread's open batch (returns the threads)."""
    def call(name: str) -> None:
        try:
            results[name] = saver.put(name, {"n": 1})
        except BaseException as exc:  # noqa: BLE001
            results[name] = exc

    callers = [threading.Thread(target=call, args=(name,), daemon=True) for name in ("a", "b")]
    for t in callers:
        t.start()
    with saver._waiting_cond:
        assert saver._waiting_cond.wait_for(lambda: len(saver._jobs) == 2, timeout=60)
    return callers


def test_an_interrupted_hand_over_does_not_leave_the_new_leader_waiting(db_path, hang_detector,
                                                                         monkeypatch):
    """The batch's end hands the queue to its first job (lead = True) and the exception lands
    before that job is woken: the job is out of the queue and unclaimed, so its caller's poll
    can neither withdraw it nor see a batch end. It must fall back to the lock path (costing
    QUEUE_POLL), not poll forever."""
    hang_detector(120)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 0.05)
    monkeypatch.setattr(write_path, "MAX_BATCH", 1)  # the leader's batch is full: none runs
    fired = _raise_once_in_wake(monkeypatch, lambda job: job.lead)
    results: dict = {}
    with Saver(db_path) as saver:
        with pytest.raises(Injected):  # the leader's own thread gets it: documented
            with saver.transaction():
                saver.put("lead", {"n": 0})
                callers = _queue_two_puts(saver, results)
        assert fired == ["putting a checkpoint"]
        for t in callers:
            t.join(20)  # 400 polls: a caller still waiting will never be answered
        stuck = [t.name for t in callers if t.is_alive()]
        assert not stuck, f"a queued caller was never answered: {stuck} {results}"
        assert not any(isinstance(r, BaseException) for r in results.values()), results
        assert saver.get("a").checkpoint_id == results["a"].checkpoint_id
        assert saver.get("b").checkpoint_id == results["b"].checkpoint_id
        assert saver._jobs == [] and not saver._jobs_open


def test_an_interrupted_close_does_not_leave_queued_callers_waiting(db_path, hang_detector,
                                                                    monkeypatch):
    """close() empties the queue, then wakes each job; an exception in the closing thread
    after the first job was taken out leaves the others out of the queue, unclaimed, never
    woken. Their callers must still get SaverClosedError."""
    hang_detector(120)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 0.05)
    monkeypatch.setattr(write_path, "MAX_BATCH", 1)
    monkeypatch.setattr(write_queue, "hand_over", lambda saver: None)  # as in test_write_queue
    saver = Saver(db_path)
    results: dict = {}
    with saver.transaction():
        saver.put("lead", {"n": 0})
        callers = _queue_two_puts(saver, results)
    fired = _raise_once_in_wake(monkeypatch, lambda job: True)
    with pytest.raises(Injected):
        saver.close()
    assert fired
    for t in callers:
        t.join(20)
    stuck = [t.name for t in callers if t.is_alive()]
    assert not stuck, f"a queued caller was never answered: {stuck} {results}"
    assert all(isinstance(results[name], SaverClosedError) for name in "ab"), results
    with Saver(db_path) as check:
        assert check.get("a") is None and check.get("b") is None


def test_a_job_whose_claim_was_interrupted_is_never_run_by_a_later_batch(db_path, hang_detector,
                                                                         monkeypatch):
    """An exception inside claim() (in the leader, before its COMMIT), after it took the jobs
    out of the queue and marked the first claimed: that one's batch is rolled back and ends,
    so its caller is told "InterruptedTransitionError, nothing of it was written", and no later
    batch may run it; the other, neither queued nor claimed, is taken back by its caller and
    written through the lock path. (Found in review with the opposite order, which left the
    claimed jobs in the queue for the next batch to commit.)"""
    hang_detector(120)
    monkeypatch.setattr(write_queue, "QUEUE_POLL", 0.05)
    claim = write_queue.claim
    marked: list = []

    def interrupted_claim(saver, batch, room):
        if marked:
            return claim(saver, batch, room)
        with saver._waiting_cond:
            taken = saver._jobs[:room]
            del saver._jobs[:len(taken)]
            taken[0].batch = batch
            marked.extend(taken)
        raise Injected("landed in claim()'s marking loop")
    monkeypatch.setattr(write_queue, "claim", interrupted_claim)

    results: dict = {}
    answered = threading.Condition()

    def call(name: str) -> None:
        try:
            outcome = saver.put(name, {"n": 1})
        except BaseException as exc:  # noqa: BLE001
            outcome = exc
        with answered:
            results[name] = outcome
            answered.notify_all()

    # The first job is handed the queue by the leader's recovery (lead); its caller is slow
    # to get going (any scheduling allows it): the other job's caller is answered first.
    wake = write_queue._Job.wake

    def slow_lead(job):
        if job.lead:
            with answered:
                answered.wait_for(lambda: len(results) == 1, timeout=30)
        wake(job)
    monkeypatch.setattr(write_queue._Job, "wake", slow_lead)

    with Saver(db_path) as saver:
        with pytest.raises(Injected):
            with saver.transaction():
                saver.put("lead", {"n": 0})
                callers = [threading.Thread(target=call, args=(name,), daemon=True)
                           for name in ("a", "b")]
                for t in callers:
                    t.start()
                with saver._waiting_cond:
                    assert saver._waiting_cond.wait_for(lambda: len(saver._jobs) == 2, 60)
        for t in callers:
            t.join(30)
        assert not any(t.is_alive() for t in callers), results
        assert len(marked) == 2
        for name, outcome in results.items():
            stored = saver.get(name)
            if isinstance(outcome, InterruptedTransitionError) and \
                    not getattr(outcome, "maybe_committed", False):
                assert stored is None, f"{name}: told nothing was written, yet committed"
            elif isinstance(outcome, BaseException):
                pytest.fail(f"{name}: unexpected {outcome!r}")
            else:
                assert stored is not None and stored.checkpoint_id == outcome.checkpoint_id
        assert saver.get("lead") is None  # the leader's batch was rolled back
        assert saver._jobs == [] and not saver._jobs_open


def _batch_with_a_failing_job(saver: Saver, doing: str, body) -> dict:
    """test_group_commit.run_batch with three queued writes: a put ("good"), ``body`` as one
    transition ("bad") and a log event ("log"); every caller's outcome, the leader's too."""
    from test_group_commit import run_batch
    calls = {"good": lambda: saver.put("good", {"n": 1}),
             "bad": lambda: saver._atomically(doing, body),
             "log": lambda: saver.append_log("good", "event")}
    results = run_batch(saver, calls)
    assert set(results) == {"lead", *calls}, results
    return results


def test_an_io_error_in_a_queued_job_fails_the_whole_batch_and_shuts_the_saver(db_path,
                                                                              hang_detector):
    """A job's I/O error (saver._fail while the leader owns the connection): nothing of the
    batch is committed, every caller raises DatabaseIOError (none returns), nobody hangs, and
    the Saver is shut down."""
    import apsw

    from sqlitesaver import DatabaseIOError
    hang_detector(120)
    saver = Saver(db_path)

    def failing_body():
        raise apsw.exception_for(apsw.SQLITE_IOERR_WRITE)
    results = _batch_with_a_failing_job(saver, "a failing write", failing_body)
    for name in ("good", "bad", "log"):
        assert isinstance(results[name], DatabaseIOError), results
    assert isinstance(results["lead"], DatabaseIOError), results
    with pytest.raises(SaverClosedError):
        saver.put("after", {"n": 1})
    saver.close()
    with Saver(db_path) as check:
        assert check.get("good") is None and check.get("lead") is None
        assert list(check.read_log("good")) == []


def test_a_queued_job_whose_error_rolled_the_whole_batch_back_fails_every_caller(
        db_path, hang_detector):
    """SQLite rolls the whole transaction back on some errors (a full disk): a job's failure
    then takes the batch's other work with it, so no caller may return normally, and the
    Saver writes again afterwards."""
    import apsw

    from sqlitesaver import DiskFullError
    hang_detector(120)
    with Saver(db_path) as saver:
        def full_disk():
            saver._writer.execute("ROLLBACK")  # what SQLite does on some SQLITE_FULL
            raise apsw.exception_for(apsw.SQLITE_FULL)
        results = _batch_with_a_failing_job(saver, "a write on a full disk", full_disk)
        returned = [name for name, r in results.items() if not isinstance(r, BaseException)]
        assert returned == [], results
        assert isinstance(results["bad"], DiskFullError), results
        assert saver.get("lead") is None and saver.get("good") is None, results
        assert list(saver.read_log("good")) == []
        assert saver.put("after", {"n": 1}) and saver._jobs == [] and not saver._jobs_open


def test_a_write_reentering_the_leader_between_queued_jobs_waits_for_the_commit(
        db_path, hang_detector, monkeypatch):
    """The protocol's own design (_Transaction._leave, queue.submit): a write re-entering the
    leader's thread from a finalizer during its gathering joins the batch as a member and
    returns only after the COMMIT. While the leader runs queued jobs, saver._owner is the
    leader's thread, so such a write (here: a finalizer run as the first job's run() returns)
    is nested as a savepoint straight into the batch and returns at once: when the COMMIT
    then fails, a write that returned normally was never committed."""
    import apsw

    from test_group_commit import run_batch
    hang_detector(120)
    saver = Saver(db_path)
    finalizer: dict = {}
    run = write_queue.run

    def run_then_finalizer(saver_, job, conn, batch):
        run(saver_, job, conn, batch)
        if not finalizer:  # a __del__ that logs, collected as run() returns
            try:
                finalizer["outcome"] = saver.append_log("fin", "collected")
            except BaseException as exc:  # noqa: BLE001
                finalizer["outcome"] = exc
    monkeypatch.setattr(write_queue, "run", run_then_finalizer)

    def failing_commit():
        raise apsw.exception_for(apsw.SQLITE_IOERR_FSYNC)
    monkeypatch.setattr(saver, "_commit_step", failing_commit)  # the Saver's COMMIT step
    calls = {"a": lambda: saver.put("a", {"n": 1}), "b": lambda: saver.put("b", {"n": 2})}
    results = run_batch(saver, calls)
    assert all(isinstance(r, BaseException) for r in results.values()), results
    saver.close()
    with Saver(db_path) as check:
        committed = bool(list(check.read_log("fin")))
    assert "outcome" in finalizer
    assert committed or isinstance(finalizer["outcome"], BaseException), \
        f"the finalizer's write returned {finalizer['outcome']!r} yet was never committed"
