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

import datetime
import decimal
import functools
import gc
import operator
import uuid
import zoneinfo
from collections.abc import Iterator
from itertools import chain
from typing import Any

import msgpack

from . import _fastpack
from .errors import SQLITE_MAX_LENGTH, SerializationError, ValueTooLargeError

__all__ = ["encode", "decode", "MAX_OBJECTS", "MAX_BYTES"]

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
# stack does not grow with the value (see the decoding section), enforces _MAX_NESTED against
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

# msgpack's C packer writes these itself even with strict_types, without asking `default`:
# bytearray and memoryview as bin (so they would come back as bytes), ExtType and Timestamp as
# raw extensions (a user's ExtType(3, ...) would come back as a tuple). encode() has to find
# them before packing.
_NATIVE_EXTRAS = frozenset({bytearray, memoryview, msgpack.ExtType, msgpack.Timestamp})
_CONTAINERS = frozenset({list, dict, tuple, set, frozenset})
_NESTERS = frozenset({tuple, set, frozenset})  # the containers packed through `default`
# Instances of types without Py_TPFLAGS_HAVE_GC have no referents, so _scan() can pass them to
# gc.get_referents() without filtering them out first.
_ATOMS = frozenset(kind for kind in (type(None), bool, int, float, str, bytes, datetime.datetime,
                                     datetime.date, datetime.time, datetime.timedelta,
                                     decimal.Decimal)
                   if not kind.__flags__ & (1 << 14))
_PLAIN = _CONTAINERS | _ATOMS
# The types ormsgpack packs exactly as the msgpack path does (see _fastpack.pack()).
_NATIVE_KINDS = frozenset({type(None), bool, int, float, str, bytes, list, dict})
# ormsgpack is faster per object, but its output grows 4x at a time and, past 64 KiB, into
# fresh memory (glibc's mmap()), whose page faults cost ~0.5-1 ns a byte on every call where
# msgpack's copy costs ~0.05: measured in fresh processes, ["msgpack", 100 KB of bytes] (the
# LangGraph adapter's shape) took 89 us against msgpack's 7, 500 messages of 2 KB 586 us
# against 96, and 10,000 strings of 100 bytes 714 us against 1,091. So a value whose str and
# bytes are estimated (from up to _SAMPLE of each level's items) at more than _FAST_OUTPUT and
# more than _BYTES_PER_OBJECT per object goes to msgpack: the same bytes either way.
_BLOBS = frozenset({str, bytes})
_SAMPLE = 8
_FAST_OUTPUT = 1 << 16
_BYTES_PER_OBJECT = 128
_length_hint = operator.length_hint  # len() of a str, bytes, list or dict; 0 for numbers
_CLEAN, _HAS_BYTEARRAY, _REJECT, _SHARED, _TOO_MANY, _NATIVE = range(6)

# Whether encode() and decode() try ormsgpack first (not where it is missing or untested, e.g.
# Python 3.10: see _fastpack); tests and bench/codec_bench.py switch them off to run the
# msgpack path alone.
_FAST_ENCODE = _fastpack.PACK_WORKS
_FAST_DECODE = _fastpack.DECODE_WORKS
# Whether a [str, bytes] pair is written and read directly (_pair_bytes, _pair); off, like the
# two above, to run the msgpack path alone.
_PAIRS = True

#: Most objects a value may hold, counting a container once for every place it appears in: the
#: packer writes it out in full at each place (it comes back as that many separate copies).
#: Far beyond any real state (a tree this size takes gigabytes of Python objects), it keeps a
#: value that shares containers from expanding without bound: 60 levels of ``a = [a, a]`` are
#: 60 lists but 2**60 objects to write. The keys of a dict whose keys are all str are not
#: counted (gc.get_referents() does not return them, see _scan(); _inspect() counts the same).
MAX_OBJECTS = 2**26

