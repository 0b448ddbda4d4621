"""``python -m sqlitesaver check``: verify databases without changing a byte of them.

For each file, in order: the file is a regular, readable SQLite file; it is a sqlitesaver
database of a schema version this library knows; ``PRAGMA integrity_check`` (full) is ``ok``;
``PRAGMA foreign_key_check`` is empty; the journal mode (sqlitesaver uses WAL); and every stored
payload (checkpoints, pending writes, log events) matches its checksum, computed with
:mod:`sqlitesaver.integrity` exactly as :class:`~sqlitesaver.Saver` does on every read.

Never writes what it checks. The database is opened with ``SQLITE_OPEN_READONLY`` (what the
URI ``?mode=ro`` means, without escaping the path into a URI), ``query_only`` on, and
``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`` so closing never checkpoints the WAL into the file; no
migration or recovery step of :mod:`sqlitesaver.opening` runs. What SQLite itself does for any
reader of a WAL database still happens: it uses the ``-shm`` index beside the file, creating it
if it is missing, and creates an empty ``-wal`` if there is none (neither holds data; a
``-shm`` is rebuilt from the ``-wal`` whenever it is stale). In a directory the checker cannot
write, it can therefore read a WAL database only when its ``-wal`` and ``-shm`` already exist;
otherwise it says so. ``immutable=1`` would avoid that but ignores the ``-wal`` and locking,
so it would check stale data: never used.

All checks of one database read one snapshot (one read transaction), so a writer in another
process may keep committing meanwhile (WAL readers do not block writers) without making the
checks disagree with each other.

A foreign SQLite database (another ``application_id``) gets the generic checks only and a note;
it fails only with ``require_saver=True`` (``--require-saver``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import apsw

from . import integrity, schema
from .opening import read_header
from .errors import describe

__all__ = ["OK", "FAILED", "NOTE", "SKIPPED", "Step", "Report", "check_database", "run"]

OK, FAILED, NOTE, SKIPPED = "ok", "FAILED", "note", "skipped"

_MAGIC = b"SQLite format 3\x00"
#: How long to wait for a lock another process holds (e.g. while it rebuilds the WAL index after
#: a crash); a reader of a WAL database otherwise never waits for writers.
_BUSY_TIMEOUT_MS = 10_000
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
    def ok(self) -> bool:
        return all(step.status != FAILED for step in self.steps)

    def add(self, name: str, status: str, detail: str) -> bool:
        self.steps.append(Step(name, status, detail))
        return status != FAILED

    def as_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "sqlitesaver": self.sqlitesaver,
                "schema_version": self.schema_version,
                "checks": [{"name": s.name, "status": s.status.lower(), "detail": s.detail}
                           for s in self.steps],
                "payloads_checked": self.payloads_checked,
                "payloads_failed": self.payloads_failed,
                "payload_failures": self.payload_failures}


def check_database(path: str, *, require_saver: bool = False) -> Report:
    """Check one database file without writing to it; see the module docstring."""
    report = Report(path)
    if not _check_file(report, path):
        return report
    try:
        # An absolute path is never taken for a URI, whatever SQLite's URI setting.
        conn = apsw.Connection(os.path.abspath(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        report.add("open", FAILED, _cannot_read(path, exc))
        return report
    try:
        try:
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA trusted_schema=0")  # a foreign schema runs none of our code
            conn.execute("BEGIN")  # deferred: one read snapshot for every check below
        except apsw.Error as exc:
            report.add("open", FAILED, _cannot_read(path, exc))
            return report
        if _check_identity(report, conn, path, require_saver):
            _check_integrity(report, conn)
            _check_foreign_keys(report, conn)
            _check_journal_mode(report, conn)
            _check_payloads(report, conn)
    finally:
        conn.close()  # a read transaction only: nothing to commit, and no checkpoint
    return report


# --- the file -----------------------------------------------------------------------------

def _check_file(report: Report, path: str) -> bool:
    name = "file"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        wal = path + "-wal"
        extra = (f"; {wal!r} exists without it: the database was moved or deleted without its "
                 "-wal, which may hold its last transactions" if os.path.lexists(wal) else "")
        return report.add(name, FAILED, f"{path!r} does not exist{extra}")
    except OSError as exc:
        return report.add(name, FAILED, f"cannot look at {path!r}: {exc.strerror or exc}")
    if os.path.isdir(path):
        return report.add(name, FAILED, f"{path!r} is a directory, not a database file")
    if not os.path.isfile(path):
        return report.add(name, FAILED, f"{path!r} is not a regular file")
    try:
        # Through SQLite's VFS, not open(): closing a plain descriptor on the file would cancel
        # the POSIX locks of any connection to it in this process (see sqlitesaver.opening).
        size, header = read_header(os.path.abspath(path))
    except apsw.Error as exc:
        return report.add(name, FAILED, f"{path!r} cannot be read ({describe(exc)}); check its "
                                        "permissions")
    if size == 0:
        return report.add(name, FAILED, f"{path!r} is an empty file (0 bytes), not an SQLite "
                                        "database")
    if not header.startswith(_MAGIC):
        return report.add(name, FAILED, f"{path!r} is not an SQLite database (it starts with "
                                        f"{header[:16]!r})")
    if len(header) < 100:
        return report.add(name, FAILED, f"{path!r} is a truncated SQLite file ({size} bytes, "
                                        "shorter than the 100-byte header)")
    return report.add(name, OK, f"SQLite database file, {st.st_size} bytes")


def _cannot_read(path: str, exc: apsw.Error) -> str:
    """Explain why SQLite could not read the file, and what to do."""
    directory = os.path.dirname(os.path.abspath(path))
    wal, shm = path + "-wal", path + "-shm"
    directory_writable = os.access(directory, os.W_OK | os.X_OK)
    if isinstance(exc, (apsw.CantOpenError, apsw.ReadOnlyError)) and not directory_writable:
        missing = [name for name in (wal, shm) if not os.path.lexists(name)]
        if missing:
            return (f"SQLite cannot read {path!r} ({describe(exc)}): a WAL database can only be "
                    f"read with its '-wal' and '-shm' files beside it, and {missing[0]!r} is "
                    f"missing while the directory {directory!r} is not writable, so SQLite "
                    "cannot create it (it holds no data). Run the check as a user who can "
                    "write that directory, or copy the database together with its '-wal' (if "
                    "any) into a writable directory and check the copy. Nothing was written")
    if isinstance(exc, apsw.ReadOnlyError) and \
            getattr(exc, "extendedresult", None) == apsw.SQLITE_READONLY_ROLLBACK:
        return (f"{path!r} has a hot rollback journal ({path + '-journal'!r}) left by a crash, "
                "which only a writable connection may roll back; the checker writes nothing. "
                "Open the database once with its application to recover it, then check again")
    if isinstance(exc, (apsw.CorruptError, apsw.NotADBError)):
        return f"SQLite cannot read {path!r}: it is damaged ({describe(exc)})"
    return f"SQLite cannot read {path!r} ({describe(exc)}). Nothing was written"


# --- identity -----------------------------------------------------------------------------

def _pragma(conn: apsw.Connection, name: str) -> Any:
    """Read one PRAGMA's value (one statement per execute; see the durability notes)."""
    row = conn.execute(f"PRAGMA {name}").fetchone()
    return row[0] if row else None


