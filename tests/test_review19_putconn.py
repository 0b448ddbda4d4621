"""Review 19 of 55b8cf0's deferral across psycopg_pool's putconn
(postgres/pool.py ``Connections._give_back``)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from sqlitesaver import Saver


@pytest.fixture
def python_sigint_handler():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.xfail(strict=True, reason=(
    "defect: a Ctrl-C while putconn rolls back a connection given back inside a transaction "
    "(network I/O: a slow or stopped server) is held by _give_back's deferral for "
    "interrupts.STALE_AFTER s, then delivered inside putconn's rollback, where psycopg_pool's "
    "_reset_connection catches it (sqlitesaver set its CLIENT_EXCEPTIONS to BaseException, "
    "pool._interruptible_waits): 'rollback failed: KeyboardInterrupt', the connection "
    "discarded, putconn returns, and the Ctrl-C is lost"))
def test_a_ctrl_c_during_a_slow_give_back_is_not_lost(pg_empty_url, hang_detector,
                                                      python_sigint_handler):
    hang_detector(60)
    main = threading.main_thread().ident
    with Saver(pg_empty_url, max_connections=1) as saver:
        saver.put("t", {"n": 0})
        engine = saver._engine
        raised = None
        started = time.monotonic()
        try:
            with engine._connection("a test") as conn:
                # Given back inside a transaction (what a second Ctrl-C interrupting a
                # block's own ROLLBACK leaves): putconn rolls it back, one round trip.
                conn.execute("BEGIN")
                backend = conn.info.backend_pid
                os.kill(backend, signal.SIGSTOP)  # a server that does not answer for 4 s
                threading.Timer(4.0, os.kill, (backend, signal.SIGCONT)).start()
                threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT)).start()
        except KeyboardInterrupt as exc:
            raised = exc
        took = time.monotonic() - started
        time.sleep(0.2)  # nothing still pending
        assert raised is not None, (
            f"the Ctrl-C sent 0.5 s into a {took:.1f} s give-back never raised")
