"""A connection given back inside a transaction (what a second Ctrl-C interrupting a block's
own ROLLBACK leaves) is closed, not rolled back by psycopg_pool's ``putconn``
(postgres/pool.py ``Connections._give_back``). Found by review 19: that rollback, a round trip,
ran with signals deferred; with a server that did not answer, a Ctrl-C was held
``interrupts.STALE_AFTER`` s, then delivered inside it, where psycopg_pool caught it
("rollback failed: KeyboardInterrupt") and the Ctrl-C was lost."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from sqlitesaver import Saver, interrupts


@pytest.fixture
def python_sigint_handler():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_give_back_does_not_wait_for_a_server_that_does_not_answer(
        pg_empty_url, hang_detector, python_sigint_handler):
    hang_detector(60)
    with Saver(pg_empty_url, max_connections=1) as saver:
        saver.put("t", {"n": 0})
        engine = saver._engine
        resume = None
        try:
            with engine._connection("a test") as conn:
                conn.execute("BEGIN")
                backend = conn.info.backend_pid
                os.kill(backend, signal.SIGSTOP)  # a server that does not answer
                resume = threading.Timer(4.0, os.kill, (backend, signal.SIGCONT))
                resume.start()
                started = time.monotonic()
            took = time.monotonic() - started
        finally:
            if resume is not None:
                resume.cancel()
                os.kill(backend, signal.SIGCONT)
        # The give-back made no round trip: well under the deferral's STALE_AFTER (a Ctrl-C
        # is held at most that long there) and the 4 s the backend was stopped for.
        assert took < interrupts.STALE_AFTER / 2, took
        assert conn.closed
        saver.put("t", {"n": 1})  # the pool opened another connection
        assert saver.get("t").state == {"n": 1}
