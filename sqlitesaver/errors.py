"""The exceptions sqlitesaver raises, and the one place where APSW errors become ours.

Every exception is a :class:`SaverError`. They fall into three groups:

* :class:`DatabaseFileError` -- something about the file on disk: not ours, too new, corrupt,
  read-only, full, failing. The message names the file and says what to do.
* :class:`BusyTimeoutError` -- another connection held the lock for longer than the timeout.
* :class:`UsageError` -- the call itself was wrong (bad argument, unserializable value, a closed
  Saver, a Saver used after ``fork()``). Nothing was written.

APSW exceptions never leave the public API: :func:`translate` maps them here, keeping the
original as ``__cause__`` and its SQLite result codes on ``sqlite_result`` /
``sqlite_extended_result``.
"""

from __future__ import annotations

import os
import shlex

import apsw

__all__ = [
    "SaverError",
    "DatabaseFileError",
    "NotASaverDatabaseError",
    "SchemaVersionError",
    "MigrationError",
    "CorruptDatabaseError",
    "ChecksumError",
    "ReadOnlyDatabaseError",
    "DiskFullError",
    "DatabaseIOError",
    "CannotOpenError",
    "BusyTimeoutError",
    "UsageError",
    "InvalidArgumentError",
    "SerializationError",
    "CheckpointNotFoundError",
    "SaverClosedError",
    "ForkedProcessError",
]


