"""How values become bytes: msgpack plus a fixed set of extension types. Never pickle.

Guarantees, for every supported value ``v``:

* ``decode(encode(v)) == v``, and every object comes back with exactly the type it had,
  recursively: a tuple as a tuple, a bytearray as a bytearray, ``True`` as ``True`` (not ``1``),
  a ``zoneinfo.ZoneInfo`` as the ``ZoneInfo`` of the same key, a datetime with its ``fold``.
* Decoding never runs code: it only builds the types listed below.
* The format is on-disk: the bytes written for a value do not change between versions.

Supported: ``None``, ``bool``, ``int`` (any size), ``float`` (nan and infinities too), ``str``,
``bytes``, ``bytearray``, ``list``, ``tuple``, ``dict`` (keys of any supported hashable type),
``set``, ``frozenset``, ``datetime.datetime`` / ``date`` / ``time`` / ``timedelta`` (naive, or
aware with a ``datetime.timezone`` or ``zoneinfo.ZoneInfo``), ``uuid.UUID``, ``decimal.Decimal``.
Exact types only: subclasses (OrderedDict, defaultdict, enums, named tuples, str or float
subclasses, ...) are rejected rather than silently turned into their base type. At most 256
levels of containers, of which at most 32 tuples/sets/frozensets inside one another, and at most
:data:`MAX_OBJECTS` objects, counting a container once for every place it appears in (a value may
hold the same container in several places: each place is written in full and decodes as its own
copy). A value that contains itself is refused.

Decoding uses no more than a small, fixed amount of C stack whatever the value, so whatever
:func:`encode` accepts decodes in a thread of any stack size ``threading.stack_size()`` allows.
Encoding recurses on the C stack: the deepest accepted values need about 192 KiB of it
(tests/test_stack.py writes them from a thread of 256 KiB; a thread's default is 8 MiB on
Linux).

Speed: values of exact ``None``/``bool``/``int``/``float``/``str``/``bytes``/``list``/``dict``
are packed by ormsgpack (unless big str and bytes make up most of them, which msgpack copies
faster), and payloads that are one whole msgpack object at most 16 containers deep are first
offered to ormsgpack's decoder (sqlitesaver/_fastpack.py says when and why that is safe); both
write and build exactly what the msgpack path does, which handles everything else, and every
refusal and error.
"""

from __future__ import annotations

from typing import Any

from .. import _fastpack
from ..errors import SQLITE_MAX_LENGTH, SerializationError, ValueTooLargeError
# Each layer in a module of its own (the hot functions are bound here by name, not looked up
# through their modules on every call):
#   extensions.py  the extension types: codes, limits, packing and building back
#   scan.py        what a value holds, before packing: when ormsgpack may pack it directly
#   _scan.c        the same walk in C, used by scan.py where setup.py could build it
#   explain.py     the error that says what in a value cannot be stored, and where
#   strict.py      reading exactly one whole msgpack object (no trailing bytes)
#   nested.py      tuples, sets and frozensets in a payload, decoded in constant C stack
# This module: encode() and decode(), their switches and limits, the [str, bytes] pair paths.
# MAX_OBJECTS is scan.py's, read there by the scan and explain.py: the name here is a copy.
from .explain import _explain, _inspect, _too_many
from .extensions import _MAX_DEPTH, _packers, _swap_bytearrays
from .nested import _Nested, _decode_nested, _ext_hook
from .scan import (MAX_OBJECTS, _CLEAN, _FLAT_ITEMS, _HAS_BYTEARRAY, _NATIVE, _REJECT, _SHARED,
                   _TOO_MANY, _flat_native, _scan)
from .strict import _PAYLOAD_UNPACKERS, _may_hold_timestamp, _pooled

__all__ = ["encode", "decode", "MAX_OBJECTS", "MAX_BYTES"]

# Whether encode() and decode() try ormsgpack first (not where it is missing or untested, e.g.
# Python 3.10: see _fastpack); tests and bench/codec_bench.py switch them off to run the
# msgpack path alone.
_FAST_ENCODE = _fastpack.PACK_WORKS
_FAST_DECODE = _fastpack.DECODE_WORKS
# Whether a [str, bytes] pair is written and read directly (_pair_bytes, _pair); off, like the
# two above, to run the msgpack path alone.
_PAIRS = True