#: Most bytes one encoded value may take: SQLite's limit for one string or BLOB, kept on
#: PostgreSQL too (under its 1 GiB for one bytea), so that a store moves between engines. A
#: value just under it may still make its row too big, which SQLite refuses
#: (ValueTooLargeError too).
MAX_BYTES = SQLITE_MAX_LENGTH


def _scan(value: Any) -> int:
    """What packing ``value`` would meet, found without packing it:

    * _REJECT: another of _NATIVE_EXTRAS than bytearray, or more than _MAX_DEPTH levels;
    * _SHARED: a non-empty container appears twice in one level (shared, or the value contains
      itself): only _inspect(), which follows identities, can tell how much packing would write;
    * _TOO_MANY: more than MAX_OBJECTS objects;
    * else _HAS_BYTEARRAY if it holds a bytearray, _NATIVE if it holds only _NATIVE_KINDS
      (and not so much str and bytes that msgpack packs it faster), else _CLEAN.

    One level of nesting at a time, each in C: CPython's gc.get_referents() returns the items
    of lists, tuples, sets and frozensets and the values of dicts, with their keys unless all
    are exact str (which need no look). It costs about as much as packing; a Python walk of
    every object costs six times that. The round-trip and rejection tests guard this reliance.

    Linear in the objects the value holds: a level holds each container at most once (else
    _SHARED, before it is expanded), so the next level is at most the items of distinct
    containers, and the count of every level stops at MAX_OBJECTS.
    """
    if type(value) in _ATOMS:  # a flat value: nothing inside it to look at
        native = type(value) in _NATIVE_KINDS and _length_hint(value) <= _FAST_OUTPUT
        return _NATIVE if native else _CLEAN
    level = [value]
    found = _NATIVE
    total = 1
    blobs = 0  # the estimated length of the str and bytes met, while found is _NATIVE
    for _ in range(_MAX_DEPTH + 1):
        kinds = set(map(type, level))
        if found == _NATIVE:
            if not kinds <= _NATIVE_KINDS:
                found = _CLEAN
            elif not kinds.isdisjoint(_BLOBS):
                sample = level[:_SAMPLE]
                blobs += sum(map(_length_hint, sample)) * len(level) // len(sample)
        if not kinds <= _PLAIN:
            extras = kinds & _NATIVE_EXTRAS
            if extras:
                if extras != {bytearray}:
                    return _REJECT
                found = _HAS_BYTEARRAY
            level = [obj for obj in level if type(obj) in _CONTAINERS]
        elif kinds.isdisjoint(_CONTAINERS):
            break  # atoms only: there is no level below (saves a call on the leaves)
        # One pass in C; _repeats() looks closer only when some object repeats (small ints,
        # True, interned strings and empty tuples do, harmlessly).
        if len(set(map(id, level))) != len(level) and _repeats(level):
            return _SHARED
        level = _get_referents(*level)
        total += len(level)
        if total > MAX_OBJECTS:
            return _TOO_MANY
        if not level:
            break
    else:
        return _REJECT
    if found == _NATIVE and blobs > _FAST_OUTPUT and blobs > _BYTES_PER_OBJECT * total:
        return _CLEAN  # mostly str and bytes, which msgpack packs faster (see _BLOBS)
    return found


_get_referents = gc.get_referents

# A small flat dict, the usual metadata ({"source": "loop", "step": 3, "parents": {}}): checked
# item by item, it is _NATIVE without _scan()'s fixed cost (sets, levels): 3.7 us -> 1.1 us
# per encode of LangGraph's metadata (ad hoc, timeit). Its str are short enough for ormsgpack
# whatever _scan()'s size estimate would say (at most _FLAT_ITEMS of _FLAT_STR characters).
_FLAT_ITEMS = 16
_FLAT_STR = 1024
_FLAT_ATOMS = frozenset({type(None), bool, int, float})


