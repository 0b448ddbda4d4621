"""psycopg_pool's ConnectionPool as the PostgreSQL engine uses it (one per Saver, opened by
:class:`~sqlitesaver.postgres.pool.Connections`): its waiters interruptible by Ctrl-C
(:func:`interruptible_waits`), its reconnection backoff capped (:data:`RECONNECT_DELAY_MAX`),
and its finaliser safe at exit and after a fork (:mod:`.lifetime`). Each works around a
behaviour of psycopg_pool 3.2-3.3 that lost connections or hung, named in its docstring with the
test that shows it. Split out of pool.py, which lends the connections.
"""

from __future__ import annotations

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
        def _add_connection(self, attempt: Any = None, *args: Any, **kwargs: Any) -> None:
            if attempt is None:
                attempt = _Attempt(timeout=self.reconnect_timeout)
            super()._add_connection(attempt, *args, **kwargs)

    return _ReconnectingPool
