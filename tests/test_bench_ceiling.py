"""bench/core.py's BareGroupCommit, the ceiling bench/run.py prints the 8-thread target against:
a ceiling that acknowledged rows before their COMMIT, or lost some, would overstate what a
correct group commit can reach, so it is held to the guarantee Saver gives."""

from __future__ import annotations

import os
import sys
import threading

import apsw

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import core  # noqa: E402  (bench/core.py)

THREADS, PUTS = 6, 40


def test_every_acknowledged_row_is_committed_when_put_returns(tmp_path):
    path = str(tmp_path / "group.db")
    group = core.BareGroupCommit(core.open_bare(path, "full", True))
    ready = threading.Barrier(THREADS)
    missing: list[str] = []

    def writer(index: int) -> None:
        reader = apsw.Connection(path)  # another connection sees only committed rows
        try:
            ready.wait()
            for n in range(PUTS):
                thread_id = f"w{index}-{n}"
                group.put(thread_id, b"x" * 100)
                if reader.execute("SELECT count(*) FROM t WHERE thread_id = ?",
                                  (thread_id,)).fetchone()[0] != 1:
                    missing.append(thread_id)
        finally:
            reader.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert missing == []
    assert group.rows == THREADS * PUTS
    assert group.commits < group.rows, "no batch ever held two rows: nothing was grouped"


def test_a_failed_commit_reaches_every_caller_of_its_batch(tmp_path):
    conn = core.open_bare(str(tmp_path / "group.db"), "full", True)
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON t WHEN NEW.thread_id = 'bad' "
                 "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    group = core.BareGroupCommit(conn)
    group.put("good", b"x")
    try:
        group.put("bad", b"x")
    except apsw.ConstraintError as exc:
        assert "refused" in str(exc)
    else:
        raise AssertionError("a row whose INSERT failed was acknowledged")
    assert conn.execute("SELECT thread_id FROM t").fetchall() == [("good",)]
