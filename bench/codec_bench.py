"""Codec speed: ``codec.encode`` / ``codec.decode`` against bare msgpack and ormsgpack.

    python bench/codec_bench.py [--rounds 7] [--seconds 0.2]

For bench/core.py's 4 KiB state and bench/run.py's 1 MiB one (``grow_state``), prints µs per call
of ``codec.encode`` and ``codec.decode``, of ``msgpack.packb`` / ``msgpack.unpackb`` and
``ormsgpack.packb`` / ``ormsgpack.unpackb`` on the same state and bytes, and the codec's ratio to
each. If the codec has its ormsgpack fast paths (issue #15), it is also timed with them switched
off ("codec, msgpack only"): the codec as it was before them, measured in the same run.

Machines here are shared and noisy: every figure is the median of ``--rounds`` rounds, and in each
round the contenders run one after another (in reverse order every other round), so that a
slow spell hits them alike. Nothing is compared with a stored number; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import msgpack  # noqa: E402

try:
    import ormsgpack
except ImportError:  # Python 3.10: sqlitesaver does not use it there (see sqlitesaver/_fastpack.py)
    ormsgpack = None

import core  # noqa: E402  (bench/core.py: the 4 KiB state)
from run import grow_state  # noqa: E402  (bench/run.py: the 1 MiB state)
from sqlitesaver import codec  # noqa: E402

# The codec's switches for its ormsgpack paths and its direct [str, bytes] paths, when it has
# them.
SWITCHES = [name for name in ("_FAST_ENCODE", "_FAST_DECODE", "_PAIRS") if hasattr(codec, name)]


def msgpack_only(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with the codec's ormsgpack paths switched off while it runs."""
    def run() -> object:
        saved = {name: getattr(codec, name) for name in SWITCHES}
        for name in SWITCHES:
            setattr(codec, name, False)
        try:
            return call()
        finally:
            for name, value in saved.items():
                setattr(codec, name, value)
    return run


def per_call(call: Callable[[], object], seconds: float) -> float:
    """µs per call, from a loop of about ``seconds``."""
    number = 1
    while True:
        started = time.perf_counter()
        for _ in range(number):
            call()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds / 4:
            break
        number *= 4
    number = max(1, int(number * seconds / elapsed))
    started = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - started) / number * 1e6


def loop_of(call: Callable[[], object], repeat: int) -> Callable[[], object]:
    """``call`` ``repeat`` times (so that the switches of msgpack_only cost nothing measurable)."""
    def run() -> object:
        for _ in range(repeat):
            call()
    return run


def measure(contenders: dict[str, Callable[[], object]], rounds: int,
            seconds: float) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(per_call(contenders[name], seconds))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.2, help="per figure and round")
    args = parser.parse_args()
    print("$ python " + " ".join(sys.argv))
    print(f"Python {platform.python_version()}, msgpack {msgpack.version}, ormsgpack "
          f"{getattr(ormsgpack, '__version__', 'not installed')}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    states = {"4 KiB": core.make_state(), "1 MiB": grow_state(1 << 20)}
    for label, state in states.items():
        data = codec.encode(state)
        same = msgpack.packb(state) == data and (ormsgpack is None
                                                  or ormsgpack.packb(state) == data)
        print(f"\n{label} state: {len(data):,} bytes; msgpack and ormsgpack write the same "
              f"bytes as codec.encode: {'yes' if same else 'NO'}")
        repeat = 1 if len(data) > 1 << 16 else 64
        for what, contenders in (
                ("encode", {"codec": lambda: codec.encode(state),
                            "codec, msgpack only": lambda: codec.encode(state),
                            "msgpack.packb": lambda: msgpack.packb(state),
                            "ormsgpack.packb": lambda: ormsgpack.packb(state)}),
                ("decode", {"codec": lambda: codec.decode(data),
                            "codec, msgpack only": lambda: codec.decode(data),
                            "msgpack.unpackb": lambda: msgpack.unpackb(data),
                            "ormsgpack.unpackb": lambda: ormsgpack.unpackb(data)})):
            if not SWITCHES:
                del contenders["codec, msgpack only"]
            if ormsgpack is None:
                contenders = {k: v for k, v in contenders.items() if "ormsgpack" not in k}
            timed = {name: msgpack_only(loop_of(call, repeat)) if name == "codec, msgpack only"
                     else loop_of(call, repeat) for name, call in contenders.items()}
            us = {name: value / repeat for name, value in
                  measure(timed, args.rounds, args.seconds).items()}
            bare = [name for name in us if "." in name]
            print(f"  {what:<20} {'µs':>9}  " + "  ".join(f"{'/ ' + b:>18}" for b in bare))
            for name, value in us.items():
                ratios = "  ".join(f"{value / us[b]:18.2f}" for b in bare)
                print(f"  {name:<20} {value:9.2f}  {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
