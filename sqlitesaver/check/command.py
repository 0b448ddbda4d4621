"""Checking a path: :func:`check_database` opens one database read-only, in one snapshot, and
runs every check in order (:data:`_CHECKS`), each standing alone; a PostgreSQL URL goes to
sqlitesaver/postgres/check.py. :func:`run` is ``python -m sqlitesaver check``: every path, the
report printed, the exit status returned."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TextIO

import apsw

from ..postgres.target import SCHEMES as _POSTGRES_SCHEMES
from .identity import _cannot_read, _check_file, _check_identity
from .invariants import _check_invariants
from .payloads import _check_payloads
from .report import EXIT_STATUS, FAILED, UNUSABLE, Report, _stopped, exit_status, format_report
from .sqlite_checks import _check_foreign_keys, _check_integrity, _check_journal_mode, _check_schema
from .stored_files import _check_files

#: How long to wait for a lock another process holds (e.g. while it rebuilds the WAL index after
#: a crash); a reader of a WAL database otherwise never waits for writers.
_BUSY_TIMEOUT_MS = 10_000


def check_database(path: str) -> Report:
    """Check one database file without writing to it; see :mod:`sqlitesaver.check`. Whatever goes
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


#: The checks run on a sqlitesaver database once it is identified, in order, each under the name
#: it is reported with should it fail to finish (_check_invariants reports three names).
_CHECKS = (("integrity_check", _check_integrity), ("foreign_key_check", _check_foreign_keys),
           ("journal_mode", _check_journal_mode), ("schema", _check_schema),
           ("checksums", _check_payloads), ("files", _check_files),
           ("invariants", _check_invariants))


# --- the command ------------------------------------------------------------------------------

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
