"""Pending writes that arrive before their checkpoint, stored in that checkpoint's transaction.

With ``durability="async"`` (LangGraph's default) the pregel loop submits a checkpoint's put and
its tasks' ``put_writes`` to a thread pool without ordering them, and the writes often reach the
store first (more than half of them in a chain graph, measured). The Saver refuses writes for a
checkpoint that does not exist, since they would belong to nothing. So such a call parks its
writes here and waits; the put of that checkpoint takes every job parked for it (before it
writes anything: with none, it runs as one plain transaction) and stores them inside its own
transaction, and settles the waiters once that transaction has committed (or failed). A
``put_writes`` call therefore still returns only after its writes are durable, and the two
usually arrive in one COMMIT (one fsync) instead of two.

Lock order (the whole adapter and core; see also ``sqlitesaver/sqlite/transaction.py``): this
module's lock is a *leaf*. It is held only to update the tables below, never while calling the
Saver, waiting for an event, or settling a job. (It used to be held from a put's ``take``
until its COMMIT; with group commit that COMMIT waits for other threads' transitions, one of
which could be another put waiting for this lock: a deadlock, issue #14.)

Without that lock held across the COMMIT, a job can arrive after a put has taken the jobs parked
for its checkpoint and before that put has committed. Such a *late* job is recorded against the
put in flight and settled ``RETRY`` when the put ends: its caller then stores the writes itself,
which succeeds once the checkpoint is committed (or parks again if the put failed). No polling:
waiters block on an Event, or on a future for coroutines, until they are settled or their
deadline passes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Key", "Parked", "Rendezvous", "STORED", "FAILED", "RETRY"]

#: (thread_id, checkpoint_ns, checkpoint_id)
Key = tuple[str, str, str]
#: Outcomes: stored in its put's committed transaction; its put failed (try on your own); it
#: arrived while its put was in flight (try on your own: the checkpoint is probably there now).
STORED, FAILED, RETRY = "stored", "failed", "retry"


class Parked:
    """One ``put_writes`` call waiting for its checkpoint. ``store()`` writes it inside the
    transaction of whoever calls it. ``outcome`` is None until settled (see the outcomes)."""

    __slots__ = ("key", "store", "outcome", "_event", "_loop", "_future")

    def __init__(self, key: Key, store: Callable[[], None], *,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.key = key
        self.store = store
        self.outcome: str | None = None
        self._event = threading.Event()
        self._loop = loop
        self._future = None if loop is None else loop.create_future()

    def settle(self, outcome: str) -> None:
        self.outcome = outcome
        self._event.set()
        if self._future is not None:
            try:
                self._loop.call_soon_threadsafe(_resolve, self._future)
            except RuntimeError:  # that loop is closed: nobody awaits this job any more
                pass

    def wait(self, deadline: float | None) -> bool:
        """Block until settled (True) or until the ``time.monotonic()`` deadline (False)."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._event.wait(timeout)

    async def wait_async(self, deadline: float | None) -> bool:
        """:meth:`wait` for a job made with ``loop=``: suspends the coroutine, not the loop."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except asyncio.TimeoutError:
            return self.outcome is not None
        return True


class _Flight:
    """Puts of one checkpoint between their ``take`` and their end, and the jobs that arrived
    meanwhile."""

    __slots__ = ("puts", "late")

    def __init__(self) -> None:
        self.puts = 0
        self.late: list[Parked] = []


class Rendezvous:
    """Where early writes wait for their checkpoint's put."""

    #: Keys of recently committed puts kept to answer "did it commit meanwhile?"; a key that
    #: fell out only costs its waiter a wait until its deadline, then a final attempt.
    RECENT = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a leaf: see the module docstring
        self._parked: dict[Key, list[Parked]] = {}
        self._flights: dict[Key, _Flight] = {}
        self._recent: OrderedDict[Key, None] = OrderedDict()

    def park(self, job: Parked, *, trust_recent: bool = True) -> bool:
        """Park ``job`` for its checkpoint's put: True. False, parking nothing, if that put
        committed since (``trust_recent``): the caller should simply try again."""
        with self._lock:
            if trust_recent and job.key in self._recent:
                return False
            flight = self._flights.get(job.key)
            if flight is not None:
                flight.late.append(job)  # settled RETRY when that put ends
            else:
                self._parked.setdefault(job.key, []).append(job)
            return True

    def withdraw(self, job: Parked) -> bool:
        """Unpark a job whose deadline passed: True; False if a put has already taken it
        (its outcome is then imminent: wait for it)."""
        with self._lock:
            waiting = self._parked.get(job.key)
            if waiting is not None and job in waiting:
                waiting.remove(job)
                if not waiting:
                    del self._parked[job.key]
                return True
            flight = self._flights.get(job.key)
            if flight is not None and job in flight.late:
                flight.late.remove(job)
                return True
            return False

    def storing(self, key: Key) -> "_Storing":
        """Around a put's whole transaction (which must be the outermost one, so that its end
        is its COMMIT): ``with rendezvous.storing(key) as take:``, where ``take()``, called by
        the put inside the block, returns the jobs parked for it (and from then on, jobs that
        arrive are recorded as late). When the block ends the taken jobs are settled STORED (it
        exited normally: committed) or FAILED, and the late ones RETRY."""
        return _Storing(self, key)


class _Storing:
    """:meth:`Rendezvous.storing`'s context manager: a class, not a generator, as it runs once
    per put (``contextlib``'s wrapper cost more than the bookkeeping itself)."""

    __slots__ = ("_rendezvous", "_key", "_taken", "_flight")

    def __init__(self, rendezvous: Rendezvous, key: Key) -> None:
        self._rendezvous = rendezvous
        self._key = key
        self._taken: list[Parked] = []
        self._flight: _Flight | None = None

    def __enter__(self) -> Callable[[], list[Parked]]:
        return self.take

    def take(self) -> list[Parked]:
        rendezvous, key = self._rendezvous, self._key
        with rendezvous._lock:
            if self._flight is None:
                flight = self._flight = rendezvous._flights.get(key)
                if flight is None:
                    flight = self._flight = rendezvous._flights[key] = _Flight()
                flight.puts += 1
            self._taken.extend(rendezvous._parked.pop(key, ()))
        return list(self._taken)

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        outcome = FAILED if exc_type is not None else STORED
        rendezvous, key, flight = self._rendezvous, self._key, self._flight
        late: list[Parked] = []
        with rendezvous._lock:
            if flight is not None:
                flight.puts -= 1
                if flight.puts == 0:
                    del rendezvous._flights[key]
                    late = flight.late
            if outcome == STORED:
                recent = rendezvous._recent
                recent[key] = None
                recent.move_to_end(key)
                while len(recent) > rendezvous.RECENT:
                    recent.popitem(last=False)
        for job in self._taken:
            job.settle(outcome)
        for job in late:
            job.settle(RETRY)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
