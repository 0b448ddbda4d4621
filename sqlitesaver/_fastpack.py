"""ormsgpack, for what it does exactly as the msgpack path of sqlitesaver.codec (issue #15).

codec/ decides when these apply, and whenever one declines (returns None or :data:`MISS`) its
msgpack path does the work as if they did not exist; this module knows how to run ormsgpack
safely:

* :func:`pack` packs values holding nothing but exact ``None``, ``bool``, ``int``, ``float``,
  ``str``, ``bytes``, ``list`` and ``dict`` (codec._scan() tells). For those ormsgpack writes
  the bytes msgpack does: the smallest int, str, bin, array and map formats, float64 (nan and
  -0.0 bit for bit), dicts in their order, keys of any of these types as themselves
  (tests/test_fastpack.py compares both at every format boundary and on generated values,
  tests/test_codec.py checks golden bytes). What ormsgpack refuses (ints beyond 64 bits, lone
  surrogates, 256 levels) makes pack() decline. It must never see anything else: it would
  write tuples as arrays, datetimes as strings, enums, dataclasses and subclasses as their
  base types, all silently.
* :func:`unpacker` builds a decode that hands ormsgpack only a payload proved to be exactly one
  msgpack object (no trailing bytes, every length it declares backed by bytes) nesting at most
  :data:`MAX_DEPTH` containers, and that declines when ormsgpack would build anything other
  than what the msgpack path builds: it lets ormsgpack read maps with str keys only, and no
  extension at all (no Python code runs inside ormsgpack, where a Ctrl-C would be lost). A
  tuple, set or frozenset, a datetime or any other extension, a non-str key, invalid UTF-8, a
  payload too deep: the msgpack path decodes it, or raises, exactly as it would alone.

Why prove first: ormsgpack's decoder recurses on the C stack, ~670 bytes per level (measured:
a thread with a 32 KiB stack dies at 49 nested arrays), up to its limit of 1023 levels, while
codec.decode() promises the same small C stack whatever the payload (tests/test_stack.py); it
cannot be given a smaller limit; and it returns the first object of a payload, ignoring any
bytes after it. So msgpack's own C parser, which keeps its containers on a heap stack and
builds nothing when it skips, checks the payload first (:func:`_shallow`, ~2.5 us for a 4 KiB
payload, against ~6.5 us for ormsgpack to decode it and ~14 us for the msgpack path).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgpack

from . import _extensions

# Not a hard import: ormsgpack is a dependency on Python 3.11+ only (pyproject.toml), since the
# first version fit for this (1.13.1) needs 3.11. Earlier ones leak every container they had
# built when a decode fails (1.12.2: ~2 objects per container, on each payload declined), and
# a later major version may write other bytes; with any of those, or none, the codec runs on
# msgpack alone, as it did before, and as CI tests it on Python 3.10.
try:
    import ormsgpack
except ImportError:  # pragma: no cover - Python 3.10, or a broken install
    ormsgpack = None
_TESTED = ((1, 13, 1), (2,))  # the versions used: from the first, below the second


def _usable() -> bool:
    found = re.match(r"(\d+)\.(\d+)\.(\d+)", getattr(ormsgpack, "__version__", ""))
    return bool(found) and _TESTED[0] <= tuple(map(int, found.groups())) < _TESTED[1]


#: Whether :func:`pack` can run here (an ormsgpack of a tested version is installed).
PACK_WORKS = _usable()

__all__ = ["pack", "unpacker", "MISS", "MAX_DEPTH", "PACK_WORKS", "DECODE_WORKS"]

#: Returned by an :func:`unpacker` decode that declines the payload.
MISS = object()

#: Most containers a payload may nest for ormsgpack to decode it: with the leaf below them,
#: 17 levels, ~11 KiB of C stack at ~670 bytes each. Agent states nest far less (bench/core.py's:
#: 3); tests/test_stack.py reads payloads at this bound in threads with 32 KiB stacks.
MAX_DEPTH = 16

# Non-str keys (ints, floats, None, bool, bytes) are written as themselves, as msgpack does; the
# keys that would not be (tuples...) never get here.
_pack = ormsgpack.packb if PACK_WORKS else None
_PACK_OPTION = ormsgpack.OPT_NON_STR_KEYS if PACK_WORKS else 0


def pack(value: Any) -> bytes | None:
    """The msgpack bytes of ``value`` (see the module docstring for which values), or None if
    ormsgpack refuses it. Only if PACK_WORKS."""
    try:
        return _pack(value, option=_PACK_OPTION)
    except Exception:  # ints beyond 64 bits, lone surrogates, recursion limit: msgpack's turn
        return None


# --- the depth gauge --------------------------------------------------------------------------
# msgpack's C parser keeps the containers it is inside of on a stack of its own of 1024 entries
# (MSGPACK_EMBED_STACK_SIZE, unchanged since 2012) and raises StackError at a container, even an
# empty one, that would be the 1025th. So a payload parsed inside 1024 - MAX_DEPTH open
# containers raises StackError exactly if it nests more than MAX_DEPTH. _calibrated() checks
# this of the msgpack installed, and the fast decode is off if it does not hold (the pure-Python
# fallback, or another stack size).
_STACK = 1024
_OPEN = b"\xdd\xff\xff\xff\xff"  # an array of 2**32 - 1 items: in practice never closes
_ONE = b"\x91"  # an array of one item: closes as soon as its item does
_ONES = _ONE * (_STACK - MAX_DEPTH)
_POOLED = 1 << 16  # as codec/strict.py's _POOLED: bigger payloads get Unpackers of their own
# Payloads one primed Unpacker may gauge: each takes one item of its innermost open array.
_PRIMED_USES = 2**32 - 2


def _primed(buffer_size: int) -> msgpack.Unpacker:
    """An Unpacker inside 1024 - MAX_DEPTH arrays that never close (parsing them costs ~5 us,
    once per Unpacker): each payload fed to it is one more item of the innermost."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(buffer_size, len(_OPEN) * _STACK))
    unpacker.feed(_OPEN * (_STACK - MAX_DEPTH))
    try:
        unpacker.skip()
    except msgpack.OutOfData:
        return unpacker
    raise AssertionError("the primer closed")  # pragma: no cover - it holds no whole object


