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
levels of containers, of which at most 32 tuples/sets/frozensets inside one another.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import gc
import uuid
import zoneinfo
from typing import Any

import msgpack

from .errors import SerializationError

__all__ = ["encode", "decode"]

# Extension type codes: part of the on-disk format. Never renumber or reuse one.
#   code  type                 extension body
#     1   int beyond 64 bits   two's-complement big-endian bytes (ints in -2**63 .. 2**64-1
#                              are native msgpack ints)
#     2   bytearray            the bytes (bytes itself is native msgpack bin)
#     3   tuple                msgpack array of the items
#     4   set                  msgpack array of the members
#     5   frozenset            msgpack array of the members
#     6   datetime.datetime    msgpack array [year, month, day, hour, minute, second,
#                              microsecond, fold, tz]
#     7   datetime.date        msgpack array [year, month, day]
#     8   datetime.time        msgpack array [hour, minute, second, microsecond, fold, tz]
#     9   datetime.timedelta   msgpack array [days, seconds, microseconds]
#    10   uuid.UUID            the 16 bytes
#    11   decimal.Decimal      str(value), ASCII
# tz is nil (naive), a str (zoneinfo.ZoneInfo key), an int (datetime.timezone offset in
# microseconds, with its default name) or [offset in microseconds, name] (a named timezone).
_BIGINT, _BYTEARRAY, _TUPLE, _SET, _FROZENSET = 1, 2, 3, 4, 5
_DATETIME, _DATE, _TIME, _TIMEDELTA, _UUID, _DECIMAL = 6, 7, 8, 9, 10, 11

# Why the limits: msgpack's packer recurses on the C stack (a self-containing value, or deep
# lists inside each of many tuples, crashes the process); and a tuple/set/frozenset body is
# unpacked by a nested unpackb() that puts ~40 KB on the C stack, so ~200 nested tuples
# crash decode() on an 8 MB stack (~25 on a 1 MB thread stack). encode() enforces both limits,
# so whatever it writes, decode() can read; decode() enforces _MAX_NESTED against bad payloads.
_MAX_DEPTH = 256
_MAX_NESTED = 32

_MICROSECOND = datetime.timedelta(microseconds=1)
_SUPPORTED = ("None, bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset, "
              "datetime.datetime/date/time/timedelta, uuid.UUID and decimal.Decimal")


def _type_name(kind: type) -> str:
    module = getattr(kind, "__module__", None)
    qualname = getattr(kind, "__qualname__", repr(kind))
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


# --- encoding -----------------------------------------------------------------------------------

def _tz_state(tz: datetime.tzinfo | None) -> Any:
    if tz is None:
        return None
    if tz is datetime.timezone.utc:  # the common case, without building a timezone to compare
        return 0
    if type(tz) is datetime.timezone:
        offset = tz.utcoffset(None)
        micros = offset // _MICROSECOND
        name = tz.tzname(None)
        return micros if name == datetime.timezone(offset).tzname(None) else [micros, name]
    if type(tz) is zoneinfo.ZoneInfo and tz.key is not None:
        return tz.key
    detail = " created without a key (ZoneInfo.from_file)" if type(tz) is zoneinfo.ZoneInfo else ""
    raise TypeError(f"its tzinfo {_type_name(type(tz))}{detail} cannot be stored: use "
                    "datetime.timezone or zoneinfo.ZoneInfo (by key)")


# msgpack's default 256 KiB packer buffer costs ~17 us per extension once bodies are packed
# inside `default` (two such buffers alive at once make malloc hand memory back and forth);
# 4 KiB buffers grow as needed.
_BUF_SIZE = 4096
# Fields of datetime-like values are native msgpack types: no `default`, so no nesting.
_pack_fields = functools.partial(msgpack.packb, use_bin_type=True, strict_types=True,
                                 buf_size=_BUF_SIZE)


def _datetime_body(v: datetime.datetime, depth: int) -> bytes:
    return _pack_fields([v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond,
                         v.fold, _tz_state(v.tzinfo)])


def _time_body(v: datetime.time, depth: int) -> bytes:
    return _pack_fields([v.hour, v.minute, v.second, v.microsecond, v.fold,
                         _tz_state(v.tzinfo)])


