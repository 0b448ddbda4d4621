"""``python -m sqlitesaver check``: verify databases without changing a byte of them.

For each file, in order: the file is a regular, readable SQLite file (looked at with ``stat()``
first, as :mod:`sqlitesaver.paths` does for the Saver: a FIFO is never opened, a symbolic link is
followed to the file whose ``-wal`` SQLite uses); it is a sqlitesaver
database of a schema version this library knows; ``PRAGMA integrity_check`` (full) is ``ok``;
``PRAGMA foreign_key_check`` is empty; the journal mode (sqlitesaver uses WAL); the schema is
exactly the one sqlitesaver creates for that schema version (every table, column, index,
trigger and view, compared by :func:`sqlitesaver.schema.schema_differences`: an added trigger
or a dropped index fails it); and every stored payload (checkpoints, pending writes, log
events) matches its checksum, computed with :mod:`sqlitesaver.integrity` exactly as
:class:`~sqlitesaver.Saver` does on every read, and every text in those rows is valid UTF-8.
Files (schema version 3): every manifest entry matches its checksum and names stored content, and
every content's chunks are all there, each matching its CRC-32, adding up to its size and
SHA-256; content no manifest names is reported as a note (garbage, not damage).
Then the structural invariants the Saver keeps, each its own check: every pending write belongs
to an existing checkpoint; ids are monotonic (a parent is older than its child, and the
``high_water`` rows make the next id the Saver hands out larger than every id ever handed out);
parents exist unless pruned (an existing parent is of the same thread and namespace, a missing
one is older than every remaining checkpoint of the thread and namespace, as ``prune`` leaves
it; a parent's caller-supplied id, kept beside the link, is that parent's own id).

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

Each database ends in one of three results, which :func:`run` turns into the exit status:

* ``ok`` (0): a sqlitesaver database and every check passed;
* ``damaged`` (1): a check found damage in a sqlitesaver database, including a hot journal and
  an SQLite file too short to hold its header (whose it was cannot be told; damage is never
  passed off as "not ours");
* ``unusable`` (2): not validated: a path that is missing, unreadable, a directory, a FIFO, a
  device or a socket, a symbolic link that leads nowhere or into a loop, or a name SQLite cannot
  take (a NUL, not UTF-8, too long); a file that
  is not an SQLite database (text, empty); an SQLite database of another application (its
  ``application_id``, read through SQL, or from the file header when SQLite cannot read the
  file); a sqlitesaver database of a newer schema version (upgrade sqlitesaver); or SQLite
  cannot open it here (e.g. its ``-wal`` is missing in a read-only directory). The SQLite-level
  checks still run on a newer-version database, and damage they find makes it ``damaged``.

With several paths the worst result wins: 1 if any database is damaged, else 2 if any path was
unusable, else 0. A usage problem with one path never hides damage found in another. Each path,
and each check of it, stands alone: a check that cannot finish (damage no check foresaw, such
as a text that is not UTF-8 where SQLite reports it) is that check FAILED, the others still run,
and the next path is still checked; the command never ends in a traceback.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import apsw

from .. import attachments, integrity, paths, schema
from ..postgres.target import SCHEMES as _POSTGRES_SCHEMES
from ..opening import read_header
from ..errors import SaverError, describe, out_of_descriptors

__all__ = ["OK", "FAILED", "UNUSABLE", "NOTE", "SKIPPED", "EXIT_STATUS", "Step", "Report",
           "check_database", "exit_status", "run"]

#: A check line's status. FAILED: damage found (exit 1). UNUSABLE: this file cannot be validated
#: (not a sqlitesaver database, newer schema, unreadable here: exit 2).
OK, FAILED, UNUSABLE, NOTE, SKIPPED = "ok", "FAILED", "UNUSABLE", "note", "skipped"
#: A database's result, and the exit status each one gives.
EXIT_STATUS = {"ok": 0, "damaged": 1, "unusable": 2}

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


def check_database(path: str) -> Report:
    """Check one database file without writing to it; see the module docstring. Whatever goes
    wrong while checking it is reported in its :class:`Report` (FAILED), never raised. A
    ``postgresql://`` or ``postgres://`` URL is a server, checked by
    sqlitesaver/postgres/check.py (the same report and results), as ``Saver`` opens one."""
    if isinstance(path, str) and path.startswith(_POSTGRES_SCHEMES):
        return _check_server(path)
    report = Report(path)
    try:
        _check_database(report, path)
    except Exception as exc:  # outside every check: the file as a whole was not checked
        report.add("check", FAILED, _stopped(exc))
    return report


def _stopped(exc: BaseException) -> str:
    """The detail of a check that raised ``exc`` instead of finishing."""
    if isinstance(exc, UnicodeDecodeError):
        return (f"could not finish: SQLite returned a text that is not valid UTF-8 "
                f"({describe(exc)}); sqlitesaver writes only UTF-8, so the file is damaged")
    return (f"could not finish ({describe(exc)}): counted as damage; if every other check "
            "passes, report it as a sqlitesaver bug")


def _check_database(report: Report, path: str) -> None:
    found = _check_file(report, path)
    if found is None:
        return
    # From here on the file itself: a symbolic link is followed once (see sqlitesaver.paths),
    # so that its '-wal' and '-shm' are the ones SQLite uses, beside the real file.
    path, header = found
    try:
        # An absolute path is never taken for a URI, whatever SQLite's URI setting.
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        _cannot_read(report, path, header, exc)
        return
    try:
        try:
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA trusted_schema=0")  # a foreign schema runs none of our code
            conn.execute("BEGIN")  # deferred: one read snapshot for every check below
        except apsw.Error as exc:
            _cannot_read(report, path, header, exc)
            return
        if _check_identity(report, conn, path, header):
            for name, check in _CHECKS:
                try:
                    check(report, conn)
                except Exception as exc:  # damage no check foresaw: the others still run
                    report.add(name, FAILED, _stopped(exc))
    finally:
        conn.close()  # a read transaction only: nothing to commit, and no checkpoint


# --- the file -----------------------------------------------------------------------------

def _check_file(report: Report, path: str) -> tuple[str, bytes] | None:
    """The file to open (absolute, a symbolic link followed) and its first 100 bytes, if it is
    an SQLite file worth opening; else None (reported)."""
    name = "file"
    try:
        # stat() only, never open(): opening a FIFO would block (sqlitesaver.paths).
        real = paths.resolve(os.path.abspath(path), advice=False)
    except SaverError as exc:
        report.add(name, UNUSABLE, str(exc))
        return None
    via = "" if real == os.path.abspath(path) else f" (through the symbolic link to {real!r})"
    try:
        st = os.stat(real)
    except FileNotFoundError:
        wal = path + "-wal"
        extra = (f"; {wal!r} exists without it: the database was moved or deleted without its "
                 "-wal, which may hold its last transactions" if os.path.lexists(wal) else "")
        report.add(name, UNUSABLE, f"{path!r} does not exist{extra}")
        return None
    except OSError as exc:
        report.add(name, UNUSABLE, f"cannot look at {path!r}: {exc.strerror or exc}")
        return None
    try:
        # Through SQLite's VFS, not open(): closing a plain descriptor on the file would cancel
        # the POSIX locks of any connection to it in this process (see sqlitesaver.opening).
        size, header = read_header(real)
    except apsw.Error as exc:
        if out_of_descriptors(exc) is not None:  # asked right after the failure
            report.add(name, UNUSABLE, f"{path!r} cannot be read: too many open files in "
                                       f"this process ({describe(exc)}). Close files or raise "
                                       "the limit (ulimit -n) and check again")
        else:
            report.add(name, UNUSABLE, f"{path!r} cannot be read ({describe(exc)}); check "
                                       "its permissions")
        return None
    if size == 0:
        report.add(name, UNUSABLE, f"{path!r} is an empty file (0 bytes), not an SQLite "
                                   "database, so not a sqlitesaver database")
        return None
    if not header.startswith(_MAGIC) and _has_wal(real):
        # A power loss during a checkpoint can garble page 1 in the file while the WAL holds
        # the whole page, which SQLite reads instead: let SQLite decide (see opening.py).
        report.add(name, OK, f"{st.st_size} bytes{via}; the file's own header is unreadable "
                             f"(it starts with {header[:16]!r}), so SQLite must find page 1 "
                             "in the -wal")
        return real, header
    if not header.startswith(_MAGIC):
        report.add(name, UNUSABLE, f"{path!r} is not an SQLite database (it starts with "
                                   f"{header[:16]!r}), so not a sqlitesaver database")
        return None
    if len(header) < 100:
        # Whose it was cannot be told (application_id is at offset 68): reported as damage.
        report.add(name, FAILED, f"{path!r} is a truncated SQLite file ({size} bytes, "
                                 "shorter than the 100-byte header): damaged")
        return None
    report.add(name, OK, f"SQLite database file, {st.st_size} bytes{via}")
    return real, header


def _has_wal(path: str) -> bool:
    try:
        return os.path.getsize(path + "-wal") > 0
    except OSError:
        return False


def _header_application_id(header: bytes) -> int:
    return int.from_bytes(header[68:72], "big")


def _foreign(path: str, application_id: int) -> str:
    """Say that ``path`` is another application's SQLite database."""
    what = ("has no application_id (0)" if application_id == 0 else
            f"has application_id 0x{application_id:08x}")
    return (f"{path!r} is an SQLite database of another application: it {what}, sqlitesaver's "
            f"is 0x{schema.APPLICATION_ID:08x}. It is not a sqlitesaver database, so it was not "
            "validated")


