"""Pending writes that arrive before their checkpoint, stored in that checkpoint's transaction.

With ``durability="async"`` (LangGraph's default) the pregel loop submits a checkpoint's put and
its tasks' ``put_writes`` to a thread pool without ordering them, and the writes often reach the
store first (more than half of them in a chain graph, measured). The Saver refuses writes for a
checkpoint that does not exist, since they would belong to nothing. So such a call parks its
writes here and waits; the put of that checkpoint takes every job parked for it and stores it
inside its own transaction, and wakes the waiters only once that transaction has committed. A
``put_writes`` call therefore still returns only after its writes are durable, and the two
arrive in one COMMIT (one fsync) instead of two.

The put holds this module's lock from taking the jobs until its COMMIT has returned, so a job is
parked either before the take (and is stored by that put) or after the COMMIT (and then its
checkpoint is listed as recently put: the caller tries again instead of waiting). No polling:
waiters block on an Event, or on a future for coroutines, until they are settled or their
deadline passes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Key", "Parked", "Rendezvous"]

#: (thread_id, checkpoint_ns, checkpoint_id)
Key = tuple[str, str, str]
STORED, FAILED = "stored", "failed"


class Parked:
    """One ``put_writes`` call waiting for its checkpoint. ``store()`` writes it inside the
    transaction of whoever calls it. ``outcome`` is None until a put settles it: STORED (its
    put committed) or FAILED (its put raised: the caller tries again on its own)."""

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


class Rendezvous:
    """Where early writes wait for their checkpoint's put."""

    #: Keys of recently committed puts kept to answer "did it commit meanwhile?"; a key that
    #: fell out only costs its waiter a wait until its deadline, then a final attempt.
    RECENT = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parked: dict[Key, list[Parked]] = {}
        self._recent: OrderedDict[Key, None] = OrderedDict()

    def park(self, job: Parked, *, trust_recent: bool = True) -> bool:
        """Park ``job`` for its checkpoint's put: True. False, parking nothing, if that put
        committed since (``trust_recent``): the caller should simply try again."""
        with self._lock:
            if trust_recent and job.key in self._recent:
                return False
            self._parked.setdefault(job.key, []).append(job)
            return True

    def withdraw(self, job: Parked) -> bool:
        """Unpark a job whose deadline passed: True; False if a put has already taken it
        (its outcome is then imminent: wait for it)."""
        with self._lock:
            waiting = self._parked.get(job.key, [])
            if job in waiting:
                waiting.remove(job)
                if not waiting:
                    del self._parked[job.key]
                return True
            return False

    @contextmanager
    def storing(self, key: Key) -> Iterator[Callable[[], list[Parked]]]:
        """Around a put's whole transaction: yields ``take``, which the put calls inside the
        transaction, after writing the checkpoint, to get the jobs parked for it. The lock is
        held from ``take`` until the block has ended (the transaction committed or rolled
        back); then the jobs are settled accordingly."""
        taken: list[Parked] = []
        locked = False

        def take() -> list[Parked]:
            nonlocal locked
            self._lock.acquire()
            locked = True
            taken.extend(self._parked.pop(key, ()))
            return list(taken)

        outcome = FAILED
        try:
            yield take
            outcome = STORED
        finally:
            if not locked:
                self._lock.acquire()
            try:
                if outcome == STORED:
                    self._recent[key] = None
                    self._recent.move_to_end(key)
                    while len(self._recent) > self.RECENT:
                        self._recent.popitem(last=False)
            finally:
                self._lock.release()
            for job in taken:
                job.settle(outcome)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
