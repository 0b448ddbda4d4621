"""Review 21 (an adversarial review of session 21's read changes), its reproducers:

* a Ctrl-C delivered while ormsgpack decoded a payload holding an extension was lost: it
  landed at the entry of the Python ``ext_hook``, and ormsgpack turned it into a ValueError
  (the fast path then declined and the msgpack path decoded the payload). Fixed: ormsgpack's
  hook is C code, and a payload with an extension is declined (sqlitesaver/_fastpack.py);
* the LangGraph adapter's ``get_tuple`` read through ``Saver._get`` and skipped a Saver
  subclass's own ``get``. Fixed: it uses that ``get`` when a subclass overrides it;
* and a differential fuzz of small adversarial payloads (held)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import threading
import time

import pytest

from sqlitesaver import _fastpack, codec
from sqlitesaver.sqlite.saver import SqliteFileSaver

pytestmark = pytest.mark.skipif(not _fastpack.DECODE_WORKS,
                                reason="no ormsgpack of a tested version")

WITH_EXTENSION = {"at": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), "n": 1}


def _interrupt_at(n: int, data: bytes) -> tuple[str, int, str]:
    """Decode ``data`` raising KeyboardInterrupt at the ``n``-th line event in sqlitesaver's
    own code (as a SIGINT handler would at that instant). ("raised" | "returned", events)."""
    root = os.path.dirname(_fastpack.__file__)
    seen = [0]
    where = [""]

    def local(frame, event, arg):
        if event == "line" and frame.f_code.co_filename.startswith(root):
            seen[0] += 1
            if seen[0] == n:
                where[0] = f"{frame.f_code.co_name}:{frame.f_lineno}"
                raise KeyboardInterrupt(where[0])
        return local

    sys.settrace(lambda frame, event, arg: local)
    try:
        codec.decode(data)
        verdict = "returned"
    except KeyboardInterrupt:
        verdict = "raised"
    finally:
        sys.settrace(None)
    return verdict, seen[0], where[0]


def test_a_ctrl_c_at_any_instant_of_a_fast_decode_is_not_swallowed():
    # Failed before the fix: a KeyboardInterrupt raised in _fastpack.unpacker's Python
    # ext_hook before its `try` (at the hook's entry, where a SIGINT that arrived while
    # ormsgpack parsed is delivered) was turned by ormsgpack into ValueError('ext_hook
    # failed'): decode() returned MISS, the msgpack path decoded the payload, and the Ctrl-C
    # was gone.
    data = codec.encode(WITH_EXTENSION)
    lost = []
    n = 1
    while True:
        verdict, events, where = _interrupt_at(n, data)
        if events < n:
            break
        if verdict != "raised":
            lost.append(where)
        n += 1
    assert not lost, f"KeyboardInterrupt swallowed at {lost} ({n - 1} line events)"


def test_a_real_sigint_during_a_fast_decode_is_not_lost(python_sigint_handler):
    # Failed before the fix: the same with a real SIGINT. ~75% of signals that arrived while
    # a ~1 ms decode of a payload holding one extension ran were never raised.
    value = {"items": [f"word {i}" for i in range(20_000)], **WITH_EXTENSION}
    data = codec.encode(value)
    lost = 0
    for trial in range(20):
        go = threading.Event()

        def kill(delay=0.0002 * (trial % 5)) -> None:
            go.wait()
            time.sleep(0.001 + delay)
            os.kill(os.getpid(), signal.SIGINT)

        thread = threading.Thread(target=kill)
        thread.start()
        try:
            go.set()
            end = time.monotonic() + 0.2
            while time.monotonic() < end:
                codec.decode(data)
            lost += 1
        except KeyboardInterrupt:
            pass
        thread.join()
    assert lost == 0, f"{lost} of 20 SIGINTs never raised KeyboardInterrupt"


class Guarded(SqliteFileSaver):
    """A Saver subclass that decides who reads what (a hook a deployment may add)."""

    def get(self, thread_id, checkpoint_id=None, *, namespace=""):
        if thread_id.startswith("secret"):
            raise PermissionError(thread_id)
        return super().get(thread_id, checkpoint_id, namespace=namespace)


def test_get_tuple_goes_through_a_saver_subclass_get_as_list_with_an_id_does(tmp_path):
    # Failed at f7cb0bb: get_tuple called Saver._get, so an overriding get() was skipped,
    # while list(config with a checkpoint_id) (_list_one) still calls saver.get(): the two
    # reads of one checkpoint disagreed for a subclass.
    from langgraph.checkpoint.base import empty_checkpoint

    from sqlitesaver.langgraph import SqliteSaver
    with Guarded(str(tmp_path / "g.db")) as saver:
        checkpointer = SqliteSaver(saver)
        config = {"configurable": {"thread_id": "secret-1", "checkpoint_ns": ""}}
        stored = checkpointer.put(config, empty_checkpoint(), {"source": "loop", "step": 0}, {})
        with pytest.raises(PermissionError):
            list(checkpointer.list(stored))
        with pytest.raises(PermissionError):
            checkpointer.get_tuple(config)


def _forms(n: int, fix: int | None, fix_max: int, wide: list[tuple[int, int]]) -> list[bytes]:
    forms = [bytes([fix | n])] if fix is not None and n <= fix_max else []
    return forms + [bytes([head]) + n.to_bytes(size, "big") for head, size in wide
                    if n < 256 ** size]


def _payloads():
    import struct
    import uuid
    from decimal import Decimal

    from hypothesis import strategies as st

    @st.composite
    def an_int(draw):
        n = draw(st.integers(-(2**63), 2**64 - 1))
        forms = [bytes([n & 0xFF])] if -32 <= n < 128 else []
        for head, size, signed in [(0xCC, 1, 0), (0xCD, 2, 0), (0xCE, 4, 0), (0xCF, 8, 0),
                                   (0xD0, 1, 1), (0xD1, 2, 1), (0xD2, 4, 1), (0xD3, 8, 1)]:
            try:
                forms.append(bytes([head]) + n.to_bytes(size, "big", signed=bool(signed)))
            except OverflowError:
                pass
        return draw(st.sampled_from(forms))

    @st.composite
    def a_float(draw):
        raw = draw(st.binary(min_size=8, max_size=8))
        f = draw(st.floats())
        return draw(st.sampled_from([b"\xcb" + raw, b"\xca" + raw[:4],
                                     b"\xcb" + struct.pack(">d", f)]))

    @st.composite
    def a_str(draw):
        raw = draw(st.one_of(st.text(max_size=5).map(str.encode), st.binary(max_size=5),
                             st.sampled_from([b"\x91\x91", b"\xed\xa0\x80", b"\xdd\xff"])))
        return draw(st.sampled_from(_forms(len(raw), 0xA0, 31, [(0xD9, 1), (0xDA, 2),
                                                                 (0xDB, 4)]))) + raw

    @st.composite
    def a_bin(draw):
        raw = draw(st.binary(max_size=5))
        return draw(st.sampled_from(_forms(len(raw), None, 0, [(0xC4, 1), (0xC5, 2),
                                                                (0xC6, 4)]))) + raw

    bodies = {}
    for v in [2**70, bytearray(b"ab"), dt.datetime(2024, 1, 2, 3, tzinfo=dt.timezone.utc),
              dt.date(2024, 1, 1), dt.time(1, 2), dt.timedelta(1, 2, 3), uuid.UUID(int=5),
              Decimal("1.5"), (1, 2), {1}, frozenset()]:
        import msgpack
        code, body = msgpack.unpackb(codec.encode(v), ext_hook=lambda c, b: (c, b))
        bodies.setdefault(code, []).append(body)

    @st.composite
    def an_ext(draw):
        code = draw(st.sampled_from([*range(-2, 13), 99]))
        body = draw(st.one_of(st.sampled_from(bodies.get(code, [b""])), st.binary(max_size=9)))
        fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
        forms = [bytes([fixed[len(body)]])] if len(body) in fixed else []
        forms += [bytes([h]) + len(body).to_bytes(s, "big") for h, s in [(0xC7, 1), (0xC8, 2)]]
        return draw(st.sampled_from(forms)) + bytes([code & 0xFF]) + body

    leaf = st.one_of(st.sampled_from([b"\xc0", b"\xc2", b"\xc3", b"\xc1"]), an_int(), a_float(),
                     a_str(), a_bin(), an_ext())

    def containers(children):
        @st.composite
        def array(draw):
            items = draw(st.lists(children, max_size=4))
            n = max(0, len(items) + draw(st.sampled_from([0, 0, 0, 1, -1])))
            return draw(st.sampled_from(_forms(n, 0x90, 15, [(0xDC, 2), (0xDD, 4)]))) + \
                b"".join(items)

        @st.composite
        def a_map(draw):
            keys = draw(st.lists(st.one_of(a_str(), children), max_size=4))
            items = draw(st.lists(children, min_size=len(keys), max_size=len(keys)))
            n = max(0, len(keys) + draw(st.sampled_from([0, 0, 0, 1, -1])))
            return draw(st.sampled_from(_forms(n, 0x80, 15, [(0xDE, 2), (0xDF, 4)]))) + \
                b"".join(k + v for k, v in zip(keys, items))

        return st.one_of(array(), a_map())

    one = st.recursive(leaf, containers, max_leaves=16)

    @st.composite
    def payload(draw):
        data = draw(one)
        how = draw(st.sampled_from(["whole"] * 4 + ["trailing", "truncated", "twice"]))
        if how == "trailing":
            data += draw(st.one_of(one, st.binary(min_size=1, max_size=3)))
        elif how == "truncated" and data:
            data = data[:draw(st.integers(0, len(data) - 1))]
        elif how == "twice":
            data += data
        return data

    return payload()


def test_small_adversarial_payloads_decode_or_fail_as_with_msgpack_alone():
    from hypothesis import HealthCheck, given, settings
    from test_fastpack import check_decode

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_payloads())
    def check(data):
        _, taken = check_decode(data)
        if taken:
            assert _fastpack._shallow(data), data.hex()

    check()
