"""Translation between LangGraph's checkpointer vocabulary and the Saver's.

A LangGraph checkpoint is stored as the Saver checkpoint with the same id (LangGraph's own uuid6
id, a caller-supplied id to the Saver) in the same thread and namespace (``checkpoint_ns``).
Its state is the ``(type, bytes)`` pair of ``serde.dumps_typed(checkpoint)`` (stored as a
two-item list: a plain msgpack array, cheaper for the Saver's codec than a tuple, which it keeps
as an exact type), so whatever serializer the user configured (encrypted ones included) is the
only one that sees channel values. Metadata is stored as plain values, as LangGraph's own savers
store it (JSON there), so that ``list(filter=...)`` and ``delete_for_runs`` can read it. A
pending write's value is its ``dumps_typed`` pair (a list too), stored under LangGraph's index:
its position in the call for a regular channel, the fixed negative index of ``WRITES_IDX_MAP``
for a special one. A checkpoint or write whose value is not such a pair was written through the
core API: reading it raises :class:`~sqlitesaver.errors.ForeignCheckpointError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (WRITES_IDX_MAP, CheckpointTuple, SerializerProtocol,
                                       writes_sort_key)

from ..errors import ForeignCheckpointError, InvalidArgumentError
from ..records import Checkpoint

__all__ = ["Writes", "dumps", "location", "split_writes", "to_config", "to_tuple",
           "metadata_matches"]

#: (indexes, (channel, value) pairs) of one kind of write
Writes = tuple[list[int], list[tuple[str, Any]]]


def location(config: RunnableConfig, *, default_ns: str | None = "") -> tuple[str, Any, Any]:
    """The thread id (as text, like LangGraph's SqliteSaver), namespace (``default_ns`` when the
    config has none) and checkpoint id (None when absent or empty) a config names."""
    configurable = config.get("configurable") or {}
    if configurable.get("thread_id") is None:
        raise InvalidArgumentError(
            "the config has no configurable['thread_id']: LangGraph checkpointers need one, "
            "e.g. {'configurable': {'thread_id': '1'}}")
    return (str(configurable["thread_id"]), configurable.get("checkpoint_ns", default_ns),
            configurable.get("checkpoint_id") or None)


def to_config(thread_id: str, namespace: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id, "checkpoint_ns": namespace,
                             "checkpoint_id": checkpoint_id}}


def to_tuple(stored: Checkpoint, serde: SerializerProtocol, *,
             path: str | None = None) -> CheckpointTuple:
    """The CheckpointTuple of a stored checkpoint; pending writes in ``writes_sort_key`` order
    (task_path, task_id, index), the order LangGraph applies a superstep's writes in.
    :class:`~sqlitesaver.errors.ForeignCheckpointError` if the checkpoint or one of its writes
    was not stored by this adapter (``path`` is the database, for the error)."""
    _check_pair(stored, stored.state, "its state", path)
    for w in stored.pending_writes:
        _check_pair(stored, w.value,
                    f"its pending write {w.index} of task {w.task_id!r} (channel {w.channel!r})",
                    path)
    writes = sorted(stored.pending_writes,
                    key=lambda w: writes_sort_key(w.task_path, w.task_id, w.index))
    return CheckpointTuple(
        to_config(stored.thread_id, stored.namespace, stored.checkpoint_id),
        serde.loads_typed(tuple(stored.state)),
        stored.metadata,
        None if stored.parent_id is None else to_config(stored.thread_id, stored.namespace,
                                                        stored.parent_id),
        [(w.task_id, w.channel, serde.loads_typed(tuple(w.value))) for w in writes])


def _check_pair(stored: Checkpoint, value: Any, what: str, path: str | None) -> None:
    """Refuse a value that is not the ``[type, bytes]`` list :func:`dumps` stores."""
    if type(value) is list and len(value) == 2 and type(value[0]) is str \
            and isinstance(value[1], (bytes, bytearray)):
        return
    error = ForeignCheckpointError(
        f"checkpoint {stored.checkpoint_id!r} of thread {stored.thread_id!r} (namespace "
        f"{stored.namespace!r}) was not written through sqlitesaver.langgraph: {what} is "
        f"{_shape(value)}, not the [type, bytes] pair of a LangGraph serializer, so the core "
        "Saver API wrote it. Use one database through one API: keep the Saver's own "
        "checkpoints in another file.", path=path)
    error.thread_id, error.namespace = stored.thread_id, stored.namespace
    error.checkpoint_id = stored.checkpoint_id
    raise error


def _shape(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        items = ", ".join(type(item).__name__ for item in value[:3])
        more = ", ..." if len(value) > 3 else ""
        return f"a {type(value).__name__} of {len(value)} ({items}{more})"
    return f"a {type(value).__name__}"


def dumps(serde: SerializerProtocol, value: Any) -> list:
    """``serde.dumps_typed(value)`` as the list the Saver stores."""
    type_, data = serde.dumps_typed(value)
    return [type_, data]


def split_writes(writes: Sequence[tuple[str, Any]], serde: SerializerProtocol
                 ) -> tuple[Writes, Writes]:
    """(regular, special) writes with their LangGraph indexes and serialized values. Regular
    writes keep their first value when retried; special ones (errors, interrupts, resumes,
    scheduled) replace, and within one call the last one to a special channel wins, as in
    LangGraph's SqliteSaver."""
    regular: Writes = ([], [])
    special: dict[int, tuple[str, Any]] = {}
    for position, (channel, value) in enumerate(writes):
        if channel in WRITES_IDX_MAP:
            special[WRITES_IDX_MAP[channel]] = (channel, dumps(serde, value))
        else:
            regular[0].append(position)
            regular[1].append((channel, dumps(serde, value)))
    return regular, (list(special), list(special.values()))


def metadata_matches(metadata: Any, wanted: dict) -> bool:
    """The Saver's ``list(metadata=...)`` rule: every wanted key present, values ``==``."""
    return isinstance(metadata, dict) and all(
        key in metadata and metadata[key] == value for key, value in wanted.items())
