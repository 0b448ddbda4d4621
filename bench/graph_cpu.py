"""Where a graph run's time goes: CPU per invoke of each checkpointer, many graphs at once.

    python bench/graph_cpu.py [--threads 8] [--invokes 40] [--rounds 3] [--dir DIR]

Needs ``pip install '.[bench]'``. bench/run.py's graph-steps rows say how fast; this says why.
On two cores, graphs invoked from many threads in one process are bound by the GIL, so their
rate is close to 1 / (the process's CPU per invoke): every microsecond a checkpointer spends
per invoke is a microsecond no graph runs. For each checkpointer kind of
bench/_graph_worker.py (sqlitesaver's adapter, LangGraph's SqliteSaver, the bare durable
checkpointer of bench/_bare_checkpointer.py, LangGraph's InMemorySaver) and each durability
("sync", "async"), a fresh process invokes the 4-node graph ``--invokes`` times from each of
``--threads`` threads on one checkpointer, and reports steps/s and the process's user and
system CPU time per invoke (``os.times()`` around the run, warm-up excluded). Rounds run the
kinds in turn, reversed every other round; the table shows medians. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

KINDS = ("sqlitesaver", "langgraph", "bare", "memory")
DURABILITIES = ("sync", "async")
NODES = 4


def worker(kind: str, durability: str, threads: int, invokes: int, directory: str) -> int:
    from _graph_worker import GraphRun

    with GraphRun(kind, os.path.join(directory, f"{kind}-{durability}.db"), NODES,
                  full_sync=True) as run:
        run.warm_up()
        done = [0] * threads
        start = threading.Barrier(threads + 1)

        def invoke_all(index: int) -> None:
            start.wait()
            for _ in range(invokes):
                run.invoke(durability)
                done[index] += 1

        pool = [threading.Thread(target=invoke_all, args=(i,)) for i in range(threads)]
        for thread in pool:
            thread.start()
        before, started = os.times(), time.perf_counter()
        start.wait()
        for thread in pool:
            thread.join()
        elapsed, after = time.perf_counter() - started, os.times()
        total = sum(done)
        print(json.dumps({"steps_per_s": total * NODES / elapsed,
                          "user_us": (after.user - before.user) / total * 1e6,
                          "sys_us": (after.system - before.system) / total * 1e6}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--invokes", type=int, default=40, help="per thread")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where the databases go (default: a temporary directory)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "DURABILITY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.threads, args.invokes, args.dir)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
        return coordinate(args, args.dir)
    directory = tempfile.mkdtemp(prefix="bench-graph-cpu-")
    try:
        return coordinate(args, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def coordinate(args: argparse.Namespace, directory: str) -> int:
    print("$ python " + " ".join(sys.argv))
    print(f"{args.threads} threads x {args.invokes} invokes of a {NODES}-node graph per run; "
          f"{args.rounds} rounds; {os.cpu_count()} CPUs")
    results: dict[tuple[str, str], list[dict]] = {}
    env = dict(os.environ)
    root = os.path.dirname(HERE)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    for round_ in range(args.rounds):
        kinds = KINDS if round_ % 2 == 0 else KINDS[::-1]
        for durability in DURABILITIES:
            for kind in kinds:
                done = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--worker", kind, durability,
                     "--threads", str(args.threads), "--invokes", str(args.invokes),
                     "--dir", directory], capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    sys.stderr.write(done.stderr)
                    raise SystemExit(f"the {kind} {durability} worker failed")
                results.setdefault((kind, durability), []).append(
                    json.loads(done.stdout.splitlines()[-1]))
    print("\n| checkpointer | durability | steps/s | user CPU us/invoke | sys CPU us/invoke "
          "| CPU us/invoke |")
    print("|---|---|---|---|---|---|")
    for durability in DURABILITIES:
        for kind in KINDS:
            runs = results[(kind, durability)]
            rate = statistics.median(r["steps_per_s"] for r in runs)
            user = statistics.median(r["user_us"] for r in runs)
            system = statistics.median(r["sys_us"] for r in runs)
            cpu = statistics.median(r["user_us"] + r["sys_us"] for r in runs)
            print(f"| {kind} | {durability} | {rate:,.0f} | {user:,.0f} | {system:,.0f} "
                  f"| {cpu:,.0f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
