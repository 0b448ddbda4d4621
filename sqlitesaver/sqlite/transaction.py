"""The SQLite write protocol: how a write of a :class:`~sqlitesaver.sqlite.saver.SqliteFileSaver`
reaches the database.

Every write method runs inside a :class:`_Transaction` on the Saver's one write connection (or
joins the calling thread's open :meth:`~sqlitesaver.sqlite.saver.SqliteFileSaver.transaction`, as
a SAVEPOINT). Transitions that arrive while one is open share its ``BEGIN IMMEDIATE ...
COMMIT`` (group commit: one fsync for the batch), each under its own SAVEPOINT, so one that
fails is rolled back alone.

Guarantees, for each call whichever batch carries it:

* A transition returns only after the COMMIT carrying it returned; with
  ``durability="full"`` it then survives a process crash, an OS crash and a power loss.
* A transition that raised was not committed, except in three cases where it may have been:
  :class:`~sqlitesaver.errors.DatabaseIOError` ("maybe committed"),
  :class:`~sqlitesaver.errors.InterruptedTransitionError` with ``maybe_committed`` set, and an
  asynchronous exception raised into the calling thread itself, which can land after the
  transition's work went into a batch that then commits.
* An exception arriving between any two bytecodes (Ctrl-C, ``PyThreadState_SetAsyncExc``)
  never acknowledges an uncommitted transition and never leaves another thread waiting; the
  Saver stays usable, or shuts itself down with an error saying to reopen it (issue #13; the
  design is :class:`_Transaction`'s docstring, the proof ``tests/test_interrupts.py``).
* After each commit the ``-wal`` is kept bounded (:data:`~sqlitesaver.sqlite.wal.WAL_LIMIT`),
  even while readers overlap.

The state this protocol works on (the write connection, its lock, the open batch, the
counters) belongs to the Saver; this module holds the code of a transition that commits (the
hot path: ``__enter__``, ``_join``, ``__exit__``, ``_leave``, ``_finish``). Two layers it
calls have homes of their own: :mod:`sqlitesaver.sqlite.failure`, the cold path of a
transition whose batch does not commit or that an exception interrupts, and
:mod:`sqlitesaver.sqlite.wal`, the checkpoint after each COMMIT that keeps the ``-wal``
bounded. The write queue (:mod:`sqlitesaver.sqlite.queue`) feeds the leader's batch. It
imports :mod:`sqlitesaver.sqlite.saver` for type checking only.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import apsw

from .. import contention, interrupts
from . import failure, queue, wal
from ..errors import BusyTimeoutError, SaverError, UsageError

if TYPE_CHECKING:
    from .saver import SqliteFileSaver

#: The only thread whose signal handlers :class:`~sqlitesaver.interrupts.deferred` defers (the
#: same value it compares with): in any other thread a deferral is an object made, entered and
#: ended to do nothing (Python runs signal handlers in the main thread only; exceptions raised
#: into a thread are never deferred, see the module docstring). So the hot path below runs its
#: deferred sections bare there, as sqlite/reads.py's _Read does: the same statements, minus
#: four calls per section, three sections per transition (~17,000 instructions per put,
#: bench/instructions.py --worker). LangGraph calls a checkpointer from its executor's threads.
#: tests/test_interrupts.py injects an exception at every line of a write from such a thread.
_MAIN_THREAD = interrupts._MAIN_THREAD

#: Most transitions one COMMIT carries; a bound on how long a batch's first caller waits.
MAX_BATCH = 64
#: Seconds at most a batch's leader waits for transitions queued for the connection to join
#: before it COMMITs. Joining takes a member's own work time (tens of microseconds), so the
#: bound is reached only if the queue count is wrong (see _Transaction: it is a hint).
GATHER_WAIT = 0.05

#: How a leader lets the threads that wait for the GIL run once before it COMMITs (see
#: _Transaction._finish): sleep(0) releases the GIL and takes it back. A name of its own so that
#: tests can see when it is called, and hand a transition to the batch right then.
_yield = functools.partial(time.sleep, 0)


class _Batch:
    """The open write transaction that concurrent transitions share (group commit).

    ``committed`` is the only thing that lets a member return normally: it is set on the line
    after COMMIT returned, so no interruption anywhere can acknowledge a transition whose
    COMMIT did not return (issue #13). ``committing`` is set just before the COMMIT: a batch
    that ends with it set and ``committed`` not set may or may not be on disk.

    ``done`` is made by the first member that joins the leader (:meth:`waitable`), holding the
    Saver's lock, as every :meth:`end` is: a leader alone, the usual case with one writer, has
    nobody to wake and makes no Event."""

    __slots__ = ("leader", "done", "error", "members", "committing", "committed", "jobs")

    def __init__(self, leader: int) -> None:
        self.leader = leader                  # the ident of the thread that began it
        self.done: threading.Event | None = None  # set once COMMIT (or the rollback) returned
        self.error: apsw.Error | SaverError | None = None  # why the whole batch failed
        self.members = 0                      # transitions whose work is in it
        self.committing = False
        self.committed = False
        self.jobs: list[queue._Job] = []  # queued transitions claimed by it (sqlite/queue.py)

    @property
    def ended(self) -> bool:
        done = self.done
        return done is not None and done.is_set()

    def waitable(self) -> threading.Event:
        """Holding the lock: the Event a joining member waits on for the batch's end."""
        done = self.done
        if done is None:
            done = self.done = threading.Event()
        return done

    def end(self) -> None:
        """Holding the lock: wake the members (if any joined) for the batch's end. A member
        that joins it after all (a batch left open by an interruption, see failure.abandon)
        gets an Event already set, never one that nothing will set."""
        done = self.done
        if done is None:
            self.done = _ENDED
        else:
            done.set()
        jobs = self.jobs
        for job in jobs:
            job.wake()
        # Each job names its batch (job.batch), so the list made every batch with jobs a
        # reference cycle (batch -> jobs -> job -> batch, with each job's closure and cells):
        # garbage only the cyclic GC frees. At 8 threads that was ~6 objects per call, and the
        # collections it caused ~4% of a graph run's instructions (research/
        # concurrency_benchmark.md, "Session 17"). Callers read job.batch, never batch.jobs,
        # once woken. Cleared only after every job was woken: a second end() (see
        # failure.abandon) after an interrupted one still wakes the rest.
        jobs.clear()


#: The ``done`` of every batch that has ended: set, so that nobody ever waits on it.
_ENDED = threading.Event()
_ENDED.set()


class _Transaction:
    """One state transition on the write connection (a SAVEPOINT when nested).

    Group commit: a transition that finds no open batch begins one (``BEGIN IMMEDIATE``) and
    leads it; transitions that arrive while it is open join it, each under its own SAVEPOINT,
    so a member that fails is rolled back alone and gets its own exception. The library's own
    short operations join by being queued (:mod:`sqlitesaver.sqlite.queue`): the leader runs
    their work in its thread; other transitions (``transaction()`` blocks, files, deletions)
    take the write lock and run their work in their own thread. The leader COMMITs once no
    other transition is queued or waiting for the lock (or :data:`MAX_BATCH` joined; after a
    shared batch, having first yielded the GIL once, see :meth:`_finish`), and
    every member returns only after that COMMIT returned: one fsync for the batch, the same
    guarantee for each call.

    Lock order (the only locks of the write path, outermost first; the LangGraph adapter adds
    only a leaf lock, see ``sqlitesaver/langgraph/_rendezvous.py``):

    1. ``saver._lock`` (an RLock; ``saver._batch_cond`` is a Condition on it): the write
       connection, ``_batch``, ``_owner``, ``_depth``. Taken once per outermost transition and
       never re-taken by a nested one (nesting is known from ``_owner``).
    2. ``saver._waiting_cond``: the ``_waiting`` counter and the write queue (``_jobs``,
       ``_jobs_open``); taken alone or under 1.
    3. ``saver._pool._lock`` (:class:`~sqlitesaver.sqlite.reads._ReaderPool`): the read
       connections only; taken alone or under 1, and never held while waiting (its waiters
       wait on their own events).

    No thread waits for another thread while holding 2 or 3; the only wait under 1 is the
    leader's gathering wait, which releases it (``Condition.wait``) and is bounded. A queued
    caller waits holding none of them (on its job's own lock, which only it waits on).

    Interruptions (issue #13): an exception may arrive between any two bytecodes (SIGINT's
    KeyboardInterrupt in the main thread; anything ``PyThreadState_SetAsyncExc`` raises).
    The protocol survives them by construction:

    * Acknowledgement is positive: a member returns only if ``batch.committed`` (see
      :class:`_Batch`); every other ending raises.
    * The protocol's sections that hold the write lock and change state run inside
      :class:`~sqlitesaver.interrupts.deferred`, so signals arrive just after them, never
      inside. Waits for other threads (the write lock, a batch's COMMIT) are outside, so
      Ctrl-C is never held up by another thread's work.
    * Any other exception escaping a section (one raised into the thread, or a bug) is
      handled by :func:`~sqlitesaver.sqlite.failure.abandon`, which works from what it can
      observe rather than from flags the interruption may have left half-set: whether this
      thread holds the lock (``RLock._is_owned``), whether the connection is inside a
      transaction (``get_autocommit``), and which thread leads the batch (``batch.leader``).
      It rolls back what was not committed, ends the batch if this thread leads it (its
      members get :class:`~sqlitesaver.errors.InterruptedTransitionError`), and releases the
      lock: the Saver stays usable. An exception inside that handling too shuts the Saver
      down (one before the handling began, such as a second Ctrl-C, only restarts it).
    * ``_waiting`` is a hint for the leader's gathering wait, which is bounded
      (:data:`GATHER_WAIT`): a wrong count costs batching, never correctness or liveness.
    """

    __slots__ = ("_saver", "_doing", "_depth", "_batch", "_thread", "_open", "_held", "_member",
                 "_counted")

    #: The library's own operations (put, put_writes, ...) keep signals deferred from the end
    #: of __enter__ to the end of __exit__: their bodies are a few statements, and CPython
    #: checks for signals at __exit__'s very first instruction, where no code can catch what
    #: it raises. A user's transaction() body is arbitrary code and stays interruptible.
    _hold_signals = True

    def __init__(self, saver: SqliteFileSaver, doing: str) -> None:
        self._saver = saver
        self._doing = doing
        self._batch: _Batch | None = None
        self._depth = 0
        self._open = False  # an outermost member whose __exit__ has not yet taken over
        self._member = False  # set by _join: this transition's work is in SAVEPOINT member
        self._counted = False  # in saver._waiting: taken out by __enter__ or by failure.abandon
        self._held: interrupts.deferred | None = None  # signals deferred across the body

    def __del__(self) -> None:
        # CPython checks for asynchronous exceptions at every function's entry, so one can
        # leave __exit__ before any line of it ran: this member's savepoint (or whole batch)
        # stays open and the write lock stays held, and this thread's next write would join
        # that transaction as a nested one that nothing ever commits. No code can guard its
        # own entry, but this object dies as that exception unwinds the `with` statement
        # (it lives on that frame's stack only): end the transition here, as failure.abandon
        # does for an exception anywhere else. Tested by tests/test_interrupts.py (the first
        # line of __exit__).
        if getattr(self, "_open", False) and threading.get_ident() == self._thread:
            try:
                failure.abandon(self, entering=False)
            except BaseException:  # in a finalizer: nowhere to raise to
                pass
        held = getattr(self, "_held", None)
        if held is not None:
            held.release_later()

    def __enter__(self) -> apsw.Connection:
        saver = self._saver
        saver._check_writable(self._doing)  # before the lock: a forked child raises, not waits
        me = self._thread = threading.get_ident()
        if saver._owner == me:  # nested in this thread's transition, which holds the lock
            if saver._depth == 0:
                # This thread holds the lock but is between transitions' states: beginning
                # one (BEGIN IMMEDIATE, whose busy wait runs Python code) or leaving one. A
                # write here comes from a signal handler or a finalizer; nesting it would
                # open a SAVEPOINT outside any batch and release the outer lock (review,
                # session 27).
                raise UsageError(
                    f"a write to {saver._path!r} was made from a signal handler or finalizer "
                    "while this thread was beginning or ending a transaction on it; nothing "
                    "of it was written. Write from another thread, or once the transaction "
                    "is open or over.", path=saver._path)
            return self._enter_nested()
        held: interrupts.deferred | None = None
        try:
            # Counted as waiting (the leader's gathering wait looks at the count) only if the
            # lock is taken: a lone writer finds it free.
            if not saver._lock.acquire(blocking=False):
                with interrupts.deferred():
                    with saver._waiting_cond:
                        # One statement: no exception can come between the two.
                        saver._waiting, self._counted = saver._waiting + 1, True
                        saver._waiting_cond.notify_all()
                saver._lock.acquire()  # the one wait here: interruptible, see failure.abandon
            if me != _MAIN_THREAD:
                # The section below, bare: see _MAIN_THREAD (a deferral would do nothing here).
                saver._owner = me  # an I/O error from here on: see SqliteFileSaver._fail
                if self._counted:
                    self._uncount()
                saver._check_usable()
                stale = saver._batch is None and _in_transaction(saver._writer)
            else:
                with interrupts.deferred():
                    saver._owner = me  # an I/O error from here on: see SqliteFileSaver._fail
                    if self._counted:
                        self._uncount()
                    saver._check_usable()
                    stale = saver._batch is None and _in_transaction(saver._writer)
            if stale:
                # An interruption between an earlier BEGIN and its batch left a transaction
                # that holds nobody's work.
                self._rollback(saver._writer, 0)
            if saver._batch is None:
                # The queue opens before BEGIN, not at _join: BEGIN IMMEDIATE gives the GIL
                # away, and every write arriving meanwhile found the queue closed and waited
                # for the lock, joining by a hand-off of the lock (context switches) instead
                # of being queued: 1.8 members of every batch of 8 threads' puts (yappi, ad
                # hoc; research/concurrency_benchmark.md, "Session 27"). What is queued is run
                # by this thread's _finish; if BEGIN fails, failure.abandon hands it over.
                saver._jobs_open = True
                # Outside the deferred section: it may wait for another process's lock (up to
                # busy_timeout), and Ctrl-C must not wait that long.
                self._begin()
            if me != _MAIN_THREAD:
                # No deferral across the body (see _MAIN_THREAD): self._held stays None.
                conn = self._join(me)
                return self._given(conn)
            held = interrupts.deferred()  # bound before it starts: see _end_deferrals
            held.__enter__()
            conn = self._join(me)
            given = self._given(conn)  # computed here: no line may follow the join
            if not self._hold_signals:
                # The body is the caller's: Ctrl-C reaches it, but not the start of __exit__
                # (see _exiting). A signal that came meanwhile: raised here.
                held.narrow(_exiting)
            self._held, held = held, None  # one statement: nothing can come between
            return given
        except BaseException:
            try:
                failure.abandon(self, entering=True)
            finally:
                # Even if abandon raised: a Ctrl-C that came while it recovered is held by its
                # own deferred section and raised at its end; the block's deferral, not yet in
                # self._held (nor ended by __del__), would stay active for good
                # (tests/test_block_signals.py, two Ctrl-Cs entering a block).
                self._end_deferrals(held)
            raise

    def _uncount(self) -> None:
        """No longer waiting for the lock (taken, or given up): out of ``saver._waiting``,
        once, by __enter__ or by failure.abandon: one count left behind would make every
        later leader gather for the full GATHER_WAIT, a lone writer's included."""
        saver = self._saver
        with saver._waiting_cond:
            saver._waiting, self._counted = saver._waiting - 1, False  # one statement

    def _given(self, conn: apsw.Connection) -> Any:
        """What ``with ... as`` binds: the connection (the Saver for transaction())."""
        return conn

    def _end_deferrals(self, held: interrupts.deferred | None) -> None:
        """On an exception leaving __enter__: end the deferral it began (still in ``held``,
        or already handed to ``self._held``); a signal that came meanwhile is raised here,
        in place of the exception being handled."""
        try:
            if held is not None:
                held.__exit__(None, None, None)
        finally:
            self._release_signals()

    def _release_signals(self) -> None:
        """End the deferral held across an operation's body: a signal that arrived meanwhile
        is raised here, once the protocol is done."""
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(None, None, None)

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, waiting out another process's write lock until the deadline
        (jittered backoff); past it, BusyTimeoutError names the file and the time waited."""
        saver = self._saver
        try:
            contention.attempt(saver._waiter, saver._begin_step,
                               path=saver._path, doing=self._doing)
        except apsw.Error as exc:
            raise saver._translate(exc, self._doing) from exc

    def _join(self, me: int) -> apsw.Connection:
        """Holding the lock, in a deferred section: become a member of the open batch (begun
        just now if there was none).

        A member that joins another thread's batch works inside ``SAVEPOINT member``, so that
        if it fails, it alone is rolled back. The leader needs none: it is the batch's only
        member until its work is done (others join only during its gathering wait, after
        :meth:`_leave`), so a failed leader rolls the whole transaction back (two statements
        fewer for every transition of a lone writer)."""
        saver = self._saver
        conn = saver._writer
        batch = saver._batch
        if batch is None:
            batch = saver._batch = _Batch(me)  # (the queue was opened before its BEGIN)
            self._member = False
        else:
            batch.waitable()
            try:
                conn.execute("SAVEPOINT member")
            except apsw.Error as exc:
                raise saver._translate(exc, self._doing) from exc
            self._member = True  # in a savepoint, whoever leads (see _leave)
        self._batch = batch
        saver._depth = 1
        self._open = True
        return conn

    def _enter_nested(self) -> Any:
        saver = self._saver
        held: interrupts.deferred | None = None
        try:
            if self._thread == _MAIN_THREAD:  # else none: see _MAIN_THREAD
                held = interrupts.deferred()  # bound before it starts: see _end_deferrals
                held.__enter__()
            depth = saver._depth
            saver._writer.execute(f"SAVEPOINT s{depth}")
            self._depth = depth
            saver._depth = depth + 1
            given = self._given(saver._writer)
            if held is not None and not self._hold_signals:
                held.narrow(_exiting)  # as in __enter__
            self._held, held = held, None  # one statement: nothing can come between
            return given
        except BaseException as exc:
            # Not yet nested as far as __exit__ knows (it is never called when __enter__
            # raised): a SAVEPOINT that ran stays inside the caller's transaction, empty,
            # and goes with it.
            self._end_deferrals(held)
            if isinstance(exc, apsw.Error):
                raise saver._translate(exc, self._doing) from exc
            raise

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        saver = self._saver
        if threading.get_ident() != self._thread:
            raise UsageError(
                f"a transaction on {saver._path!r} must end in the thread that began it; it "
                "is still open there (nothing was committed or rolled back).", path=saver._path)
        if self._depth > 0:
            try:
                return self._exit_nested(exc)
            finally:
                self._release_signals()
        batch = self._batch
        try:
            if self._thread != _MAIN_THREAD:
                # The section below, bare: see _MAIN_THREAD (a deferral would do nothing here).
                own = self._leave(batch, exc)
                self._open = False
                saver._lock.release()
            else:
                with interrupts.deferred():
                    own = self._leave(batch, exc)
                    # Released here, not in a finally inside _leave: an exception escaping
                    # _leave must find the lock still held, so that failure.abandon ends what
                    # _leave left open.
                    self._open = False
                    saver._lock.release()
        except BaseException:
            try:
                failure.abandon(self, entering=False)
            finally:  # even if abandon raised a signal held while it recovered (see __enter__)
                self._release_signals()
            raise
        if self._held is not None:  # (None in a worker thread: see _MAIN_THREAD)
            self._release_signals()  # before waiting for another thread's COMMIT: Ctrl-C works
        if own is not None:
            if isinstance(own, apsw.Error):
                raise saver._translate(own, self._doing) from own
            return  # the caller's own exception propagates
        if not batch.committed:  # (_await's own first test, without its call: a leader's is)
            self._await(batch)

    def _exit_nested(self, exc: BaseException | None) -> None:
        saver = self._saver
        if self._thread != _MAIN_THREAD:
            self._end_savepoint(exc)  # bare: see _MAIN_THREAD
        else:
            with interrupts.deferred():
                self._end_savepoint(exc)
        if isinstance(exc, apsw.Error):
            raise saver._translate(exc, self._doing) from exc

    def _end_savepoint(self, exc: BaseException | None) -> None:
        """In a deferred section (main thread): release this nested transition's SAVEPOINT,
        or roll it back if ``exc`` (or the release failed)."""
        saver = self._saver
        depth = self._depth
        conn = saver._writer
        saver._depth = depth
        if exc is None:
            try:
                conn.execute(f"RELEASE s{depth}")
                return
            except apsw.Error as release_exc:
                self._rollback(conn, depth)
                raise saver._translate(release_exc, self._doing) from release_exc
        self._rollback(conn, depth)

    def _leave(self, batch: _Batch, own: BaseException | None) -> BaseException | None:
        """Holding the lock, in a deferred section: end this member's part (its SAVEPOINT
        released into the batch, or rolled back if it failed), and lead the batch to its
        COMMIT if this thread began it. Returns the member's own error, if any."""
        saver = self._saver
        conn = saver._writer
        saver._depth = 0
        saver._owner = None
        if saver._failure is not None:
            # An I/O error inside this transition (or in another thread) shut the Saver
            # down: nothing more is committed on this connection, so the whole batch
            # fails, this member included even if it swallowed the error.
            failure.end_failed(self, close=False)
        leads = batch.leader == self._thread
        # Whether this transition's work is in SAVEPOINT member is what _join did, not who
        # leads: a write re-entering the leader's thread during its gathering wait (a signal
        # handler, a finalizer) joined as a member, in a savepoint, yet finishes the batch.
        member = self._member
        if own is None and saver._batch is batch:
            try:
                if member:
                    conn.execute("RELEASE member")
                batch.members += 1
            except apsw.Error as release_exc:
                own = release_exc
        if own is not None and saver._batch is batch:
            self._rollback(conn, "member" if member else 0)
        if saver._batch is batch and not _in_transaction(conn):
            # SQLite rolled the whole transaction back (after a full disk or an I/O
            # error): every member's work is gone, and they must hear it.
            saver._batch = None
            batch.error = own if isinstance(own, apsw.Error) else apsw.AbortError(
                "the batch's transaction was rolled back")
        if leads:
            self._finish(batch)
        else:
            saver._batch_cond.notify_all()
        return own

    def _await(self, batch: _Batch) -> None:
        """Outside the lock: wait for the batch to end; return only if it committed."""
        if batch.committed:
            return  # a leader's (its batch ended in its _finish), or a member's woken late
        done = batch.done  # a member's, made in _join
        if done is not _ENDED and done is not None:
            done.wait()  # interruptible: the caller then gets the interruption itself
        failure.verdict(self._saver, self._doing, batch, batch.committed)

    def _finish(self, batch: _Batch) -> None:
        """Leader only, holding the lock, in a deferred section: let waiting transitions
        join (for at most :data:`GATHER_WAIT`), then COMMIT.

        When the last batch was shared (more than one member, or transitions queued or
        waiting as it committed: ``saver._concurrent``), the leader with nothing queued
        yields the GIL once (:data:`_yield`) before it commits: a transition another thread
        is about to queue (a LangGraph graph's next write, from its executor's threads) joins
        this batch instead of waiting for its fsync and paying one of its own. Measured on the
        8-thread graph rows (ad hoc A/B, research/concurrency_benchmark.md, "Session 24"):
        1.05 -> 0.87 commits per invoke and +12% steps/s with durability "sync", no change
        with "async" or for 8 threads' puts (their batches are full already). A lone writer
        never yields (its batches have one member): the 1-thread rows pay only the hint.

        The cost of a yield that brings nobody (the hint was wrong): while other Python threads
        are runnable (CPU-bound work elsewhere in the process), giving the GIL away means
        waiting up to a switch interval (``sys.getswitchinterval()``, 5 ms by default) to get
        it back, with the write lock held and the batch's members waiting; a reviewer measured
        a put with one busy thread beside it at 26.0 ms against 20.9 without the yield. The
        COMMIT's fsync gives the GIL away in the same way once per batch already. A batch of
        one resets the hint, so a wrong hint costs one such wait, not one per batch."""
        saver = self._saver
        conn = saver._writer
        try:
            deadline = None
            yielded = not saver._concurrent  # at most one yield per batch, none if alone
            while batch.members < MAX_BATCH and saver._batch is batch:
                if saver._jobs and queue.run_claimed(saver, batch, conn,
                                                     MAX_BATCH - batch.members):
                    continue  # more may have been queued meanwhile
                if saver._waiting <= 0:
                    if not yielded:
                        yielded = True
                        _yield()
                        continue
                    break
                if deadline is None:
                    deadline = time.monotonic() + GATHER_WAIT
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                saver._batch_cond.wait(remaining)  # releases the lock: a waiting one joins
            if saver._failure is not None:
                failure.end_failed(self, close=False)  # an I/O error meanwhile: commit nothing
            if saver._batch is not batch:
                return  # already ended: rolled back under a failed member
            if batch.members == 0:
                self._rollback(conn, 0)  # nothing to commit: no fsync
                saver._batch = None
                return
            batch.committing = True
            try:
                contention.attempt(saver._waiter, saver._commit_step, path=saver._path,
                                   doing=self._doing)
            except (apsw.Error, BusyTimeoutError) as commit_exc:
                self._rollback(conn, 0)
                saver._batch = None
                batch.committing = False  # it raised: SQLite rolled it back, or we did
                batch.error = commit_exc
                if isinstance(commit_exc, apsw.IOError):
                    saver._fail(commit_exc, self._doing)
                return
            batch.committed = True  # the members' transitions are durable
            saver._batch = None
            saver._stats["commits"] += 1
            saver._stats["transitions"] += batch.members
            # (a hint, read unlocked: a wrong one costs one yield, see above, or one missed
            # join; after the counts, so that no line more comes between COMMIT and them)
            saver._concurrent = batch.members > 1 or bool(saver._jobs) or saver._waiting > 0
        finally:
            batch.end()
            if saver._lock._is_owned():  # type: ignore[attr-defined]  # see failure.abandon
                # A close() waiting for the batch to end. Only if someone waits: a waiter
                # enters _waiters holding the lock, as this thread does now, and notify_all()
                # with none is a no-op that costs two Python calls at every commit.
                if saver._batch_cond._waiters:  # type: ignore[attr-defined]
                    saver._batch_cond.notify_all()
                if saver._batch is None:
                    queue.hand_over(saver)  # what was queued meanwhile: the next batch
            if saver._failure is not None:
                saver._shut()
        wal.bound(saver)

    @staticmethod
    def _rollback(conn: apsw.Connection, depth: int | str) -> None:
        try:
            if depth == 0:
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
            elif not conn.get_autocommit():
                name = depth if isinstance(depth, str) else f"s{depth}"
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
        except apsw.Error:
            # The connection is closed or failed; the error that brought us here is the one
            # to report, and SQLite rolls back an unfinished transaction on close.
            pass


