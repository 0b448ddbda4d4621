"""The crash torture on a PostgreSQL server (issue #17): what differs from a SQLite file.

Two ways to run on a server, both through ``python -m sqlitesaver.torture``:

* ``--mode sigkill`` with ``--db postgresql://...`` (a server someone else runs; its database
  must hold no thread yet) or ``--backend postgres`` (a throwaway cluster this process starts,
  :class:`OwnedServer`): the writers are SIGKILLed as on a file, the server keeps running, and
  what a killed writer left is read back through a new Saver.
* ``--mode server-crash`` (:class:`ServerCrashRun`, owned cluster only): every server process
  (the postmaster and all its children, by pid) is SIGKILLed at a seeded random moment while the
  writers commit; the server is restarted (PostgreSQL's crash recovery) and every acknowledged
  transition must be there, whole. A writer's call cut off by the crash raises in the writer,
  which reports it and exits: its transition is the lane's one in flight, accepted present or
  absent. One whose COMMIT was in flight (the engine says "maybe committed") is counted both
  ways, as a failed fsync on SQLite is.

Guarantees: the password of a URL is never on a writer's command line (it reaches the writers
through :data:`TARGET_ENV`) nor in anything printed or reported (:func:`describe`); an owned
cluster is removed when the run ends, also on SIGTERM, SIGHUP or Ctrl-C (no postmaster left
behind); workload features a server cannot run are left out by name (:data:`NOT_ON_A_SERVER`)
and the run says so, never silently.

Not modelled: power loss, an OS crash, storage faults (a SIGKILL of every server process leaves
what they wrote in the OS page cache; only WAL that never left the server's shared memory is
lost, which is what ``synchronous_commit=off`` risks).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

from ..postgres import target as pg_target
from .harness import Options, _Run
from .summary import _counts, _ms
from .writers import HELLO_TIMEOUT, _Worker, signals_deferred

__all__ = ["NOT_ON_A_SERVER", "TARGET_ENV", "UNSAFE_ENV", "allow_unsafe_server", "Terminated",
           "OwnedServer", "ServerCrashRun", "is_server", "describe", "server_mix", "skipped_note", "owned_server",
           "handle_termination", "check_target"]

#: Transition kinds of the workload the harness does not drive on a server yet, each with why:
#: left out of the writers' mix on a server, and named in the run. The engine stores files
#: (tests/test_files.py runs on both, a client SIGKILLed mid-put included); the harness's
#: file oracle and workspace restores still work from a directory named after a database file.
NOT_ON_A_SERVER: dict[str, str] = {
    "files": "files stored with a checkpoint: the harness's file oracle is a file's only, "
             "not yet a server's",
    "workspace": "workspace snapshots and restores: their directory is named after a "
                 "database file, not yet a server's",
}
#: The environment variable through which a writer gets a server's URL: the command line of a
#: process is readable by every user of the machine (``ps``), its environment is not.
TARGET_ENV = "SQLITESAVER_TORTURE_DB"
#: Set (to "1") in a writer's environment when the owned server runs with fsync=off or
#: full_page_writes=off on purpose (``--server-setting``): the writer then accepts it
#: (:func:`allow_unsafe_server`).
UNSAFE_ENV = "SQLITESAVER_TORTURE_UNSAFE_SERVER"
#: Seconds each writer gets, after the server's restart, to end (its call failed) or to
#: acknowledge a transition (it reconnected: the engine's pool retries a failed connect at most
#: a second apart, postgres/pool.py). A bound, not a wait: 30 s was once too short on a loaded
#: machine, with a LossyFS server that took 13 s to start and psycopg_pool's own backoff, which
#: doubled up to minutes before the engine capped it.
WRITERS_END_TIMEOUT = 60.0
#: Seconds for every writer to report ready (connected, its threads read back) after a restart.
READY_TIMEOUT = HELLO_TIMEOUT
_POLL = 0.01


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so every ``finally`` (the writers' kill,
    the owned cluster's removal) runs. ``signum`` is the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signal.Signals(signum).name}")
        self.signum = signum


def is_server(db: str | None) -> bool:
    """Whether ``db`` names a PostgreSQL server (a ``postgresql://`` URL), not a SQLite file."""
    return pg_target.is_url(db)


def describe(db: str) -> str:
    """``db`` as it may be printed or reported: a server's URL without its password (user, host,
    port, database), a file's path as it is."""
    if not is_server(db):
        return db
    try:
        return pg_target.describe(pg_target.parse(db))
    except Exception:  # a URL that does not parse: say nothing of it but its scheme
        return db.split("://", 1)[0] + "://(unparsable URL)"


def server_mix(mix: Mapping[str, float]) -> dict[str, float]:
    """``mix`` without the kinds of :data:`NOT_ON_A_SERVER`."""
    kept = {kind: weight for kind, weight in mix.items() if kind not in NOT_ON_A_SERVER}
    if not kept:
        raise ValueError(f"every transition kind of this writer's mix ({sorted(mix)}) is one a "
                         "server cannot run: " + "; ".join(NOT_ON_A_SERVER.values()))
    return kept


def skipped_note() -> str:
    """The line a server run prints about what it leaves out, and why."""
    return "skipped on a server: " + "; ".join(f"{kind} ({why})"
                                               for kind, why in NOT_ON_A_SERVER.items())


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (their
    default would end the process at once, leaving an owned postmaster running: it is in a
    session of its own, out of reach of the terminal's signals). Restored afterwards."""
    def raise_terminated(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    saved = {sig: signal.signal(sig, raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class OwnedServer:
    """A throwaway PostgreSQL cluster (:class:`sqlitesaver.pgcluster.Cluster`: durable defaults,
    data checksums, a Unix socket in a temporary directory) that this process starts, may crash
    and restart, and removes on :meth:`close`, whatever happened."""

    def __init__(self, timeout: float = 60.0,
                 settings: Mapping[str, str] | None = None) -> None:
        from .. import pgcluster  # stdlib only; raises ClusterError if there is no server

        self.cluster = pgcluster.Cluster(settings, timeout=timeout)

    def __enter__(self) -> "OwnedServer":
        with signals_deferred():  # a postmaster started, but not yet recorded, would be left
            self.cluster.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The cluster's ``postgres`` database (user ``postgres``, trusted, no password)."""
        return self.cluster.url

    @property
    def directory(self) -> str:
        """The cluster's temporary directory (socket, data, server log)."""
        return self.cluster.socket_dir

    def pids(self) -> list[int]:
        """The postmaster's pid (from ``postmaster.pid``) and its children's (from
        ``/proc/<pid>/stat``), postmaster first; empty if no postmaster runs."""
        postmaster = self.cluster.postmaster_pid()
        if postmaster is None or not self.cluster.running():
            return []
        children = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    # pid (comm) state ppid ...: comm may hold spaces and parentheses
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == postmaster:
                    children.append(int(entry))
        return [postmaster, *sorted(children)]

    def crash(self) -> int:
        """SIGKILL every process of the server as one crash, and return how many there were.

        Each is first stopped (SIGSTOP, postmaster first, so it forks no new one and none of
        them runs on, say flushing WAL, while the others are being killed), then killed; the
        cluster's own sweep (processes whose working directory is the data directory, so none
        escapes) then waits, bounded, until all are gone and the postmaster is reaped: its pid
        in the ``postmaster.pid`` lock file is then a dead one, as :meth:`restart` needs."""
        with signals_deferred():  # a stop signal in here is handled once all are gone
            pids = self.pids()
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            self.cluster.kill_all()
        return len(pids)

    def restart(self) -> float:
        """Start the crashed server (crash recovery) and return the seconds until it accepted
        connections again."""
        started = time.monotonic()
        with signals_deferred():  # a postmaster started, but not yet recorded, would be left
            self.cluster.start()
        return time.monotonic() - started

    def close(self) -> None:
        """Stop the server and remove its directory (pgcluster: idempotent, bounded). A second
        stop signal meanwhile waits until it is done."""
        with signals_deferred():
            self.cluster.close()


def allow_unsafe_server() -> None:
    """In this process, let the engine open a server running with ``fsync=off`` or
    ``full_page_writes=off``, which it refuses otherwise: only for the torture's teeth
    (``--server-setting fsync=off``), which must show what such a server loses. The harness
    sets :data:`UNSAFE_ENV` for its writers, which call this at start."""
    from ..postgres import connect

    if getattr(connect.check_settings, "torture_unsafe", False):
        return
    checked = connect.check_settings

    def check_settings(settings: Any, durability: str, server: str, *, writing: bool) -> None:
        import dataclasses

        checked(dataclasses.replace(settings, fsync="on", full_page_writes="on"), durability,
                server, writing=writing)

    check_settings.torture_unsafe = True  # type: ignore[attr-defined]
    connect.check_settings = check_settings


@contextlib.contextmanager
def owned_server(out: TextIO, settings: Mapping[str, str] | None = None
                 ) -> Iterator[OwnedServer]:
    """An :class:`OwnedServer` for the block, removed at its end; SIGTERM and SIGHUP unwind the
    block as Ctrl-C does (:class:`Terminated`), so they remove it too."""
    with handle_termination():
        started = time.monotonic()
        with OwnedServer(settings=settings) as server:
            print(f"throwaway PostgreSQL cluster in {server.directory} (initdb and start "
                  f"{time.monotonic() - started:.1f} s; removed at the end)", file=out,
                  flush=True)
            yield server


def check_target(db: str) -> str | None:
    """Why the harness cannot run on server ``db`` (it is unreachable, or its database already
    holds threads, which the oracle would take for content nobody wrote), or None. The message
    never holds the password: the engine's errors describe the server without it."""
    from .. import Saver
    from ..errors import SaverError

    try:
        with Saver(db) as saver:
            threads = saver.threads()
    except SaverError as exc:
        return f"{type(exc).__name__}: {exc}"
    if threads:
        return (f"the database {describe(db)} already holds {len(threads)} thread(s) (e.g. "
                f"{threads[0]!r}); the harness writes its own and never touches existing data: "
                "give it an empty database (createdb), or use --backend postgres without --db "
                "for a throwaway cluster")
    return None


class ServerCrashRun(_Run):
    """``--mode server-crash``: one iteration is one crash of the whole server.

    1. Every writer reports ready (connected, its threads read back): the kill clock starts
       only then, so a crash never lands in a writer's start-up, which a server crash is not
       about (sigkill mode covers that).
    2. After a seeded delay in [min_interval, max_interval] the server's every process is
       SIGKILLed (:meth:`OwnedServer.crash`).
    3. The server is restarted at once (crash recovery); its time is the iteration's recovery
       time.
    4. Each writer either ended by itself, reporting the call the crash cut off (its COMMIT in
       flight: "maybe committed"; before it: not committed), or rides through the restart
       (the engine reconnects and runs again a transaction found on a dead connection before
       its COMMIT was sent): it is SIGKILLed once it acknowledged a transition after the
       restart. One that does neither within :data:`WRITERS_END_TIMEOUT` is an error. With
       ``durability="normal"`` (acknowledged transitions may be lost) the writers are instead
       SIGKILLed with the server, before the restart.
    5. Each worker's threads are read back and judged lane by lane, exactly as after a sigkill
       (every acknowledged transition whole, the lane's in-flight one present or absent,
       nothing partial), then every worker is started again.
    """

    def __init__(self, options: Options, out: TextIO, server: OwnedServer) -> None:
        super().__init__(options, out)
        self.server = server
        self.crashed = False           # the server was killed in this iteration
        self.cut_off: dict[str, int] = {"present": 0, "absent": 0}
        self.cut_off_tids: list[tuple[str, str]] = []  # (tid, present|absent)
        self.crash_errors: dict[str, int] = {}     # the writers' errors at a crash, by type
        self.processes_killed: list[int] = []
        self.kill_seconds: list[float] = []
        self.restart_seconds: list[float] = []
        self.phases: dict[str, int] = {}           # what each writer was doing at a crash
        self.last_error: dict[int, tuple[int | None, str | None, str]] = {}
        self.restarted_at: float | None = None  # when the server accepted connections again
        self.begun_at: dict[tuple[int, int], float | None] = {}  # (worker, lane) -> intent's t
        self.rode_through: set[int] = set()  # workers that acknowledged after the restart
        self.ride_seconds: list[float] = []  # from a restart to the writers' end or first ack

    # --- messages and ends -------------------------------------------------------------

    def handle(self, w: _Worker, message: dict[str, Any]) -> None:
        super().handle(w, message)
        lane = message.get("lane", 0)
        if message["m"] == "intent":
            self.begun_at[(w.index, lane)] = message.get("t")
        elif message["m"] == "ack" and self.restarted_at is not None:
            # Acknowledgements sent before the crash may be read only now: a writer rode
            # through the restart if it acknowledged a transition it began after it.
            begun = self.begun_at.get((w.index, lane))
            if begun is not None and begun >= self.restarted_at:
                self.rode_through.add(w.index)
        if message["m"] == "error":
            self.last_error[w.index] = (message.get("lane"), message.get("tid"),
                                        message["error"])

    def pump(self, done: Callable[[], bool], deadline: float) -> bool:
        """Read the writers' messages until ``done()`` or ``deadline``; True if done. A writer
        whose pipe closes is reaped (:meth:`writer_ended`)."""
        while not done():
            if self.stopped:
                return False
            now = time.monotonic()
            if now >= deadline:
                return done()
            fds = [w.fd for w in self.workers if w.fd is not None]
            if not fds:
                return done()
            ready, _, _ = select.select(fds, [], [], min(deadline - now, 0.5))
            for w in self.workers:
                if w.fd is not None and w.fd in ready:
                    data = os.read(w.fd, 1 << 16)
                    if data:
                        self.receive(w, data)
                    else:
                        self.writer_ended(w)
            for w in self.workers:
                if (w.fd is not None and w.hello_at is None
                        and time.monotonic() - w.spawned_at > HELLO_TIMEOUT):
                    self.fail(w, self.stop(w, kill=True),
                              f"no hello within {HELLO_TIMEOUT:g} s", how="hung")
        return True

    def writer_ended(self, w: _Worker) -> None:
        """A writer's pipe closed. After the crash, an end after a Saver error (exit status 3)
        is what a writer does; anything else, or any end before the crash, is an error."""
        self.settle(w, self.stop(w, kill=False))

    def settle(self, w: _Worker, phase: str) -> None:
        """Count a writer stopped after the crash (its pipe drained), or fail the run if it
        ended before the crash or not after a Saver error."""
        assert w.proc is not None
        error = self.last_error.get(w.index)
        if self.crashed and w.proc.returncode == -signal.SIGKILL:
            key = f"{phase} (killed with the server)"
            self.phases[key] = self.phases.get(key, 0) + 1
            if w.stderr is not None:
                w.stderr.close()
            return
        if self.crashed and w.proc.returncode == 3 and error is not None:
            self.phases[phase] = self.phases.get(phase, 0) + 1
            kind = error[2].split(":", 1)[0]
            self.crash_errors[kind] = self.crash_errors.get(kind, 0) + 1
            if w.stderr is not None:
                w.stderr.close()
            return
        self.fail(w, phase, self.writer_error(w))

    def fail(self, w: _Worker, phase: str, message: str, *, how: str = "ended by itself"
             ) -> None:
        when = "after" if self.crashed else "before"
        self.errors.append(f"worker {w.index} incarnation {w.incarnation} ({when} the crash, "
                           f"in {phase}): {message}")
        self.print(f"     worker {w.index} {how} {when} the crash, in {phase}: "
                   f"{message[:500]}")
        self.stopped = True

    # --- the loop ----------------------------------------------------------------------

    #: What one iteration's crash is, for the banner (power_loss.PowerLossRun says its own).
    CRASHES = "server crashes (SIGKILL of every server process)"

    def banner(self) -> str:
        o = self.o
        threads = "" if o.threads == 1 else f" x {o.threads} threads (one Saver per worker)"
        return (f"torture: {o.iterations} {self.CRASHES}, "
                f"{o.workers} writer(s){threads}, durability {o.durability}, crash "
                f"{o.min_interval:g}-{o.max_interval:g} s after every writer is ready, "
                f"seed {o.seed}")

    def run(self) -> int:
        o = self.o
        self.print(self.banner())
        self.print(f"database: {describe(o.db)}")
        self.print(skipped_note())
        started = time.monotonic()
        try:
            for w in self.workers:
                self.spawn(w)
            while len(self.iterations) < o.iterations and not self.stopped:
                self.iteration()
        finally:
            with signals_deferred():  # every writer is killed and reaped, even on a signal
                for w in self.workers:
                    if w.proc is not None and w.proc.poll() is None:
                        w.proc.send_signal(signal.SIGKILL)
                for w in self.workers:
                    if w.fd is not None:
                        self.stop(w, kill=False)
        self.seconds = time.monotonic() - started
        return self.summarise()

    def iteration(self) -> None:
        self.crashed = False
        self.last_error.clear()
        if not self.pump(lambda: all(w.ready for w in self.workers),
                         time.monotonic() + READY_TIMEOUT):
            if not self.stopped:
                late = [w.index for w in self.workers if not w.ready]
                self.errors.append(f"workers {late} did not report ready within "
                                   f"{READY_TIMEOUT:g} s")
                self.stopped = True
            return
        delay = self.o.min_interval + self.rng.random() * (self.o.max_interval
                                                           - self.o.min_interval)
        self.pump(lambda: False, time.monotonic() + delay)
        if self.stopped:
            return
        acked_before = self.acked_total
        killed_at = time.monotonic()
        # The writers' time ends here for the summary's throughput, which is of writing: not
        # of the outage, the restart and the wait for each writer's first write after it
        # (those few acknowledgements are counted, their time not).
        for w in self.workers:
            if w.ready_at is not None:
                self.writer_seconds += killed_at - w.ready_at
                w.ready_at = None
        self.crashed = True
        self.processes_killed.append(self.server.crash())
        self.kill_seconds.append(time.monotonic() - killed_at)
        if self.o.durability != "full":
            # A crash may lose acknowledged transitions here; a writer riding through the
            # restart would build on them (a pending write to a lost checkpoint, a checkpoint
            # id handed out again) and its acknowledgements would no longer describe what the
            # oracle can judge. So the writers go down with the server, as on a machine crash:
            # a COMMIT cut off is then counted only if its writer reported it in time.
            for w in self.workers:
                if w.fd is not None:
                    self.settle(w, self.stop(w, kill=True))
        restart = self.restart_server()
        if restart is None:  # it could not start: reported (power-loss mode); the run ends
            return
        self.restart_seconds.append(restart)
        # Each writer either ended (its call failed: reported, exit status 3) or rides through
        # the restart (the engine replaces a connection found dead before COMMIT was sent and
        # runs the transaction again): wait for one acknowledgement after the restart from
        # each of those, then SIGKILL them; what they wrote is judged like the rest.
        self.rode_through.clear()
        self.restarted_at = waited = time.monotonic()
        self.pump(lambda: all(w.fd is None or w.index in self.rode_through
                              for w in self.workers), time.monotonic() + WRITERS_END_TIMEOUT)
        self.restarted_at = None
        self.ride_seconds.append(time.monotonic() - waited)
        for w in self.workers:
            if w.fd is None:
                continue
            stalled = w.index not in self.rode_through and not self.stopped
            # Where a stalled writer waits, for the report (read before it is killed).
            stack = self.stack_of(w) if stalled else ""
            phase = self.stop(w, kill=True)
            if w.index in self.rode_through:
                self.phases["rode through the restart"] = \
                    self.phases.get("rode through the restart", 0) + 1
            elif not self.stopped:
                self.fail(w, phase, f"neither ended nor wrote anything in the "
                                    f"{WRITERS_END_TIMEOUT:g} s after the server's restart",
                          how="stalled")
                self.print(f"     worker {w.index}'s threads when it was stopped:\n"
                           + "\n".join("       " + line for line in stack.splitlines()))
        self.judge_all(delay, restart, acked_before)
        if not self.stopped and len(self.iterations) < self.o.iterations:
            for w in self.workers:
                self.spawn(w)

    def restart_server(self) -> float | None:
        """Restart the crashed server; the seconds until it accepted connections, or None
        if it could not start and the run must end (a mode that judges that a failure)."""
        return self.server.restart()

    def judge_all(self, delay: float, restart: float, acked_before: int) -> None:
        """Every worker's threads against what it was told, after one crash and restart."""
        entry: dict[str, Any] = {
            "iteration": len(self.iterations) + 1, "crash_delay": round(delay, 6),
            "processes_killed": self.processes_killed[-1],
            "kill_seconds": round(self.kill_seconds[-1], 6),
            "recovery_seconds": round(restart, 6), "acked_total": self.acked_total,
            "writers_settled_seconds": round(self.ride_seconds[-1], 6),
            "acked_since_previous": self.acked_total - acked_before,
            "phase": "server crash", "in_wal_checkpoint": None,
            "writer_startup_seconds": None,
            "inflight": [], "lost": [], "partial": 0, "leaked": [], "problems": [],
            "cut_off_commits": [], "workers": []}
        startups = []
        for w in self.workers:
            verdict, _ = self.verify(w)
            error = self.last_error.get(w.index)
            if error is not None and error[0] is not None and "maybe committed" in error[2]:
                lane, tid = error[0], error[1]
                state = verdict.lanes[lane] if lane < len(verdict.lanes) else "?"
                if state in self.cut_off:
                    self.cut_off[state] += 1
                    self.cut_off_tids.append((str(tid), state))
                entry["cut_off_commits"].append({"worker": w.index, "lane": lane, "tid": tid,
                                                 "found": state})
            entry["inflight"] += verdict.lanes
            entry["lost"] += sorted(verdict.lost)
            entry["partial"] += sum(state == "partial" for state in verdict.lanes)
            entry["leaked"] += sorted(verdict.leaked)
            entry["problems"] += verdict.problems[:20]
            if w.startup_seconds is not None:
                startups.append(w.startup_seconds)
            entry["workers"].append({"worker": w.index, "incarnation": w.incarnation,
                                     "inflight": verdict.lanes, "ok": verdict.ok,
                                     "error": None if error is None else error[2][:300]})
            if not verdict.ok and not self.o.keep_going:
                self.stopped = True
        entry["writer_startup_seconds"] = statistics.median(startups) if startups else None
        entry["ok"] = not (entry["lost"] or entry["partial"] or entry["leaked"]
                           or entry["problems"])
        self.iterations.append(entry)
        self.print_entry(entry)

    def print_entry(self, entry: dict[str, Any]) -> None:
        told = _counts(state for state in entry["inflight"] if state != "none")
        cut = entry["cut_off_commits"]
        if entry["ok"]:
            shown = "ok" + (f" (in flight: {told})" if told else "")
        else:
            parts = []
            if entry["lost"]:
                parts.append(f"LOST {len(entry['lost'])}: {', '.join(entry['lost'][:5])}")
            if entry["partial"]:
                parts.append(f"PARTIAL {entry['partial']} in-flight transition(s)")
            if entry["leaked"]:
                parts.append(f"LEAKED {len(entry['leaked'])} (raised, yet visible)")
            if entry["problems"]:
                first = " ".join(entry["problems"][0].split())
                parts.append(f"CORRUPT: {first[:300]}")
            shown = "; ".join(parts)
        if cut:
            shown += f"; COMMIT cut off: {_counts(c['found'] for c in cut)}"
        self.print(f"{entry['iteration']:>4}/{self.o.iterations}  crash +"
                   f"{entry['crash_delay'] * 1000:6.1f} ms  {entry['processes_killed']:>2} "
                   f"processes  restart {entry['recovery_seconds'] * 1000:6.1f} ms  acked "
                   f"{entry['acked_total']:>6}  {shown}")

    # --- the summary -------------------------------------------------------------------

    def extra_summary(self) -> dict[str, Any]:
        restarts = self.restart_seconds
        return {
            "mode": "server-crash",
            "server_crashes": len(self.restart_seconds),
            "cut_off_commits": sum(self.cut_off.values()),
            "cut_off_present": self.cut_off["present"],
            "cut_off_absent": self.cut_off["absent"],
            "restart_p50_ms": _ms(statistics.median(restarts)) if restarts else None,
            "restart_max_ms": _ms(max(restarts)) if restarts else None,
            "writers_settled_p50_ms": (_ms(statistics.median(self.ride_seconds))
                                       if self.ride_seconds else None),
            "kill_p50_ms": (_ms(statistics.median(self.kill_seconds))
                            if self.kill_seconds else None),
            "server_processes_killed_p50": (statistics.median(self.processes_killed)
                                            if self.processes_killed else None),
            "writers_at_crash_by_phase": dict(sorted(self.phases.items())),
            "writer_errors_at_crash": dict(sorted(self.crash_errors.items())),
        }

    def extra_rows(self) -> list[tuple[str, Any]]:
        s = self.summary
        return [
            ("server crashes", f"{s['server_crashes']} (every server process SIGKILLed, "
                               f"{s['server_processes_killed_p50']} processes p50)"),
            ("writers at a crash, by call", ", ".join(
                f"{k} {v}" for k, v in s["writers_at_crash_by_phase"].items()) or "-"),
            ("writers' errors at a crash", ", ".join(
                f"{k} {v}" for k, v in s["writer_errors_at_crash"].items()) or "-"),
            ("COMMITs cut off (maybe committed)",
             f"{s['cut_off_commits']}: {s['cut_off_absent']} absent, "
             f"{s['cut_off_present']} present after restart"),
            ("server restart p50 / max",
             f"{s['restart_p50_ms']} ms / {s['restart_max_ms']} ms (crash recovery until it "
             "accepts connections)"),
        ]
