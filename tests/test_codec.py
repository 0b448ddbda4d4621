"""sqlitesaver.codec: exact round trips, precise rejections, robust decoding, a frozen format.
Engine-free: no store is opened."""

from __future__ import annotations

import collections
import datetime as dt
import enum
import math
import pathlib
import sys
import uuid
import zoneinfo
from decimal import Decimal

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlitesaver import _fastpack, codec
from sqlitesaver.codec import decode, encode
from sqlitesaver.errors import SerializationError, UsageError

ZONE_KEYS = ["Europe/Paris", "America/New_York", "UTC", "Asia/Kolkata", "Australia/Lord_Howe"]
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


# --- exact comparison ---------------------------------------------------------------------------

def same_tz(a: dt.tzinfo | None, b: dt.tzinfo | None) -> bool:
    if a is None or b is None:
        return a is b
    if type(a) is not type(b):
        return False
    if type(a) is zoneinfo.ZoneInfo:
        return a is b  # ZoneInfo(key) is cached: the same key gives the same object
    return (a == b and a.utcoffset(None) == b.utcoffset(None)
            and a.tzname(None) == b.tzname(None))


def same(a: object, b: object) -> bool:
    """Equal, with identical types all the way down; nan equals nan, -0.0 differs from 0.0."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is float:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if kind is Decimal:
        return a.compare_total(b) == 0  # exact: sign, digits, exponent, NaN payloads; no signals
    if kind is list or kind is tuple:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if kind is dict:  # order too: msgpack keeps insertion order
        return len(a) == len(b) and all(same(ka, kb) and same(va, vb)
                                        for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    if kind is set or kind is frozenset:
        unmatched = list(b)
        for x in a:
            for i, y in enumerate(unmatched):
                if same(x, y):
                    del unmatched[i]
                    break
            else:
                return False
        return not unmatched and len(a) == len(b)
    if kind is dt.datetime or kind is dt.time:
        return (a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.fold == b.fold
                and same_tz(a.tzinfo, b.tzinfo))
    return a == b


def roundtrip(value: object) -> object:
    return decode(encode(value))


def _native(value: object, *, str_keys: bool = False) -> bool:
    """True if ``value`` holds only the types ormsgpack packs as msgpack does, ints within 64
    bits (and, with ``str_keys``, maps with str keys only: the only ones ormsgpack decodes)."""
    kind = type(value)
    if kind is list:
        return all(_native(item, str_keys=str_keys) for item in value)
    if kind is dict:
        return all((type(k) is str or not str_keys and _native(k)) and
                   _native(v, str_keys=str_keys) for k, v in value.items())
    if kind is int:
        return -(2**63) <= value < 2**64
    return kind in (type(None), bool, float, str, bytes)


def test_same_helper_can_tell_values_apart():
    assert same([1, (2.0, float("nan"))], [1, (2.0, float("nan"))])
    assert not same(1, True)
    assert not same((1,), [1])
    assert not same({1}, frozenset({1}))
    assert not same(b"x", bytearray(b"x"))
    assert not same(0.0, -0.0)
    assert not same(Decimal("1.0"), Decimal("1.00"))
    assert not same({"a": 1, "b": 2}, {"b": 2, "a": 1})
    fold0 = dt.datetime(2021, 11, 7, 1, 30, tzinfo=NEW_YORK)
    assert not same(fold0, fold0.replace(fold=1))
    assert not same(dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1), "X")),
                    dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))))


# --- hypothesis: every supported type, nested ---------------------------------------------------

offsets = st.timedeltas(min_value=dt.timedelta(hours=-24) + dt.timedelta(microseconds=1),
                        max_value=dt.timedelta(hours=24) - dt.timedelta(microseconds=1))
timezones = st.one_of(
    st.none(),
    st.just(dt.timezone.utc),
    offsets.map(dt.timezone),
    st.builds(dt.timezone, offsets, st.text(max_size=8)),
    st.sampled_from(ZONE_KEYS).map(zoneinfo.ZoneInfo),
)
folds = st.sampled_from([0, 1])
datetimes = st.builds(lambda d, tz, fold: d.replace(tzinfo=tz, fold=fold),
                      st.datetimes(), timezones, folds)
times = st.builds(lambda t, tz, fold: t.replace(tzinfo=tz, fold=fold),
                  st.times(), timezones, folds)
ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
)
hashable_decimals = st.decimals(allow_nan=True, allow_infinity=True).filter(
    lambda d: not d.is_snan())  # hash() of a signalling NaN raises
hashable_leaves = st.one_of(
    st.none(), st.booleans(), ints, st.floats(), st.text(), st.binary(),
    datetimes, st.dates(), times, st.timedeltas(), st.uuids(), hashable_decimals,
)
leaves = st.one_of(
    hashable_leaves,
    st.binary().map(bytearray),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal("sNaN"), Decimal("-sNaN123"), Decimal("-0")]),
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4).map(tuple),
                            st.frozensets(inner, max_size=4)),
    max_leaves=8,
)
values = st.recursive(
    leaves | hashables,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(hashables, inner, max_size=5),
        st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_roundtrip_preserves_values_and_types(value):
    assert same(roundtrip(value), value)


@given(hashables)
def test_roundtrip_as_dict_key_and_set_member(key):
    assert same(roundtrip({key: [key]}), {key: [key]})
    assert same(roundtrip({key}), {key})


# --- explicit examples --------------------------------------------------------------------------

EXAMPLES = [
    None, True, False, 0, -1, 1, 2**63 - 1, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1,
    2**200, -(2**200), 2**64 * 255, -(2**71),
    0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 5e-324,
    "", "héllo \u2603 \U0001F600", "\x00", b"", b"\x00\xff", bytearray(), bytearray(b"\x00\xff"),
    [], (), {}, set(), frozenset(), [[]], ((),), {"": {}},
    (1,), (1, "a", (2.5, (None,))), {1, "a", (1, 2)}, frozenset({frozenset({1}), 2}),
    [True, 1, 1.0, Decimal(1)], {True: "bool", 2: "int"}, {False, 2},  # no {1, True}: it collapses
    {(1, "a"): 1, b"k": 2, frozenset({3}): 3, 2**70: 4, None: 5, 1.5: 6, Decimal("1.1"): 7,
     uuid.UUID(int=1): 8, dt.date(2024, 1, 1): 9, -(2**70): 10, "": 11},
    Decimal("0"), Decimal("-0"), Decimal("NaN"), Decimal("-NaN"), Decimal("sNaN"),
    Decimal("NaN123"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("1.50"),
    Decimal("-1.23E+400"), Decimal("1E-999999"), Decimal("3.14159265358979323846264338327950288"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID(int=0), uuid.UUID(int=2**128 - 1),
    dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(2024, 2, 29),
    dt.timedelta(0), dt.timedelta(days=-1), dt.timedelta(microseconds=-1), dt.timedelta.max,
    dt.timedelta.min, dt.timedelta(days=3, seconds=7, microseconds=11),
    dt.datetime(2024, 2, 29, 13, 45, 30, 123456),
    dt.datetime.min, dt.datetime.max,
    dt.datetime(2021, 11, 7, 1, 30, fold=1),
    dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=NEW_YORK),
    dt.datetime(2021, 11, 7, 1, 30, fold=0, tzinfo=NEW_YORK),
    dt.datetime(2024, 3, 31, 2, 30, tzinfo=PARIS),  # in the spring-forward gap
    dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30))),
    dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(seconds=1, microseconds=5))),
    dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1), "X")),
    dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=23, minutes=59), "far")),
    dt.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC")),
    dt.time(0, 0), dt.time(23, 59, 59, 999999), dt.time(1, 30, fold=1),
    dt.time(12, 0, tzinfo=dt.timezone.utc), dt.time(12, 0, tzinfo=PARIS, fold=1),
    dt.time(12, 0, tzinfo=dt.timezone(-dt.timedelta(hours=3), "BRT")),
    {"messages": [{"role": "user", "at": dt.datetime(2024, 5, 1, tzinfo=PARIS),
                   "tags": {"a", ("b", frozenset({bytearray.__name__}))},
                   "raw": bytearray(b"\x01"), "id": uuid.UUID(int=7)}]},
]


# Ids by position: a repr holds addresses and set orders that differ between processes
# (pytest-xdist's workers must collect the same ids).
@pytest.mark.parametrize("value", EXAMPLES,
                         ids=[f"{i}-{type(v).__name__}" for i, v in enumerate(EXAMPLES)])
def test_roundtrip_examples(value):
    assert same(roundtrip(value), value)


def test_bool_stays_bool_everywhere():
    back = roundtrip([True, 1, {True: False}, (False,), {True}, frozenset({False, 2})])
    assert [type(x) for x in back] == [bool, int, dict, tuple, set, frozenset]
    assert type(next(iter(back[2]))) is bool and type(back[2][True]) is bool
    assert type(back[3][0]) is bool and type(next(iter(back[4]))) is bool
    assert {type(x) for x in back[5]} == {bool, int}
    assert encode(True) == b"\xc3" and encode(False) == b"\xc2"


def test_bytearray_survives_wherever_it_sits():
    # msgpack's C packer writes bytearray as plain bin unless encode() intervenes.
    ba = bytearray(b"raw")
    for value in [ba, [ba], {"k": ba}, (ba,), {"a": [(1, {"b": ba})]}, [b"raw", ba, b"raw"]]:
        assert same(roundtrip(value), value), value
    assert type(roundtrip(b"raw")) is bytes


def test_timezone_name_offset_and_identity():
    named = dt.timezone(dt.timedelta(hours=1), "X")
    back = roundtrip(dt.datetime(2024, 6, 1, 12, tzinfo=named))
    assert back.tzinfo == named and back.tzname() == "X"
    assert back.utcoffset() == dt.timedelta(hours=1)
    default_name = roundtrip(dt.datetime(2024, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))))
    assert default_name.tzname() == "UTC+01:00"
    assert roundtrip(dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)).tzinfo is dt.timezone.utc
    odd = dt.timezone(dt.timedelta(hours=-3, seconds=-7, microseconds=-11))
    assert roundtrip(dt.time(8, tzinfo=odd)).utcoffset() == odd.utcoffset(None)
    assert roundtrip(dt.datetime(2024, 6, 1, tzinfo=PARIS)).tzinfo is PARIS


def test_fold_survives_and_matters():
    first = dt.datetime(2021, 11, 7, 1, 30, tzinfo=NEW_YORK)
    second = first.replace(fold=1)
    back_first, back_second = roundtrip([first, second])
    assert (back_first.fold, back_second.fold) == (0, 1)
    assert back_first.utcoffset() == dt.timedelta(hours=-4)
    assert back_second.utcoffset() == dt.timedelta(hours=-5)
    assert roundtrip(dt.time(1, 30, fold=1)).fold == 1


def test_decimal_specials_keep_their_exact_form():
    for text in ["NaN", "-NaN", "sNaN", "-sNaN7", "NaN42", "Infinity", "-Infinity", "-0",
                 "0E-7", "1.50", "-1.23E+400", "1E+999999"]:
        back = roundtrip(Decimal(text))
        assert type(back) is Decimal and str(back) == str(Decimal(text)), text


def test_deep_but_allowed_nesting_roundtrips():
    deep_list: object = "leaf"
    for _ in range(256):
        deep_list = [deep_list]
    assert same(roundtrip(deep_list), deep_list)
    deep_tuple: object = frozenset({(1,)})  # 2 levels; with 30 tuples around it: the limit
    for _ in range(30):
        deep_tuple = (deep_tuple, [{"k": {2}}])
    assert same(roundtrip(deep_tuple), deep_tuple)


def test_accepts_bytes_like_payloads():
    data = encode({"a": (1, 2)})
    assert same(decode(memoryview(data)), {"a": (1, 2)})
    assert same(decode(bytearray(data)), {"a": (1, 2)})


# --- rejection ----------------------------------------------------------------------------------

class Color(enum.IntEnum):
    RED = 1


Point = collections.namedtuple("Point", "x y")


class MyStr(str):
    pass


class MyFloat(float):
    pass


class MyBytes(bytes):
    pass


class PytzLike(dt.tzinfo):
    """Shaped like a pytz zone: a tzinfo that is neither datetime.timezone nor ZoneInfo."""

    zone = "Europe/Paris"

    def utcoffset(self, when):
        return dt.timedelta(hours=1)

    def dst(self, when):
        return dt.timedelta(0)

    def tzname(self, when):
        return "CET"


class SubZone(zoneinfo.ZoneInfo):
    pass


def qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def _messages_with(bad):
    return {"messages": [{}, {}, {}, {"when": bad}]}


REJECTED = [
    # (value, type name in the message, path in the message)
    (object(), "object", "state"),
    ({"f": lambda: 0}, "function", "state['f']"),
    (_messages_with(collections.OrderedDict()), "collections.OrderedDict",
     "state['messages'][3]['when']"),
    ([collections.defaultdict(list)], "collections.defaultdict", "state[0]"),
    ({"color": Color.RED}, qualified(Color), "state['color']"),
    ({"p": Point(1, 2)}, qualified(Point), "state['p']"),
    ({"s": ["ok", MyStr("x")]}, qualified(MyStr), "state['s'][1]"),
    ([1.0, MyFloat(2.0)], qualified(MyFloat), "state[1]"),
    ((b"ok", MyBytes(b"x")), qualified(MyBytes), "state[1]"),
    ((1, memoryview(b"x")), "memoryview", "state[1]"),
    ({memoryview(b"k"): 1}, "memoryview", "state[<key 0>]"),
    ({"z": [1j]}, "complex", "state['z'][0]"),
    ({"when": dt.datetime(2024, 1, 1, tzinfo=PytzLike())}, qualified(PytzLike), "state['when']"),
    ([dt.time(1, tzinfo=PytzLike())], qualified(PytzLike), "state[0]"),
    ({"tags": {object()}}, "object", "state['tags'][<member 0>]"),
    ({"tags": frozenset({("a", Color.RED)})}, qualified(Color), "state['tags'][<member 0>][1]"),
    ({object(): 1}, "object", "state[<key 0>]"),
    ({"a": 1, (1, object()): 2}, "object", "state[<key 1>][1]"),
    ({"text": "ab\ud800"}, "str", "state['text']"),
    ({"ok": 1, "\udc80": 2}, "str", "state[<key 1>]"),
    ({"at": [dt.time(1, tzinfo=dt.timezone(dt.timedelta(0), "\ud800"))]}, "datetime.time",
     "state['at'][0]"),
    ({"e": msgpack.ExtType(3, b"\x90")}, "msgpack.ext.ExtType", "state['e']"),
    ([msgpack.Timestamp(0, 0)], "msgpack.ext.Timestamp", "state[0]"),
    ({"x": [bytearray(b"fine"), {1: type}]}, "type", "state['x'][1][1]"),
    ({"y": (1, [2, {"deep": NotImplemented}])}, "NotImplementedType", "state['y'][1][1]['deep']"),
]


@pytest.mark.parametrize("value,type_name,path", REJECTED,
                         ids=[f"{i}-{t}" for i, (_, t, _) in enumerate(REJECTED)])
def test_rejects_with_type_and_path(value, type_name, path):
    with pytest.raises(SerializationError) as caught:
        encode(value, name="state")
    message = str(caught.value)
    assert type_name in message
    assert f"cannot serialize {path}:" in message


def test_unsupported_tzinfo_message_says_what_to_use():
    with pytest.raises(SerializationError, match="datetime.timezone or zoneinfo.ZoneInfo"):
        encode(dt.datetime(2024, 1, 1, tzinfo=PytzLike()))
    with pytest.raises(SerializationError, match=qualified(SubZone)):
        encode(dt.datetime(2024, 1, 1, tzinfo=SubZone("UTC")))


def test_zoneinfo_without_key_is_rejected():
    tzif = next((pathlib.Path(root) / "UTC" for root in zoneinfo.TZPATH
                 if (pathlib.Path(root) / "UTC").is_file()), None)
    if tzif is None:
        pytest.skip("no system tz database to build a keyless ZoneInfo from")
    with tzif.open("rb") as f:
        keyless = zoneinfo.ZoneInfo.from_file(f)
    with pytest.raises(SerializationError, match="without a key") as caught:
        encode({"at": dt.datetime(2024, 1, 1, tzinfo=keyless)}, name="state")
    assert "cannot serialize state['at']:" in str(caught.value)


def test_serialization_error_is_a_usage_and_type_error():
    with pytest.raises(SerializationError) as caught:
        encode(object())
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, TypeError)
    assert "cannot serialize value:" in str(caught.value)  # the default name


def test_too_deep_and_self_containing_values_are_refused():
    deep: object = 0
    for _ in range(257):
        deep = [deep]
    with pytest.raises(SerializationError, match="more than 256 containers deep"):
        encode(deep)
    loop: list = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="contains itself"):
        encode({"a": loop}, name="state")
    tuples: object = 0
    for _ in range(33):
        tuples = (tuples,)
    with pytest.raises(SerializationError, match="more than 32 tuples/sets/frozensets"):
        encode(tuples)


def test_deep_lists_inside_many_tuples_are_refused_not_a_crash():
    # Unbounded, this shape overflows the C stack inside msgpack and kills the process.
    value: object = 0
    for _ in range(40):
        for _ in range(500):
            value = [value]
        value = (value,)
    with pytest.raises(SerializationError, match="containers deep"):
        encode(value)


POISONS = [object(), collections.OrderedDict(), Color.RED, 1j, memoryview(b"m"), "\ud800",
           MyFloat(1.0), dt.datetime(2024, 1, 1, tzinfo=PytzLike()), msgpack.ExtType(5, b""),
           MyStr("s"), dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(0), "\udfff"))]


def _hashable(obj: object) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


@st.composite
def poisoned(draw):
    """A valid value with exactly one unsupported object in it, and that object's path."""
    poison = draw(st.sampled_from(POISONS))
    value, path = poison, ""
    for _ in range(draw(st.integers(0, 5))):
        siblings = draw(st.lists(hashables, max_size=3))
        wrappers = ["list", "tuple", "dict value"]
        if _hashable(value):
            wrappers += ["dict key", "set member", "frozenset member"]
        wrapper = draw(st.sampled_from(wrappers))
        at = draw(st.integers(0, len(siblings)))
        if wrapper in ("list", "tuple"):
            items = siblings[:at] + [value] + siblings[at:]
            value = items if wrapper == "list" else tuple(items)
            path = f"[{at}]" + path
        elif wrapper == "dict value":
            key = draw(st.text(max_size=5))
            value = {draw(st.integers()): "before", key: value}
            path = f"[{key!r}]" + path
        elif wrapper == "dict key":  # a bytes key never equals (and so never swallows) the poison
            value = {draw(st.binary(max_size=5)): 0, value: 1}
            path = "[<key 1>]" + path
        else:
            kind = set if wrapper == "set member" else frozenset
            members = [m for m in siblings if not m == value]  # equal ones would swallow it
            container = kind(members + [value])
            index = next(i for i, m in enumerate(container) if m is value)
            value = container
            path = f"[<member {index}>]" + path
    return value, "state" + path, poison


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(poisoned())
def test_reported_path_is_where_the_poison_sits(case):
    value, path, poison = case
    with pytest.raises(SerializationError) as caught:
        encode(value, name="state")
    message = str(caught.value)
    assert f"cannot serialize {path}:" in message
    assert type(poison).__qualname__ in message