def _flat_native(value: dict) -> bool:
    """True if every key of ``value`` is a str and every value a None, bool, int, float, a str
    of at most _FLAT_STR characters, or an empty dict or list: :func:`_scan` would return
    _NATIVE. False says nothing (the caller scans)."""
    try:
        for key, item in value.items():
            if type(key) is not str or len(key) > _FLAT_STR:
                return False
            kind = type(item)
            if kind in _FLAT_ATOMS:
                continue
            if kind is str:
                if len(item) > _FLAT_STR:
                    return False
            elif (kind is not dict and kind is not list) or item:
                return False
    except RuntimeError:  # another thread resized it meanwhile: the scan decides, as before
        return False
    return True


def _repeats(level: list) -> bool:
    """True if a non-empty container is in ``level`` twice."""
    seen: set[int] = set()
    for obj in level:
        if type(obj) in _CONTAINERS and obj:
            if id(obj) in seen:
                return True
            seen.add(id(obj))
    return False


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


def _too_many() -> str:
    return (f"it holds more than {MAX_OBJECTS:,} objects, counting a container once for every "
            "place it appears in (each place is stored in full)")


def _explain(value: Any, name: str, cause: BaseException | None) -> SerializationError:
    """The error for the first object, in packing order, that makes ``encode(value)`` fail."""
    problem, _ = _inspect(value, name, leaves=True)
    if problem is not None:
        return problem
    if isinstance(cause, RecursionError):
        return SerializationError(f"cannot serialize {name}: it is nested too deeply for the "
                                  "current Python recursion limit")
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return SerializationError(f"cannot serialize {name}{detail}")


def _children(obj: Any, path: Any) -> Iterator[tuple[Any, Any]]:
    """The objects inside a container, in packing order, each with its path."""
    if type(obj) is dict:
        for i, (key, item) in enumerate(obj.items()):
            yield key, (path, "key", i)
            yield item, (path, "value", key)
    else:
        how = "index" if type(obj) is list or type(obj) is tuple else "member"
        for i, item in enumerate(obj):
            yield item, (path, how, i)


def _leaf_reason(obj: Any) -> str | None:
    """Why the packer refuses ``obj`` (not a container), or None if it does not. Packing it
    alone, so it accepts exactly what the packer accepts."""
    kind = type(obj)
    if kind is bytearray:
        return None
    if kind in _NATIVE_EXTRAS:
        return f"{_type_name(kind)} is not supported; sqlitesaver stores {_SUPPORTED}"
    try:
        _packers[0](obj)
        return None
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
    return reason


