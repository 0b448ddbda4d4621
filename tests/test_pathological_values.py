"""Values that would make encoding run away, and values too big for SQLite (issue #13, class 3).

A value that contains itself, or shares containers so that writing it out expands without
bound, is refused with a SerializationError at once: each such case runs in a child process
with an address-space limit and a hang detector, so that a regression ends that child (and
fails the test) instead of the machine's memory or pytest. A value that shares a container
without blowing up stays legal: it is written once per place and read back as copies.

A value over SQLite's size limit raises ValueTooLargeError (a UsageError) naming the limit and
the size, and writes nothing: tested with a lowered ``codec.MAX_BYTES`` (the core's check, on
both engines) and a lowered SQLITE_LIMIT_LENGTH on the Saver's write connection (SQLite only:
a limit of the SQLite connection), rather than with a real gigabyte. The codec tests open no
store.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import apsw
import pytest

from conftest import family_digest, store_digest
from sqlitesaver import (Saver, SerializationError, UsageError, ValueTooLargeError, codec)
from sqlitesaver.codec import decode, encode
from test_bad_input import child_env, small_db, snapshot

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
    elif case == "list in itself 100,000 times":  # one more level would be 10**10 items
        v = []; v.extend([v] * 100_000)
    elif case == "a list shared 100,000 times":
        shared = list(range(100_000)); v = [shared] * 100_000
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
    "list in itself 100,000 times": "state[0]: it contains itself",
    "a list shared 100,000 times": f"state: it holds more than {codec.MAX_OBJECTS:,} objects",
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


@pytest.fixture(params=["scanned twice", "looked for"])
def sharing(request, monkeypatch):
    """Both ways the scan meets a shared container: below scan._UNCHECKED objects it scans it
    at each place; past it, it finds the repeat and _inspect() decides (here from the first)."""
    if request.param == "looked for":
        monkeypatch.setattr(codec.scan, "_UNCHECKED", 0)
    return request.param


def test_a_shared_container_is_written_once_per_place(sharing):
    shared = [1, {"k": (2, 3)}]
    value = {"a": shared, "b": [shared, shared], "c": (shared,)}
    back = decode(encode(value))
    assert back == value
    assert back["a"] is not back["b"][0] and back["b"][0] is not back["b"][1]  # copies
    assert encode(back) == encode(value)  # the same bytes as a value without sharing


def test_sharing_that_stays_within_the_bound_is_legal(sharing):
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
def test_the_object_bound_is_the_same_with_and_without_sharing(monkeypatch, shape, sharing):
    # 1 outer list + 2 inner lists of k ints = 3 + 2k objects: with k = 499, 1001 objects.
    monkeypatch.setattr(codec.scan, "MAX_OBJECTS", 1001)

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
def test_dict_keys_count_unless_all_are_str(monkeypatch, shape, keys, sharing):
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
    monkeypatch.setattr(codec.scan, "MAX_OBJECTS", bound)
    assert decode(encode(value(k))) == value(k)
    with pytest.raises(SerializationError, match=f"more than {bound} objects"):
        encode(value(k + 1))


# --- too big for SQLite ---------------------------------------------------------------------------

def test_value_too_large_is_a_usage_and_value_error():
    assert issubclass(ValueTooLargeError, UsageError)
    assert issubclass(ValueTooLargeError, ValueError)
    assert not issubclass(ValueTooLargeError, SerializationError)
    assert codec.MAX_BYTES == 1_000_000_000 == apsw.Connection(":memory:").limit(
        apsw.SQLITE_LIMIT_LENGTH, -1)


def test_a_value_over_the_size_limit_is_refused_before_the_write(any_empty_target, monkeypatch):
    db_path = any_empty_target
    small_db(db_path)
    before = store_digest(db_path)
    monkeypatch.setattr(codec, "MAX_BYTES", 10_000)
    with Saver(db_path) as saver:
        content = snapshot(saver)
        calls = {
            "put state": (lambda: saver.put("t", b"x" * 10_000), "state", 10_003),
            "put metadata": (lambda: saver.put("t", 1, metadata={"m": "y" * 10_000}),
                             "metadata", 10_006),
            "put_writes": (lambda: saver.put_writes("t", saver.get("t").checkpoint_id, "task",
                                                    [("ch", 1), ("ch", b"x" * 20_000)]),
                           "writes[1] value", 20_003),
            "append_log": (lambda: saver.append_log("t", ["z" * 10_000]), "event", 10_004),
        }
        for name, (call, what, size) in calls.items():
            with pytest.raises(ValueTooLargeError) as info:
                call()
            message = str(info.value)
            assert f"cannot store {what}: it encodes to {size:,} bytes" in message, message
            assert "SQLite's limit of 10,000 bytes" in message and "nothing was written" in message
            assert "kept on PostgreSQL too" in message  # not only SQLite's, on a server
        assert snapshot(saver) == content
    assert store_digest(db_path) == before


@pytest.mark.parametrize("call", ["put", "put in a transaction", "put_writes", "append_log"])
def test_a_row_over_sqlites_limit_raises_value_too_large(db_path, call):
    small_db(db_path)
    before = family_digest(db_path)
    with Saver(db_path) as saver:
        content = snapshot(saver)
        latest = saver.get("t").checkpoint_id
        # SQLite's own limit, lowered on this Saver's write connection: its error is translated
        saver._writer.limit(apsw.SQLITE_LIMIT_LENGTH, 50_000)
        big = b"x" * 60_000
        with pytest.raises(ValueTooLargeError) as info:
            if call == "put":
                saver.put("t", big)
            elif call == "put in a transaction":
                with saver.transaction():
                    saver.append_log("t", "before the big one")
                    saver.put("t", {"big": big})
            elif call == "put_writes":
                saver.put_writes("t", latest, "task", [("a", 1), ("b", big)])
            else:
                saver.append_log("t", big)
        message = str(info.value)
        assert "larger than SQLite's limit of 50,000 bytes" in message, message
        assert "nothing was written" in message and repr(db_path) in message
        assert info.value.path == db_path and info.value.sqlite_result == apsw.SQLITE_TOOBIG
        assert isinstance(info.value.__cause__, apsw.TooBigError)
        assert snapshot(saver) == content
        saver.put("t", {"small": True})  # the Saver works on
    after = family_digest(db_path)
    assert after != before  # the small put; the content check above is the one that matters
