"""The first checks of a path, before any other: the file (a regular, readable SQLite file,
looked at with ``stat()`` and its header, a symbolic link followed) and what it is (a sqlitesaver
database of a schema version this library knows, read through SQL), and why SQLite could not
read it, as damage or as unusable."""

from __future__ import annotations

import os
from typing import Any

import apsw

from .. import paths, schema
from ..errors import SaverError, describe, out_of_descriptors
from ..opening import read_header
from .report import FAILED, OK, UNUSABLE, Report

_MAGIC = b"SQLite format 3\x00"


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