# --- decoding bad payloads ----------------------------------------------------------------------

def test_unknown_extension_code_is_refused():
    for code in (12, 99, 127, -5, -128):  # msgpack.ExtType refuses codes < 0: fixext1 by hand
        with pytest.raises(SerializationError, match=f"extension type {code}.*newer"):
            decode(b"\xd4" + code.to_bytes(1, "big", signed=True) + b"x")
    nested = msgpack.packb({"a": msgpack.ExtType(3, msgpack.packb([msgpack.ExtType(77, b"")]))})
    with pytest.raises(SerializationError, match="extension type 77"):
        decode(nested)


@pytest.mark.parametrize("stamp", [msgpack.Timestamp(1, 0),  # 32-bit form: d6 ff
                                   msgpack.Timestamp(1, 5),  # 64-bit form: d7 ff
                                   msgpack.Timestamp(2**40, 5)])  # 96-bit form: c7 0c ff
def test_msgpack_timestamp_is_refused(stamp):
    with pytest.raises(SerializationError, match="timestamp"):
        decode(msgpack.packb(stamp))
    hidden = msgpack.packb([1.5, msgpack.ExtType(3, msgpack.packb([{"t": stamp}]))])
    with pytest.raises(SerializationError, match="timestamp"):
        decode(hidden)
    after_many_ff = msgpack.packb([-1] * 20 + [stamp])  # -1 is the byte ff
    with pytest.raises(SerializationError, match="timestamp"):
        decode(after_many_ff)
    assert same(decode(msgpack.packb([-1] * 20)), [-1] * 20)


