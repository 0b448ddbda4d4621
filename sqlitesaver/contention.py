"""Waiting for other connections' locks: one deadline per step, exponential backoff with jitter.

SQLite answers a lock held by another connection with SQLITE_BUSY. Before it returns that, it
calls the connection's busy handler, if any, for as long as the handler says to keep trying;
a few paths return the error without asking (SQLITE_LOCKED, which no busy handler ever sees; a
COMMIT that finds a reader in the way; a lock lost in a race). sqlitesaver covers both:

* Every connection gets a :class:`Waiter` as its busy handler. Each call sleeps a random time
  drawn from a range that doubles on each consecutive wait, from :data:`FIRST_DELAY` up to
  :data:`MAX_DELAY` (full jitter: writers in many processes spread out instead of retrying in
  lockstep), and the handler gives up once the deadline has passed.
* :func:`retry` runs one step (the opening recovery, ``BEGIN IMMEDIATE``, ``COMMIT``) again
  when SQLITE_BUSY or SQLITE_LOCKED still reaches it, with the same backoff and deadline, and
  raises :class:`~sqlitesaver.errors.BusyTimeoutError` naming the file and the time waited once
  the deadline has passed.

The deadline is ``busy_timeout`` seconds from the step's first wait, so time spent working (an
integrity check, a large insert) never counts as waiting. Only those two result codes are ever
retried: an I/O error is not, because after a failed fsync a retried one can report success on
data the kernel already dropped (the durability notes' "fsyncgate").

Why not SQLite's own ``busy_timeout``: its handler sleeps a fixed schedule (1, 2, 5, 10 ...
100 ms) with no jitter, it starts at a millisecond although a durable commit here takes about
0.2 ms, and it never sees SQLITE_LOCKED or a busy COMMIT.
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

import apsw

from . import log
from .errors import BusyTimeoutError, describe

__all__ = ["FIRST_DELAY", "MAX_DELAY", "Deadline", "Waiter", "attempt", "install", "retry",
           "timed_out", "waiter_of"]

#: Upper end of the first wait's range, in seconds: about one durable commit on a local SSD.
FIRST_DELAY = 0.0002
#: The range stops doubling here: a waiter polls at least this often.
MAX_DELAY = 0.02

#: The errors a retry may cure. BusyError: another connection holds the lock; LockedError: a
#: conflict inside this process that clears when the other statement finishes.
RETRYABLE = (apsw.BusyError, apsw.LockedError)

T = TypeVar("T")

_sleep = time.sleep      # tests replace it to see a wait happen, without timing anything
_clock = time.monotonic


class Deadline:
    """How long one step may still wait: ``timeout`` seconds from its first :meth:`pause`."""

    __slots__ = ("timeout", "started", "waits", "_rng")

    def __init__(self, timeout: float, rng: random.Random) -> None:
        self.timeout = timeout
        self.started: float | None = None
        self.waits = 0
        self._rng = rng

    def pause(self) -> bool:
        """Sleep one backoff step and return True, or return False at once if the deadline
        has passed (the caller then gives up)."""
        now = _clock()
        if self.started is None:
            self.started = now
        left = self.started + self.timeout - now
        if left <= 0:
            return False
        ceiling = min(MAX_DELAY, FIRST_DELAY * 2 ** min(self.waits, 16))
        self.waits += 1
        _sleep(min(left, self._rng.uniform(0, ceiling)))
        return True

    @property
    def waited(self) -> float:
        """Seconds since the first pause (0 if it never paused)."""
        return 0.0 if self.started is None else _clock() - self.started


class Waiter:
    """A connection's busy handler (``conn.set_busy_handler(waiter)``).

    Inside :meth:`step` (or :func:`retry`) every wait of the connection counts against that
    step's deadline; outside one, each locking event SQLite reports gets its own deadline.
    A connection is used by one thread at a time (the Saver's lock, or the reader pool), so
    one Waiter serves one connection without locking.
    """

    __slots__ = ("timeout", "waits", "_step", "_event", "_rng")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.waits = 0  # every pause ever taken on this connection, for Saver.stats()
        self._step: Deadline | _NoWait | None = None
        self._event: Deadline | None = None
        self._rng = random.Random()  # jitter only; nothing about correctness is random

    def deadline(self, timeout: float | None = None) -> Deadline:
        """A new deadline of ``timeout`` seconds (default: the connection's busy_timeout)."""
        return Deadline(self.timeout if timeout is None else timeout, self._rng)

    def __call__(self, count: int) -> bool:
        deadline = self._step
        if deadline is None:
            if count == 0 or self._event is None:  # SQLite restarts count at each new event
                self._event = self.deadline()
            deadline = self._event
        if deadline.pause():
            self.waits += 1
            return True
        return False


#: Each connection's Waiter, for settings() and stats(); APSW connections take no attributes.
_WAITERS: "weakref.WeakKeyDictionary[apsw.Connection, Waiter]" = weakref.WeakKeyDictionary()


def install(conn: apsw.Connection, timeout: float) -> Waiter:
    """Make a new :class:`Waiter` the busy handler of ``conn`` and return it."""
    waiter = Waiter(timeout)
    conn.set_busy_handler(waiter)
    _WAITERS[conn] = waiter
    return waiter


def waiter_of(conn: apsw.Connection) -> Waiter | None:
    """The Waiter :func:`install` gave ``conn``, if it is still that connection's."""
    return _WAITERS.get(conn)


def retry(waiter: Waiter, step: Callable[[], T], *, path: str, doing: str,
          timeout: float | None = None) -> T:
    """Run ``step()`` until it does not raise SQLITE_BUSY / SQLITE_LOCKED, or the deadline
    (``timeout``, default the busy_timeout, from the first wait) has passed; then raise
    :class:`BusyTimeoutError` naming ``path`` and the time waited. Every wait inside
    ``step`` through ``waiter`` counts against the same deadline. Anything else ``step``
    raises propagates at once, untouched: it is never retried."""
    deadline = waiter.deadline(timeout)
    outer, waiter._step = waiter._step, deadline
    gave_up = False
    try:
        while True:
            try:
                return step()
            except RETRYABLE as exc:
                if not deadline.pause():
                    gave_up = True
                    raise timed_out(exc, path, doing, deadline.waited) from exc
                waiter.waits += 1
    finally:
        waiter._step = outer
        if deadline.started is not None:  # it waited: long waits are logged (sqlitesaver.log)
            log.busy_wait(path, doing, deadline.waited, gave_up=gave_up)


class _NoWait:
    """The deadline of a first attempt that must not wait: its busy handler gives up at once."""

    __slots__ = ()

    @staticmethod
    def pause() -> bool:
        return False


_NO_WAIT = _NoWait()


def attempt(waiter: Waiter, step: Callable[[], T], *, path: str, doing: str) -> T:
    """:func:`retry` of ``step``, with the same deadline and errors, but cheaper when no lock
    is in the way (the usual case: no objects made for a deadline). A first run of ``step``
    has a busy handler that gives up at once; if it meets SQLITE_BUSY or SQLITE_LOCKED,
    :func:`retry` runs it again, now waiting, with a deadline that starts at its first wait,
    exactly as if the first run had not been made. Only for a step that SQLite leaves as it
    was when it reports BUSY or LOCKED (``BEGIN IMMEDIATE``; ``COMMIT``, after which the
    transaction stays open: sqlite.org/lang_transaction.html), since it runs twice then."""
    outer, waiter._step = waiter._step, _NO_WAIT
    try:
        return step()
    except RETRYABLE:
        pass  # someone holds the lock: wait for it, below
    finally:
        waiter._step = outer
    return retry(waiter, step, path=path, doing=doing)


def timed_out(exc: apsw.Error, path: str, doing: str, waited: float) -> BusyTimeoutError:
    """The error for a step that waited ``waited`` seconds for a lock and gave up."""
    codes = {"sqlite_result": getattr(exc, "result", None),
             "sqlite_extended_result": getattr(exc, "extendedresult", None)}
    if isinstance(exc, apsw.LockedError):
        why = ("It was a conflict on one of this Saver's own connections (SQLITE_LOCKED), not "
               "another process's lock: retry the call; if it persists, report it as a "
               "sqlitesaver bug.")
    else:
        why = ("Another connection held the lock: retry later, raise busy_timeout, or find "
               "the process holding a long transaction.")
    error = BusyTimeoutError(
        f"{path!r} stayed locked for {waited:.2f} s while {doing} ({describe(exc)}); "
        f"nothing was written. {why}", path=path, **codes)
    error.waited = waited
    return error
