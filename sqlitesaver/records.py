"""The values the Saver API returns. Plain frozen dataclasses: no database handles inside."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["CheckpointRef", "PendingWrite", "Checkpoint", "LogEvent", "RecoveryReport"]


@dataclass(frozen=True)
class CheckpointRef:
    """What :meth:`Saver.put` returns once the checkpoint's COMMIT has returned."""

    thread_id: str
    namespace: str
    checkpoint_id: str
    created_at: datetime


@dataclass(frozen=True)
class PendingWrite:
    """One ``(channel, value)`` written by a task against a checkpoint."""

    task_id: str
    index: int
    channel: str
    value: Any
    task_path: str = ""


@dataclass(frozen=True)
class Checkpoint:
    """A stored checkpoint with its pending writes, ordered by ``(task_id, index)``."""

    thread_id: str
    namespace: str
    checkpoint_id: str
    parent_id: str | None
    created_at: datetime
    state: Any
    metadata: dict
    pending_writes: tuple[PendingWrite, ...] = field(default=())


@dataclass(frozen=True)
class LogEvent:
    """One appended log event; ``seq`` grows with commit order across the whole database."""

    seq: int
    thread_id: str
    created_at: datetime
    event: Any


@dataclass(frozen=True)
class RecoveryReport:
    """What the startup recovery of one :class:`Saver` found and did, in order.

    ``integrity_check`` is the mode that ran (``"quick"``, ``"full"`` or ``"off"``); a damaged
    database raises instead of producing a report. ``checkpoint_busy`` is SQLite's busy column of
    ``PRAGMA wal_checkpoint(TRUNCATE)``: true when another connection (usually a reader in another
    process) kept the checkpoint from finishing, which is reported, not an error.
    """

    path: str
    created: bool
    integrity_check: str
    wal_frames: int
    wal_frames_checkpointed: int
    checkpoint_busy: bool
    schema_version_found: int
    schema_version: int
    migrations_applied: tuple[int, ...]
    stale_files_removed: tuple[str, ...]
    seconds: float


# --- building records on the read and write paths ----------------------------------------------
# A frozen dataclass's __init__ sets each field through object.__setattr__, about 0.9 us for a
# PendingWrite and 1.5 us for a Checkpoint; a read builds one per checkpoint and per pending
# write, a put one CheckpointRef. These fill the instance's __dict__ directly (about 0.35 us):
# the same instance as the class's own constructor gives (same fields in the same order, so the
# same __eq__, __hash__ and __repr__; tests/test_records.py compares them), for values the Saver
# read, wrote and checked itself.

_new = object.__new__


def new_checkpoint_ref(thread_id: str, namespace: str, checkpoint_id: str,
                       created_at: datetime) -> CheckpointRef:
    obj = _new(CheckpointRef)
    obj.__dict__.update({"thread_id": thread_id, "namespace": namespace,
                         "checkpoint_id": checkpoint_id, "created_at": created_at})
    return obj


def new_pending_write(task_id: str, index: int, channel: str, value: Any,
                      task_path: str) -> PendingWrite:
    obj = _new(PendingWrite)
    obj.__dict__.update({"task_id": task_id, "index": index, "channel": channel,
                         "value": value, "task_path": task_path})
    return obj


def new_checkpoint(thread_id: str, namespace: str, checkpoint_id: str, parent_id: str | None,
                   created_at: datetime, state: Any, metadata: dict,
                   pending_writes: tuple[PendingWrite, ...]) -> Checkpoint:
    obj = _new(Checkpoint)
    obj.__dict__.update({"thread_id": thread_id, "namespace": namespace,
                         "checkpoint_id": checkpoint_id, "parent_id": parent_id,
                         "created_at": created_at, "state": state, "metadata": metadata,
                         "pending_writes": pending_writes})
    return obj