def _items_body(items: tuple | set | frozenset, depth: int) -> bytes:
    if depth >= _MAX_NESTED:
        raise TypeError(f"more than {_MAX_NESTED} tuples/sets/frozensets are nested in one "
                        "another")
    return _packers[depth + 1](list(items))


# The types msgpack hands to `default` (with strict_types, anything not exactly a native type,
# and ints out of its range). `depth` counts the tuples/sets/frozensets around the object.
_ENCODERS = {
    int: (_BIGINT, lambda v, depth: v.to_bytes((v.bit_length() + 8) // 8, "big", signed=True)),
    tuple: (_TUPLE, _items_body),
    set: (_SET, _items_body),
    frozenset: (_FROZENSET, _items_body),
    datetime.datetime: (_DATETIME, _datetime_body),
    datetime.date: (_DATE, lambda v, depth: _pack_fields([v.year, v.month, v.day])),
    datetime.time: (_TIME, _time_body),
    datetime.timedelta: (_TIMEDELTA,
                         lambda v, depth: _pack_fields([v.days, v.seconds, v.microseconds])),
    uuid.UUID: (_UUID, lambda v, depth: v.bytes),
    decimal.Decimal: (_DECIMAL, lambda v, depth: str(v).encode("ascii")),
}


def _default(obj: Any, *, depth: int) -> msgpack.ExtType:
    try:
        code, body = _ENCODERS[type(obj)]
    except KeyError:
        raise TypeError(f"{_type_name(type(obj))} is not supported; sqlitesaver stores "
                        f"{_SUPPORTED} (exact types: convert subclasses such as enums, named "
                        "tuples or OrderedDict first)") from None
    return msgpack.ExtType(code, body(obj, depth))


# One packb per nesting depth, so the depth travels without shared state. packb rather than a
# reused (thread-local) Packer: a Packer is not re-entrant, and reuse measured no faster
# (3 KiB state: packb 14.6 us, thread-local Packer 14.4 us).
_packers = [functools.partial(msgpack.packb, use_bin_type=True, strict_types=True,
                              buf_size=_BUF_SIZE, default=functools.partial(_default, depth=depth))
            for depth in range(_MAX_NESTED + 1)]

# msgpack's C packer writes these itself even with strict_types, without asking `default`:
# bytearray and memoryview as bin (so they would come back as bytes), ExtType and Timestamp as
# raw extensions (a user's ExtType(3, ...) would come back as a tuple). encode() has to find
# them before packing.
_NATIVE_EXTRAS = frozenset({bytearray, memoryview, msgpack.ExtType, msgpack.Timestamp})
_CONTAINERS = frozenset({list, dict, tuple, set, frozenset})
# Instances of types without Py_TPFLAGS_HAVE_GC have no referents, so _scan() can pass them to
# gc.get_referents() without filtering them out first.
_ATOMS = frozenset(kind for kind in (type(None), bool, int, float, str, bytes, datetime.datetime,
                                     datetime.date, datetime.time, datetime.timedelta,
                                     decimal.Decimal)
                   if not kind.__flags__ & (1 << 14))
_PLAIN = _CONTAINERS | _ATOMS
_CLEAN, _HAS_BYTEARRAY, _REJECT = range(3)


def _scan(value: Any) -> int:
    """Whether ``value`` holds a bytearray (_HAS_BYTEARRAY), another of _NATIVE_EXTRAS or more
    than _MAX_DEPTH levels of containers (_REJECT), or neither (_CLEAN).

    One level of nesting at a time, each in C: CPython's gc.get_referents() returns the items
    of lists, tuples, sets and frozensets and the values of dicts, with their keys unless all
    are exact str (which need no look). It costs about as much as packing; a Python walk of
    every object costs six times that. The round-trip and rejection tests guard this reliance.
    """
    if type(value) in _ATOMS:  # a flat value: nothing inside it to look at
        return _CLEAN
    level = [value]
    found = _CLEAN
    for _ in range(_MAX_DEPTH + 1):
        kinds = set(map(type, level))
        if not kinds <= _PLAIN:
            extras = kinds & _NATIVE_EXTRAS
            if extras:
                if extras != {bytearray}:
                    return _REJECT
                found = _HAS_BYTEARRAY
            level = [obj for obj in level if type(obj) in _CONTAINERS]
        elif kinds.isdisjoint(_CONTAINERS):
            return found  # atoms only: there is no level below (saves a call on the leaves)
        level = _get_referents(*level)
        if not level:
            return found
    return _REJECT


_get_referents = gc.get_referents


def _swap_bytearrays(obj: Any) -> Any:
    """A copy of ``obj`` with its bytearrays already turned into their extension (they cannot
    hide in dict keys or set members: they are unhashable)."""
    kind = type(obj)
    if kind is bytearray:
        return msgpack.ExtType(_BYTEARRAY, bytes(obj))
    if kind is list:
        return [_swap_bytearrays(item) for item in obj]
    if kind is tuple:
        return tuple(_swap_bytearrays(item) for item in obj)
    if kind is dict:
        return {key: _swap_bytearrays(item) for key, item in obj.items()}
    return obj


def encode(value: Any, *, name: str = "value") -> bytes:
    """Serialize ``value`` to bytes that :func:`decode` turns back into an equal value of
    exactly the same types (see the module docstring for what is supported).

    Raises :class:`SerializationError` if any part of ``value`` is not supported. The message
    names the offending type and where it sits, as a path from ``name``: ``name[3]`` is an item
    of a list or tuple, ``name['when']`` the value under a dict key, ``name[<key 2>]`` the third
    key itself of a dict and ``name[<member 2>]`` the third member of a set or frozenset, both
    counted from 0 in iteration order. Thread-safe: calls share no state.
    """
    found = _scan(value)
    cause = None
    try:
        if found == _CLEAN:
            return _packers[0](value)
        if found == _HAS_BYTEARRAY:
            return _packers[0](_swap_bytearrays(value))
    except Exception as exc:  # anything msgpack or _default raised: _explain says what and where
        cause = exc
    raise _explain(value, name, cause) from cause


def _explain(value: Any, name: str, cause: BaseException | None) -> SerializationError:
    """The error for the first object, in packing order, that makes ``encode(value)`` fail.

    Only called after a failure, so it can afford a Python walk. It packs each leaf on its own,
    so it accepts exactly what the packer accepts, and applies the same limits.
    """
    stack: list[tuple[Any, Any, int, int]] = [(value, None, 0, 0)]  # object, path, depth, nested
    while stack:
        obj, path, depth, nested = stack.pop()
        kind = type(obj)
        if depth > _MAX_DEPTH:
            reason = (f"it is nested more than {_MAX_DEPTH} containers deep (or contains "
                      "itself)")
        elif kind is list:
            stack.extend((item, (path, "index", i), depth + 1, nested)
                         for i, item in reversed(list(enumerate(obj))))
            continue
        elif kind is dict:
            for i, (key, item) in reversed(list(enumerate(obj.items()))):
                stack.append((item, (path, "value", key), depth + 1, nested))
                stack.append((key, (path, "key", i), depth + 1, nested))
            continue
        elif kind is tuple or kind is set or kind is frozenset:
            if nested >= _MAX_NESTED:
                reason = (f"more than {_MAX_NESTED} tuples/sets/frozensets are nested in one "
                          "another")
            else:
                how = "index" if kind is tuple else "member"
                stack.extend((item, (path, how, i), depth + 1, nested + 1)
                             for i, item in reversed(list(enumerate(obj))))
                continue
        elif kind is bytearray:
            continue
        elif kind in _NATIVE_EXTRAS:
            reason = f"{_type_name(kind)} is not supported; sqlitesaver stores {_SUPPORTED}"
        else:
            try:
                _packers[0](obj)
                continue
            except UnicodeEncodeError as exc:  # in a str, or in a datetime's timezone name
                what = "this str" if kind is str else f"its timezone name {exc.object!r}"
                reason = (f"{what} cannot be encoded as UTF-8 ({exc.reason}: "
                          f"{exc.object[exc.start:exc.end]!r} at index {exc.start})")
            except TypeError as exc:
                reason = str(exc)
            except Exception as exc:
                reason = f"{_type_name(kind)} cannot be packed ({type(exc).__name__}: {exc})"
            if kind is datetime.datetime or kind is datetime.time:
                reason = f"{_type_name(kind)}: {reason}"
        return SerializationError(f"cannot serialize {_render(name, path)}: {reason}")
    if isinstance(cause, RecursionError):
        return SerializationError(f"cannot serialize {name}: it is nested too deeply for the "
                                  "current Python recursion limit")
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return SerializationError(f"cannot serialize {name}{detail}")


def _render(name: str, path: Any) -> str:
    parts = []
    while path is not None:
        path, how, what = path
        if how == "value":
            text = repr(what)
            parts.append(f"[{text if len(text) <= 60 else text[:57] + '...'}]")
        elif how == "index":
            parts.append(f"[{what}]")
        else:
            parts.append(f"[<{how} {what}>]")
    parts.reverse()
    if len(parts) > 24:  # a value that contains itself
        parts[8:-8] = ["..."]
    return name + "".join(parts)


# --- decoding -----------------------------------------------------------------------------------

def _fields(body: bytes) -> list:
    # Without ext_hook: any extension in here is malformed, and cannot recurse.
    fields = msgpack.unpackb(body, raw=False)
    if type(fields) is not list:
        raise ValueError(f"expected a msgpack array, found {_type_name(type(fields))}")
    return fields


def _tz_from_state(state: Any) -> datetime.tzinfo | None:
    if state is None:
        return None
    if type(state) is str:
        return zoneinfo.ZoneInfo(state)
    if type(state) is int:
        return datetime.timezone(state * _MICROSECOND)
    micros, name = state
    return datetime.timezone(micros * _MICROSECOND, name)


def _bigint_from(body: bytes) -> int:
    if not body:
        raise ValueError("empty body")
    return int.from_bytes(body, "big", signed=True)


def _datetime_from(body: bytes) -> datetime.datetime:
    year, month, day, hour, minute, second, micro, fold, tz = _fields(body)
    return datetime.datetime(year, month, day, hour, minute, second, micro,
                             tzinfo=_tz_from_state(tz), fold=fold)


def _time_from(body: bytes) -> datetime.time:
    hour, minute, second, micro, fold, tz = _fields(body)
    return datetime.time(hour, minute, second, micro, tzinfo=_tz_from_state(tz), fold=fold)


def _date_from(body: bytes) -> datetime.date:
    year, month, day = _fields(body)
    return datetime.date(year, month, day)


def _timedelta_from(body: bytes) -> datetime.timedelta:
    days, seconds, micros = _fields(body)
    return datetime.timedelta(days, seconds, micros)


_NESTING = {_TUPLE: tuple, _SET: set, _FROZENSET: frozenset}
_DECODERS = {
    _BIGINT: (int, _bigint_from),
    _BYTEARRAY: (bytearray, bytearray),
    _DATETIME: (datetime.datetime, _datetime_from),
    _DATE: (datetime.date, _date_from),
    _TIME: (datetime.time, _time_from),
    _TIMEDELTA: (datetime.timedelta, _timedelta_from),
    _UUID: (uuid.UUID, lambda body: uuid.UUID(bytes=body)),
    _DECIMAL: (decimal.Decimal, lambda body: decimal.Decimal(body.decode("ascii"))),
}


def _ext_hook(code: int, body: bytes, *, depth: int) -> Any:
    kind, build = _NESTING.get(code), None
    if kind is None:
        kind, build = _DECODERS.get(code, (None, None))
        if kind is None:
            raise SerializationError(
                f"the payload cannot be decoded: it holds msgpack extension type {code}, "
                "unknown to this version of sqlitesaver (was it written by a newer one?)")
    try:
        if build is not None:
            return build(body)
        if depth >= _MAX_NESTED:
            raise ValueError(f"more than {_MAX_NESTED} tuples/sets/frozensets nested")
        items = _unpackers[depth + 1](body)
        if type(items) is not list:
            raise ValueError(f"expected a msgpack array, found {_type_name(type(items))}")
        return kind(items)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"the payload cannot be decoded: its {_type_name(kind)} (extension type {code}) is "
            f"invalid ({type(exc).__name__}: {exc})") from exc


_unpackers = [functools.partial(msgpack.unpackb, raw=False, strict_map_key=False,
                                ext_hook=functools.partial(_ext_hook, depth=depth))
              for depth in range(_MAX_NESTED + 1)]


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


def decode(data: bytes) -> Any:
    """The value :func:`encode` turned into ``data``, with exactly the types it had.

    Builds only the supported types and never runs code from the payload. Raises
    :class:`SerializationError`, and returns nothing, if ``data`` is not a complete payload in
    this format: truncated, garbage, or holding an extension type this version does not know
    (written by a newer sqlitesaver).
    """
    try:
        if type(data) is not bytes:
            data = bytes(memoryview(data))
        value = _unpackers[0](data)
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
