"""The extension types: sqlitesaver's values that are not native msgpack, both ways.

Their codes (part of the on-disk format), the nesting limits, how each non-native value is
packed into its extension body (:data:`_ENCODERS`, :func:`_default`, one packer per depth in
:data:`_packers`, :func:`_swap_bytearrays`), and how each body is built back
(:data:`_DECODERS`, :func:`_leaf`; tuples, sets and frozensets: codec/nested.py).
"""

from __future__ import annotations

import datetime
import decimal
import functools
import uuid
import zoneinfo
from typing import Any

import msgpack

from ..errors import SerializationError
from .strict import _FIELD_UNPACKERS, _pooled

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

# Why the limits: msgpack's packer recurses on the C stack, one call per level and a nested
# packb() per tuple/set/frozenset (deep lists inside each of many tuples crashed the process).
# encode() enforces both limits, so whatever it writes decode() can read; decode(), whose C
# stack does not grow with the value (see codec/strict.py), enforces _MAX_NESTED against
# bad payloads too.
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



# --- decoding -----------------------------------------------------------------------------------

def _fields(body: bytes) -> list:
    # Without ext_hook: any extension in here is malformed, and cannot recurse.
    fields = _pooled(_FIELD_UNPACKERS, body)
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


def _invalid(kind: type, code: int, exc: BaseException) -> SerializationError:
    return SerializationError(
        f"the payload cannot be decoded: its {_type_name(kind)} (extension type {code}) is "
        f"invalid ({type(exc).__name__}: {exc})")


def _leaf(code: int, body: bytes) -> Any:
    """The value of an extension other than a tuple, set or frozenset (their fields, if any,
    are native msgpack: one more unpack, never deeper)."""
    kind, build = _DECODERS.get(code, (None, None))
    if kind is None:
        raise SerializationError(
            f"the payload cannot be decoded: it holds msgpack extension type {code}, "
            "unknown to this version of sqlitesaver (was it written by a newer one?)")
    try:
        return build(body)
    except Exception as exc:
        raise _invalid(kind, code, exc) from exc

