"""Instructions and garbage per graph invoke, many graphs at once: where a checkpointer's CPU goes.

    python bench/graph_instructions.py [--kinds sqlitesaver bare] [--durabilities sync async]
                                       [--threads 8] [--invokes 20]

Needs valgrind and ``pip install '.[bench]'``. bench/graph_cpu.py times the 8-thread graph rows
(CPU per invoke, noisy on a shared machine); this counts them. For each checkpointer kind of
bench/_graph_worker.py and each durability, a process invokes the 4-node graph from
``--threads`` threads on one checkpointer, and:

* under callgrind, twice (5 invokes per thread, then 5 + ``--invokes``): the difference of the
  two counts, divided by the extra invokes, is the instructions one invoke costs, set-up and
  warm-up excluded. Callgrind runs one thread at a time, so batches form differently than on
  two cores; the counts are comparable between kinds, not a prediction of a rate;
* without valgrind: the cyclic GC's collections per invoke and the objects it found in
  reference cycles per invoke (``gc.DEBUG_SAVEALL``): garbage only that GC frees, whose
  collections a process pays for in every thread (research/concurrency_benchmark.md,
  "Session 17").

Nothing asserts; deterministic enough to compare commits (run both in one session).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NODES = 4
WARM = 5  # invokes per thread in the shorter run


def child(kind: str, durability: str, threads: int, invokes: int, garbage: bool) -> None:
    """The measured process: ``invokes`` invokes per thread from ``threads`` threads; with
    ``garbage``, print the GC's collections and the cyclic garbage per invoke."""
    sys.path[:0] = [HERE, ROOT]
    from _graph_worker import GraphRun

    directory = tempfile.mkdtemp(prefix="bench-graph-instructions-")
    try:
        with GraphRun(kind, os.path.join(directory, "graph.db"), NODES,
                      full_sync=True) as run:
            run.warm_up()
            if garbage:
                gc.collect()
                gc.set_debug(gc.DEBUG_SAVEALL)
                before = [g["collections"] for g in gc.get_stats()]
            start = threading.Barrier(threads)

            def invoke_all() -> None:
                start.wait()
                for _ in range(invokes):
                    run.invoke(durability)
            pool = [threading.Thread(target=invoke_all) for _ in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            if garbage:
                after = [g["collections"] for g in gc.get_stats()]
                gc.collect()
                total = threads * invokes
                print(json.dumps({
                    "collections_per_invoke": [round((b - a) / total, 3)
                                               for a, b in zip(before, after)],
                    "cyclic_garbage_per_invoke": round(len(gc.garbage) / total, 1)}))
                gc.garbage.clear()
                gc.set_debug(0)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _command(kind: str, durability: str, threads: int, invokes: int, garbage: bool) -> list:
    return [sys.executable, os.path.abspath(__file__), "--child", kind, durability,
            str(threads), str(invokes), "garbage" if garbage else "count"]


def instructions(kind: str, durability: str, threads: int, invokes: int) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as out:
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg",
                               *_command(kind, durability, threads, invokes, False)],
                              capture_output=True, text=True, check=False, env=_env())
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"{kind} {durability}: valgrind failed (exit {done.returncode}):\n"
                         f"{done.stderr[-2000:]}")
    return int(found.group(1))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def main() -> int:
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
              sys.argv[6] == "garbage")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["sqlitesaver", "bare"])
    parser.add_argument("--durabilities", nargs="+", default=["sync", "async"])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--invokes", type=int, default=20, help="per thread, counted")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    print("$ python " + " ".join(["bench/graph_instructions.py", *sys.argv[1:]]))
    print(f"{args.threads} threads; instructions per invoke from {WARM} and "
          f"{WARM + args.invokes} invokes per thread under callgrind\n")
    print("| checkpointer | durability | instructions/invoke | GC collections/invoke "
          "(gen 0, 1, 2) | cyclic garbage/invoke |")
    print("|---|---|---|---|---|")
    for durability in args.durabilities:
        for kind in args.kinds:
            short = instructions(kind, durability, args.threads, WARM)
            long = instructions(kind, durability, args.threads, WARM + args.invokes)
            per = (long - short) / (args.threads * args.invokes)
            done = subprocess.run(_command(kind, durability, args.threads, args.invokes, True),
                                  capture_output=True, text=True, check=False, env=_env())
            if done.returncode != 0:
                raise SystemExit(f"{kind} {durability}: the garbage run failed:\n"
                                 f"{done.stderr[-2000:]}")
            gc_facts = json.loads(done.stdout.splitlines()[-1])
            collections = ", ".join(f"{n:g}" for n in gc_facts["collections_per_invoke"])
            print(f"| {kind} | {durability} | {per:,.0f} | {collections} | "
                  f"{gc_facts['cyclic_garbage_per_invoke']:g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
