"""Checksums over every stored payload and the key columns that locate it.

CRC-32 detects every single flipped byte and every burst of damage up to 32 bits long; other
random damage goes unnoticed with probability 2**-32. The key columns (thread, namespace, ids,
caller-supplied ids, timestamps) are covered too, so damage that would move a payload to another
thread or checkpoint is caught as well, not only damage to the payload bytes.

A checkpoint's, pending write's or log event's checksum is in one of two forms, told apart by
its value (no column added): a CRC-32 (:func:`checkpoint_checksum`, :func:`write_checksum`,
:func:`log_checksum`, ``0 <= c < 2**32``), or, for rows PostgreSQL's one-round-trip writes
wrote, a value completed by the server (:func:`server_checksum`, :func:`server_write_checksum`,
:func:`server_log_checksum`, bit 62 set: ``>= SERVER_FORM``). A row is verified in the form its
value says (:func:`expected_checkpoint_checksum`, :func:`expected_write_checksum`,
:func:`expected_log_checksum`); rows of either form stay valid forever.
"""

from __future__ import annotations

from hashlib import sha256
from zlib import crc32

from msgpack import Packer

__all__ = ["checkpoint_checksum", "write_checksum", "log_checksum", "SERVER_FORM",
           "checkpoint_client_crc", "server_checksum", "expected_checkpoint_checksum",
           "write_client_crc", "server_write_checksum", "expected_write_checksum",
           "log_client_crc", "server_log_checksum", "expected_log_checksum"]

#: The bit that marks a checkpoint checksum as :func:`server_checksum`'s form (a CRC-32 is
#: below ``2**32``, so it never has it); ``SERVER_FORM | <60 bits>`` fits a ``bigint``.
SERVER_FORM = 1 << 62

# The key fields are framed by msgpack: unambiguous (each field carries its type and length)
# and done in C, which matters on the put and get paths. A Packer with a small buffer rather
# than msgpack.packb, whose Packer allocates 256 KiB for a key of a few dozen bytes (the buffer
# grows if a key needs more; the bytes written are the same).
_KEY_BUF_SIZE = 256


def checkpoint_checksum(seq: int, thread_id: str, namespace: str, parent_seq: int | None,
                        created_at: int, state: bytes, metadata: bytes,
                        key: str | None = None, parent_key: str | None = None) -> int:
    """``key`` / ``parent_key`` (caller-supplied ids, schema version 2) are framed only when one
    of them is set: a row without them has exactly its version 1 checksum, so migrating a
    database rewrites no row, while setting or clearing either one changes the framed tuple's
    length and therefore the checksum."""
    fields: tuple = (seq, thread_id, namespace, parent_seq, created_at, len(state), len(metadata))
    if key is not None or parent_key is not None:
        fields += (key, parent_key)
    framed = Packer(buf_size=_KEY_BUF_SIZE).pack(fields)
    return crc32(metadata, crc32(state, crc32(framed)))


def checkpoint_client_crc(thread_id: str, namespace: str, state: bytes, metadata: bytes,
                          key: str | None, parent_key: str | None) -> int:
    """The client's part of :func:`server_checksum`: a CRC-32 over everything of a checkpoint
    the client knows before the server has chosen its seq, time and parent's seq (the
    msgpack-framed ``(thread_id, namespace, len(state), len(metadata), key, parent_key)``, then
    the state, then the metadata), so that a put can send it with the row and need no second
    round trip. Its detection of damage to those is :func:`checkpoint_checksum`'s: CRC-32
    over the same bytes, framed the same way."""
    framed = Packer(buf_size=_KEY_BUF_SIZE).pack(
        (thread_id, namespace, len(state), len(metadata), key, parent_key))
    return crc32(metadata, crc32(state, crc32(framed)))


def server_checksum(client_crc: int, seq: int, created_at: int, parent_seq: int | None) -> int:
    """A checkpoint checksum in the server-completed form, as PostgreSQL computes it in the
    put's own statement (sqlitesaver/postgres/sql.py, ``_server_checksum``) from the client's
    :func:`checkpoint_client_crc` and the seq, ``created_at`` and parent seq it chose:
    :data:`SERVER_FORM` | the first 60 bits of the SHA-256 of the big-endian signed 64-bit
    ``client_crc``, ``seq``, ``created_at`` and ``parent_seq`` (PostgreSQL's ``int8send``; no
    parent: nothing, so the lengths tell the two apart). Builtins on both sides (sha256 and
    int8send exist in PostgreSQL 11+; no CRC-32 does), binary, so no text formatting of either
    side can differ.

    Detection, against the CRC-32 of :func:`checkpoint_checksum`: damage to the payloads or
    the client's key columns changes ``client_crc`` whenever CRC-32 would have caught it
    (every flipped byte, every burst up to 32 bits; random damage 2**-32 unnoticed), and a
    changed input leaves the 60-bit digest unchanged with probability 2**-60; damage to seq,
    ``created_at`` or the parent seq goes unnoticed with probability 2**-60 (a CRC-32 catches
    a single flip there with certainty, random damage with 2**-32 unnoticed); damage to the
    checksum itself that clears bit 62 leaves a value no CRC-32 has (unless bits 32-59 of the
    digest are all 0) and any other change is a different value."""
    return _server_digest(client_crc, seq, created_at) if parent_seq is None \
        else _server_digest(client_crc, seq, created_at, parent_seq)


