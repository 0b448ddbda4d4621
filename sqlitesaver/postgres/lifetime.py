"""What the end of a process, and a ``fork()``, do to the PostgreSQL engine's connection
pools: a process that exits without closing its Saver exits, and a forked child never touches
its parent's pools.

Guarantees:

* **Exit never hangs on an open pool.** psycopg_pool runs each pool's maintenance (reconnects,
  growing, shrinking) in daemon threads fed by a queue. At interpreter exit those threads are
  frozen wherever they next need the GIL, and a pool still open is then finalised: its
  ``__del__`` puts a stop task on that queue, and if a frozen thread held the queue's lock,
  waits for it for ever. It happened in the server-crash torture (a writer that ended after a
  server crash without closing its Saver hung in ``ConnectionPool.__del__`` at exit: 1 run in
  ~3 of ``python -m sqlitesaver.torture --backend postgres --mode server-crash``; seed 1003
  showed it). So every pool still open when the process exits is closed by an ``atexit``
  hook, which runs while those threads still run, before any is frozen; its finaliser is then
  a no-op. Closing waits for the pool's threads at most :data:`EXIT_WAIT` seconds (one may be
  connecting to a server that does not answer); the pool is closed whether or not they ended.
* **A forked child leaves its parent's pools alone.** A pool inherited through ``fork()`` is
  marked closed in the child without closing anything (closing a connection sends the server a
  Terminate on the socket the parent still uses), so the child's exit does not run its
  finaliser either (in the child the pool's threads do not exist, and a lock one of them held
  at the fork stays held).

The pools are psycopg_pool's; the ``_closed`` flag set in a child is private to psycopg_pool
(3.2-3.3, as :func:`sqlitesaver.postgres.pool._pool_class`), the one thing its finaliser
checks. ``tests/test_postgres_lifetime.py`` proves both (an exit while a pool thread holds the
queue's lock, a child's exit after a fork taken while it held it).
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Any

__all__ = ["track", "EXIT_WAIT"]

#: Seconds the exit hook waits for each open pool's threads to end.
EXIT_WAIT = 1.0

# Pools opened by this process and maybe still open, each with the pid that opened it.
_OPEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def track(pool: Any) -> None:
    """Close ``pool`` at this process's exit if it is still open then (see the module
    docstring); forget it once it is collected."""
    _OPEN[pool] = os.getpid()


def _close_at_exit() -> None:
    pid = os.getpid()
    interrupted: BaseException | None = None
    for pool, opened_by in list(_OPEN.items()):
        if opened_by == pid:
            try:
                pool.close(timeout=EXIT_WAIT)
            except Exception:  # noqa: BLE001 - at exit: the next pool must still be closed
                pass
            except BaseException as exc:  # a Ctrl-C while it waited: so must the next pools
                # (one left open hangs the exit in its finaliser), then it is raised
                interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


def _disarm_in_child() -> None:
    for pool in list(_OPEN):
        pool._closed = True  # the parent's: never closed here, nor finalised (see above)
    _OPEN.clear()


atexit.register(_close_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disarm_in_child)
