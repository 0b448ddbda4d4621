"""The exceptions sqlitesaver raises, and the one place where APSW errors become ours.

Every exception is a :class:`SaverError`. They fall into three groups:

* :class:`DatabaseFileError` -- something about the file on disk: not ours, too new, corrupt,
  read-only, full, failing. The message names the file and says what to do.
* :class:`BusyTimeoutError` -- another connection held the lock for longer than the timeout.
* :class:`InterruptedTransitionError` -- an asynchronous exception (one raised into a thread
  with ``PyThreadState_SetAsyncExc``, or a bug) interrupted the group-commit protocol; the
  message says whether the transition may have been committed.
* :class:`UsageError` -- the call itself was wrong (bad argument, unserializable value, a value
  over SQLite's size limit, a closed Saver, a Saver used after ``fork()``). Nothing was written.

APSW exceptions never leave the public API: :func:`translate` maps them here, keeping the
original as ``__cause__`` and its SQLite result codes on ``sqlite_result`` /
``sqlite_extended_result``. So does the ``UnicodeDecodeError`` APSW raises for a stored text
that is not UTF-8 (sqlitesaver writes only UTF-8, so it is damage: ``CorruptDatabaseError``).
"""

from __future__ import annotations

import errno
import os
import shlex
import stat

import apsw

__all__ = [
    "SaverError",
    "DatabaseFileError",
    "NotASaverDatabaseError",
    "SchemaVersionError",
    "MigrationError",
    "CorruptDatabaseError",
    "ChecksumError",
    "SchemaMismatchError",
    "ReadOnlyDatabaseError",
    "DiskFullError",
    "DatabaseIOError",
    "UnsafeServerError",
    "CannotOpenError",
    "TooManyOpenFilesError",
    "BusyTimeoutError",
    "InterruptedTransitionError",
    "UsageError",
    "InvalidArgumentError",
    "SerializationError",
    "ValueTooLargeError",
    "CheckpointNotFoundError",
    "SaverClosedError",
    "ForkedProcessError",
    "ForeignCheckpointError",
    "UnsafePathError",
    "FileNotInCheckpointError",
    "FileChangedError",
    "FileAccessError",
]


