"""``sqlitesaver.vacuum`` (``python -m sqlitesaver vacuum``): the space pruning frees goes back to
the filesystem, the data and ids stay exactly as they were, and a database in use is left alone.

SQLite by nature: a database file's free pages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import family_digest
from sqlitesaver import (BusyTimeoutError, CannotOpenError, NotASaverDatabaseError, Saver)
from sqlitesaver.check import check_database
from sqlitesaver.vacuum import vacuum
from test_bad_input import child_env, foreign_db, small_db, snapshot


def test_prune_49950_of_50000_then_vacuum_gives_back_over_90_percent(db_path):
    # Issue #19's numbers: after the prune the file keeps its size, nearly all of it free.
    with Saver(db_path) as saver:
        with saver.transaction():
            parent = None
            for i in range(50_000):
                parent = saver.put("t", {"i": i, "note": "x" * 100}, metadata={"i": i},
                                   parent_id=parent).checkpoint_id
        saver.put_writes("t", parent, "task", [("ch", "last")])
        saver.append_log("t", {"event": "done"})
        assert saver.prune("t", keep_last=50) == 49_950
        expected = snapshot(saver)
        last_id = parent
    pruned_size = os.path.getsize(db_path)
    report = vacuum(db_path)
    assert report.bytes_before == pruned_size
    assert report.free_pages_before > 0.9 * report.pages_before
    assert report.bytes_after <= 0.1 * report.bytes_before, report.as_dict()
    assert os.path.getsize(db_path) == report.bytes_after
    # Folded into the file; the validation afterwards, like any reader, may leave an empty one.
    assert os.path.getsize(db_path + "-wal") == 0
    assert report.check.ok and check_database(db_path).ok
    with Saver(db_path) as saver:
        assert snapshot(saver) == expected  # every survivor, its writes and the log
        assert [c.state["i"] for c in saver.list("t")] == list(range(49_999, 49_949, -1))
        assert saver.put("t", "next").checkpoint_id > last_id  # ids are never reused


@pytest.mark.parametrize("holder", ["Saver", "readonly Saver"])
def test_vacuum_refuses_a_database_another_process_has_open(db_path, holder):
    small_db(db_path)
    option = ", readonly=True" if holder == "readonly Saver" else ""
    code = textwrap.dedent(f"""
        import sys
        from sqlitesaver import Saver
        saver = Saver(sys.argv[1]{option})
        saver.get("t")
        print("ready", flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", code, db_path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        before = family_digest(db_path)
        with pytest.raises(BusyTimeoutError, match="in use") as info:
            vacuum(db_path)
        assert info.value.path == db_path
        assert family_digest(db_path) == before
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
        child.stdout.close()


def test_vacuum_refuses_a_database_open_in_this_process(db_path):
    small_db(db_path)
    with Saver(db_path) as saver:
        with pytest.raises(BusyTimeoutError, match="in use"):
            vacuum(db_path)
        saver.put("t", "still writable")


def test_vacuum_keeps_what_only_the_wal_held(db_path):
    small_db(db_path)
    subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, sys
        from sqlitesaver import Saver
        saver = Saver(sys.argv[1])
        saver.put("killed", {"only": "in the -wal"})
        os._exit(0)
    """), db_path], check=True, env=child_env())
    assert os.path.getsize(db_path + "-wal") > 0
    assert vacuum(db_path).check.ok
    assert os.path.getsize(db_path + "-wal") == 0
    with Saver(db_path) as saver:
        assert saver.get("killed").state == {"only": "in the -wal"}


def test_vacuum_refuses_what_is_not_a_sqlitesaver_database(tmp_path):
    other = str(tmp_path / "other.db")
    foreign_db(other, application_id=0, wal=True)
    before = family_digest(other)
    with pytest.raises(NotASaverDatabaseError):
        vacuum(other)
    assert family_digest(other) == before
    missing = str(tmp_path / "missing.db")
    with pytest.raises(CannotOpenError, match="does not exist"):
        vacuum(missing)
    assert sorted(os.listdir(tmp_path)) == ["other.db"]
