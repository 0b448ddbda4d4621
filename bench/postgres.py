"""sqlitesaver on PostgreSQL against LangGraph's PostgresSaver, with bare psycopg as the ceiling.

    python bench/postgres.py [--rounds 6] [--seconds 1.5] [--db URL] [--json FILE] [--quick]
    python bench/run.py --backend postgres [the same options]

Needs ``pip install '.[bench,postgres]'`` (langgraph, langgraph-checkpoint-postgres, psycopg).
Without ``--db`` it starts its own throwaway cluster (sqlitesaver/pgcluster.py: PostgreSQL's
durable defaults, data checksums, a Unix socket, no TCP) and removes it at the end; ``--db``
names a server database that must hold neither sqlitesaver's tables nor LangGraph's.

The contenders, on one server and one database, used as their documentation shows:
``sqlitesaver.langgraph.PostgresSaver.from_conn_string(url)`` (its pool, ``durability="full"``:
``synchronous_commit=on`` per transaction) and LangGraph's
``langgraph.checkpoint.postgres.PostgresSaver.from_conn_string(url)`` plus ``setup()`` (one
connection, ``autocommit``, its calls serialised by one lock per saver; the server's
``synchronous_commit``, read back and printed, is ``on``: every COMMIT waits for the WAL flush,
as ours). Every thread of a row shares one checkpointer, as a server's request threads do.

Rows (each op is one call through LangGraph's checkpointer API, the same checkpoint objects on
both sides: bench/_checkpoint.py's, whose channel values are bench/core.py's 4 KiB state; each
put is a graph step that changed every channel, so its ``channel_versions`` and ``new_versions``
name each channel at a new version, as a graph's do. LangGraph's PostgresSaver stores a value
per channel version and reads values back through ``channel_versions``: with the empty ones of
``empty_checkpoint()``, before session 15, it stored the 4 KiB once and listed and got
checkpoints without it. Each contender's read thread is now read back whole before it is timed):
  put 1 thread, put 8 threads, put 4 processes x 4 threads: durable ``put`` of the thread's next
    checkpoint, each thread on its own LangGraph thread;
  get latest: ``get_tuple`` of a thread of 200 checkpoints; list 100: ``list(limit=100)``;
    both on tables that hold GROW_COUNT more checkpoints of other threads and were analyzed
    (see GROW_COUNT: the plans of a database in use);
  graph 1, graph 8: steps/s of bench/_graph_worker.py's 4-node StateGraph invoked again and
    again on new threads (``durability="sync"``), from 1 and from 8 threads at once.
Ceiling (a baseline doing strictly less work, measured in the same run): bare psycopg, one
autocommit connection per thread, each op msgpack-encoding the same state and running one
INSERT (or the one SELECT a read needs, binary, and decoding what it returns): one statement,
one round trip, one transaction, ``synchronous_commit=on``; for the graph rows LangGraph's
``InMemorySaver`` (no storage at all).

Targets (issue #17): at least 1.0x LangGraph's PostgresSaver on every row, 2.0x on 8-thread
puts. Machines here are shared and noisy: nothing is compared with a stored number. Within a
round the contenders run back to back, their order rotated each round (round r starts with
the r-th kind: over the default six rounds each kind runs first, second and last twice); the
table shows median rates and the median of the per-round ratios. Rotated since session 25:
with the order reversed every other round, as before, LangGraph never ran first after the
write rows, and a row run first after them is slowed by their aftermath (the server's
checkpointer and autovacuum still at work): the get row printed 0.90x (4,138/s against
4,592/s; ours first in rounds 1 and 3) in a 3-round run where, with only the read rows timed,
the same build ran 1.13x to 1.27x in each of 7 rounds (research/postgres_benchmark.md,
session 25). Nothing asserts; the exit status is 0 unless the run itself broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (HERE, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import msgpack  # noqa: E402

import core  # noqa: E402  (bench/core.py: the 4 KiB state)
from _checkpoint import Checkpoints, config  # noqa: E402
from _common import Channel, Outcome, run_threads, serve  # noqa: E402

KINDS = ("sqlitesaver", "langgraph", "bare")
LABELS = {"sqlitesaver": "sqlitesaver.langgraph PostgresSaver",
          "langgraph": "langgraph.checkpoint.postgres PostgresSaver",
          "bare": "bare psycopg (ceiling)", "memory": "LangGraph InMemorySaver (ceiling)"}
TARGETS = {"put1": 1.0, "put8": 2.0, "put4x4": 1.0, "get": 1.0, "list": 1.0,
           "graph1": 1.0, "graph8": 1.0}
ROWS = (("put1", "durable put, 1 thread"), ("put8", "durable put, 8 threads"),
        ("put4x4", "durable put, 4 processes x 4 threads"), ("get", "get latest"),
        ("list", "list(limit=100)"), ("graph1", "graph steps/s, 1 graph (sync)"),
        ("graph8", "graph steps/s, 8 graphs at once (sync)"))
LIST_COUNT = 200
#: Checkpoints each contender puts on threads of its own before any row is timed (none with
#: --quick), followed by a VACUUM ANALYZE of the database: the reads then run on the plans of a
#: database in use, not of freshly made, nearly empty tables. Measured in session 24 (ad hoc,
#: this module's Contender; research/postgres_benchmark.md): LangGraph's get_tuple ran at
#: 2,180/s and its list at 47/s on its fresh tables, 4,434/s and 148/s once they held 6,200
#: checkpoints and were analyzed (ours 3,520 -> 3,849 and 224 -> 250). Before, its reads flipped
#: from the one plan to the other mid-run, when autovacuum analyzed the tables the put rows had
#: grown (after round 2 of 7), so a 3-round run compared ours with its slower plan.
GROW_COUNT = 6000
GROW_THREADS = 6
METADATA = {"source": "loop", "step": 3, "run_id": "bench"}
BARE_SCHEMA = """
CREATE SCHEMA bench_bare;
CREATE TABLE bench_bare.puts (thread_id text NOT NULL, seq bigserial, state bytea NOT NULL,
                              PRIMARY KEY (thread_id, seq));
