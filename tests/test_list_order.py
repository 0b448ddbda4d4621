"""list() pairs two streams by descending seq; out-of-order input must raise, not mis-pair.

SQLite returns the materialized seq list in the order it was built, which list() relies on for
namespace=None; these guards turn a planner change into an error instead of writes attached to
the wrong checkpoint.
"""

from __future__ import annotations

import pytest

from sqlitesaver import SaverError, integrity


def _row(seq: int) -> tuple:
    state, metadata = b"\x01", b"\x80"
    return (seq, "t", "", None, 0, state, metadata,
            integrity.checkpoint_checksum(seq, "t", "", None, 0, state, metadata))


def _write(seq: int, index: int = 0) -> tuple:
    return (seq, "task", index, "c", b"\x01", "",
            integrity.write_checksum(seq, "task", index, "c", "", b"\x01"))


def test_merge_pairs_writes_with_their_checkpoints(db_path, open_saver):
    saver = open_saver(db_path)
    listed = list(saver._merge(iter([_row(3), _row(2), _row(1)]),
                               iter([_write(3, 0), _write(3, 1), _write(1, 0)]), None, None))
    assert [len(c.pending_writes) for c in listed] == [2, 0, 1]


@pytest.mark.parametrize("checkpoints, writes, what", [
    ([_row(1), _row(2)], [], "checkpoints listed out of order"),
    ([_row(2), _row(1)], [_write(1), _write(2)], "pending writes listed out of order"),
])
def test_merge_refuses_out_of_order_streams(db_path, open_saver, checkpoints, writes, what):
    saver = open_saver(db_path)
    with pytest.raises(SaverError, match=what):
        list(saver._merge(iter(checkpoints), iter(writes), None, None))
