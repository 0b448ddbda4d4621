"""Online backup and offline restore of a sqlitesaver database.

``python -m sqlitesaver backup SRC DST`` / :meth:`Saver.backup` / :func:`backup`, and
``python -m sqlitesaver restore BACKUP DST`` / :func:`restore`.

**Backup** copies a consistent snapshot while writers keep writing, with SQLite's backup API
(sqlite.org/backup.html), never by copying files: the ``-wal`` is part of the database.

* The source is read through one read connection of a Saver (the caller's, or a
  ``Saver(SRC, readonly=True)``: nothing is written to the source, no migration, no checkpoint)
  inside **one read transaction**, and the pages are copied :data:`STEP_PAGES` at a time. A
  backup that steps outside a read transaction restarts from the first page whenever another
  connection commits, so under a steady writer it may never finish; within one read transaction
  it copies the snapshot taken at its start and ignores later commits. Measured by
  ``bench/backup_under_writer.py`` (a writer process doing continuous puts, a 9.5 MB database,
  100 pages per step, on the 2-core shared machine): without a transaction, 46,987 steps and
  8.27 s (it restarted hundreds of times); in one read transaction, 120 steps, 0.13 s;
  ``step(-1)`` (every page in one step, one snapshot too), 0.11 s; ``VACUUM INTO``, 0.16 s and
  not fsynced by SQLite. Stepping in pages inside the transaction keeps the consistency of
  ``step(-1)`` and lets other threads of the process run between steps. In WAL mode the read transaction never
  blocks writers; it only keeps checkpoints from going past its snapshot until it ends, so the
  ``-wal`` may grow for the length of the backup.
* The copy is written under a temporary name in DST's directory (see :mod:`sqlitesaver.files`),
  set to WAL mode like every sqlitesaver database (its application id and schema version come
  with page 1), closed (which folds its ``-wal`` into it), fsynced, and validated with
  :func:`sqlitesaver.check.check_database` (integrity_check, checksums of every payload,
  invariants). Only a copy that passes is linked to DST, and the directory is fsynced. A copy
  that fails means the source is damaged: nothing is left at DST, and the error says to run
  ``check`` and ``salvage`` on the source.
* DST must not exist (nor a ``DST-wal`` / ``DST-journal``): a backup never overwrites anything.
  Rotate names (``agent-2026-01-31.db``) or remove the old backup yourself.
* Inside a ``with saver.transaction():`` block the backup is refused: it would copy committed
  data only, which the caller inside a transaction would not expect, and a connection cannot
  be the source of a backup while it writes.

**Restore** puts a backup in place of a database that is not in use:

1. The backup is opened read-only and copied (same API) to a temporary file beside DST, which
   must pass the validator before anything at DST is touched.
2. If DST (or a ``DST-wal`` / ``DST-journal`` without it) exists, ``force=True`` (``--force``)
   is required, and DST must not be in use: its exclusive lock is taken without waiting (any
   other connection, idle or not, makes that fail: see :mod:`sqlitesaver.files`), so a live
   database is never replaced. Under that lock the old database is **moved aside, not deleted**,
   with its ``-wal`` and ``-journal``, to ``DST.replaced-<UTC time>`` (so no ``-wal`` of the old
   database is ever left beside the new file, where SQLite would replay it), and its ``-shm``
   removed.
3. The copy is linked to DST and the directory fsynced. The result is a database that opens
   like any other (``Saver(DST)``); what the old one held is in the moved-aside file.

Not for the PostgreSQL engine: a PostgreSQL database is backed up with ``pg_dump`` /
``pg_basebackup`` (or the engine's own export, once it exists); these functions are SQLite's.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import apsw

from . import check, files, log
from .errors import (CorruptDatabaseError, DatabaseFileError, InvalidArgumentError,
                     NotASaverDatabaseError, SaverError, check_command, translate)

if TYPE_CHECKING:
    from .saver import Saver
    from .sqlite.saver import SqliteFileSaver

__all__ = ["STEP_PAGES", "BackupReport", "RestoreReport", "backup", "restore"]

#: Pages copied per step of the backup API, inside the backup's one read transaction.
STEP_PAGES = 1024


@dataclass(frozen=True)
class BackupReport:
    """What :func:`backup` wrote: the copy at ``path``, its size, and its validation."""

    source: str
    path: str
    bytes: int
    pages: int
    seconds: float
    check: check.Report

    def as_dict(self) -> dict:
        return {"source": self.source, "path": self.path, "bytes": self.bytes,
                "pages": self.pages, "seconds": round(self.seconds, 3),
                "check": self.check.result}


@dataclass(frozen=True)
class RestoreReport:
    """What :func:`restore` did: ``path`` now holds the backup; ``replaced`` is where the old
    database (with its ``-wal``) was moved, or None if there was none."""

    backup: str
    path: str
    replaced: str | None
    bytes: int
    seconds: float
    check: check.Report

    def as_dict(self) -> dict:
        return {"backup": self.backup, "path": self.path, "replaced": self.replaced,
                "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "check": self.check.result}


def backup(source: "str | os.PathLike[str] | Saver", destination: str | os.PathLike[str]
           ) -> BackupReport:
    """Copy the database ``source`` (a path, or an open :class:`~sqlitesaver.Saver`) to the new
    file ``destination``; see the module docstring. A path is opened with
    ``Saver(source, readonly=True)``: nothing is written to it."""
    from .saver import Saver
    if isinstance(source, Saver):
        return source.backup(destination)
    with Saver(source, readonly=True, integrity_check="off") as saver:
        return saver.backup(destination)


def backup_saver(saver: "SqliteFileSaver", destination: str | os.PathLike[str]) -> BackupReport:
    """The body of :meth:`SqliteFileSaver.backup` (which refuses to run inside a transaction)."""
    from .sqlite.reads import _Read
    started = time.perf_counter()
    dst = files.check_new_destination(destination, "the backup")
    temp = files.temp_beside(dst)
    try:
        with _Read(saver, "backing up the database", snapshot=False) as read:
            pages = _copy(read.conn, temp, dst, saver.path)
        report = _validated(temp, dst, f"the backup of {saver.path!r}", saver.path)
        size = os.path.getsize(temp)
        try:
            files.link_into_place(temp, dst)
        except OSError as exc:
            raise translate(exc, dst, "putting the backup in place") from exc
    finally:
        files.remove_family(temp)
    seconds = time.perf_counter() - started
    log.logger.info("%s: backed up to %s (%d bytes, %d pages, %.2f s)", saver.path, dst, size,
                    pages, seconds)
    return BackupReport(saver.path, dst, size, pages, seconds, report)


def restore(backup_path: str | os.PathLike[str], destination: str | os.PathLike[str], *,
            force: bool = False) -> RestoreReport:
    """Put the backup ``backup_path`` at ``destination``; see the module docstring.

    Raises :class:`~sqlitesaver.errors.CorruptDatabaseError` if the backup fails validation,
    :class:`~sqlitesaver.errors.InvalidArgumentError` if ``destination`` exists and ``force`` is
    false, :class:`~sqlitesaver.errors.BusyTimeoutError` if it is in use; in each case nothing at
    ``destination`` changed.
    """
    from .saver import Saver
    from .sqlite.saver import _LIVE
    started = time.perf_counter()
    source = os.path.abspath(os.fspath(backup_path))
    dst = os.path.abspath(os.fspath(destination))
    if type(force) is not bool:
        raise InvalidArgumentError(f"force must be True or False, not {force!r}")
    if source == dst:
        raise InvalidArgumentError(f"cannot restore {source!r} onto itself", path=dst)
    directory = os.path.dirname(dst)
    if not os.path.isdir(directory):
        raise translate(FileNotFoundError(dst), dst, "restoring a backup")
    existing = [dst + s for s in ("", "-wal", "-journal") if os.path.lexists(dst + s)]
    if existing and not force:
        raise InvalidArgumentError(
            f"{existing[0]!r} exists; restore replaces a database only when asked to "
            "(force=True, or --force on the command line), and then moves the old one aside "
            "(with its -wal) instead of deleting it. Nothing was changed.", path=dst)
    for other in list(_LIVE):
        if not other._closed and other.path == dst:
            raise files._in_use(dst, "restoring a backup over it")
    temp = files.temp_beside(dst)
    try:
        with Saver(source, readonly=True, integrity_check="off") as saver:
            from .sqlite.reads import _Read
            with _Read(saver, "reading the backup", snapshot=False) as read:
                _copy(read.conn, temp, dst, source)
        report = _validated(temp, dst, f"the backup {source!r}", source)
        size = os.path.getsize(temp)
        try:
            if os.path.lexists(dst):
                with files.exclusive(dst, "restoring a backup over it", allow_unreadable=True):
                    replaced = files.move_aside(dst)
                    files.link_into_place(temp, dst)
            else:
                replaced = files.move_aside(dst)  # a -wal or -journal without its database
                files.link_into_place(temp, dst)
        except OSError as exc:
            raise translate(exc, dst, "putting the backup in place") from exc
    finally:
        files.remove_family(temp)
    seconds = time.perf_counter() - started
    log.logger.info("%s: restored from %s (%d bytes, %.2f s)%s", dst, source, size, seconds,
                    f"; the old database was moved to {replaced}" if replaced else "")
    return RestoreReport(source, dst, replaced, size, seconds, report)


def _copy(src: apsw.Connection, temp: str, dst: str, source: str) -> int:
    """Copy the database of ``src`` (a read connection of ``source``) into the new file
    ``temp``, as one snapshot, and make it a standalone WAL database; return the pages copied.

    Errors of the source's own statements propagate as APSW errors, for the caller's ``_Read``
    to translate (an I/O error there shuts the Saver down, as after any read). A failed backup
    step is translated here: damage can only be the source's (the copy is a new file), and
    anything else (a full disk, an I/O error) is reported against the copy, without shutting
    down the Saver, whose own next statement will tell if its disk failed."""
    try:
        dest = apsw.Connection(temp, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    except apsw.Error as exc:
        raise translate(exc, dst, "creating the copy") from exc
    done = False
    try:
        src.execute("BEGIN")
        try:
            # The first read fixes the snapshot every step copies from.
            src.execute("SELECT count(*) FROM sqlite_schema").fetchall()
            try:
                with dest.backup("main", src, "main") as job:
                    while not job.step(STEP_PAGES):
                        pass
                    pages = job.page_count
            except (apsw.CorruptError, apsw.NotADBError) as exc:
                raise translate(exc, source, f"reading it to back it up to {dst!r}") from exc
            except apsw.Error as exc:
                raise translate(exc, dst, f"copying {source!r} into it") from exc
        finally:
            if not src.get_autocommit():
                src.execute("COMMIT")
        try:
            mode = str(dest.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        except apsw.Error as exc:
            raise translate(exc, dst, "setting the copy's journal mode") from exc
        if mode != "wal":
            raise DatabaseFileError(f"{dst!r}: SQLite refused WAL mode for the copy "
                                    f"(journal_mode is {mode!r}); put it on a local filesystem",
                                    path=dst)
        done = True
    finally:
        try:
            dest.close()  # the last connection: folds the copy's -wal into it and removes it
        except apsw.Error as exc:
            if done:  # else the error already on its way says more
                raise translate(exc, dst, "closing the copy") from exc
    try:
        files.fsync_path(temp)
    except OSError as exc:
        raise translate(exc, dst, "syncing the copy") from exc
    return pages


def _validated(temp: str, dst: str, what: str, source: str) -> check.Report:
    """Run the validator on the finished copy ``temp``; raise unless it is a healthy
    sqlitesaver database. Removes what the read-only check left beside ``temp``."""
    report = check.check_database(temp)
    files.discard_reader_files(temp)
    if report.ok:
        return report
    failed = "; ".join(f"{s.name}: {s.detail}" for s in report.steps
                       if s.status in (check.FAILED, check.UNUSABLE))
    if report.sqlitesaver is False:
        raise NotASaverDatabaseError(f"{what} is not a sqlitesaver database ({failed}); "
                                     f"nothing was written at {dst!r}", path=dst)
    if report.result == "unusable":
        raise SaverError(f"{what} could not be validated ({failed}); nothing was written at "
                         f"{dst!r}", path=dst)
    raise CorruptDatabaseError(
        f"{what} failed validation, so nothing was written at {dst!r}: {failed}. The source is "
        f"damaged: '{check_command(source)}' lists the damage, and 'python -m sqlitesaver "
        f"salvage {shlex.quote(source)} NEW' copies everything intact into a new database.",
        path=dst)