MALFORMED_BODIES = [
    msgpack.ExtType(1, b""),  # bigint without bytes
    msgpack.ExtType(3, b"\x01"),  # tuple body that is not an array
    msgpack.ExtType(3, b"\x92\x01"),  # truncated array
    msgpack.ExtType(3, b"\x91\x01\x02"),  # trailing bytes
    msgpack.ExtType(4, msgpack.packb([[1]])),  # unhashable set member
    msgpack.ExtType(6, msgpack.packb([2024, 1, 1])),  # datetime with too few fields
    msgpack.ExtType(6, msgpack.packb([2024, 13, 1, 0, 0, 0, 0, 0, None])),  # month 13
    msgpack.ExtType(6, msgpack.packb([2024, 1, 1, 0, 0, 0, 0, 0, "No/Such_Zone"])),
    msgpack.ExtType(6, msgpack.packb([2024, 1, 1, 0, 0, 0, 0, 0, 86400 * 10**6])),  # offset 24h
    msgpack.ExtType(6, msgpack.packb([2024, 1, 1, 0, 0, 0, 0, 0, 1.5])),
    msgpack.ExtType(6, b"\x91" + msgpack.packb(msgpack.ExtType(6, b"\x90"))),
    msgpack.ExtType(7, msgpack.packb([2024, 2, 30])),
    msgpack.ExtType(8, msgpack.packb([25, 0, 0, 0, 0, None])),
    msgpack.ExtType(9, msgpack.packb(["1", 0, 0])),
    msgpack.ExtType(10, b"\x00" * 15),
    msgpack.ExtType(11, b"not a number"),
    msgpack.ExtType(11, b"\xff"),
]


