"""Whatever ``put`` accepts, ``get`` / ``list`` / ``read_log`` read back in a thread of any stack
size ``threading.stack_size()`` allows (issue #13, class 3).

Each stack size runs in a child process: a read that overflows the C stack kills its process
with SIGSEGV, which must fail the test, not end pytest. The values are written from the child's
main thread (8 MiB stack: encoding recurses on the C stack, and that is documented) and read in
a thread with the given stack; they are compared in the main thread, since comparing values
256 levels deep recurses on the C stack too. Over both engines (on a server the reader thread
runs psycopg and libpq too).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from test_bad_input import child_env

# 32 KiB is the least threading.stack_size() accepts (it raises ValueError below it).
STACK_SIZES = [32 * 1024, 64 * 1024, 128 * 1024, 256 * 1024, 1024 * 1024]

CHILD = textwrap.dedent("""
    import datetime, os, sys, threading, zoneinfo
    from sqlitesaver import Saver, _fastpack, codec

    _FAST = _fastpack.MAX_DEPTH

    def lists(depth, leaf):
        for _ in range(depth):
            leaf = [leaf]
        return leaf

    def tuples(depth, leaf):
        for _ in range(depth):
            leaf = (leaf,)
        return leaf

    when = datetime.datetime(2024, 2, 29, 13, 45, tzinfo=datetime.timezone.utc)
    mixed = 0  # 32 tuples, each around 7 lists: 32 tuples and 256 levels, both at the limit
    for i in range(32):
        mixed = (lists(7, mixed), when)
    dicts = "x" * 300  # past the size below which the fast path counts headers instead
    for _ in range(_FAST):
        dicts = {"k": dicts}
    paris = datetime.datetime(2024, 2, 29, 13, 45, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    VALUES = {
        "256 lists": lists(255, "leaf"),
        "256 dicts": {"k": lists(254, {"v": 1})},
        "32 tuples": tuples(32, 1),
        "32 frozensets": frozenset({tuples(30, frozenset({1}))}),
        "32 tuples as a dict key": {tuples(32, "k"): "v"},
        "32 sets and tuples around a datetime": {"s": {tuples(31, when)}},
        "mixed": mixed,
        # The deepest payloads decode() hands to ormsgpack, whose decoder recurses on the C
        # stack; and as deep with an extension at the bottom, which ormsgpack declines (no
        # Python hook runs inside it: session 21) for the msgpack path to build.
        "fast path: dicts": dicts,
        "fast path: lists": {"k": lists(_FAST - 2, ["z", "y" * 300])},
        "lists and a datetime": {"k": lists(_FAST - 2, [paris, "y" * 300])},
    }
    for name, value in VALUES.items():  # each on the path it is meant for
        taken = codec._fast_decode(codec.encode(value)) is not _fastpack.MISS
        assert taken == (name.startswith("fast path") and codec._FAST_DECODE), name

    path = sys.argv[1]
    size = int(sys.argv[2])
    writer_size = int(sys.argv[3]) if len(sys.argv) > 3 else 0  # 0: the main thread writes
    with Saver(path) as saver:
        ids = {}

        def writer():
            for name, value in VALUES.items():
                ref = saver.put(name, value, metadata=value if type(value) is dict else None)
                saver.put_writes(name, ref.checkpoint_id, "task", [("ch", value)])
                saver.append_log(name, value)
                ids[name] = ref.checkpoint_id

        if writer_size:
            threading.stack_size(writer_size)
            thread = threading.Thread(target=writer)
            thread.start()
            thread.join()
        else:
            writer()
        read = {}

        def reader():
            for name in VALUES:
                got = saver.get(name, ids[name])
                listed = list(saver.list(name))
                events = list(saver.read_log(name))
                read[name] = (got.state, got.pending_writes[0].value, listed[0].state,
                              events[0].event, got.metadata)

        threading.stack_size(size)
        thread = threading.Thread(target=reader)
        thread.start()
        thread.join()
    threading.stack_size(0)
    for name, value in VALUES.items():
        assert read[name] == (value,) * 4 + (value if type(value) is dict else {},), name
        assert type(read[name][0]) is type(value), name
    print("read", len(read), "values")
""")


@pytest.mark.parametrize("size", STACK_SIZES, ids=lambda s: f"{s // 1024}KiB")
def test_the_deepest_accepted_values_are_read_in_a_thread_of_any_stack_size(any_empty_target,
                                                                            size):
    result = subprocess.run([sys.executable, "-c", CHILD, any_empty_target, str(size)],
                            capture_output=True, text=True, env=child_env(), timeout=120)
    died = (f" (killed by {signal.Signals(-result.returncode).name})"
            if result.returncode < 0 else "")
    assert result.returncode == 0, (f"the reader with a {size // 1024} KiB stack failed"
                                    f"{died}:\n{result.stdout}{result.stderr[-3000:]}")
    assert "read 10 values" in result.stdout


def test_the_deepest_accepted_values_are_written_from_a_thread_with_256_KiB(any_empty_target):
    """Encoding recurses on the C stack (msgpack's packer): the README says how much it needs."""
    result = subprocess.run([sys.executable, "-c", CHILD, any_empty_target,
                             str(32 * 1024), str(256 * 1024)], capture_output=True, text=True,
                            env=child_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "read 10 values" in result.stdout


def test_threading_allows_no_smaller_stack_than_the_tested_one():
    import threading
    old = threading.stack_size()
    try:
        with pytest.raises(ValueError):
            threading.stack_size(STACK_SIZES[0] - 1)
    finally:
        threading.stack_size(old)
