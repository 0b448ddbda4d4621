"""LangGraph graph steps per second: sqlitesaver's checkpointer against LangGraph's SqliteSaver.

    python bench/langgraph_steps.py [--rounds 5] [--seconds 1.0] [--nodes 4] [--dir DIR]
                                    [--json FILE]

Needs ``pip install '.[bench]'`` (langgraph and langgraph-checkpoint-sqlite). The same
``StateGraph`` (a chain of ``--nodes`` nodes; each appends a message to a state that also holds
2 KiB of context, so a checkpoint is about 3 KiB) is invoked again and again, each time on a new
thread, for ``--seconds`` per round; a step is one node run (one superstep). An invoke puts more
checkpoints than it has nodes (the input's and the start's too: 6 for 4 nodes with langgraph
1.2; the run reads the count back and prints it as ``checkpoints_per_invoke``). Rates are
completed steps over the wall time of the round. An invoke that raises ends the run: its worker
exits with the traceback and the coordinator stops with a non-zero status.

Both contenders run in their own worker process, started from this file, on their own file in
``--dir``: LangGraph's SqliteSaver is the stdlib ``sqlite3``, sqlitesaver is APSW, and one process
must never hold both SQLite libraries on a file; the coordinating process imports neither. The
checkpointers are used as their documentation shows (``from_conn_string``); sqlitesaver with its
default ``durability="full"``. LangGraph's saver sets only ``journal_mode=WAL`` and keeps the
build's default ``synchronous``, read back and printed (FULL here: an fsync at every commit, as
sqlitesaver's). Both graph durability modes are measured: ``sync`` (a checkpoint is committed
before the next step starts) and ``async`` (LangGraph's default: it is committed while the next
step runs). The graph and the opening of the checkpointers are bench/_graph_worker.py's, which
bench/run.py uses for its graph-steps rows (there with LangGraph's ``synchronous`` raised to FULL
should the build's default be lower).

Machines here are shared and noisy: nothing is compared with a stored number. Within each round
the two contenders run back to back, their order reversed every other round (ABBA); the table
shows the median rate of the rounds and the median of the per-round ratios. Nothing asserts; the
exit status is 0 unless the run itself broke.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # bench/_graph_worker.py, also under `python -m bench.langgraph_steps`
    sys.path.insert(0, HERE)

from _graph_worker import DURABILITIES, GraphRun  # noqa: E402  (the graph, shared with run.py)

CONTENDERS = ("sqlitesaver", "langgraph")
LABELS = {"sqlitesaver": "sqlitesaver.langgraph SqliteSaver",
          "langgraph": "langgraph.checkpoint.sqlite SqliteSaver"}


# --- the worker: one checkpointer, one graph -----------------------------------------------------

def worker(kind: str, directory: str, nodes: int) -> int:
    """Reads ``run DURABILITY SECONDS`` lines, answers each with one JSON line."""
    with GraphRun(kind, os.path.join(directory, f"{kind}.db"), nodes) as run:
        print(json.dumps({"ready": run.warm_up()}), flush=True)
        for line in sys.stdin:
            command = line.split()
            if command[0] == "quit":
                break
            durability, seconds = command[1], float(command[2])
            invokes, started = 0, time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                run.invoke(durability)
                invokes += 1
            elapsed = time.perf_counter() - started
            print(json.dumps({"steps": invokes * nodes, "seconds": elapsed}), flush=True)
    return 0


# --- the coordinator -----------------------------------------------------------------------------

class Worker:
    def __init__(self, kind: str, directory: str, nodes: int) -> None:
        self.kind = kind
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", kind, "--dir", directory,
             "--nodes", str(nodes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.facts = self._reply()["ready"]

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.kind} worker exited (exit status "
                             f"{self.process.wait()}); see its error above")
        return json.loads(line)

    def run(self, durability: str, seconds: float) -> float:
        self.process.stdin.write(f"run {durability} {seconds}\n")
        self.process.stdin.flush()
        reply = self._reply()
        return reply["steps"] / reply["seconds"]

    def close(self) -> None:
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait(60)


def coordinate(args: argparse.Namespace, directory: str) -> int:
    print("$ python " + " ".join(sys.argv))
    workers = {kind: Worker(kind, directory, args.nodes) for kind in CONTENDERS}
    try:
        for kind, w in workers.items():
            print(f"{LABELS[kind]}: {w.facts}")
            if w.facts["other_sqlite_loaded"]:
                raise SystemExit(f"the {kind} worker loaded the other SQLite library")
        print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} "
              f"CPUs; graph: {args.nodes} nodes in a chain, a new thread per invoke; "
              f"{args.rounds} rounds of {args.seconds:g} s per contender and durability")
        rates: dict[str, dict[str, list[float]]] = {d: {k: [] for k in CONTENDERS}
                                                    for d in DURABILITIES}
        for round_ in range(args.rounds):
            order = CONTENDERS if round_ % 2 == 0 else CONTENDERS[::-1]  # ABBA
            for durability in DURABILITIES:
                for kind in order:
                    rates[durability][kind].append(workers[kind].run(durability, args.seconds))
            print(f"round {round_ + 1}: " + "; ".join(
                f"{d}: " + ", ".join(f"{k} {rates[d][k][-1]:,.0f}" for k in CONTENDERS)
                for d in DURABILITIES), flush=True)
    finally:
        for w in workers.values():
            w.close()

    table = []
    for durability in DURABILITIES:
        ours, theirs = rates[durability]["sqlitesaver"], rates[durability]["langgraph"]
        table.append({"durability": durability,
                      "sqlitesaver_steps_per_s": statistics.median(ours),
                      "langgraph_steps_per_s": statistics.median(theirs),
                      "ratio": statistics.median(a / b for a, b in zip(ours, theirs))})
    print()
    print(f"| graph durability | {'sqlitesaver steps/s':>19} | "
          f"{'LangGraph SqliteSaver steps/s':>29} | {'ratio':>6} |")
    print(f"|------------------|{'-' * 21}|{'-' * 31}|{'-' * 8}|")
    for row in table:
        print(f"| {row['durability']:16} | {row['sqlitesaver_steps_per_s']:19,.0f} | "
              f"{row['langgraph_steps_per_s']:29,.0f} | {row['ratio']:6.2f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"command": sys.argv, "facts": {k: w.facts for k, w in workers.items()},
                       "rates": rates, "table": table}, f, indent=2)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--dir", help="where the databases go (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.dir, args.nodes)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
        return coordinate(args, args.dir)
    directory = tempfile.mkdtemp(prefix="bench-langgraph-")
    try:
        return coordinate(args, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
