"""The write queue: the library's own short transitions (``put`` without files, ``put_writes``,
``append_log``) handed to the thread that holds the write connection, instead of each caller
taking the connection in turn (issue #15).

While the queue is open (from the moment a batch's leader, holding the write lock, is about
to run its ``BEGIN IMMEDIATE``, to the end of the last batch that finds something queued), a
caller of one of these operations does not wait for the write lock: it queues a :class:`_Job`
(the storage step, a function of the write connection) and sleeps once. The batch's leader
runs the queued jobs in its own thread, each under its own ``SAVEPOINT member`` (a job that
fails is rolled back alone and its caller gets its own exception), COMMITs once for all of
them and wakes their callers.
A caller wakes once per transition, and no caller takes the write lock: measured on 2 cores
(bench/run.py, bench/graph_cpu.py) the lock's hand-offs between threads, a context switch
each, were what a batch member cost beyond its statements. A lone writer finds no batch open
and writes as before (no queue, no waiting).

Guarantees (the same as the lock path's, :mod:`sqlitesaver.sqlite.transaction`):

* A job's caller returns only if the job ran to its RELEASE (``stored``) in a batch whose
  COMMIT returned (``batch.committed``): acknowledgement stays positive.
* A job that raised was rolled back to its savepoint; its caller gets that exception.
* Every queued job is run, or handed back to its caller, who then writes through the lock path
  itself: the thread that ends a batch either wakes the first queued caller to lead the next
  batch (its :attr:`_Job.lead`, the queue stays open for it) or closes the queue. Should an
  interruption break that hand-over, a caller that has waited :data:`QUEUE_POLL` withdraws its
  job (only if no batch claimed it) and takes the lock path: a broken hand-over costs batching,
  never liveness.

Lock order: the queue lives under ``saver._waiting_cond`` (or its lock ``saver._waiting_lock``
where nobody is notified; level 2 of the order written in
:class:`~sqlitesaver.sqlite.transaction._Transaction`), taken alone or under ``saver._lock``,
never held while waiting for another thread. A job's ``done`` lock is not a lock in that sense:
only its caller waits on it, holding nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import apsw

# The modules, not their names: they import this one (cycles resolved at call time).
from . import failure
from . import transaction as write_path

if TYPE_CHECKING:
    from .saver import SqliteFileSaver
    from .transaction import _Batch, _Transaction

#: Seconds a queued caller waits before it checks that its job is still in someone's hands; a
#: job nobody claimed by then is withdrawn and written by its caller through the lock path.
#: Reached only if a hand-over was interrupted, or a batch takes longer than this (a slow
#: fsync, a user's transaction() block, a leader's BEGIN waiting out another process's lock):
#: then the caller waits for the lock as it would have.
QUEUE_POLL = 0.25


class _Job:
    """One queued transition: ``work(conn)`` runs inside the leader's batch.

    Set by the thread that claims it (holding ``saver._lock``): ``batch`` (claimed: it will run
    in that batch, or never), then ``stored`` once its RELEASE returned, or ``error``. Set by
    the thread that hands it back (holding ``saver._waiting_cond``): ``lead`` (write through
    the lock path, and lead the queue's next batch). ``done`` is released once, when one of
    those is final."""

    __slots__ = ("work", "doing", "done", "batch", "stored", "result", "error", "lead")

    def __init__(self, work: Callable[[apsw.Connection], Any], doing: str) -> None:
        self.work = work
        self.doing = doing
        self.done = threading.Lock()
        self.done.acquire()  # released by whoever settles the job
        self.batch: _Batch | None = None
        self.stored = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.lead = False

    def wake(self) -> None:
        try:
            self.done.release()
        except RuntimeError:  # woken already (a batch's end may run twice, see failure.abandon)
            pass


def submit(saver: SqliteFileSaver, doing: str, work: Callable[[apsw.Connection], Any],
           transaction: Callable[[SqliteFileSaver, str], _Transaction]) -> Any:
    """Run ``work(conn)`` as one transition and return its result once it is committed:
    queued while the queue is open (a batch is open, or the queue was handed to its next
    leader), else in a ``transaction`` of the caller's own (the lock path)."""
    me = threading.get_ident()
    batch = saver._batch
    # Never queued for this thread's own batch (a nested write; or a write re-entering its
    # leader from a signal handler or finalizer): it would wait for itself. Queued also
    # between a batch's end and its hand-over's batch: taking the lock path there made a
    # third of the puts of 8 threads wait for the lock (bench/put_cpu.py, yappi).
    if saver._jobs_open and saver._owner != me and (batch is None or batch.leader != me):
        saver._check_writable(doing)
        job = _Job(work, doing)
        if _offer(saver, job):
            outcome = _await(saver, job)
            if outcome is not _RETRY:
                return outcome
    with transaction(saver, doing) as conn:
        return work(conn)


#: What _await returns when the caller is to write through the lock path itself.
_RETRY = object()


def _offer(saver: SqliteFileSaver, job: _Job) -> bool:
    """Queue ``job`` if a batch's leader will run it (the queue is open)."""
    # The Condition's lock itself, and notify_all() only if someone waits: a waiter enters
    # _waiters holding this lock, so the test is exact. Only tests wait here (for a transition
    # to be queued); the Condition's Python-level __enter__, __exit__ and notify_all() with
    # nobody waiting were ~6% of the profiled CPU of 8 threads' puts (yappi, which inflates
    # Python calls; a rate A/B was within its noise: session 27).
    with saver._waiting_lock:
        if not saver._jobs_open:
            return False
        saver._jobs.append(job)
        if saver._waiting_cond._waiters:  # type: ignore[attr-defined]
            saver._waiting_cond.notify_all()
        return True


def _await(saver: SqliteFileSaver, job: _Job) -> Any:
    """In the job's own thread, holding nothing: wait for the job's verdict."""
    try:
        while not job.done.acquire(timeout=QUEUE_POLL):
            batch = job.batch
            if batch is None:
                if _withdraw(saver, job):
                    return _RETRY
            elif batch.ended:
                break  # its end was interrupted before it woke this job
    except BaseException:
        # Interrupted while waiting (Ctrl-C): a job no batch claimed yet is never run. One
        # claimed may still commit: the caller gets the interruption, as documented for an
        # asynchronous exception in the caller's own thread.
        _withdraw(saver, job)
        raise
    if job.lead:
        return _RETRY  # handed back: this caller leads the next batch
    if job.error is not None:
        # Neither the job nor this frame may keep the error it raises: its traceback holds the
        # leader's frame of run() (whose `job` holds the error) and, raised here, this frame
        # (whose `error` would): reference cycles, garbage that only the cyclic GC frees, at
        # every write that arrives before its checkpoint (LangGraph's async durability).
        error, job.error = job.error, None
        try:
            if isinstance(error, apsw.Error):
                raise saver._translate(error, job.doing) from error
            raise error
        finally:
            error = None
    batch = job.batch
    if batch is None:
        return _RETRY  # never claimed (woken by close(): the lock path says why)
    # A job claimed but never stored: its leader was interrupted, or the whole batch failed,
    # before its work was released into the batch.
    failure.verdict(saver, job.doing, batch, job.stored and batch.committed)
    return job.result


def _withdraw(saver: SqliteFileSaver, job: _Job) -> bool:
    """Take ``job`` back out of the queue if no batch claimed it. A job no batch claimed
    that is no longer queued was handed back already (hand_over, close) by a thread
    interrupted before it woke the job's caller: it is this caller's too, else it would
    wait for a wake-up that never comes."""
    with saver._waiting_lock:
        if job.batch is not None:
            return False  # claimed: its batch's end answers it
        if job in saver._jobs:
            saver._jobs.remove(job)
        return True


def claim(saver: SqliteFileSaver, batch: _Batch, room: int) -> list[_Job]:
    """The leader, holding ``saver._lock`` with ``batch`` open: take up to ``room`` queued
    jobs into it, and list them in the batch, so that the batch's end wakes them.

    Taken out of the queue first, then marked claimed: an exception between the two leaves
    jobs neither queued nor claimed, which their callers take back (_withdraw) and write
    themselves; one marked but not yet listed finds its batch ended (_await). The other order
    would leave claimed jobs in the queue, for a later batch to run after their callers were
    told nothing of them was written (found in review)."""
    with saver._waiting_lock:
        jobs = saver._jobs
        taken = jobs[:room]
        del jobs[:len(taken)]
        for job in taken:
            job.batch = batch
        batch.jobs.extend(taken)
    return taken


def run_claimed(saver: SqliteFileSaver, batch: _Batch, conn: apsw.Connection, room: int
                ) -> bool:
    """The leader, holding the lock, in a deferred section: claim up to ``room`` queued jobs
    into ``batch`` and run each (:func:`run`). Returns whether any was queued."""
    taken = claim(saver, batch, room)
    for job in taken:
        if saver._batch is not batch:
            break  # the whole batch was rolled back: its end tells the rest
        run(saver, job, conn, batch)  # looked up at call time: tests' broken writers wrap it
    return bool(taken)


def run(saver: SqliteFileSaver, job: _Job, conn: apsw.Connection, batch: _Batch) -> None:
    """The leader, holding the lock, in a deferred section: run one claimed job in the batch,
    under ``SAVEPOINT member``. An ``Exception`` from its work is the job's own: rolled back
    to the savepoint and handed to its caller. Anything else (an asynchronous exception in the
    leader's thread) propagates: the leader's protocol then ends the batch (failure.abandon),
    and the job, never stored, is told it was interrupted.

    The leader's thread owns the connection, at depth 1, from the SAVEPOINT to the job's end:
    an I/O error in the job leaves the Saver's shutdown to the leader (SqliteFileSaver._fail),
    and a transaction the job's work opens (Saver._atomically) nests as a savepoint. Only then:
    a write re-entering the leader's thread between jobs (a finalizer) joins the batch as a
    member and waits for its COMMIT, as during the gathering wait (found in review)."""
    saver._owner, saver._depth = batch.leader, 1
    stored = False
    try:
        conn.execute("SAVEPOINT member")
        result = job.work(conn)
        conn.execute("RELEASE member")
        stored = True
    except Exception as exc:
        if write_path._in_transaction(conn):
            # (A ROLLBACK TO a SAVEPOINT that failed to open fails harmlessly: no other
            # member's savepoint exists while this thread holds the lock.)
            write_path._Transaction._rollback(conn, "member")
        _failed(saver, job, batch, exc, conn)
    saver._owner, saver._depth = None, 0
    if stored:
        job.result = result
        batch.members += 1
        job.stored = True  # last: acknowledged only once its work is in the batch and counted


def _failed(saver: SqliteFileSaver, job: _Job, batch: _Batch, exc: BaseException,
            conn: apsw.Connection) -> None:
    job.error = exc
    if isinstance(exc, apsw.IOError):
        saver._fail(exc, job.doing)  # the leader owns the connection: it shuts it down after
    if saver._batch is batch and not write_path._in_transaction(conn):
        # SQLite rolled the whole transaction back (a full disk, an I/O error): every stored
        # job's work is gone, and its caller must hear it (as _Transaction._leave does).
        saver._batch = None
        batch.error = exc if isinstance(exc, apsw.Error) else apsw.AbortError(
            "the batch's transaction was rolled back")


def hand_over(saver: SqliteFileSaver) -> None:
    """Holding ``saver._lock``, once no batch is open, in a deferred section (the ends of
    ``_finish`` and ``failure.abandon``): wake the first queued job's caller to write through
    the lock path and lead the next batch (the queue stays open for it), or close the queue if
    it is empty."""
    with saver._waiting_lock:
        jobs = saver._jobs
        if not jobs:
            saver._jobs_open = False
            return
        job = jobs.pop(0)
        job.lead = True
    job.wake()


def close(saver: SqliteFileSaver) -> None:
    """The Saver closes: close the queue and hand every queued job back to its caller (whose
    lock path then says the Saver is closed)."""
    with saver._waiting_cond:
        saver._jobs_open = False
        jobs, saver._jobs = saver._jobs, []
    for job in jobs:
        job.wake()