# First bytes of the headers of maps and arrays: fixmap, fixarray, array 16/32, map 16/32.
_HEADERS = frozenset(range(0x80, 0xA0)) | frozenset(range(0xDC, 0xE0))
_NOT_HEADERS = bytes(sorted(set(range(256)) - _HEADERS))
_COUNTED = 256  # payloads up to this size are counted first (~0.3 us at 256 bytes)

_OutOfData = msgpack.OutOfData
_WHOLE: list = []  # pooled plain Unpackers, as codec's pools (pop() and append() are atomic)
_GAUGES: list = []  # pooled [primed Unpacker, uses left]


def _shallow_python(data: bytes) -> bool:
    """True if ``data`` is exactly one msgpack object, with every length it declares backed by
    bytes, nesting at most MAX_DEPTH containers. Builds nothing, runs no hook."""
    if len(data) > _POOLED:
        # One pass: the payload as the item of 1024 - MAX_DEPTH one-item arrays, which close
        # with it, so the parse ends exactly at its end; ~5 us more than the payload's parse.
        unpacker = msgpack.Unpacker(max_buffer_size=len(data) + _STACK)
        unpacker.feed(_ONES)
        unpacker.feed(data)
        try:
            unpacker.skip()
        except Exception:  # OutOfData (truncated), StackError (too deep), FormatError...
            return False
        return unpacker.tell() == len(_ONES) + len(data)
    # Two passes, each reusing a pooled Unpacker: a plain one proves one whole object, then a
    # primed one gauges its depth. The primed one only ever sees whole objects, so it stays
    # inside its open arrays, ready for the next payload.
    try:
        unpacker = _WHOLE.pop()
    except IndexError:
        unpacker = msgpack.Unpacker(max_buffer_size=_POOLED)
    start = unpacker.tell()
    unpacker.feed(data)
    try:
        unpacker.skip()
    except Exception:  # the unpacker may hold part of the payload: never reused
        return False
    if unpacker.tell() - start != len(data):
        return False  # trailing bytes, which the unpacker holds: dropped with it
    _WHOLE.append(unpacker)
    # Each container's header starts with one of _HEADERS, so a payload holding at most
    # MAX_DEPTH such bytes cannot nest deeper; counting them costs less than the gauge (whose
    # StackError or OutOfData costs ~1 us) on small payloads, such as metadata.
    if len(data) <= _COUNTED and len(data.translate(None, _NOT_HEADERS)) <= MAX_DEPTH:
        return True
    try:
        gauge = _GAUGES.pop()
    except IndexError:
        gauge = [_primed(_POOLED), _PRIMED_USES]
    gauge[0].feed(data)
    try:
        gauge[0].skip()
    except _OutOfData:  # the payload ended inside the open arrays: shallow enough
        gauge[1] -= 1
        if gauge[1]:
            _GAUGES.append(gauge)
        return True
    except Exception:  # StackError: too deep (the unpacker is spent)
        return False
    return False  # pragma: no cover - the open arrays never close