def _cannot_read(report: Report, path: str, header: bytes, exc: apsw.Error) -> None:
    """Report why SQLite could not read the file, and what to do: as damage (FAILED) when the
    file is damaged and may be ours, else as UNUSABLE."""
    name = "open"
    if out_of_descriptors(exc) is not None:  # first: it asks the OS right after the failure
        report.add(name, UNUSABLE, f"SQLite cannot open {path!r}: too many open files in this "
                                   f"process ({describe(exc)}). Close files or raise the limit "
                                   "(ulimit -n) and check again. Nothing was written")
        return
    application_id = _header_application_id(header)
    # SQLite cannot tell us whose the file is; its header can (the WAL may hold a newer page 1,
    # but the application_id never changes once a database has it).
    # An unreadable header (page 1 expected in the -wal) says nothing about whose it is.
    foreign = header.startswith(_MAGIC) and application_id != schema.APPLICATION_ID
    report.sqlitesaver = not foreign
    directory = os.path.dirname(os.path.abspath(path))
    wal, shm = path + "-wal", path + "-shm"
    directory_writable = os.access(directory, os.W_OK | os.X_OK)
    if isinstance(exc, (apsw.CantOpenError, apsw.ReadOnlyError)) and not directory_writable:
        missing = [f for f in (wal, shm) if not os.path.lexists(f)]
        if missing:
            report.add(name, UNUSABLE, (
                f"SQLite cannot read {path!r} ({describe(exc)}): a WAL database can only be "
                f"read with its '-wal' and '-shm' files beside it, and {missing[0]!r} is "
                f"missing while the directory {directory!r} is not writable, so SQLite "
                "cannot create it (it holds no data). Run the check as a user who can "
                "write that directory, or copy the database together with its '-wal' (if "
                "any) into a writable directory and check the copy. Nothing was written"))
            return
    if isinstance(exc, apsw.ReadOnlyError) and \
            getattr(exc, "extendedresult", None) == apsw.SQLITE_READONLY_ROLLBACK:
        problem = (f"{path!r} has a hot rollback journal ({path + '-journal'!r}) left by a "
                   "crash, which only a writable connection may roll back; the checker writes "
                   "nothing. Open the database once with its application to recover it, then "
                   "check again")
    elif isinstance(exc, (apsw.CorruptError, apsw.NotADBError, apsw.IOError)):
        problem = f"SQLite cannot read {path!r}: it is damaged ({describe(exc)})"
    else:
        report.add(name, UNUSABLE, f"SQLite cannot read {path!r} ({describe(exc)}). Nothing "
                                   "was written")
        return
    if foreign:
        report.add(name, UNUSABLE, f"{_foreign(path, application_id)} (as its header says). "
                                   f"Besides: {problem}")
    else:
        report.add(name, FAILED, problem)


