"""The ``sqlitesaver`` logger: silent by default, and what it reports when asked.

No test waits for time to pass: a lock wait is made "long" by lowering the threshold, and the
lock is released from inside the busy handler's sleep (``contention._sleep``).

Silence by default holds on both engines; the SQLite tests are SQLite's by nature (recovery of a
file, its busy handler, the -wal, the VFS); a skipped damaged checkpoint's record is tested on
both in tests/test_skip_damaged.py. The PostgreSQL engine's records (a migration at open, a
retried transaction, a dead pooled connection replaced, a connection lost, a long wait for a
pooled connection) are tested last, on a URL with a password that no record may show.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import apsw
import pytest

import sqlitesaver.sqlite.wal as wal
from conftest import inject_retryable_failures
from sqlitesaver import BusyTimeoutError, DatabaseIOError, Saver, contention, log
from test_bad_input import child_env
from test_faults import _FaultyVFS


def records(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records
            if r.name == "sqlitesaver" and r.levelno >= level]


def test_silent_by_default_even_for_warnings(any_empty_target):
    # A fresh interpreter with logging unconfigured: logging's last-resort handler would print
    # WARNING records on stderr if the library had no handler of its own.
    code = textwrap.dedent("""
        import logging, sys
        from sqlitesaver import Saver, log
        assert any(isinstance(h, logging.NullHandler) for h in log.logger.handlers)
        log.busy_wait(sys.argv[1], "testing", 5.0, gave_up=True)
        log.shutdown(sys.argv[1], "it shut itself down (test)")
        with Saver(sys.argv[1]) as saver:
            saver.put("t", 1)
        print("done")
    """)
    done = subprocess.run([sys.executable, "-c", code, any_empty_target],
                          capture_output=True, text=True, env=child_env())
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr
    assert done.stderr == ""


def test_recovery_findings_are_logged(tmp_path, caplog):
    path = str(tmp_path / "d.db")
    caplog.set_level(logging.DEBUG, logger="sqlitesaver")
    with Saver(path):
        pass
    assert any(r.startswith(f"INFO {path}: created a new database") for r in records(caplog))
    caplog.clear()
    with Saver(path):
        pass
    (line,) = records(caplog)
    assert line.startswith(f"DEBUG {path}: opened (integrity check quick")
    caplog.clear()
    subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, sys
        from sqlitesaver import Saver
        saver = Saver(sys.argv[1])  # kept referenced: never closed
        saver.put("t", "left in the -wal")
        os._exit(0)
    """), path], check=True, env=child_env())
    with Saver(path) as saver:
        assert saver.recovery.wal_frames > 0
    (line,) = records(caplog)
    assert line.startswith(f"INFO {path}: recovery found ") and "did not close" in line


def test_a_long_lock_wait_is_logged(tmp_path, caplog, monkeypatch):
    path = str(tmp_path / "d.db")
    monkeypatch.setattr(log, "BUSY_WAIT_THRESHOLD", 0.0)
    caplog.set_level(logging.WARNING, logger="sqlitesaver")
    with Saver(path) as saver:
        other = apsw.Connection(path)
        other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock

        def sleep(seconds: float) -> None:  # the first backoff pause: the other one commits
            if not other.get_autocommit():
                other.execute("COMMIT")

        monkeypatch.setattr(contention, "_sleep", sleep)
        saver.put("t", "after the wait")
        other.close()
    (line,) = records(caplog)
    assert line.startswith(f"WARNING {path}: waited ") and "putting a checkpoint" in line


def test_below_the_threshold_a_wait_is_not_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="sqlitesaver")
    log.busy_wait("/x.db", "testing", log.BUSY_WAIT_THRESHOLD / 2, gave_up=False)
    log.busy_wait("/x.db", "testing", log.BUSY_WAIT_THRESHOLD, gave_up=True)
    assert records(caplog) == [f"WARNING /x.db: gave up waiting for another connection's lock "
                               f"after {log.BUSY_WAIT_THRESHOLD:.2f} s while testing"]


def test_a_forced_checkpoint_is_logged(tmp_path, caplog, monkeypatch):
    path = str(tmp_path / "d.db")
    monkeypatch.setattr(wal, "WAL_LIMIT", 256 * 1024)
    caplog.set_level(logging.INFO, logger="sqlitesaver")
    with Saver(path) as saver:
        caplog.clear()
        for i in range(100):
            saver.put("t", {"i": i, "pad": os.urandom(4096)})
        forced = saver.stats()["wal_checkpoints"]
    lines = [r for r in records(caplog) if "forced a checkpoint" in r]
    assert forced >= 1 and len(lines) == forced, records(caplog)
    assert lines[0].startswith(f"INFO {path}: the -wal reached ")