class SaverError(Exception):
    """Root of every exception sqlitesaver raises.

    ``path`` is the database file concerned (``None`` when no file is involved).
    ``sqlite_result`` / ``sqlite_extended_result`` carry SQLite's result codes when the error
    came from SQLite, else ``None``.
    """

    def __init__(self, message: str, *, path: str | None = None,
                 sqlite_result: int | None = None,
                 sqlite_extended_result: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.sqlite_result = sqlite_result
        self.sqlite_extended_result = sqlite_extended_result


# --- the file on disk -----------------------------------------------------------------------

class DatabaseFileError(SaverError):
    """A problem with the database file itself."""


class NotASaverDatabaseError(DatabaseFileError):
    """The file is not SQLite, is empty, or is an SQLite database of another application.
    Raised before a single byte of the file is written."""


class SchemaVersionError(DatabaseFileError):
    """The database was written by a newer sqlitesaver whose schema this version cannot read.
    Raised before a single byte of the file is written."""


class MigrationError(DatabaseFileError):
    """A schema migration failed; its transaction was rolled back, the old schema is intact."""


class CorruptDatabaseError(DatabaseFileError):
    """SQLite or the integrity check found structural damage in the file."""


class ChecksumError(CorruptDatabaseError):
    """A stored payload does not match its checksum: the bytes changed after they were
    written. The wrong data is never returned."""


class ReadOnlyDatabaseError(DatabaseFileError):
    """The file or its directory cannot be written (WAL mode also needs to create the
    ``-wal`` and ``-shm`` files beside the database)."""


class DiskFullError(DatabaseFileError):
    """The disk or quota is full. The transaction was rolled back; the database is intact and
    writable again once space is freed."""


class DatabaseIOError(DatabaseFileError):
    """The operating system reported an I/O error. A write that raised this may or may not
    have reached the disk ("maybe committed"): re-read after reopening to find out."""


class CannotOpenError(DatabaseFileError):
    """The path cannot be opened: missing directory, a directory instead of a file,
    permissions."""


# --- contention -----------------------------------------------------------------------------

class BusyTimeoutError(SaverError):
    """Another connection held the database lock for longer than the busy timeout. Nothing
    of this call was written. ``waited`` is how many seconds the call waited, when known."""

    waited: float | None = None


# --- the call itself --------------------------------------------------------------------------

class UsageError(SaverError):
    """The call was wrong; nothing was written."""


class InvalidArgumentError(UsageError, ValueError):
    """An argument has the wrong type or value (e.g. a non-string thread id)."""


class SerializationError(UsageError, TypeError):
    """A value cannot be stored: the message names the type and where in the value it sits."""


class CheckpointNotFoundError(UsageError, LookupError):
    """A checkpoint named by the call (a parent, or the target of writes) does not exist."""


class SaverClosedError(UsageError):
    """The Saver was closed, or shut itself down after an I/O error; open a new one."""


class ForkedProcessError(UsageError):
    """The Saver was opened in another process and inherited through ``fork()``. SQLite
    connections must not cross a fork: open a new Saver in this process."""


# --- the boundary ---------------------------------------------------------------------------

_READONLY_HINT = ("check the permissions of the file and of its directory (WAL mode creates "
                  "'-wal' and '-shm' files beside the database)")


def translate(exc: BaseException, path: str | None, doing: str) -> SaverError:
    """Map an APSW (or OS) exception raised while ``doing`` something with ``path`` to the
    matching :class:`SaverError`. The caller raises the result ``from exc``."""
    if isinstance(exc, SaverError):
        return exc
    codes = {
        "sqlite_result": getattr(exc, "result", None),
        "sqlite_extended_result": getattr(exc, "extendedresult", None),
    }
    where = f"{path!r}" if path else "the database"
    detail = describe(exc)
    if isinstance(exc, apsw.LockedError):
        # SQLITE_LOCKED is a conflict on one connection inside this process (e.g. a statement
        # still running on it), not another process's lock: the busy timeout never waits for
        # it, so "past the busy timeout" would send the user looking for the wrong process.
        return BusyTimeoutError(
            f"{where} was locked inside this process while {doing} ({detail}): a conflict "
            "on one of this Saver's own connections, not another process's lock; nothing was "
            "written. Retry the call; if it persists, report it as a sqlitesaver bug.",
            path=path, **codes)
    if isinstance(exc, apsw.BusyError):
        return BusyTimeoutError(
            f"{where} stayed locked by another connection past the busy timeout while {doing} "
            f"({detail}); nothing was written. Retry later, raise busy_timeout, or find the "
            "process holding a long transaction.", path=path, **codes)
    if isinstance(exc, apsw.FullError):
        return DiskFullError(
            f"the disk holding {where} is full while {doing} ({detail}); the transaction was "
            "rolled back and the database is intact. Free space and retry.", path=path, **codes)
    if isinstance(exc, (apsw.CorruptError, apsw.NotADBError)):
        return CorruptDatabaseError(
            f"{where} is damaged ({detail}) while {doing}. Stop writing to it and "
            f"{restore_advice(path)}; '{check_command(path)}' lists the damage and checks "
            "every payload without writing to the file (Saver(path, integrity_check='full') "
            "lists what SQLite finds).", path=path, **codes)
    if isinstance(exc, apsw.ReadOnlyError):
        return ReadOnlyDatabaseError(
            f"{where} is read-only while {doing} ({detail}); {_READONLY_HINT}.",
            path=path, **codes)
    if isinstance(exc, apsw.CantOpenError):
        return _cannot_open(path, doing, detail, codes)
    if isinstance(exc, apsw.IOError):
        return DatabaseIOError(
            f"the operating system reported an I/O error on {where} while {doing} ({detail}). "
            "A write that raised this may still be on disk ('maybe committed'): close this "
            "Saver, check the disk, reopen and re-read before retrying.", path=path, **codes)
    if isinstance(exc, PermissionError):
        return ReadOnlyDatabaseError(
            f"{where} cannot be written while {doing} ({detail}); {_READONLY_HINT}.", path=path)
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return _cannot_open(path, doing, detail, {})
    if isinstance(exc, apsw.Error):
        return SaverError(f"SQLite failed on {where} while {doing} ({detail}).",
                          path=path, **codes)
    if isinstance(exc, OSError):
        return DatabaseIOError(f"the operating system failed on {where} while {doing} "
                               f"({detail}).", path=path)
    return SaverError(f"unexpected error on {where} while {doing} ({detail}).", path=path)


def check_command(path: str | None) -> str:
    """The validator's command line for ``path``, for messages that advise running it."""
    return f"python -m sqlitesaver check {shlex.quote(path) if path else 'PATH'}"


def restore_advice(path: str | None) -> str:
    """What to do about a damaged database, naming the commands that do it (see README,
    "Command line")."""
    quoted = shlex.quote(path) if path else "PATH"
    return (f"restore from a backup ('python -m sqlitesaver restore BACKUP {quoted} --force'; "
            f"'python -m sqlitesaver backup {quoted} BACKUP' makes one), or copy what is intact "
            f"into a new database with 'python -m sqlitesaver salvage {quoted} NEW'")


def describe(exc: BaseException) -> str:
    """``Type: message``, naming SQLite's extended result code when APSW gives no message."""
    text = str(exc)
    code = getattr(exc, "extendedresult", None)
    if code is not None:
        name = apsw.mapping_extended_result_codes.get(code) or \
            apsw.mapping_result_codes.get(code, str(code))
        text = f"{text} ({name})" if text else str(name)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _cannot_open(path: str | None, doing: str, detail: str, codes: dict) -> SaverError:
    """Explain why a path cannot be opened, naming the part of it that is wrong."""
    if path:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            return CannotOpenError(
                f"cannot open {path!r}: the directory {directory!r} does not exist "
                "(sqlitesaver does not create directories; create it first).",
                path=path, **codes)
        if os.path.isdir(path):
            return CannotOpenError(f"cannot open {path!r}: it is a directory, not a file.",
                                   path=path, **codes)
        if not os.access(directory, os.W_OK | os.X_OK):
            return ReadOnlyDatabaseError(
                f"cannot open {path!r} while {doing}: its directory {directory!r} is not "
                f"writable; {_READONLY_HINT}.", path=path, **codes)
    return CannotOpenError(f"cannot open {path!r} while {doing} ({detail}).",
                           path=path, **codes)