# A transition whose body is the caller's code (transaction() blocks, puts of files) keeps a
# deferral from __enter__ to the end of __exit__ narrowed to these frames: a signal arriving
# at the first instruction of __exit__ (CPython checks at every function's entry, and as each
# call returns), or at the start of a function it calls before its own deferred sections,
# would skip the whole exit and leave the transaction open and the write lock held; while the
# exception is kept (an interactive session keeps the last one), that thread's next write
# joined the open transaction, never committed, and other threads waited
# (tests/test_review_sqlite.py). Held back there, it is raised just after the exit.
_exiting = interrupts.within(frozenset(function.__code__ for function in (
    _Transaction.__exit__, _Transaction._exit_nested, _Transaction._release_signals)))


class _UserTransaction(_Transaction):
    """The public face of :meth:`SqliteFileSaver.transaction`: ``as`` gives the Saver, never the
    underlying connection."""

    __slots__ = ()
    _hold_signals = False  # the block is the caller's code: Ctrl-C must reach it

    def _given(self, conn: apsw.Connection) -> Any:
        return self._saver


class _FileTransaction(_Transaction):
    """A transition that stores files (``put(files=...)``, ``attach_files``): like the
    library's other operations, but signals are not deferred across its body, which may
    write gigabytes: Ctrl-C interrupts it, and the transition is rolled back."""

    __slots__ = ()
    _hold_signals = False


def _in_transaction(conn: apsw.Connection) -> bool:
    """Whether the connection is inside a transaction; False once it is closed (an I/O error
    closes the Saver's connections, and SQLite rolls back what was open)."""
    try:
        return not conn.get_autocommit()
    except apsw.Error:
        return False


def _begin_immediate(conn: apsw.Connection) -> Callable[[], Any]:
    """The BEGIN to retry. A partial of the connection's method, not a Python function: the
    same call, one frame fewer at every transaction (its result, a cursor, is unused)."""
    return functools.partial(conn.execute, "BEGIN IMMEDIATE")


def _commit(conn: apsw.Connection) -> Callable[[], None]:
    """A COMMIT to retry: SQLite keeps the transaction open after a busy COMMIT
    (sqlite.org/lang_transaction.html), so trying it again commits the same work."""
    def commit() -> None:
        if conn.get_autocommit():
            # Never reached while SQLite keeps its word; committing "nothing" would report
            # success for work that is gone.
            raise apsw.AbortError("the transaction ended before its COMMIT could be retried")
        conn.execute("COMMIT")
    return commit