def _server_digest(*values: int) -> int:
    """:data:`SERVER_FORM` | the first 60 bits of the SHA-256 of ``values`` as big-endian
    signed 64-bit integers (PostgreSQL's ``int8send``): the server-completed form of every
    kind of row (sqlitesaver/postgres/sql.py, ``_server_digest``)."""
    # int.to_bytes(value, ...), not value.to_bytes(...): a column of another type (damage in
    # a SQLite row, whose columns hold any type) raises TypeError, which readers count as
    # damage, rather than AttributeError, which they do not catch.
    data = b"".join(int.to_bytes(value, 8, "big", signed=True) for value in values)
    return SERVER_FORM | int.from_bytes(sha256(data).digest()[:8], "big") >> 4


def expected_checkpoint_checksum(stored: int, seq: int, thread_id: str, namespace: str,
                                 parent_seq: int | None, created_at: int, state: bytes,
                                 metadata: bytes, key: str | None = None,
                                 parent_key: str | None = None) -> int:
    """The checksum the row's columns must have, in the form its ``stored`` checksum says
    (:data:`SERVER_FORM` set: :func:`server_checksum`, else :func:`checkpoint_checksum`):
    the row is intact when this equals ``stored``. A ``stored`` value of the wrong type raises
    TypeError (readers count it as damage)."""
    if stored >= SERVER_FORM:
        return server_checksum(checkpoint_client_crc(thread_id, namespace, state, metadata, key,
                                                     parent_key), seq, created_at, parent_seq)
    return checkpoint_checksum(seq, thread_id, namespace, parent_seq, created_at, state,
                               metadata, key, parent_key)


def write_client_crc(task_id: str, index: int, channel: str, task_path: str,
                     value: bytes) -> int:
    """The client's part of a pending write's server-completed checksum: a CRC-32 over
    everything of the write but the seq of its checkpoint, which the server looks up in the
    same statement (the msgpack-framed ``(task_id, index, channel, task_path, len(value))``,
    then the value): :func:`write_checksum`'s bytes without the seq."""
    return crc32(value, crc32(Packer(buf_size=_KEY_BUF_SIZE).pack(
        (task_id, index, channel, task_path, len(value)))))


def server_write_checksum(client_crc: int, checkpoint_seq: int) -> int:
    """A pending write's checksum in the server-completed form (PostgreSQL's one-round-trip
    put of writes): :func:`_server_digest` of the client's :func:`write_client_crc` and the
    checkpoint's seq. Detection as :func:`server_checksum`'s."""
    return _server_digest(client_crc, checkpoint_seq)


def expected_write_checksum(stored: int, checkpoint_seq: int, task_id: str, index: int,
                            channel: str, task_path: str, value: bytes) -> int:
    """The checksum the write's columns must have, in the form its ``stored`` checksum says
    (as :func:`expected_checkpoint_checksum`)."""
    if stored >= SERVER_FORM:
        return server_write_checksum(write_client_crc(task_id, index, channel, task_path,
                                                      value), checkpoint_seq)
    return write_checksum(checkpoint_seq, task_id, index, channel, task_path, value)


def write_checksum(checkpoint_seq: int, task_id: str, index: int, channel: str,
                   task_path: str, value: bytes) -> int:
    return crc32(value, crc32(Packer(buf_size=_KEY_BUF_SIZE).pack(
        (checkpoint_seq, task_id, index, channel, task_path, len(value)))))


def log_client_crc(thread_id: str, event: bytes) -> int:
    """The client's part of a log event's server-completed checksum: a CRC-32 over the
    msgpack-framed ``(thread_id, len(event))``, then the event (:func:`log_checksum`'s bytes
    without the seq and time the server chooses)."""
    return crc32(event, crc32(Packer(buf_size=_KEY_BUF_SIZE).pack((thread_id, len(event)))))


def server_log_checksum(client_crc: int, seq: int, created_at: int) -> int:
    """A log event's checksum in the server-completed form (PostgreSQL's one-round-trip
    append): :func:`_server_digest` of the client's :func:`log_client_crc`, the seq and the
    time. Detection as :func:`server_checksum`'s."""
    return _server_digest(client_crc, seq, created_at)


def expected_log_checksum(stored: int, seq: int, thread_id: str, created_at: int,
                          event: bytes) -> int:
    """The checksum the event's columns must have, in the form its ``stored`` checksum says
    (as :func:`expected_checkpoint_checksum`)."""
    if stored >= SERVER_FORM:
        return server_log_checksum(log_client_crc(thread_id, event), seq, created_at)
    return log_checksum(seq, thread_id, created_at, event)


def log_checksum(seq: int, thread_id: str, created_at: int, event: bytes) -> int:
    return crc32(event, crc32(Packer(buf_size=_KEY_BUF_SIZE).pack(
        (seq, thread_id, created_at, len(event)))))
