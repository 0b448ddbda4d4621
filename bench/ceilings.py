"""Two checks behind the ceilings bench/run.py prints (research/concurrency_benchmark.md).

    python bench/ceilings.py [--threads 8] [--seconds 3] [--rounds 3]

1. What encoding costs a group commit: bench/core.py's ``BareGroupCommit`` with the state
   pre-encoded, and with ``codec.encode(state)`` run by each caller before it queues (as
   Saver.put does), alternating round by round (ABBA), durable (``synchronous=FULL``).
2. What decoding the 4 KiB state costs per library: ``msgpack.unpackb`` (this project's
   dependency) and ``ormsgpack.unpackb`` (LangGraph's serializer, if installed), in µs.

Prints rates and ratios measured in this run; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import msgpack  # noqa: E402

import core  # noqa: E402
from _common import run_threads  # noqa: E402
from sqlitesaver import codec  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("$ python " + " ".join(sys.argv))
    state = core.make_state()
    data = codec.encode(state)
    directory = tempfile.mkdtemp(prefix="sqlitesaver-ceilings-")
    try:
        groups = {name: core.BareGroupCommit(core.open_bare(os.path.join(directory, name + ".db"),
                                                            "full", False))
                  for name in ("pre-encoded", "encode in caller")}

        def ops(name: str) -> list:
            put = groups[name].put
            if name == "pre-encoded":
                return [lambda t=f"t{i}": put(t, data) for i in range(args.threads)]
            return [lambda t=f"t{i}": put(t, codec.encode(state)) for i in range(args.threads)]

        rates: dict[str, list[float]] = {name: [] for name in groups}
        for r in range(args.rounds):
            for name in (list(groups) if r % 2 == 0 else list(groups)[::-1]):
                outcome = run_threads(ops(name), seconds=args.seconds)
                if outcome.errors:
                    raise SystemExit(f"{name}: errors {dict(outcome.errors)}")
                rates[name].append(outcome.ops / outcome.elapsed)
        print(f"BareGroupCommit, {args.threads} threads, durable, {len(data):,}-byte state, "
              f"{args.rounds} rounds of {args.seconds:g} s:")
        for name, group in groups.items():
            print(f"  {name}: {statistics.median(rates[name]):,.0f} puts/s (rounds "
                  + " ".join(f"{x:,.0f}" for x in rates[name])
                  + f"), {group.rows / group.commits:.1f} rows per COMMIT")
        ratios = [a / b for a, b in zip(rates["encode in caller"], rates["pre-encoded"])]
        print(f"  encode in caller / pre-encoded: {statistics.median(ratios):.2f} (rounds "
              + " ".join(f"{x:.2f}" for x in ratios) + ")")
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print(f"decoding the {len(data):,}-byte state (best of 5 x 20,000):")
    decoders = {"msgpack.unpackb": lambda: msgpack.unpackb(data),
                "codec.decode (exact types)": lambda: codec.decode(data)}
    try:
        import ormsgpack
        decoders["ormsgpack.unpackb"] = lambda: ormsgpack.unpackb(data)
    except ImportError:
        print("  ormsgpack: not installed")
    for name, decode in decoders.items():
        best = min(timeit.repeat(decode, number=20_000, repeat=5)) / 20_000
        print(f"  {name}: {best * 1e6:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
