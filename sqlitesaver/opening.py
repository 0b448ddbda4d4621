"""Opening a database file and the startup recovery, in the order the guarantees need.

1. Refuse, without writing a byte, a file that is empty, not SQLite, another application's
   database, or written by a newer schema. The first 100 bytes are read through SQLite's own VFS:
   closing a plain ``open()`` of the file would cancel the POSIX locks that other connections in
   this process hold on it (sqlite.org/howtocorrupt.html, section 2.2: "POSIX advisory locks
   canceled by a separate thread doing close()").
2. Integrity check (``quick`` by default), and the schema compared with the one this version
   creates for the file's ``user_version`` (:func:`sqlitesaver.schema.schema_differences`),
   still before anything is written.
3. ``PRAGMA wal_checkpoint(TRUNCATE)``, reading its busy column.
4. Create or migrate the schema, one transaction per migration.

A new database is built complete under a temporary name in the same directory, synced, and
linked into place, so a crash during creation leaves either no database or a whole one, never an
empty or half-initialised file at ``path``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shlex
import time
import urllib.parse

import apsw

from . import contention, files, paths, pragmas, schema
from .errors import (BusyTimeoutError, CannotOpenError, CorruptDatabaseError,
                     InvalidArgumentError, MigrationError, NotASaverDatabaseError,
                     ReadOnlyDatabaseError, SaverError, SchemaMismatchError, SchemaVersionError,
                     check_command, restore_advice, translate)
from .pragmas import Profile
from .records import RecoveryReport

__all__ = ["INTEGRITY_MODES", "open_writer", "open_readonly", "open_reader", "read_header",
           "truncate_wal"]

INTEGRITY_MODES = ("quick", "full", "off")

_MAGIC = b"SQLite format 3\x00"
_NEW_MARK = ".sqlitesaver-new-"
#: The longest temporary name _create uses: the mark, a 12-digit tag, a pid of up to 7 digits
#: (Linux's largest pid_max is 4194304) and 8 random hex digits.
_TEMP_NAME_BYTES = len(_NEW_MARK) + 12 + 1 + 7 + 1 + 8
#: Seconds the recovery checkpoint waits for other processes' readers and writer: start-up must
#: not stall behind another process's long read; a blocked checkpoint is reported in
#: RecoveryReport.checkpoint_busy instead (nothing depends on it completing).
CHECKPOINT_WAIT = 0.2


def open_writer(path: str, profile: Profile, integrity_check: str
                ) -> tuple[apsw.Connection, RecoveryReport]:
    """Run the startup recovery on ``path`` and return the Saver's write connection.

    Raises a :class:`SaverError` subclass, having written nothing, for a file that is not ours
    or is damaged.
    """
    started = time.perf_counter()
    stale = _remove_stale_new_files(path)
    created = _inspect_header(path) is None and _create(path, profile)
    _check_access(path)
    wal_found = os.path.lexists(path + "-wal")
    try:
        conn = _connect(path, profile, set_wal=False)
    except apsw.Error as exc:
        raise translate(exc, path, "opening the database") from exc
    try:
        # One deadline for the whole recovery: a lock another process holds at any of its
        # steps is waited for (contention.retry), and the steps are safe to run again.
        version, (busy, log, done), applied = contention.retry(
            contention.waiter_of(conn), lambda: _recover(conn, path, profile, integrity_check),
            path=path, doing="opening the database (startup recovery)",
            timeout=profile.busy_timeout)
    except BaseException as exc:
        if wal_found:
            # Leave a WAL we found as we found it: closing the last connection would
            # checkpoint it into the very file we are refusing (too new, or damaged).
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        conn.close()
        # UnicodeDecodeError: a damaged text SQLite returned (the schema, or a check's report)
        if isinstance(exc, (apsw.Error, OSError, UnicodeDecodeError)):
            raise translate(exc, path, "opening the database") from exc
        raise
    report = RecoveryReport(
        path=path, created=created, integrity_check=integrity_check, wal_frames=log,
        wal_frames_checkpointed=done, checkpoint_busy=busy, schema_version_found=version,
        schema_version=schema.latest_version(), migrations_applied=applied,
        stale_files_removed=stale, seconds=time.perf_counter() - started)
    return conn, report


def _recover(conn: apsw.Connection, path: str, profile: Profile, integrity_check: str
             ) -> tuple[int, tuple[bool, int, int], tuple[int, ...]]:
    """Steps 1 (again, through SQL) to 4 on the write connection: (schema version found,
    checkpoint result, migrations applied). SQLITE_BUSY / SQLITE_LOCKED propagate untouched
    for the caller's retry, as do other APSW errors (the caller translates them)."""
    version = _recheck_identity(conn, path)
    if integrity_check != "off":
        _integrity(conn, path, full=integrity_check == "full")
    _check_schema(conn, path)
    pragmas.journal_mode_wal(conn, path)
    # After an integrity check, the first wal_checkpoint following a switch from a
    # rollback journal to WAL fails with SQLITE_LOCKED (SQLite 3.54; found by the torture
    # harness). One read on the new WAL first avoids it; it is free when already in WAL.
    _user_version(conn)
    checkpoint = _checkpoint(conn, path, profile)
    try:
        applied = schema.migrate(conn)
    except contention.RETRYABLE:
        raise
    except apsw.Error as exc:
        if isinstance(exc, (apsw.FullError, apsw.ReadOnlyError, apsw.IOError,
                            apsw.CorruptError)):
            raise translate(exc, path, "migrating the schema") from exc
        raise MigrationError(
            f"{path!r}: a schema migration failed ({type(exc).__name__}: {exc}); it was "
            f"rolled back and the database is unchanged at schema version "
            f"{_user_version(conn)}. Please report this as a sqlitesaver bug.",
            path=path) from exc
    except RuntimeError as exc:
        raise MigrationError(f"{path!r}: {exc}", path=path) from exc
    return version, checkpoint, applied


