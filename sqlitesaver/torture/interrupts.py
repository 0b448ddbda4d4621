"""``--mode interrupts``: SIGINT at random moments while threads write through one Saver.

The failure this mode hunts (issue #13): a program whose main thread catches
``KeyboardInterrupt`` and carries on, while other threads write through the same Saver. Python
raises the interrupt between any two bytecodes of the main thread, so it lands inside the write
path: inside the lock hand-off, inside a ``finally``, between a COMMIT and its acknowledgement.

Each round, the main thread and ``threads`` other threads write (puts, multi-statement
transactions, pending writes, log events) for ``round_seconds`` while a sender thread delivers
SIGINT to the main thread at random gaps. The main thread catches every interrupt and goes on
writing. At the end of each round a *second connection* must see every acknowledged write
(a call that returned), and every transaction all or nothing. At the end the Saver must close
without hanging, and after reopening every acknowledged write must still be there and the
validator must pass. Every random choice comes from ``seed``.

Runs in this process (signals need the main thread): the caller provides a hang detector
(``python -m sqlitesaver.torture`` arms ``faulthandler.dump_traceback_later``).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import apsw

from .. import check, interrupts
from ..errors import InterruptedTransitionError
from ..saver import Saver

__all__ = ["run", "format_report"]

T = TypeVar("T")


class _Lane:
    """One writing thread's acknowledged work."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = random.Random(seed)
        self.checkpoints: list[str] = []      # acknowledged checkpoint ids
        self.transactions: list[int] = []     # acknowledged multi-statement transitions (n)
        self.writes: list[tuple[str, str]] = []  # acknowledged (checkpoint id, task id)
        self.logs: list[int] = []             # acknowledged log seqs
        self.n = 0
        self.interrupted = 0                  # KeyboardInterrupt out of a Saver call
        self.interrupted_transitions = 0      # InterruptedTransitionError
        self.errors: list[str] = []           # anything else: a failure

    def step(self, saver: Saver) -> None:
        """One write; its acknowledgement is recorded only after the call returned."""
        self.n += 1
        n = self.n
        kind = self.rng.choice(("put", "put", "transaction", "writes", "log"))
        parent = self.checkpoints[-1] if self.checkpoints else None
        if kind == "put":
            ref = saver.put(self.name, {"n": n}, metadata={"kind": "put", "n": n},
                            parent_id=parent)
            self.checkpoints.append(ref.checkpoint_id)
        elif kind == "transaction":
            with saver.transaction():
                ref = saver.put(self.name, {"n": n}, metadata={"kind": "tx", "n": n},
                                parent_id=parent)
                saver.put_writes(self.name, ref.checkpoint_id, f"tx{n}", [("a", n), ("b", n)])
                saver.append_log(self.name, {"tx": n})
            self.checkpoints.append(ref.checkpoint_id)
            self.transactions.append(n)
        elif kind == "writes" and parent is not None:
            saver.put_writes(self.name, parent, f"w{n}", [("c", n)])
            self.writes.append((parent, f"w{n}"))
        else:
            self.logs.append(saver.append_log(self.name, {"n": n}))


def _missing(path: str, lanes: list[_Lane]) -> list[str]:
    """What another connection does not see of what was acknowledged, and any transaction
    seen in part."""
    # What was acknowledged so far, taken before the snapshot: everything in it committed
    # before the snapshot began (the other threads go on acknowledging meanwhile).
    acked = [(lane.name, list(lane.checkpoints), list(lane.writes), list(lane.logs))
             for lane in lanes]
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.execute("BEGIN")  # one snapshot for every query below
        checkpoints = {(thread, key or f"{seq:016x}"): seq for seq, thread, key in
                       conn.execute("SELECT seq, thread_id, key FROM checkpoints")}
        writes = {(seq, task) for seq, task in
                  conn.execute("SELECT DISTINCT checkpoint_seq, task_id FROM writes")}
        logs = {seq for (seq,) in conn.execute("SELECT seq FROM log")}
        conn.execute("COMMIT")
    finally:
        conn.close()
    lost = []
    for name, acked_checkpoints, acked_writes, acked_logs in acked:
        for checkpoint_id in acked_checkpoints:
            if (name, checkpoint_id) not in checkpoints:
                lost.append(f"{name}: checkpoint {checkpoint_id}")
        for checkpoint_id, task in acked_writes:
            seq = checkpoints.get((name, checkpoint_id))
            if seq is not None and (seq, task) not in writes:
                lost.append(f"{name}: writes {task} of {checkpoint_id}")
        for seq in acked_logs:
            if seq not in logs:
                lost.append(f"{name}: log event {seq}")
    return lost


def _partial(saver: Saver, lanes: list[_Lane]) -> list[str]:
    """Transactions (checkpoint + 2 writes + a log event) visible in part."""
    found = []
    for lane in lanes:
        events = {event.event.get("tx") for event in saver.read_log(lane.name)
                  if isinstance(event.event, dict)}
        for checkpoint in saver.list(lane.name):
            if checkpoint.metadata.get("kind") != "tx":
                continue
            n = checkpoint.metadata["n"]
            channels = sorted(w.channel for w in checkpoint.pending_writes
                              if w.task_id == f"tx{n}")
            if channels != ["a", "b"] or n not in events:
                found.append(f"{lane.name}: transaction {n} is visible in part "
                             f"(writes {channels}, log event {'present' if n in events else 'missing'})")
    return found