@pytest.mark.parametrize("ext", MALFORMED_BODIES, ids=lambda e: f"{e.code}:{e.data[:12]!r}")
def test_malformed_extension_body_is_refused(ext):
    with pytest.raises(SerializationError, match="cannot be decoded"):
        decode(msgpack.packb([ext]))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\x81\x91\x01\x02",
                                  b"\x81\x80\x01", b"\xa2\xff\xfe", b"\xdd\xff\xff\xff\xff"])
def test_garbage_is_refused(data):
    with pytest.raises(SerializationError, match="cannot be decoded"):
        decode(data)


def test_every_truncation_is_refused():
    data = encode({"messages": [{"at": dt.datetime(2024, 1, 1, tzinfo=PARIS), "n": 2**70,
                                 "tags": {("a", 1)}, "raw": bytearray(b"xyz")}], "step": 3})
    for end in range(len(data)):
        with pytest.raises(SerializationError):
            decode(data[:end])


def test_deeply_nested_payload_is_refused_not_a_crash():
    # Each nested body is a nested unpackb() with ~40 KB of C stack: unbounded, this segfaults.
    data = msgpack.packb(0)
    for _ in range(5000):
        data = msgpack.packb(msgpack.ExtType(3, b"\x91" + data))
    with pytest.raises(SerializationError, match="nested"):
        decode(data)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_serialization_error(data):
    try:
        value = decode(data)
    except SerializationError:
        return
    assert type(value) in {type(None), bool, int, float, str, bytes, bytearray, list, tuple, dict,
                           set, frozenset, dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID,
                           Decimal}


