"""sqlitesaver.records: the read paths' fast constructors build the same records as the classes.
Engine-free: no store is opened (the records both engines return are these)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from sqlitesaver.records import (Checkpoint, CheckpointRef, PendingWrite, new_checkpoint,
                                 new_checkpoint_ref, new_pending_write)

WRITE = ("task", 3, "channel", {"v": [1, 2]}, "path")
WHEN = datetime(2026, 12, 3, tzinfo=timezone.utc)


def checkpoint_args(writes: tuple) -> tuple:
    return ("thread", "ns", "00000000000000a1", None, WHEN, {"s": 1}, {"m": True}, writes)


@pytest.mark.parametrize("cls, make, args", [
    (PendingWrite, new_pending_write, WRITE),
    (CheckpointRef, new_checkpoint_ref, ("thread", "ns", "00000000000000a1", WHEN)),
    (Checkpoint, new_checkpoint, checkpoint_args(())),
    (Checkpoint, new_checkpoint, checkpoint_args((PendingWrite(*WRITE),))),
])
def test_a_fast_record_is_the_same_record(cls, make, args):
    fast, slow = make(*args), cls(*args)
    assert type(fast) is cls
    assert fast == slow and repr(fast) == repr(slow)
    assert vars(fast) == vars(slow) and list(vars(fast)) == list(vars(slow))  # field order
    assert list(vars(fast)) == [f.name for f in dataclasses.fields(cls)]  # every field, once
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    if cls is CheckpointRef:
        assert hash(fast) == hash(slow)
    if cls is PendingWrite:
        hashable = make(*args[:3], "value", args[4])
        assert hash(hashable) == hash(cls(*args[:3], "value", args[4]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.thread_id = "other"  # still frozen
    assert dataclasses.replace(fast) == slow
