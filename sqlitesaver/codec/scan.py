"""The scan of a value before packing: what it holds, without packing it.

:func:`_scan` tells encode() whether ormsgpack may pack the value directly (exact native types
only, and not mostly big str and bytes), whether it holds a bytearray, shares containers, holds
more than :data:`MAX_OBJECTS` objects, or holds something refused; :func:`_flat_native` answers
the same for a small flat dict (LangGraph's metadata) at a fraction of the cost. decode() runs
the scan too, on values that may hold a msgpack timestamp. Where setup.py built it, the walk
runs in C (_scan.c, the same steps and answers: see the end of this module).
"""

from __future__ import annotations

import datetime
import decimal
import gc
import operator
from typing import Any

import msgpack

from .. import _extensions
from .extensions import _MAX_DEPTH

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
# How many objects _scan() may reach before it looks for shared containers. Looking costs an
# id() per object of a level (~70 ns each: 0.65 ms of the 2 ms scan of bench/run.py's 1 MiB
# state, 9,164 dicts in one level); not looking costs, for a value that does share, a second
# scan of what it shares, and for one that contains itself, at most this many objects scanned
# before the look finds it (0.01-0.04 s, ad hoc; tests/test_pathological_values.py).
_UNCHECKED = 1 << 18

#: Most objects a value may hold, counting a container once for every place it appears in: the
#: packer writes it out in full at each place (it comes back as that many separate copies).
#: Far beyond any real state (a tree this size takes gigabytes of Python objects), it keeps a
#: value that shares containers from expanding without bound: 60 levels of ``a = [a, a]`` are
#: 60 lists but 2**60 objects to write. The keys of a dict whose keys are all str are not
#: counted (gc.get_referents() does not return them, see _scan(); _inspect() counts the same).
MAX_OBJECTS = 2**26


def _scan_python(value: Any) -> int:
    """What packing ``value`` would meet, found without packing it:

    * _REJECT: another of _NATIVE_EXTRAS than bytearray, or more than _MAX_DEPTH levels;
    * _SHARED: a non-empty container appears twice in one level (shared, or the value contains
      itself), looked for once the scan could pass _UNCHECKED objects: only _inspect(), which
      follows identities, can tell how much packing would write. A value below that which
      shares containers without containing itself gets the answer _inspect() would give;
    * _TOO_MANY: more than MAX_OBJECTS objects;
    * else _HAS_BYTEARRAY if it holds a bytearray, _NATIVE if it holds only _NATIVE_KINDS
      (and not so much str and bytes that msgpack packs it faster), else _CLEAN.

    One level of nesting at a time, each in C: CPython's gc.get_referents() returns the items
    of lists, tuples, sets and frozensets and the values of dicts, with their keys unless all
    are exact str (which need no look). It costs about as much as packing; a Python walk of
    every object costs six times that. The round-trip and rejection tests guard this reliance.

    Linear in the objects the value holds: up to _UNCHECKED objects counting a shared one at
    each place, then a level holds each container at most once (else _SHARED, before it is
    expanded), so the next level is at most the items of distinct containers, and the count of
    every level stops at MAX_OBJECTS.
    """
    if type(value) in _ATOMS:  # a flat value: nothing inside it to look at
        native = type(value) in _NATIVE_KINDS and _length_hint(value) <= _FAST_OUTPUT
        return _NATIVE if native else _CLEAN
    level = [value]
    found = _NATIVE
    total = 1
    checked = False  # whether levels are checked for sharing (see _UNCHECKED)
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
        # Sharing is looked for only once the scan could pass _UNCHECKED objects: below that, a
        # container met twice is simply scanned twice, as packing writes it twice (and a
        # value that contains itself reaches the bound, or _MAX_DEPTH, within a few levels).
        # The next level has at most twice the lengths of this one (a dict's values, and its
        # keys unless all are str), so checking before it is made keeps every level small.
        if not checked and len(level) > 1 and \
                total + 2 * sum(map(_length_hint, level)) > _UNCHECKED:
            checked = True  # and every level after this one
        # One pass in C; _repeats() looks closer only when some object repeats (small ints,
        # True, interned strings and empty tuples do, harmlessly).
        if checked and len(set(map(id, level))) != len(level) and _repeats(level):
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

# The same walk in C where setup.py could build it (_sqlitesaver_scan, sqlitesaver/codec/
# _scan.c): the same answer for every value (tests/test_scan_c.py compares the two), ~5x
# faster (timeit, ad hoc: the 4 KiB state 11.6 -> 2.0 us, bench/run.py's 1 MiB state 1.95 ->
# 0.46 ms), because Python's set(map(type, level)) costs ~25 ns an object. The sets and bounds
# above stay its single source: copied once, here (a change to them, or to _SAMPLE,
# _FAST_OUTPUT, _BYTES_PER_OBJECT or _MAX_DEPTH, after this import does not reach it), and
# _UNCHECKED and MAX_OBJECTS passed at each call (tests lower them). It answers None for a
# value it leaves to the Python walk (a class whose metaclass defines __hash__ or __eq__).
_c = _extensions.load("_sqlitesaver_scan", 1)
if _c is not None:
    _c.configure(_ATOMS, _NATIVE_KINDS, _CONTAINERS, _NATIVE_EXTRAS, _BLOBS, _MAX_DEPTH,
                 _SAMPLE, _FAST_OUTPUT, _BYTES_PER_OBJECT,
                 (_CLEAN, _HAS_BYTEARRAY, _REJECT, _SHARED, _TOO_MANY, _NATIVE))
    _c_scan = _c.scan

    def _scan(value: Any) -> int:
        """:func:`_scan_python`'s answer, from the C walk where it gives one."""
        try:
            found = _c_scan(value, _UNCHECKED, MAX_OBJECTS)
        except TypeError:  # a bound that is not an int (float("inf")): compared as it is
            return _scan_python(value)
        return _scan_python(value) if found is None else found
else:
    _scan = _scan_python

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
