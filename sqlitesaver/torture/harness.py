"""The parent side of the crash-torture harness: spawn writers, SIGKILL them at seeded random
moments, reopen the database as the library does, and judge what survived.

One *iteration* is one kill. After it the harness drains the killed writer's pipe (every
message it sent before dying), opens a :class:`~sqlitesaver.Saver` on the database (startup
recovery included, with ``integrity_check="full"``), reads the killed worker's threads through
the public API (every payload checksum verified) and asks :mod:`~sqlitesaver.torture.oracle`
for a verdict. The worker is then restarted on the recovered database, so recovering an
already recovered database is part of the test. With several workers, the others keep writing
while one is killed, verified and restarted.

With ``threads`` above 1, each worker writes from that many threads sharing one Saver, so its
group commit gathers their transitions into shared COMMITs. Each thread drives its own *lane*
(its own thread ids, one transition at a time), and the verdict is given per lane, exactly as
for a single-threaded worker: every acknowledged transition of the lane is there, whole, and
the lane's one transition in flight at the kill (if any) is there whole or not at all. A
transition is acknowledged only after its call returned, so after its batch's COMMIT
returned; a lane has at most one call in progress, so at most one unacknowledged transition
whose fate is open. Group commit changes which transitions share a COMMIT, never these two
facts, so the per-lane verdict is as exact as the single-thread one.

The seed fixes every choice the harness and the writers make (kill delays, transitions and
their contents); it cannot fix how far a writer gets in a given delay on a given machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any, TextIO

import apsw
import msgpack

from .. import Saver, faults
from ..errors import SaverError
from ..postgres.target import is_url
from .oracle import Model, Observation, Verdict, apply, compare, file_digest, observe
from .protocol import FrameReader
from .workload import thread_prefix

__all__ = ["Options", "run"]

#: Share of kills aimed at a writer's start-up (opening, recovery, reading its threads), where a
#: uniform delay would rarely land: their delay is drawn from [0, STARTUP_WINDOW] seconds
#: (start-up takes 5-50 ms here). Fixed, not measured, so that the seed fixes every delay.
STARTUP_KILL_SHARE = 0.15
STARTUP_WINDOW = 0.06
#: A writer that has not said hello by then is reported as hung.
HELLO_TIMEOUT = 60.0
#: Power-loss mode: the writer's VFS "loses power" at its Nth write or sync of a database file,
#: N uniform in [1, POWER_LOSS_OPS] (a start-up share in [1, POWER_LOSS_STARTUP_OPS]). About
#: 10 to 20 such operations per transition here, so a writer runs for a fraction of a second.
POWER_LOSS_OPS = 3000
POWER_LOSS_STARTUP_OPS = 40
#: A power-loss writer that has not crashed by then never reached its crash point: an error.
POWER_LOSS_TIMEOUT = 60.0
#: Stop restarting after this many writer errors in a row (the database is unusable).
MAX_ERRORS_IN_A_ROW = 5


@dataclass
class Options:
    """Settings of one torture run (see ``python -m sqlitesaver.torture --help``)."""

    db: str
    iterations: int = 50
    seed: int = 0
    workers: int = 1
    durability: str = "full"
    min_interval: float = 0.0
    max_interval: float = 0.5
    writer: str | None = None
    mode: str = "sigkill"  # or "power-loss" (simulated through sqlitesaver.faults)
    keep_going: bool = False  # go on after a violation instead of keeping the evidence
    threads: int = 1  # writer threads per worker process, sharing one Saver (group commit)
    langgraph: bool = False  # writers run LangGraph graphs through the adapter (graph_harness)


@dataclass
class _Lane:
    """What the harness knows of one writer thread's transitions (a worker's only lane when it
    writes from one thread)."""

    index: int
    prefix: str                                                   # its thread ids' prefix
    acked: list[tuple[str, list]] = field(default_factory=list)   # since the last verdict
    inflight: tuple[str, str, list] | None = None                 # (tid, kind, ops)
    model: Model = field(default_factory=Model)
    deleted_by: dict = field(default_factory=dict)
    rolled_back: set[str] = field(default_factory=set)            # aborts since the last verdict
    ids: dict[str, str] = field(default_factory=dict)             # tag -> acked id
    max_id: dict[str, str] = field(default_factory=dict)          # thread -> highest id seen
    last_log_seq: int = -1
    # The newest acknowledged checkpoint with files: (thread, namespace, tag, {name: digest}).
    last_files: tuple[str, str, str, dict[str, str]] | None = None


@dataclass
class _LanesVerdict(Verdict):
    """A worker's verdict: the lanes' findings together, and each lane's in-flight verdict."""

    lanes: list[str] = field(default_factory=list)


