"""The LangGraph checkpoints and pending writes bench/run.py stores through both adapters.

One shape on both sides: ``langgraph.checkpoint.base.empty_checkpoint()`` with ``channel_values``
set to the 4 KiB state (each of its keys a channel), put through the adapter's ``put`` with the
same metadata and no parent; on the "with writes" threads the latest checkpoint also gets
:data:`WRITES` through ``put_writes`` under :data:`TASK_ID`: two small values, like the writes a
LangGraph step leaves (a message appended to a list channel, a status). bench/run.py's core rows
store the same two values with ``Saver.put_writes``, and its bare ceiling two ``msgpack`` blobs.

Standard library only at import time (LangGraph is imported by :class:`Checkpoints`), so that the
LangGraph peer process (stdlib ``sqlite3``) and bench/run.py (APSW) can both import it: neither
SQLite library is loaded here.
"""

from __future__ import annotations

import itertools
from typing import Any

TASK_ID = "bench-task-0001"
WRITES: list[tuple[str, Any]] = [
    ("messages", [{"role": "assistant", "id": 4001, "tokens": 12,
                   "content": "Both regions are flagged; the forecast is revised."}]),
    ("status", "done"),
]


class Checkpoints:
    """LangGraph checkpoints of one thread whose ``channel_values`` are ``values``. Ids are
    made as LangGraph makes them (uuid6) once, then counted up in the last 12 hex digits:
    unique, increasing, 36 characters, and without a uuid6() call inside a timed loop.
    Raises ImportError if LangGraph's checkpoint package is not installed."""

    def __init__(self, values: dict, *, versioned: bool = False) -> None:
        from langgraph.checkpoint.base import empty_checkpoint
        from langgraph.checkpoint.base.id import uuid6

        self.template = empty_checkpoint()
        self.values = values
        self.prefix = str(uuid6(clock_seq=0))[:24]
        self.counter = itertools.count()
        self.versioned = versioned
        #: ``new_versions`` for the ``put`` of the checkpoint :meth:`next` returned last
        self.new_versions: dict[str, str] = {}

    def next(self) -> dict:
        """The thread's next checkpoint (a new dict; the values are shared, not copied).
        ``versioned``: as a graph step that changed every channel, its ``channel_versions``
        name each channel at a new version (LangGraph's version format), and
        :attr:`new_versions` says so for the put. LangGraph's PostgresSaver needs this: it
        stores a channel's value once per (channel, version) and reads a checkpoint's values
        back through its ``channel_versions``; with empty_checkpoint()'s empty ones it wrote
        the values once and read checkpoints back without them (the PostgreSQL bench did so
        until session 15). Savers that store the checkpoint whole ignore the versions."""
        checkpoint = self.template.copy()
        number = next(self.counter)
        checkpoint["id"] = f"{self.prefix}{number:012x}"
        checkpoint["channel_values"] = self.values
        if self.versioned:
            version = f"{number + 1:032}.{0:016}"
            checkpoint["channel_versions"] = dict.fromkeys(self.values, version)
            self.new_versions = dict.fromkeys(self.values, version)
        return checkpoint


def config(thread_id: str, checkpoint_id: str | None = None) -> dict:
    """The RunnableConfig naming a thread (root namespace), or one of its checkpoints."""
    configurable = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def fill(saver: Any, thread_id: str, values: dict, metadata: dict, count: int,
         writes: bool) -> dict:
    """Put ``count`` checkpoints into ``thread_id`` through ``saver.put`` (a LangGraph
    checkpointer: either adapter), then, if ``writes``, :data:`WRITES` against the latest
    through ``saver.put_writes``; return the config that reads the thread's latest. Checks
    that ``get_tuple`` reads it back with exactly those writes."""
    checkpoints = Checkpoints(values)
    thread = config(thread_id)
    for _ in range(count):
        stored = saver.put(thread, checkpoints.next(), metadata, {})
    if writes:
        saver.put_writes(stored, WRITES, TASK_ID)
    got = saver.get_tuple(thread)
    if got is None or got.checkpoint["channel_values"] != values \
            or [(c, v) for _, c, v in got.pending_writes] != (WRITES if writes else []):
        raise SystemExit(f"{type(saver).__module__}: thread {thread_id} does not read back")
    return thread
