"""psycopg_pool's ConnectionPool as the PostgreSQL engine uses it (one per Saver, opened by
:class:`~sqlitesaver.postgres.pool.Connections`): its waiters interruptible by Ctrl-C
(:func:`interruptible_waits`), its reconnection backoff capped (:data:`RECONNECT_DELAY_MAX`),
its idle connections lent most recently used first (:class:`_IdleConnections`), and its
finaliser safe at exit and after a fork (:mod:`.lifetime`). Each works around a behaviour of
psycopg_pool 3.2-3.3 that lost connections, hung or cost time, named in its docstring with the
test that shows it. Split out of pool.py, which lends the connections.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from . import lifetime

__all__ = ["interruptible_waits", "pool_class", "RECONNECT_DELAY_MAX"]


def interruptible_waits() -> None:
    """Make a caller interrupted while it waits in the pool for a connection (Ctrl-C: a
    KeyboardInterrupt raised inside the wait) leave the pool's queue as one that timed out
    does. psycopg_pool's sync waiter (``WaitingClient.wait``, 3.2-3.3) records only an
    ``Exception`` (its module's ``CLIENT_EXCEPTIONS``); a KeyboardInterrupt left it in the
    queue looking alive, so the next connection given back was handed to it and lost for good:
    with every connection lost so, every call got BusyTimeoutError
    (tests/test_postgres_engine.py, Ctrl-C while waiting). With ``BaseException`` there, the
    waiter records the interruption and refuses what comes later, and ``getconn`` gives back a
    connection that arrived just as it was interrupted: what the async pool already does for
    CancelledError. A process-wide setting of psycopg_pool's, and a fix for any pool of the
    process. What no setting reaches: an interruption in the few lines between the waiter
    joining the queue and its wait."""
    from psycopg_pool import pool as pool_module

    if getattr(pool_module, "CLIENT_EXCEPTIONS", None) is Exception:
        pool_module.CLIENT_EXCEPTIONS = BaseException


#: The longest psycopg_pool waits between two attempts to reconnect a pooled connection.
RECONNECT_DELAY_MAX = 1.0


def pool_class() -> type:
    """The engine's pool class, made once, on first use: psycopg_pool's ConnectionPool with
    its finaliser made safe at exit and after a fork
    (:func:`~sqlitesaver.postgres.lifetime.finalised_safely`) and, from
    :func:`_reconnecting_pool_class`, its reconnection backoff capped."""
    global _POOL_CLASS
    if _POOL_CLASS is None:
        _POOL_CLASS = lifetime.finalised_safely(_reconnecting_pool_class())
    return _POOL_CLASS


_POOL_CLASS: type | None = None


def _reconnecting_pool_class() -> type:
    """psycopg_pool's ConnectionPool, its reconnection backoff capped at
    :data:`RECONNECT_DELAY_MAX`. Its own doubles from 1 s up to its ``reconnect_timeout`` (5
    min): after an outage of a minute its next attempt could come a minute after the server was
    back, and until then the connection it was reconnecting was missing, every call waiting for
    it in vain (tests/test_postgres_engine.py, a long outage). A capped delay costs a server
    that is down one refused connection attempt a second per missing connection. The override
    is of a method private to psycopg_pool (3.2-3.3); where it is not there, the pool is
    psycopg_pool's own."""
    from psycopg_pool import ConnectionPool

    try:
        from psycopg_pool.base import AttemptWithBackoff
    except ImportError:  # pragma: no cover - a psycopg_pool that moved it
        return ConnectionPool
    if not hasattr(ConnectionPool, "_add_connection"):  # pragma: no cover
        return ConnectionPool

    class _Attempt(AttemptWithBackoff):
        def update_delay(self, now: float) -> None:
            super().update_delay(now)
            self.delay = min(self.delay, RECONNECT_DELAY_MAX)

    class _ReconnectingPool(ConnectionPool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            with self._lock:  # as psycopg_pool's own additions: none lost if it is open
                if type(getattr(self, "_pool", None)) is deque:  # else psycopg_pool's order
                    self._pool = _IdleConnections(self._pool)

        def _add_connection(self, attempt: Any = None, *args: Any, **kwargs: Any) -> None:
            if attempt is None:
                attempt = _Attempt(timeout=self.reconnect_timeout)
            super()._add_connection(attempt, *args, **kwargs)

        def _shrink_pool(self) -> None:
            idle = self._pool
            if not isinstance(idle, _IdleConnections):
                super()._shrink_pool()
                return
            with self._lock:
                idle.shrinking += 1  # its popleft drops the least recently used
            try:
                super()._shrink_pool()
            finally:
                with self._lock:
                    idle.shrinking -= 1

        def check(self) -> None:
            idle = self._pool
            if isinstance(idle, _IdleConnections):
                # psycopg_pool's check takes the idle connections out and puts each one back
                # from the end of their list: reversed first, they go back in their order.
                with self._lock:
                    idle.reverse()
            super().check()

    return _ReconnectingPool


class _IdleConnections(deque):
    """psycopg_pool's idle connections (its private ``_pool``), lent most recently given back
    first. psycopg_pool gives a connection back with ``append`` and takes one with
    ``popleft``, both under its lock: first in, first out, so a lone caller after a burst of
    concurrent calls had grown the pool cycled through all of them, each call waking another
    server process, whose caches and CPU were cold. Taken from the end instead: 1-thread puts
    after 8 threads had grown the pool to 8 connections ran 2,041 -> 2,397/s and gets 3,930
    -> 5,137/s (ad hoc, LangGraph adapter, medians of 6 alternations, session 25). The
    shrink after ``max_idle`` still drops the least recently used one (``shrinking``, counted
    by the pool's ``_shrink_pool``; a lend racing it may take that one instead: which idle
    connection is lent is never a question of correctness), and the pool's ``check`` keeps
    their order. Connections left idle longest (after a burst, until the shrinks reach them:
    one per ``max_idle``) may be found closed by the server, or past ``max_lifetime`` (which
    psycopg_pool looks at when a connection is given back or checked, not when it is lent),
    when next lent: the engine replaces a dead one (pool.py, ``_stale``), and an old live one
    is used."""

    shrinking = 0

    def popleft(self) -> Any:
        # A Python method where psycopg_pool had a C one: a signal it delivers (at the
        # method's entry) comes before the pop, so an interrupted lend takes nothing.
        return super().popleft() if self.shrinking else self.pop()
