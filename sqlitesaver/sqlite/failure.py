"""The write protocol's failure path: how a transition of :mod:`sqlitesaver.sqlite.transaction`
ends when its batch does not commit, or when an exception escapes the protocol itself.

Guarantees (the interruption half of the write protocol's, issue #13):

* After an exception that escaped a protocol section (one raised into the thread, or a bug),
  :func:`abandon` leaves a consistent state, worked out from what it can observe rather than
  from flags the exception may have left half-set: whether this thread holds the write lock
  (``RLock._is_owned``), whether the connection is in a transaction (``get_autocommit``) and
  which thread leads the open batch (``batch.leader``). It rolls back what was not committed,
  ends a batch this thread leads (its members are told: :func:`verdict`), hands the write
  queue to a next leader, and releases the lock: the Saver stays usable. An exception inside
  that handling too shuts the Saver down, saying to reopen it; one that comes before the
  handling began (a second Ctrl-C) only makes it begin again.
* After an I/O error (``saver._failure``), :func:`end_failed` rolls the open batch back and
  fails every member with that error; nothing more is committed on the connection.
* :func:`verdict` lets a member return only if its batch committed; otherwise it raises the
  batch's error, or :class:`~sqlitesaver.errors.InterruptedTransitionError` saying whether the
  batch may have committed (``maybe_committed``).

Its place: split out of :mod:`sqlitesaver.sqlite.transaction`, whose
:class:`~sqlitesaver.sqlite.transaction._Transaction` calls it (``__enter__`` and ``__exit__``
on an exception, ``__del__``, ``_leave`` and ``_finish`` after an I/O error, ``_await``), as
does the write queue (:mod:`sqlitesaver.sqlite.queue`). Each is called directly from where the
method it was ran, so the frames below ``__exit__`` are as many as before (the narrowed signal
deferral, :func:`~sqlitesaver.interrupts.within`, counts them); :func:`abandon` opens its own
deferred section. The functions take the transition (``tx``) or the Saver and work on the
Saver's state; rollbacks go through ``_Transaction._rollback``, looked up at call time (tests'
broken writers patch it there). Nothing here runs for a transition that commits, beyond
:func:`verdict`'s first test.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from .. import interrupts
from ..errors import InterruptedTransitionError, SaverError, translate
# The modules, not their names: both import this one (cycles resolved at call time).
from . import queue
from . import transaction as write_path

if TYPE_CHECKING:
    from .saver import SqliteFileSaver
    from .transaction import _Batch, _Transaction


#: How many times :func:`abandon` begins its recovery again after an exception other than
#: ``KeyboardInterrupt`` that came before the recovery began (another signal handler's, such as
#: a SystemExit from a SIGTERM handler). Bounded: an exception that comes there every time (a
#: RecursionError near the limit, a MemoryError) must shut the Saver down as any other failed
#: recovery does, not spin. A KeyboardInterrupt restarts it every time: each is a new signal,
#: and a Ctrl-C storm ends (with a 2 ms window at each start and SIGINT every 0-5 ms, the
#: storm test shut the Saver down within 3 restarts).
RECOVERY_RETRIES = 3


def abandon(tx: _Transaction, *, entering: bool) -> None:
    """An exception escaped the protocol (see ``_Transaction``'s docstring): leave a consistent
    state from what can be observed, then let the exception propagate.

    A second interruption that comes before the recovery's deferred section holds signals
    (a second Ctrl-C at its very start, which a GIL switch there makes milliseconds long on a
    loaded machine) has changed nothing yet: the recovery begins again (see
    :data:`RECOVERY_RETRIES`), and that interruption is raised once it is complete, in
    place of the first (as Python raises a handler's exception in place of the one being
    handled). Any other exception before the recovery completed (inside it: one raised into the
    thread, or a bug; or at the jump between two attempts, a single instruction) shuts the
    Saver down, as before."""
    saver = tx._saver
    recovered = False
    later: BaseException | None = None
    others = 0  # restarts after an exception other than KeyboardInterrupt
    try:
        while True:
            begun = False
            try:
                with interrupts.deferred():
                    begun = True  # signals are held from here to the section's end
                    _recover(tx, saver, entering)
                    recovered = True
                # (A signal that arrived meanwhile is raised here, by the deferred section's
                # end: the recovery is complete by then.)
            except BaseException as exc:
                if recovered or begun:
                    raise
                if not isinstance(exc, KeyboardInterrupt):
                    if others == RECOVERY_RETRIES:
                        raise
                    others += 1
                later = exc  # interrupted again before the recovery began: begin again
                continue
            break
        if later is not None:
            raise later
    except BaseException:
        if not recovered and saver._failure is None:
            # Interrupted again while recovering: no longer sure of anything.
            saver._failure = ("its write protocol was interrupted again while recovering "
                              "from an asynchronous exception; reopen it (every "
                              "transition that was acknowledged is committed)")
        if not recovered:
            # Nobody hands the queue over now: its callers are answered at once (the lock
            # path refuses them, the Saver being shut down), not after QUEUE_POLL (review,
            # session 27: writes queued during a BEGIN whose recovery then failed).
            queue.close(saver)
        raise
    finally:
        later = None  # no reference cycle through this frame's traceback


def _recover(tx: _Transaction, saver: SqliteFileSaver, entering: bool) -> None:
    """:func:`abandon`'s recovery, in its deferred section."""
    owned = saver._lock._is_owned()  # type: ignore[attr-defined]
    batch = tx._batch
    if not owned and not entering and batch is not None and \
            saver._batch is batch and batch.leader == tx._thread:
        # Its leader's gathering wait let go of the lock (Condition.wait) and the
        # exception came before it took it back: nobody else ends this batch.
        saver._lock.acquire()
        owned = True
    if tx._counted:  # interrupted while waiting for the lock, or just after
        tx._uncount()
    if owned:
        try:
            _abandon_holding_lock(tx, entering)
        finally:
            saver._batch_cond.notify_all()
            saver._lock.release()
    tx._open = False


def _abandon_holding_lock(tx: _Transaction, entering: bool) -> None:
    saver = tx._saver
    conn = saver._writer
    me = tx._thread
    if saver._owner == me:
        saver._owner = None
        saver._depth = 0
    open_batch = saver._batch
    mine = tx._batch  # the batch this member joined, if it got that far
    if saver._failure is not None:
        # An I/O error (at BEGIN, at a SAVEPOINT, in the work): the batch fails as a
        # whole; whoever leads it closes the Saver (this thread, if it leads or no batch
        # is open; else the leader, once woken).
        end_failed(tx, close=open_batch is None or open_batch.leader == me)
    elif open_batch is None:
        if write_path._in_transaction(conn):  # BEGIN ran, its batch was never made
            tx._rollback(conn, 0)
    elif open_batch.leader != me:
        # A member of another thread's batch: undo its own work if it is still in a
        # savepoint (if it was released into the batch, the batch may commit it: the
        # caller gets the interruption, which may or may not have been committed). With
        # no savepoint of this member open, ROLLBACK TO fails harmlessly: while this
        # thread holds the lock no other member's savepoint exists.
        tx._rollback(conn, "member")
    else:
        # This thread leads the open batch: nobody else will end it.
        saver._batch = None
        if open_batch.committing and not write_path._in_transaction(conn):
            pass  # the COMMIT ran; whether it succeeded is unknown: "maybe committed"
        else:
            open_batch.committing = False
            tx._rollback(conn, 0)
        open_batch.end()
    if mine is not None and mine.leader == me:
        # A batch this thread led that ended (committed, or failed) without its members
        # being told: tell them now; `committed` says which.
        mine.end()
    if saver._batch is None:
        queue.hand_over(saver)  # queued transitions need a next leader


def end_failed(tx: _Transaction, *, close: bool) -> None:
    """After an I/O error (``saver._failure``), holding the lock: roll the open batch
    back, if any, and fail every member with that error; ``close`` closes the Saver
    at once (else the batch's leader does once it has ended)."""
    saver = tx._saver
    batch = saver._batch
    if batch is not None:
        saver._batch = None
        batch.error = saver._failure_error
        tx._rollback(saver._writer, 0)
        batch.end()  # committed stays False: every member raises that error
    saver._batch_cond.notify_all()
    if close:
        saver._shut()


def verdict(saver: SqliteFileSaver, doing: str, batch: _Batch, committed: bool) -> None:
    """Once ``batch`` has ended, for one of its transitions: return only if ``committed``
    (its work is in the batch and the batch's COMMIT returned); else raise what its caller
    gets."""
    if committed:
        return
    error = batch.error
    if error is None:
        raise _interrupted(saver, doing, batch)
    # translate(), not saver._translate(): the leader already shut the Saver down after an
    # I/O error; each member gets its own exception object.
    if isinstance(error, SaverError):  # a COMMIT that timed out waiting for a lock
        raise copy.copy(error) from error.__cause__
    raise translate(error, saver._path, doing) from error


def _interrupted(saver: SqliteFileSaver, doing: str, batch: _Batch) -> InterruptedTransitionError:
    path = saver._path
    then = "Try again: the Saver stays usable." if saver._failure is None else \
        f"The Saver then shut down ({saver._failure}): open a new one."
    if batch.committing:
        error = InterruptedTransitionError(
            f"{doing} in {path!r}: the group commit carrying this transition was interrupted "
            "while its COMMIT ran (an asynchronous exception in the thread leading it), so it "
            f"may or may not be committed: re-read to find out. {then}", path=path)
        error.maybe_committed = True
        return error
    return InterruptedTransitionError(
        f"{doing} in {path!r}: the group commit carrying this transition was interrupted "
        "before its COMMIT (an asynchronous exception in the thread leading it, or its "
        f"shutdown) and rolled back; nothing of it was written. {then}", path=path)
