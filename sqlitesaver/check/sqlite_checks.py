"""The checks at SQLite's level on an identified database: SQLite's own (``PRAGMA
integrity_check``, ``PRAGMA foreign_key_check``, the journal mode) and the schema, compared with
the one sqlitesaver creates for the file's version; and :func:`_known_schema`, which every later
check asks first."""

from __future__ import annotations

from collections import Counter

import apsw

from .. import schema
from ..errors import describe
from .identity import _pragma
from .report import FAILED, NOTE, OK, SKIPPED, Report, _listed


# --- SQLite's own checks ----------------------------------------------------------------------

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


def _known_schema(report: Report, name: str) -> bool:
    """True if the schema is one this sqlitesaver knows; else report ``name`` skipped."""
    if 1 <= (report.schema_version or 0) <= schema.latest_version():
        return True
    report.add(name, SKIPPED, f"schema version {report.schema_version} is not one this "
                              "sqlitesaver knows")
    return False