def _inspect(value: Any, name: str, *, leaves: bool) -> tuple[SerializationError | None, int]:
    """Walk ``value`` once, in packing order, entering each distinct container once; return
    the error for the first thing that keeps it from being stored (None if nothing does), and
    _HAS_BYTEARRAY or _CLEAN.

    Exact where _scan() is fast: it follows containers by identity, so it finds a value that
    contains itself at the first repeat, and its work grows with the objects the value really
    holds, not with the copies packing would write; those it counts from each container's
    totals (objects, levels and tuples/sets/frozensets below it), kept once it is walked.
    With ``leaves`` it also packs every leaf alone, to name the one the packer refuses; without,
    it only checks the structure (encode() packs next, and explains a failure with ``leaves``).
    A Python walk: for failures, and values that share containers.
    """
    found = _CLEAN
    walked: dict[int, tuple[int, int, int]] = {}  # id -> (objects, levels, nesters) below it
    open_paths: dict[int, Any] = {}  # id -> path, for each container the walk is inside of

    def error(path: Any, reason: str) -> tuple[SerializationError, int]:
        return SerializationError(f"cannot serialize {_render(name, path)}: {reason}"), found

    too_deep = f"it is nested more than {_MAX_DEPTH} containers deep"
    too_nested = f"more than {_MAX_NESTED} tuples/sets/frozensets are nested in one another"
    # A frame per open container: [obj, its children, depth, nesters around its children,
    # objects so far, levels below, nesters below, whether its str keys count].
    stack: list[list] = []
    item: tuple | None = (value, None, 0, 0)  # the next object: obj, path, depth, nesters around
    while True:
        if item is not None:
            obj, path, depth, nested = item
            item = None
            kind = type(obj)
            if depth > _MAX_DEPTH:
                return error(path, too_deep)
            if kind in _CONTAINERS:
                key = id(obj)
                if key in open_paths:
                    return error(path, f"it contains itself (it is the same {_type_name(kind)}"
                                       f" as {_render(name, open_paths[key])}, which holds it)")
                nester = kind in _NESTERS
                if nester and nested >= _MAX_NESTED:
                    return error(path, too_nested)
                totals = walked.get(key)
                if totals is None:
                    if not (_packs_alone(obj) if leaves else _flat(obj)):
                        open_paths[key] = path
                        counts_keys = kind is dict and not set(map(type, obj)) <= {str}
                        stack.append([obj, _children(obj, path), depth, nested + nester, 1, 0,
                                      0, counts_keys])
                        continue
                    totals = walked[key] = _flat_totals(obj)
                objects, levels, nesters = totals
                if depth + levels > _MAX_DEPTH:
                    return error(path, too_deep)
                if nested + nesters > _MAX_NESTED:
                    return error(path, too_nested)
            else:
                if kind is bytearray:
                    found = _HAS_BYTEARRAY
                elif kind in _NATIVE_EXTRAS or leaves:
                    reason = _leaf_reason(obj)
                    if reason is not None:
                        return error(path, reason)
                objects, levels, nesters = 1, 0, 0
                if stack and path[1] == "key" and not stack[-1][7]:
                    objects = 0  # a str key of a dict whose keys are all str: see MAX_OBJECTS
        else:
            frame = stack[-1]
            step = next(frame[1], None)
            if step is not None:
                item = (step[0], step[1], frame[2] + 1, frame[3])
                continue
            stack.pop()
            obj = frame[0]
            del open_paths[id(obj)]
            objects, levels, nesters = frame[4], frame[5], frame[6] + (type(obj) in _NESTERS)
            walked[id(obj)] = (objects, levels, nesters)
        if not stack:
            if objects > MAX_OBJECTS:
                return error(None, _too_many())
            return None, found
        parent = stack[-1]
        parent[4] += objects
        parent[5] = max(parent[5], levels + 1)
        parent[6] = max(parent[6], nesters)


def _flat(obj: Any) -> bool:
    """True if the container holds atoms only (no container, nothing _scan() rejects)."""
    if type(obj) is dict:
        return set(map(type, obj)) <= _ATOMS and set(map(type, obj.values())) <= _ATOMS
    return set(map(type, obj)) <= _ATOMS


def _packs_alone(obj: Any) -> bool:
    """True if the container holds atoms only and packs: nothing in it to explain."""
    if not _flat(obj):
        return False
    try:
        _packers[0](obj)
    except Exception:
        return False
    return True


def _flat_totals(obj: Any) -> tuple[int, int, int]:
    """(objects, levels, nesters) of a container of atoms only, as _inspect() counts them."""
    objects = 1 + len(obj)
    if type(obj) is dict and not set(map(type, obj)) <= {str}:
        objects += len(obj)
    return objects, 1 if obj else 0, 1 if type(obj) in _NESTERS else 0


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
    if len(parts) > 24:  # a path hundreds of levels deep
        parts[8:-8] = ["..."]
    return name + "".join(parts)


# --- decoding -----------------------------------------------------------------------------------
# The C stack a decode uses does not grow with the value. ormsgpack's decoder, offered each
# payload first (_fast_decode below), recurses, but only ever gets payloads at most
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


class _Nested(Exception):
    """The payload holds a tuple, set or frozenset: decode() takes the longer way."""


def _ext_hook(code: int, body: bytes) -> Any:
    if code in _NESTING:
        raise _Nested
    return _leaf(code, body)


class _Pending:
    """A tuple, set or frozenset met in a payload, built once the payload is unpacked."""

    __slots__ = ("code", "body", "nested", "items", "value")

    def __init__(self, code: int, body: bytes, nested: int) -> None:
        self.code = code
        self.body = body
        self.nested = nested  # tuples/sets/frozensets it is inside of, itself included
        self.items: list = []
        self.value: Any = None