#: Most bytes one encoded value may take: SQLite's limit for one string or BLOB, kept on
#: PostgreSQL too (under its 1 GiB for one bytea), so that a store moves between engines. A
#: value just under it may still make its row too big, which SQLite refuses
#: (ValueTooLargeError too).
MAX_BYTES = SQLITE_MAX_LENGTH


def encode(value: Any, *, name: str = "value") -> bytes:
    """Serialize ``value`` to bytes that :func:`decode` turns back into an equal value of
    exactly the same types (see the module docstring for what is supported).

    Raises :class:`ValueTooLargeError` if the bytes would be more than :data:`MAX_BYTES`, and
    :class:`SerializationError` if any part of ``value`` is not supported. The message
    names the offending type and where it sits, as a path from ``name``: ``name[3]`` is an item
    of a list or tuple, ``name['when']`` the value under a dict key, ``name[<key 2>]`` the third
    key itself of a dict and ``name[<member 2>]`` the third member of a set or frozenset, both
    counted from 0 in iteration order. Thread-safe: calls share no state.

    Its work grows with the objects the value holds (a container it holds in several places is
    written out, and counted against :data:`MAX_OBJECTS`, once per place); a value that contains
    itself is refused as soon as the scan meets the repeat.
    """
    if type(value) is list and len(value) == 2 and _PAIRS:
        data = _pair_bytes(value)
        if data is not None:
            return data
    if type(value) is dict and len(value) <= _FLAT_ITEMS and _flat_native(value):
        found = _NATIVE  # what _scan() would find, for a fraction of its cost
    else:
        found = _scan(value)
    if found == _SHARED:
        problem, found = _inspect(value, name, leaves=False)
        if problem is not None:
            raise problem
    elif found == _TOO_MANY:
        raise SerializationError(f"cannot serialize {name}: {_too_many()}")
    cause = data = None
    try:
        if found == _NATIVE and _FAST_ENCODE:
            data = _fastpack.pack(value)  # None if ormsgpack refuses it: msgpack's turn
        if data is None and (found == _CLEAN or found == _NATIVE):
            data = _packers[0](value)
        elif found == _HAS_BYTEARRAY:
            data = _packers[0](_swap_bytearrays(value))
    except Exception as exc:  # anything msgpack or _default raised: _explain says what and where
        cause = exc
    if data is None:
        raise _explain(value, name, cause) from cause
    if len(data) > MAX_BYTES:
        raise ValueTooLargeError(
            f"cannot store {name}: it encodes to {len(data):,} bytes, more than SQLite's limit "
            f"of {MAX_BYTES:,} bytes for one value (SQLITE_LIMIT_LENGTH, kept on PostgreSQL "
            "too); nothing was written. "
            "Keep large data outside the database (e.g. a file whose name the state holds), or "
            "split it over several values.")
    return data


_EMPTY_MAP = b"\x80"  # {}: the usual metadata
_PAIR_HEADER = b"\x92"  # a fixarray of 2: how a [str, bytes] pair starts


def _pair_bytes(value: list) -> bytes | None:
    """The bytes of a ``[str, bytes]`` pair, written directly, or None (the general path then
    decides). The inverse of :func:`_pair_python`, for the same reason: the LangGraph adapter stores
    every checkpoint and pending write as such a pair, and the general path costs several times
    more on it (the scan, then the packer). The bytes are the ones msgpack writes (fixstr or
    str 8, then the smallest bin header): tests/test_codec.py compares them on random pairs."""
    name, blob = value
    if type(name) is not str or type(blob) is not bytes:
        return None
    try:
        raw = name.encode()
    except UnicodeEncodeError:  # a lone surrogate: the general path's error
        return None
    size, length = len(raw), len(blob)
    if size < 32:
        head = _FIXSTR[size]
    elif size < 256:
        head = b"\xd9" + _BYTE[size]
    else:
        return None
    if length < 256:
        bin_head = b"\xc4" + _BYTE[length]
    elif length < 65536:
        bin_head = b"\xc5" + length.to_bytes(2, "big")
    elif length < 2**32:
        bin_head = b"\xc6" + length.to_bytes(4, "big")
    else:
        return None
    if 1 + len(head) + size + len(bin_head) + length > MAX_BYTES:
        return None  # the general path raises ValueTooLargeError
    return b"".join((b"\x92", head, raw, bin_head, blob))


