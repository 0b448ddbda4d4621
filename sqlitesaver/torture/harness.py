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

The harness is one class, :class:`_Run`, in layers, each in its own module:
:mod:`~sqlitesaver.torture.writers` (the writer processes, their pipes and kills),
:mod:`~sqlitesaver.torture.verification` (the verdict after each kill) and
:mod:`~sqlitesaver.torture.summary` (each kill's line, the summary and the report); this module
keeps the options, the run's state and the loop that drives them.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from .. import faults
from ..postgres.target import is_url
from . import summary, verification, writers
from .summary import _Summary
from .verification import _Verification
from .workload import thread_prefix
from .writers import HELLO_TIMEOUT, POWER_LOSS_OPS, _Lane, _Worker, _Writers

__all__ = ["Options", "run"]

# Also importable from here, as when the harness was one module. Each is the very object of the
# module that holds it, so patch it there (e.g. ``writers.POWER_LOSS_TIMEOUT``, which spawn
# reads): patched here, it would change nothing that runs. HELLO_TIMEOUT and POWER_LOSS_OPS are
# read by the loop below from this module (and by spawn and server.py from writers).
STARTUP_KILL_SHARE, STARTUP_WINDOW = writers.STARTUP_KILL_SHARE, writers.STARTUP_WINDOW
POWER_LOSS_STARTUP_OPS = writers.POWER_LOSS_STARTUP_OPS
POWER_LOSS_TIMEOUT = writers.POWER_LOSS_TIMEOUT
STOP_SIGNALS, signals_deferred = writers.STOP_SIGNALS, writers.signals_deferred
_LanesVerdict = verification._LanesVerdict
_prefix_verdict = verification._prefix_verdict
_checkpoints_by_tag = verification._checkpoints_by_tag
_counts, _ms = summary._counts, summary._ms
_psycopg_version, _server_line = summary._psycopg_version, summary._server_line

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


class _Run(_Writers, _Verification, _Summary):
    """One torture run: the writers (:class:`~sqlitesaver.torture.writers._Writers`), the
    verification (:class:`~sqlitesaver.torture.verification._Verification`), the output
    (:class:`~sqlitesaver.torture.summary._Summary`) and, here, their state and the loop."""

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
        self.big_restores = 0         # of those, restores with a file above the chunk size
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


def run(options: Options, out: TextIO = sys.stdout) -> tuple[int, dict[str, Any]]:
    """Run the harness; return its exit status (0 pass, 1 fail) and its report."""
    if options.langgraph:
        from .graph_harness import GraphRun  # imports LangGraph: only when asked for
        harness: _Run = GraphRun(options, out)
    else:
        harness = _Run(options, out)
    status = harness.run()
    return status, harness.report()
