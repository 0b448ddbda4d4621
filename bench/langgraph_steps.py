"""LangGraph graph steps per second: sqlitesaver's checkpointer against LangGraph's SqliteSaver.

    python bench/langgraph_steps.py [--rounds 5] [--seconds 1.0] [--nodes 4] [--dir DIR]
                                    [--json FILE]

Needs ``pip install '.[bench]'`` (langgraph and langgraph-checkpoint-sqlite). The same
``StateGraph`` (a chain of ``--nodes`` nodes; each appends a message to a state that also holds
2 KiB of context, so a checkpoint is about 3 KiB) is invoked again and again, each time on a new
thread, for ``--seconds`` per round; a step is one node run (one superstep: one checkpoint put and
one ``put_writes``). Rates are completed steps over the wall time of the round.

Both contenders run in their own worker process, started from this file, on their own file in
``--dir``: LangGraph's SqliteSaver is the stdlib ``sqlite3``, sqlitesaver is APSW, and one process
must never hold both SQLite libraries on a file; the coordinating process imports neither. The
checkpointers are used as their documentation shows (``from_conn_string``); sqlitesaver with its
default ``durability="full"``. LangGraph's saver sets only ``journal_mode=WAL`` and keeps the
build's default ``synchronous``, read back and printed (FULL here: an fsync at every commit, as
sqlitesaver's). Both graph durability modes are measured: ``sync`` (a checkpoint is committed
before the next step starts) and ``async`` (LangGraph's default: it is committed while the next
step runs).

Machines here are shared and noisy: nothing is compared with a stored number. Within each round
the two contenders run back to back, their order reversed every other round (ABBA); the table
shows the median rate of the rounds and the median of the per-round ratios. Nothing asserts; the
exit status is 0 unless the run itself broke.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Annotated, Any, TypedDict

CONTENDERS = ("sqlitesaver", "langgraph")
LABELS = {"sqlitesaver": "sqlitesaver.langgraph SqliteSaver",
          "langgraph": "langgraph.checkpoint.sqlite SqliteSaver"}
DURABILITIES = ("sync", "async")
CONTEXT = ("The customer wrote about an invoice that lists a service twice; the agent looked "
           "up the contract, the payment history and the open tickets. ") * 16  # ~2 KiB


# --- the worker: one checkpointer, one graph -----------------------------------------------------

class State(TypedDict):
    context: str
    messages: Annotated[list, operator.add]


def build_graph(nodes: int) -> Any:
    from langgraph.graph import END, START, StateGraph

    builder = StateGraph(State)
    previous = START
    for n in range(nodes):
        name = f"step{n}"
        builder.add_node(name, lambda state, n=n: {"messages": [f"node {n} saw "
                                                                f"{len(state['messages'])}"]})
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    return builder


def open_checkpointer(kind: str, path: str) -> tuple[Any, dict]:
    """The checkpointer as a context manager, and facts about it to print."""
    if kind == "sqlitesaver":
        import apsw

        from sqlitesaver.langgraph import SqliteSaver
        manager = SqliteSaver.from_conn_string(path)
        return manager, {"apsw": apsw.apsw_version(), "sqlite": apsw.sqlite_lib_version()}
    import sqlite3
    from importlib import metadata

    from langgraph.checkpoint.sqlite import SqliteSaver
    manager = SqliteSaver.from_conn_string(path)
    return manager, {"sqlite": sqlite3.sqlite_version,
                     "langgraph-checkpoint-sqlite": metadata.version(
                         "langgraph-checkpoint-sqlite")}


def worker(kind: str, directory: str, nodes: int) -> int:
    """Reads ``run DURABILITY SECONDS`` lines, answers each with one JSON line."""
    manager, facts = open_checkpointer(kind, os.path.join(directory, f"{kind}.db"))
    graph_builder = build_graph(nodes)
    with manager as checkpointer:
        graph = graph_builder.compile(checkpointer=checkpointer)
        threads = 0

        def invoke(durability: str) -> None:
            nonlocal threads
            threads += 1
            graph.invoke({"context": CONTEXT, "messages": []},
                         {"configurable": {"thread_id": f"{kind}-{threads}"}},
                         durability=durability)

        for durability in DURABILITIES:  # warm-up: imports, first pages, the WAL file
            invoke(durability)
        if kind == "langgraph":
            facts["synchronous"] = checkpointer.conn.execute(
                "PRAGMA synchronous").fetchone()[0]
            facts["journal_mode"] = checkpointer.conn.execute(
                "PRAGMA journal_mode").fetchone()[0]
        else:
            settings = checkpointer.saver.settings()["writer"]
            facts["synchronous"] = settings["synchronous"]
            facts["journal_mode"] = settings["journal_mode"]
        facts["loaded_both"] = "apsw" in sys.modules and "sqlite3" in sys.modules
        print(json.dumps({"ready": facts}), flush=True)
        for line in sys.stdin:
            command = line.split()
            if command[0] == "quit":
                break
            durability, seconds = command[1], float(command[2])
            invokes, started = 0, time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                invoke(durability)
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
            if w.facts["loaded_both"]:
                raise SystemExit(f"the {kind} worker loaded both apsw and sqlite3")
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