def open_readonly(path: str, profile: Profile, integrity_check: str
                  ) -> tuple[apsw.Connection, RecoveryReport]:
    """Open ``path`` for ``Saver(readonly=True)``: identify it and run the integrity check,
    writing nothing (no checkpoint, no migration, no file created or removed but the
    ``-shm`` that SQLite may need to read a WAL database).

    Raises :class:`SchemaVersionError` for an older schema, which only a writable open migrates.
    """
    started = time.perf_counter()
    if not os.path.lexists(path):
        raise CannotOpenError(
            f"{path!r} does not exist; a read-only Saver never creates a database. Check the "
            "path, or open it once without readonly=True to create it.", path=path)
    _inspect_header(path)
    try:
        conn = _connect_readonly(path, profile)
    except apsw.Error as exc:
        raise translate(exc, path, "opening the database read-only") from exc
    try:
        version = _recheck_identity(conn, path)
        if version < schema.latest_version():
            raise SchemaVersionError(
                f"{path!r} has schema version {version}; this sqlitesaver reads version "
                f"{schema.latest_version()} and a read-only Saver cannot migrate it. Open it "
                "once without readonly=True (which migrates it), then read it. Nothing was "
                "written.", path=path)
        if integrity_check != "off":
            _integrity(conn, path, full=integrity_check == "full")
        _check_schema(conn, path)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, (apsw.Error, OSError, UnicodeDecodeError)):
            raise translate(exc, path, "opening the database read-only") from exc
        raise
    report = RecoveryReport(
        path=path, created=False, integrity_check=integrity_check, wal_frames=0,
        wal_frames_checkpointed=0, checkpoint_busy=False, schema_version_found=version,
        schema_version=version, migrations_applied=(), stale_files_removed=(),
        seconds=time.perf_counter() - started)
    return conn, report


def open_reader(path: str, profile: Profile) -> apsw.Connection:
    """A connection for reads only (``query_only``), with the same profile as the writer.

    Raises ``apsw.Error`` untranslated: the Saver translates it, and shuts itself down after
    an I/O error, as for any other statement."""
    if profile.readonly:
        return _connect_readonly(path, profile)
    conn = _connect(path, profile, set_wal=True)
    try:
        conn.execute("PRAGMA query_only=ON")
    except BaseException:
        conn.close()
        raise
    return conn


# --- step 1: identify the file without writing ---------------------------------------------

