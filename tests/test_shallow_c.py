"""The check before ormsgpack may decode a payload, in C (``_sqlitesaver_shallow``,
sqlitesaver/_shallow.c), against the Python check it replaces (``_fastpack._shallow_python``,
msgpack's own parser): the same answer for every payload, whole or damaged, at every depth and
size the Python check treats differently (counted, gauged, one pass past 64 KiB). And the same
module's read of a ``[type, bytes]`` pair (``pair``) against ``codec._pair_python``: the same
list or None for every payload, at every header and length boundary, truncated, followed,
damaged and random.

Where the extension is not built, these skip, saying so; under CI on a machine with a C
compiler it must have been built (``pip install .`` builds it).
"""

from __future__ import annotations

import datetime
import os
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import check_c_extension
from sqlitesaver import _fastpack, codec

BUILT = _fastpack._c is not None
needs_c = pytest.mark.skipif(not BUILT, reason="_sqlitesaver_shallow is not built here (no C "
                             "compiler when pip installed sqlitesaver, or a source checkout "
                             "without `python setup.py build_ext --inplace`): the codec runs "
                             "its Python check")
DEPTH = _fastpack.MAX_DEPTH




def same(data: bytes) -> bool:
    expected = _fastpack._shallow_python(data)
    assert _fastpack._shallow(data) == expected, f"C check disagrees on {data[:200].hex()}"
    return expected


def nest(depth: int, leaf: bytes, header: bytes = b"\x91") -> bytes:
    return header * depth + leaf


# Every header kind at least once, with lengths at each format boundary.
ATOMS = [b"\x00", b"\x7f", b"\xe0", b"\xff", b"\xc0", b"\xc2", b"\xc3", b"\xa0", b"\xa3abc",
         b"\xd9\x00", b"\xd9\x03abc", b"\xda\x00\x02ab", b"\xdb\x00\x00\x00\x01a",
         b"\xc4\x00", b"\xc4\x02ab", b"\xc5\x00\x01a", b"\xc6\x00\x00\x00\x02ab",
         b"\xc7\x00\x05", b"\xc7\x02\x05ab", b"\xc8\x00\x01\x05a",
         b"\xc9\x00\x00\x00\x00\x05", b"\xd4\x01a", b"\xd5\x01ab", b"\xd6\xffabcd",
         b"\xd7\xff" + bytes(8), b"\xd8\x01" + bytes(16), b"\xca" + bytes(4),
         b"\xcb" + bytes(8), b"\xcc\x01", b"\xcd\x00\x01", b"\xce" + bytes(4),
         b"\xcf" + bytes(8), b"\xd0\x80", b"\xd1" + bytes(2), b"\xd2" + bytes(4),
         b"\xd3" + bytes(8), b"\x90", b"\x80", b"\xdc\x00\x00", b"\xdd" + bytes(4),
         b"\xde\x00\x00", b"\xdf" + bytes(4), b"\x92\xc0\xc0", b"\x81\xa1a\x01",
         b"\xdc\x00\x01\xc0", b"\xdd\x00\x00\x00\x01\xc0", b"\xde\x00\x01\xc0\xc0",
         b"\xdf\x00\x00\x00\x01\xc0\xc0"]


@needs_c
@pytest.mark.parametrize("atom", ATOMS, ids=lambda b: b[:6].hex())
def test_every_header_whole_truncated_and_followed(atom):
    assert same(atom)
    for end in range(len(atom)):
        assert not same(atom[:end])
    for extra in (b"\x00", b"\xc1", atom):
        assert not same(atom + extra)
    assert same(b"\x92" + atom + atom) and same(b"\x81" + atom + atom)


@needs_c
def test_never_used_byte_and_empty_payload():
    for data in (b"", b"\xc1", b"\x91\xc1", b"\x81\xc1\x00", b"\x81\x00\xc1"):
        assert not same(data)


PADS = [b"\xc0", b"\xd9\xff" + b"a" * 255, b"\xc6" + (1 << 16).to_bytes(4, "big") + bytes(1 << 16)]


