"""Session 22's review: what the reviewer of the session's read-path changes found.

* A pending write whose ``task_id`` was damaged into a blob made ``get`` raise a raw
  ``TypeError`` (Python's sort compared it with a str); the statement now orders the writes
  and the row's checksum reports the damage.
* ``get``'s statement repeated the checkpoint's state on the row of each pending write (a
  LEFT JOIN): a 1 MiB state with 10 writes was read and copied 11 times (4.9 ms against
  0.1 ms). On SQLite only the first row holds it now (PostgreSQL: see its sql.py).
* A deferral abandoned by an exception that skipped its end is healed after
  ``interrupts.STALE_AFTER``; its recorder stays installed and kept the list of the signals it
  had held, with their frames, for the rest of the process (a frame of a read keeps the read
  and its connection from their finalizer).
"""

from __future__ import annotations

import signal
import threading

import apsw
import pytest

from conftest import is_server
from sqlitesaver import Saver, interrupts
from sqlitesaver.errors import ChecksumError


def test_a_write_whose_task_id_is_a_blob_raises_checksum_error_not_a_raw_type_error(db_path):
    with Saver(db_path) as saver:
        ref = saver.put("t", {"n": 1})
        saver.put_writes("t", ref.checkpoint_id, "a", [("c", 1)])
    conn = apsw.Connection(db_path)
    # a second write of the same checkpoint, its task_id a blob: SQLite's BINARY order puts
    # it after every text, Python's sort could not compare it with one
    conn.execute("INSERT INTO writes SELECT checkpoint_seq, X'62', idx, channel, value, "
                 "task_path, checksum FROM writes")
    conn.close()
    with Saver(db_path) as saver:
        with pytest.raises(ChecksumError):
            saver.get("t")
        with pytest.raises(ChecksumError):
            list(saver.list("t"))


def test_a_healed_deferral_lets_go_of_the_frames_it_held(monkeypatch, hang_detector,
                                                         python_sigint_handler):
    """A section never ended (as when an exception skips its end), a Ctrl-C held back in it:
    the heal delivers the signal after STALE_AFTER, and the recorder it leaves installed holds
    no frame any more."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    hang_detector(30)
    monkeypatch.setattr(interrupts, "STALE_AFTER", 0.05)
    section = interrupts.deferred()
    section.__enter__()  # abandoned: never ended
    recorder = signal.getsignal(signal.SIGINT)
    try:
        cells = dict(zip(recorder.__code__.co_freevars,
                         (cell.cell_contents for cell in recorder.__closure__)))
        signal.raise_signal(signal.SIGINT)  # held back, with the frame it came in
        assert len(cells["pending"]) == 1
        with pytest.raises(KeyboardInterrupt):
            threading.Event().wait(10)  # delivered by the heal, after STALE_AFTER
        assert cells["pending"] == [], "the healed section's recorder still holds frames"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            threading.Event().wait(10)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.parametrize("which", ["latest", "generated id", "caller id", "in a transaction"])
def test_get_reads_the_state_once_however_many_writes_it_has(any_empty_target, open_saver,
                                                             which):
    saver = open_saver(any_empty_target)
    state = {"blob": "x" * 300_000, "n": 1}
    generated = saver.put("t", state)
    saver.put("t", state, checkpoint_id="mine")
    target = "mine" if which == "caller id" else generated.checkpoint_id
    if which == "latest":
        saver.put("t", {"other": 1})
        target = saver.put("t", state).checkpoint_id
    # tasks put out of order, with ids whose order differs by code point and by case
    tasks = ["task-\u00e9", "Task-b", "task-a", "task-\U0001f600"]
    for task in tasks:
        saver.put_writes("t", target, task, [("c", task), ("d", 2)])
    checkpoint_id = None if which == "latest" else target

    def read():
        rows = saver._get_rows("t", "", checkpoint_id)
        got = saver.get("t", checkpoint_id)
        return rows, got

    if which == "in a transaction":  # SQLite: on the write connection
        with saver.transaction():
            rows, got = read()
    else:
        rows, got = read()
    assert len(rows) == 2 * len(tasks)
    assert type(rows[0][5]) is bytes
    if not is_server(any_empty_target):  # PostgreSQL still repeats it (postgres/sql.py)
        assert all(row[5] is None for row in rows[1:]), "the state was read again for a write"
    assert got.state == state and got.checkpoint_id == target
    assert [(w.task_id, w.index) for w in got.pending_writes] == \
        sorted((task, index) for task in tasks for index in (0, 1))