# --- the on-disk format -------------------------------------------------------------------------

GOLDEN = [
    (None, "c0"),
    (True, "c3"),
    (-1, "ff"),
    (2**64 - 1, "cf ffffffffffffffff"),
    (2**64, "c7 09 01 010000000000000000"),
    (-(2**63) - 1, "c7 09 01 ff7fffffffffffffff"),
    (1.5, "cb 3ff8000000000000"),
    ("é", "a2 c3a9"),
    (b"\x00", "c4 01 00"),
    (bytearray(b"z"), "d4 02 7a"),
    ([1, [2]], "92 01 91 02"),
    ((1, 2), "c7 03 03 92 01 02"),
    ({1}, "d5 04 91 01"),
    (frozenset({1}), "d5 05 91 01"),
    ({"a": (None,)}, "81 a1 61 d5 03 91 c0"),
    ({(1,): 2}, "81 d5 03 91 01 02"),
    (dt.datetime(2024, 2, 29, 13, 45, 30, 123456),
     "d8 06 99 cd07e8 02 1d 0d 2d 1e ce0001e240 00 c0"),
    (dt.datetime(2024, 2, 29, 13, 45, tzinfo=dt.timezone(dt.timedelta(hours=1), "CET")),
     "c7 15 06 99 cd07e8 02 1d 0d 2d 00 00 00 92 ced693a400 a3 434554"),
    (dt.datetime(2024, 2, 29, tzinfo=dt.timezone(dt.timedelta(hours=-1))),
     "c7 14 06 99 cd07e8 02 1d 00 00 00 00 00 d3 ffffffff296c5c00"),
    (dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=NEW_YORK),
     "c7 1c 06 99 cd07e5 0b 07 01 1e 00 00 01 b0 416d65726963612f4e65775f596f726b"),
    (dt.date(2024, 2, 29), "c7 06 07 93 cd07e8 02 1d"),
    (dt.time(23, 59, 59, 999999, tzinfo=dt.timezone.utc, fold=1),
     "c7 0b 08 96 17 3b 3b ce000f423f 01 00"),
    (dt.timedelta(days=-1, seconds=3600, microseconds=5), "c7 06 09 93 ff cd0e10 05"),
    (uuid.UUID("12345678-1234-5678-1234-567812345678"),
     "d8 0a 12345678123456781234567812345678"),
    (Decimal("-1.50E+3"), "d7 0b 2d312e3530452b33"),
    # Values ormsgpack packs (sqlitesaver/_fastpack.py): at the edges of msgpack's formats.
    (127, "7f"),
    (128, "cc 80"),
    (256, "cd 0100"),
    (65536, "ce 00010000"),
    (2**32, "cf 0000000100000000"),
    (2**63 - 1, "cf 7fffffffffffffff"),
    (-32, "e0"),
    (-33, "d0 df"),
    (-129, "d1 ff7f"),
    (-32769, "d2 ffff7fff"),
    (-(2**31) - 1, "d3 ffffffff7fffffff"),
    (-(2**63), "d3 8000000000000000"),
    (-0.0, "cb 8000000000000000"),
    (float("inf"), "cb 7ff0000000000000"),
    (float("nan"), "cb 7ff8000000000000"),
    (5e-324, "cb 0000000000000001"),
    ("", "a0"),
    ("a" * 31, "bf" + "61" * 31),
    ("a" * 32, "d9 20" + "61" * 32),
    (b"", "c4 00"),
    ([], "90"),
    ({}, "80"),
    ([None, True, 1.5, "x", b"y"], "95 c0 c3 cb3ff8000000000000 a178 c40179"),
    ({"b": 1, "a": {"c": []}}, "82 a162 01 a161 81 a163 90"),
    ({"n": [[[]], {}], "e": ""}, "82 a16e 92 91 90 80 a165 a0"),
    ({2: "i", -1.5: "f", None: "n", True: "t", b"k": "b", 2**64 - 1: "u"},
     "86 02 a169 cbbff8000000000000 a166 c0 a16e c3 a174 c4016b a162 cfffffffffffffffff a175"),
]


