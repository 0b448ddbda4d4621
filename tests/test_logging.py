"""The ``sqlitesaver`` logger: silent by default, and what it reports when asked.

No test waits for time to pass: a lock wait is made "long" by lowering the threshold, and the
lock is released from inside the busy handler's sleep (``contention._sleep``).

Silence by default holds on both engines; the rest is SQLite by nature (recovery of a file, its
busy handler, the -wal, the VFS); a skipped damaged checkpoint's record is tested on both in
tests/test_skip_damaged.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import apsw
import pytest

import sqlitesaver.sqlite.transaction as write_path
from sqlitesaver import DatabaseIOError, Saver, contention, log
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
    monkeypatch.setattr(write_path, "WAL_LIMIT", 256 * 1024)
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