def test_a_shutdown_after_an_io_error_is_logged(tmp_path, caplog):
    path = str(tmp_path / "d.db")
    caplog.set_level(logging.INFO, logger="sqlitesaver")
    vfs = _FaultyVFS()
    try:
        with Saver(path) as saver:
            caplog.clear()
            vfs.fail_sync = True
            with pytest.raises(DatabaseIOError):
                saver.put("t", "in doubt")
            vfs.fail_sync = False
    finally:
        vfs.unregister()
    (line,) = records(caplog, logging.ERROR)
    assert line.startswith(f"ERROR {path}: it shut itself down after an I/O error")


# --- the PostgreSQL engine ------------------------------------------------------------------

PASSWORD = "pw-never-logged-7f3a"


@pytest.fixture
def pw_url(pg_url) -> str:
    """pg_url with a password in it: the test cluster trusts local connections, so libpq
    connects and the password is never asked for, but it is in the URL the Saver is given."""
    assert "postgres@" in pg_url, pg_url
    return pg_url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def server_records(caplog: pytest.LogCaptureFixture, server: str,
                   level: int = logging.DEBUG) -> list[str]:
    """The records at ``level`` or above, each checked to name ``server`` and not to show the
    password (in its message, or in any argument)."""
    found = []
    for r in caplog.records:
        if r.name != "sqlitesaver" or r.levelno < level:
            continue
        message = r.getMessage()
        assert PASSWORD not in message and PASSWORD not in repr(r.args), message
        assert message.startswith(f"{server}: "), message
        found.append(f"{r.levelname} {message.removeprefix(server + ': ')}")
    return found


def _engine(url: str, **kwargs):
    pytest.importorskip("psycopg")
    from sqlitesaver.postgres import engine as pg_engine

    return pg_engine.Engine(url, **kwargs)


def test_postgres_a_migration_at_first_open_is_logged(pw_url, caplog):
    caplog.set_level(logging.DEBUG, logger="sqlitesaver")
    with Saver(pw_url) as saver:
        server = saver.path
        latest = saver.settings()  # the engine's description of the server, as in records
    assert PASSWORD not in server and latest["server"] == server
    from sqlitesaver.postgres import schema

    (line,) = server_records(caplog, server)
    assert line == (f"INFO migrated the schema from version 0 to {schema.latest_version()} "
                    "(created the tables)")
    caplog.clear()
    with Saver(pw_url):  # up to date: nothing to say
        pass
    assert server_records(caplog, server) == []


def test_postgres_a_retried_transaction_is_logged(pw_url, caplog, monkeypatch):
    e = _engine(pw_url, busy_timeout=5.0)
    try:
        caplog.set_level(logging.DEBUG, logger="sqlitesaver")
        caplog.clear()
        e.put_checkpoint("t", "", None, None, b"s", b"m")  # no retry: nothing logged
        assert server_records(caplog, e.server) == []
        failures = inject_retryable_failures(monkeypatch, 2)
        e.put_checkpoint("t", "", None, None, b"s", b"m")
        assert failures["left"] == 0
        # Each retry at DEBUG; the call's total under the threshold: no WARNING.
        assert server_records(caplog, e.server) == [
            "DEBUG a serialization failure (SQLSTATE 40001) while putting a checkpoint; "
            "running the transaction again (retry 1)",
            "DEBUG a deadlock (SQLSTATE 40P01) while putting a checkpoint; running the "
            "transaction again (retry 2)"]
        caplog.clear()
        monkeypatch.setattr(log, "BUSY_WAIT_THRESHOLD", 0.0)  # every retried call is "long"
        failures["left"] = 1
        e.append_log("t", b"e")
        (line,) = [r for r in server_records(caplog, e.server, logging.WARNING)
                   if "pooled connection" not in r]  # at a threshold of 0, every take too
        assert line.startswith("WARNING ran the transaction 1 time(s) again over ") and \
            line.endswith("(serialization failures or deadlocks) while appending a log event")
        caplog.clear()
        failures["left"] = 10**9  # never goes through: it times out
        e.busy_timeout = 0.2
        with pytest.raises(BusyTimeoutError):
            e.put_checkpoint("t", "", None, None, b"s", b"m")
        (line,) = [r for r in server_records(caplog, e.server, logging.WARNING)
                   if "pooled connection" not in r]
        assert line.startswith("WARNING gave up after running the transaction ") and \
            line.endswith("while putting a checkpoint")
    finally:
        e.close()