def _check_identity(report: Report, conn: apsw.Connection, path: str,
                    require_saver: bool) -> bool:
    """Report what the file is; False when SQLite cannot read it at all."""
    try:
        # Read through SQL, not from the file header: the WAL may hold a newer page 1.
        application_id = _pragma(conn, "application_id")
        version = _pragma(conn, "user_version")
    except apsw.Error as exc:
        report.add("open", FAILED, _cannot_read(path, exc))
        return False
    report.schema_version = version
    report.sqlitesaver = application_id == schema.APPLICATION_ID
    name = "sqlitesaver"
    if not report.sqlitesaver:
        detail = (f"not a sqlitesaver database (application_id 0x{application_id:08x}, "
                  f"sqlitesaver's is 0x{schema.APPLICATION_ID:08x}): payload checks skipped")
        report.add(name, FAILED if require_saver else NOTE,
                   detail + (" (--require-saver)" if require_saver else ""))
        return True
    latest = schema.latest_version()
    if version > latest:
        report.add(name, FAILED, f"schema version {version}, written by a newer sqlitesaver; "
                                 f"this one knows versions up to {latest}: upgrade sqlitesaver "
                                 "to check its payloads")
    elif version < 1:
        report.add(name, FAILED, "application_id is sqlitesaver's but the schema version is "
                                 f"{version}: no schema was ever created in it")
    elif version < latest:
        report.add(name, OK, f"sqlitesaver database, schema version {version} (sqlitesaver "
                             f"migrates it to {latest} when it next opens it)")
    else:
        report.add(name, OK, f"sqlitesaver database, schema version {version}")
    return True