@pytest.mark.parametrize("value,expected", GOLDEN, ids=lambda v: repr(v)[:40])
@pytest.mark.parametrize("fast", [True, False], ids=["ormsgpack first", "msgpack only"])
def test_format_is_frozen(value, expected, fast, monkeypatch):
    # The bytes were written once by the msgpack path; both paths must keep writing and
    # reading them.
    monkeypatch.setattr(codec, "_FAST_ENCODE", fast and _fastpack.PACK_WORKS)
    monkeypatch.setattr(codec, "_FAST_DECODE", fast and _fastpack.DECODE_WORKS)
    data = bytes.fromhex(expected)
    assert encode(value) == data
    assert same(decode(data), value)


@pytest.mark.skipif(not _fastpack.DECODE_WORKS, reason="no ormsgpack of a tested version")
@pytest.mark.parametrize("value,expected", [(v, e) for v, e in GOLDEN if _native(v)],
                         ids=lambda v: repr(v)[:40])
def test_format_is_frozen_by_ormsgpack_itself(value, expected):
    # Not merely through encode() and decode(), which would pass with the fast paths off.
    data = bytes.fromhex(expected)
    assert _fastpack.pack(value) == data
    if _native(value, str_keys=True):
        assert same(codec._fast_decode(data), value)
    else:  # non-str keys: ormsgpack declines, the msgpack path reads them
        assert codec._fast_decode(data) is _fastpack.MISS