# --- identity -----------------------------------------------------------------------------

def _pragma(conn: apsw.Connection, name: str) -> Any:
    """Read one PRAGMA's value (one statement per execute; see the durability notes)."""
    row = conn.execute(f"PRAGMA {name}").fetchone()
    return row[0] if row else None


def _check_identity(report: Report, conn: apsw.Connection, path: str, header: bytes) -> bool:
    """Report what the file is; False when nothing more is to be checked."""
    try:
        # Read through SQL, not from the file header: the WAL may hold a newer page 1.
        application_id = _pragma(conn, "application_id")
        version = _pragma(conn, "user_version")
    except apsw.Error as exc:
        _cannot_read(report, path, header, exc)
        return False
    report.schema_version = version
    report.sqlitesaver = application_id == schema.APPLICATION_ID
    name = "sqlitesaver"
    if not report.sqlitesaver:
        report.add(name, UNUSABLE, _foreign(path, application_id))
        return False
    latest = schema.latest_version()
    if version > latest:
        # The SQLite-level checks still run: damage they find is reported as damage.
        report.add(name, UNUSABLE, f"schema version {version}, written by a newer sqlitesaver; "
                                   f"this one knows versions up to {latest}. Cannot validate: "
                                   "upgrade sqlitesaver")
    elif version < 1:
        # migrate() sets application_id and user_version in one transaction.
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
    except (apsw.Error, UnicodeDecodeError) as exc:  # damage too deep to list
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


