"""Concurrency benchmark (issues #5 and #15): many writers, reads, a 1 MiB state, graph steps.

    python bench/run.py [--rounds 8] [--seconds 1.0] [--list-size 1000] [--dir DIR]
                        [--json FILE] [--quick] [--only graph-steps]
    python bench/run.py --backend postgres [...]   (bench/postgres.py: the PostgreSQL rows)

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
  msgpack, no checksum): the least a store of Python values over msgpack does per put, and the
  base of the 1-thread put's second target.
- The required work of a put, 4 KiB and 1 MiB (bench/core.py's ``twin_put_op``, bare APSW on
  a file with Saver's schema and PRAGMAs): what issue #15 requires of ``Saver.put`` and no
  more: ``codec.encode`` of the state (exact types), the row's checksum and ``created_at``,
  and the Saver's own statements (the next seq, the INSERT) in ``BEGIN IMMEDIATE ... COMMIT``;
  none of the write protocol (the lock, group commit, busy retries, interruption safety, the
  WAL bound), argument checks or returned reference. It does strictly less than the Saver's
  put and more than bare+packb, so it is the ceiling of the 1-thread and 1 MiB put targets
  (the tightest measured here: before session 27 these were bare+packb and the bare 1 MiB
  put, which skip the codec's and the checksum's work).
- bare APSW group commit, 8 threads (bench/core.py's ``BareGroupCommit``: rows queued by 8
  threads, inserted and committed in batches by one leader with none of a store's other work),
  twice: with pre-encoded rows, and with each calling thread running ``msgpack.packb`` on the
  state before it queues (the encoding in the callers, as a store's callers encode): the
  latter is the base of the 8-thread put's second target.
- The required work of 8 threads' puts (bench/core.py's ``TwinGroupCommit``): that group
  commit on a file with Saver's schema, each caller running ``codec.encode`` before it
  queues, and the leader writing each row as the Saver's write path does (a ``SAVEPOINT``
  per member, so that a failing member fails alone; ``created_at``, the next seq, the
  checksum, the Saver's INSERT). None of the Saver's write protocol around that. The ceiling
  of both 8-thread targets (before session 27: the group commit with ``msgpack.packb``).
- LangGraph ``SqliteSaver`` (stdlib ``sqlite3``; the ``bench`` extra): put at 1 and 8 threads,
  ``get_tuple`` of the latest without and with pending writes, ``list(limit=100)``, a 1 MiB
  put. Always in a separate process on separate files (see bench/_langgraph_peer.py); "not
  installed" rows if it is missing.
- sqlitesaver ``Saver``, public API only: put at 1, 8 and 32 threads sharing one Saver; 4
  processes x 4 threads and 20 processes x 1 thread, one Saver per process on one file
  (bench/_saver_worker.py); ``get`` of the latest without and with pending writes and
  ``list(limit=100)``; a 1 MiB state put.
- sqlitesaver's LangGraph adapter (``sqlitesaver.langgraph.SqliteSaver`` on a Saver of its own
  file, in this process: importing and using it loads no stdlib ``sqlite3``, which the run
  checks): ``get_tuple`` of the latest without and with pending writes. "not installed" rows if
  LangGraph is missing here.
- Reads: each store reads threads of ``--list-size`` checkpoints, one without pending writes
  and one whose latest checkpoint has 2 (bench/_checkpoint.py's: a message appended to a list
  channel and a status; ``put_writes`` of small values, like a LangGraph step's). Both adapters
  store the same LangGraph checkpoint (``empty_checkpoint()`` whose ``channel_values`` are the
  4 KiB state) through their own ``put`` and the writes through their own ``put_writes``; the
  core Saver stores the state itself with ``put`` and the two values with ``put_writes``; bare
  APSW stores the msgpack bytes, and the writes as two msgpack blobs in a table of their own.
  The bare ceilings: ``SELECT`` of the latest row + ``unpackb``; with writes, that ``SELECT``,
  a ``SELECT`` of its writes, and ``unpackb`` of each of the three blobs. No parent ids.
- 1 MiB state: the 4 KiB state's messages repeated to 1 MiB encoded (still JSON-like); after
  each run every 1 MiB contender deletes what it wrote (untimed), so files stay small.
- LangGraph graph steps/s (issue #6; langgraph, the ``bench`` extra): bench/langgraph_steps.py's
  graph (bench/_graph_worker.py: a ``StateGraph`` chain of 4 nodes, each appending a message to
  a state with 2 KiB of context) invoked again and again, each time on a new thread, through
  ``sqlitesaver.langgraph.SqliteSaver`` and through LangGraph's ``SqliteSaver``, both opened
  with ``from_conn_string`` (LangGraph's ``synchronous`` raised to FULL should the build's
  default be lower; read back and printed); as the ceiling, through the bare durable
  checkpointer (bench/_bare_checkpointer.py: LangGraph's SqliteSaver on APSW with group commit
  and a reader per thread, ``synchronous=FULL``, nothing else: no checksums, exact types, ids,
  savepoints or rendezvous; each call still returns after its COMMIT); and through LangGraph's
  ``InMemorySaver`` (no file, no SQLite: what LangGraph's runtime reaches when storing costs
  next to nothing, a looser bound; it forgets its threads after every run, untimed). The bare
  checkpointer does strictly less than ours and stores as durably, so it is the binding
  ceiling (session 13; InMemorySaver was the ceiling before). A step is one node run:
  steps/s is 4 x the completed invokes over the run. Graph durability ``sync`` (each
  checkpoint committed before the next step starts) and ``async`` (committed while the next
  step runs, LangGraph's default). Each checkpointer runs in a worker process of its own, on
  its own file, which loads only its own SQLite library; "not installed" rows if LangGraph or
  its SqliteSaver is missing, and a worker that cannot open its checkpointer or run its first
  invokes stops the run. One graph at a time (1 thread), then many graphs at once (issue #14):
  the same graph invoked from 8 threads at once on the one checkpointer of each worker (a
  server sharing its checkpointer between requests; LangGraph's ``from_conn_string`` opens its
  connection with ``check_same_thread=False`` and its own lock serializes the threads). Each
  group runs ours, LangGraph's, the bare one, InMemorySaver (sync), InMemorySaver, the bare
  one, LangGraph's, ours (async), reversed every other round.

``--only graph-steps`` runs the graph-steps rows alone (1 and 8 threads; only the four graph
workers are started).

Threads and processes are all started and parked first, released together (an Event, or one
command line per process on its pipe; no sleeps), and stopped at one shared deadline; a rate is
completed operations over the time from release to the last one's finish. Each writer thread
writes its own thread id. Errors are counted by exception type, including those on opening and
in the warm-up pass, and never stop a round (a thread stops only on a Saver that shut down).

Targets (issue #15, which replaces issue #5's; issue #14's many-graphs target kept), each
printed with its own PASS/FAIL on a line of the table and beside its ceiling: the same ratio,
paired by round, for a baseline that does strictly less than the row must. A target above its
ceiling cannot be met on that machine by any store that has to do the row's work; a ceiling
that is the target's own base is 1.00x by construction; a ceiling row's "vs LangGraph"
column is the ceiling of the LangGraph targets compared with it. Per row, each target (ceiling):

- sqlitesaver put, 1 thread: >= 1x LangGraph (ceiling: required work of a put (codec,
  checksum, Saver's SQL; no write protocol)); >= 0.85x bare+packb (ceiling: required work of
  a put (codec, checksum, Saver's SQL; no write protocol))
- sqlitesaver put, 8 threads: >= 2.2x LangGraph (ceiling: required work of 8 threads' puts
  (codec, checksum, Saver's SQL; group commit)); >= 0.6x group+packb (ceiling: required work
  of 8 threads' puts (codec, checksum, Saver's SQL; group commit))
- sqlitesaver put, 20 processes x 1 thread: 0 errors
- sqlitesaver get latest: >= 0.9x LangGraph (ceiling: bare APSW get latest (SELECT + unpackb))
- sqlitesaver.langgraph SqliteSaver get_tuple latest: >= 0.9x LangGraph (ceiling: bare APSW get
  latest (SELECT + unpackb))
- sqlitesaver get latest, 2 pending writes: >= 0.9x LangGraph (ceiling: bare APSW get latest +
  its 2 writes (2 SELECTs + 3 unpackb))
- sqlitesaver.langgraph SqliteSaver get_tuple latest, 2 pending writes: >= 0.9x LangGraph
  (ceiling: bare APSW get latest + its 2 writes (2 SELECTs + 3 unpackb))
- sqlitesaver list(limit=100): >= 1.2x LangGraph (ceiling: bare APSW list 100 (SELECT +
  unpackb))
- sqlitesaver put 1 MiB: >= 1x LangGraph (ceiling: required work of a 1 MiB put (codec,
  checksum, Saver's SQL; no write protocol))
- sqlitesaver graph steps, 1 thread, sync: >= 1x LangGraph (ceiling: bare durable checkpointer
  graph steps, 1 thread, sync (ceiling))
- sqlitesaver graph steps, 1 thread, async: >= 1x LangGraph (ceiling: bare durable
  checkpointer graph steps, 1 thread, async (ceiling))
- sqlitesaver graph steps, 8 threads, sync: >= 1.2x LangGraph (ceiling: bare durable
  checkpointer graph steps, 8 threads, sync (ceiling))
- sqlitesaver graph steps, 8 threads, async: >= 1.2x LangGraph (ceiling: bare durable
  checkpointer graph steps, 8 threads, async (ceiling))

"LangGraph" is LangGraph's ``SqliteSaver`` on the same row's work (its get_tuple, with pending
writes or without, for both get rows); "bare+packb" and "group+packb" are the ceilings'
baselines themselves. ``--json FILE`` also writes every figure: per row its rates, ratios and
``targets``, one verdict each (text, measured ratio per round and median or error count,
result, ceiling per round and median, whether the target is above it), and the row's
``result`` over them (FAIL if one failed, SKIP if one could not be judged). Nothing here
asserts; the exit status is 0 whatever the figures, 1 only if the run itself broke.
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

import _checkpoint  # noqa: E402  (the LangGraph checkpoints both adapters store)
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
BARE_CP = "bare durable checkpointer"  # bench/_bare_checkpointer.py
ADAPTER = "sqlitesaver.langgraph SqliteSaver"
# bench/core.py's twin_put_op: what a put must do, without the write protocol around it.
REQUIRED_PUT = "required work of a put (codec, checksum, Saver's SQL; no write protocol)"
# bench/core.py's TwinGroupCommit: the same at 8 threads, in BareGroupCommit's batches.
REQUIRED_PUTS_8 = "required work of 8 threads' puts (codec, checksum, Saver's SQL; group commit)"
WRITES_THREAD = "read-writes"  # the core read rows with pending writes
AD_THREAD, AD_WRITES_THREAD = "adapter-read", "adapter-read-writes"
BARE_WRITES_THREAD = f"{core.THREAD}-writes"
GRAPH_KINDS = ("sqlitesaver", "langgraph", "memory", "bare")


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


@dataclass(frozen=True)
class Target:
    """One target of a row (a row may carry several, each judged on its own).

    ``kind`` "ratio": the row's rate over the rate of the Config ``base``, paired by round,
    must be at least ``value``; ``versus`` names ``base`` in the target's text; ``ceiling`` is
    the Config of a baseline doing strictly less work than the row must, whose ratio to
    ``base`` (paired the same way) is printed beside the target: a target above it cannot be
    met on that machine by any store doing the row's work. The ceiling may be ``base`` itself
    (then it is 1.00x: the base is the least that work can cost). ``base_does_less``: the base
    itself does strictly less than the row (LangGraph's savers: no checksums, exact types or
    recovery), so it is a ceiling too, at 1.00x by construction: a target is above the ceilings
    only if it is above both (a ceiling baseline slower than the base proves nothing about a
    target of 1x). ``kind`` "errors": at most ``value`` errors over every run of the row,
    warm-up and opening included."""

    kind: str
    value: float
    base: str | None = None
    versus: str = ""
    ceiling: str | None = None
    base_does_less: bool = False

    @classmethod
    def ratio(cls, value: float, base: str, versus: str, ceiling: str, *,
              base_does_less: bool = False) -> "Target":
        return cls("ratio", value, base, versus, ceiling, base_does_less)

    @classmethod
    def errors(cls, most: int = 0) -> "Target":
        return cls("errors", most)

    def text(self) -> str:
        if self.kind == "errors":
            return "0 errors" if self.value == 0 else f"<= {self.value:g} errors"
        return f">= {self.value:g}x {self.versus}"

    def judge(self, key: str, configs: dict[str, "Config"],
              labels: dict[str, str]) -> dict[str, Any]:
        """The target's JSON-ready verdict for the row measuring Config ``key``: its text,
        the measured ratio (per round and median) or error count, PASS/FAIL (SKIP when the
        row or its base was not measured) and, for a ratio, its ceiling."""
        verdict: dict[str, Any] = {"target": self.text(), "kind": self.kind,
                                   "value": self.value}
        config = configs.get(key)
        if self.kind == "errors":
            if config is None:
                verdict["result"] = "SKIP"
            else:
                count = sum(config.errors.values())
                verdict.update(errors=count, result="PASS" if count <= self.value else "FAIL")
            return verdict
        base = configs.get(self.base) if self.base else None
        verdict.update(base=self.base, base_of=labels.get(self.base or "", self.base))
        ratio = None
        if config is not None and base is not None:
            ratios = paired(config.rates, base.rates)
            ratio = median(ratios)
            verdict.update(ratio=ratio, ratio_rounds=ratios)
        verdict["result"] = "SKIP" if ratio is None else "PASS" if ratio >= self.value \
            else "FAIL"
        if self.ceiling is not None:
            verdict["ceiling_of"] = labels.get(self.ceiling, self.ceiling)
            if self.ceiling in configs and base is not None:
                ceilings = paired(configs[self.ceiling].rates, base.rates)
                ceiling = median(ceilings)
                highest = (None if ceiling is None else
                           max(ceiling, 1.0) if self.base_does_less else ceiling)
                verdict.update(ceiling=ceiling, ceiling_rounds=ceilings,
                               base_is_a_ceiling=self.base_does_less,
                               target_above_ceiling=highest is not None
                               and self.value > highest)
        return verdict


@dataclass
class Row:
    """A line of the table: the configuration it shows, the baselines of its two ratio
    columns (None: no such ratio) and its targets (each printed on a line of its own); a
    ``baseline`` row prints "baseline" as its bare ratio."""

    label: str
    key: str                      # the Config measured
    bare: str | None = None       # the Config of the "vs bare APSW" column
    langgraph: str | None = None  # the Config of the "vs LangGraph" column
    targets: tuple[Target, ...] = ()
    baseline: bool = False

    def keys(self) -> set[str]:
        """Every Config the row shows or compares with."""
        return {key for key in (self.key, self.bare, self.langgraph,
                                *(t.base for t in self.targets),
                                *(t.ceiling for t in self.targets)) if key is not None}


def overall(results: Sequence[str]) -> str:
    """A row's result over its targets: FAIL if one failed, else SKIP if one was not
    judged, else PASS."""
    return "FAIL" if "FAIL" in results else "SKIP" if "SKIP" in results else "PASS"


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
    """Which sqlitesaver was measured: git HEAD, whether the package differs from it, a hash
    of its sources (Python and C) as read now (the time of import, within a second or so), and
    which of its optional C extensions this process uses. A working
    tree others edit during the day makes "the library as it is today" ambiguous otherwise."""
    package = os.path.dirname(os.path.abspath(sqlitesaver.__file__))
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith((".py", ".c"))):
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
    # The optional C extensions (setup.py): a run without them measures the Python walks.
    # A build whose SOURCE_SHA256 is not its source's now is named stale (an in-place build
    # at the checkout's root is what a run from the checkout uses).
    from sqlitesaver import _fastpack
    from sqlitesaver.codec import scan
    built = []
    for name, module, source in (("scan", scan._c, os.path.join(package, "codec", "_scan.c")),
                                 ("shallow", _fastpack._c, os.path.join(package, "_shallow.c"))):
        if module is not None:
            stale = os.path.exists(source) and module.SOURCE_SHA256 != hashlib.sha256(
                open(source, "rb").read()).hexdigest()
            built.append(name + (" (a stale build)" if stale else ""))
    c_extensions = "C extensions: " + (", ".join(built) if built else "none (Python walks)")
    if head is None:
        where = "not a git checkout"
    else:
        dirty = git("status", "--porcelain", "--", ".")
        where = f"git {head}" + (", with uncommitted changes in sqlitesaver/" if dirty else
                                 ", sqlitesaver/ as committed")
    return f"{where}; sources sha256 {digest.hexdigest()[:12]}; {c_extensions}"


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
        self.adapter: Any = None  # sqlitesaver.langgraph.SqliteSaver, if LangGraph is here
        self.adapter_error: str | None = None
        self.ad_read: dict | None = None    # the configs of its two read threads
        self.ad_writes: dict | None = None
        self.missing: set[str] = set()  # Configs not measured: their library is not installed
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
        rows = self.rows()
        if self.only_steps:
            rows = [row for row in rows if "_steps" in row.key]
        self.check_rows(rows, {c.key: c for group, _ in groups for c in group}, self.missing)
        self.print_workload()
        self.measure(groups)
        table = self.report(rows, {c.key: c for group, _ in groups for c in group})
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
        here = "this process" + (" (with sqlitesaver.langgraph)" if self.adapter is not None
                                 else "")
        no_sqlite3 = [here] + ([] if self.only_steps else ["the Saver workers"]) \
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
        self.bare_group_packb = core.BareGroupCommit(self.bare("bare-group-packb.db", False))
        self.bare_read = self.bare("bare-read.db", True)  # reads need (thread_id, id)
        self.bare_big = self.bare("bare-big.db", False)
        # The required work of a put (bench/core.py's twin_put_op), on Saver's schema.
        self.twin, self.twin_big = (core.open_twin(self.path(name), "full")
                                    for name in ("twin.db", "twin-big.db"))
        self.twin_group_conn = core.open_twin(self.path("twin-group.db"), "full")
        self.conns += [self.twin, self.twin_big, self.twin_group_conn]
        self.twin_group = core.TwinGroupCommit(self.twin_group_conn)
        self.s1, self.s8, self.s32 = (self.saver(f"saver-{n}.db") for n in (1, 8, 32))
        self.s_read, self.s_big = self.saver("saver-read.db"), self.saver("saver-big.db")
        self.live = self.s1.settings()["writer"]
        for conn in self.conns:  # the bare baselines run with exactly the Saver's settings
            if pragmas.read_back(conn) != self.live:
                raise SystemExit(f"bare APSW settings {pragmas.read_back(conn)} differ "
                                 f"from the Saver's {self.live}")

        # The read threads: the same state and metadata, written in one transaction (setup);
        # the latest checkpoint of the second also has bench/_checkpoint.py's two writes.
        with self.s_read.transaction():
            for thread_id in (LIST_THREAD, WRITES_THREAD):
                for _ in range(args.list_size):
                    latest = self.s_read.put(thread_id, self.small, metadata=METADATA)
        self.s_read.put_writes(WRITES_THREAD, latest.checkpoint_id, _checkpoint.TASK_ID,
                               _checkpoint.WRITES)
        with self.bare_read:
            # The bare writes: msgpack blobs keyed by their checkpoint's row id.
            self.bare_read.execute(
                "CREATE TABLE w (checkpoint_id INTEGER, task_id TEXT, idx INTEGER, "
                "channel TEXT, data BLOB, PRIMARY KEY (checkpoint_id, task_id, idx))")
            for thread_id in (core.THREAD, BARE_WRITES_THREAD):
                self.bare_read.executemany("INSERT INTO t (thread_id, data) VALUES (?, ?)",
                                           [(thread_id, self.small_bytes)] * args.list_size)
            latest_row = self.bare_read.last_insert_rowid()
            self.bare_read.executemany(
                "INSERT INTO w VALUES (?, ?, ?, ?, ?)",
                [(latest_row, _checkpoint.TASK_ID, i, channel, msgpack.packb(value))
                 for i, (channel, value) in enumerate(_checkpoint.WRITES)])
        if len(list(self.s_read.list(LIST_THREAD, namespace="", limit=100))) != 100:
            raise SystemExit("the Saver's read thread does not read back")
        got = self.s_read.get(WRITES_THREAD)
        if got is None or [(w.channel, w.value) for w in got.pending_writes] \
                != _checkpoint.WRITES:
            raise SystemExit("the Saver's read thread with writes does not read back")
        self.open_adapter()

        # Now wait for the children.
        ready = [reply for gang in self.gangs for reply in gang.wait_ready()]
        if any(reply.get("sqlite3_loaded") for reply in ready):
            raise SystemExit("a Saver worker loaded the stdlib sqlite3: results void")
        self.peer.wait_ready()
        for graph in self.graphs.values():
            graph.wait_ready()

    def open_adapter(self) -> None:
        """sqlitesaver's LangGraph adapter, in this process (importing it loads no stdlib
        ``sqlite3``; checked here and again at the end), on a file of its own: two threads of
        bench/_checkpoint.py's checkpoints put through its ``put``, the latest of the second
        with two writes through ``put_writes``, as the LangGraph peer stores its own."""
        try:
            from sqlitesaver.langgraph import SqliteSaver
            _checkpoint.Checkpoints({})  # LangGraph's checkpoint package, or ImportError
        except ImportError as exc:
            self.adapter_error = f"{type(exc).__name__}: {exc}"
            return
        self.adapter = SqliteSaver(self.saver("adapter-read.db"))
        count = self.args.list_size
        self.ad_read = _checkpoint.fill(self.adapter, AD_THREAD, self.small, METADATA, count,
                                        writes=False)
        self.ad_writes = _checkpoint.fill(self.adapter, AD_WRITES_THREAD, self.small,
                                          METADATA, count, writes=True)
        self.ad_blob = len(self.adapter.serde.dumps_typed(
            _checkpoint.Checkpoints(self.small).next())[1])
        if "sqlite3" in sys.modules:
            raise SystemExit("importing or using sqlitesaver.langgraph loaded the stdlib "
                             "sqlite3 into this process: run its rows in a worker instead")

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
              + f"; metadata {METADATA}; no parent ids")
        print(f"read threads: {args.list_size:,} checkpoints of the 4 KiB state each, one "
              "without pending writes and one whose latest checkpoint has 2 (channels "
              f"{', '.join(c for c, _ in _checkpoint.WRITES)}; put_writes of small values); "
              f"Saver and bare APSW settings: {self.live} (busy_timeout in ms)")
        if self.adapter is not None:
            print(f"{ADAPTER}: in this process, on its own file; get_tuple reads threads of "
                  "bench/_checkpoint.py's checkpoints (empty_checkpoint() with the state as "
                  f"channel_values, {self.ad_blob:,} bytes as its serde makes them) put "
                  "through its put, as LangGraph's peer stores its own")
        else:
            print(f"{ADAPTER}: {NOT_INSTALLED} ({self.adapter_error}); its rows are skipped")
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
            library = (f"APSW {facts['apsw']}, SQLite {facts['sqlite']}"
                       if kind in ("sqlitesaver", "bare")
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
                    (LANGGRAPH, "langgraph"), (MEMORY, "memory"),
                    (f"{BARE_CP} (LangGraph's SqliteSaver on APSW with group commit and a "
                     "reader per thread, nothing else)", "bare")))
                + f"; each in its own process and file; the {GRAPH_THREADS}-thread rows invoke "
                f"from {GRAPH_THREADS} threads at once on the worker's one checkpointer")

    def configurations(self) -> list[tuple[list[Config], float]]:
        """The groups, each with its run time: puts, gets, lists, 1 MiB puts, the graph
        steps at 1 thread and at 8. Compared configurations sit next to each other or one run
        apart (bare + packb, Saver 1 and LangGraph 1; the group commit with packb, Saver 8
        and LangGraph 8; each get and its LangGraph get; each list; the graph steps of each
        durability), in either order; every put row is at most two runs from a bare run."""
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

        def bare_group_packb_ops(threads: int) -> list[Callable[[], object]]:
            """The same group commit, each caller packing the state before it queues."""
            put = self.bare_group_packb.put
            return [lambda thread_id=f"g{i:02d}": put(thread_id, packb(state))
                    for i in range(threads)]

        def twin_group_ops(threads: int) -> list[Callable[[], object]]:
            """The required work of 8 threads' puts: each caller encodes with the codec."""
            put, encode = self.twin_group.put, codec.encode
            return [lambda thread_id=f"g{i:02d}": put(thread_id, encode(state))
                    for i in range(threads)]

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

        def bare_get_writes() -> None:
            unpackb, execute = msgpack.unpackb, bare_read.execute
            row_id, data = execute(
                "SELECT id, data FROM t WHERE thread_id = ? ORDER BY id DESC LIMIT 1",
                (BARE_WRITES_THREAD,)).fetchone()
            unpackb(data)
            for _channel, value in execute(
                    "SELECT channel, data FROM w WHERE checkpoint_id = ? ORDER BY task_id, idx",
                    (row_id,)):
                unpackb(value)

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

        def clear_twin_big() -> None:
            with self.twin_big:
                self.twin_big.execute("DELETE FROM checkpoints")

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
                     Config("twin1", in_process([core.twin_put_op(self.twin, self.small)])),
                     *([lg_config("lg1", "put1"), lg_config("lg8", "put8")] if lg else []),
                     Config("bare_group8_packb", in_process(bare_group_packb_ops(8))),
                     Config("saver8", in_process(saver_ops(self.s8, 8, "s8", self.small))),
                     Config("twin_group8", in_process(twin_group_ops(8))),
                     Config("bare_group8", in_process(bare_group_ops(8))),
                     Config("bare2", bare_put),
                     Config("saver32", in_process(saver_ops(self.s32, 32, "s32", self.small))),
                     Config("p4x4", p4x4.run), Config("p20x1", p20x1.run)]
        adapter = self.adapter
        ad = adapter is not None

        def ad_config(key: str, config: dict | None) -> list[Config]:
            return [Config(key, in_process([lambda: adapter.get_tuple(config)]))] if ad else []
        # Gets without pending writes, then with them (mirrored), then the lists: each
        # contender next to the LangGraph run it is compared with or one run from it.
        get_group = [Config("bare_get", in_process([bare_get])),
                     Config("saver_get", in_process([lambda: s_read.get(LIST_THREAD)])),
                     *ad_config("ad_get", self.ad_read),
                     *([lg_config("lg_get", "get"), lg_config("lg_get_w", "get_writes")]
                       if lg else []),
                     *ad_config("ad_get_w", self.ad_writes),
                     Config("saver_get_w", in_process([lambda: s_read.get(WRITES_THREAD)])),
                     Config("bare_get_w", in_process([bare_get_writes]))]
        list_group = [*([lg_config("lg_list", "list")] if lg else []),
                      Config("saver_list", in_process(
                          [lambda: list(s_read.list(LIST_THREAD, namespace="", limit=100))])),
                      Config("bare_list", in_process([bare_list]))]
        big_group = [Config("bare_big", in_process([bare_op(bare_big, self.big_bytes)]),
                            clear_bare_big),
                     Config("saver_big", in_process(saver_ops(s_big, 1, BIG_THREAD, self.big)),
                            clear_saver_big),
                     Config("twin_big", in_process([core.twin_put_op(self.twin_big, self.big)]),
                            clear_twin_big),
                     *([lg_config("lg_big", "big", lambda: peer.cleanup("big"))] if lg else [])]

        for config in put_group:  # errors on opening count against the row
            for gang, key in ((p4x4, "p4x4"), (p20x1, "p20x1")):
                if config.key == key:
                    config.errors.update(gang.open_errors)
                    config.first_error = gang.first_error
        if not lg:
            self.missing |= {"lg1", "lg8", "lg_get", "lg_get_w", "lg_list", "lg_big"}
        if not ad:
            self.missing |= {"ad_get", "ad_get_w"}
        return [(put_group, seconds), (get_group, seconds / 2), (list_group, seconds / 2),
                (big_group, seconds), *steps_groups]

    def steps_groups(self, seconds: float) -> list[tuple[list[Config], float]]:
        """The graph steps: 1 thread, then 8 threads on one checkpointer; each with ours,
        LangGraph's SqliteSaver, InMemorySaver (no storage) and the bare durable checkpointer
        (the ceiling: bench/_bare_checkpointer.py)."""
        def steps(key: str, kind: str, durability: str, threads: int = 1) -> list[Config]:
            graph = self.graphs[kind]
            if not graph.installed:
                self.missing.add(key)
                return []
            after = graph.cleanup if kind == "memory" else None
            return [Config(key, lambda seconds: graph.run(durability, seconds, threads),
                           after)]

        # sync, then async, mirrored: ours, LangGraph's, the bare one, InMemorySaver,
        # InMemorySaver, the bare one, LangGraph's, ours.
        def group(many: str, threads: int) -> list[Config]:
            return [*steps(f"saver_steps{many}_sync", "sqlitesaver", "sync", threads),
                    *steps(f"lg_steps{many}_sync", "langgraph", "sync", threads),
                    *steps(f"barecp_steps{many}_sync", "bare", "sync", threads),
                    *steps(f"mem_steps{many}_sync", "memory", "sync", threads),
                    *steps(f"mem_steps{many}_async", "memory", "async", threads),
                    *steps(f"barecp_steps{many}_async", "bare", "async", threads),
                    *steps(f"lg_steps{many}_async", "langgraph", "async", threads),
                    *steps(f"saver_steps{many}_async", "sqlitesaver", "async", threads)]

        return [(group("", 1), seconds), (group("8", GRAPH_THREADS), seconds)]

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
                    "adapter": None if self.only_steps else (
                        {"installed": False, "error": self.adapter_error}
                        if self.adapter is None else
                        {"installed": True, "blob_bytes": self.ad_blob}),
                    "graph_steps": {kind: graph.info for kind, graph in self.graphs.items()}},
                "settings": {"rounds": args.rounds, "seconds": args.seconds,
                             "read_seconds": args.seconds / 2, "list_size": args.list_size,
                             "quick": args.quick, "only": args.only,
                             "saver": getattr(self, "live", None),
                             "graph_nodes": GRAPH_NODES, "graph_threads": GRAPH_THREADS},
                "state_bytes": None if self.only_steps else {"small": len(self.small_bytes),
                                                             "big": len(self.big_bytes)},
                "metadata": METADATA,
                "pending_writes": {"task_id": _checkpoint.TASK_ID,
                                   "writes": _checkpoint.WRITES},
                "rows": table,
                "elapsed_s": elapsed}, f, indent=1)
        print(f"figures written to {args.json}")

    @staticmethod
    def rows() -> list[Row]:
        """The table, in order (issue #15's targets). A baseline row has no ratio of its own
        column (it is 1). Rows of a library that is not installed print "not installed"."""
        def vs_langgraph(value: float, base: str, ceiling: str) -> Target:
            return Target.ratio(value, base, "LangGraph", ceiling, base_does_less=True)

        return [
            Row("fsync limit: append 4 KiB + fsync", "fsync", bare="bare"),
            Row("bare APSW put (BEGIN IMMEDIATE; INSERT; COMMIT)", "bare", baseline=True),
            Row("bare APSW put + msgpack.packb of the state", "bare_packb", bare="bare",
                langgraph="lg1"),
            Row(f"{LANGGRAPH} put, 1 thread", "lg1", bare="bare"),
            Row(REQUIRED_PUT, "twin1", bare="bare", langgraph="lg1"),
            Row("sqlitesaver put, 1 thread", "saver1", bare="bare", langgraph="lg1", targets=(
                vs_langgraph(1.0, "lg1", "twin1"),
                Target.ratio(0.85, "bare_packb", "bare+packb", "twin1"))),
            Row("bare APSW put, 2nd run mid-round (vs 1st)", "bare2", bare="bare"),
            Row(f"{LANGGRAPH} put, 8 threads", "lg8", bare="bare2"),
            Row("bare APSW group commit, 8 threads, pre-encoded rows", "bare_group8",
                bare="bare2", langgraph="lg8"),
            Row("bare APSW group commit, 8 threads, msgpack.packb by each caller",
                "bare_group8_packb", bare="bare2", langgraph="lg8"),
            Row(REQUIRED_PUTS_8, "twin_group8", bare="bare2", langgraph="lg8"),
            Row("sqlitesaver put, 8 threads", "saver8", bare="bare2", langgraph="lg8", targets=(
                vs_langgraph(2.2, "lg8", "twin_group8"),
                Target.ratio(0.6, "bare_group8_packb", "group+packb", "twin_group8"))),
            Row("sqlitesaver put, 32 threads", "saver32", bare="bare2"),
            Row("sqlitesaver put, 4 processes x 4 threads", "p4x4", bare="bare2"),
            Row("sqlitesaver put, 20 processes x 1 thread", "p20x1", bare="bare2",
                targets=(Target.errors(0),)),
            # Reads of the latest checkpoint, without and with pending writes: the core API
            # and the LangGraph adapter against LangGraph's get_tuple, bare APSW the ceiling.
            *(row for w, writes in (("", ""), ("_w", ", 2 pending writes")) for row in (
                Row("bare APSW get latest (SELECT + unpackb)" if not w else
                    "bare APSW get latest + its 2 writes (2 SELECTs + 3 unpackb)",
                    f"bare_get{w}", baseline=True, langgraph=f"lg_get{w}"),
                Row(f"{LANGGRAPH} get_tuple latest{writes}", f"lg_get{w}", bare=f"bare_get{w}"),
                Row(f"sqlitesaver get latest{writes}", f"saver_get{w}", bare=f"bare_get{w}",
                    langgraph=f"lg_get{w}",
                    targets=(vs_langgraph(0.9, f"lg_get{w}", f"bare_get{w}"),)),
                Row(f"{ADAPTER} get_tuple latest{writes}", f"ad_get{w}", bare=f"bare_get{w}",
                    langgraph=f"lg_get{w}",
                    targets=(vs_langgraph(0.9, f"lg_get{w}", f"bare_get{w}"),)))),
            Row("bare APSW list 100 (SELECT + unpackb)", "bare_list", baseline=True,
                langgraph="lg_list"),
            Row(f"{LANGGRAPH} list(limit=100)", "lg_list", bare="bare_list"),
            Row("sqlitesaver list(limit=100)", "saver_list", bare="bare_list",
                langgraph="lg_list", targets=(vs_langgraph(1.2, "lg_list", "bare_list"),)),
            Row("bare APSW put 1 MiB", "bare_big", baseline=True, langgraph="lg_big"),
            Row(f"{LANGGRAPH} put 1 MiB", "lg_big", bare="bare_big"),
            Row(REQUIRED_PUT.replace("a put", "a 1 MiB put"), "twin_big", bare="bare_big",
                langgraph="lg_big"),
            Row("sqlitesaver put 1 MiB", "saver_big", bare="bare_big", langgraph="lg_big",
                targets=(vs_langgraph(1.0, "lg_big", "twin_big"),)),
            # Graph steps: each checkpointer in a worker of its own, one graph at a time
            # (issue #15) and 8 at once (issue #14). The ceiling is the bare durable
            # checkpointer: it does strictly less than ours and still commits (and fsyncs)
            # every put before returning. InMemorySaver (no storage at all) is printed too: it
            # is the higher, looser bound, LangGraph's runtime alone.
            *(row for n, value, many in ((1, 1.0, ""), (GRAPH_THREADS, 1.2, "8"))
              for durability in ("sync", "async") for row in (
                Row(f"{MEMORY} graph steps, {n} thread{'s' if n > 1 else ''}, {durability} "
                    "(no storage)", f"mem_steps{many}_{durability}",
                    langgraph=f"lg_steps{many}_{durability}"),
                Row(f"{BARE_CP} graph steps, {n} thread{'s' if n > 1 else ''}, {durability} "
                    "(ceiling)", f"barecp_steps{many}_{durability}",
                    langgraph=f"lg_steps{many}_{durability}"),
                Row(f"{LANGGRAPH} graph steps, {n} thread{'s' if n > 1 else ''}, {durability}",
                    f"lg_steps{many}_{durability}"),
                Row(f"sqlitesaver graph steps, {n} thread{'s' if n > 1 else ''}, "
                    f"{durability}", f"saver_steps{many}_{durability}",
                    langgraph=f"lg_steps{many}_{durability}",
                    targets=(vs_langgraph(value, f"lg_steps{many}_{durability}",
                                          f"barecp_steps{many}_{durability}"),)))),
        ]

    @staticmethod
    def check_rows(rows: list[Row], configs: dict[str, Config], missing: set[str]) -> None:
        """Every Config measured is shown by a row, and every Config a row shows or compares
        with was measured or is missing because its library is not installed (a mistyped key
        would otherwise print as "not installed", or judge a target SKIP, silently)."""
        unknown = set().union(*(row.keys() for row in rows)) - set(configs) - missing
        hidden = set(configs) - {row.key for row in rows}
        if unknown or hidden:
            raise SystemExit(f"bench/run.py: rows name configurations never measured "
                             f"{sorted(unknown)}, or measured ones no row shows {sorted(hidden)}")

    @staticmethod
    def report(rows: list[Row], configs: dict[str, Config]) -> list[dict[str, Any]]:
        """Print the table, the targets against their ceilings and the per-round figures;
        return the same as JSON-ready dicts, one a row (its targets' verdicts in "targets")."""
        table = []
        labels = {row.key: row.label for row in rows}
        for row in rows:
            config = configs.get(row.key)
            entry: dict[str, Any] = {"measurement": row.label, "key": row.key}
            if row.targets:
                verdicts = [target.judge(row.key, configs, labels) for target in row.targets]
                entry.update(targets=verdicts,
                             target="; ".join(verdict["target"] for verdict in verdicts),
                             result=overall([verdict["result"] for verdict in verdicts]))
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
            table.append(entry)

        def ratio_text(value: float | None) -> str:
            return "" if value is None else f"{value:.2f}x"

        def measured_text(verdict: dict[str, Any]) -> str:
            return f"{verdict['errors']:,}" if "errors" in verdict \
                else ratio_text(verdict.get("ratio"))

        width = max(len(row.label) for row in rows)
        target_width = max([len(v["target"]) for e in table for v in e.get("targets", ())]
                           + [len("target")])
        blank = (f"| {'':{width}} | {'':13} | {'':6} | {'':12} | {'':12} | {'':6} ")

        def target_cells(verdict: dict[str, Any] | None) -> str:
            if verdict is None:
                return f"| {'':{target_width}} | {'':8} | {'':7} | {'':6} |"
            return (f"| {verdict['target']:{target_width}} | {measured_text(verdict):>8} | "
                    f"{ratio_text(verdict.get('ceiling')):>7} | {verdict['result']:6} |")

        print()
        print(f"| {'measurement':{width}} | {'ops/s':>13} | spread | vs bare APSW | "
              f"vs LangGraph | errors | {'target':{target_width}} | measured | ceiling | "
              "result |")
        print(f"|{'-' * (width + 2)}|{'-' * 15}|--------|--------------|--------------|"
              f"--------|{'-' * (target_width + 2)}|----------|---------|--------|")
        for entry in table:
            label = entry["measurement"]
            verdicts = entry.get("targets", [])
            if entry["rate"] is None:
                print(f"| {label:{width}} | {NOT_INSTALLED:>13} | {'':6} | {'':12} | "
                      f"{'':12} | {'':6} " + target_cells(None))
                continue
            vs_bare = "baseline" if entry["baseline"] else ratio_text(entry.get("vs_bare"))
            spread = "" if entry["spread"] is None else f"{entry['spread']:.0%}"
            print(f"| {label:{width}} | {entry['rate']:13,.0f} | {spread:>6} | "
                  f"{vs_bare:>12} | {ratio_text(entry.get('vs_langgraph')):>12} | "
                  f"{sum(entry['errors'].values()):6,} "
                  + target_cells(verdicts[0] if verdicts else None))
            for verdict in verdicts[1:]:  # a row's further targets, one line each
                print(blank + target_cells(verdict))
        print("ops/s: median of the rounds (a list is one call returning 100 checkpoints; "
              f"a graph step is one node run, {GRAPH_NODES} per invoke); spread: (max - min) / "
              "median;\nratios: median of the per-round ratios; a put "
              "row's bare run is the one above it in the table (1st: before it in the round, "
              "2nd: mid-round);\nerrors: every run of the row, warm-up and opening included; "
              "a row with several targets shows each on a line of its own;\nmeasured: the "
              "target's ratio (or error count); ceiling: the same ratio for the baseline "
              "named below")
        judged = [(entry, verdict) for entry in table for verdict in entry.get("targets", ())
                  if "ceiling_of" in verdict]
        if judged:
            print()
            print("targets against their ceilings (a ceiling: the same ratio, paired by round, "
                  "for a baseline that does\nless than the row must, so a target above its "
                  "ceiling is out of reach on this machine):")
            for entry, verdict in judged:
                measured = measured_text(verdict)
                ceiling = verdict.get("ceiling")
                print(f"  {entry['measurement']}: target {verdict['target']}: "
                      f"{measured or 'not measured'}, {verdict['result']}; ceiling "
                      + (f"{ceiling:.2f}x" if ceiling is not None else "not measured")
                      + f" ({verdict['ceiling_of']}"
                      + (", the target's own base" if verdict["ceiling_of"] == verdict["base_of"]
                         else "") + ")"
                      + ("; the target is above it" if verdict.get("target_above_ceiling")
                         else "; above it, but LangGraph's saver itself (1.00x) does less "
                         "work than the row: the target is not above every ceiling"
                         if verdict.get("base_is_a_ceiling") and ceiling is not None
                         and ceiling < verdict["value"] <= 1.0 else ""))
        print()
        print("per round (ops/s; then the per-round ratios):")
        for row, entry in zip(rows, table):
            if entry["rate"] is None:
                continue
            line = f"  {entry['measurement']}: " + " ".join(f"{r:,.0f}" for r in entry["rates"])
            for column, name in (("vs_bare", "bare"), ("vs_langgraph", "LangGraph")):
                if entry.get(column + "_rounds"):
                    line += f"; vs {name} " + " ".join(
                        f"{x:.2f}" for x in entry[column + "_rounds"])
            for target, verdict in zip(row.targets, entry.get("targets", ())):
                if target.base not in (None, row.bare, row.langgraph) \
                        and verdict.get("ratio_rounds"):
                    line += f"; vs {target.versus} " + " ".join(
                        f"{x:.2f}" for x in verdict["ratio_rounds"])
            print(line)
        for entry in table:
            if entry.get("errors"):
                print(f"errors in {entry['measurement']}: "
                      + ", ".join(f"{n} x {name}" for name, n in sorted(entry["errors"].items()))
                      + f"; first: {entry['first_error']}")
        return table


def main() -> int:
    if "--backend" in sys.argv[1:]:  # `--backend postgres`: bench/postgres.py, its own rows
        at = sys.argv.index("--backend")
        backend = sys.argv[at + 1] if at + 1 < len(sys.argv) else ""
        rest = sys.argv[1:at] + sys.argv[at + 2:]
        if backend == "postgres":
            import postgres
            return postgres.main(rest)
        if backend != "sqlite":
            print(f"--backend must be sqlite (the default) or postgres, not {backend!r}",
                  file=sys.stderr)
            return 2
        sys.argv[1:] = rest
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