def _terminate(url: str, pid: int) -> None:
    """End backend ``pid`` from another connection, and wait until it is gone."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(500):
            if not other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                 (pid,)).fetchone():
                return
            time.sleep(0.01)
    pytest.fail(f"backend {pid} did not end")


def test_postgres_a_dead_pooled_connection_replaced_is_logged(pw_url, caplog):
    e = _engine(pw_url, max_connections=1)
    try:
        e.put_checkpoint("t", "", None, None, b"s", b"m")
        with e._pool.connection() as conn:  # the only one: idle in the pool
            pid = conn.info.backend_pid
        _terminate(pw_url, pid)  # the server closed it while idle
        caplog.set_level(logging.DEBUG, logger="sqlitesaver")
        caplog.clear()
        e.put_checkpoint("t", "", None, None, b"s", b"m")  # on a new connection
        assert server_records(caplog, e.server) == [
            "INFO a pooled connection was dead (the server closed an idle connection, or "
            "restarted); replaced it while putting a checkpoint, nothing was lost"]
    finally:
        e.close()


def test_postgres_a_connection_lost_in_a_transaction_is_logged(pw_url, caplog):
    e = _engine(pw_url)
    try:
        def work(conn):  # the backend dies during the work: not committed
            _terminate(pw_url, conn.info.backend_pid)
            conn.execute("SELECT 1")

        caplog.set_level(logging.DEBUG, logger="sqlitesaver")
        with pytest.raises(DatabaseIOError, match="not committed"):
            e._write("testing", work)
        assert server_records(caplog, e.server) == [
            "WARNING the connection was lost while testing: the transaction was not "
            "committed (DatabaseIOError)"]
        caplog.clear()

        def before_commit(conn):  # the backend dies before COMMIT reaches it: maybe committed
            _terminate(pw_url, conn.info.backend_pid)

        with pytest.raises(DatabaseIOError, match="maybe committed"):
            e._write("testing", before_commit)
        (line,) = server_records(caplog, e.server)
        assert line.startswith("WARNING the connection was lost while COMMIT was in flight, "
                               "testing: ") and "'maybe committed'" in line
    finally:
        e.close()


def test_postgres_a_long_wait_for_a_pooled_connection_is_logged(pw_url, caplog, monkeypatch):
    e = _engine(pw_url, busy_timeout=0.3, max_connections=1)
    try:
        monkeypatch.setattr(log, "BUSY_WAIT_THRESHOLD", 0.1)
        caplog.set_level(logging.DEBUG, logger="sqlitesaver")
        e.put_checkpoint("t", "", None, None, b"s", b"m")
        assert server_records(caplog, e.server) == []  # no wait: nothing
        with e._connection("holding the only connection"):
            with pytest.raises(BusyTimeoutError, match="stayed in use"):
                e.put_checkpoint("t", "", None, None, b"s", b"m")
        (line,) = server_records(caplog, e.server)
        assert line.startswith("WARNING gave up waiting for a pooled connection after ") and \
            line.endswith("while putting a checkpoint")
    finally:
        e.close()
    # A wait past the threshold that then gets the connection. Its own engine, whose
    # busy_timeout no loaded machine reaches: the put must wait, not give up.
    e = _engine(pw_url, busy_timeout=60, max_connections=1)
    try:
        e.put_checkpoint("t", "", None, None, b"s", b"m")
        caplog.clear()
        held, failed = threading.Event(), []

        def hold() -> None:
            # The only connection, given back only once the put waits for it (the pool's
            # queue of waiters, polled: a state, not a guess of how long the put takes) and
            # 0.15 s more: the put's wait lasts past the 0.1 s threshold by construction.
            with e._connection("holding the only connection"):
                held.set()
                deadline = time.monotonic() + 30
                while not e._pool._waiting:
                    if time.monotonic() > deadline:
                        failed.append("the put never waited for the connection")
                        return
                    time.sleep(0.001)
                time.sleep(0.15)  # the length of the wait under test, not a synchronisation

        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(30)
        e.put_checkpoint("t", "", None, None, b"s", b"m")
        holder.join()
        assert not failed, failed
        (line,) = server_records(caplog, e.server)
        assert line.startswith("WARNING waited ") and "for a pooled connection" in line
    finally:
        e.close()
