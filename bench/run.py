"""Concurrency benchmark (issue #5): many writers, reads, a 1 MiB state, against baselines.

    python bench/run.py [--rounds 8] [--seconds 1.0] [--list-size 1000] [--dir DIR]
                        [--json FILE] [--quick] [--only graph-steps]

Prints one table measured in one run. Machines here are shared and noisy, so nothing is compared
with a stored number: each configuration runs once per round for a fixed time, the compared
configurations alternate within each round (the order reversed every other round, ABBA), a
rate is the median of the rounds, and a ratio is the median of the per-round ratios (each taken
between runs seconds apart). The per-round figures are printed below the table.

Rows (durable = ``synchronous=FULL``, an fsync of the WAL at every commit; 4 KiB state):

- fsync limit: append 4 KiB to a file + ``os.fsync``, in the databases' directory.
- bare APSW: ``BEGIN IMMEDIATE; INSERT; COMMIT`` of the Saver's msgpack bytes of the state into
  a table without index (bench/core.py's baseline, with the Saver's PRAGMAs, read back). It runs
  twice a round, before the 1-thread rows and again mid-round, and each put row is compared
  with the nearer run; the second run's ratio to the first shows the drift within a round.
- bare APSW + ``msgpack.packb``: the bare put that also packs the state on every put (plain
  msgpack, no checksum): the least a store of Python values over msgpack does per put, and so
  the ceiling of the 1-thread target.
- bare APSW group commit, 8 threads (bench/core.py's ``BareGroupCommit``): pre-encoded rows
  queued by 8 threads, inserted and committed in batches by one leader with none of a store's
  other work: the ceiling of the 8-thread target.
- LangGraph ``SqliteSaver`` (stdlib ``sqlite3``; the ``bench`` extra): put at 1 and 8 threads,
  ``get_tuple`` of the latest, ``list(limit=100)``, a 1 MiB put. Always in a separate process
  on separate files (see bench/_langgraph_peer.py); "not installed" rows if it is missing.
- sqlitesaver ``Saver``, public API only: put at 1, 8 and 32 threads sharing one Saver; 4
  processes x 4 threads and 20 processes x 1 thread, one Saver per process on one file
  (bench/_saver_worker.py); ``get`` of the latest and ``list(limit=100)`` on a thread of
  ``--list-size`` checkpoints; a 1 MiB state put.
- 1 MiB state: the 4 KiB state's messages repeated to 1 MiB encoded (still JSON-like); after
  each run every 1 MiB contender deletes what it wrote (untimed), so files stay small.
- LangGraph graph steps/s (issue #6; langgraph, the ``bench`` extra): bench/langgraph_steps.py's
  graph (bench/_graph_worker.py: a ``StateGraph`` chain of 4 nodes, each appending a message to
  a state with 2 KiB of context) invoked again and again, each time on a new thread, through
  ``sqlitesaver.langgraph.SqliteSaver`` and through LangGraph's ``SqliteSaver``, both opened
  with ``from_conn_string`` (LangGraph's ``synchronous`` raised to FULL should the build's
  default be lower; read back and printed). A step is one node run: steps/s is 4 x the completed
  invokes over the run. Graph durability ``sync`` (each checkpoint committed before the next
  step starts) and ``async`` (committed while the next step runs, LangGraph's default). Each
  checkpointer runs in a worker process of its own, on its own file, which loads only its own
  SQLite library; "not installed" rows if LangGraph or its SqliteSaver is missing, and a worker
  that cannot open its checkpointer or run its first invokes stops the run. Their group runs
  ours, LangGraph's (sync), LangGraph's, ours (async), reversed every other round, and the
  ratio ours/LangGraph pairs the two runs of a round.
- Many graphs at once (issue #14): the same graph invoked from 8 threads at once on the one
  checkpointer of each worker (a server sharing its checkpointer between requests), each
  invoke on a new thread, durability sync and async: ours, LangGraph's ``SqliteSaver`` (whose
  ``from_conn_string`` opens its connection with ``check_same_thread=False``; its own lock
  serializes the threads) and, as the ceiling, LangGraph's ``InMemorySaver`` in a third worker
  (no file, no SQLite: what LangGraph's runtime reaches when storing costs next to nothing; it
  forgets its threads after every run, untimed). Target: ours >= 1.2x LangGraph's
  ``SqliteSaver``, printed against the ceiling InMemorySaver / LangGraph's ``SqliteSaver``.
  Their group runs ours, LangGraph's, InMemorySaver (sync), InMemorySaver, LangGraph's, ours
  (async), reversed every other round.

``--only graph-steps`` runs the graph-steps rows alone (1 and 8 threads; only the three graph
workers are started).

Threads and processes are all started and parked first, released together (an Event, or one
command line per process on its pipe; no sleeps), and stopped at one shared deadline; a rate is
completed operations over the time from release to the last one's finish. Each writer thread
writes its own thread id. Errors are counted by exception type, including those on opening and
in the warm-up pass, and never stop a round (a thread stops only on a Saver that shut down).

Targets (issue #5), printed with PASS/FAIL: 1 thread >= 0.9x bare APSW; 8 threads >= 5x
LangGraph at 8 threads; get-latest >= 2x LangGraph's; ``list(limit=100)`` >= 5x LangGraph's;
20 processes x 1 thread: zero errors. Each ratio target is also printed against its ceiling:
the same ratio, paired by round, for a baseline that does less than the target's row must (the
two above for puts; bare APSW get and list, which skip checksums and exact types, for reads). A
target above its ceiling cannot be met on that machine by any store that has to do the row's
work. Nothing here asserts; the exit status is 0 whatever the figures, 1 only if the run itself
broke.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # bench/core.py and the helpers, also under `python -m bench.run`
    sys.path.insert(0, HERE)

import apsw  # noqa: E402
import msgpack  # noqa: E402

import core  # noqa: E402  (bench/core.py: the state and the bare APSW baseline)
import sqlitesaver  # noqa: E402
from _common import Channel, Outcome, run_threads  # noqa: E402
from sqlitesaver import Saver, codec, pragmas  # noqa: E402  (pragmas: bare baseline only)

METADATA = {"source": "loop", "step": 17}  # the same small metadata on every put, both stores
LIST_THREAD = "read-thread"
BIG_THREAD = "big-thread"
BIG_TARGET = 1 << 20
LANGGRAPH = "LangGraph SqliteSaver"
NOT_INSTALLED = "not installed"
GRAPH_NODES = 4  # the graph-steps rows: a chain of this many nodes (bench/_graph_worker.py)
GRAPH_THREADS = 8  # the many-graphs rows: invokes from this many threads on one checkpointer
MEMORY = "LangGraph InMemorySaver"
GRAPH_KINDS = ("sqlitesaver", "langgraph", "memory")


# --- states ---------------------------------------------------------------------------------

def grow_state(target: int) -> dict:
    """bench/core.py's 4 KiB state with its messages repeated (new ids and token counts) until
    it encodes to at least ``target`` bytes: a long agent conversation, JSON-like throughout."""
    base = core.make_state()
    messages = base["messages"]
    encoded = len(codec.encode(base))
    per_message = len(codec.encode(messages)) / len(messages)
    count = len(messages) + int((target - encoded) / per_message)

    def message(i: int) -> dict:
        return dict(messages[i % len(messages)], id=i, tokens=40 + i)

    state = dict(base, messages=[message(i) for i in range(count)])
    while len(codec.encode(state)) < target:
        state["messages"].extend(message(i) for i in range(count, count + 16))
        count += 16
    return state


# --- worker processes -------------------------------------------------------------------------

class Worker:
    """A child interpreter driven over its stdin/stdout (bench/_common.py's protocol). Started
    with subprocess, never forked from here: a Saver must not cross fork(), and the LangGraph
    peer must not inherit APSW."""

    def __init__(self, script: str, init: dict[str, Any]) -> None:
        env = dict(os.environ)
        # The children import the same sqlitesaver as this process, wherever it came from.
        root = os.path.dirname(os.path.dirname(os.path.abspath(sqlitesaver.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, script)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     encoding="utf-8", env=env)
        self.channel = Channel(self.proc.stdout, self.proc.stdin)  # type: ignore[arg-type]
        self.alive = True
        self.channel.send({"cmd": "init", **init})

    def send(self, message: dict[str, Any]) -> None:
        if self.alive:
            try:
                self.channel.send(message)
            except (BrokenPipeError, OSError):
                self.alive = False

    def receive(self) -> dict[str, Any] | None:
        """The reply, or None (and the worker marked dead) if it exited."""
        if not self.alive:
            return None
        reply = self.channel.receive()
        if reply is None:
            self.alive = False
        return reply

    def run_until(self, message: dict[str, Any], seconds: float, what: str) -> Outcome:
        """Send ``message`` with a deadline ``seconds`` from now; the worker's Outcome, timed
        here from the send to the reply. A worker that exits mid-round breaks the run."""
        start = time.monotonic()
        self.send({**message, "until": start + seconds})
        reply = self.receive()
        if reply is None:
            raise SystemExit(f"{what} exited during a round")
        outcome = Outcome.from_json(reply)
        outcome.elapsed = time.monotonic() - start
        return outcome

    def close(self) -> None:
        self.send({"cmd": "quit"})
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only ever our own child, by its Popen object
            self.proc.wait()


class Gang:
    """``processes`` Saver worker processes with ``threads`` threads each, on one database."""

    def __init__(self, name: str, path: str, processes: int, threads: int,
                 states_path: str) -> None:
        Saver(path).close()  # created here, so the workers open an existing database
        self.open_errors: Counter = Counter()
        self.first_error: str | None = None
        self.workers = [Worker("_saver_worker.py", {
            "db": path, "threads": threads, "name": f"{name}-p{i:02d}", "states": states_path,
            "metadata": METADATA}) for i in range(processes)]

    def wait_ready(self) -> list[dict[str, Any]]:
        replies = []
        for worker in self.workers:
            reply = worker.receive()
            if reply is None or not reply.get("ready"):
                worker.alive = False
                errors = (reply or {}).get("errors") or {"WorkerExited": 1}
                self.open_errors.update(errors)
                self.first_error = self.first_error or (reply or {}).get(
                    "first_error", "a worker process exited while opening")
            else:
                replies.append(reply)
        return replies

    def run(self, seconds: float) -> Outcome:
        start = time.monotonic()
        until = start + seconds
        for worker in self.workers:  # the release: one line on each pipe, all at once
            worker.send({"cmd": "put", "until": until})
        total = Outcome()
        for worker in self.workers:
            was_alive = worker.alive
            reply = worker.receive()
            if reply is not None:
                total.add(Outcome.from_json(reply))
            elif was_alive:
                total.errors["WorkerExited"] += 1
        total.elapsed = time.monotonic() - start
        return total

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


class Peer:
    """The LangGraph baseline process (bench/_langgraph_peer.py)."""

    def __init__(self, directory: str, states_path: str, list_size: int, threads: int) -> None:
        self.worker = Worker("_langgraph_peer.py", {
            "dir": directory, "states": states_path, "metadata": METADATA,
            "list_count": list_size, "threads": threads})
        self.info: dict[str, Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self.info.get("installed"))

    def wait_ready(self) -> None:
        self.info = self.worker.receive() or {"installed": False,
                                              "error": "the LangGraph peer process exited"}
        if self.info.get("installed") and self.info.get("apsw_loaded"):
            raise SystemExit("the LangGraph peer loaded APSW/sqlitesaver: results void")

    def run(self, config: str, seconds: float) -> Outcome:
        return self.worker.run_until({"cmd": "run", "config": config}, seconds,
                                     "the LangGraph peer process")

    def cleanup(self, config: str) -> None:
        self.worker.send({"cmd": "cleanup", "config": config})
        self.worker.receive()

    def close(self) -> None:
        self.worker.close()


class GraphWorker:
    """A process running the graph of bench/_graph_worker.py on one checkpointer: ``kind``
    "sqlitesaver" (APSW) or "langgraph" (stdlib ``sqlite3``), on its own file, or "memory"
    (LangGraph's ``InMemorySaver``, no file)."""

    def __init__(self, kind: str, path: str, nodes: int) -> None:
        self.kind = kind
        self.worker = Worker("_graph_worker.py", {"kind": kind, "db": path, "nodes": nodes,
                                                  "full_sync": True})
        self.info: dict[str, Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self.info.get("installed"))

    @property
    def facts(self) -> dict[str, Any]:
        return self.info.get("facts", {})

    def wait_ready(self) -> None:
        self.info = self.worker.receive() or {}
        if not self.info:
            raise SystemExit(f"the {self.kind} graph worker exited while opening; see its "
                             "error above")
        if self.facts.get("other_sqlite_loaded"):
            raise SystemExit(f"the {self.kind} graph worker loaded the other SQLite library: "
                             "results void")

    def run(self, durability: str, seconds: float, threads: int = 1) -> Outcome:
        return self.worker.run_until({"cmd": "run", "durability": durability,
                                      "threads": threads}, seconds,
                                     f"the {self.kind} graph worker")

    def cleanup(self) -> None:
        """Untimed, between runs: the memory worker forgets every thread it holds."""
        self.worker.send({"cmd": "cleanup"})
        self.worker.receive()

    def close(self) -> None:
        self.worker.close()


# --- configurations and rows ----------------------------------------------------------------

@dataclass
class Config:
    """One measured configuration: ``run(seconds)`` does one timed run; ``after`` (untimed)
    follows every run."""

    key: str
    run: Callable[[float], Outcome]
    after: Callable[[], None] | None = None
    rates: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    first_error: str | None = None

    def measure(self, seconds: float, record: bool) -> None:
        outcome = self.run(seconds)
        if self.after is not None:
            self.after()
        self.errors.update(outcome.errors)
        self.first_error = self.first_error or outcome.first_error
        if record:
            self.rates.append(outcome.ops / outcome.elapsed)


@dataclass
class Target:
    """``kind`` is "bare" or "langgraph" (ratio against that column, at least ``value``) or
    "errors" (at most ``value`` errors)."""

    kind: str
    value: float

    def text(self) -> str:
        if self.kind == "errors":
            return "0 errors" if self.value == 0 else f"<= {self.value:g} errors"
        return f">= {self.value:g}x {'bare' if self.kind == 'bare' else 'LangGraph'}"


@dataclass
class Row:
    """A line of the table: the configuration it shows and the baselines of its two ratio
    columns (None: no such ratio); a ``baseline`` row prints "baseline" as its bare ratio."""

    label: str
    key: str                      # the Config measured
    bare: str | None = None       # the Config of the "vs bare APSW" column
    langgraph: str | None = None  # the Config of the "vs LangGraph" column
    target: Target | None = None
    baseline: bool = False
    ceiling: str | None = None    # the Config of the target's ceiling (see Bench.report)


def paired(rates: Sequence[float], base: Sequence[float]) -> list[float]:
    """Per-round ratios (a round's two runs were seconds apart, so load changes cancel)."""
    return [r / b for r, b in zip(rates, base) if b > 0]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def filesystem_of(path: str) -> str:
    """``type device`` of the mount holding ``path``, from /proc/mounts (Linux), else "?"."""
    best, found = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                device, mount, kind = line.split()[:3]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) \
                        and len(mount) >= len(best):
                    best, found = mount, f"{kind} on {device}"
    except OSError:
        pass
    return found


def code_identity() -> str:
    """Which sqlitesaver was measured: git HEAD, whether the package differs from it, and a
    hash of its sources as read now (the time of import, within a second or so). A working
    tree others edit during the day makes "the library as it is today" ambiguous otherwise."""
    package = os.path.dirname(os.path.abspath(sqlitesaver.__file__))
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, package).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read())

    def git(*argv: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", package, *argv], capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "--short", "HEAD")
    if head is None:
        where = "not a git checkout"
    else:
        dirty = git("status", "--porcelain", "--", ".")
        where = f"git {head}" + (", with uncommitted changes in sqlitesaver/" if dirty else
                                 ", sqlitesaver/ as committed")
    return f"{where}; sources sha256 {digest.hexdigest()[:12]}"


# --- the run ----------------------------------------------------------------------------------

class Bench:
    """One run: :meth:`setup` opens everything, :meth:`configurations` builds what is measured,
    :meth:`measure` runs the rounds, :meth:`report` prints; :meth:`close` releases it all."""

    def __init__(self, args: argparse.Namespace, directory: str) -> None:
        self.args = args
        self.dir = directory
        self.savers: list[Saver] = []
        self.conns: list[apsw.Connection] = []
        self.fds: list[int] = []
        self.gangs: list[Gang] = []
        self.peer: Peer | None = None
        self.graphs: dict[str, GraphWorker] = {}
        self.began = time.monotonic()

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def saver(self, name: str) -> Saver:
        saver = Saver(self.path(name))
        self.savers.append(saver)
        return saver

    def bare(self, name: str, index: bool) -> apsw.Connection:
        conn = core.open_bare(self.path(name), "full", index)
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for gang in self.gangs:
            gang.close()
        if self.peer is not None:
            self.peer.close()
        for graph in self.graphs.values():
            graph.close()
        for saver in self.savers:
            saver.close()
        for conn in self.conns:
            conn.close()
        for fd in self.fds:
            os.close(fd)

    def run(self) -> int:
        self.print_environment()
        self.setup()
        groups = self.configurations()
        self.print_workload()
        self.measure(groups)
        configs = {c.key: c for group, _ in groups for c in group}
        rows = self.rows(self.peer_installed)
        if self.only_steps:
            rows = [row for row in rows if "_steps" in row.key]
        table = self.report(rows, configs)
        if "sqlite3" in sys.modules:
            raise SystemExit("this process loaded the stdlib sqlite3: results void")
        print(self.isolation_text())
        elapsed = time.monotonic() - self.began
        print(f"load average at end: {os.getloadavg()[0]:.2f}; run took {elapsed:.0f} s")
        if self.args.json:
            self.write_json(table, elapsed)
        return 0

    def isolation_text(self) -> str:
        """Which processes were checked to hold only one SQLite library (each process checks
        itself and the run stops if one holds the other library)."""
        def either(names: list[str]) -> str:
            return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]

        ours, theirs = self.graphs["sqlitesaver"], self.graphs["langgraph"]
        no_sqlite3 = ["this process"] + ([] if self.only_steps else ["the Saver workers"]) \
            + (["the sqlitesaver graph worker"] if ours.installed else [])
        no_apsw = [name for name, there in (("the LangGraph peer", self.peer_installed),
                                            ("LangGraph's graph worker", theirs.installed))
                   if there]
        return (f"isolation: no stdlib sqlite3 in {either(no_sqlite3)}"
                + (f"; no APSW in {either(no_apsw)}" if no_apsw else ""))

    def print_environment(self) -> None:
        print("$ python " + " ".join(sys.argv))
        self.code = code_identity()
        print(f"python {platform.python_version()}, apsw {apsw.apsw_version()} (SQLite "
              f"{apsw.sqlite_lib_version()}), msgpack {'.'.join(map(str, msgpack.version))}")
        print(f"sqlitesaver {sqlitesaver.__version__} from "
              f"{os.path.dirname(os.path.abspath(sqlitesaver.__file__))} ({self.code})")
        print(f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
              f"{platform.release()}, load average {os.getloadavg()[0]:.2f} at start")
        print(f"databases and fsync probe in {self.dir} ({filesystem_of(self.dir)})")

    @property
    def only_steps(self) -> bool:
        return self.args.only == "graph-steps"

    def setup(self) -> None:
        """The states, the child processes, and this process's files and Savers."""
        args = self.args
        if self.only_steps:  # the graph workers alone
            self.graphs = {kind: GraphWorker(kind, self.path(f"graph-{kind}.db"), GRAPH_NODES)
                           for kind in GRAPH_KINDS}
            for graph in self.graphs.values():
                graph.wait_ready()
            return
        self.small = core.make_state()
        self.big = grow_state(BIG_TARGET)
        self.small_bytes, self.big_bytes = codec.encode(self.small), codec.encode(self.big)
        states = {"small": self.small, "big": self.big}
        states_path = self.path("states.json")
        with open(states_path, "w", encoding="utf-8") as f:
            json.dump(states, f)
        with open(states_path, encoding="utf-8") as f:  # the workers get exactly these states
            if json.load(f) != states:
                raise SystemExit("the states do not survive JSON; workers would write others")

        # Children first: their interpreters start while this process builds its databases.
        self.peer = Peer(self.dir, states_path, args.list_size, 8)
        self.gangs = [Gang("p4x4", self.path("saver-4x4.db"), 4, 4, states_path),
                      Gang("p20x1", self.path("saver-20x1.db"), 20, 1, states_path)]
        self.graphs = {kind: GraphWorker(kind, self.path(f"graph-{kind}.db"), GRAPH_NODES)
                       for kind in GRAPH_KINDS}

        self.fsync_fd = os.open(self.path("fsync-probe"),
                                os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.fds.append(self.fsync_fd)
        self.bare_put = self.bare("bare.db", False)       # the baseline: no index
        self.bare_packb = self.bare("bare-packb.db", False)
        self.bare_group = core.BareGroupCommit(self.bare("bare-group.db", False))
        self.bare_read = self.bare("bare-read.db", True)  # reads need (thread_id, id)
        self.bare_big = self.bare("bare-big.db", False)
        self.s1, self.s8, self.s32 = (self.saver(f"saver-{n}.db") for n in (1, 8, 32))
        self.s_read, self.s_big = self.saver("saver-read.db"), self.saver("saver-big.db")
        self.live = self.s1.settings()["writer"]
        for conn in self.conns:  # the bare baselines run with exactly the Saver's settings
            if pragmas.read_back(conn) != self.live:
                raise SystemExit(f"bare APSW settings {pragmas.read_back(conn)} differ "
                                 f"from the Saver's {self.live}")

        # The read thread: the same state and metadata, written in one transaction (setup).
        with self.s_read.transaction():
            for _ in range(args.list_size):
                self.s_read.put(LIST_THREAD, self.small, metadata=METADATA)
        with self.bare_read:
            self.bare_read.executemany("INSERT INTO t (thread_id, data) VALUES (?, ?)",
                                       [(core.THREAD, self.small_bytes)] * args.list_size)
        if len(list(self.s_read.list(LIST_THREAD, namespace="", limit=100))) != 100:
            raise SystemExit("the Saver's read thread does not read back")

        # Now wait for the children.
        ready = [reply for gang in self.gangs for reply in gang.wait_ready()]
        if any(reply.get("sqlite3_loaded") for reply in ready):
            raise SystemExit("a Saver worker loaded the stdlib sqlite3: results void")
        self.peer.wait_ready()
        for graph in self.graphs.values():
            graph.wait_ready()

    @property
    def peer_installed(self) -> bool:
        return self.peer is not None and self.peer.installed

    def print_workload(self) -> None:
        args, lg = self.args, self.peer.info if self.peer else {}
        if self.only_steps:
            print(self.graph_text())
            print(f"{args.rounds} rounds after one warm-up pass; per round each configuration "
                  f"runs {args.seconds:g} s; order within a group reversed every other round")
            return
        if self.peer_installed:
            pragma = lg["pragmas"]["put1"]
            print(f"{LANGGRAPH}: langgraph-checkpoint-sqlite "
                  f"{lg['versions']['langgraph-checkpoint-sqlite']}, langgraph-checkpoint "
                  f"{lg['versions']['langgraph-checkpoint']}, ormsgpack "
                  f"{lg['versions']['ormsgpack']}, stdlib sqlite3 on SQLite {lg['sqlite']}, "
                  f"journal_mode {pragma['journal_mode']}, synchronous {pragma['synchronous']} "
                  f"(build default {pragma['synchronous_default']}); separate process and files")
        else:
            print(f"{LANGGRAPH}: {NOT_INSTALLED} ({lg.get('error')}); its rows and ratios are "
                  "skipped (pip install '.[bench]')")
        print(f"state: {len(self.small_bytes):,} bytes as the Saver encodes it "
              f"({len(self.small['messages'])} messages)"
              + (f", {lg['blob_bytes']['small']:,} as LangGraph's serde does"
                 if self.peer_installed else "")
              + f"; 1 MiB state: {len(self.big_bytes):,} bytes "
              f"({len(self.big['messages']):,} messages)"
              + (f", {lg['blob_bytes']['big']:,} for LangGraph" if self.peer_installed else "")
              + f"; metadata {METADATA}; no parent ids, no pending writes")
        print(f"read thread: {args.list_size:,} checkpoints of the 4 KiB state; Saver and "
              f"bare APSW settings: {self.live} (busy_timeout in ms)")
        print(self.graph_text())
        print(f"{args.rounds} rounds after one warm-up pass; per round each configuration runs "
              f"{args.seconds:g} s (reads {args.seconds / 2:g} s); order within a group "
              "reversed every other round")

    def graph_text(self) -> str:
        """The workload line of the graph-steps rows."""
        def one(name: str, kind: str) -> str:
            graph = self.graphs[kind]
            if not graph.installed:
                return f"{name}: {NOT_INSTALLED} ({graph.info.get('error')})"
            facts = graph.facts
            if kind == "memory":
                return (f"{name}: langgraph-checkpoint {facts['langgraph-checkpoint']}, no file, "
                        f"{facts['checkpoints_per_invoke']} checkpoints per invoke")
            library = (f"APSW {facts['apsw']}, SQLite {facts['sqlite']}" if kind == "sqlitesaver"
                       else f"langgraph-checkpoint-sqlite {facts['langgraph-checkpoint-sqlite']},"
                       f" stdlib sqlite3 on SQLite {facts['sqlite']}")
            default = (f" (build default {facts['synchronous_default']})"
                       if "synchronous_default" in facts else "")
            return (f"{name}: {library}, journal_mode {facts['journal_mode']}, synchronous "
                    f"{facts['synchronous']}{default}, {facts['checkpoints_per_invoke']} "
                    f"checkpoints per invoke")

        versions = {g.facts["langgraph"] for g in self.graphs.values() if g.installed}
        return (f"graph steps: a chain of {GRAPH_NODES} nodes (bench/_graph_worker.py, as "
                f"bench/langgraph_steps.py), invoked on a new thread each time; a step is one "
                f"node run; langgraph {', '.join(sorted(versions)) or NOT_INSTALLED}; "
                + "; ".join(one(name, kind) for name, kind in (
                    ("sqlitesaver.langgraph SqliteSaver", "sqlitesaver"),
                    (LANGGRAPH, "langgraph"), (MEMORY, "memory")))
                + f"; each in its own process and file; the {GRAPH_THREADS}-thread rows invoke "
                f"from {GRAPH_THREADS} threads at once on the worker's one checkpointer")

    def configurations(self) -> list[tuple[list[Config], float]]:
        """Four groups, each with its run time. Compared configurations sit next to each
        other (bare and 1 thread, LangGraph 8 and Saver 8, each get and each list, the graph
        steps of each durability), so their runs are one run apart in either order; every put
        row is at most two runs from a bare run."""
        seconds = self.args.seconds
        steps_groups = self.steps_groups(seconds)
        if self.only_steps:
            return steps_groups
        fd, block = self.fsync_fd, b"\0" * 4096
        bare_read, bare_big, s_read, s_big = (self.bare_read, self.bare_big, self.s_read,
                                              self.s_big)
        p4x4, p20x1 = self.gangs
        peer = self.peer
        assert peer is not None

        def in_process(ops: Sequence[Callable[[], object]]) -> Callable[[float], Outcome]:
            return lambda seconds: run_threads(ops, seconds=seconds)

        def fsync_op() -> None:
            os.write(fd, block)
            os.fsync(fd)

        def bare_op(conn: apsw.Connection, data: bytes) -> Callable[[], None]:
            execute = conn.execute

            def op() -> None:
                execute("BEGIN IMMEDIATE")
                execute("INSERT INTO t (thread_id, data) VALUES (?, ?)", (core.THREAD, data))
                execute("COMMIT")
            return op

        packb, state, execute = msgpack.packb, self.small, self.bare_packb.execute

        def bare_packb_op() -> None:
            data = packb(state)
            execute("BEGIN IMMEDIATE")
            execute("INSERT INTO t (thread_id, data) VALUES (?, ?)", (core.THREAD, data))
            execute("COMMIT")

        def bare_group_ops(threads: int) -> list[Callable[[], object]]:
            put, data = self.bare_group.put, self.small_bytes
            return [lambda thread_id=f"g{i:02d}": put(thread_id, data) for i in range(threads)]

        def saver_ops(saver: Saver, threads: int, name: str, state: dict
                      ) -> list[Callable[[], object]]:
            def op_for(thread_id: str) -> Callable[[], object]:
                put = saver.put
                return lambda: put(thread_id, state, metadata=METADATA)
            return [op_for(f"{name}-t{i:02d}") for i in range(threads)]

        def bare_get() -> None:
            msgpack.unpackb(bare_read.execute(
                "SELECT data FROM t WHERE thread_id = ? ORDER BY id DESC LIMIT 1",
                (core.THREAD,)).fetchone()[0])

        def bare_list() -> None:
            unpackb = msgpack.unpackb
            for (data,) in bare_read.execute(
                    "SELECT data FROM t WHERE thread_id = ? ORDER BY id DESC LIMIT 100",
                    (core.THREAD,)):
                unpackb(data)

        # Between runs (untimed) each 1 MiB contender deletes what it wrote, so the files do
        # not grow by ~50 MiB a run; all three then write into freed pages alike.
        def clear_bare_big() -> None:
            with bare_big:
                bare_big.execute("DELETE FROM t")

        def clear_saver_big() -> None:
            s_big.delete_thread(f"{BIG_THREAD}-t00")

        def lg_config(key: str, name: str, after: Callable[[], None] | None = None) -> Config:
            return Config(key, lambda seconds: peer.run(name, seconds), after)

        lg = self.peer_installed
        bare_put = in_process([bare_op(self.bare_put, self.small_bytes)])
        # The bare baseline runs twice a round, so every put row has a bare run at most two
        # runs away (disk contention on a shared VM comes and goes within a round); the second
        # run's ratio to the first shows how much the disk drifted inside the round.
        put_group = [Config("fsync", in_process([fsync_op])),
                     Config("bare", bare_put),
                     Config("bare_packb", in_process([bare_packb_op])),
                     Config("saver1", in_process(saver_ops(self.s1, 1, "s1", self.small))),
                     *([lg_config("lg1", "put1"), lg_config("lg8", "put8")] if lg else []),
                     Config("bare_group8", in_process(bare_group_ops(8))),
                     Config("saver8", in_process(saver_ops(self.s8, 8, "s8", self.small))),
                     Config("bare2", bare_put),
                     Config("saver32", in_process(saver_ops(self.s32, 32, "s32", self.small))),
                     Config("p4x4", p4x4.run), Config("p20x1", p20x1.run)]
        read_group = [Config("bare_get", in_process([bare_get])),
                      Config("saver_get", in_process([lambda: s_read.get(LIST_THREAD)])),
                      *([lg_config("lg_get", "get"), lg_config("lg_list", "list")] if lg
                        else []),
                      Config("saver_list", in_process(
                          [lambda: list(s_read.list(LIST_THREAD, namespace="", limit=100))])),
                      Config("bare_list", in_process([bare_list]))]
        big_group = [Config("bare_big", in_process([bare_op(bare_big, self.big_bytes)]),
                            clear_bare_big),
                     Config("saver_big", in_process(saver_ops(s_big, 1, BIG_THREAD, self.big)),
                            clear_saver_big),
                     *([lg_config("lg_big", "big", lambda: peer.cleanup("big"))] if lg else [])]

        for config in put_group:  # errors on opening count against the row
            for gang, key in ((p4x4, "p4x4"), (p20x1, "p20x1")):
                if config.key == key:
                    config.errors.update(gang.open_errors)
                    config.first_error = gang.first_error
        return [(put_group, seconds), (read_group, seconds / 2), (big_group, seconds),
                *steps_groups]

    def steps_groups(self, seconds: float) -> list[tuple[list[Config], float]]:
        """The graph steps: 1 thread (ours and LangGraph's SqliteSaver), then 8 threads on one
        checkpointer (the same two and InMemorySaver, the ceiling)."""
        def steps(key: str, kind: str, durability: str, threads: int = 1) -> list[Config]:
            graph = self.graphs[kind]
            after = graph.cleanup if kind == "memory" else None
            return [Config(key, lambda seconds: graph.run(durability, seconds, threads),
                           after)] if graph.installed else []

        # sync pair, then async pair, mirrored: ours, LangGraph's, LangGraph's, ours.
        steps_group = [*steps("saver_steps_sync", "sqlitesaver", "sync"),
                       *steps("lg_steps_sync", "langgraph", "sync"),
                       *steps("lg_steps_async", "langgraph", "async"),
                       *steps("saver_steps_async", "sqlitesaver", "async")]
        n = GRAPH_THREADS
        many_group = [*steps("saver_steps8_sync", "sqlitesaver", "sync", n),
                      *steps("lg_steps8_sync", "langgraph", "sync", n),
                      *steps("mem_steps8_sync", "memory", "sync", n),
                      *steps("mem_steps8_async", "memory", "async", n),
                      *steps("lg_steps8_async", "langgraph", "async", n),
                      *steps("saver_steps8_async", "sqlitesaver", "async", n)]
        return [(steps_group, seconds), (many_group, seconds)]

    def measure(self, groups: list[tuple[list[Config], float]]) -> None:
        """A short untimed pass (files, caches, the children's first wake-up), then the rounds:
        each group in turn, its configurations in order, reversed every other round."""
        for group, seconds in groups:
            for config in group:
                config.measure(seconds / 4, record=False)
        rounds = self.args.rounds
        for r in range(rounds):
            for group, seconds in groups:
                for config in (group if r % 2 == 0 else group[::-1]):
                    config.measure(seconds, record=True)
            print(f"  round {r + 1}/{rounds} done, {time.monotonic() - self.began:.0f} s, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)

    def write_json(self, table: list[dict[str, Any]], elapsed: float) -> None:
        args = self.args
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({
                "command": sys.argv,
                "environment": {
                    "python": platform.python_version(), "apsw": apsw.apsw_version(),
                    "sqlite": apsw.sqlite_lib_version(),
                    "msgpack": ".".join(map(str, msgpack.version)),
                    "sqlitesaver": sqlitesaver.__version__, "code": self.code,
                    "cores": os.cpu_count(),
                    "filesystem": filesystem_of(self.dir),
                    "langgraph": self.peer.info if self.peer else None,
                    "graph_steps": {kind: graph.info for kind, graph in self.graphs.items()}},
                "settings": {"rounds": args.rounds, "seconds": args.seconds,
                             "read_seconds": args.seconds / 2, "list_size": args.list_size,
                             "quick": args.quick, "only": args.only,
                             "saver": getattr(self, "live", None),
                             "graph_nodes": GRAPH_NODES, "graph_threads": GRAPH_THREADS},
                "state_bytes": None if self.only_steps else {"small": len(self.small_bytes),
                                                             "big": len(self.big_bytes)},
                "metadata": METADATA,
                "rows": table,
                "elapsed_s": elapsed}, f, indent=1)
        print(f"figures written to {args.json}")

    @staticmethod
    def rows(installed: bool) -> list[Row]:
        """The table, in order. A baseline row has no ratio of its own column (it is 1)."""
        def lg(key: str) -> str | None:
            return key if installed else None

        return [
            Row("fsync limit: append 4 KiB + fsync", "fsync", bare="bare"),
            Row("bare APSW put (BEGIN IMMEDIATE; INSERT; COMMIT)", "bare", baseline=True),
            Row("bare APSW put + msgpack.packb of the state", "bare_packb", bare="bare"),
            Row(f"{LANGGRAPH} put, 1 thread", "lg1", bare="bare"),
            Row("sqlitesaver put, 1 thread", "saver1", bare="bare", langgraph=lg("lg1"),
                target=Target("bare", 0.9), ceiling="bare_packb"),
            Row("bare APSW put, 2nd run mid-round (vs 1st)", "bare2", bare="bare"),
            Row(f"{LANGGRAPH} put, 8 threads", "lg8", bare="bare2"),
            Row("bare APSW group commit, 8 threads", "bare_group8", bare="bare2",
                langgraph=lg("lg8")),
            Row("sqlitesaver put, 8 threads", "saver8", bare="bare2", langgraph=lg("lg8"),
                target=Target("langgraph", 5.0), ceiling="bare_group8"),
            Row("sqlitesaver put, 32 threads", "saver32", bare="bare2"),
            Row("sqlitesaver put, 4 processes x 4 threads", "p4x4", bare="bare2"),
            Row("sqlitesaver put, 20 processes x 1 thread", "p20x1", bare="bare2",
                target=Target("errors", 0)),
            Row("bare APSW get latest (SELECT + unpackb)", "bare_get", baseline=True),
            Row(f"{LANGGRAPH} get_tuple latest", "lg_get", bare="bare_get"),
            Row("sqlitesaver get latest", "saver_get", bare="bare_get", langgraph=lg("lg_get"),
                target=Target("langgraph", 2.0), ceiling="bare_get"),
            Row("bare APSW list 100 (SELECT + unpackb)", "bare_list", baseline=True),
            Row(f"{LANGGRAPH} list(limit=100)", "lg_list", bare="bare_list"),
            Row("sqlitesaver list(limit=100)", "saver_list", bare="bare_list",
                langgraph=lg("lg_list"), target=Target("langgraph", 5.0),
                ceiling="bare_list"),
            Row("bare APSW put 1 MiB", "bare_big", baseline=True),
            Row(f"{LANGGRAPH} put 1 MiB", "lg_big", bare="bare_big"),
            Row("sqlitesaver put 1 MiB", "saver_big", bare="bare_big", langgraph=lg("lg_big")),
            # Graph steps: LangGraph's checkpointer and ours each in a worker of its own; the
            # ratio is skipped when LangGraph's is not installed (no "lg_steps_*" Config).
            Row(f"{LANGGRAPH} graph steps, durability sync", "lg_steps_sync"),
            Row("sqlitesaver graph steps, durability sync", "saver_steps_sync",
                langgraph="lg_steps_sync"),
            Row(f"{LANGGRAPH} graph steps, durability async", "lg_steps_async"),
            Row("sqlitesaver graph steps, durability async", "saver_steps_async",
                langgraph="lg_steps_async"),
            # Many graphs at once (issue #14): 8 threads invoking on one checkpointer; the
            # InMemorySaver rows are the ceiling of the target.
            *(row for durability in ("sync", "async") for row in (
                Row(f"{MEMORY} graph steps, {GRAPH_THREADS} threads, {durability} (ceiling)",
                    f"mem_steps8_{durability}", langgraph=f"lg_steps8_{durability}"),
                Row(f"{LANGGRAPH} graph steps, {GRAPH_THREADS} threads, {durability}",
                    f"lg_steps8_{durability}"),
                Row(f"sqlitesaver graph steps, {GRAPH_THREADS} threads, {durability}",
                    f"saver_steps8_{durability}", langgraph=f"lg_steps8_{durability}",
                    target=Target("langgraph", 1.2), ceiling=f"mem_steps8_{durability}"))),
        ]

    @staticmethod
    def report(rows: list[Row], configs: dict[str, Config]) -> list[dict[str, Any]]:
        """Print the table and the per-round figures; return the same as JSON-ready dicts."""
        table = []
        labels = {row.key: row.label for row in rows}
        for row in rows:
            config = configs.get(row.key)
            entry: dict[str, Any] = {"measurement": row.label, "key": row.key}
            if config is None:  # a LangGraph row without LangGraph
                entry.update(rate=None, result=NOT_INSTALLED)
                table.append(entry)
                continue
            rates = config.rates
            rate = median(rates)
            entry.update(rate=rate, rates=rates,
                         spread=(max(rates) - min(rates)) / rate if rate else None,
                         errors=dict(config.errors), first_error=config.first_error,
                         baseline=row.baseline)
            for column, base in (("vs_bare", row.bare), ("vs_langgraph", row.langgraph)):
                if base is not None and base in configs:
                    ratios = paired(rates, configs[base].rates)
                    entry[column], entry[column + "_rounds"] = median(ratios), ratios
            target = row.target
            if target is not None:
                entry["target"] = target.text()
                if target.kind == "errors":
                    entry["result"] = "PASS" if sum(config.errors.values()) <= target.value \
                        else "FAIL"
                else:
                    ratio = entry.get("vs_bare" if target.kind == "bare" else "vs_langgraph")
                    entry["result"] = "SKIP" if ratio is None \
                        else "PASS" if ratio >= target.value else "FAIL"
                    base = row.bare if target.kind == "bare" else row.langgraph
                    if row.ceiling in configs and base in configs:
                        ceiling = paired(configs[row.ceiling].rates, configs[base].rates)
                        entry.update(ceiling=median(ceiling), ceiling_rounds=ceiling,
                                     ceiling_of=labels[row.ceiling],
                                     target_above_ceiling=target.value > median(ceiling))
            table.append(entry)

        def ratio_text(value: float | None) -> str:
            return "" if value is None else f"{value:.2f}x"

        width = max(len(row.label) for row in rows)
        print()
        print(f"| {'measurement':{width}} | {'ops/s':>13} | spread | vs bare APSW | "
              f"vs LangGraph | errors | target            | result |")
        print(f"|{'-' * (width + 2)}|{'-' * 15}|--------|--------------|--------------|"
              f"--------|-------------------|--------|")
        for entry in table:
            label = entry["measurement"]
            if entry["rate"] is None:
                print(f"| {label:{width}} | {NOT_INSTALLED:>13} | {'':6} | {'':12} | "
                      f"{'':12} | {'':6} | {'':17} | {'':6} |")
                continue
            vs_bare = "baseline" if entry["baseline"] else ratio_text(entry.get("vs_bare"))
            print(f"| {label:{width}} | {entry['rate']:13,.0f} | {entry['spread']:6.0%} | "
                  f"{vs_bare:>12} | {ratio_text(entry.get('vs_langgraph')):>12} | "
                  f"{sum(entry['errors'].values()):6,} | {entry.get('target', ''):17} | "
                  f"{entry.get('result', ''):6} |")
        print("ops/s: median of the rounds (a list is one call returning 100 checkpoints; "
              f"a graph step is one node run, {GRAPH_NODES} per invoke); spread: (max - min) / "
              "median;\nratios: median of the per-round ratios; a put "
              "row's bare run is the one above it in the table (1st: before it in the round, "
              "2nd: mid-round);\nerrors: every run of the row, warm-up and opening included")
        ceilings = [entry for entry in table if "ceiling" in entry]
        if ceilings:
            print()
            print("targets against their ceilings (a ceiling: the same ratio, paired by round, "
                  "for a baseline that does\nless than the row must, so a target above its "
                  "ceiling is out of reach on this machine):")
            for entry in ceilings:
                print(f"  {entry['measurement']}: target {entry['target']}; ceiling "
                      f"{entry['ceiling']:.2f}x ({entry['ceiling_of']})"
                      + ("; the target is above it" if entry["target_above_ceiling"] else ""))
        print()
        print("per round (ops/s; then the per-round ratios):")
        for entry in table:
            if entry["rate"] is None:
                continue
            line = f"  {entry['measurement']}: " + " ".join(f"{r:,.0f}" for r in entry["rates"])
            for column, name in (("vs_bare", "bare"), ("vs_langgraph", "LangGraph")):
                if entry.get(column + "_rounds"):
                    line += f"; vs {name} " + " ".join(
                        f"{x:.2f}" for x in entry[column + "_rounds"])
            print(line)
        for entry in table:
            if entry.get("errors"):
                print(f"errors in {entry['measurement']}: "
                      + ", ".join(f"{n} x {name}" for name, n in sorted(entry["errors"].items()))
                      + f"; first: {entry['first_error']}")
        return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="rounds (default 8; --quick 2)")
    parser.add_argument("--seconds", type=float,
                        help="seconds per write configuration per round, half that for reads "
                             "(default 1.0; --quick 0.15)")
    parser.add_argument("--list-size", type=int,
                        help="checkpoints in the thread read by get and list (default 1000; "
                             "--quick 150)")
    parser.add_argument("--dir", help="where to put the databases (default: a temp dir; the "
                                      "fsync limit is measured there too)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--quick", action="store_true",
                        help="small counts: a smoke test of a few seconds, figures not meaningful")
    parser.add_argument("--only", choices=("graph-steps",),
                        help="graph-steps: only the LangGraph graph-steps rows (1 and "
                             f"{GRAPH_THREADS} threads), starting only their workers")
    args = parser.parse_args()
    defaults = (2, 0.15, 150) if args.quick else (8, 1.0, 1000)
    for name, default in zip(("rounds", "seconds", "list_size"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.rounds < 1 or args.seconds <= 0 or args.list_size < 100:
        parser.error("--rounds must be >= 1, --seconds > 0, --list-size >= 100")
    directory = tempfile.mkdtemp(prefix="sqlitesaver-concurrency-", dir=args.dir)
    bench = Bench(args, directory)
    try:
        return bench.run()
    finally:
        bench.close()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
