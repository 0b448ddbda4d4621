"""The validator's report: a check's statuses, :class:`Step` and :class:`Report` (one a
database), how a report names what it found (a checkpoint, a list of problems, a check that
could not finish), the report as text (:func:`format_report`), and the exit status of several
(:func:`exit_status`). Shared by every layer of :mod:`sqlitesaver.check` and by
sqlitesaver/postgres/check.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import describe

#: A check line's status. FAILED: damage found (exit 1). UNUSABLE: this file cannot be validated
#: (not a sqlitesaver database, newer schema, unreadable here: exit 2).
OK, FAILED, UNUSABLE, NOTE, SKIPPED = "ok", "FAILED", "UNUSABLE", "note", "skipped"
#: A database's result, and the exit status each one gives.
EXIT_STATUS = {"ok": 0, "damaged": 1, "unusable": 2}

#: Problems listed per check; the rest are counted.
_SHOWN = 5


@dataclass
class Step:
    """One line of the report: a check, its status (ok, FAILED, note, skipped), and detail."""

    name: str
    status: str
    detail: str


@dataclass
class Report:
    """What :func:`check_database` found in one file."""

    path: str
    steps: list[Step] = field(default_factory=list)
    #: True: a sqlitesaver database; False: another SQLite database; None: not determined.
    sqlitesaver: bool | None = None
    schema_version: int | None = None
    #: Payloads verified per table, how many did not match, and the first of those as
    #: {"table": ..., key columns}.
    payloads_checked: dict[str, int] = field(default_factory=dict)
    payloads_failed: int = 0
    payload_failures: list[dict] = field(default_factory=list)

    @property
    def result(self) -> str:
        """``damaged`` if any check FAILED, else ``unusable`` if any was UNUSABLE, else ``ok``."""
        found = {step.status for step in self.steps}
        return "damaged" if FAILED in found else "unusable" if UNUSABLE in found else "ok"

    @property
    def ok(self) -> bool:
        return self.result == "ok"

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.result]

    def add(self, name: str, status: str, detail: str) -> bool:
        """Record a check; True if it passed (ok, note or skipped)."""
        self.steps.append(Step(name, status, detail))
        return status not in (FAILED, UNUSABLE)

    def as_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "result": self.result,
                "exit_status": self.exit_status, "sqlitesaver": self.sqlitesaver,
                "schema_version": self.schema_version,
                "checks": [{"name": s.name, "status": s.status.lower(), "detail": s.detail}
                           for s in self.steps],
                "payloads_checked": self.payloads_checked,
                "payloads_failed": self.payloads_failed,
                "payload_failures": self.payload_failures}


def _stopped(exc: BaseException) -> str:
    """The detail of a check that raised ``exc`` instead of finishing."""
    if isinstance(exc, UnicodeDecodeError):
        return (f"could not finish: SQLite returned a text that is not valid UTF-8 "
                f"({describe(exc)}); sqlitesaver writes only UTF-8, so the file is damaged")
    return (f"could not finish ({describe(exc)}): counted as damage; if every other check "
            "passes, report it as a sqlitesaver bug")


def _listed(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:_SHOWN])
    more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    return shown + more


def _checkpoint_id(seq: object) -> str:
    if type(seq) is int and seq >= 0:
        return format(seq, "016x")  # as Saver formats checkpoint ids
    return f"<seq {seq!r}>"  # damage: no id the Saver could have handed out


def _checkpoint(seq: object, thread_id: object, namespace: object) -> str:
    return (f"checkpoint {_checkpoint_id(seq)!r} of thread {thread_id!r}"
            + (f" (namespace {namespace!r})" if namespace else ""))


# --- the report as text ---------------------------------------------------------------------

def format_report(report: Report) -> str:
    width = max(len(step.name) for step in report.steps)
    # A name that is not UTF-8 holds lone surrogates, which a UTF-8 terminal cannot print.
    lines = [report.path if _printable(report.path) else repr(report.path)]
    lines += [f"  {step.status:<8} {step.name:<{width}}  {step.detail}" for step in report.steps]
    failed = sum(step.status == FAILED for step in report.steps)
    lines.append({"ok": "  => ok",
                  "damaged": f"  => FAILED: damage found ({failed} check(s) failed)",
                  "unusable": "  => UNUSABLE: not validated (see above)"}[report.result])
    return "\n".join(lines)


def _printable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def exit_status(reports: Sequence[Report]) -> int:
    """1 if any database is damaged, else 2 if any path was unusable, else 0."""
    results = {report.result for report in reports}
    for result in ("damaged", "unusable"):
        if result in results:
            return EXIT_STATUS[result]
    return 0