@dataclass
class _Worker:
    index: int
    lanes: list[_Lane] = field(default_factory=list)
    incarnation: int = 0
    proc: subprocess.Popen | None = None
    fd: int | None = None
    frames: FrameReader = field(default_factory=FrameReader)
    stderr: Any = None
    spawned_at: float = 0.0
    hello_at: float | None = None
    ready: bool = False
    startup_seconds: float | None = None
    delay: float = 0.0
    startup_kill: bool = False              # this incarnation's kill is aimed at its start-up
    crash_after: int | None = None          # power-loss mode: the op the VFS crashes at
    killed_after: float | None = None
    db_stamp: list[int] | None = None       # database file (mtime, size) at the last ready/ack
    in_checkpoint: bool | None = None       # the kill hit a WAL checkpoint (one worker only)
    deadline: float | None = None
    ready_at: float | None = None
    error: str | None = None
    errors_in_a_row: int = 0
    # This incarnation's COMMITs and the transitions they carried, as of its last ack.
    stats: list[int] = field(default_factory=lambda: [0, 0])


class _Run:
    def __init__(self, options: Options, out: TextIO) -> None:
        self.o = options
        self.out = out
        self.rng = random.Random(options.seed)
        self.workers = [
            _Worker(i, [_Lane(lane, thread_prefix(i, None if options.threads == 1 else lane))
                        for lane in range(options.threads)])
            for i in range(options.workers)]
        self.iterations: list[dict[str, Any]] = []
        self.final: list[dict[str, Any]] = []
        self.acked_total = 0
        self.writer_seconds = 0.0
        self.errors: list[str] = []
        self.id_problems: list[str] = []
        self.commits = 0              # the writers' COMMITs, as of their last acknowledgement
        self.committed = 0            # and the transitions those COMMITs carried
        self.restores_checked = 0     # checkpoints with files restored into a directory
        self.env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.env["PYTHONPATH"] = root + os.pathsep + self.env.get("PYTHONPATH", "")
        self.stopped = False  # the database could not be opened: no point going on
        # A PostgreSQL server (sqlitesaver.torture.server): its URL reaches the writers through
        # the environment, never their command line, which every user can read (ps).
        self.on_server = is_url(options.db)
        if self.on_server:
            from .server import TARGET_ENV
            self.env[TARGET_ENV] = options.db
        self.server_settings: dict[str, Any] | None = None  # as read back by the first verify

    # --- writers -----------------------------------------------------------------------

    def spawn(self, w: _Worker) -> None:
        w.incarnation += 1
        read_end, write_end = os.pipe()
        w.stderr = tempfile.TemporaryFile()
        cmd = self.child_command(w, write_end)
        # Drawn at spawn, in spawn order: the seed fixes the delays whatever the timing.
        startup, u = self.rng.random() < STARTUP_KILL_SHARE, self.rng.random()
        w.startup_kill = startup
        if self.o.mode == "power-loss":
            w.crash_after = 1 + int(u * (POWER_LOSS_STARTUP_OPS if startup else POWER_LOSS_OPS))
            w.delay = POWER_LOSS_TIMEOUT  # a watchdog: the VFS ends the writer itself
            cmd += ["--power-loss-after", str(w.crash_after)]
        else:
            w.delay = (u * STARTUP_WINDOW if startup
                       else self.o.min_interval + u * (self.o.max_interval - self.o.min_interval))
        # A stop signal (Ctrl-C, SIGTERM, SIGHUP) raised while Popen waits for the exec, or
        # before the process is recorded, would leave a writer that no cleanup knows of:
        # delivered once it is recorded instead.
        with signals_deferred():
            try:
                w.proc = subprocess.Popen(cmd, pass_fds=(write_end,), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=w.stderr,
                                          env=self.env)
            finally:
                os.close(write_end)
            w.fd, w.frames = read_end, FrameReader()
        w.spawned_at, w.hello_at, w.deadline = time.monotonic(), None, None
        w.ready, w.startup_seconds, w.ready_at, w.error = False, None, None, None
        w.stats = [0, 0]

    def child_command(self, w: _Worker, write_end: int) -> list[str]:
        """The writer process's command line (its pipe is ``write_end``)."""
        cmd = [sys.executable, "-m", "sqlitesaver.torture.child"]
        if not self.on_server:  # a server's URL goes in the environment (self.env)
            cmd += ["--db", self.o.db]
        cmd += ["--fd", str(write_end), "--worker", str(w.index),
               "--incarnation", str(w.incarnation), "--seed", str(self.o.seed),
               "--durability", self.o.durability]
        if self.o.threads != 1:
            cmd += ["--threads", str(self.o.threads)]
        if self.o.writer:
            cmd += ["--writer", self.o.writer]
        return cmd

    def receive(self, w: _Worker, data: bytes) -> None:
        for message in w.frames.feed(data):
            self.handle(w, message)

    def handle(self, w: _Worker, message: dict[str, Any]) -> None:
        """One message from the writer (see :mod:`~sqlitesaver.torture.child`)."""
        kind = message["m"]
        if kind == "hello":
            w.hello_at = time.monotonic()
            if not self.on_server or w.startup_kill or self.o.mode != "sigkill":
                w.deadline = w.hello_at + w.delay
        elif kind == "ready":
            w.ready, w.startup_seconds = True, message["seconds"]
            w.db_stamp = message.get("db")  # none on a server
            w.ready_at = time.monotonic()
            if self.on_server and not w.startup_kill and self.o.mode == "sigkill":
                # A server writer's start-up (psycopg, connecting, reading its threads back)
                # takes longer than a delay drawn for a file; timed from ready, the kills aimed
                # at its writes land in its writes.
                w.deadline = w.ready_at + w.delay
        elif kind in ("intent", "ack"):
            lane = self.lane_of(w, message)
            if lane is None:
                return
            if kind == "intent":
                if lane.inflight is not None:
                    self.id_problems.append(
                        f"worker {w.index} lane {lane.index}: intent of {message['tid']} "
                        f"while {lane.inflight[0]} is unacknowledged (a writer protocol "
                        "error: a lane runs one transition at a time)")
                lane.inflight = (message["tid"], message["kind"], message["ops"])
            else:
                self.acknowledge(w, lane, message)
        elif kind == "error":
            w.error = message["error"]

    def lane_of(self, w: _Worker, message: dict[str, Any]) -> _Lane | None:
        index = message.get("lane", 0)
        if not isinstance(index, int) or not 0 <= index < len(w.lanes):
            self.id_problems.append(f"worker {w.index}: {message['m']} of {message.get('tid')} "
                                    f"names lane {index!r} (a writer protocol error)")
            return None
        return w.lanes[index]

    def acknowledge(self, w: _Worker, lane: _Lane, message: dict[str, Any]) -> None:
        if lane.inflight is None or lane.inflight[0] != message["tid"]:
            self.id_problems.append(f"worker {w.index}: ack of {message['tid']} without its "
                                    "intent (a writer protocol error)")
            return
        tid, kind, ops = lane.inflight
        lane.acked.append((tid, ops))
        if kind == "abort":
            lane.rolled_back.add(tid)
        lane.inflight = None
        self.acked_total += 1
        w.db_stamp = message.get("db")
        if isinstance(message.get("st"), list):
            w.stats = message["st"]
        for op in ops:
            if op["op"] == "put" and op.get("files") and kind != "abort":
                lane.last_files = (op["thread"], op["ns"], op["tag"], op["files"])
            ck_id = message["ck"].get(op.get("tag")) if op["op"] == "put" else None
            if ck_id is None:
                continue
            lane.ids[op["tag"]] = ck_id
            previous = lane.max_id.get(op["thread"])
            if previous is not None and ck_id <= previous:
                self.id_problems.append(f"checkpoint id {ck_id} of thread {op['thread']!r} "
                                        f"(transition {tid}) is not above {previous}")
            lane.max_id[op["thread"]] = max(ck_id, previous or ck_id)
        # Log seqs are one sequence for the database: a lane's own appends, made one after the
        # other, must get increasing seqs (other lanes' seqs fall in between).
        for seq in message["log"]:
            if seq <= lane.last_log_seq:
                self.id_problems.append(f"log seq {seq} (transition {tid}) is not above "
                                        f"{lane.last_log_seq}")
            lane.last_log_seq = max(seq, lane.last_log_seq)

    def drain(self, w: _Worker) -> None:
        """Read everything the (dead) writer sent, then close its pipe."""
        assert w.fd is not None
        while True:
            data = os.read(w.fd, 1 << 16)
            if not data:
                break
            self.receive(w, data)
        os.close(w.fd)
        w.fd = None

    def stop(self, w: _Worker, *, kill: bool) -> str:
        """SIGKILL (or reap) the writer and return the phase it died in."""
        assert w.proc is not None
        if kill:
            w.proc.send_signal(signal.SIGKILL)
        w.killed_after = None if w.hello_at is None else time.monotonic() - w.hello_at
        w.proc.wait()
        self.drain(w)
        # Only a WAL checkpoint writes the database file: if it changed since the writer's last
        # ack, the transition in flight was checkpointing the WAL when it was killed. With
        # several workers another one may have done it, so this is only told for one.
        inflight = [lane.inflight for lane in w.lanes if lane.inflight is not None]
        w.in_checkpoint = None
        if (len(self.workers) == 1 and w.ready and inflight and w.db_stamp is not None
                and not self.on_server):
            st = os.stat(self.o.db)
            w.in_checkpoint = [st.st_mtime_ns, st.st_size] != w.db_stamp
        if w.ready_at is not None:
            self.writer_seconds += time.monotonic() - w.ready_at
        self.commits += w.stats[0]
        self.committed += w.stats[1]
        w.stats = [0, 0]
        if not w.ready:
            return "start-up"
        if not inflight:
            return "between"
        if len(w.lanes) == 1:
            return inflight[0][1]
        return f"{len(inflight)}/{len(w.lanes)} in flight"

    def writer_error(self, w: _Worker) -> str:
        assert w.proc is not None and w.stderr is not None
        w.stderr.seek(0)
        tail = w.stderr.read()[-2000:].decode("utf-8", "replace").strip()
        w.stderr.close()
        return w.error or f"exit status {w.proc.returncode}: {tail or '(no output)'}"

    # --- verdicts ----------------------------------------------------------------------

    def verify(self, w: _Worker) -> tuple[_LanesVerdict, float | None]:
        """Open the database as the library does and judge the worker's threads, lane by
        lane. On a server: a new Saver (a new connection pool) reads what the server holds;
        there is no file to check or recover, and no files stored with checkpoints."""
        try:
            if self.on_server:
                with Saver(self.o.db, durability=self.o.durability) as saver:
                    if self.server_settings is None:
                        self.server_settings = saver.settings()
                    recovery = None
                    seen = [observe(saver, lane.prefix, files=False) for lane in w.lanes]
                    restored = [[] for _ in w.lanes]
            else:
                with Saver(self.o.db, durability=self.o.durability,
                           integrity_check="full") as saver:
                    recovery = saver.recovery.seconds
                    seen = [observe(saver, lane.prefix) for lane in w.lanes]
                    restored = [self.check_restore(saver, lane, found)
                                for lane, found in zip(w.lanes, seen)]
        except SaverError as exc:
            self.stopped = True
            return _LanesVerdict(
                "none", problems=[f"reopening failed: {type(exc).__name__}: {exc}"],
                lanes=["none"] * len(w.lanes)), None
        verdicts = [self.verify_lane(lane, found) for lane, found in zip(w.lanes, seen)]
        # One lane: its verdict as it is. Several: "partial" if any lane's is, the rest is
        # told per lane.
        if len(verdicts) == 1:
            inflight = verdicts[0].inflight
        else:
            inflight = "partial" if any(v.partial for v in verdicts) else "none"
        combined = _LanesVerdict(inflight, lanes=[v.inflight for v in verdicts])
        for problems in restored:
            combined.problems += problems
        for v in verdicts:
            combined.lost |= v.lost
            combined.leaked |= v.leaked
            combined.problems += v.problems
        return combined, recovery

    def check_restore(self, saver: Saver, lane: _Lane, seen: Observation) -> list[str]:
        """Restore the lane's newest acknowledged checkpoint with files (if it is still there:
        not pruned or deleted) into a directory kept per lane, so each restore also replaces
        the previous one's files, and require exactly the files that checkpoint was put
        with, by digest of the bytes on disk."""
        if lane.last_files is None:
            return []
        thread, namespace, tag, files = lane.last_files
        ck_id = seen.ids.get(tag)
        if ck_id is None:
            return []  # pruned or deleted since (the verdict says whether rightly)
        directory = os.path.join(self.o.db + ".restored", lane.prefix.rstrip("-"))
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        try:
            saver.restore_workspace(thread, directory, checkpoint_id=ck_id, namespace=namespace)
        except SaverError as exc:
            return [f"restoring checkpoint {tag} ({ck_id}) failed: {type(exc).__name__}: {exc}"]
        self.restores_checked += 1
        found = {}
        for current, _, names in os.walk(directory):
            for name in names:
                full = os.path.join(current, name)
                with open(full, "rb") as f:
                    found[os.path.relpath(full, directory).replace(os.sep, "/")] = \
                        file_digest(f.read())
        if found == files:
            return []
        wrong = sorted(set(found) ^ set(files)) + sorted(
            n for n in set(found) & set(files) if found[n] != files[n])
        return [f"restoring checkpoint {tag} ({ck_id}) of thread {thread!r} gave other files "
                f"than it was put with: {wrong[:5]}"]

    def verify_lane(self, lane: _Lane, seen: Observation) -> Verdict:
        """One lane: its acknowledged transitions, and its one in flight, against what the
        database holds of its threads."""
        acked = lane.model.clone()
        for tid, ops in lane.acked:
            apply(acked, tid, ops, lane.deleted_by)
        with_inflight = None
        rolled_back = set(lane.rolled_back)
        if lane.inflight is not None:
            with_inflight = acked.clone()
            apply(with_inflight, lane.inflight[0], lane.inflight[2], {})
            if lane.inflight[1] == "abort":
                rolled_back.add(lane.inflight[0])  # it raises whenever killed: never there
        verdict = compare(acked, with_inflight, seen.model, lane.deleted_by,
                          frozenset(rolled_back))
        # Partial too: an acknowledged transition lost (durability normal, a server crash) may
        # be one the in-flight transition would have undone (a delete of its thread), which
        # then looks half done; a prefix of what was acknowledged, in-flight absent, is the
        # truth (found by the normal-durability server-crash test).
        if (verdict.lost or verdict.partial) and not verdict.problems and not seen.problems:
            verdict = _prefix_verdict(lane, seen.model) or verdict
        verdict.problems[:0] = seen.problems
        for tag, found in seen.ids.items():
            if tag in lane.ids and lane.ids[tag] != found:
                verdict.problems.append(f"checkpoint {tag} was acknowledged as "
                                        f"{lane.ids[tag]} but is stored as {found}")
        known = {**lane.ids, **seen.ids}
        stored = _checkpoints_by_tag(seen.model)
        for tag, parent_id in seen.parents.items():
            if tag not in stored:  # read before a SaverError cut the observation short
                continue
            parent_tag = stored[tag][1]
            if parent_tag is not None and parent_tag in known and known[parent_tag] != parent_id:
                verdict.problems.append(f"checkpoint {tag} has parent id {parent_id}, "
                                        f"expected {known[parent_tag]}")
        if verdict.lost:
            # Lost transitions' ids were never durable, so they may be handed out again
            # (durability normal after a power loss): go on from what survived.
            lane.max_id, lane.last_log_seq = {}, seen.max_log_seq
        for tag, found in seen.ids.items():
            if tag not in stored:
                continue
            thread = stored[tag][0]
            lane.max_id[thread] = max(found, lane.max_id.get(thread, found))
        # Carry on from what is there, so a violation is reported once, not at every kill.
        lane.model, lane.acked, lane.inflight = seen.model, [], None
        lane.rolled_back.clear()
        return verdict

    # --- the loop ----------------------------------------------------------------------

    def banner(self) -> str:
        """The run's first line: what is run, how, and its seed."""
        o = self.o
        how = (f"power loss at write/sync 1-{POWER_LOSS_OPS}" if o.mode == "power-loss"
               else f"SIGKILL after {o.min_interval:g}-{o.max_interval:g} s")
        threads = "" if o.threads == 1 else f" x {o.threads} threads (one Saver per worker)"
        return (f"torture: {o.iterations} iterations, {o.workers} worker(s){threads}, "
                f"durability {o.durability}, {how}, seed {o.seed}")

    def run(self) -> int:
        o = self.o
        self.print(self.banner())
        self.print(f"database: {self.shown_db}")
        if self.on_server:
            from .server import skipped_note
            self.print(skipped_note())
        started = time.monotonic()
        for w in self.workers:
            self.spawn(w)
        try:
            while len(self.iterations) < o.iterations and not self.stopped:
                self.step()
        finally:
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGKILL)
        if not self.stopped:
            for w in self.workers:  # the last kills: judge every worker's final state
                if w.fd is not None:
                    phase = self.stop(w, kill=True)
                    verdict, recovery = self.verify(w)
                    self.final.append(self.record(w, phase, verdict, recovery, final=True))
        else:
            for w in self.workers:
                if w.fd is not None:
                    self.stop(w, kill=True)
        self.seconds = time.monotonic() - started
        return self.summarise()

    def step(self) -> None:
        now = time.monotonic()
        deadlines = [w.deadline for w in self.workers if w.deadline is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else 0.5
        fds = [w.fd for w in self.workers if w.fd is not None]
        ready, _, _ = select.select(fds, [], [], timeout)
        for w in self.workers:
            if w.fd in ready:
                data = os.read(w.fd, 1 << 16)
                if data:
                    self.receive(w, data)
                else:
                    self.ended(w)
        now = time.monotonic()
        for w in self.workers:
            if self.stopped or len(self.iterations) >= self.o.iterations:
                return
            if w.deadline is not None and now >= w.deadline:
                if self.o.mode == "power-loss":
                    self.died(w, hung=True, why=f"did not reach its crash point (operation "
                                                f"{w.crash_after}) in {w.delay:g} s")
                else:
                    self.judge(w, self.stop(w, kill=True))
            elif w.hello_at is None and now - w.spawned_at > HELLO_TIMEOUT:
                self.died(w, hung=True)
            elif (w.deadline is None and not w.ready and w.hello_at is not None
                  and now - w.hello_at > HELLO_TIMEOUT):  # a server writer, timed from ready
                self.died(w, hung=True, why=f"hung before ready ({HELLO_TIMEOUT:g} s)")

    def ended(self, w: _Worker) -> None:
        """The writer's pipe closed: it lost power on purpose (power-loss mode) or died."""
        assert w.proc is not None
        if self.o.mode == "power-loss" and w.proc.wait() == faults.CRASH_EXIT_STATUS:
            self.judge(w, self.stop(w, kill=False))
        else:
            self.died(w)

    def judge(self, w: _Worker, phase: str) -> None:
        """One iteration: verify the stopped writer's data, record it, restart the writer."""
        verdict, recovery = self.verify(w)
        self.iterations.append(self.record(w, phase, verdict, recovery))
        w.errors_in_a_row = 0
        if not verdict.ok and not self.o.keep_going:
            self.stopped = True  # keep the database as the violation left it
        if not self.stopped and len(self.iterations) < self.o.iterations:
            self.spawn(w)

    def died(self, w: _Worker, *, hung: bool = False, why: str = "hung before hello") -> None:
        """A writer ended on its own (a Saver error, a crash) or hung."""
        phase = self.stop(w, kill=hung)
        message = why if hung else self.writer_error(w)
        self.errors.append(f"worker {w.index} incarnation {w.incarnation}: {message}")
        self.print(f"     worker {w.index} ended by itself in {phase}: {message}")
        verdict, recovery = self.verify(w)
        self.final.append(self.record(w, phase, verdict, recovery, final=True))
        w.errors_in_a_row += 1
        if not self.o.keep_going:
            self.stopped = True
        elif w.errors_in_a_row >= MAX_ERRORS_IN_A_ROW:
            self.print(f"     worker {w.index} failed {w.errors_in_a_row} times in a row; "
                       "stopping")
            self.stopped = True
        elif not self.stopped:
            self.spawn(w)

    def record(self, w: _Worker, phase: str, verdict: _LanesVerdict, recovery: float | None, *,
               final: bool = False) -> dict[str, Any]:
        entry = {
            "iteration": None if final else len(self.iterations) + 1,
            "worker": w.index, "incarnation": w.incarnation,
            "kill_delay": None if self.o.mode == "power-loss" else round(w.delay, 6),
            "crash_after_ops": w.crash_after,
            "killed_after": None if w.killed_after is None else round(w.killed_after, 6),
            "phase": phase,
            "in_wal_checkpoint": w.in_checkpoint,
            "acked_total": self.acked_total,
            "recovery_seconds": recovery,
            "writer_startup_seconds": w.startup_seconds,
            # with --threads: one per lane, in lane order
            "inflight": verdict.inflight if self.o.threads == 1 else verdict.lanes,
            "lost": sorted(verdict.lost), "partial": verdict.partial,
            "leaked": sorted(verdict.leaked),
            "problems": verdict.problems[:20],
            "ok": verdict.ok,
        }
        label = "end" if final else f"{entry['iteration']:>4}/{self.o.iterations}"
        if verdict.ok and self.o.threads == 1:
            shown = "ok" + ("" if verdict.inflight == "none"
                            else f" (in-flight {verdict.inflight})")
        elif verdict.ok:
            told = _counts(state for state in verdict.lanes if state != "none")
            shown = "ok" + (f" (in flight: {told})" if told else "")
        else:
            parts = []
            if verdict.lost:
                parts.append(f"LOST {len(verdict.lost)}: {', '.join(sorted(verdict.lost)[:5])}")
            if verdict.partial and self.o.threads == 1:
                parts.append("PARTIAL in-flight transition")
            elif verdict.partial:
                lanes = [str(i) for i, state in enumerate(verdict.lanes) if state == "partial"]
                parts.append(f"PARTIAL in-flight transition of lane {', '.join(lanes)}")
            if verdict.leaked:
                parts.append(f"LEAKED {len(verdict.leaked)} (raised, yet visible): "
                             f"{', '.join(sorted(verdict.leaked)[:5])}")
            if verdict.problems:
                first = " ".join(verdict.problems[0].split())
                parts.append(f"CORRUPT: {first[:300]}{'...' if len(first) > 300 else ''}")
            shown = "; ".join(parts)
        recovered = "-" if recovery is None else f"{recovery * 1000:.1f} ms"
        after = "   -    " if w.killed_after is None else f"{w.killed_after * 1000:6.1f} ms"
        shown_phase = phase + ("+ckpt" if w.in_checkpoint else "")
        width = 14 if self.o.threads == 1 else 18  # "4/4 in flight+ckpt"
        verb = "lost power" if self.o.mode == "power-loss" and not final else "killed at"
        self.print(f"{label}  w{w.index}  {verb} +{after} in {shown_phase:<{width}} "
                   f"acked {self.acked_total:>6}  recovery {recovered:>9}  {shown}")
        return entry

    def summarise(self) -> int:
        entries = self.iterations + self.final
        lost = sorted({tid for e in entries for tid in e["lost"]})
        partial = sum(e["partial"] for e in entries)
        leaked = sorted({tid for e in entries for tid in e["leaked"]})
        corrupt = sum(bool(e["problems"]) for e in entries) + bool(self.id_problems)
        recoveries = [e["recovery_seconds"] for e in entries if e["recovery_seconds"] is not None]
        startups = [e["writer_startup_seconds"] for e in entries
                    if e["writer_startup_seconds"] is not None]
        phases: dict[str, int] = {}
        for e in self.iterations:
            phases[e["phase"]] = phases.get(e["phase"], 0) + 1
        in_checkpoint = sum(bool(e["in_wal_checkpoint"]) for e in self.iterations)
        inflight: dict[str, int] = {}
        for e in entries:  # with --threads, per lane
            for state in (e["inflight"] if isinstance(e["inflight"], list) else [e["inflight"]]):
                inflight[state] = inflight.get(state, 0) + 1
        failed = bool(lost or partial or leaked or corrupt or self.errors)
        self.summary = {
            "iterations": len(self.iterations),
            "transitions_acknowledged": self.acked_total,
            "lost": len(lost), "lost_transitions": lost[:100],
            "partial": partial,
            "leaked": len(leaked), "leaked_transitions": leaked[:100],
            "corrupt": corrupt,
            "writer_errors": len(self.errors),
            "recovery_p50_ms": _ms(statistics.median(recoveries)) if recoveries else None,
            "recovery_max_ms": _ms(max(recoveries)) if recoveries else None,
            "writer_startup_p50_ms": _ms(statistics.median(startups)) if startups else None,
            "writer_transitions_per_second": (round(self.acked_total / self.writer_seconds)
                                              if self.writer_seconds else None),
            "threads": self.o.threads,
            "commits": self.commits,
            "committed_transitions": self.committed,
            "transitions_per_commit": (round(self.committed / self.commits, 2)
                                       if self.commits else None),
            "restores_checked": self.restores_checked,
            "kills_by_phase": dict(sorted(phases.items())),
            "kills_in_wal_checkpoint": in_checkpoint if len(self.workers) == 1 else None,
            "inflight_at_kill": dict(sorted(inflight.items())),
            "seconds": round(self.seconds, 2),
            "verdict": "FAIL" if failed else "PASS",
        }
        self.summary.update(self.extra_summary())
        s = self.summary
        rows = [
            ("iterations (kills)", s["iterations"]),
            ("kills by phase", ", ".join(f"{k} {v}" for k, v in s["kills_by_phase"].items())),
            ("kills in a WAL checkpoint", s["kills_in_wal_checkpoint"]
             if s["kills_in_wal_checkpoint"] is not None else "not told with several workers"),
            ("in-flight at kill" + ("" if self.o.threads == 1 else " (per lane)"),
             ", ".join(f"{k} {v}" for k, v in s["inflight_at_kill"].items())),
            ("transitions acknowledged", s["transitions_acknowledged"]),
            ("workspace restores checked", f"{s['restores_checked']} (the newest acknowledged "
                                           "checkpoint with files, after a kill)"),
            ("lost", s["lost"]),
            ("partial", s["partial"]),
            ("leaked (raised, yet visible)", s["leaked"]),
            ("corrupt", s["corrupt"]),
            ("writer errors", s["writer_errors"]),
            ("recovery p50 / max", f"{s['recovery_p50_ms']} ms / {s['recovery_max_ms']} ms"),
            ("writer start-up p50", f"{s['writer_startup_p50_ms']} ms (open, recovery, "
                                    "reading its threads back)"),
            ("writer throughput", f"{s['writer_transitions_per_second']} transitions/s"),
            ("threads per worker", f"{s['threads']} (one Saver per worker process)"),
            ("group commit", f"{s['committed_transitions']} transitions in {s['commits']} "
                             f"COMMITs, {s['transitions_per_commit']} per COMMIT"),
            ("wall time", f"{s['seconds']} s"),
            ("verdict", s["verdict"]),
        ]
        if self.on_server:  # no file to checkpoint or restore, no group-commit counters
            skip = ("kills in a WAL checkpoint", "workspace restores checked", "group commit",
                    # a killed writer leaves nothing to recover (server-crash: its restarts)
                    "recovery p50 / max" if s["recovery_p50_ms"] is None else "")
            rows = [row for row in rows if row[0] not in skip]
            rows.insert(0, ("server settings read back", _server_line(self.server_settings)))
        rows[-2:-2] = self.extra_rows()
        return self.print_summary(rows, failed)

    def extra_summary(self) -> dict[str, Any]:
        """What a mode adds to the summary (sqlitesaver.torture.server's server-crash)."""
        return {}

    def extra_rows(self) -> list[tuple[str, Any]]:
        """Rows a mode adds to the printed summary, before the wall time."""
        return []

    @property
    def shown_db(self) -> str:
        """The database as printed and reported: a server's URL without its password."""
        if not self.on_server:
            return self.o.db
        from .server import describe
        return describe(self.o.db)

    def print_summary(self, rows: list[tuple[str, Any]], failed: bool) -> int:
        """Print the summary's rows (aligned) and the first problems; the exit status."""
        width = max(len(k) for k, _ in rows)
        self.print("")
        for key, value in rows:
            self.print(f"  {key:<{width}}  {value}")
        for problem in self.id_problems[:10] + self.errors[:10]:
            self.print(f"  ! {problem}")
        return 1 if failed else 0

    def report(self) -> dict[str, Any]:
        o = self.o
        return {
            "command": "python -m sqlitesaver.torture",
            "options": {"mode": o.mode, "iterations": o.iterations, "seed": o.seed,
                        "workers": o.workers, "threads": o.threads,
                        "durability": o.durability, "min_interval": o.min_interval,
                        "max_interval": o.max_interval, "writer": o.writer,
                        "db": self.shown_db},
            "server": self.server_settings,
            "environment": {"python": platform.python_version(),
                            "apsw": apsw.apsw_version(),
                            "sqlite": apsw.sqlite_lib_version(),
                            "msgpack": ".".join(map(str, msgpack.version)),
                            "platform": platform.platform(), "cpus": os.cpu_count(),
                            **({"psycopg": _psycopg_version()} if self.on_server else {})},
            "summary": self.summary,
            "id_problems": self.id_problems[:100],
            "writer_errors": self.errors[:100],
            "iterations": self.iterations,
            "final": self.final,
        }

    def print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


#: The signals that stop a run (each unwinds it: KeyboardInterrupt, or server.Terminated).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold :data:`STOP_SIGNALS` back for the block (one that starts a process and records
    it): one that arrives meanwhile is delivered, and unwinds, right after it. Handlers, not
    the signal mask: a process started in the block would inherit a blocked mask."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can be set, and run, in the main thread only
        return
    pending: list[int] = []
    saved = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
             for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])


