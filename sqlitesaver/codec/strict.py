"""Reading exactly one whole msgpack object: the strict core of the msgpack decode path.

:func:`_next` unpacks the one object a payload holds and refuses a truncated payload or bytes
after it; :func:`_pooled` does so through Unpackers kept for reuse; :func:`_may_hold_timestamp`
tells decode() when a payload may hold msgpack's own timestamp, which sqlitesaver never writes.
The note below says why every unpack is an Unpacker.
"""

from __future__ import annotations

from typing import Any

import msgpack

# The C stack a decode uses does not grow with the value. ormsgpack's decoder, offered each
# payload first (_fast_decode, codec/__init__.py), recurses, but only ever gets payloads at most
# _fastpack.MAX_DEPTH containers deep (~11 KiB of stack). On the msgpack path, msgpack's
# unpacker walks lists and dicts with a stack of its own, and each tuple/set/frozenset body,
# which only ext_hook sees, is unpacked after the payload that holds it rather than inside the
# hook (_decode_nested). Every unpack is an Unpacker, whose parser state (~40 KB) lives on the
# heap, where unpackb() puts it on the C stack: one unpackb() inside another crashed a read in
# a thread with a 64 KiB stack, 32 nested tuples one with 1 MiB, and one unpackb() alone a
# thread with 32 KiB (the least threading.stack_size() allows). tests/test_stack.py reads the
# deepest values encode() accepts, and the deepest ormsgpack gets, in threads of every such
# size.

def _next(unpacker: msgpack.Unpacker, data: bytes) -> Any:
    """The one msgpack object ``data`` holds, through ``unpacker``; raises if ``data`` is
    truncated or followed by more bytes (the unpacker then holds them: do not reuse it)."""
    start = unpacker.tell()
    unpacker.feed(data)
    value = unpacker.unpack()
    if unpacker.tell() - start != len(data):
        raise ValueError(f"{len(data) - unpacker.tell() + start} byte(s) of extra data after "
                         "the value")
    return value


#: Payloads up to this size are unpacked by Unpackers kept for reuse (making one costs ~1 us,
#: as much as unpacking a small payload); a bigger one gets its own, whose buffer is freed
#: after it. pop() and append() are atomic, so each is used by one caller at a time, and one
#: that raised (it may hold part of a payload) is never put back.
_POOLED = 1 << 16
_PAYLOAD_UNPACKERS: list = []
_FIELD_UNPACKERS: list = []


def _pooled(pool: list, data: bytes, **options: Any) -> Any:
    if len(data) > _POOLED:
        return _next(msgpack.Unpacker(raw=False, max_buffer_size=len(data), **options), data)
    try:
        unpacker = pool.pop()
    except IndexError:
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=_POOLED, **options)
    value = _next(unpacker, data)
    pool.append(unpacker)
    return value


def _may_hold_timestamp(data: bytes) -> bool:
    """False only if ``data`` has no header of msgpack's timestamp extension (-1), which msgpack
    decodes itself without asking ext_hook, and which sqlitesaver never writes.

    The headers are d6 ff, d7 ff and c7 0c ff; 0xff is never in UTF-8 and rare elsewhere, so
    this is usually a memchr or two (0.7 us on 4 KiB), against 11 us for _scan() on the value.
    """
    at = data.find(b"\xff", 1)
    for _ in range(8):
        if at == -1:
            return False
        if data[at - 1] in (0xD6, 0xD7) or data[at - 2:at] == b"\xc7\x0c":
            return True
        at = data.find(b"\xff", at + 1)
    return True  # many 0xff bytes: let _scan() look
