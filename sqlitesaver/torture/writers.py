"""The harness's writer processes: start one, read what it reports on its pipe, stop it.

:class:`_Worker` is what the harness knows of one writer process (its pipe, its timing, its
kill), :class:`_Lane` what it knows of one of its writer threads' transitions (acknowledged, in
flight, the ids it was told). :class:`_Writers` is the part of the harness
(:class:`~sqlitesaver.torture.harness._Run`) that spawns a writer with its seeded kill delay,
takes in its messages (``hello``, ``ready``, ``intent``, ``ack``, ``error``: see
:mod:`~sqlitesaver.torture.child`), drains its pipe once it is dead and tells the phase it died
in; the run's state it works on (``o``, ``rng``, ``workers``, ``env``, the counters) is set up
by ``_Run.__init__``. :func:`signals_deferred` keeps a stop signal from leaving a started
process unrecorded (the server and power-loss modes use it for their postmasters too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any

from .oracle import Model
from .protocol import STACK_SIGNAL, FrameReader

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


class _Writers:
    """The writer processes of a run (a part of :class:`~sqlitesaver.torture.harness._Run`)."""

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

    def stack_of(self, w: _Worker) -> str:
        """Every thread's Python stack of the live writer ``w``, as faulthandler writes it on
        :data:`STACK_SIGNAL` (registered by sqlitesaver/torture/child.py) into the writer's
        stderr; what it wrote within :data:`STACK_WAIT` seconds, or a line saying why not.
        For a writer that stalled: the wait it is stuck in."""
        assert w.proc is not None and w.stderr is not None
        start = w.stderr.seek(0, os.SEEK_END)
        try:
            w.proc.send_signal(STACK_SIGNAL)
        except OSError as exc:
            return f"(no stack: {exc})"
        # faulthandler writes from its C signal handler, at once, even while the writer's
        # Python code is blocked in a C call: wait until the main thread's stack (written
        # last, as "Current thread") has begun and the output stopped growing, or give up.
        deadline = time.monotonic() + STACK_WAIT
        dump = b""
        while time.monotonic() < deadline and w.proc.poll() is None:
            before = len(dump)
            w.stderr.seek(start)
            dump = w.stderr.read()
            if b"Current thread" in dump and len(dump) == before:
                break
            time.sleep(0.01)  # polling another process's output: nothing to wait on here
        text = dump.decode("utf-8", "replace").strip()
        return text or f"(no stack written within {STACK_WAIT:g} s)"

    def writer_error(self, w: _Worker) -> str:
        assert w.proc is not None and w.stderr is not None
        w.stderr.seek(0)
        tail = w.stderr.read()[-2000:].decode("utf-8", "replace").strip()
        w.stderr.close()
        return w.error or f"exit status {w.proc.returncode}: {tail or '(no output)'}"


#: Seconds :meth:`_Writers.stack_of` waits for a writer's stack (protocol.STACK_SIGNAL).
STACK_WAIT = 2.0

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

