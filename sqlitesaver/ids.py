"""Checkpoint ids, the same on every engine.

A generated id is the checkpoint's ``seq`` as 16 lowercase hex digits: fixed width, so ids sort
as strings the way their seqs sort. A caller-supplied id may be any non-empty text except that
form, so every id string names at most one checkpoint of a thread and namespace.
"""

from __future__ import annotations

__all__ = ["INT64_MAX", "format_id", "parse_id", "is_generated", "checkpoint_query"]

#: The largest seq (SQLite's INTEGER and PostgreSQL's bigint are both signed 64-bit).
INT64_MAX = 2**63 - 1


def format_id(seq: int) -> str:
    """The generated id of ``seq``."""
    return format(seq, "016x")


def parse_id(checkpoint_id: str) -> int | None:
    """The seq a generated id names, or None if no checkpoint can have that id."""
    if len(checkpoint_id) != 16:
        return None
    try:
        seq = int(checkpoint_id, 16)
    except ValueError:
        return None
    return seq if 0 < seq <= INT64_MAX and format_id(seq) == checkpoint_id else None


def is_generated(checkpoint_id: str) -> bool:
    """True if the id has the form of a generated id (16 lowercase hex digits)."""
    return len(checkpoint_id) == 16 and not checkpoint_id.strip("0123456789abcdef")


def checkpoint_query(thread_id: str, namespace: str, checkpoint_id: str | None, latest: str,
                     by_key: str, by_seq: str) -> tuple[str, tuple] | None:
    """Which of an engine's three statements finds the checkpoint a get names, with its
    parameters: ``latest`` (thread, namespace) when ``checkpoint_id`` is None, ``by_key``
    (thread, namespace, id) for a caller-supplied id, ``by_seq`` (seq, thread, namespace) for
    a generated one; None when no checkpoint can have that id."""
    if checkpoint_id is None:
        return latest, (thread_id, namespace)
    if not is_generated(checkpoint_id):
        return by_key, (thread_id, namespace, checkpoint_id)
    seq = parse_id(checkpoint_id)
    return None if seq is None else (by_seq, (seq, thread_id, namespace))