def run(path: str, *, rounds: int = 40, threads: int = 3, seed: int = 0,
        min_gap: float = 0.0, max_gap: float = 0.005, round_seconds: float = 0.1,
        durability: str = "full", progress: Any = None) -> dict[str, Any]:
    """Run the storm on a new database at ``path``; return the report (``ok`` says whether it
    passed). Must be called from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the interrupts mode must run in the main thread (signals)")
    # The storm is Ctrl-C's default behaviour, KeyboardInterrupt: a process started with
    # SIGINT ignored (a background job of a non-interactive shell inherits SIG_IGN) would
    # shrug every signal off and prove nothing. Python's own handler for the run, then back.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _storm(path, rounds=rounds, threads=threads, seed=seed, min_gap=min_gap,
                      max_gap=max_gap, round_seconds=round_seconds, durability=durability,
                      progress=progress)
    finally:
        signal.signal(signal.SIGINT, previous)


def _storm(path: str, *, rounds: int, threads: int, seed: int, min_gap: float,
           max_gap: float, round_seconds: float, durability: str,
           progress: Any) -> dict[str, Any]:
    rng = random.Random(seed)
    main_lane = _Lane("main", rng.getrandbits(64))
    others = [_Lane(f"thread-{i}", rng.getrandbits(64)) for i in range(threads)]
    lanes = [main_lane, *others]
    report: dict[str, Any] = {"seed": seed, "rounds": rounds, "threads": threads,
                              "durability": durability, "interrupts_delivered": 0,
                              "interrupted_elsewhere": 0, "lost": [], "partial": []}
    saver = Saver(path, durability=durability)
    stop = threading.Event()

    def write(lane: _Lane) -> None:
        while not stop.is_set():
            try:
                lane.step(saver)
            except InterruptedTransitionError:
                lane.interrupted_transitions += 1
            except BaseException as exc:  # a failure: reported, and the thread stops
                lane.errors.append(f"{type(exc).__name__}: {exc}")
                return

    writers = [threading.Thread(target=write, args=(lane,), name=lane.name) for lane in others]
    for t in writers:
        t.start()
    main_ident = threading.main_thread().ident
    started = time.monotonic()
    try:
        for round_number in range(rounds):
            gaps = random.Random(rng.getrandbits(64))
            end = threading.Event()
            sent = [0]

            def send() -> None:
                while not end.wait(gaps.uniform(min_gap, max_gap)):
                    signal.pthread_kill(main_ident, signal.SIGINT)
                    sent[0] += 1

            sender = threading.Thread(target=send, name="sigint-sender")
            _harness(report, sender.start)
            deadline = time.monotonic() + round_seconds
            while True:
                try:
                    if time.monotonic() >= deadline:
                        break
                    main_lane.step(saver)
                except KeyboardInterrupt:
                    main_lane.interrupted += 1
                except InterruptedTransitionError:
                    main_lane.interrupted_transitions += 1
                except BaseException as exc:
                    main_lane.errors.append(f"{type(exc).__name__}: {exc}")
                    break

            def between_rounds() -> list[str]:
                end.set()
                sender.join()
                return _missing(path, lanes)

            lost = _harness(report, between_rounds)
            report["interrupts_delivered"] += sent[0]
            if lost or any(lane.errors for lane in lanes):
                report["lost"] = lost
                report["failed_round"] = round_number
                break
            if progress is not None:
                progress(round_number, lanes, report)
    finally:
        stop.set()
        for t in writers:
            t.join()
    saver.close()  # must not hang
    with Saver(path, durability=durability) as reopened:
        report["partial"] = _partial(reopened, lanes)
    if not report["lost"]:
        report["lost"] = _missing(path, lanes)
    validated = check.check_database(path)
    report["validator"] = "PASS" if validated.ok else check.format_report(validated)
    report["seconds"] = round(time.monotonic() - started, 2)
    report["acknowledged"] = sum(len(lane.checkpoints) + len(lane.writes) + len(lane.logs)
                                 for lane in lanes)
    report["acknowledged_by_main_thread"] = (len(main_lane.checkpoints) + len(main_lane.writes)
                                             + len(main_lane.logs))
    report["interrupted_calls"] = main_lane.interrupted
    report["interrupted_transition_errors"] = sum(lane.interrupted_transitions
                                                  for lane in lanes)
    report["errors"] = [f"{lane.name}: {error}" for lane in lanes for error in lane.errors]
    report["ok"] = not (report["lost"] or report["partial"] or report["errors"]
                        or not validated.ok)
    return report


def _harness(report: dict[str, Any], work: Callable[[], T]) -> T:
    """Run the harness's own work (not a write) with SIGINT deferred. ``pthread_kill`` only
    queues a signal, so one sent just before the sender stopped may still arrive here; it is
    raised at the deferred section's end, counted, and the work's result kept."""
    result: list[T] = []
    while not result:
        try:
            with interrupts.deferred():
                if not result:
                    result.append(work())
        except KeyboardInterrupt:
            report["interrupted_elsewhere"] += 1
    return result[0]


def format_report(report: dict[str, Any]) -> str:
    return (f"{report['rounds']} rounds, {report['threads']} threads + main, "
            f"{report['interrupts_delivered']} SIGINTs sent; main thread: "
            f"{report['acknowledged_by_main_thread']} writes acknowledged, "
            f"{report['interrupted_calls']} calls interrupted; "
            f"{report['acknowledged']} acknowledged in all; "
            f"{len(report['lost'])} lost, {len(report['partial'])} partial, "
            f"{report['interrupted_transition_errors']} InterruptedTransitionError, "
            f"{len(report['errors'])} errors; validator {report['validator'].splitlines()[0]}; "
            f"{report['seconds']} s")

