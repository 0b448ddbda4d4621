"""The codec's scan in C (``_sqlitesaver_scan``, sqlitesaver/codec/_scan.c) against the Python
walk it replaces (``codec.scan._scan_python``): the same answer for every value, including
the ones that decide what is refused (extras, depth, sharing, the object bound) and the size
estimate that picks a packer; no reference leaked or dropped; values whose lookup would run
Python code (a metaclass's own __hash__ or __eq__), and bounds that are not C integers, get
the Python walk's answer from the Python walk; the build is of this source (conftest.check_c_extension, which also requires it built under CI).

Where the extension is not built, these skip, saying so, and the codec runs the Python walk,
which the rest of the suite then tests; under CI on a machine with a C compiler, the
extension must have been built (``pip install .`` builds it), or the suite would silently
test only the fallback.
"""

from __future__ import annotations

import datetime
import decimal
import os
import sys

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import check_c_extension
from sqlitesaver import codec
from sqlitesaver.codec import scan

BUILT = scan._c is not None
needs_c = pytest.mark.skipif(not BUILT, reason="_sqlitesaver_scan is not built here (no C "
                             "compiler when pip installed sqlitesaver, or a source checkout "
                             "without `python setup.py build_ext --inplace`): the codec runs "
                             "its Python scan")




def both(value: object) -> int:
    """The C answer, checked against the Python walk's (and returned): the codec's _scan()
    and, where the bounds are ints, the C walk itself, which must answer (not None, "ask the
    Python walk", which _scan() would hide by asking it)."""
    expected = scan._scan_python(value)
    assert scan._scan(value) == expected, (
        f"C scan disagrees: {scan._scan(value)} vs {expected} for {value!r:.300}")
    if type(scan._UNCHECKED) is int and type(scan.MAX_OBJECTS) is int:
        found = scan._c_scan(value, scan._UNCHECKED, scan.MAX_OBJECTS)
        assert found == expected, f"C walk answered {found} vs {expected} for {value!r:.300}"
    return expected


class Point:
    def __init__(self, x: object) -> None:
        self.x = x


class Text(str):
    pass


class Mapping(dict):
    pass


# Every kind the scan sorts: native atoms, the other plain atoms, the extras packers write
# themselves, subclasses and arbitrary objects (refused by the packers, not by the scan).
atoms = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70), st.floats(),
    st.text(max_size=40), st.binary(max_size=40),
    st.text(min_size=0, max_size=3).map(lambda s: s * 30_000),  # big str: the size estimate
    st.binary(max_size=3).map(lambda b: b * 40_000),
    st.datetimes().map(lambda d: d.replace(tzinfo=datetime.timezone.utc)),
    st.dates(), st.times(), st.timedeltas(), st.decimals(allow_nan=False),
    st.binary(max_size=8).map(bytearray), st.binary(max_size=8).map(memoryview),
    st.just(msgpack.ExtType(3, b"x")), st.just(msgpack.Timestamp(1, 2)),
    st.text(max_size=5).map(Text), st.integers().map(Point), st.just(NotImplemented),
    st.just(1 + 2j),
)


def containers(children: st.SearchStrategy) -> st.SearchStrategy:
    keys = st.one_of(st.text(max_size=8), st.integers(), st.text(max_size=3).map(Text),
                     st.tuples(st.integers()))
    return st.one_of(
        st.lists(children, max_size=6), st.tuples(children, children),
        st.dictionaries(st.text(max_size=8), children, max_size=6),
        st.dictionaries(keys, children, max_size=4),
        st.frozensets(st.integers(), max_size=4), st.sets(st.text(max_size=4), max_size=4),
        st.dictionaries(st.text(max_size=4), children, max_size=3).map(Mapping),
    )


values = st.recursive(atoms, containers, max_leaves=60)


@needs_c
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.sampled_from([0, 3, 50, scan._UNCHECKED]),
       st.sampled_from([5, 40, 1000, scan.MAX_OBJECTS]))
def test_the_same_answer_as_the_python_walk(value, unchecked, max_objects):
    old = scan._UNCHECKED, scan.MAX_OBJECTS
    scan._UNCHECKED, scan.MAX_OBJECTS = unchecked, max_objects
    try:
        both(value)
        both([value, value, [value]])  # shared: scanned twice, or found once looked for
        both({"a": value, "b": (value,)})
    finally:
        scan._UNCHECKED, scan.MAX_OBJECTS = old


def self_containing_list() -> list:
    v: list = []
    v.append(v)
    v.append(v)
    return v


def doubling(levels: int) -> list:
    v: list = [1]
    for _ in range(levels):
        v = [v, v]
    return v


def nested(depth: int) -> list:
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


def general_table_dict() -> dict:
    d = {1: "x", "a": "b"}
    del d[1]  # all keys str now, but its table stays general: get_referents gives the keys
    return d