def read_header(path: str) -> tuple[int, bytes]:
    """The file's size and its first 100 bytes (fewer if it is shorter), read through SQLite's
    VFS; raises ``apsw.Error`` if it cannot be read."""
    # flags: [in, out]; MAIN_DB so the unix VFS tracks this handle with the others on the same
    # inode and defers the close while another connection holds locks.
    handle = apsw.VFSFile("", path, [apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_READONLY, 0])
    try:
        size = handle.xFileSize()
        return size, handle.xRead(min(size, 100), 0) if size else b""
    finally:
        handle.xClose()


def _inspect_header(path: str) -> int | None:
    """Return the header's schema version, ``None`` if no file exists; raise if not ours."""
    if not os.path.lexists(path):
        return None
    if os.path.isdir(path):
        raise translate(IsADirectoryError(path), path, "opening the database")
    try:
        size, header = read_header(path)
    except apsw.Error as exc:
        raise translate(exc, path, "reading the file header") from exc
    if size == 0:
        # Not deferred to a -wal: SQLite deletes the -wal of an empty database on open.
        raise NotASaverDatabaseError(
            f"{path!r} is an empty file, not a sqlitesaver database. sqlitesaver creates new "
            "databases atomically and never leaves an empty file, so something else made it: "
            "delete it, or pass a path that does not exist yet.", path=path)
    if not header.startswith(_MAGIC):
        wal_version = _identity_through_wal(path)
        if wal_version is not None:
            # A power loss during a checkpoint can garble page 1 in the file while the synced
            # WAL holds the whole page; SQLite reads it from there, and the recovery checkpoint
            # writes it back. Found by the power-loss torture with garbage-filled sectors.
            _check_version(path, wal_version)
            return wal_version
    if header.startswith(_MAGIC) and len(header) < 100:
        raise NotASaverDatabaseError(
            f"{path!r} is a truncated SQLite file ({size} bytes, shorter than the 100-byte "
            "header); refusing to touch it. Restore it from a backup ('python -m sqlitesaver "
            f"restore BACKUP {shlex.quote(path)} --force'), or delete it.",
            path=path)
    if len(header) < 100 or not header.startswith(_MAGIC):
        raise NotASaverDatabaseError(
            f"{path!r} is not an SQLite database (it starts with {header[:16]!r}); "
            "refusing to touch it. Pass the path of a sqlitesaver database, or a path that "
            "does not exist yet to create one.", path=path)
    application_id = int.from_bytes(header[68:72], "big")
    if application_id != schema.APPLICATION_ID:
        raise NotASaverDatabaseError(
            f"{path!r} is an SQLite database of another application (application_id "
            f"0x{application_id:08x}, sqlitesaver's is 0x{schema.APPLICATION_ID:08x}); "
            "refusing to touch it. Use a separate file for sqlitesaver.", path=path)
    version = int.from_bytes(header[60:64], "big")
    _check_version(path, version)
    return version


def _identity_through_wal(path: str) -> int | None:
    """The schema version as SQLite reads it when a non-empty ``-wal`` may hold page 1, or
    ``None`` if there is no such WAL or what SQLite reads there is not a sqlitesaver database.
    Only for a file whose header is not SQLite's: an SQLite header with another application_id
    is another application's database, whose files (its ``-shm`` included) we never touch.

    Writes nothing to the database or its ``-wal``: a read-only connection that never
    checkpoints (SQLite may create or rebuild the ``-shm``, which holds no data).
    """
    try:
        if os.path.getsize(path + "-wal") == 0:
            return None
    except OSError:
        return None
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error:
        return None
    try:
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        if conn.execute("PRAGMA application_id").fetchone()[0] != schema.APPLICATION_ID:
            return None
        return _user_version(conn)
    except apsw.Error:
        return None
    finally:
        conn.close()


def _check_version(path: str, version: int) -> None:
    if version > schema.latest_version():
        raise SchemaVersionError(
            f"{path!r} has schema version {version}, written by a newer sqlitesaver; this "
            f"version reads up to {schema.latest_version()}. Upgrade sqlitesaver to open it. "
            "Nothing was written.", path=path)


