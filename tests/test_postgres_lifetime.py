"""A process with a PostgreSQL Saver it never closed exits, and so does a child forked from it
(sqlitesaver/postgres/lifetime.py).

Found by the server-crash torture: a writer that ended after a server crash without closing its
Saver hung at exit in psycopg_pool's ``ConnectionPool.__del__``, waiting for the pool's task
queue's lock, held by a pool thread that interpreter exit had frozen. Each test here makes that
moment happen for certain: a thread holds the queue's lock (as a pool thread does inside
``queue.get``) when the process exits, or when it forks; the process must still end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

#: The longest a process here may take to end; a hang shows as this timeout.
DEADLINE = 30

#: Seconds the thread in EXIT_SCRIPT holds the queue's lock: the process reaches its
#: finalisation meanwhile (microseconds after the atexit hooks), with the lock still held.
HOLD = 3

#: Defines ``hold_at_exit(queue_lock)``: from the process's exit on (an atexit hook), a daemon
#: thread holds ``queue_lock`` (as a pool thread does inside ``queue.get``) for HOLD seconds.
HOLD_AT_EXIT = """
import atexit, threading


def hold_at_exit(queue_lock):
    holding = threading.Event()

    def hold():
        with queue_lock:
            holding.set()
            threading.Event().wait(%(hold)s)

    def at_exit():  # the lock held as the process finalises
        threading.Thread(target=hold, daemon=True).start()
        holding.wait()

    atexit.register(at_exit)
""" % {"hold": HOLD}

EXIT_SCRIPT = HOLD_AT_EXIT + """
import gc, sys
from sqlitesaver import Saver

# The Saver is garbage once work() returns, in a reference cycle (in the torture's writer, an
# exception's traceback made one): with the collector off, it is collected at exit, after the
# pool's threads were frozen.
gc.disable()


def work():
    saver = Saver(sys.argv[1])
    saver.put("t", {"a": 1})
    cycle = [saver]
    cycle.append(cycle)
    hold_at_exit(saver._engine._pool._tasks.mutex)


work()
print("ending without close()", flush=True)
"""

FORK_SCRIPT = """
import gc, os, sys, threading
from sqlitesaver import Saver
from sqlitesaver.postgres import saver as pg_saver

saver = Saver(sys.argv[1])
saver.put("t", {"a": 1})
queue_lock = saver._engine._pool._tasks.mutex
holding, release = threading.Event(), threading.Event()

def hold():
    with queue_lock:
        holding.set()
        release.wait()

threading.Thread(target=hold, daemon=True).start()
holding.wait()
pid = os.fork()
if pid == 0:
    # The child's copy of the pool finalised (the lock is held for ever in this process).
    pg_saver._ABANDONED_IN_CHILD.clear()
    del saver
    gc.collect()
    os._exit(0)
release.set()
_, status = os.waitpid(pid, 0)
print("child status", os.waitstatus_to_exitcode(status), flush=True)
saver.put("t", {"a": 2})  # the parent's pool is untouched by the child
saver.close()
"""


#: A Ctrl-C lands in psycopg_pool's ``open(wait=True)`` while ``Saver()`` waits for its pool
#: to fill (a slow server): the pool is open, its threads run. It was not closed there
#: (``except Exception``: now closed), and its finaliser at exit hung as in EXIT_SCRIPT (found
#: by review 19, with the first form of the exit fix).
OPEN_INTERRUPTED_SCRIPT = HOLD_AT_EXIT + """
import gc, sys
import psycopg_pool
from sqlitesaver import Saver

gc.disable()  # as EXIT_SCRIPT: the garbage is collected at exit, the pool's threads frozen


def work():
    real_wait = psycopg_pool.ConnectionPool.wait
    caught = {}

    def wait(self, timeout=30.0):
        caught["pool"] = self
        real_wait(self, timeout)   # the pool is open, its threads run
        raise KeyboardInterrupt    # a Ctrl-C landing in open(wait=True)'s wait

    psycopg_pool.ConnectionPool.wait = wait
    try:
        Saver(sys.argv[1])
    except KeyboardInterrupt as exc:
        cycle = [exc]
        cycle.append(cycle)        # its traceback holds the pool: garbage in a cycle
    else:
        raise SystemExit("the Ctrl-C was not raised out of Saver()")
    finally:
        psycopg_pool.ConnectionPool.wait = real_wait
    hold_at_exit(caught.pop("pool")._tasks.mutex)


work()
print("ending after the interrupted open", flush=True)
"""

#: A program's exit hook registered before its first PostgreSQL Saver opened stores a last
#: checkpoint: the Saver is still usable there (an atexit hook closing every open pool, the
#: first form of the exit fix, was registered later, so ran first: SaverClosedError).
LATE_HOOK_SCRIPT = """
import atexit, sys
from sqlitesaver import Saver

savers = []


def flush_at_exit():
    try:
        savers[0].put("t", {"last": True})
        print("final put stored", flush=True)
    except Exception as exc:
        print("final put failed:", type(exc).__name__, exc, flush=True)


atexit.register(flush_at_exit)
savers.append(Saver(sys.argv[1]))
savers[0].put("t", {"a": 1})
"""


def _run(script: str, url: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), url],
                              capture_output=True, text=True, timeout=DEADLINE)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the process did not end within {DEADLINE} s (hung at exit); its "
                    f"output: {exc.stdout!r} {exc.stderr!r}")
    return done, time.monotonic() - started


def test_a_process_exits_with_an_open_saver_while_a_pool_thread_holds_its_queue(pg_url):
    done, _ = _run(EXIT_SCRIPT, pg_url)
    assert done.returncode == 0, done.stderr
    assert "ending without close()" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr


def test_a_forked_child_exits_without_touching_its_parents_pool(pg_url):
    done, _ = _run(FORK_SCRIPT, pg_url)
    assert done.returncode == 0, done.stderr
    assert "child status 0" in done.stdout, (done.stdout, done.stderr)


def test_a_ctrl_c_while_a_saver_fills_its_pool_does_not_hang_the_exit(pg_url):
    done, _ = _run(OPEN_INTERRUPTED_SCRIPT, pg_url)
    assert done.returncode == 0, done.stderr
    assert "ending after the interrupted open" in done.stdout, (done.stdout, done.stderr)


def test_a_saver_is_still_usable_in_an_exit_hook_registered_before_it(pg_url):
    done, _ = _run(LATE_HOOK_SCRIPT, pg_url)
    assert done.returncode == 0, done.stderr
    assert "final put stored" in done.stdout, (done.stdout, done.stderr)