"""


# --- one contender: the ops of each row ----------------------------------------------------------

class Contender:
    """One kind's checkpointer (or bare connections) on ``url``; ``ops(row, threads)`` gives one
    op per thread. A context manager: everything it opened is closed on exit."""

    def __init__(self, kind: str, url: str, tag: str) -> None:
        self.kind, self.url, self.tag = kind, url, tag
        self.state = core.make_state()
        self.stack = contextlib.ExitStack()
        self.facts: dict[str, Any] = {}
        self.bare_conns: dict[str, Any] = {}  # the bare kind's connections, by slot (_bare)
        self.checkpoints: dict[str, Checkpoints] = {}  # each thread's, by id (_put_op)

    def __enter__(self) -> "Contender":
        if self.kind == "sqlitesaver":
            from sqlitesaver.langgraph import PostgresSaver
            self.saver = self.stack.enter_context(PostgresSaver.from_conn_string(self.url))
            self.facts["settings"] = self.saver.saver.settings()
        elif self.kind == "langgraph":
            from langgraph.checkpoint.postgres import PostgresSaver
            self.saver = self.stack.enter_context(PostgresSaver.from_conn_string(self.url))
            self.saver.setup()
            self.facts["synchronous_commit"] = self.saver.conn.execute(
                "SHOW synchronous_commit").fetchone()["synchronous_commit"]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def _bare(self, slot: str) -> Any:
        """The connection of ``slot`` (a row's thread), its own, autocommit: each statement is
        one transaction, one round trip (an INSERT's COMMIT waits for the WAL flush:
        synchronous_commit=on). Made once and kept for the next rounds: a new one per round
        ran the server out of connections past 3 rounds (its max_connections of 100)."""
        conn = self.bare_conns.get(slot)
        if conn is None:
            import psycopg
            conn = self.stack.enter_context(psycopg.connect(self.url, autocommit=True))
            conn.execute("SET synchronous_commit = on")
            self.bare_conns[slot] = conn
        return conn

    def ops(self, row: str, threads: int) -> list[Callable[[], object]]:
        if row.startswith("put"):
            return [self._put_op(f"{self.tag}-{row}-{n}") for n in range(threads)]
        return [self._read_op(row, n) for n in range(threads)]

    def _put_op(self, thread_id: str) -> Callable[[], object]:
        if self.kind == "bare":
            conn, state = self._bare(thread_id), self.state
            packb = msgpack.packb
            insert = "INSERT INTO bench_bare.puts (thread_id, state) VALUES (%s, %s)"

            def op() -> None:
                conn.execute(insert, (thread_id, packb(state)))
            return op
        # One Checkpoints per LangGraph thread for the whole run, not one per row and round:
        # a thread's channel versions then only grow, as a graph's do. Made anew each round
        # (before session 21), they restarted at 1 on the same threads (put1 and put8 share
        # thread 0), and LangGraph's blob upsert (ON CONFLICT DO NOTHING) skipped the values
        # of every version already stored: from the second round on its puts stored no
        # values, 971 WAL bytes a put instead of 2,416 and ~12% less wall time
        # (research/postgres_benchmark.md, session 21), while ours stored them whole.
        checkpoints = self.checkpoints.get(thread_id)
        if checkpoints is None:
            checkpoints = self.checkpoints[thread_id] = Checkpoints(self.state, versioned=True)
        saver, thread, make = self.saver, config(thread_id), checkpoints.next

        def op() -> None:
            checkpoint = make()
            saver.put(thread, checkpoint, METADATA, checkpoints.new_versions)
        return op

    def fill(self) -> None:
        """The read thread: LIST_COUNT checkpoints (rows, for bare), each read back whole."""
        thread_id = f"{self.tag}-read"
        put = self._put_op(thread_id)
        for _ in range(LIST_COUNT):
            put()
        self.read_thread = config(thread_id)
        if self.kind != "bare":
            listed = list(self.saver.list(self.read_thread, limit=100))
            if len(listed) != 100 or any(t.checkpoint["channel_values"] != self.state
                                         for t in listed):
                raise SystemExit(f"{LABELS[self.kind]}: the read thread does not read back "
                                 "whole (channel values missing or changed)")

    def grow(self, count: int) -> None:
        """``count`` puts on GROW_THREADS threads of this contender's own (see GROW_COUNT)."""
        ops = [self._put_op(f"{self.tag}-grow-{n}") for n in range(GROW_THREADS)]
        for i in range(count):
            ops[i % GROW_THREADS]()

    def _read_op(self, row: str, n: int = 0) -> Callable[[], object]:
        if self.kind == "bare":
            conn, unpackb = self._bare(f"{row}-{n}"), msgpack.unpackb
            thread_id = self.read_thread["configurable"]["thread_id"]
            limit = 1 if row == "get" else 100
            query = ("SELECT seq, state FROM bench_bare.puts WHERE thread_id = %s "
                     "ORDER BY seq DESC LIMIT %s")

            def op() -> None:
                for _, state in conn.execute(query, (thread_id, limit), binary=True):
                    unpackb(state)
            return op
        saver, thread = self.saver, self.read_thread
        if row == "get":
            return lambda: saver.get_tuple(thread)
        return lambda: list(saver.list(thread, limit=100))


# --- graph rows ----------------------------------------------------------------------------------

def graph_run(kind: str, url: str) -> Any:
    """bench/_graph_worker.py's graph on this kind's checkpointer, as a context manager whose
    value has ``invoke(durability)``."""
    import itertools

    from _graph_worker import CONTEXT, build_graph

    @contextlib.contextmanager
    def opened() -> Iterator[Any]:
        if kind == "sqlitesaver":
            from sqlitesaver.langgraph import PostgresSaver
            manager: Any = PostgresSaver.from_conn_string(url)
        elif kind == "langgraph":
            from langgraph.checkpoint.postgres import PostgresSaver
            manager = PostgresSaver.from_conn_string(url)
        else:
            from langgraph.checkpoint.memory import InMemorySaver
            manager = contextlib.nullcontext(InMemorySaver())
        with manager as checkpointer:
            if kind == "langgraph":
                checkpointer.setup()
            graph = build_graph(4).compile(checkpointer=checkpointer)
            numbers = itertools.count()

            class Run:
                def invoke(self, durability: str) -> None:
                    graph.invoke({"context": CONTEXT, "messages": []},
                                 {"configurable": {"thread_id": f"g-{kind}-{next(numbers)}"}},
                                 durability=durability)
            yield Run()
    return opened()


# --- 4 processes x 4 threads: a worker process per contender process ------------------------------

def worker() -> int:
    """``--worker``: init with kind, url, tag, threads -> ready; run until -> an Outcome."""
    channel = Channel.for_worker()
    init = channel.receive()
    if init is None:
        return 0
    with Contender(init["kind"], init["url"], init["tag"]) as contender:
        ops = contender.ops("put", init["threads"])
        for op in ops:
            op()  # warm: the first call opens connections
        channel.send({"ready": True})

        def run(message: dict[str, Any]) -> dict[str, Any]:
            return run_threads(ops, until=message["until"]).to_json()

        serve(channel, {"run": run}, lambda: None)
    return 0


def processes(kind: str, url: str, round_no: int, seconds: float) -> Outcome:
    children = []
    for n in range(4):
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=dict(os.environ, PYTHONPATH=REPO))
        channel = Channel(child.stdout, child.stdin)  # type: ignore[arg-type]
        channel.send({"kind": kind, "url": url, "tag": f"{kind}-p{n}-r{round_no}",
                      "threads": 4})
        children.append((child, channel))
    for child, channel in children:
        if channel.receive() is None:
            raise SystemExit(f"a {kind} worker process died before it was ready")
    until = time.monotonic() + 0.2 + seconds
    total = Outcome(elapsed=seconds)
    for _, channel in children:
        channel.send({"cmd": "run", "until": until})
    for child, channel in children:
        reply = channel.receive()
        if reply is None:
            raise SystemExit(f"a {kind} worker process died while running")
        total.add(Outcome.from_json(reply))
        channel.send({"cmd": "quit"})
        child.wait(timeout=60)
    total.elapsed = seconds
    return total


