"""What ``python -m sqlitesaver inspect``, ``history`` and ``show`` print, as data.

Everything here reads through a ``Saver(path, readonly=True)``: nothing is created, migrated,
checkpointed or written (see :class:`~sqlitesaver.Saver`'s ``readonly``). :func:`summary` reads
one snapshot (one read transaction) of the whole database; :func:`history` and
:func:`checkpoint_dict` go through the public API, so every payload they show has passed its
checksum.

**Values as text.** :func:`jsonable` turns any value sqlitesaver stores into JSON, so that
``show`` prints a checkpoint as JSON and ``--json`` output parses. JSON has no bytes, tuples,
sets, datetimes or non-string keys, so those become one-key objects whose key names the type,
which no stored dict can be mistaken for (a dict whose keys are not all plain strings, or that
has a key of the form ``__name__``, is itself written as ``{"__dict__": [[key, value], ...]}``):

========================  ====================================================================
``bytes``                 ``{"__bytes__": "<base64>"}`` (bytes shown safely: no raw control
                          characters or invalid UTF-8 ever reach the terminal)
``bytearray``             ``{"__bytearray__": "<base64>"}``
``tuple``                 ``{"__tuple__": [...]}``
``set`` / ``frozenset``   ``{"__set__": [...]}`` / ``{"__frozenset__": [...]}`` (sorted by repr)
``datetime`` etc.         ``{"__datetime__": "<ISO 8601>"}``, ``__date__``, ``__time__``;
                          ``{"__timedelta__": [days, seconds, microseconds]}``
``UUID`` / ``Decimal``    ``{"__uuid__": "<text>"}`` / ``{"__decimal__": "<text>"}``
nan, inf                  ``{"__float__": "nan"}`` (JSON has no such numbers)
========================  ====================================================================

It is a way to look at data, not an export format: nothing reads it back. Without ``--json``,
``show`` also shortens long values for the terminal (bytes past :data:`SHOWN_BYTES`, text past
:data:`SHOWN_CHARS`, with the full length given); ``--json`` prints every value whole.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import math
import os
import uuid
from collections.abc import Iterator
from typing import Any

from .errors import ChecksumError
from .records import Checkpoint

__all__ = ["SHOWN_BYTES", "SHOWN_CHARS", "jsonable", "summary", "history", "checkpoint_dict"]

#: Without --json, bytes values longer than this are shown cut (base64 of the first ones).
SHOWN_BYTES = 96
#: Without --json, text longer than this is shown cut.
SHOWN_CHARS = 400


def jsonable(value: Any, *, shorten: bool = False) -> Any:
    """``value`` as JSON-compatible data (see the module docstring); ``shorten`` cuts long
    bytes and text for a terminal."""
    kind = type(value)
    if value is None or kind is bool or kind is int:
        return value
    if kind is float:
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if kind is str:
        if shorten and len(value) > SHOWN_CHARS:
            return value[:SHOWN_CHARS] + f"... ({len(value)} characters)"
        return value
    if kind is bytes or kind is bytearray:
        tag = "__bytes__" if kind is bytes else "__bytearray__"
        if shorten and len(value) > SHOWN_BYTES:
            return {tag: base64.b64encode(bytes(value[:SHOWN_BYTES])).decode("ascii") + "...",
                    "length": len(value)}
        return {tag: base64.b64encode(bytes(value)).decode("ascii")}
    if kind is list:
        return [jsonable(item, shorten=shorten) for item in value]
    if kind is tuple:
        return {"__tuple__": [jsonable(item, shorten=shorten) for item in value]}
    if kind is set or kind is frozenset:
        tag = "__set__" if kind is set else "__frozenset__"
        return {tag: [jsonable(item, shorten=shorten) for item in sorted(value, key=repr)]}
    if kind is dict:
        if all(type(key) is str and not _is_tag(key) for key in value):
            return {key: jsonable(item, shorten=shorten) for key, item in value.items()}
        return {"__dict__": [[jsonable(key, shorten=shorten), jsonable(item, shorten=shorten)]
                             for key, item in value.items()]}
    if kind is datetime.datetime:
        return {"__datetime__": value.isoformat()}
    if kind is datetime.date:
        return {"__date__": value.isoformat()}
    if kind is datetime.time:
        return {"__time__": value.isoformat()}
    if kind is datetime.timedelta:
        return {"__timedelta__": [value.days, value.seconds, value.microseconds]}
    if kind is uuid.UUID:
        return {"__uuid__": str(value)}
    if kind is decimal.Decimal:
        return {"__decimal__": str(value)}
    return {"__repr__": repr(value)}  # not a stored type; never reached through the codec


def _is_tag(key: str) -> bool:
    return len(key) > 4 and key.startswith("__") and key.endswith("__")


def checkpoint_dict(checkpoint: Checkpoint, *, shorten: bool = False) -> dict:
    """A checkpoint, its metadata, state and pending writes, as JSON-compatible data."""
    return {
        "thread_id": checkpoint.thread_id, "namespace": checkpoint.namespace,
        "checkpoint_id": checkpoint.checkpoint_id, "parent_id": checkpoint.parent_id,
        "created_at": checkpoint.created_at.isoformat(),
        "metadata": jsonable(checkpoint.metadata, shorten=shorten),
        "state": jsonable(checkpoint.state, shorten=shorten),
        "pending_writes": [{"task_id": w.task_id, "index": w.index, "channel": w.channel,
                            "task_path": w.task_path, "value": jsonable(w.value, shorten=shorten)}
                           for w in checkpoint.pending_writes]}


def history(saver: Any, thread_id: str, *, namespace: str | None = None,
            limit: int | None = None, damaged: list[dict] | None = None) -> Iterator[dict]:
    """The thread's checkpoints, newest first, one dict each (id, namespace, parent, time,
    metadata, pending-write count), streamed; each damaged one is skipped (``skip_damaged``)
    and appended to ``damaged`` as ``{"checkpoint_id", "error"}``."""
    found = [] if damaged is None else damaged

    def on_damaged(checkpoint_id: str, error: ChecksumError) -> None:
        found.append({"checkpoint_id": checkpoint_id, "error": str(error)})

    for c in saver.list(thread_id, namespace=namespace, limit=limit, skip_damaged=True,
                        on_damaged=on_damaged):
        yield {"checkpoint_id": c.checkpoint_id, "namespace": c.namespace,
               "parent_id": c.parent_id, "created_at": c.created_at.isoformat(),
               "pending_writes": len(c.pending_writes), "metadata": jsonable(c.metadata)}


def summary(saver: Any) -> dict:
    """Files, schema, settings, and per thread: namespaces, checkpoints, pending writes, log
    events, payload bytes, newest checkpoint. One snapshot."""
    from .sqlite.reads import _Read  # the Saver's own read connections: readonly, pooled
    path = saver.path
    with _Read(saver, "inspecting the database") as read:
        conn = read.conn

        def pragma(name: str) -> Any:
            return conn.execute(f"PRAGMA {name}").fetchone()[0]

        database = {name: pragma(name) for name in (
            "application_id", "user_version", "journal_mode", "page_size", "page_count",
            "freelist_count", "auto_vacuum", "encoding")}
        marks = dict(conn.execute("SELECT name, value FROM high_water"))
        next_ids = {table: conn.execute(f"SELECT max(coalesce((SELECT max(seq) FROM {table}), "
                                        "0), ?) + 1", (marks.get(table, 0),)).fetchone()[0]
                    for table in ("checkpoints", "log")}
        threads: dict[str, dict] = {}

        def thread(name: str) -> dict:
            return threads.setdefault(name, {
                "thread_id": name, "namespaces": 0, "checkpoints": 0, "pending_writes": 0,
                "log_events": 0, "payload_bytes": 0, "newest_checkpoint_id": None,
                "newest_at": None})

        for name, count, namespaces, size, newest, newest_at in conn.execute(
                "SELECT thread_id, count(*), count(DISTINCT namespace), "
                "sum(length(state) + length(metadata)), max(seq), max(created_at) "
                "FROM checkpoints GROUP BY thread_id"):
            entry = thread(name)
            key = conn.execute("SELECT key FROM checkpoints WHERE seq = ?",
                               (newest,)).fetchone()[0]
            entry.update(checkpoints=count, namespaces=namespaces, payload_bytes=size or 0,
                         newest_checkpoint_id=key if key is not None else format(newest, "016x"),
                         newest_at=_time(newest_at))
        for name, count, size in conn.execute(
                "SELECT c.thread_id, count(*), sum(length(w.value)) FROM writes AS w "
                "JOIN checkpoints AS c ON c.seq = w.checkpoint_seq GROUP BY c.thread_id"):
            entry = thread(name)
            entry["pending_writes"] = count
            entry["payload_bytes"] += size or 0
        for name, count, size in conn.execute(
                "SELECT thread_id, count(*), sum(length(event)) FROM log GROUP BY thread_id"):
            entry = thread(name)
            entry["log_events"] = count
            entry["payload_bytes"] += size or 0
    settings = saver.settings()["reader"]
    listed = [threads[name] for name in sorted(threads)]
    totals = {key: sum(t[key] for t in listed)
              for key in ("checkpoints", "pending_writes", "log_events", "payload_bytes")}
    return {
        "path": path,
        "files": {"database_bytes": _size(path), "wal_bytes": _size(path + "-wal"),
                  "shm_bytes": _size(path + "-shm")},
        "database": database,
        "schema_version": database["user_version"],
        "free_bytes": database["freelist_count"] * database["page_size"],
        "settings": settings,
        "next_checkpoint_id": format(next_ids["checkpoints"], "016x"),
        "next_log_seq": next_ids["log"],
        "totals": dict(totals, threads=len(listed)),
        "threads": listed,
    }


def _time(us: int | None) -> str | None:
    if us is None:
        return None
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (epoch + datetime.timedelta(microseconds=us)).isoformat()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