def _prefix_verdict(lane: _Lane, found: Model) -> Verdict | None:
    """When acknowledged transitions are missing (what a power loss does to NORMAL): is the
    database exactly the state after the first k of them, newer ones lost whole? Then it is
    consistent and only those are lost, none partial; None if no prefix matches."""
    items, order = found.items(), found.order()
    state = lane.model.clone()
    for k in range(len(lane.acked)):
        if state.items() == items and state.order() == order:
            return Verdict("absent" if lane.inflight else "none",
                           lost={tid for tid, _ in lane.acked[k:]})
        apply(state, *lane.acked[k], {})
    return None


def _checkpoints_by_tag(model: Model) -> dict[str, tuple[str, str | None]]:
    """tag -> (thread, parent tag from the checkpoint's metadata) for every checkpoint."""
    found: dict[str, tuple[str, str | None]] = {}
    for name, t in model.threads.items():
        for ck in t.cks:
            try:
                meta = json.loads(ck[6])
            except ValueError:
                meta = None
            parent = meta.get("parent") if isinstance(meta, dict) else None
            found[ck[4]] = (name, parent if isinstance(parent, str) else None)
    return found


def _counts(values: Any) -> str:
    """``"absent 2, present 1"``: how often each value occurs, sorted by value."""
    counted: dict[str, int] = {}
    for value in values:
        counted[value] = counted.get(value, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counted.items()))


def _psycopg_version() -> str:
    import psycopg  # only for a server run, which has it
    return psycopg.__version__


def _server_line(settings: dict[str, Any] | None) -> str:
    """A server's durability settings as the engine read them back (SHOW)."""
    if settings is None:
        return "(never read: no verdict was reached)"
    return (f"PostgreSQL {settings.get('server_version')}, fsync {settings.get('fsync')}, "
            f"full_page_writes {settings.get('full_page_writes')}, synchronous_commit "
            f"{settings.get('server_synchronous_commit')} (server), "
            f"{settings.get('synchronous_commit')} (the Saver's, per transaction)")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def run(options: Options, out: TextIO = sys.stdout) -> tuple[int, dict[str, Any]]:
    """Run the harness; return its exit status (0 pass, 1 fail) and its report."""
    if options.langgraph:
        from .graph_harness import GraphRun  # imports LangGraph: only when asked for
        harness: _Run = GraphRun(options, out)
    else:
        harness = _Run(options, out)
    status = harness.run()
    return status, harness.report()