def _decode_nested(data: bytes) -> Any:
    """decode() of a payload that holds tuples, sets or frozensets, in constant C stack.

    Each one the unpacker meets becomes a _Pending, and the lists and dicts holding one are
    noted; once an unpack returns, the bodies met are unpacked in turn (meeting more), then
    built innermost first (one is met while its parent's body is unpacked, so later), and the
    noted lists and dicts get the built values in place of the _Pending (a dict is refilled in
    its order: a tuple key hashes only once built)."""
    pending: list[_Pending] = []
    holders: list = []
    nested = 0  # tuples/sets/frozensets around the body being unpacked

    def ext_hook(code: int, body: bytes) -> Any:
        if code not in _NESTING:
            return _leaf(code, body)
        if nested >= _MAX_NESTED:
            raise _invalid(_NESTING[code], code, ValueError(
                f"more than {_MAX_NESTED} tuples/sets/frozensets nested"))
        found = _Pending(code, body, nested + 1)
        pending.append(found)
        return found

    def list_hook(items: list) -> list:
        if _Pending in map(type, items):
            holders.append(items)
        return items

    def pairs_hook(pairs: list) -> dict:
        result = dict(pairs)
        if _Pending in map(type, chain.from_iterable(pairs)):
            holders.append(result)
        return result

    # One unpacker for the payload and then each body in turn (never one inside another).
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=ext_hook,
                                list_hook=list_hook, object_pairs_hook=pairs_hook,
                                max_buffer_size=len(data))
    value = _next(unpacker, data)
    for found in pending:  # grows while it runs: bodies hold more
        nested = found.nested
        try:
            items = _next(unpacker, found.body)
            if type(items) is not list:
                raise ValueError(f"expected a msgpack array, found {_type_name(type(items))}")
        except SerializationError:
            raise
        except Exception as exc:
            raise _invalid(_NESTING[found.code], found.code, exc) from exc
        found.items = items
    for found in reversed(pending):
        kind = _NESTING[found.code]
        try:
            found.value = kind(_built(item) for item in found.items)
        except Exception as exc:
            raise _invalid(kind, found.code, exc) from exc
    for holder in holders:
        if type(holder) is list:
            holder[:] = map(_built, holder)
        else:
            entries = [(_built(key), _built(item)) for key, item in holder.items()]
            holder.clear()
            holder.update(entries)
    return _built(value)


def _built(obj: Any) -> Any:
    return obj.value if type(obj) is _Pending else obj


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


_EMPTY_MAP = b"\x80"  # {}: the usual metadata
_PAIR_HEADER = b"\x92"  # a fixarray of 2: how a [str, bytes] pair starts


def _pair_bytes(value: list) -> bytes | None:
    """The bytes of a ``[str, bytes]`` pair, written directly, or None (the general path then
    decides). The inverse of :func:`_pair`, for the same reason: the LangGraph adapter stores
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


def _pair(data: bytes) -> list | None:
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


# ormsgpack's decode, offered every payload first; it declines (_fastpack.MISS) all but whole,
# shallow payloads of str-keyed maps and of the extensions built here by _DECODERS, which it
# builds as _leaf() does (a body _leaf() would refuse makes it decline too). It never meets a
# msgpack timestamp (one makes it decline) or more than _fastpack.MAX_DEPTH levels, so what it
# returns needs none of the checks at the end of decode().
_fast_decode = _fastpack.unpacker({code: build for code, (_, build) in _DECODERS.items()})
_MISS = _fastpack.MISS


def decode(data: bytes) -> Any:
    """The value :func:`encode` turned into ``data``, with exactly the types it had.

    Builds only the supported types and never runs code from the payload. Raises
    :class:`SerializationError`, and returns nothing, if ``data`` is not a complete payload in
    this format: truncated, garbage, or holding an extension type this version does not know
    (written by a newer sqlitesaver). Uses the same C stack whatever the value (see the note
    above _next): any value encode() accepts decodes in any thread.
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
