"""Review 19 of 55b8cf0's deferral across psycopg_pool's putconn
(postgres/pool.py ``Connections._give_back``), and the fix: a connection given back inside a
transaction (what a second Ctrl-C interrupting a block's own ROLLBACK leaves) is rolled back
before ``putconn``, with signals not deferred (``Connections._give_back_ended``); if that is
interrupted or fails, the connection is closed and given back all the same, and the
interruption raised. Each test ends with every pooled connection back (waited for: the pool
replaces a closed one in a background thread) and the Saver usable."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from conftest import every_connection_back
from sqlitesaver import Saver
from sqlitesaver.postgres import pool as pg_pool
from test_interrupts import Injected, Injector


def assert_whole_and_usable(saver: Saver, n: int) -> None:
    """No checkout left, every pooled connection idle in the pool (the only one, with
    ``max_connections=1``), and a write and a read work."""
    engine = saver._engine  # type: ignore[attr-defined]
    assert not engine._checkouts, engine._checkouts
    stats = every_connection_back(engine._pool)
    assert stats["pool_available"] == stats["pool_size"] == 1, stats
    saver.put("t", {"n": n})
    assert saver.get("t").state == {"n": n}


def test_a_ctrl_c_during_a_slow_give_back_is_not_lost(pg_empty_url, hang_detector,
                                                      python_sigint_handler):
    hang_detector(60)
    main = threading.main_thread().ident
    with Saver(pg_empty_url, max_connections=1) as saver:
        saver.put("t", {"n": 0})
        engine = saver._engine
        raised = None
        started = time.monotonic()
        resume = None
        try:
            with engine._connection("a test") as conn:
                # Given back inside a transaction (what a second Ctrl-C interrupting a
                # block's own ROLLBACK leaves): rolled back on its way back, one round trip.
                conn.execute("BEGIN")
                backend = conn.info.backend_pid
                os.kill(backend, signal.SIGSTOP)  # a server that does not answer for 4 s
                resume = threading.Timer(4.0, os.kill, (backend, signal.SIGCONT))
                resume.start()
                threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT)).start()
        except KeyboardInterrupt as exc:
            raised = exc
        finally:
            if resume is not None:
                resume.join()  # the backend answers again (and the test's SIGINT was sent)
        took = time.monotonic() - started
        assert raised is not None, (
            f"the Ctrl-C sent 0.5 s into a {took:.1f} s give-back never raised")
        assert_whole_and_usable(saver, 1)


def test_a_second_ctrl_c_closes_the_connection_without_waiting_for_the_server(
        pg_empty_url, hang_detector, python_sigint_handler):
    """The first Ctrl-C inside the give-back's rollback makes psycopg cancel it and wait (at
    most 5 s) for the server; a second one closes the connection at once: the
    KeyboardInterrupt comes long before the server answers again, and the pool opens another
    connection."""
    hang_detector(60)
    main = threading.main_thread().ident
    with Saver(pg_empty_url, max_connections=1) as saver:
        saver.put("t", {"n": 0})
        engine = saver._engine
        raised = None
        backend = None
        took = None
        started = time.monotonic()
        try:
            with engine._connection("a test") as conn:
                conn.execute("BEGIN")
                backend = conn.info.backend_pid
                os.kill(backend, signal.SIGSTOP)  # does not answer until the finally below
                for delay in (0.5, 1.0):
                    threading.Timer(delay, signal.pthread_kill,
                                    (main, signal.SIGINT)).start()
        except KeyboardInterrupt as exc:
            raised = exc
            took = time.monotonic() - started
            # Both SIGINTs sent (the second one raised this, or is still to come: caught)
            try:
                threading.Event().wait(max(0.0, 1.5 - took))
            except KeyboardInterrupt:
                pass
        finally:
            if backend is not None:
                os.kill(backend, signal.SIGCONT)
        assert raised is not None, "no KeyboardInterrupt from the give-back"
        assert took < 4.0, f"the give-back waited {took:.1f} s for a stopped server"
        assert conn.closed
        assert_whole_and_usable(saver, 1)


class _Once:
    """Raise ``exc`` at the first call, then call ``real``; or, ``after``, call ``real`` and
    then raise ``exc`` (once)."""

    def __init__(self, real, exc: BaseException, after: bool = False) -> None:
        self.real, self.exc, self.after, self.calls = real, exc, after, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > 1:
            return self.real(*args, **kwargs)
        if self.after:
            self.real(*args, **kwargs)
        raise self.exc


@pytest.mark.parametrize("where", ["rollback", "rollback-fails", "close", "after-putconn"])
def test_an_exception_inside_the_give_back_reaches_the_caller_and_loses_no_connection(
        pg_empty_url, hang_detector, monkeypatch, where):
    """An exception raised at a given point of the give-back of a connection left inside a
    transaction: out of its rollback (a KeyboardInterrupt: the connection is closed, given
    back, and the pool opens another; an error: the same, and the caller's block ends as it
    would have, as with putconn's own failed rollback), out of the close of a connection not
    rolled back (the fallback of ``_Lent`` closes and gives it back), after ``putconn``
    returned. The exception reaches the caller; every connection is back."""
    import psycopg

    hang_detector(60)
    with Saver(pg_empty_url, max_connections=1) as saver:
        saver.put("t", {"n": 0})
        engine = saver._engine
        expected = None if where == "rollback-fails" else KeyboardInterrupt
        raised = None
        try:
            with engine._connection("a test") as conn:
                conn.execute("BEGIN")
                if where == "rollback":
                    patch = _Once(conn.rollback, KeyboardInterrupt("injected"))
                    monkeypatch.setattr(conn, "rollback", patch)
                elif where == "rollback-fails":
                    patch = _Once(conn.rollback, psycopg.OperationalError("injected"))
                    monkeypatch.setattr(conn, "rollback", patch)
                elif where == "close":  # the rollback left it not idle: closed, interrupted
                    monkeypatch.setattr(conn, "rollback", lambda: None)
                    patch = _Once(conn.close, KeyboardInterrupt("injected"))
                    monkeypatch.setattr(conn, "close", patch)
                else:
                    patch = _Once(engine._pool.putconn, KeyboardInterrupt("injected"),
                                  after=True)
                    monkeypatch.setattr(engine._pool, "putconn", patch)
        except KeyboardInterrupt as exc:
            raised = exc
        assert patch.calls >= 1, f"{where} was never reached"
        if expected is None:
            assert raised is None, raised
        else:
            assert isinstance(raised, expected) and str(raised) == "injected", raised
        if where == "after-putconn":  # rolled back, then given back: the same connection
            assert not conn.closed
        else:
            assert conn.closed
        monkeypatch.undo()
        assert_whole_and_usable(saver, 1)


def test_one_exception_at_every_line_of_a_give_back_in_a_transaction(pg_empty_url,
                                                                     hang_detector):
    """tests/test_interrupts.py's Injector, at each line event of postgres/pool.py in the
    give-back of a connection left inside a transaction (``_Lent.__exit__``,
    ``_give_back``, ``_give_back_ended``, ``_give_back_now``, ``_returning``): the exception
    reaches the caller, the connection is given back once (``_checkouts`` empty, every
    connection idle in the pool, with ``max_connections=1``), and the Saver stays usable."""
    hang_detector(120)
    files = (os.path.abspath(pg_pool.__file__),)
    with Saver(pg_empty_url, max_connections=1, busy_timeout=2) as saver:
        saver.put("t", {"n": 0})
        engine = saver._engine

        def give_back_in_a_transaction(injector: Injector) -> None:
            try:
                with engine._connection("a test") as conn:
                    conn.execute("BEGIN")
                    sys.settrace(injector)  # traced from the __exit__ call on
            finally:
                sys.settrace(None)

        counter = Injector(None, files)
        give_back_in_a_transaction(counter)
        total = counter.lines
        assert total >= 8, total  # the trace sees the give-back's lines
        for at in range(1, total + 1):
            injector = Injector(at, files)
            with pytest.raises(Injected):
                give_back_in_a_transaction(injector)
            assert injector.fired, f"line {at} of {total} was not reached"
            assert_whole_and_usable(saver, at)
