"""The test suite's own safety net: a test that hangs ends the run with the stacks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.tooling
def test_a_hanging_test_ends_the_run_with_its_stack(tmp_path):
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_hangs.py").write_text(
        "import threading\n\n"
        "def test_waits_forever():\n"
        "    threading.Event().wait()  # no bound of its own\n")
    (tmp_path / "tmp").mkdir()  # the killed run cannot clean up: keep its leftovers here
    path = os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, SQLITESAVER_TEST_BOUND="2", PYTHONPATH=path,
               TMPDIR=str(tmp_path / "tmp"))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path / "test_hangs.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout
    assert "test_waits_forever" in done.stderr, done.stderr  # the hung test's frame
    assert "Timeout" in done.stderr, done.stderr
    assert time.monotonic() - started < 60


def test_empty_target_is_emptied_and_numbers_from_the_start(pg_empty_url):
    """``pg_empty_url`` (``any_empty_target`` on PostgreSQL) hands each test the shared database
    as a fresh one looks after its first open: no rows, sequences restarted."""
    from conftest import empty_our_tables, store_digest
    from sqlitesaver import Saver

    with Saver(pg_empty_url) as saver:
        assert saver.threads() == []
        first = saver.put("t", {"n": 1})
        saver.put_writes("t", first.checkpoint_id, "task", [("ch", 1)])
        first_event = saver.append_log("t", {"e": 1})
    with Saver(pg_empty_url) as saver:
        empty_our_tables(pg_empty_url)
        empty = store_digest(pg_empty_url)
        assert saver.threads() == [] and saver.get("t") is None
        assert list(saver.read_log("t")) == []
        assert saver.put("t", {"n": 2}).checkpoint_id == first.checkpoint_id
        assert saver.append_log("t", {"e": 2}) == first_event
    assert store_digest(pg_empty_url) != empty