CASES = {
    "flat str": "x" * 100, "big str": "x" * 70_000, "big bytes": b"x" * 70_000,
    "bytearray": bytearray(b"ab"), "a datetime": datetime.datetime(2020, 1, 1),
    "decimal": decimal.Decimal("1.5"), "ExtType inside": [1, msgpack.ExtType(1, b"")],
    "Timestamp inside": {"t": msgpack.Timestamp(0)}, "memoryview inside": [memoryview(b"a")],
    "bytearray deep": [[[bytearray(b"x")]]], "bytearray and ExtType": [bytearray(),
                                                                        msgpack.ExtType(1, b"")],
    "depth at the bound": nested(scan._MAX_DEPTH), "depth past it": nested(scan._MAX_DEPTH + 1),
    "depth far past": nested(1000), "itself twice": self_containing_list(),
    "2**16 shared": doubling(16), "2**60 shared": doubling(60),
    "shared 100,000 times": [list(range(1000))] * 100,
    "many str": ["y" * 200] * 5000, "many small str": ["y"] * 70_000,
    "general dict table": general_table_dict(), "dict subclass": Mapping(a=1),
    "object": Point(3), "objects of many classes": [type(f"C{i}", (), {})() for i in range(40)],
    "empty containers repeated": [[], {}, (), [], {}, ()] * 10,
    "tuple keys": {(1, 2): [3]}, "set of tuples": {(1,), (2,)},
    # The size estimate reads a level's first _SAMPLE items only (a list's referents come
    # last item first): each pair is one where they say "small" and one where they say "big".
    "small str first": ["a"] * scan._SAMPLE + ["x" * 1000] * 200,
    "small str last": ["x" * 1000] * 200 + ["a"] * scan._SAMPLE,
    "big str first": ["x" * 10_000] * scan._SAMPLE + ["a"] * 10_000,
    "big str last": ["a"] * 10_000 + ["x" * 10_000] * scan._SAMPLE,
}


@needs_c
@pytest.mark.parametrize("unchecked", [0, scan._UNCHECKED])
@pytest.mark.parametrize("case", list(CASES))
def test_the_same_answer_on_edge_values(case, unchecked, monkeypatch):
    monkeypatch.setattr(scan, "_UNCHECKED", unchecked)
    both(CASES[case])


@needs_c
def test_no_reference_is_leaked_or_dropped():
    shared = ["s" * 10, 1.5, {"k": bytearray(b"x")}]
    probes = [shared, shared[0], shared[2], shared[2]["k"], Point, Text]
    value = {"a": shared, "b": [shared, (shared,)], "c": [Point(1), Text("t")]}
    for unchecked in (0, scan._UNCHECKED):
        scan._scan(value)  # warm (caches)
        before = [sys.getrefcount(p) for p in probes]
        for _ in range(1000):
            scan._c_scan(value, unchecked, scan.MAX_OBJECTS)
            scan._c_scan(doubling(30), unchecked, scan.MAX_OBJECTS)
            scan._c_scan(nested(300), unchecked, scan.MAX_OBJECTS)
        assert [sys.getrefcount(p) for p in probes] == before


class Raising(type):
    def __hash__(cls) -> int:
        raise ZeroDivisionError("a metaclass's __hash__")


@needs_c
def test_an_exception_in_a_type_lookup_propagates_as_in_python():
    value = {"a": [1, Raising("R", (), {})()]}
    with pytest.raises(ZeroDivisionError):
        scan._scan_python(value)
    with pytest.raises(ZeroDivisionError):
        scan._scan(value)


class EqualToInt(type):
    """Classes whose metaclass says some of them equal int (the review's case): Python's
    set(map(type, level)) merges such a class with int, so the Python walk may call its
    instances native; looking it up in C would run this code. The C walk leaves them to it."""

    def __hash__(cls) -> int:
        return hash(int)

    def __eq__(cls, other: object) -> bool:
        return cls.fake if other is int else isinstance(other, EqualToInt)


@needs_c
def test_a_metaclass_with_its_own_hash_or_eq_is_left_to_the_python_walk():
    fake = EqualToInt("Fake", (), {"fake": True})
    real = EqualToInt("Real", (), {"fake": False})
    for value in ([real(), fake()], {"a": [1, fake()]}, fake(), [[Raising("R", (), {})()]]):
        assert scan._c_scan(value, scan._UNCHECKED, scan.MAX_OBJECTS) is None
    assert scan._scan([real(), fake()]) == scan._scan_python([real(), fake()])
    # An ordinary metaclass (abc.ABCMeta, enum's) is looked up in C.
    import abc
    import enum

    class Abstract(abc.ABC):
        pass

    assert scan._c_scan([Abstract(), enum.Enum("E", "a").a], 0, 100) == scan._CLEAN


@needs_c
@pytest.mark.parametrize("bound", [2**64, 2**63, -2**70, float("inf"), 10.5])
@pytest.mark.parametrize("name", ["_UNCHECKED", "MAX_OBJECTS"])
def test_bounds_beyond_c_integers_give_the_python_answer(monkeypatch, name, bound):
    monkeypatch.setattr(scan, name, bound)
    for value in ({"a": [1, 2]}, doubling(3), "x", [bytearray()]):
        both(value)


@needs_c
def test_configure_runs_once():
    with pytest.raises(RuntimeError, match="runs once"):
        scan._c.configure(frozenset(), frozenset(), frozenset(), frozenset(), frozenset(), 1, 1,
                          1, 1, (0, 1, 2, 3, 4, 5))
    both({"still": ["configured", 1]})




@needs_c
def test_the_encoded_bytes_do_not_depend_on_the_walk(monkeypatch):
    values_ = [CASES["many str"], {"m": [{"role": "user", "n": i} for i in range(500)]},
               CASES["2**16 shared"], {"t": (1, 2), "d": datetime.date(2020, 1, 2)}]
    with_c = [codec.encode(v) for v in values_]
    monkeypatch.setattr(codec, "_scan", scan._scan_python)
    assert [codec.encode(v) for v in values_] == with_c


def test_built_under_ci_and_from_this_source():
    check_c_extension(scan._c, os.path.join(os.path.dirname(scan.__file__), "_scan.c"))
