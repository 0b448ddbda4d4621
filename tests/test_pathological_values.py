"""Values that would make encoding run away (issue #13, class 3).

A value that contains itself, or shares containers so that writing it out expands without
bound, is refused with a SerializationError at once: each such case runs in a child process
with an address-space limit and a hang detector, so that a regression ends that child (and
fails the test) instead of the machine's memory or pytest. A value that shares a container
without blowing up stays legal: it is written once per place and read back as copies.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from sqlitesaver import SerializationError, codec
from sqlitesaver.codec import decode, encode
from test_bad_input import child_env

# --- runaway values ------------------------------------------------------------------------------

_RUNAWAY = textwrap.dedent("""
    import faulthandler, resource, sys, time
    faulthandler.dump_traceback_later(60, exit=True)   # a hang ends the child, not pytest
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # and so does runaway memory
    from sqlitesaver.codec import encode
    from sqlitesaver.errors import SerializationError

    case = sys.argv[1]
    if case == "list in itself twice":
        v = []; v.append(v); v.append(v)
    elif case == "dict in itself twice":
        v = {}; v["a"] = v; v["b"] = v
    elif case == "list in itself 1000 times":
        v = []; v.extend([v] * 1000)
    elif case == "cycle through a tuple":
        v = []; t = (v, v); v.append(t)
    elif case == "cycle deep inside":
        inner = []; inner.append(inner); inner.append(inner)
        v = {"state": [{"messages": [inner]}]}
    elif case == "2**60 shared lists":
        v = [1]
        for _ in range(60):
            v = [v, v]
    elif case == "2**60 shared dicts":
        v = {}
        for _ in range(60):
            v = {"a": v, "b": v}
    elif case == "a big list shared 2**40 times":
        v = list(range(100_000))
        for _ in range(40):
            v = [v, v]
    started = time.perf_counter()
    try:
        encode(v, name="state")
    except SerializationError as exc:
        print(f"{time.perf_counter() - started:.3f}", exc)
    else:
        print("accepted")
""")

RUNAWAY = {
    "list in itself twice": "state[0]: it contains itself (it is the same list as state,",
    "dict in itself twice": "state['a']: it contains itself (it is the same dict as state,",
    "list in itself 1000 times": "state[0]: it contains itself",
    "cycle through a tuple": "state[0][0]: it contains itself (it is the same list as state,",
    "cycle deep inside": "state['state'][0]['messages'][0][0]: it contains itself",
    "2**60 shared lists": f"state: it holds more than {codec.MAX_OBJECTS:,} objects",
    "2**60 shared dicts": f"state: it holds more than {codec.MAX_OBJECTS:,} objects",
    "a big list shared 2**40 times": f"state: it holds more than {codec.MAX_OBJECTS:,} objects",
}


@pytest.mark.parametrize("case", list(RUNAWAY))
def test_a_value_that_runs_away_is_refused_at_once(case):
    done = subprocess.run([sys.executable, "-c", _RUNAWAY, case], capture_output=True,
                          text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, f"{case}: the child failed:\n{done.stdout}{done.stderr[-2000:]}"
    seconds, _, message = done.stdout.strip().partition(" ")
    assert seconds != "accepted", case
    assert f"cannot serialize {RUNAWAY[case]}" in message, message
    # "at once": the work is linear in the objects the value holds (a few thousand here)
    assert float(seconds) < 1.0, f"{case}: refused only after {seconds} s"


def test_a_shared_container_is_written_once_per_place():
    shared = [1, {"k": (2, 3)}]
    value = {"a": shared, "b": [shared, shared], "c": (shared,)}
    back = decode(encode(value))
    assert back == value
    assert back["a"] is not back["b"][0] and back["b"][0] is not back["b"][1]  # copies
    assert encode(back) == encode(value)  # the same bytes as a value without sharing


def test_sharing_that_stays_within_the_bound_is_legal():
    value: object = [1]
    for _ in range(16):  # 2**16 leaves written out from 17 lists
        value = [value, value]
    data = encode(value)
    assert len(data) == 2**16 * 2 - 1 + 2**16  # 2**16 - 1 pairs, 2**16 one-item lists, leaves
    leaf = decode(data)
    for _ in range(16):
        assert len(leaf) == 2
        leaf = leaf[1]
    assert leaf == [1]


@pytest.mark.parametrize("shape", ["tree", "shared"])
def test_the_object_bound_is_the_same_with_and_without_sharing(monkeypatch, shape):
    # 1 outer list + 2 inner lists of k ints = 3 + 2k objects: with k = 499, 1001 objects.
    monkeypatch.setattr(codec, "MAX_OBJECTS", 1001)

    def value(k: int) -> list:
        if shape == "tree":
            return [[0] * k, [0] * k]
        inner = [0] * k
        return [inner, inner]

    assert decode(encode(value(499))) == value(499)
    with pytest.raises(SerializationError, match="it holds more than 1,001 objects"):
        encode(value(500), name="state")


@pytest.mark.parametrize("shape", ["tree", "shared"])
@pytest.mark.parametrize("keys", ["str", "int"])
def test_dict_keys_count_unless_all_are_str(monkeypatch, shape, keys):
    # gc.get_referents() leaves out the keys of a dict whose keys are all str, so the scan does
    # not count them; the walk that follows shared containers counts the same way.
    def value(k: int) -> dict:
        make = (lambda: {str(i): i for i in range(k)}) if keys == "str" else \
            (lambda: {i: i for i in range(k)})
        first = make()
        second = make() if shape == "tree" else first
        return {"a": first, "b": second} if keys == "str" else {0: first, 1: second}

    # str keys: 1 + 2 values + 2k values = 3 + 2k; int keys: 1 + 4 + 2 * 2k = 5 + 4k
    k, bound = (4, 11) if keys == "str" else (2, 13)
    monkeypatch.setattr(codec, "MAX_OBJECTS", bound)
    assert decode(encode(value(k))) == value(k)
    with pytest.raises(SerializationError, match=f"more than {bound} objects"):
        encode(value(k + 1))
