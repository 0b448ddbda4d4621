"""``python -m sqlitesaver.torture --langgraph``: SIGKILL processes running real LangGraph graphs
through the adapter, then judge what survived through LangGraph's own API.

The loop is :mod:`~sqlitesaver.torture.harness`'s (spawn, seeded kill delays, restart, several
workers); what the writers do and how a kill is judged differ. Each writer process
(:mod:`~sqlitesaver.torture.graph_child`) opens one checkpointer and runs graphs on it from
``--threads`` threads, each graph run on a new LangGraph thread, with a parallel fan-out and a
seeded durability, ``sync`` or ``async`` (:mod:`~sqlitesaver.torture.graph_workload`). It tells
the harness each ``put`` and ``put_writes`` before the call (an *intent*: ids, metadata step,
value digests) and after it returned (an *ack*), and each node as it starts.

After a kill the harness opens the database as an application does,
``SqliteSaver.from_conn_string`` (startup recovery, with a full ``integrity_check``), and, for
every graph thread the killed process started:

* every acknowledged ``put`` is ``get_tuple``-able under its id, with the acknowledged metadata
  step, parent and digest of the graph's channel values (missing: **lost**; different:
  **corrupt**);
* every acknowledged ``put_writes`` is in its checkpoint's ``pending_writes``, each channel with
  the acknowledged value digest (missing or incomplete: **lost**);
* a call in flight at the kill (an intent without its ack) may be there or not, but whole: a
  ``put_writes`` found in part is **partial**. Several calls of one graph thread can be in
  flight at once (its parallel tasks' writes, a background put), and each is judged so;
* no checkpoint or pending write is there that nobody announced (**corrupt**);
* a run that had not returned is resumed in this process, ``graph.invoke(None, config)`` (or
  its input again when not even its first checkpoint was committed), on the real adapter. A
  node that starts again although its writes were acknowledged, or although a checkpoint of
  its step or a later one was acknowledged, **ran again** (a node that was running, or whose
  writes were not yet acknowledged, may run again: counted as *redone*, not a violation);
* the thread's final state, read back with ``get_state``, equals the run's done start to end
  without a checkpointer, and so does what a run that returned in the writer returned
  (**wrong final state** otherwise).

Then ``sqlitesaver.check.check_database`` (``python -m sqlitesaver check``) must find the
database ok, and the worker is restarted: new graph runs on new thread ids. At the end, every
graph thread of the whole run is read back once more (``list``): every acknowledged put and
write still there, every final state right. A kill is judged by what the harness was told, and
the verdict is exact: an ack is sent only after the adapter's call returned, so after its
COMMIT; whatever was not acknowledged may or may not be there.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .. import check
from ..errors import SaverError
from ..langgraph import SqliteSaver
from .graph_workload import (RunSpec, build_graph, reference, state_digest, value_digest)
from .harness import _Run
from .summary import _counts, _ms
from .writers import _Worker

__all__ = ["GraphRun"]


@dataclass
class _Thread:
    """What the harness was told of one graph run (one LangGraph thread)."""

    spec: RunSpec
    lane: int
    calls: dict[int, dict] = field(default_factory=dict)    # in flight: call -> its intent
    puts: list[dict] = field(default_factory=list)           # acknowledged put intents
    writes: list[dict] = field(default_factory=list)         # acknowledged put_writes intents
    starts: list[tuple[str, str, int]] = field(default_factory=list)  # (task, node, step)
    done: str | None = None                                   # final state digest, if returned
    wrong: bool = False                                       # a wrong final state reported


@dataclass
class _GraphVerdict:
    """The findings of one kill (or of the final read-back)."""

    lost_puts: list[str] = field(default_factory=list)
    lost_writes: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    ran_again: list[str] = field(default_factory=list)
    wrong_final: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)         # corrupt, unreadable, check
    inflight: Counter = field(default_factory=Counter)       # "put present", "writes absent"...
    threads: int = 0        # graph threads judged
    resumed: int = 0        # of which resumed here
    redone: int = 0         # nodes that ran again, legitimately (not finished at the kill)
    resume_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost_puts or self.lost_writes or self.partial or self.ran_again
                    or self.wrong_final or self.problems)

    def violations(self) -> list[tuple[str, list[str]]]:
        return [(name, found) for name, found in (
            ("LOST PUT", self.lost_puts), ("LOST WRITES", self.lost_writes),
            ("PARTIAL", self.partial), ("RAN AGAIN", self.ran_again),
            ("WRONG FINAL STATE", self.wrong_final), ("CORRUPT", self.problems)) if found]


def _config(thread: str, namespace: str = "", checkpoint_id: str | None = None) -> dict:
    configurable: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": namespace}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _put_differences(name: str, put: dict, found: Any) -> list[str]:
    """How a stored checkpoint differs from the put that announced it (nothing: [])."""
    problems = []
    if found.metadata.get("step") != put["step"]:
        problems.append(f"{name}: checkpoint {put['id']} has metadata step "
                        f"{found.metadata.get('step')!r}, put with {put['step']!r}")
    if state_digest(found.checkpoint["channel_values"]) != put["dg"]:
        problems.append(f"{name}: checkpoint {put['id']} (step {put['step']}) holds other "
                        "channel values than were put")
    parent = (found.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    if parent != put["p"]:
        problems.append(f"{name}: checkpoint {put['id']} has parent {parent}, put with "
                        f"{put['p']}")
    return problems


def _writes_state(found: Any, intent: dict) -> str:
    """Whether a put_writes call is in its checkpoint (``found``, a CheckpointTuple or None):
    "present" (all of it), "absent", "partial" (some of it), or "different" (other values)."""
    if found is None:
        return "absent"
    stored = sorted([channel, value_digest(value)] for task, channel, value
                    in found.pending_writes if task == intent["task"])
    expected = sorted(intent["w"])
    if not stored:
        return "absent"
    if stored == expected:
        return "present"
    left = list(expected)
    for pair in stored:
        if pair not in left:
            return "different"
        left.remove(pair)
    return "partial"


class GraphRun(_Run):
    """The harness loop of :class:`~sqlitesaver.torture.harness._Run` with graph writers and
    the judgement of the module docstring."""

    def __init__(self, options: Any, out: Any) -> None:
        super().__init__(options, out)
        for w in self.workers:
            w.lanes = []  # graph threads, not lanes: tracked below
        self.running: dict[int, dict[str, _Thread]] = {w.index: {} for w in self.workers}
        self.calls: dict[int, dict[int, str]] = {w.index: {} for w in self.workers}
        self.judged: dict[str, _Thread] = {}  # every graph thread judged so far (final read)
        self.counts: Counter = Counter()

    # --- writers -----------------------------------------------------------------------

    def banner(self) -> str:
        o = self.o
        return (f"torture --langgraph: {o.iterations} iterations, {o.workers} worker(s) x "
                f"{o.threads} threads running graphs on one checkpointer per worker, "
                f"durability {o.durability}, graph durability sync or async (seeded per run), "
                f"SIGKILL after {o.min_interval:g}-{o.max_interval:g} s, seed {o.seed}")

    def child_command(self, w: _Worker, write_end: int) -> list[str]:
        cmd = [sys.executable, "-m", "sqlitesaver.torture.graph_child", "--db", self.o.db,
               "--fd", str(write_end), "--worker", str(w.index),
               "--incarnation", str(w.incarnation), "--seed", str(self.o.seed),
               "--durability", self.o.durability, "--threads", str(self.o.threads)]
        if self.o.writer:
            cmd += ["--writer", self.o.writer]
        return cmd

    def handle(self, w: _Worker, message: dict[str, Any]) -> None:
        kind = message["m"]
        running = self.running[w.index]
        if kind == "run":
            spec = RunSpec.from_message(message)
            running[spec.thread] = _Thread(spec, message["lane"])
            self.counts["runs"] += 1
            self.counts[f"runs {spec.durability}"] += 1
        elif kind in ("node", "intent", "done"):
            thread = running.get(message["t"])
            if thread is None:
                self.id_problems.append(f"worker {w.index}: {kind} for graph thread "
                                        f"{message['t']!r}, which no run started (a writer "
                                        "protocol error)")
            elif kind == "node":
                thread.starts.append((message["task"], message["n"], message["s"]))
                self.counts["node runs"] += 1
            elif kind == "intent":
                thread.calls[message["c"]] = message
                self.calls[w.index][message["c"]] = message["t"]
            else:
                thread.done = message["dg"]
                self.counts["runs done"] += 1
        elif kind == "ack":
            name = self.calls[w.index].pop(message["c"], None)
            thread = running.get(name) if name is not None else None
            intent = thread.calls.pop(message["c"], None) if thread is not None else None
            if intent is None:
                self.id_problems.append(f"worker {w.index}: ack of call {message['c']} "
                                        "without its intent (a writer protocol error)")
                return
            (thread.puts if intent["k"] == "put" else thread.writes).append(intent)
            self.counts[f"{intent['k']} acked"] += 1
            self.acked_total += 1
        else:
            super().handle(w, message)  # hello, ready, error

    def stop(self, w: _Worker, *, kill: bool) -> str:
        phase = super().stop(w, kill=kill)
        if phase != "between":
            return phase
        flying = Counter(intent["k"] for thread in self.running[w.index].values()
                         for intent in thread.calls.values())
        if not flying:
            return "between calls"
        return f"{flying['put']}p+{flying['writes']}w in flight"

    # --- verdicts ----------------------------------------------------------------------

    def verify(self, w: _Worker) -> tuple[_GraphVerdict, float | None]:
        """Judge every graph thread the worker's last incarnation started, then resume it."""
        threads = self.running[w.index]
        self.running[w.index], self.calls[w.index] = {}, {}
        verdict = _GraphVerdict()
        recovery = None
        try:
            with SqliteSaver.from_conn_string(self.o.db, durability=self.o.durability,
                                              integrity_check="full") as checkpointer:
                recovery = checkpointer.saver.recovery.seconds
                starts: list[tuple[str, str, int]] = []
                graph = build_graph(
                    lambda thread, node, step, task: starts.append((task, node, step))
                ).compile(checkpointer=checkpointer)
                for thread in threads.values():
                    self.judge_thread(checkpointer, graph, starts, thread, verdict)
        except SaverError as exc:
            self.stopped = True
            verdict.problems.append(f"reopening failed: {type(exc).__name__}: {exc}")
            return verdict, None
        self.check_file(verdict)
        self.judged.update({thread.spec.thread: thread for thread in threads.values()})
        return verdict, recovery

    def check_file(self, verdict: _GraphVerdict) -> None:
        """``python -m sqlitesaver check`` on the database (read-only; run once this process
        has closed its connection: the check opens the file, which would drop the POSIX locks
        of a connection of this process)."""
        report = check.check_database(self.o.db)
        if not report.ok:
            verdict.problems.append("python -m sqlitesaver check: "
                                    + " ".join(check.format_report(report).split())[:600])

    def judge_thread(self, checkpointer: SqliteSaver, graph: Any,
                     starts: list[tuple[str, str, int]], thread: _Thread,
                     verdict: _GraphVerdict) -> None:
        name = thread.spec.thread
        verdict.threads += 1
        try:
            stored = {found.config["configurable"]["checkpoint_id"]: found
                      for found in checkpointer.list(_config(name))}
            # A violation is reported once: what is found lost here is not looked for again
            # at the final read-back (the acknowledged lists keep what was found).
            kept: list[dict] = []
            for put in thread.puts:
                found = checkpointer.get_tuple(_config(name, put["ns"], put["id"]))
                if found is None:
                    verdict.lost_puts.append(f"{name}: checkpoint {put['id']} (step "
                                             f"{put['step']}, {thread.spec.durability})")
                else:
                    verdict.problems += _put_differences(name, put, found)
                    kept.append(put)
            thread.puts, acked_puts = kept, thread.puts  # the step rule below uses them all
            kept = []
            for write in thread.writes:
                found = checkpointer.get_tuple(_config(name, write["ns"], write["ck"]))
                state = _writes_state(found, write)
                if state == "different":
                    verdict.problems.append(f"{name}: writes of task {write['task']} hold "
                                            "other values than were put")
                elif state != "present":
                    verdict.lost_writes.append(
                        f"{name}: writes of task {write['task']} to checkpoint {write['ck']} "
                        f"({state}, {thread.spec.durability})")
                else:
                    kept.append(write)
            thread.writes, acked_writes = kept, thread.writes
            for intent in thread.calls.values():  # in flight at the kill: there, or not
                if intent["k"] == "put":
                    found = stored.get(intent["id"])
                    if found is not None:
                        verdict.problems += _put_differences(name, intent, found)
                    verdict.inflight["put " + ("absent" if found is None else "present")] += 1
                    continue
                state = _writes_state(stored.get(intent["ck"]), intent)
                if state == "partial":
                    verdict.partial.append(f"{name}: writes of task {intent['task']} in flight "
                                           "at the kill are there in part")
                elif state == "different":
                    verdict.problems.append(f"{name}: writes of task {intent['task']} hold "
                                            "other values than were put")
                else:
                    verdict.inflight[f"writes {state}"] += 1
            intents = acked_puts + acked_writes + list(thread.calls.values())
            put_ids = {i["id"] for i in intents if i["k"] == "put"}
            tasks = {(i["ck"], i["task"]) for i in intents if i["k"] == "writes"}
            for checkpoint_id, found in stored.items():
                if checkpoint_id not in put_ids:
                    verdict.problems.append(f"{name}: checkpoint {checkpoint_id} is stored, "
                                            "but no put announced it")
                for task in {task for task, _, _ in found.pending_writes}:
                    if (checkpoint_id, task) not in tasks:
                        verdict.problems.append(f"{name}: writes of task {task} are stored "
                                                f"on {checkpoint_id}, but none were announced")
        except SaverError as exc:
            verdict.problems.append(f"{name}: reading it back raised {type(exc).__name__}: "
                                    f"{exc}")
            return
        if thread.done is None:
            self.resume(graph, starts, thread, bool(stored), verdict, acked_puts, acked_writes)
        self.judge_final(graph, thread, verdict)

    def resume(self, graph: Any, starts: list[tuple[str, str, int]], thread: _Thread,
               started: bool, verdict: _GraphVerdict, puts: list[dict],
               writes: list[dict]) -> None:
        """Run the interrupted run to its end on the real adapter; count the nodes that ran
        again although they had finished (by the acknowledged ``puts`` and ``writes``, lost
        ones included)."""
        name = thread.spec.thread
        del starts[:]
        began = time.perf_counter()
        try:
            graph.invoke(None if started else thread.spec.input(), _config(name),
                         durability="sync")
        except Exception as exc:  # LangGraph's or the Saver's: either is a finding
            verdict.problems.append(f"{name}: resuming it raised {type(exc).__name__}: {exc}")
            return
        finally:
            verdict.resume_seconds += time.perf_counter() - began
        verdict.resumed += 1
        finished_tasks = {write["task"] for write in writes}
        finished_step = max((put["step"] for put in puts), default=None)
        before = {task for task, _, _ in thread.starts}
        for task, node, step in starts:
            if task in finished_tasks:
                why = "its writes were acknowledged"
            elif finished_step is not None and step <= finished_step:
                why = f"the checkpoint of step {finished_step} was acknowledged"
            else:
                verdict.redone += task in before
                continue
            verdict.ran_again.append(f"{name}: node {node} of step {step} (task {task}) ran "
                                     f"again although {why}")

    def judge_final(self, graph: Any, thread: _Thread, verdict: _GraphVerdict) -> None:
        name = thread.spec.thread
        expected = reference(thread.spec)
        try:
            snapshot = graph.get_state(_config(name))
        except SaverError as exc:
            verdict.problems.append(f"{name}: get_state raised {type(exc).__name__}: {exc}")
            return
        if snapshot.values != expected or snapshot.next:
            thread.wrong = True  # reported: not again at the final read-back
            verdict.wrong_final.append(
                f"{name}: final state has {len(snapshot.values.get('log', []))} log entries "
                f"and next {list(snapshot.next)}, the uninterrupted run "
                f"{len(expected['log'])} and []"
                + ("" if snapshot.values.get("log") != expected["log"] else " (other values)"))
        if thread.done is not None and thread.done != state_digest(expected) \
                and not thread.wrong:
            thread.wrong = True
            verdict.wrong_final.append(f"{name}: the writer's invoke returned another state "
                                       "than the uninterrupted run's")

    def read_back(self) -> _GraphVerdict:
        """The end of the run: every graph thread judged during it, read back with ``list``
        (every acknowledged put and write still there, the final state still right)."""
        verdict = _GraphVerdict()
        try:
            with SqliteSaver.from_conn_string(self.o.db, durability=self.o.durability,
                                              integrity_check="full") as checkpointer:
                graph = build_graph().compile(checkpointer=checkpointer)
                for name, thread in self.judged.items():
                    verdict.threads += 1
                    stored = {found.config["configurable"]["checkpoint_id"]: found
                              for found in checkpointer.list(_config(name))}
                    for put in thread.puts:
                        found = stored.get(put["id"])
                        if found is None:
                            verdict.lost_puts.append(f"{name}: checkpoint {put['id']} (step "
                                                     f"{put['step']}), at the final read")
                        else:
                            verdict.problems += _put_differences(name, put, found)
                    for write in thread.writes:
                        if _writes_state(stored.get(write["ck"]), write) != "present":
                            verdict.lost_writes.append(f"{name}: writes of task "
                                                       f"{write['task']}, at the final read")
                    if not thread.wrong:
                        self.judge_final(graph, thread, verdict)
        except SaverError as exc:
            verdict.problems.append(f"final read failed: {type(exc).__name__}: {exc}")
            return verdict
        self.check_file(verdict)
        return verdict

    # --- the report --------------------------------------------------------------------

    def record(self, w: _Worker, phase: str, verdict: Any, recovery: float | None, *,
               final: bool = False) -> dict[str, Any]:
        entry = {
            "iteration": None if final else len(self.iterations) + 1,
            "worker": w.index, "incarnation": w.incarnation,
            "kill_delay": round(w.delay, 6),
            "killed_after": None if w.killed_after is None else round(w.killed_after, 6),
            "phase": phase,
            "puts_acknowledged": self.counts["put acked"],
            "writes_acknowledged": self.counts["writes acked"],
            "recovery_seconds": recovery,
            "writer_startup_seconds": w.startup_seconds,
            **self.entry_of(verdict),
        }
        label = "end" if final else f"{entry['iteration']:>4}/{self.o.iterations}"
        after = "   -    " if w.killed_after is None else f"{w.killed_after * 1000:6.1f} ms"
        recovered = "-" if recovery is None else f"{recovery * 1000:.1f} ms"
        self.print(f"{label}  w{w.index}  killed at +{after} in {phase:<17} acked "
                   f"{entry['puts_acknowledged']:>5}p {entry['writes_acknowledged']:>6}w  "
                   f"resumed {verdict.resumed:>2}/{verdict.threads:<3} recovery "
                   f"{recovered:>8}  {self.shown(verdict)}")
        return entry

    @staticmethod
    def entry_of(verdict: _GraphVerdict) -> dict[str, Any]:
        return {"graph_threads": verdict.threads, "resumed": verdict.resumed,
                "redone_nodes": verdict.redone,
                "resume_seconds": round(verdict.resume_seconds, 6),
                "inflight": dict(sorted(verdict.inflight.items())),
                "lost_puts": verdict.lost_puts[:20], "lost_writes": verdict.lost_writes[:20],
                "partial": verdict.partial[:20], "ran_again": verdict.ran_again[:20],
                "wrong_final": verdict.wrong_final[:20], "problems": verdict.problems[:20],
                "counts": {"lost_puts": len(verdict.lost_puts),
                           "lost_writes": len(verdict.lost_writes),
                           "partial": len(verdict.partial),
                           "ran_again": len(verdict.ran_again),
                           "wrong_final": len(verdict.wrong_final),
                           "corrupt": len(verdict.problems)},
                "ok": verdict.ok}

    @staticmethod
    def shown(verdict: _GraphVerdict) -> str:
        if verdict.ok:
            told = _counts(state for state, n in verdict.inflight.items() for _ in range(n))
            return "ok" + (f" (in flight: {told})" if told else "")
        parts = []
        for name, found in verdict.violations():
            first = " ".join(found[0].split())
            parts.append(f"{name} {len(found)}: {first[:200]}")
        return "; ".join(parts)

    def summarise(self) -> int:
        if not self.stopped:
            began = time.monotonic()
            verdict = self.read_back()
            entry = {"iteration": None, "worker": None, "phase": "final read-back",
                     "recovery_seconds": None, "writer_startup_seconds": None,
                     "seconds": round(time.monotonic() - began, 3), **self.entry_of(verdict)}
            self.final.append(entry)
            self.print(f"end  final read-back of {verdict.threads} graph threads "
                       f"({entry['seconds']} s): {self.shown(verdict)}")
        entries = self.iterations + self.final
        totals: Counter = Counter()
        inflight: Counter = Counter()
        for e in entries:
            totals.update(e["counts"])
            totals["resumed"] += e["resumed"] if e["phase"] != "final read-back" else 0
            totals["redone"] += e["redone_nodes"]
            inflight.update(e["inflight"])
        recoveries = [e["recovery_seconds"] for e in entries if e["recovery_seconds"] is not None]
        startups = [e["writer_startup_seconds"] for e in entries
                    if e["writer_startup_seconds"] is not None]
        resumes = [e["resume_seconds"] / e["resumed"] for e in entries if e["resumed"]]
        phases = Counter(e["phase"] if "flight" not in e["phase"] else "calls in flight"
                         for e in self.iterations)
        lost = totals["lost_puts"] + totals["lost_writes"]
        failed = bool(lost or totals["partial"] or totals["ran_again"] or totals["wrong_final"]
                      or totals["corrupt"] or self.id_problems or self.errors)
        c = self.counts
        self.summary = {
            "iterations": len(self.iterations),
            "graph_runs_started": c["runs"],
            "graph_runs_by_durability": {d: c[f"runs {d}"] for d in ("sync", "async")},
            "graph_runs_returned_in_writers": c["runs done"],
            "graph_runs_resumed": totals["resumed"],
            "node_runs_in_writers": c["node runs"],
            "puts_acknowledged": c["put acked"],
            "writes_acknowledged": c["writes acked"],
            "lost": lost, "lost_puts": totals["lost_puts"],
            "lost_writes": totals["lost_writes"],
            "partial": totals["partial"],
            "ran_again": totals["ran_again"],
            "redone_nodes": totals["redone"],
            "wrong_final_states": totals["wrong_final"],
            "corrupt": totals["corrupt"] + bool(self.id_problems),
            "writer_errors": len(self.errors),
            "inflight_at_kill": dict(sorted(inflight.items())),
            "kills_by_phase": dict(sorted(phases.items())),
            "recovery_p50_ms": _ms(statistics.median(recoveries)) if recoveries else None,
            "recovery_max_ms": _ms(max(recoveries)) if recoveries else None,
            "resume_p50_ms": _ms(statistics.median(resumes)) if resumes else None,
            "writer_startup_p50_ms": _ms(statistics.median(startups)) if startups else None,
            "writer_node_runs_per_second": (round(c["node runs"] / self.writer_seconds)
                                            if self.writer_seconds else None),
            "threads": self.o.threads,
            "seconds": round(self.seconds, 2),
            "verdict": "FAIL" if failed else "PASS",
        }
        s = self.summary
        rows = [
            ("iterations (kills)", s["iterations"]),
            ("kills by phase", ", ".join(f"{k} {v}" for k, v in s["kills_by_phase"].items())),
            ("graph runs", f"{s['graph_runs_started']} started (sync "
                           f"{s['graph_runs_by_durability']['sync']}, async "
                           f"{s['graph_runs_by_durability']['async']}), "
                           f"{s['graph_runs_returned_in_writers']} returned in the writers, "
                           f"{s['graph_runs_resumed']} resumed after a kill"),
            ("puts acknowledged", s["puts_acknowledged"]),
            ("put_writes acknowledged", s["writes_acknowledged"]),
            ("in flight at kill", ", ".join(f"{k} {v}" for k, v in
                                            s["inflight_at_kill"].items()) or "none"),
            ("lost", f"{s['lost']} ({s['lost_puts']} puts, {s['lost_writes']} put_writes)"),
            ("partial", s["partial"]),
            ("ran again (finished nodes)", s["ran_again"]),
            ("redone (unfinished nodes)", s["redone_nodes"]),
            ("wrong final states", s["wrong_final_states"]),
            ("corrupt", s["corrupt"]),
            ("writer errors", s["writer_errors"]),
            ("recovery p50 / max", f"{s['recovery_p50_ms']} ms / {s['recovery_max_ms']} ms"),
            ("resume p50", f"{s['resume_p50_ms']} ms per graph thread"),
            ("writer start-up p50", f"{s['writer_startup_p50_ms']} ms (open, recovery)"),
            ("writer throughput", f"{s['writer_node_runs_per_second']} node runs/s per worker "
                                  f"({s['threads']} threads, one checkpointer)"),
            ("wall time", f"{s['seconds']} s"),
            ("verdict", s["verdict"]),
        ]
        return self.print_summary(rows, failed)

    def report(self) -> dict[str, Any]:
        report = super().report()
        report["options"]["langgraph"] = True
        for dist in ("langgraph", "langgraph-checkpoint"):
            try:
                report["environment"][dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                report["environment"][dist] = None
        return report
