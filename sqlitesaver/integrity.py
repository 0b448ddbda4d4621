"""Checksums over every stored payload and the key columns that locate it.

CRC-32 detects every single flipped byte and every burst of damage up to 32 bits long; other
random damage goes unnoticed with probability 2**-32. The key columns (thread, namespace, ids,
caller-supplied ids, timestamps) are covered too, so damage that would move a payload to another
thread or checkpoint is caught as well, not only damage to the payload bytes.
"""

from __future__ import annotations

from zlib import crc32

from msgpack import Packer

__all__ = ["checkpoint_checksum", "write_checksum", "log_checksum"]

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


def write_checksum(checkpoint_seq: int, task_id: str, index: int, channel: str,
                   task_path: str, value: bytes) -> int:
    return crc32(value, crc32(Packer(buf_size=_KEY_BUF_SIZE).pack(
        (checkpoint_seq, task_id, index, channel, task_path, len(value)))))


def log_checksum(seq: int, thread_id: str, created_at: int, event: bytes) -> int:
    return crc32(event, crc32(Packer(buf_size=_KEY_BUF_SIZE).pack(
        (seq, thread_id, created_at, len(event)))))