@needs_c
@pytest.mark.parametrize("pad", PADS, ids=["leaf", "past _COUNTED", "past _POOLED"])
@pytest.mark.parametrize("depth", [0, 1, DEPTH - 2, DEPTH - 1, DEPTH, DEPTH + 1, DEPTH + 5, 300])
def test_depth_at_and_around_the_bound(pad, depth):
    assert same(nest(depth, pad)) == (depth <= DEPTH)
    # an empty container innermost counts as a level, as msgpack's parser counts it
    if depth >= 1:
        assert same(nest(depth - 1, b"\x92\x90" + pad)) == (depth + 1 <= DEPTH)
        assert same(nest(depth - 1, b"\x92\x80" + pad, header=b"\x81\xc0")) == (
            depth + 1 <= DEPTH)


@needs_c
def test_an_ext_32_of_length_0xffffffff_ends_where_msgpacks_parser_ends_it():
    # msgpack adds its type byte in 32 bits: the length wraps to 0 (found in review)
    for data in (b"\xc9\xff\xff\xff\xff", b"\x91\xc9\xff\xff\xff\xff",
                 b"\x92\xc9\xff\xff\xff\xff\xc0"):
        assert same(data)
    assert not same(b"\xc9\xff\xff\xff\xff\x01")


@needs_c
def test_declared_lengths_beyond_the_payload():
    for data in (b"\xdd\xff\xff\xff\xff\xc0", b"\xdf\xff\xff\xff\xff\xc0\xc0",
                 b"\xdb\xff\xff\xff\xffabc", b"\xc6\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01",
                 nest(DEPTH, b"\xdd\x7f\xff\xff\xff")):
        assert not same(data)


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64 - 1),
              st.floats(), st.text(max_size=300), st.binary(max_size=300),
              st.datetimes(), st.tuples(st.integers())),
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.text(max_size=5), children, max_size=5)),
    max_leaves=40)


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.randoms(use_true_random=False))
def test_the_same_answer_on_encoded_values_and_their_damage(value, rng):
    data = codec.encode(value)
    assert same(data)
    damaged = [data[:rng.randrange(len(data))], data + data[:rng.randrange(1, 4)]]
    for _ in range(8):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] = rng.randrange(256)
        damaged.append(bytes(flipped))
    for item in damaged:
        same(item)


@needs_c
def test_the_same_answer_on_random_bytes():
    seed = 20261206
    rng = random.Random(seed)
    for i in range(20_000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(12)))
        # mostly short headers and containers: random bytes rarely make a whole object
        assert _fastpack._shallow(data) == _fastpack._shallow_python(data), (seed, i, data.hex())


@needs_c
def test_big_payloads_take_the_python_checks_one_pass_way_too():
    big = msgpack.packb({"blob": b"\xff" * 70_000, "list": list(range(1000)),
                         "when": str(datetime.date(2020, 1, 1))})
    assert len(big) > _fastpack._POOLED and same(big)
    assert not same(big[:-1]) and not same(big + b"\x00")


@needs_c
def test_not_bytes_goes_to_the_python_check():
    data = codec.encode({"a": [1, 2]})
    assert _fastpack._shallow(bytearray(data))  # (codec.decode gives it bytes, always)
    assert not _fastpack._shallow(bytearray(data + b"\x00"))


def same_pair(data: bytes):
    expected = codec._pair_python(data)
    got = _fastpack._c.pair(data)
    assert got == expected and type(got) is type(expected), f"C pair disagrees on {data[:80].hex()}"
    if got is not None:
        assert type(got[0]) is str and type(got[1]) is bytes
    return expected


def pair_bytes(name: bytes, blob: bytes, str_head: str, bin_head: str) -> bytes:
    """A pair with the given str header (fixstr or str 8, or another for the refusals) and bin
    header (bin 8/16/32, or another), not necessarily minimal: decoders accept those too."""
    heads = {"fixstr": bytes([0xA0 | len(name)]) if len(name) < 32 else None,
             "str8": b"\xd9" + bytes([len(name)]) if len(name) < 256 else None,
             "str16": b"\xda" + len(name).to_bytes(2, "big")}
    bins = {"bin8": b"\xc4" + bytes([len(blob)]) if len(blob) < 256 else None,
            "bin16": b"\xc5" + len(blob).to_bytes(2, "big") if len(blob) < 65536 else None,
            "bin32": b"\xc6" + len(blob).to_bytes(4, "big"),
            "str8": b"\xd9" + bytes([len(blob)]) if len(blob) < 256 else None}
    if heads[str_head] is None or bins[bin_head] is None:
        return b""
    return b"\x92" + heads[str_head] + name + bins[bin_head] + blob