class SaverError(Exception):
    """Root of every exception sqlitesaver raises.

    ``path`` is the database file concerned (``None`` when no file is involved).
    ``sqlite_result`` / ``sqlite_extended_result`` carry SQLite's result codes when the error
    came from SQLite, else ``None``; ``sqlstate`` is PostgreSQL's five-character SQLSTATE when
    the error came from a PostgreSQL server, else ``None`` (for a server, ``path`` is the
    server's URL without its password).
    """

    def __init__(self, message: str, *, path: str | None = None,
                 sqlite_result: int | None = None,
                 sqlite_extended_result: int | None = None,
                 sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.sqlite_result = sqlite_result
        self.sqlite_extended_result = sqlite_extended_result
        self.sqlstate = sqlstate


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


class SchemaMismatchError(CorruptDatabaseError):
    """The database's tables, columns, indexes, triggers or views are not the ones sqlitesaver
    created for its schema version: changed behind its back (an extra trigger can delete what
    ``put`` wrote; a missing index lets duplicates in). The message names every difference.
    Raised at open, before a single byte of the file is written."""


class ReadOnlyDatabaseError(DatabaseFileError):
    """The file or its directory cannot be written (WAL mode also needs to create the
    ``-wal`` and ``-shm`` files beside the database)."""


class DiskFullError(DatabaseFileError):
    """The disk or quota is full. The transaction was rolled back; the database is intact and
    writable again once space is freed."""


class DatabaseIOError(DatabaseFileError):
    """The operating system reported an I/O error. A write that raised this may or may not
    have reached the disk ("maybe committed"): re-read after reopening to find out."""


class UnsafeServerError(DatabaseFileError):
    """A PostgreSQL server's settings cannot keep what the requested durability promises
    (``fsync`` or ``full_page_writes`` off), a database whose encoding is not UTF8 (it
    cannot hold every text), or a server older than PostgreSQL 12: refused before a single
    byte is written. The message names the setting or the version."""


class CannotOpenError(DatabaseFileError):
    """The path cannot be opened: a missing directory, something else than a regular file
    there (a directory, a FIFO, a device, a socket), a symbolic link that leads nowhere or into
    a loop, a directory along the path that is a file, permissions."""


class TooManyOpenFilesError(CannotOpenError):
    """The process (``EMFILE``) or the system (``ENFILE``) ran out of file descriptors while
    opening the database or one of its files. Nothing was written; the Saver stays usable.
    ``limit`` is the process's ``RLIMIT_NOFILE`` soft limit, when known."""

    limit: int | None = None


# --- contention -----------------------------------------------------------------------------

class BusyTimeoutError(SaverError):
    """Another connection held the database lock for longer than the busy timeout. Nothing
    of this call was written. ``waited`` is how many seconds the call waited, when known."""

    waited: float | None = None


# --- interruption -----------------------------------------------------------------------------

class InterruptedTransitionError(SaverError):
    """The write protocol that carried this transition was interrupted by an exception that
    is not a database error (an asynchronous exception raised into one of the threads sharing
    the transaction, or a bug), and the transition was not acknowledged. With
    ``maybe_committed`` False it was rolled back: nothing of it was written. With
    ``maybe_committed`` True the interruption came while its COMMIT ran: like
    :class:`DatabaseIOError`, re-read to find out. The Saver stays usable."""

    maybe_committed: bool = False


# --- the call itself --------------------------------------------------------------------------

class UsageError(SaverError):
    """The call was wrong; nothing was written."""


class InvalidArgumentError(UsageError, ValueError):
    """An argument has the wrong type or value (e.g. a non-string thread id)."""


class SerializationError(UsageError, TypeError):
    """A value cannot be stored: the message names the type and where in the value it sits."""


class ValueTooLargeError(UsageError, ValueError):
    """A value, or the row holding it, is larger than SQLite stores: ``SQLITE_LIMIT_LENGTH``,
    1,000,000,000 bytes (the message gives the limit and, when known, the size). A usage error,
    not a SerializationError: the value is of supported types, only too big to be one row.
    Nothing was written."""


class CheckpointNotFoundError(UsageError, LookupError):
    """A checkpoint named by the call (a parent, or the target of writes) does not exist."""


class SaverClosedError(UsageError):
    """The Saver was closed, or shut itself down after an I/O error; open a new one."""


class ForkedProcessError(UsageError):
    """The Saver was opened in another process and inherited through ``fork()``. SQLite
    connections must not cross a fork: open a new Saver in this process."""


class ForeignCheckpointError(UsageError):
    """The LangGraph checkpointer (:mod:`sqlitesaver.langgraph`) met a checkpoint, or a pending
    write, that it did not write: its value is not the ``(type, bytes)`` pair of a LangGraph
    serializer, so the core ``Saver`` API wrote it into the same database. One database is used
    through one API. ``thread_id``, ``namespace`` and ``checkpoint_id`` name the checkpoint;
    nothing was written."""

    thread_id: str | None = None
    namespace: str | None = None
    checkpoint_id: str | None = None


class UnsafePathError(UsageError, ValueError):
    """A file name or a workspace entry that cannot be stored or restored safely: an absolute
    path, a ``..`` or ``.`` component, an empty component, a NUL, a name that is not UTF-8 or
    too long, a name that is both a file and a directory, a symbolic link that leads out of the
    workspace (or to a directory), or something that is not a regular file (a FIFO, a socket, a
    device). ``name`` is the offending name. Nothing was written."""

    name: str | None = None


class FileNotInCheckpointError(UsageError, LookupError):
    """The checkpoint has no file of that name (or it was deleted, with its checkpoint, while
    it was being read)."""


# --- files (sqlitesaver.attachments, sqlitesaver.workspace) -----------------------------------

class FileChangedError(SaverError):
    """A file changed while it was being stored (its bytes, read again inside the transaction,
    no longer have the digest or size read first). The transaction it was part of stored
    nothing of it; store it again once nothing writes to it."""


class FileAccessError(SaverError):
    """The operating system refused a file operation on a file being stored (reading it) or
    restored (writing, renaming or removing in the target directory): permissions, a full disk,
    an I/O error. ``file`` names the file. Storing: nothing was written. Restoring: every file
    in the directory is whole (its old or its new content, never half of one); fix the cause
    and run the restore again, which ends in exactly the checkpoint's files."""

    file: str | None = None


# --- the boundary ---------------------------------------------------------------------------

_READONLY_HINT = ("check the permissions of the file and of its directory (WAL mode creates "
                  "'-wal' and '-shm' files beside the database)")


#: SQLite's default SQLITE_LIMIT_LENGTH (sqlite.org/limits.html): the most bytes in one string,
#: BLOB or row. sqlitesaver never raises it; a connection's own limit may be lower.
SQLITE_MAX_LENGTH = 1_000_000_000


def translate(exc: BaseException, path: str | None, doing: str, *,
              limit: int | None = None) -> SaverError:
    """Map an APSW (or OS) exception raised while ``doing`` something with ``path`` to the
    matching :class:`SaverError`. The caller raises the result ``from exc``. ``limit`` is the
    connection's SQLITE_LIMIT_LENGTH, for the message of a value too big to store."""
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
    if isinstance(exc, apsw.TooBigError):
        limit = SQLITE_MAX_LENGTH if limit is None else limit
        return ValueTooLargeError(
            f"a value or row is larger than SQLite's limit of {limit:,} bytes "
            f"(SQLITE_LIMIT_LENGTH) while {doing} in {where} ({detail}); nothing was written. "
            "Keep large data outside the database (e.g. a file whose name the state holds), "
            "or split it over several values.", path=path, **codes)
    if isinstance(exc, UnicodeDecodeError):
        # APSW decodes every TEXT column it returns; sqlitesaver writes only valid UTF-8.
        return CorruptDatabaseError(
            f"{where} is damaged: a stored text is not valid UTF-8 ({detail}) while {doing}; "
            "its bytes changed on disk after they were written, and nothing of it was "
            f"returned. Stop writing to it and {restore_advice(path)}; '{check_command(path)}'"
            " lists the damage without writing to the file.", path=path)
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
    if isinstance(exc, (apsw.CantOpenError, OSError)):
        no_descriptors = out_of_descriptors(exc)
        if no_descriptors is not None:
            return too_many_open_files(no_descriptors, where, doing, detail, path, codes)
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


def out_of_descriptors(exc: BaseException) -> int | None:
    """``errno.EMFILE`` or ``errno.ENFILE`` if ``exc`` failed for want of a file descriptor,
    else None.

    An ``OSError`` says so itself. SQLite reports it as SQLITE_CANTOPEN, and when it happens
    while opening a connection there is no connection to ask ``system_errno`` of; so, for
    SQLITE_CANTOPEN, this opens ``/dev/null`` once to see whether a descriptor is to be had
    (``/dev/null``: never a database, so closing it drops nobody's POSIX locks). Right after
    the failure that is the same answer, unless another thread freed descriptors meanwhile.
    """
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in (errno.EMFILE, errno.ENFILE) else None
    if not isinstance(exc, apsw.CantOpenError):
        return None
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
    except OSError as probe:
        return probe.errno if probe.errno in (errno.EMFILE, errno.ENFILE) else None
    os.close(fd)
    return None


def descriptor_limit() -> tuple[int, int] | None:
    """This process's ``RLIMIT_NOFILE`` (soft, hard), when the platform has it."""
    try:
        import resource
        return resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not on Linux/macOS
        return None


def too_many_open_files(code: int, where: str, doing: str, detail: str, path: str | None,
                        codes: dict) -> "TooManyOpenFilesError":
    """The error for running out of descriptors (``code``: EMFILE or ENFILE)."""
    limits = descriptor_limit()
    if code == errno.ENFILE:
        what = ("too many open files in the system (ENFILE): the kernel's table of open files "
                "is full")
        todo = "Close files elsewhere, or raise the system's limit (fs.file-max), and retry"
    else:
        shown = (f"its limit of {limits[0]} open file descriptors (RLIMIT_NOFILE soft limit; "
                 f"hard limit {limits[1]})" if limits else "its limit of open file descriptors")
        what = f"too many open files (EMFILE): this process has reached {shown}"
        todo = ("Close Savers and files this process no longer needs, lower max_readers (each "
                "read connection holds two descriptors), or raise the limit (ulimit -n, or "
                "resource.setrlimit(resource.RLIMIT_NOFILE, ...) up to the hard limit), and "
                "retry")
    error = TooManyOpenFilesError(
        f"{what}, so {where} could not be opened while {doing} ({detail}). Nothing was "
        f"written. {todo}.", path=path, **codes)
    error.limit = limits[0] if limits else None
    return error


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
        if os.path.lexists(directory) and not os.path.isdir(directory):
            return CannotOpenError(
                f"cannot open {path!r}: {directory!r} is not a directory, so nothing can be "
                "inside it. Pass a path whose directories are directories.",
                path=path, **codes)
        if not os.path.isdir(directory):
            return CannotOpenError(
                f"cannot open {path!r}: the directory {directory!r} does not exist "
                "(sqlitesaver does not create directories; create it first).",
                path=path, **codes)
        if os.path.isdir(path):
            return CannotOpenError(f"cannot open {path!r}: it is a directory, not a file.",
                                   path=path, **codes)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            from .paths import kind  # paths imports this module
            return CannotOpenError(
                f"cannot open {path!r} while {doing}: it is {kind(mode)}, not a database "
                "file; a sqlitesaver database is a regular file.", path=path, **codes)
        if not os.access(directory, os.W_OK | os.X_OK):
            return ReadOnlyDatabaseError(
                f"cannot open {path!r} while {doing}: its directory {directory!r} is not "
                f"writable; {_READONLY_HINT}.", path=path, **codes)
    return CannotOpenError(f"cannot open {path!r} while {doing} ({detail}).",
                           path=path, **codes)