# --- SQLite's own checks ----------------------------------------------------------------------

def _listed(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:_SHOWN])
    more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
    return shown + more


def _check_integrity(report: Report, conn: apsw.Connection) -> None:
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    except apsw.Error as exc:  # damage too deep to list
        problems = [f"SQLite could not finish the check: {describe(exc)}"]
    if problems == ["ok"]:
        report.add("integrity_check", OK, "ok")
    else:
        report.add("integrity_check", FAILED, _listed(problems))


def _check_foreign_keys(report: Report, conn: apsw.Connection) -> None:
    try:
        rows = conn.execute("PRAGMA foreign_key_check").fetchall()
    except apsw.Error as exc:
        report.add("foreign_key_check", FAILED, describe(exc))
        return
    if not rows:
        report.add("foreign_key_check", OK, "no violations")
        return
    problems = [f"{table} row {rowid if rowid is not None else '(without rowid)'} refers to a "
                f"missing row of {parent}" for table, rowid, parent, _ in rows]
    report.add("foreign_key_check", FAILED, f"{len(rows)} violation(s): {_listed(problems)}")


def _check_journal_mode(report: Report, conn: apsw.Connection) -> None:
    try:
        mode = str(_pragma(conn, "journal_mode")).lower()
    except apsw.Error as exc:
        report.add("journal_mode", FAILED, describe(exc))
        return
    if mode == "wal":
        report.add("journal_mode", OK, "wal")
    elif report.sqlitesaver:
        report.add("journal_mode", NOTE, f"{mode}; sqlitesaver requires wal and sets it when it "
                                         "next opens the database")
    else:
        report.add("journal_mode", NOTE, mode)


# --- payload checksums ------------------------------------------------------------------------

def _check_payloads(report: Report, conn: apsw.Connection) -> None:
    name = "checksums"
    if not report.sqlitesaver:
        report.add(name, SKIPPED, "not a sqlitesaver database")
        return
    if not 1 <= (report.schema_version or 0) <= schema.latest_version():
        report.add(name, SKIPPED, f"schema version {report.schema_version} is not one this "
                                  "sqlitesaver knows")
        return
    try:
        for table, rows in (("checkpoints", _checkpoint_failures(conn)),
                            ("writes", _write_failures(conn)),
                            ("log", _log_failures(conn))):
            report.payloads_checked[table] = 0
            for failure in rows:
                report.payloads_checked[table] += 1
                if failure is None:
                    continue
                report.payloads_failed += 1
                if len(report.payload_failures) < _SHOWN:
                    report.payload_failures.append(failure)
    except apsw.Error as exc:
        report.add(name, FAILED, f"reading the payloads failed ({describe(exc)}) after "
                                 f"{_counts(report.payloads_checked)}{_failures(report)}")
        return
    counts = _counts(report.payloads_checked)
    if report.payloads_failed:
        report.add(name, FAILED, f"{report.payloads_failed} payload(s) do not match their "
                                 f"checksum (checked {counts}){_failures(report)}")
    else:
        report.add(name, OK, f"{counts}: all match")


def _failures(report: Report) -> str:
    """': <the first failures>', or '' when there are none."""
    if not report.payloads_failed:
        return ""
    shown = "; ".join(_describe_failure(f) for f in report.payload_failures)
    hidden = report.payloads_failed - len(report.payload_failures)
    return f": {shown}" + (f" (and {hidden} more)" if hidden else "")


