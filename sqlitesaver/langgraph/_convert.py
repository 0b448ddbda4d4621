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

``list(filter=...)`` follows LangGraph's SQLite saver (see :class:`Filter`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import WRITES_IDX_MAP, CheckpointTuple, SerializerProtocol

from ..errors import ForeignCheckpointError, InvalidArgumentError, SerializationError
from ..records import Checkpoint

__all__ = ["Writes", "Filter", "dumps", "location", "parts_to_tuple", "split_writes", "to_config",
           "to_tuple"]

#: (indexes, (channel, value) pairs) of one kind of write
Writes = tuple[list[int], list[tuple[str, Any]]]


def location(config: RunnableConfig, *, default_ns: str | None = "") -> tuple[str, Any, Any]:
    """The thread id (as text, like LangGraph's SqliteSaver), namespace (``default_ns`` when the
    config has none) and checkpoint id (None when absent or empty) a config names."""
    # (a dict by type first: the ABC's isinstance costs more, at every call of the adapter)
    if type(config) is not dict and not isinstance(config, Mapping):
        raise InvalidArgumentError(f"config must be a dict (a RunnableConfig), not "
                                   f"{type(config).__name__}")
    configurable = config.get("configurable") or {}
    if type(configurable) is not dict and not isinstance(configurable, Mapping):
        raise InvalidArgumentError(f"config['configurable'] must be a dict, not "
                                   f"{type(configurable).__name__}")
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
    """The CheckpointTuple of a stored checkpoint record (see :func:`parts_to_tuple`)."""
    return parts_to_tuple(
        (stored.thread_id, stored.namespace, stored.checkpoint_id, stored.parent_id,
         stored.state, stored.metadata,
         [(w.task_id, w.index, w.channel, w.value, w.task_path)
          for w in stored.pending_writes]), serde, path=path)


def parts_to_tuple(parts: tuple, serde: SerializerProtocol, *,
                   path: str | None = None) -> CheckpointTuple:
    """The CheckpointTuple of a stored checkpoint given as the Saver's ``records=False``
    tuple ``(thread_id, namespace, checkpoint_id, parent_id, state, metadata, writes)``, each
    write ``(task_id, index, channel, value, task_path)``; pending writes in
    ``writes_sort_key`` order (task_path, task_id, index), the order LangGraph applies a
    superstep's writes in. :class:`~sqlitesaver.errors.ForeignCheckpointError` if the
    checkpoint or one of its writes was not stored by this adapter (``path`` is the database,
    for the error)."""
    thread_id, namespace, checkpoint_id, parent_id, state, metadata, writes = parts
    # Each is refused unless the [type, bytes] list dumps() stores (bytes: what the codec
    # returns for a msgpack bin); tested inline, not by a function: three calls per
    # get_tuple with two pending writes.
    if not (type(state) is list and len(state) == 2 and type(state[0]) is str
            and type(state[1]) is bytes):
        _refuse(parts, state, "its state", path)
    if writes:
        for task_id, index, channel, value, _ in writes:
            if not (type(value) is list and len(value) == 2 and type(value[0]) is str
                    and type(value[1]) is bytes):  # the message is built only then
                _refuse(parts, value, f"its pending write {index} of task {task_id!r} "
                        f"(channel {channel!r})", path)
        loads = serde.loads_typed
        pending = [(task_id, channel, loads(tuple(value)))
                   for task_id, _, channel, value, _ in sorted(writes, key=_write_order)]
    else:
        pending = []
    return CheckpointTuple(
        {"configurable": {"thread_id": thread_id, "checkpoint_ns": namespace,
                          "checkpoint_id": checkpoint_id}},
        serde.loads_typed(tuple(state)),
        metadata,
        None if parent_id is None else to_config(thread_id, namespace, parent_id),
        pending)


# LangGraph's writes_sort_key(task_path, task_id, index) is that tuple itself; as an
# itemgetter of a write (task_id, index, channel, value, task_path) the sort calls no Python
# function per write. tests/test_langgraph_saver.py checks that the two agree, so a LangGraph
# whose key changes fails the tests instead of reordering writes silently.
_write_order = operator.itemgetter(4, 0, 1)


def _refuse(parts: tuple, value: Any, what: str, path: str | None) -> None:
    """Refuse a value that is not the ``[type, bytes]`` list :func:`dumps` stores."""
    thread_id, namespace, checkpoint_id = parts[:3]
    error = ForeignCheckpointError(
        f"checkpoint {checkpoint_id!r} of thread {thread_id!r} (namespace "
        f"{namespace!r}) was not written through sqlitesaver.langgraph: {what} is "
        f"{_shape(value)}, not the [type, bytes] pair of a LangGraph serializer, so the core "
        "Saver API wrote it. Use one database through one API: keep the Saver's own "
        "checkpoints in another file.", path=path)
    error.thread_id, error.namespace = thread_id, namespace
    error.checkpoint_id = checkpoint_id
    raise error