# --- the run -------------------------------------------------------------------------------------

@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    """The database to measure on: ``url`` if given (checked empty), else a fresh cluster's."""
    import psycopg
    if url is None:
        from sqlitesaver.pgcluster import Cluster
        with Cluster() as cluster:
            with psycopg.connect(cluster.url, autocommit=True) as admin:
                admin.execute("CREATE DATABASE bench")
            yield cluster.url.replace("/postgres?", "/bench?")
        return
    with psycopg.connect(url, autocommit=True) as conn:
        taken = conn.execute(
            "SELECT string_agg(n.nspname || '.' || c.relname, ', ') FROM pg_class c JOIN "
            "pg_namespace n ON n.oid = c.relnamespace WHERE (n.nspname IN ('sqlitesaver', "
            "'bench_bare')) OR (n.nspname = 'public' AND c.relname LIKE 'checkpoint%')"
        ).fetchone()[0]
    if taken:
        raise SystemExit(f"--db must name a database without sqlitesaver's or LangGraph's "
                         f"tables (this one has {taken}): create one for the bench")
    yield url


def measure(kind: str, url: str, row: str, seconds: float, round_no: int,
            contenders: dict[str, Contender]) -> Outcome:
    if row == "put4x4":
        return processes(kind, url, round_no, seconds)
    if row.startswith("graph"):
        graph_kind = "memory" if kind == "bare" else kind
        with graph_run(graph_kind, url) as run:
            run.invoke("sync")  # warm
            outcome = run_threads([lambda: run.invoke("sync")] * (8 if row == "graph8" else 1),
                                  seconds=seconds)
        outcome.ops *= 4  # steps: four nodes per invoke
        return outcome
    threads = {"put1": 1, "put8": 8}.get(row, 1)
    ops = contenders[kind].ops(row if row != "put1" and row != "put8" else "put", threads)
    for op in ops:
        op()  # warm
    return run_threads(ops, seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="rounds (default 6: each kind in each place "
                        "twice; --quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per contender per row per round "
                                                      "(default 1.5; --quick 0.3)")
    parser.add_argument("--db", help="a PostgreSQL database URL (default: a throwaway cluster)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="a short run, to see it works")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker()
    rounds = args.rounds or (1 if args.quick else 6)
    seconds = args.seconds or (0.3 if args.quick else 1.5)
    try:
        for dist in ("langgraph-checkpoint-postgres", "psycopg"):
            metadata.version(dist)
    except metadata.PackageNotFoundError as exc:
        print(f"bench/postgres.py needs {exc.args[0]}: pip install '.[bench,postgres]'",
              file=sys.stderr)
        return 2
    rates: dict[str, dict[str, list[float]]] = {row: {k: [] for k in KINDS} for row, _ in ROWS}
    errors: dict[str, dict[str, int]] = {}
    with server(args.db) as url, contextlib.ExitStack() as stack:
        import psycopg
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(BARE_SCHEMA)
            facts: dict[str, Any] = {"server": conn.execute("SHOW server_version").fetchone()[0]}
            for name in ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method",
                         "data_checksums"):
                facts[name] = conn.execute(f"SHOW {name}").fetchone()[0]
        contenders = {kind: stack.enter_context(Contender(kind, url, f"{kind}"))
                      for kind in KINDS}
        facts["contenders"] = {}
        for contender in contenders.values():
            contender.fill()
            facts["contenders"][contender.kind] = contender.facts
        facts["grown"] = 0 if args.quick else GROW_COUNT
        if facts["grown"]:
            for contender in contenders.values():
                contender.grow(facts["grown"])
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
        facts["versions"] = {dist: metadata.version(dist) for dist in (
            "langgraph", "langgraph-checkpoint-postgres", "psycopg", "psycopg-pool")}
        print(f"PostgreSQL {facts['server']} (fsync={facts['fsync']}, synchronous_commit="
              f"{facts['synchronous_commit']}, full_page_writes={facts['full_page_writes']}, "
              f"data_checksums={facts['data_checksums']}); {platform.python_version()}, "
              f"{os.cpu_count()} CPUs; {rounds} round(s) x {seconds} s; LangGraph's "
              f"synchronous_commit={contenders['langgraph'].facts['synchronous_commit']}; "
              f"{facts['grown']:,} more checkpoints per contender, then VACUUM ANALYZE, "
              "before timing", flush=True)
        for round_no in range(rounds):
            order = KINDS[round_no % len(KINDS):] + KINDS[:round_no % len(KINDS)]
            for row, _ in ROWS:
                for kind in order:
                    outcome = measure(kind, url, row, seconds, round_no, contenders)
                    rates[row][kind].append(outcome.ops / outcome.elapsed)
                    if outcome.errors:
                        errors.setdefault(f"{row}/{kind}", {}).update(outcome.errors)
            print(f"round {round_no + 1} of {rounds} done", flush=True)
    table = report(rates)
    if errors:
        print(f"ERRORS (counted, not in the rates' ops): {errors}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"command": " ".join(["python", "bench/postgres.py", *(argv or
                                                                              sys.argv[1:])]),
                       "facts": facts, "rounds": rounds, "seconds": seconds, "rates": rates,
                       "table": table, "errors": errors}, f, indent=2)
    return 1 if errors else 0