# --- the schema -------------------------------------------------------------------------------

def _check_schema(report: Report, conn: apsw.Connection) -> None:
    """The schema is the one sqlitesaver creates for the file's version: nothing missing,
    added or changed (the Saver refuses to open it otherwise)."""
    name = "schema"
    if not _known_schema(report, name):
        return
    version = report.schema_version
    try:
        found = schema.describe_schema(conn)
    except (apsw.Error, UnicodeDecodeError) as exc:
        report.add(name, FAILED, f"the schema cannot be read ({describe(exc)})")
        return
    problems = schema.schema_differences(schema.expected_schema(version), found)
    if problems:
        report.add(name, FAILED, f"{len(problems)} difference(s) from the schema sqlitesaver "
                                 f"creates for version {version}: {'; '.join(problems)}")
    else:
        counts = Counter(key.split(" ", 1)[0] for key in found)
        report.add(name, OK, f"as sqlitesaver creates it for version {version}: "
                             + ", ".join(f"{n} {_PLURALS.get(kind, kind)}"
                                         for kind, n in sorted(counts.items()))
                             + ", nothing else")


_PLURALS = {"index": "indexes", "table": "tables", "trigger": "triggers", "view": "views"}


# --- payload checksums ------------------------------------------------------------------------

def _check_payloads(report: Report, conn: apsw.Connection) -> None:
    name = "checksums"
    if not _known_schema(report, name):
        return
    try:
        for table, rows in (("checkpoints", _checkpoint_failures(conn, report.schema_version)),
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


def _known_schema(report: Report, name: str) -> bool:
    """True if the schema is one this sqlitesaver knows; else report ``name`` skipped."""
    if 1 <= (report.schema_version or 0) <= schema.latest_version():
        return True
    report.add(name, SKIPPED, f"schema version {report.schema_version} is not one this "
                              "sqlitesaver knows")
    return False


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


def _checkpoint_id(seq: object) -> str:
    if type(seq) is int and seq >= 0:
        return format(seq, "016x")  # as Saver formats checkpoint ids
    return f"<seq {seq!r}>"  # damage: no id the Saver could have handed out


def _verified(compute, key: dict, columns: tuple, checksum: object) -> dict | None:
    """None when ``compute(*columns) == checksum``, else the failure's key."""
    try:
        if compute(*columns) == checksum:
            return None
    except (TypeError, ValueError, OverflowError) as exc:  # a column of the wrong type: damage
        return dict(key, error=f"{type(exc).__name__}: {exc}")
    return key


def _rows(conn: apsw.Connection, columns: Sequence[str], rest: str
          ) -> Iterator[tuple[list, list[str]]]:
    """``SELECT columns rest``, each row with the names of its columns that hold a text that
    is not valid UTF-8 (APSW would raise UnicodeDecodeError on the whole row): such a text
    comes back as a str with the bad bytes escaped (``\\xff``), everything else as stored.
    Each column is read twice: as bytes when it holds text, as itself otherwise."""
    select = ", ".join(f"iif(typeof({c}) = 'text', CAST({c} AS BLOB), NULL), "
                       f"iif(typeof({c}) = 'text', NULL, {c})" for c in columns)
    for row in conn.execute(f"SELECT {select} {rest}"):
        values, bad = [], []
        for column, text, other in zip(columns, row[::2], row[1::2]):
            if text is None:
                values.append(other)
                continue
            try:
                values.append(text.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(text.decode("utf-8", "backslashreplace"))
                bad.append(column)
        yield values, bad


def _not_utf8(key: dict, bad: list[str]) -> dict:
    return dict(key, error=f"{', '.join(bad)}: text that is not valid UTF-8")


def _checkpoint_failures(conn: apsw.Connection, version: int | None
                         ) -> Iterator[dict | None]:
    # Schema version 1 (never migrated here: the check writes nothing) has no id columns.
    ids = ["key", "parent_key"] if (version or 0) >= 2 else ["NULL", "NULL"]
    for values, bad in _rows(conn, ["seq", "thread_id", "namespace", "parent_seq", "created_at",
                                    "state", "metadata", "checksum", *ids],
                             "FROM checkpoints ORDER BY seq"):
        (seq, thread_id, namespace, parent_seq, created, state, meta, checksum, key,
         parent_key) = values
        failure = {"table": "checkpoints",
                   "checkpoint_id": _checkpoint_id(seq) if key is None else key,
                   "thread_id": thread_id, "namespace": namespace}
        yield _not_utf8(failure, bad) if bad else _verified(
            functools.partial(integrity.expected_checkpoint_checksum, checksum), failure,
            (seq, thread_id, namespace, parent_seq, created, state, meta, key, parent_key),
            checksum)


def _write_failures(conn: apsw.Connection) -> Iterator[dict | None]:
    for values, bad in _rows(conn, ["checkpoint_seq", "task_id", "idx", "channel", "value",
                                    "task_path", "checksum"],
                             "FROM writes ORDER BY checkpoint_seq, task_id, idx"):
        seq, task_id, index, channel, value, task_path, checksum = values
        failure = {"table": "writes", "checkpoint_id": _checkpoint_id(seq),
                   "task_id": task_id, "index": index}
        yield _not_utf8(failure, bad) if bad else _verified(
            functools.partial(integrity.expected_write_checksum, checksum), failure,
            (seq, task_id, index, channel, task_path, value), checksum)


def _log_failures(conn: apsw.Connection) -> Iterator[dict | None]:
    for values, bad in _rows(conn, ["seq", "thread_id", "created_at", "event", "checksum"],
                             "FROM log ORDER BY seq"):
        seq, thread_id, created, event, checksum = values
        failure = {"table": "log", "seq": seq, "thread_id": thread_id}
        yield _not_utf8(failure, bad) if bad else _verified(
            functools.partial(integrity.expected_log_checksum, checksum), failure,
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


# --- structural invariants -------------------------------------------------------------------
# Each can be violated only by damage (or by writing around the Saver): put() takes the next
# seq above every seq present and the high-water mark, and accepts only a parent_id of the same
# thread and namespace that exists at that moment; prune() keeps the newest checkpoints of each
# (thread, namespace) and delete_thread() deletes all of a thread's, both after raising
# high_water to the largest seq present; delete_matching() raises it too and detaches the
# children of what it deletes; copy_thread() inserts copies with new seqs, in the same order.

def _check_invariants(report: Report, conn: apsw.Connection) -> None:
    for name, check in (("writes_point_at_checkpoints", _dangling_writes),
                        ("ids_monotonic", _ids_monotonic),
                        ("parents_exist_unless_pruned",
                         lambda conn: _parents(conn, report.schema_version))):
        if not _known_schema(report, name):
            continue
        try:
            problems, summary = check(conn)
        except apsw.Error as exc:
            report.add(name, FAILED, f"could not be checked ({describe(exc)})")
            continue
        except Exception as exc:  # e.g. a text that is not UTF-8 in a row it reads
            report.add(name, FAILED, _stopped(exc))
            continue
        if problems:
            report.add(name, FAILED, f"{len(problems)} violation(s): {_listed(problems)}")
        else:
            report.add(name, OK, summary)


def _checkpoint(seq: object, thread_id: object, namespace: object) -> str:
    return (f"checkpoint {_checkpoint_id(seq)!r} of thread {thread_id!r}"
            + (f" (namespace {namespace!r})" if namespace else ""))


def _dangling_writes(conn: apsw.Connection) -> tuple[list[str], str]:
    """Every pending write belongs to an existing checkpoint (foreign_key_check says the same
    when the foreign key is intact; this asks the tables directly)."""
    problems = [f"pending write ({task_id!r}, {index!r}) of checkpoint {_checkpoint_id(seq)!r}, "
                "which does not exist"
                for seq, task_id, index in conn.execute(
                    "SELECT checkpoint_seq, task_id, idx FROM writes AS w WHERE NOT EXISTS "
                    "(SELECT 1 FROM checkpoints AS c WHERE c.seq = w.checkpoint_seq) "
                    "ORDER BY checkpoint_seq, task_id, idx")]
    (count,) = conn.execute("SELECT count(*) FROM writes").fetchone()
    return problems, f"all {count} pending write(s) belong to an existing checkpoint"


def _ids_monotonic(conn: apsw.Connection) -> tuple[list[str], str]:
    """The Saver hands out seq = max(largest seq present, high_water) + 1, and raises
    high_water to the largest seq present before it deletes anything. So: both high_water rows
    exist and hold integers (else the next seq is NULL and SQLite picks one, which may be a
    deleted row's); every seq is >= 1; a parent is older than its child; and a parent that is
    gone is not above high_water (its deletion would have raised it), else its id could be
    handed out again."""
    problems = []
    marks: dict[str, int] = {}
    for table in ("checkpoints", "log"):
        row = conn.execute("SELECT value, typeof(value) FROM high_water WHERE name = ?",
                           (table,)).fetchone()
        if row is None:
            problems.append(f"high_water has no {table!r} row: the next {table} seq would be "
                            "chosen by SQLite and could be a deleted one's")
        elif row[1] != "integer":
            problems.append(f"high_water {table!r} is {row[0]!r} ({row[1]}), not an integer")
        else:
            marks[table] = row[0]
        for (seq,) in conn.execute(f"SELECT seq FROM {table} WHERE seq < 1 ORDER BY seq"):
            problems.append(f"{table} seq {seq} is below 1, which no Saver hands out")
    for seq, thread_id, namespace, parent_seq in conn.execute(
            "SELECT seq, thread_id, namespace, parent_seq FROM checkpoints "
            "WHERE parent_seq IS NOT NULL AND (typeof(parent_seq) != 'integer' "
            "OR parent_seq >= seq) ORDER BY seq"):
        problems.append(f"{_checkpoint(seq, thread_id, namespace)} has parent "
                        f"{_checkpoint_id(parent_seq)!r}, which is not older than it")
    if "checkpoints" in marks:
        for seq, thread_id, namespace, parent_seq in conn.execute(
                "SELECT seq, thread_id, namespace, parent_seq FROM checkpoints AS c "
                "WHERE typeof(parent_seq) = 'integer' AND parent_seq > ? AND NOT EXISTS "
                "(SELECT 1 FROM checkpoints AS p WHERE p.seq = c.parent_seq) ORDER BY seq",
                (marks["checkpoints"],)):
            problems.append(f"{_checkpoint(seq, thread_id, namespace)} has parent "
                            f"{_checkpoint_id(parent_seq)!r}, which is gone but above "
                            f"high_water ({marks['checkpoints']}): that id could be handed "
                            "out again")
    if problems:
        return problems, ""
    nexts = {table: conn.execute(f"SELECT max(coalesce((SELECT max(seq) FROM {table}), 0), ?)"
                                 " + 1", (marks[table],)).fetchone()[0]
             for table in ("checkpoints", "log")}
    return [], (f"next checkpoint id {_checkpoint_id(nexts['checkpoints'])!r}, next log seq "
                f"{nexts['log']}: above every seq present and the high-water mark of deleted "
                "ones; every parent is older than its child")


def _parents(conn: apsw.Connection, version: int | None) -> tuple[list[str], str]:
    """An existing parent is of the same thread and namespace (put() checks it); a missing one
    was pruned, and prune() deletes only the oldest checkpoints of a thread and namespace, so
    it is older than every checkpoint of them that remains. From schema version 2, the
    parent's caller-supplied id kept beside the link (``parent_key``) is the existing parent's
    own id, and there is none without a link."""
    problems = []
    keys = "c.parent_key, p.key" if (version or 0) >= 2 else "NULL, NULL"
    if keys != "NULL, NULL":
        for seq, thread_id, namespace, parent_key in conn.execute(
                "SELECT seq, thread_id, namespace, parent_key FROM checkpoints "
                "WHERE parent_seq IS NULL AND parent_key IS NOT NULL ORDER BY seq"):
            problems.append(f"{_checkpoint(seq, thread_id, namespace)} names parent "
                            f"{parent_key!r} but links to no parent")
    found, present, pruned, by_key = parent_links(conn.execute(
        "SELECT c.seq, c.thread_id, c.namespace, c.parent_seq, p.seq, p.thread_id, "
        "p.namespace, (SELECT min(o.seq) FROM checkpoints AS o WHERE o.thread_id = "
        f"c.thread_id AND o.namespace = c.namespace), {keys} FROM checkpoints AS c "
        "LEFT JOIN checkpoints AS p ON p.seq = c.parent_seq "
        "WHERE c.parent_seq IS NOT NULL ORDER BY c.seq"))
    problems += found
    by_key_text = f"; {by_key} name their parent by a caller-supplied id" if by_key else ""
    return problems, (f"{present + pruned} parent link(s): {present} to an existing checkpoint "
                      f"of the same thread and namespace, {pruned} to a pruned one{by_key_text}")


def parent_links(rows: Iterable[tuple]) -> tuple[list[str], int, int, int]:
    """The parent-link invariant over rows ``(seq, thread_id, namespace, parent_seq, parent's
    seq, parent's thread_id, parent's namespace, oldest seq of the child's thread and
    namespace, parent_key, parent's key)`` of every linked checkpoint (the parent's columns
    NULL when it is gone), for both engines' validators: (problems, links to an existing
    parent, links to a pruned one, links naming the parent by a caller-supplied id)."""
    problems = []
    present = pruned = by_key = 0
    for (seq, thread_id, namespace, parent_seq, p_seq, p_thread, p_namespace, oldest,
         parent_key, p_key) in rows:
        child = _checkpoint(seq, thread_id, namespace)
        by_key += parent_key is not None
        if p_seq is not None:
            present += 1
            if (p_thread, p_namespace) != (thread_id, namespace):
                problems.append(f"{child} has parent {_checkpoint(p_seq, p_thread, p_namespace)}"
                                ": another thread or namespace")
            elif parent_key != p_key:
                problems.append(f"{child} names parent {parent_key!r} but links to "
                                f"{_checkpoint(p_seq, p_thread, p_namespace)}, whose id is "
                                f"{p_key!r}")
        elif type(parent_seq) is int and parent_seq < oldest:
            pruned += 1
        else:
            problems.append(f"{child} has parent {_checkpoint_id(parent_seq)!r}, which is "
                            f"missing but not older than {_checkpoint_id(oldest)!r}, the oldest "
                            "remaining checkpoint of that thread and namespace: it was not "
                            "pruned")
    return problems, present, pruned, by_key


# --- files (schema version 3, sqlitesaver.attachments) ----------------------------------------

def _check_files(report: Report, conn: apsw.Connection) -> None:
    """The files step on a SQLite file (see :func:`report_files`); text that is not UTF-8 in a
    manifest is reported, not raised."""
    if not _known_schema(report, "files"):
        return
    if (report.schema_version or 0) < 3:
        report.add("files", SKIPPED, f"schema version {report.schema_version} stores no files")
        return

    def execute(sql: str, params: Sequence[object] = ()) -> Iterable[tuple]:
        return conn.execute(sql, params)
    report_files(report, _rows(conn, ["checkpoint_seq", "name", "digest", "mode", "checksum"],
                               "FROM files ORDER BY checkpoint_seq, name"), execute, execute)


#: A statement in SQLite's dialect (``?`` placeholders, bare table names) and its parameters,
#: run by an engine; its rows.
Execute = Callable[..., Iterable[tuple]]


def report_files(report: Report, manifest: Iterable[tuple[Sequence[Any], Sequence[str]]],
                 execute: Execute, stream: Execute) -> None:
    """The files step of the validator, on any engine: every manifest entry's checksum and
    name, and that its content exists; every content's record, its chunks (all there, in
    order, each matching its CRC-32) and the SHA-256 and size of their concatenation.
    Content that no manifest names is reported as a note: it is garbage, not damage
    (``Saver.collect_garbage()`` deletes it). ``manifest``: the ``files`` rows ``(seq, name,
    digest, mode, checksum)``, each with the columns found damaged on the way; ``execute``
    runs :mod:`sqlitesaver.attachments`' dialect of SQL on the engine, ``stream`` the same
    for one content's chunks, without holding them all in memory at once."""
    name = "files"
    problems: list[str] = []
    entries = 0
    for values, bad in manifest:
        entries += 1
        seq, file_name, digest, mode, checksum = values
        where = f"file {file_name!r} of checkpoint {_checkpoint_id(seq)!r}"
        if bad:
            problems.append(f"{where}: {', '.join(bad)} is not valid UTF-8")
            continue
        try:
            intact = attachments.entry_checksum(seq, file_name, digest, mode) == checksum
        except (TypeError, ValueError, OverflowError):
            intact = False
        if not intact:
            problems.append(f"{where}: its manifest entry does not match its checksum")
            continue
        try:
            attachments.check_name(file_name)
        except SaverError as exc:
            problems.append(f"{where}: {exc}")
    for seq, file_name, digest in execute(
            "SELECT checkpoint_seq, name, digest FROM files AS f WHERE NOT EXISTS "
            "(SELECT 1 FROM file_contents AS c WHERE c.digest = f.digest) "
            "ORDER BY checkpoint_seq, name"):
        problems.append(f"file {file_name!r} of checkpoint {_checkpoint_id(seq)!r} names "
                        f"content {_hex(digest)} that is not stored")
    contents = chunk_rows = total = 0
    for digest, size, count, checksum in execute(
            "SELECT digest, size, chunks, checksum FROM file_contents ORDER BY digest"):
        contents += 1
        where = f"content {_hex(digest)}"
        try:
            intact = attachments.content_checksum(digest, size, count) == checksum
        except (TypeError, ValueError, OverflowError):
            intact = False
        if not intact:
            problems.append(f"{where}: its record does not match its checksum")
            continue
        hasher, length, expected = hashlib.sha256(), 0, 0
        for index, data, chunk_sum in stream(
                "SELECT idx, data, checksum FROM file_chunks WHERE digest = ? ORDER BY idx",
                (digest,)):
            chunk_rows += 1
            try:
                ok = index == expected and \
                    attachments.chunk_checksum(digest, index, data) == chunk_sum
            except (TypeError, ValueError, OverflowError):
                ok = False
            if not ok:
                problems.append(f"{where}: chunk {index!r} (expected chunk {expected}) is "
                                "missing, out of place or does not match its checksum")
                break
            hasher.update(data)
            length += len(data)
            expected += 1
        else:
            if expected != count or length != size or hasher.digest() != digest:
                problems.append(f"{where}: its {expected} chunk(s) hold {length} bytes with "
                                f"another digest; its record says {count} chunk(s), {size} "
                                "bytes")
        total += size if type(size) is int else 0
    for (digest,) in execute(
            "SELECT DISTINCT digest FROM file_chunks AS k WHERE NOT EXISTS "
            "(SELECT 1 FROM file_contents AS c WHERE c.digest = k.digest)"):
        problems.append(f"chunks of content {_hex(digest)} whose record is missing")
    ((orphans, orphan_bytes),) = list(execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM file_contents AS c WHERE NOT EXISTS "
        "(SELECT 1 FROM files AS f WHERE f.digest = c.digest)"))
    summary = (f"{entries} file(s) in manifests, {contents} distinct content(s) of {total} "
               f"bytes in {chunk_rows} chunk(s)")
    if problems:
        report.add(name, FAILED, f"{len(problems)} problem(s) in {summary}: "
                                 f"{_listed(problems)}")
    elif orphans:
        report.add(name, NOTE, f"{summary}: all match their checksums and digests; "
                               f"{orphans} content(s) ({orphan_bytes} bytes) that no "
                               "checkpoint's files name, which Saver.collect_garbage() deletes")
    else:
        report.add(name, OK, f"{summary}: all match their checksums and digests, every "
                             "content is named by a file")


def _hex(digest: object) -> str:
    return f"{digest.hex()[:16]}..." if isinstance(digest, bytes) else repr(digest)


#: The checks run on a sqlitesaver database once it is identified, in order, each under the name
#: it is reported with should it fail to finish (_check_invariants reports three names).
_CHECKS = (("integrity_check", _check_integrity), ("foreign_key_check", _check_foreign_keys),
           ("journal_mode", _check_journal_mode), ("schema", _check_schema),
           ("checksums", _check_payloads), ("files", _check_files),
           ("invariants", _check_invariants))


# --- the command ------------------------------------------------------------------------------

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


def run(paths: Sequence[str], *, as_json: bool = False, out: TextIO) -> int:
    """Check every path, print the result and return the exit status (:func:`exit_status`).
    A ``postgresql://`` or ``postgres://`` URL is a server: sqlitesaver/postgres/check.py
    checks it (the same report and results)."""
    reports = [check_database(path) for path in paths]
    status = exit_status(reports)
    if as_json:
        # default=repr: a damaged column can hold a type JSON has no form for (bytes)
        json.dump({"ok": status == 0, "exit_status": status,
                   "databases": [r.as_dict() for r in reports]}, out, indent=2, default=repr)
        out.write("\n")
    else:
        out.write("\n\n".join(format_report(r) for r in reports) + "\n")
        if len(reports) > 1:
            counts = {result: sum(r.result == result for r in reports)
                      for result in EXIT_STATUS}
            out.write(f"\n{counts['ok']} of {len(reports)} database(s) ok, {counts['damaged']} "
                      f"damaged, {counts['unusable']} unusable\n")
    return status


def _check_server(url: str) -> Report:
    from ..postgres.check import check_server  # imports psycopg: only when a URL is given
    try:
        return check_server(url)
    except ImportError as exc:  # the `postgres` extra is not installed
        report = Report("<a PostgreSQL URL>")
        report.add("connect", UNUSABLE, f"checking a PostgreSQL server needs psycopg 3 ({exc}): "
                                        "pip install 'sqlitesaver[postgres]'")
        return report