def _check_access(path: str) -> None:
    """Name the read-only file or directory before SQLite fails on it in a less clear way."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(path, os.W_OK):
        raise ReadOnlyDatabaseError(
            f"{path!r} is read-only (file permissions); sqlitesaver needs to write it. Make it "
            "writable, or copy it somewhere writable, or pass readonly=True to only read it.",
            path=path)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ReadOnlyDatabaseError(
            f"the directory of {path!r} ({directory!r}) is not writable; WAL mode needs to "
            "create the '-wal' and '-shm' files beside the database. Make the directory "
            "writable, or pass readonly=True to only read the database.", path=path)


def _connect(path: str, profile: Profile, *, set_wal: bool) -> apsw.Connection:
    # No SQLITE_OPEN_CREATE: a missing file here means it vanished, and creating an empty one
    # in its place would hide that.
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        pragmas.apply(conn, profile, path, set_wal=set_wal)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_readonly(path: str, profile: Profile) -> apsw.Connection:
    """A ``SQLITE_OPEN_READONLY``, ``query_only`` connection that never checkpoints.

    SQLite reads a WAL database only with its ``-shm`` beside it, creating it if the directory
    allows (sqlite.org/wal.html#readonly). In a directory we cannot write, with no ``-wal`` or
    ``-shm`` there (a database closed cleanly; nobody writes it, or a ``-wal`` would exist), the
    file is opened ``immutable``: read as it is, without locks. A writer that starts later is
    not seen, which is why that case is documented as for archives and read-only mounts.
    """
    directory = os.path.dirname(os.path.abspath(path))
    immutable = (not os.access(directory, os.W_OK | os.X_OK)
                 and not os.path.lexists(path + "-wal") and not os.path.lexists(path + "-shm"))
    if immutable:
        name = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?immutable=1"
        conn = apsw.Connection(name, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    else:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        pragmas.apply(conn, profile, path, set_wal=False)
        conn.execute("PRAGMA query_only=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _user_version(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _recheck_identity(conn: apsw.Connection, path: str) -> int:
    """Re-read the identity through SQL: the WAL may hold a newer page 1 than the file."""
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if application_id != schema.APPLICATION_ID:
        raise NotASaverDatabaseError(
            f"{path!r} is not a sqlitesaver database (application_id 0x{application_id:08x})",
            path=path)
    version = _user_version(conn)
    _check_version(path, version)
    return version


# --- step 2: integrity ----------------------------------------------------------------------

def _integrity(conn: apsw.Connection, path: str, *, full: bool) -> None:
    pragma = "integrity_check" if full else "quick_check"
    try:
        problems = [row[0] for row in conn.execute(f"PRAGMA {pragma}")]
    except (apsw.CorruptError, apsw.NotADBError) as exc:  # damage too deep to list
        problems = [f"{type(exc).__name__}: {exc}"]
    if problems != ["ok"]:
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CorruptDatabaseError(
            f"{path!r} failed PRAGMA {pragma}: {shown}{more}. Nothing was written; "
            f"{restore_advice(path)}. '{check_command(path)}' lists all it finds, payload "
            "checksums included, without writing to the file.",
            path=path)


def _check_schema(conn: apsw.Connection, path: str) -> None:
    """Refuse a schema changed behind sqlitesaver's back: every table, column, index, trigger
    and view must be the ones the migrations create for the file's ``user_version``. Reads
    ``sqlite_schema`` and a few PRAGMAs (well under a millisecond); ``user_version`` and the
    schema are read in one read transaction, so a migration another process commits meanwhile
    is seen whole or not at all."""
    conn.execute("BEGIN")
    try:
        version = _user_version(conn)
        found = schema.describe_schema(conn)
    except BaseException:
        try:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
        except apsw.Error:
            pass  # the error that brought us here is the one to report
        raise
    conn.execute("ROLLBACK")  # a read: nothing to keep
    problems = schema.schema_differences(schema.expected_schema(version), found)
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise SchemaMismatchError(
            f"{path!r} does not have the schema sqlitesaver creates for its schema version "
            f"{version}: {shown}{more}. It was changed outside sqlitesaver, which refuses to use "
            "it: nothing was written. Undo the change (sqlitesaver/schema.py holds the schema) "
            f"or {restore_advice(path)}; '{check_command(path)}' lists every difference.",
            path=path)


# --- step 3: checkpoint ---------------------------------------------------------------------

def _checkpoint(conn: apsw.Connection, path: str, profile: Profile) -> tuple[bool, int, int]:
    """Copy the WAL into the database and truncate it; return (busy, frames, copied).

    TRUNCATE reports (0, 0, 0) once it has reset the WAL, so a PASSIVE pass (which never waits)
    counts the frames first; the TRUNCATE that follows has little left to copy.
    """
    _, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    busy = truncate_wal(conn, path, min(CHECKPOINT_WAIT, profile.busy_timeout))
    return busy, log, done


def truncate_wal(conn: apsw.Connection, path: str, wait: float) -> bool:
    """``PRAGMA wal_checkpoint(TRUNCATE)``, waiting at most ``wait`` seconds (with backoff) for
    other connections' writer lock and old readers; True if it could not complete (SQLite's
    busy column). Other errors propagate untranslated."""
    waiter = contention.waiter_of(conn)
    try:
        return bool(contention.retry(
            waiter, lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0],
            path=path, doing="checkpointing the WAL", timeout=wait))
    except BusyTimeoutError:
        return True


# --- creation -------------------------------------------------------------------------------

def _create(path: str, profile: Profile) -> bool:
    """Build a complete database beside ``path`` and link it into place.

    Returns False when another process created ``path`` first (its database is then used).
    """
    for suffix in ("-wal", "-journal"):
        # SQLite would replay an orphaned journal into the new file: it belongs to a database
        # that was deleted or moved (sqlite.org/howtocorrupt.html, "deleting a hot journal").
        if os.path.lexists(path + suffix):
            raise CannotOpenError(
                f"cannot create {path!r}: {path + suffix!r} exists without its database. It "
                "belongs to a database that was deleted or moved and may hold its last "
                "transactions; SQLite would replay it into a new file. Put the database back "
                "beside it, or move the journal away if that data is not wanted.", path=path)
    directory = os.path.dirname(os.path.abspath(path))
    room = paths.sqlite_max_path() - len(os.fsencode(os.path.realpath(directory))) - 1
    if room < _TEMP_NAME_BYTES:
        raise InvalidArgumentError(
            f"cannot create {path!r}: a new database is built under a temporary name of up to "
            f"{_TEMP_NAME_BYTES} bytes in the same directory, and with that name the path "
            f"would pass the {paths.sqlite_max_path()} bytes SQLite opens (the directory's "
            "path, symbolic links resolved, leaves room for "
            f"{max(room, 0)}). Use a directory with a shorter path.", path=path)
    # Not named after the database: a name of up to NAME_MAX - 4 bytes must be creatable.
    temp = os.path.join(directory, f"{_new_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        conn = apsw.Connection(temp, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
        try:
            conn.execute(f"PRAGMA synchronous={profile.synchronous}")
            schema.migrate(conn)
            pragmas.journal_mode_wal(conn, path)
        finally:
            conn.close()  # last connection: SQLite checkpoints and removes temp-wal
        files.fsync_path(temp)
        try:
            os.link(temp, path)
            created = True
        except FileExistsError:
            created = False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                raise
            # No hard links on this filesystem: rename, which is atomic but could replace a
            # database that appeared since the check, so check once more right before.
            created = not os.path.lexists(path)
            if created:
                os.rename(temp, path)
        files.fsync_path(directory)
    except SaverError:
        raise
    except (apsw.Error, OSError) as exc:
        raise translate(exc, path, "creating the database") from exc
    finally:
        _remove_family(temp)
    return created


def _remove_family(base: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(base + suffix)
        except FileNotFoundError:
            pass


def _new_prefix(path: str) -> str:
    """How the temporary files that create ``path`` begin: ``.sqlitesaver-new-``, a tag of
    the database's name (so that stale ones are recognised per database), then the pid."""
    tag = hashlib.sha256(os.fsencode(os.path.basename(path))).hexdigest()[:12]
    return f"{_NEW_MARK}{tag}-"


def _remove_stale_new_files(path: str) -> tuple[str, ...]:
    """Remove temporaries left by a creation of ``path`` that was killed (its process is
    gone), named as now or as earlier versions named them (``.<name>.sqlitesaver-new-<pid>-``,
    which did not fit beside a long name)."""
    directory = os.path.dirname(os.path.abspath(path))
    prefixes = (_new_prefix(path), f".{os.path.basename(path)}{_NEW_MARK}")
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return ()  # reported precisely by the steps that follow
    for name in names:
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is None or name.endswith(("-wal", "-shm", "-journal")):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        full = os.path.join(directory, name)
        try:
            _remove_family(full)
        except OSError:
            continue
        removed.append(full)
    return tuple(removed)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