# The same check in C where setup.py could build it (_sqlitesaver_shallow, sqlitesaver/
# _shallow.c): one pass of a loop that follows msgpack's format as msgpack's parser does, with
# the same answer for every payload (tests/test_shallow_c.py compares the two), instead of two
# passes of msgpack's parser and its pooled Unpackers' bookkeeping: ~24,000 instructions per
# get of the 4 KiB state. A payload that is not exact bytes (codec.decode takes any buffer)
# goes to the Python check.
# Version 2 also has pair(), which codec/__init__.py uses (the same read as its _pair_python).
_c = _extensions.load("_sqlitesaver_shallow", 2)
if _c is not None:
    _c_shallow = _c.shallow

    def _shallow(data: bytes) -> bool:
        """:func:`_shallow_python`'s answer, from the C check for bytes."""
        if type(data) is bytes:
            return _c_shallow(data, MAX_DEPTH)
        return _shallow_python(data)
else:
    _shallow = _shallow_python


def _calibrated() -> bool:
    """True if ormsgpack is usable and msgpack's parser is the C one with the 1024-entry stack
    _shallow() relies on: each of _shallow()'s ways (counted, gauged, one pass for big
    payloads) tried at the bound."""
    if not PACK_WORKS or getattr(msgpack.Unpacker, "__module__", "") != "msgpack._cmsgpack":
        return False
    pad = b"\xd9\xff" + b"a" * 255  # a str that takes a payload past _COUNTED
    bulk = b"\xc6" + _POOLED.to_bytes(4, "big") + bytes(_POOLED)  # a bin past _POOLED
    yes, no = [], []
    for leaf in (b"\xc0", pad, bulk):
        # [...[leaf]...] and [...[[], leaf]...] (an empty container counts), at the bound and
        # one over, then with a trailing byte and truncated
        yes += [_ONE * MAX_DEPTH + leaf, _ONE * (MAX_DEPTH - 2) + b"\x92\x90" + leaf]
        no += [_ONE * (MAX_DEPTH + 1) + leaf, _ONE * (MAX_DEPTH - 1) + b"\x92\x90" + leaf,
               _ONE * MAX_DEPTH + leaf + b"\xc0", _ONE * MAX_DEPTH + leaf[:-1]]
    checks = [_shallow_python] if _shallow is _shallow_python else [_shallow_python, _shallow]
    try:  # (the Python check is what needs msgpack's parser; the C one is tested alike)
        return all(all(map(check, yes)) and not any(map(check, no)) for check in checks)
    except Exception:
        return False


#: Whether :func:`unpacker`'s decodes can run here (see _calibrated()); codec/ checks it.
DECODE_WORKS = _calibrated()


# --- decoding ---------------------------------------------------------------------------------
_unpack = ormsgpack.unpackb if PACK_WORKS else None
# No Python ext_hook: ormsgpack turns whatever one raises into its own ValueError, dropping
# it, and a signal that arrives while ormsgpack parses is delivered at the entry of the first
# Python function called, the hook's, before any `try` in it could keep it: a Ctrl-C was lost
# there in ~3 of 4 trials (tests/test_review21.py). The hook is builtin divmod, C code in
# which nothing is delivered, which raises TypeError for the (code, bytes) it is given: the
# first extension ends ormsgpack's decode there, and the payload is declined (the msgpack path
# builds extensions, and lets interruptions through). A hook that returned (a dict's
# setdefault, until session 22) let ormsgpack build the whole payload first: a 4 KiB state
# whose first key held a datetime decoded in 37 us, against 13 without one.


def unpacker() -> Callable[[bytes], Any]:
    """A function that decodes a payload with ormsgpack, or returns :data:`MISS`; to be called
    only if DECODE_WORKS. It declines every payload that holds an extension (msgpack's
    timestamp -1 included: without OPT_DATETIME_AS_TIMESTAMP_EXT, ormsgpack hands it to the
    hook like any other)."""

    def decode(data: bytes) -> Any:
        if not _shallow(data):
            return MISS
        try:
            # Without OPT_NON_STR_KEYS ormsgpack refuses any key but a str, so that it cannot
            # return a tuple for an array key, which the msgpack path (and the format) refuses.
            return _unpack(data, ext_hook=divmod)  # an extension: TypeError, ours below
        except Exception:
            return MISS

    return decode