def _shape(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        items = ", ".join(type(item).__name__ for item in value[:3])
        more = ", ..." if len(value) > 3 else ""
        return f"a {type(value).__name__} of {len(value)} ({items}{more})"
    return f"a {type(value).__name__}"


#: How :func:`dumps` names a write's value in its error (formatted only then).
_WRITE_VALUE = "the value of writes[%d] (channel %.80r)"


def dumps(serde: SerializerProtocol, value: Any, what: str = "a value", *details: Any) -> list:
    """``serde.dumps_typed(value)`` as the list the Saver stores; the serializer's own failure
    (LangGraph's raises a bare TypeError for a type it cannot serialize) as
    :class:`~sqlitesaver.errors.SerializationError` (a TypeError too), raised before anything
    is written. ``what % details`` names the value in that error: formatted only then, not at
    every put and write."""
    try:
        type_, data = serde.dumps_typed(value)
    except Exception as exc:
        raise SerializationError(
            f"the serializer ({type(serde).__name__}) cannot serialize {what % details} "
            f"({type(exc).__name__}: {exc}); nothing was written.") from exc
    return [type_, data]


def split_writes(writes: Sequence[tuple[str, Any]], serde: SerializerProtocol
                 ) -> tuple[Writes, Writes]:
    """(regular, special) writes with their LangGraph indexes and serialized values. Regular
    writes keep their first value when retried; special ones (errors, interrupts, resumes,
    scheduled) replace, and within one call the last one to a special channel wins, as in
    LangGraph's SqliteSaver."""
    if type(writes) is not list and type(writes) is not tuple and (
            isinstance(writes, (str, bytes, Mapping)) or not isinstance(writes, Sequence)):
        raise InvalidArgumentError(f"writes must be a list of (channel, value) pairs, not "
                                   f"{type(writes).__name__}")
    regular: Writes = ([], [])
    special: dict[int, tuple[str, Any]] = {}
    for position, write in enumerate(writes):
        if not isinstance(write, (tuple, list)) or len(write) != 2:
            raise InvalidArgumentError(f"writes[{position}] must be a (channel, value) pair, "
                                       f"not {write!r:.80}; nothing was written")
        channel, value = write
        if isinstance(channel, str) and channel in WRITES_IDX_MAP:
            special[WRITES_IDX_MAP[channel]] = (
                channel, dumps(serde, value, _WRITE_VALUE, position, channel))
        else:
            regular[0].append(position)
            regular[1].append(
                (channel, dumps(serde, value, _WRITE_VALUE, position, channel)))
    return regular, (list(special), list(special.values()))


#: The filter keys LangGraph's SQLite saver accepts (``_FILTER_PATTERN`` in its
#: ``langgraph/checkpoint/sqlite/utils.py``), matched whole: its ``re.match`` with ``$`` also
#: lets a key end in a newline, which is refused here.
_FILTER_KEY = re.compile(r"[a-zA-Z0-9_.-]+")
_ABSENT = object()


@dataclass(frozen=True)
class Filter:
    """A ``list(filter=...)`` as LangGraph's SQLite saver reads it, whose SQL is
    ``json_extract(metadata, '$.<key>') = ?`` (``IS NULL`` for ``None``):

    * A key is a path: each ``.`` steps into a nested dict (``"user.name"`` is
      ``metadata["user"]["name"]``), so a top-level key that itself contains a dot cannot be
      filtered on. Keys hold only ASCII letters, digits, ``_``, ``.`` and ``-``, with no empty
      step; anything else raises :class:`~sqlitesaver.errors.InvalidArgumentError` (a
      ``ValueError``, as LangGraph's ``"Invalid filter key"``), before anything is read.
    * ``None`` matches a path that leads to ``None`` or to nothing (a missing key, or a step
      into something that is not a dict), as SQL's ``IS NULL`` does.
    * Any other value matches the value at the path under Python ``==``: ``1``, ``1.0`` and
      ``True`` are equal (they are in SQLite too), ``"1"`` is not ``1``, and lists and dicts are
      compared as values (LangGraph's saver compares their JSON text; see the README).

    ``direct`` is the part the Saver's own ``list(metadata=...)`` checks (top-level keys with
    values other than ``None``: present and ``==``, the same rule); ``paths`` is the rest, which
    :meth:`rest_matches` checks here.
    """

    direct: dict | None
    paths: tuple[tuple[tuple[str, ...], Any], ...]

    @classmethod
    def of(cls, filter: Any) -> "Filter":
        if filter is None:
            return cls(None, ())
        if not isinstance(filter, Mapping):
            raise InvalidArgumentError(
                f"filter must be a dict or None, not {type(filter).__name__}")
        direct: dict = {}
        paths = []
        for key, value in filter.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"Invalid filter key: {key!r} is a {type(key).__name__}; filter keys are "
                    "str; nothing was read")
            if not _FILTER_KEY.fullmatch(key):
                raise InvalidArgumentError(
                    f"Invalid filter key: {key!r}. Filter keys must contain only ASCII "
                    "letters, digits, underscores, dots and hyphens (as in LangGraph's SQLite "
                    "saver); nothing was read")
            steps = tuple(key.split("."))
            if "" in steps:
                raise InvalidArgumentError(
                    f"Invalid filter key: {key!r}. A dot separates the steps of a path into "
                    "nested metadata, and no step may be empty; nothing was read")
            if len(steps) == 1 and value is not None:
                direct[key] = value
            else:
                paths.append((steps, value))
        return cls(direct or None, tuple(paths))

    def matches(self, metadata: Any) -> bool:
        """The whole filter, for metadata the Saver has not checked."""
        return isinstance(metadata, dict) and (
            self.direct is None or all(key in metadata and metadata[key] == value
                                       for key, value in self.direct.items())
        ) and self.rest_matches(metadata)

    def rest_matches(self, metadata: Any) -> bool:
        """The paths and ``None`` values, for metadata the Saver matched ``direct`` with."""
        for steps, wanted in self.paths:
            found = metadata
            for step in steps:
                found = found.get(step, _ABSENT) if isinstance(found, dict) else _ABSENT
                if found is _ABSENT:
                    break
            if wanted is None:
                if found is not _ABSENT and found is not None:
                    return False
            elif found is _ABSENT or not found == wanted:
                return False
        return True
