"""``--mode io-faults``: SQLite's I/O-error loop, run through the public API.

For each fault kind (an operation -- read, write, sync, truncate -- failing with EIO, or a write
failing with a full disk; once or persistently) and for k = 1, 2, 3, ...: the database is reset
to the same seeded starting point, :class:`~sqlitesaver.faults.IOFaultVFS` is armed to fail the
k-th such operation, and the same seeded *step* runs: open a Saver (startup recovery), read the
threads back, apply :data:`STEP_TRANSITIONS` transitions, close. Because the step is the same
every time, k walks through every operation of its kind in turn; the loop for a kind ends at the
first k the step no longer reaches (it ran without the fault firing), so each of its operations
was failed once. Then, for each k, the run requires:

* **the right error**: the failure surfaces as :class:`~sqlitesaver.errors.DiskFullError` for a
  full disk and :class:`~sqlitesaver.errors.DatabaseIOError` for EIO, naming the file. A fault
  that fired with no error raised, or any other error, is a violation.
* **the documented aftermath**: after a ``DatabaseIOError`` the Saver has shut itself down (it
  never retries on the same connections; using it raises ``SaverClosedError``). After a
  ``DiskFullError`` the fault is cleared and the *same* Saver must carry on: one more
  transition on it must commit.
* **nothing acknowledged lost, nothing partial, nothing corrupt**: the fault is cleared and the
  database reopened with the full integrity check, read back through the API (checksums
  verified) and judged by :mod:`~sqlitesaver.torture.oracle`. The transition whose call raised
  is *maybe committed* after EIO (present or absent, whole either way). After a full disk it
  must be absent -- unless the full write was to the main database file, which in WAL mode only
  a checkpoint writes: APSW re-raises a Python VFS error from the automatic checkpoint that runs
  after a COMMIT succeeded, so that transition must be present.
* **work continues**: one more transition on the reopened Saver must commit.

Everything runs in this process (no kills), through the fault VFS installed as the default VFS.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import apsw

from .. import Saver, faults
from ..errors import DatabaseIOError, DiskFullError, SaverClosedError, SaverError
from .oracle import Model, Verdict, apply, compare, observe
from .workload import Generator, Transition, Writer, load_known, thread_prefix

__all__ = ["FAULT_KINDS", "FaultKind", "IOFaultRun", "run_io_faults"]

#: Transitions the template database holds before every step, and transitions per step.
TEMPLATE_TRANSITIONS = 24
STEP_TRANSITIONS = 6
#: Random-byte states stay small here (still overflow pages): a 1 MiB blob is hundreds of
#: writes, and the loop runs the whole step once per write.
BLOB_BYTES = (1024, 12 * 1024)
#: Attached files stay small here for the same reason, none above the 1 MiB chunk size (the
#: SIGKILL and power-loss modes store those).
FILE_BYTES = (16, 4096)
#: A loop that has not run out of operations by then is cut short and reported incomplete.
MAX_K = 5000


@dataclass(frozen=True)
class FaultKind:
    op: str           # "read" | "write" | "sync" | "truncate" (sqlitesaver.faults.IO_KINDS)
    error: str        # "eio" | "full"
    persistent: bool  # every later matching operation fails too, until cleared

    @property
    def name(self) -> str:
        return f"{self.op}-{self.error}-{'persistent' if self.persistent else 'once'}"

    @property
    def expected(self) -> type[SaverError]:
        return DiskFullError if self.error == "full" else DatabaseIOError


FAULT_KINDS = tuple(FaultKind(op, error, persistent)
                    for op, error in (("write", "eio"), ("write", "full"), ("sync", "eio"),
                                      ("read", "eio"), ("truncate", "eio"))
                    for persistent in (False, True))


@dataclass
class _Step:
    """What one k did, as the report shows it."""

    kind: str
    k: int
    fault: str | None = None          # "write #12 on torture.db-wal"
    raised: str | None = None         # "DatabaseIOError"
    during: str = ""                  # open | read back | <transition kind> | close
    inflight: str = "none"            # the oracle's verdict on the transition that raised
    violations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class IOFaultRun:
    """One ``--mode io-faults`` run (see the module docstring)."""

    def __init__(self, db: str, seed: int, durability: str, max_k: int | None,
                 writer: Writer, out: TextIO, keep_going: bool) -> None:
        self.db = db
        self.template = db + ".template"
        self.seed = seed
        self.durability = durability
        self.max_k = max_k or MAX_K
        self.writer = writer
        self.out = out
        self.keep_going = keep_going
        self.prefix = thread_prefix(0)
        self.steps: list[_Step] = []
        self.loops: dict[str, dict[str, Any]] = {}
        self.stopped = False
        self.io: faults.IOFaultVFS | None = None
        self.base = Model()
        self.base_deleted: dict = {}

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        self.print(f"torture: I/O-fault loop, {len(FAULT_KINDS)} fault kinds x k = 1, 2, 3 ... "
                   f"(step: open, read back, {STEP_TRANSITIONS} transitions, close), "
                   f"durability {self.durability}, seed {self.seed}")
        self.print(f"database: {self.db}")
        self._make_template()
        self.io = faults.install_io_faults()
        try:
            for kind in FAULT_KINDS:
                self._loop(kind)
                if self.stopped:
                    break
        finally:
            self.io.clear()
            self.io.uninstall()
        self.seconds = time.monotonic() - started
        return self._summarise()

    def _make_template(self) -> None:
        """The seeded starting point of every step, closed cleanly (no -wal)."""
        rng = random.Random(f"{self.seed}:template")
        with self.writer.open(self.db, self.durability) as saver:
            gen = Generator(rng, 0, 0, {}, mix=self.writer.mix, blob_bytes=BLOB_BYTES,
                            file_bytes=FILE_BYTES, big_file_share=0.0)
            for _ in range(TEMPLATE_TRANSITIONS):
                tx = gen.next()
                gen.commit(tx, self.writer.run(saver, tx))
                apply(self.base, tx.tid, tx.ops, self.base_deleted)
        os.replace(self.db, self.template)

    def _loop(self, kind: FaultKind) -> None:
        loop = self.loops[kind.name] = {"steps": 0, "faults": 0, "errors": {}, "complete": False,
                                        "inflight": {}, "violations": 0}
        for k in range(1, self.max_k + 1):
            step = self._step(kind, k)
            loop["steps"] += 1
            if step.fault is None:
                loop["complete"] = True  # k is past the step's last such operation
            else:
                loop["faults"] += 1
                loop["errors"][step.raised] = loop["errors"].get(step.raised, 0) + 1
                loop["inflight"][step.inflight] = loop["inflight"].get(step.inflight, 0) + 1
            if step.violations:
                loop["violations"] += 1
                self.steps.append(step)
                for violation in step.violations:
                    self.print(f"  {kind.name} k={k}: {violation}")
                if not self.keep_going:
                    self.stopped = True
                    break
            if step.fault is None:
                break
        errors = ", ".join(f"{n} {name}" for name, n in sorted(loop["errors"].items())) or "-"
        inflight = ", ".join(f"{name} {n}" for name, n in sorted(loop["inflight"].items()))
        self.print(f"  {kind.name:<24} k=1..{loop['steps']:<4} faults {loop['faults']:>4}  "
                   f"raised: {errors}  in-flight: {inflight or '-'}  "
                   f"{'ok' if not loop['violations'] else 'FAIL'}"
                   f"{'' if loop['complete'] or self.stopped else ' (incomplete: --iterations)'}")

    # --- one step ----------------------------------------------------------------------------

    def _reset(self) -> None:
        for suffix in ("-wal", "-shm", "-journal"):
            if os.path.lexists(self.db + suffix):
                os.remove(self.db + suffix)
        shutil.copyfile(self.template, self.db)  # no connection is open on either file

    def _step(self, kind: FaultKind, k: int) -> _Step:
        assert self.io is not None
        io = self.io
        step = _Step(kind.name, k)
        self._reset()
        model, deleted_by = self.base.clone(), dict(self.base_deleted)
        rng = random.Random(f"{self.seed}:{kind.name}")  # the same step for every k
        saver: Saver | None = None
        gen: Generator | None = None
        inflight: Transition | None = None
        raised: SaverError | None = None
        io.arm(k, kinds=(kind.op,), persistent=kind.persistent, error=kind.error)
        try:
            step.during = "open"
            saver = self.writer.open(self.db, self.durability)
            step.during = "read back"
            gen = Generator(rng, 0, 1, load_known(saver, self.prefix),
                            mix=self.writer.mix, blob_bytes=BLOB_BYTES,
                            file_bytes=FILE_BYTES, big_file_share=0.0)
            for _ in range(STEP_TRANSITIONS):
                inflight = gen.next()
                step.during = inflight.kind
                result = self.writer.run(saver, inflight)
                apply(model, inflight.tid, inflight.ops, deleted_by)
                gen.commit(inflight, result)
                inflight = None
            step.during = "close"
            saver.close()
        except SaverError as exc:
            raised = exc
        fired, where = io.injected > 0, io.last_fault
        io.clear()
        if not fired:
            step.during = ""
            if raised is not None:
                step.violations.append(f"no fault fired, yet {_name(raised)}")
            _close(saver)
            self._verify(step, model, None, deleted_by, "absent")
            return step
        op, filename, n = where  # type: ignore[misc]
        step.fault = f"{op} #{n} on {os.path.basename(filename)}"
        step.raised = type(raised).__name__ if raised is not None else None
        expect_inflight = "maybe"
        if raised is None:
            step.violations.append(f"the {step.fault} failed during {step.during} and no "
                                   "error reached the caller")
        elif type(raised) is not kind.expected:
            step.violations.append(f"expected {kind.expected.__name__}, got {_name(raised)}")
        elif getattr(raised, "path", None) != self.db or repr(self.db) not in str(raised):
            step.violations.append(f"the error does not name the file: {_name(raised)}")
        if isinstance(raised, DiskFullError):
            # In WAL mode only a checkpoint writes the main database file: a full disk there
            # came after the transition's COMMIT had succeeded (see the module docstring).
            expect_inflight = "present" if _file_kind(filename) == "db" else "absent"
        if raised is not None and saver is not None:
            self._aftermath(step, kind, saver, gen, raised, model, deleted_by, inflight,
                            expect_inflight)
        _close(saver)
        self._verify(step, model, inflight, deleted_by, expect_inflight)
        return step

    def _aftermath(self, step: _Step, kind: FaultKind, saver: Saver, gen: Generator | None,
                   raised: SaverError, model: Model, deleted_by: dict,
                   inflight: Transition | None, expect_inflight: str) -> None:
        """The Saver's documented behaviour after the error: shut down after an I/O error;
        carrying on, the same Saver, once a full disk has space again."""
        if isinstance(raised, DatabaseIOError):
            try:
                saver.threads()
                step.violations.append("the Saver was still usable after DatabaseIOError "
                                       "(it must shut down: no retry on the same connection)")
            except SaverClosedError:
                pass
            except SaverError as exc:
                step.violations.append(f"using the Saver after DatabaseIOError gave "
                                       f"{_name(exc)}, not SaverClosedError")
        elif isinstance(raised, DiskFullError) and step.during != "close" and gen is not None:
            if inflight is not None and expect_inflight == "present":
                apply(model, inflight.tid, inflight.ops, deleted_by)
            tx = gen.next()
            try:
                self.writer.run(saver, tx)
                apply(model, tx.tid, tx.ops, deleted_by)
            except SaverError as exc:
                step.violations.append(f"after the full disk cleared, the same Saver failed "
                                       f"the next transition: {_name(exc)}")
            if inflight is not None and expect_inflight == "present":
                # Judged already applied: the verification expects exactly this model.
                step.inflight = "present (continued)"

    def _verify(self, step: _Step, model: Model, inflight: Transition | None,
                deleted_by: dict, expect_inflight: str) -> None:
        """Reopen (full integrity check), judge the content, and write once more."""
        with_inflight = None
        if inflight is not None and not step.inflight.endswith("(continued)"):
            with_inflight = model.clone()
            apply(with_inflight, inflight.tid, inflight.ops, dict(deleted_by))
        try:
            reopened = Saver(self.db, durability=self.durability, integrity_check="full")
        except SaverError as exc:
            step.violations.append(f"CORRUPT: reopening after the fault cleared failed: "
                                   f"{_name(exc)}")
            return
        with reopened:
            seen = observe(reopened, self.prefix)
            verdict: Verdict = compare(model, with_inflight, seen.model, deleted_by)
            if not step.inflight.endswith("(continued)"):
                step.inflight = verdict.inflight if inflight is not None else "none"
            if verdict.lost:
                step.violations.append(f"LOST acknowledged transitions {sorted(verdict.lost)}")
            if verdict.partial:
                step.violations.append("PARTIAL: the transition that raised is half there")
            for problem in seen.problems + verdict.problems:
                step.violations.append(f"CORRUPT: {problem}")
            if inflight is not None and expect_inflight != "maybe" and \
                    verdict.inflight in ("present", "absent") and \
                    verdict.inflight != expect_inflight:
                step.violations.append(
                    f"after {step.raised} the transition that raised is {verdict.inflight}, "
                    f"expected {expect_inflight}")
            try:
                reopened.append_log(f"{self.prefix}after", {"k": step.k})
            except SaverError as exc:
                step.violations.append(f"work did not continue after reopening: {_name(exc)}")

    # --- output ----------------------------------------------------------------------------

    def _summarise(self) -> int:
        loops = self.loops.values()
        faults_injected = sum(loop["faults"] for loop in loops)
        errors: dict[str, int] = {}
        inflight: dict[str, int] = {}
        for loop in loops:
            for name, n in loop["errors"].items():
                errors[str(name)] = errors.get(str(name), 0) + n
            for name, n in loop["inflight"].items():
                inflight[name] = inflight.get(name, 0) + n
        violations = sum(len(step.violations) for step in self.steps)
        incomplete = [name for name, loop in self.loops.items() if not loop["complete"]]
        self.summary = {
            "fault_kinds": len(self.loops), "steps": sum(loop["steps"] for loop in loops),
            "faults_injected": faults_injected, "errors_raised": errors,
            "inflight": inflight, "violations": violations, "incomplete_loops": incomplete,
            "seconds": round(self.seconds, 2),
            "verdict": "FAIL" if violations else "PASS",
        }
        rows = [
            ("fault kinds", len(self.loops)),
            ("steps (k values)", self.summary["steps"]),
            ("faults injected", faults_injected),
            ("errors raised", ", ".join(f"{name} {n}" for name, n in sorted(errors.items()))),
            ("in-flight after a fault", ", ".join(f"{name} {n}"
                                                  for name, n in sorted(inflight.items()))),
            ("violations", violations),
            ("loops cut short", ", ".join(incomplete) if incomplete else "none"),
            ("wall time", f"{self.summary['seconds']} s"),
            ("verdict", self.summary["verdict"]),
        ]
        width = max(len(key) for key, _ in rows)
        self.print("")
        for key, value in rows:
            self.print(f"  {key:<{width}}  {value}")
        return 1 if violations else 0

    def report(self) -> dict[str, Any]:
        return {"summary": self.summary, "loops": self.loops,
                "violations": [step.as_dict() for step in self.steps[:100]],
                "step_transitions": STEP_TRANSITIONS,
                "template_transitions": TEMPLATE_TRANSITIONS, "blob_bytes": list(BLOB_BYTES),
                "sqlite": apsw.sqlite_lib_version()}

    def print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _name(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _file_kind(filename: str) -> str:
    for suffix, kind in (("-wal", "wal"), ("-journal", "journal")):
        if filename.endswith(suffix):
            return kind
    return "db"


def _close(saver: Saver | None) -> None:
    if saver is None:
        return
    try:
        saver.close()
    except SaverError:
        pass  # reported already, or the step's own close failed: the verification judges


def run_io_faults(options: Any, out: TextIO | None = None) -> tuple[int, dict[str, Any]]:
    """Run the I/O-fault loop for harness ``options``; return (exit status, report)."""
    from .child import load_writer  # not at import: child is the writer's entry point
    run = IOFaultRun(options.db, options.seed, options.durability, options.iterations,
                     load_writer(options.writer), out or sys.stdout, options.keep_going)
    status = run.run()
    report = {"command": "python -m sqlitesaver.torture --mode io-faults",
              "options": {"mode": "io-faults", "iterations": options.iterations,
                          "seed": options.seed, "durability": options.durability,
                          "writer": options.writer, "db": options.db},
              **run.report()}
    return status, report
