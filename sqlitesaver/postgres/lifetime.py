"""What the end of a process, and a ``fork()``, do to the PostgreSQL engine's connection
pools: a process exits even if it never closed its Saver, and a forked child never touches its
parent's pools.

psycopg_pool runs each pool's maintenance (reconnects, growing, shrinking) in daemon threads fed
by a queue, and a pool's finaliser (``ConnectionPool.__del__``, run when a pool not closed is
collected) puts a stop task on that queue and waits for the threads. Two places where that
finaliser waits for ever on a lock a thread that no longer runs holds:

* **At interpreter exit.** Once the interpreter is finalising, daemon threads are frozen
  wherever they next need the GIL; the collector then finalises the garbage, a pool not closed
  among it, whose finaliser waits for the queue's lock if a frozen thread held it. It
  happened in the server-crash torture: a writer that ended after a server crash without
  closing its Saver hung at exit (the stack its harness printed: ``Garbage-collecting``,
  ``ConnectionPool.__del__``, ``queue.put``), in 3 of 5 unwatched runs of ``python -m
  sqlitesaver.torture --backend postgres --mode server-crash --iterations 50`` (seeds
  1003-1005).
* **In a forked child.** Only the forking thread exists there; a lock another thread held at
  the fork stays held.

Guarantee: the pools the engine makes (:func:`finalised_safely`) have a finaliser that does
nothing while the interpreter is finalising or in a process other than the one that made the
pool; the operating system then closes the sockets (the server rolls back what was open).
Anywhere else, psycopg_pool's own runs: the threads run, so the locks are released. Nothing is
closed early: a Saver stays usable in any ``atexit`` hook of the program (an ``atexit`` hook
closing every open pool, tried first, broke a hook registered before the Saver was opened).
``tests/test_postgres_lifetime.py`` proves both: an exit while a thread holds a pool's queue
lock, and a child's collection of the parent's pool after a fork taken while one held it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["finalised_safely"]


def finalised_safely(pool_class: type) -> type:
    """A subclass of the psycopg_pool ``pool_class`` whose finaliser does nothing while the
    interpreter is finalising, or in a process other than the one that made the pool (see the
    module docstring)."""

    class _Pool(pool_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._sqlitesaver_pid = os.getpid()  # first: __del__ reads it even if init failed
            super().__init__(*args, **kwargs)

        # The functions are bound as defaults: at exit the modules' globals may be cleared.
        def __del__(self, _finalizing: Any = sys.is_finalizing, _getpid: Any = os.getpid
                    ) -> None:
            if _finalizing() or getattr(self, "_sqlitesaver_pid", None) != _getpid():
                return
            super().__del__()

    _Pool.__name__ = _Pool.__qualname__ = f"Finalised{pool_class.__name__}"
    return _Pool