def test_the_codec_uses_ormsgpack_where_a_tested_version_is_installed():
    # pyproject.toml requires it from Python 3.11 on: there the fast paths must be on (a missing
    # or untested ormsgpack would silently cost their speed). On 3.10 the codec is msgpack's.
    try:
        from importlib.metadata import version
        installed = version("ormsgpack")
    except Exception:
        installed = None
    if sys.version_info >= (3, 11):
        assert installed is not None and _fastpack.PACK_WORKS and _fastpack.DECODE_WORKS
    assert codec._FAST_ENCODE == _fastpack.PACK_WORKS
    assert codec._FAST_DECODE == _fastpack.DECODE_WORKS
    assert same(roundtrip({"a": [1, (2, {3})], "b": 2**70}), {"a": [1, (2, {3})], "b": 2**70})


# --- the [str, bytes] pair read directly (issue #15: the LangGraph adapter's payloads) ----------

def _strict_unpack(data: bytes):
    """msgpack's own reading of ``data`` as one whole object, or the exception it raises."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # noqa: BLE001 - any refusal counts as a refusal
        return exc


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.binary(max_size=70_000))
def test_a_pair_reads_back_exactly_through_the_direct_path(type_name, blob):
    data = encode([type_name, blob])
    # Type names are short: the direct path reads fixstr and str 8 (up to 255 UTF-8 bytes) and
    # leaves longer ones to the general path.
    expected = [type_name, blob] if len(type_name.encode()) <= 255 else None
    assert codec._pair(data) == expected
    assert decode(data) == [type_name, blob] and type(decode(data)[1]) is bytes


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40), st.binary(max_size=300), st.data())
def test_the_direct_pair_path_agrees_with_msgpack_on_damaged_bytes(type_name, blob, data):
    # Flip, cut or extend the encoding anywhere: the direct path must either decline (None) or
    # return exactly what msgpack reads from those bytes; it never accepts what msgpack refuses.
    raw = bytearray(encode([type_name, blob]))
    how = data.draw(st.sampled_from(["flip", "cut", "extend"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    elif how == "cut":
        del raw[data.draw(st.integers(1, len(raw) - 1)):]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=3))
    damaged = bytes(raw)
    direct = codec._pair(damaged)
    if direct is not None:
        assert direct == _strict_unpack(damaged), damaged
    if isinstance(_strict_unpack(damaged), Exception):
        assert direct is None
        with pytest.raises(SerializationError):
            decode(damaged)


@pytest.mark.parametrize("data", [
    b"\x92\xa1a\xc4\x05ab",             # bin length past the end
    b"\x92\xa1a\xc4\x01ab",             # a trailing byte
    b"\x92\xa1\xff\xc4\x01a",           # a str that is not UTF-8
    b"\x92\xa1a",                       # no second item
    b"\x92\xa1a\xc5\x00",               # bin 16 with its length cut
])
def test_a_malformed_pair_is_refused_with_a_typed_error(data):
    assert codec._pair(data) is None
    with pytest.raises(SerializationError):
        decode(data)


def _general_encode(value):
    """encode() without the direct pair path."""
    codec._PAIRS = False
    try:
        return encode(value)
    finally:
        codec._PAIRS = True


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.binary(max_size=70_000))
def test_a_pair_is_written_as_the_general_path_writes_it(type_name, blob):
    expected = _general_encode([type_name, blob])
    assert expected == msgpack.packb([type_name, blob], use_bin_type=True)
    assert encode([type_name, blob]) == expected
    direct = codec._pair_bytes([type_name, blob])
    assert direct is None or direct == expected
    if len(type_name.encode()) <= 255:
        assert direct == expected  # the direct path was taken


class _Text(str):
    pass


@pytest.mark.parametrize("value", [
    ["a", bytearray(b"x")], [b"a", b"x"], ("a", b"x"), ["a", b"x", 1], ["\ud800", b"x"],
    [_Text("a"), b"x"], ["a", memoryview(b"x")], ["a" * 256, b"x"],
])
def test_what_is_not_exactly_a_pair_takes_the_general_path(value):
    if type(value) is list and len(value) == 2:
        assert codec._pair_bytes(value) is None
    try:
        expected = _general_encode(value)
    except SerializationError:
        with pytest.raises(SerializationError):
            encode(value)
    else:
        assert encode(value) == expected
        assert type(decode(encode(value))) is type(value)


def test_a_pair_past_max_bytes_is_refused_as_too_large(monkeypatch):
    monkeypatch.setattr(codec, "MAX_BYTES", 100)
    assert codec._pair_bytes(["t", bytes(96)]) is None  # 101 bytes
    with pytest.raises(codec.ValueTooLargeError):
        encode(["t", bytes(96)])
    assert len(encode(["t", bytes(95)])) == 100  # exactly MAX_BYTES: allowed, as before
    assert decode(encode(["t", bytes(95)])) == ["t", bytes(95)]