def _counts(checked: dict[str, int]) -> str:
    labels = {"checkpoints": "checkpoints", "writes": "pending writes", "log": "log events"}
    return ", ".join(f"{n} {labels[table]}" for table, n in checked.items()) or "0 payloads"


def _checkpoint_id(seq: int) -> str:
    return format(seq, "016x")  # as Saver formats checkpoint ids


def _verified(compute, key: dict, columns: tuple, checksum: object) -> dict | None:
    """None when ``compute(*columns) == checksum``, else the failure's key."""
    try:
        if compute(*columns) == checksum:
            return None
    except (TypeError, ValueError) as exc:  # a column of the wrong type: damage too
        return dict(key, error=f"{type(exc).__name__}: {exc}")
    return key


def _checkpoint_failures(conn: apsw.Connection) -> Iterator[dict | None]:
    for seq, thread_id, namespace, parent_seq, created, state, meta, checksum in conn.execute(
            "SELECT seq, thread_id, namespace, parent_seq, created_at, state, metadata, "
            "checksum FROM checkpoints ORDER BY seq"):
        yield _verified(integrity.checkpoint_checksum,
                        {"table": "checkpoints", "checkpoint_id": _checkpoint_id(seq),
                         "thread_id": thread_id, "namespace": namespace},
                        (seq, thread_id, namespace, parent_seq, created, state, meta), checksum)


def _write_failures(conn: apsw.Connection) -> Iterator[dict | None]:
    for seq, task_id, index, channel, value, task_path, checksum in conn.execute(
            "SELECT checkpoint_seq, task_id, idx, channel, value, task_path, checksum "
            "FROM writes ORDER BY checkpoint_seq, task_id, idx"):
        yield _verified(integrity.write_checksum,
                        {"table": "writes", "checkpoint_id": _checkpoint_id(seq),
                         "task_id": task_id, "index": index},
                        (seq, task_id, index, channel, task_path, value), checksum)


def _log_failures(conn: apsw.Connection) -> Iterator[dict | None]:
    for seq, thread_id, created, event, checksum in conn.execute(
            "SELECT seq, thread_id, created_at, event, checksum FROM log ORDER BY seq"):
        yield _verified(integrity.log_checksum,
                        {"table": "log", "seq": seq, "thread_id": thread_id},
                        (seq, thread_id, created, event), checksum)


def _describe_failure(failure: dict) -> str:
    table = failure["table"]
    if table == "checkpoints":
        text = (f"checkpoint {failure['checkpoint_id']!r} of thread {failure['thread_id']!r}"
                + (f" (namespace {failure['namespace']!r})" if failure["namespace"] else ""))
    elif table == "writes":
        text = (f"pending write ({failure['task_id']!r}, {failure['index']}) of checkpoint "
                f"{failure['checkpoint_id']!r}")
    else:
        text = f"log event {failure['seq']} of thread {failure['thread_id']!r}"
    return f"{table}: {text}" + (f" [{failure['error']}]" if "error" in failure else "")


# --- the command ------------------------------------------------------------------------------

def format_report(report: Report) -> str:
    width = max(len(step.name) for step in report.steps)
    lines = [report.path]
    lines += [f"  {step.status:<7} {step.name:<{width}}  {step.detail}" for step in report.steps]
    problems = sum(step.status == FAILED for step in report.steps)
    lines.append(f"  => {'ok' if report.ok else f'FAILED ({problems} check(s) failed)'}")
    return "\n".join(lines)


def run(paths: Sequence[str], *, require_saver: bool = False, as_json: bool = False,
        out: TextIO) -> int:
    """Check every path and print the result; return 0 if all are fine, else 1."""
    reports = [check_database(path, require_saver=require_saver) for path in paths]
    ok = all(report.ok for report in reports)
    if as_json:
        json.dump({"ok": ok, "databases": [r.as_dict() for r in reports]}, out, indent=2)
        out.write("\n")
    else:
        out.write("\n\n".join(format_report(r) for r in reports) + "\n")
        if len(reports) > 1:
            failed = sum(not r.ok for r in reports)
            out.write(f"\n{len(reports) - failed} of {len(reports)} database(s) ok\n")
    return 0 if ok else 1
