"""list() pairs two streams by descending seq; out-of-order input must raise, not mis-pair.
Over both engines (``_merge`` is the core's; a read ended early is each engine's).

SQLite returns the materialized seq list in the order it was built, which list() relies on for
namespace=None; these guards turn a planner change into an error instead of writes attached to
the wrong checkpoint.
"""

from __future__ import annotations

import pytest

from conftest import execute_on
from sqlitesaver import SaverError, integrity


def _row(seq: int) -> tuple:
    state, metadata = b"\x01", b"\x80"
    return (seq, "t", "", None, 0, state, metadata,
            integrity.checkpoint_checksum(seq, "t", "", None, 0, state, metadata),
            None, None)  # key, parent_key: a checkpoint with a generated id


def _write(seq: int, index: int = 0) -> tuple:
    return (seq, "task", index, "c", b"\x01", "",
            integrity.write_checksum(seq, "task", index, "c", "", b"\x01"))


def test_merge_pairs_writes_with_their_checkpoints(any_empty_target, open_saver):
    saver = open_saver(any_empty_target)
    listed = list(saver._merge(iter([_row(3), _row(2), _row(1)]),
                               iter([_write(3, 0), _write(3, 1), _write(1, 0)]), None, None))
    assert [len(c.pending_writes) for c in listed] == [2, 0, 1]


@pytest.mark.parametrize("checkpoints, writes, what", [
    ([_row(1), _row(2)], [], "checkpoints listed out of order"),
    ([_row(2), _row(1)], [_write(1), _write(2)], "pending writes listed out of order"),
])
def test_merge_refuses_out_of_order_streams(any_empty_target, open_saver, checkpoints, writes,
                                           what):
    saver = open_saver(any_empty_target)
    with pytest.raises(SaverError, match=what):
        list(saver._merge(iter(checkpoints), iter(writes), None, None))


@pytest.mark.parametrize("reader", ["list", "read_log"])
def test_a_read_that_ended_early_leaves_no_stale_snapshot(any_empty_target, open_saver, reader):
    # A traceback kept by the caller keeps the generator's frame, and so its cursors, alive.
    # An unfinished statement pins its connection's WAL snapshot even after COMMIT; if that
    # reader went back to the pool, later reads would not see later commits. (On a server: a
    # page's REPEATABLE READ transaction must have ended, its connection back in the pool.)
    saver = open_saver(any_empty_target)
    for n in range(3):
        saver.put("t", n)
        saver.append_log("t", n)
    table = "checkpoints" if reader == "list" else "log"
    execute_on(any_empty_target, f"UPDATE {table} SET checksum = checksum + 1 WHERE seq = "
               f"(SELECT min(seq) FROM {table})")  # the last one a reader reaches
    from sqlitesaver import ChecksumError
    with pytest.raises(ChecksumError) as kept:
        list(saver.list("t") if reader == "list" else saver.read_log("t"))
    newer = saver.put("t", "newer")
    assert saver.get("t").checkpoint_id == newer.checkpoint_id
    assert [c.state for c in saver.list("t", limit=1)] == ["newer"]
    assert kept.value is not None  # still referenced here, with its traceback