# (not UTF-8: b"\xff", an encoded surrogate, a cut sequence)
NAMES = [b"", b"a", b"x" * 31, b"x" * 32, b"y" * 255, "\u00e9t\u00e9".encode(), b"\xff",
         b"\xed\xa0\x80", b"\xc3", "\U0001f600".encode()]
BLOBS = [b"", b"\x00", bytes(255), bytes(256), bytes(65535), bytes(65536)]


@needs_c
@pytest.mark.parametrize("str_head", ["fixstr", "str8", "str16"])
@pytest.mark.parametrize("bin_head", ["bin8", "bin16", "bin32", "str8"])
def test_pair_at_every_header_and_length_boundary_whole_truncated_and_followed(str_head,
                                                                                 bin_head):
    accepted = 0
    for name in NAMES:
        for blob in BLOBS:
            data = pair_bytes(name, blob, str_head, bin_head)
            if not data:
                continue
            accepted += same_pair(data) is not None
            for end in sorted({*range(min(len(data), 12)), len(data) - 1, len(data) - 2}):
                assert same_pair(data[:end]) is None
            for extra in (b"\x00", b"\xc1", data):
                assert same_pair(data + extra) is None
            assert same_pair(b"\x93" + data[1:]) is None
    # the accepted shapes are accepted (by both), the others are not (by both)
    assert (accepted > 0) == (str_head != "str16" and bin_head != "str8"), accepted


@needs_c
def test_pair_declared_lengths_beyond_and_short_of_the_payload():
    for data in (b"\x92\xa1a\xc6\xff\xff\xff\xff", b"\x92\xa1a\xc6\x00\x00\x00",
                 b"\x92\xa1a\xc5\x00", b"\x92\xa1a\xc5\x00\x02a", b"\x92\xd9\xff" + b"a" * 10,
                 b"\x92\xbfa\xc4\x00", b"\x92\xa1a\xc4\x00", b"\x92\xa0\xc4\x00",
                 b"\x92\xa0\xc4\x01", b"\x92\xa0\xc4\x00\x00"):
        same_pair(data)


@needs_c
def test_pair_on_random_bytes_behind_its_header():
    seed = 20261206
    rng = random.Random(seed)
    for i in range(20_000):
        head = rng.choice([b"\x92", b"\x92\xa1", b"\x92\xd9", b"\x92\xa2ab", b""])
        data = head + bytes(rng.randrange(256) for _ in range(rng.randrange(10)))
        if rng.random() < 0.5 and len(data) > 3:  # bin headers where they are looked for
            at = rng.randrange(2, len(data))
            data = data[:at] + rng.choice([b"\xc4", b"\xc5", b"\xc6"]) + data[at + 1:]
        try:
            same_pair(data)
        except AssertionError:
            raise AssertionError(f"seed {seed}, case {i}: {data.hex()}") from None


@needs_c
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40), st.binary(max_size=300), st.randoms(use_true_random=False))
def test_pair_on_encoded_pairs_and_their_damage(name, blob, rng):
    data = codec.encode([name, blob])
    same_pair(data)
    for _ in range(8):
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] = rng.randrange(256)
        same_pair(bytes(flipped))


@needs_c
def test_pair_refuses_what_is_not_bytes_and_decode_gives_it_bytes():
    with pytest.raises(TypeError):
        _fastpack._c.pair(bytearray(b"\x92\xa1a\xc4\x00"))
    assert codec._pair is _fastpack._c.pair
    assert codec.decode(bytearray(b"\x92\xa1a\xc4\x01z")) == ["a", b"z"]


def test_built_under_ci_and_from_this_source():
    check_c_extension(_fastpack._c, os.path.join(os.path.dirname(_fastpack.__file__), "_shallow.c"))