def report(rates: dict[str, dict[str, list[float]]]) -> list[dict[str, Any]]:
    print(f"\n{'row':42} {'ours/s':>9} {'LangGraph/s':>12} {'ratio':>6} {'target':>7} "
          f"{'ceiling/s':>10} {'ours/ceiling':>12}")
    table = []
    for row, title in ROWS:
        ours, peer, bare = (rates[row][k] for k in KINDS)
        ratio = statistics.median(a / b for a, b in zip(ours, peer) if b)
        ceiling = statistics.median(a / b for a, b in zip(ours, bare) if b)
        met = "met" if ratio >= TARGETS[row] else "NOT met"
        line = {"row": title, "ours": statistics.median(ours),
                "langgraph": statistics.median(peer), "ratio": ratio, "target": TARGETS[row],
                "ceiling": statistics.median(bare), "of_ceiling": ceiling, "met": met}
        table.append(line)
        print(f"{title:42} {line['ours']:9.0f} {line['langgraph']:12.0f} {ratio:5.2f}x "
              f"{TARGETS[row]:5.1f}x {line['ceiling']:10.0f} {ceiling:11.2f}x  {met}")
    print("\nceiling: bare psycopg (one autocommit INSERT or SELECT of the msgpack-encoded state "
          "per op) for the put/get/list rows, LangGraph's InMemorySaver for the graph rows")
    return table


if __name__ == "__main__":
    sys.exit(main())