_BYTE = [bytes((n,)) for n in range(256)]
_FIXSTR = [bytes((0xA0 | n,)) for n in range(32)]


def _pair_python(data: bytes) -> list | None:
    """``[str, bytes]`` read straight off ``data`` when it is exactly that and nothing more, else
    None (the general decoders then decide, and raise for what is malformed).

    Every payload of the LangGraph adapter has this shape (a serializer's ``(type, bytes)``: the
    checkpoint and each pending write), and the general path costs several times more on it
    (two msgpack passes to prove the payload whole and shallow, then ormsgpack). A fixarray of
    two holding a fixstr or str 8 and then a bin 8/16/32 whose length ends exactly at the end of
    ``data`` decodes to exactly this list on every msgpack decoder, so nothing is relaxed: a
    trailing byte, a short length or bad UTF-8 falls through to the general path."""
    n = len(data)
    if n < 4 or data[0] != 0x92:
        return None
    head = data[1]
    if 0xA0 <= head <= 0xBF:
        at, end = 2, head - 0x9E  # 2 + the fixstr's length, head - 0xA0
    elif head == 0xD9:
        at, end = 3, data[2] + 3
    else:
        return None
    if end + 2 > n:
        return None
    kind = data[end]
    if kind == 0xC4:
        start = end + 2
        size = data[end + 1]
    elif kind == 0xC5:
        start = end + 3
        size = int.from_bytes(data[end + 1:start], "big")
    elif kind == 0xC6:
        start = end + 5
        size = int.from_bytes(data[end + 1:start], "big")
    else:
        return None
    if start + size != n or start > n:
        return None
    try:
        return [data[at:end].decode(), data[start:]]
    except UnicodeDecodeError:
        return None


# The same read in C where setup.py could build it (pair() of _sqlitesaver_shallow, sqlitesaver/
# _shallow.c): one call instead of ~13 lines of Python, ~0.7 us a payload, three per get_tuple
# with two pending writes. decode() calls it with exact bytes only. tests/test_shallow_c.py
# compares the two.
_pair = _fastpack._c.pair if _fastpack._c is not None else _pair_python


# ormsgpack's decode, offered every payload first; it declines (_fastpack.MISS) all but whole,
# shallow payloads of str-keyed maps without any extension (the msgpack path builds those: in
# ormsgpack a Python hook would swallow a Ctrl-C, see _fastpack). It never meets a msgpack
# timestamp (an extension) or more than _fastpack.MAX_DEPTH levels, so what it returns needs
# none of the checks at the end of decode().
_fast_decode = _fastpack.unpacker()
_MISS = _fastpack.MISS


def decode(data: bytes) -> Any:
    """The value :func:`encode` turned into ``data``, with exactly the types it had.

    Builds only the supported types and never runs code from the payload. Raises
    :class:`SerializationError`, and returns nothing, if ``data`` is not a complete payload in
    this format: truncated, garbage, or holding an extension type this version does not know
    (written by a newer sqlitesaver). Uses the same C stack whatever the value (see the note
    above _next, codec/strict.py): any value encode() accepts decodes in any thread.
    """
    try:
        if type(data) is not bytes:
            data = bytes(memoryview(data))
        if data == _EMPTY_MAP:
            return {}
        if data[:1] == _PAIR_HEADER and _PAIRS:  # cheaper here than a call for nothing
            pair = _pair(data)
            if pair is not None:
                return pair
        if _FAST_DECODE:
            value = _fast_decode(data)
            if value is not _MISS:
                return value
        try:
            value = _pooled(_PAYLOAD_UNPACKERS, data, strict_map_key=False,
                            ext_hook=_ext_hook)
        except _Nested:
            value = _decode_nested(data)
    except SerializationError:
        raise
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise SerializationError(
            f"the payload cannot be decoded ({problem}): it is truncated, damaged, not "
            "sqlitesaver's format, or written by a newer sqlitesaver") from exc
    if _may_hold_timestamp(data) and _scan(value) == _REJECT:
        raise SerializationError(
            "the payload cannot be decoded: it holds a msgpack timestamp or nests more than "
            f"{_MAX_DEPTH} levels, neither of which sqlitesaver writes")
    return value
