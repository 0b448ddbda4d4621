"""``python -m sqlitesaver vacuum PATH``: give the free pages of a database back to the
filesystem.

Deleting checkpoints (``prune``, ``delete_thread``, ``delete_matching``) frees their pages inside
the file, where new writes reuse them, but the file never shrinks: pruning 49,950 of 50,000
checkpoints left 56,865 of 56,930 pages free in issue #19. ``VACUUM`` rebuilds the database
into as few pages as it needs (sqlite.org/lang_vacuum.html).

Decision: **refuse while the database is in use**, rather than vacuum beside live connections or
``VACUUM INTO`` a copy and swap it in. In WAL mode a plain ``VACUUM`` would be safe for SQLite
next to other connections, but it is one write transaction as long as the rebuild: every writer
of the database waits for it (a Saver's ``BusyTimeoutError`` after 30 s), and the file only
shrinks once no reader holds an old snapshot. A swap would need the same exclusivity to be
safe (another process's ``-wal`` must never end up beside the new file; see
:mod:`sqlitesaver.files`). So it takes SQLite's exclusive lock without waiting
(:func:`sqlitesaver.files.exclusive`; any other connection, idle or not, makes that fail at once
with :class:`~sqlitesaver.errors.BusyTimeoutError` and nothing changes) and keeps it to the end:
nobody can open the database meanwhile.

Then, on that one connection: ``synchronous=FULL``; ``VACUUM`` (one transaction: a crash leaves
the old database or the new one, never a mix); ``PRAGMA wal_checkpoint(TRUNCATE)``, which copies
the rebuilt pages into the file, truncates it and empties the ``-wal``; close (which removes
the ``-wal``). Finally the file is validated like ``python -m sqlitesaver check``, after the
lock is released; like any reader, the check may leave an empty ``-wal`` and a ``-shm`` (no
data), which are not removed: another process may have opened the database by then. It needs
free disk space of up to twice the database's used size while it runs (SQLite's temporary
copy, and the ``-wal``). Rows and their
checksums are copied as they are: checkpoint ids, order and the high-water marks do not change.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import apsw

from . import check, files, log, schema
from .errors import (CannotOpenError, NotASaverDatabaseError, SchemaVersionError, describe,
                     translate)
from .opening import read_header

__all__ = ["VacuumReport", "vacuum"]


@dataclass(frozen=True)
class VacuumReport:
    """Sizes before and after (the database file plus its ``-wal``), and the validation."""

    path: str
    bytes_before: int
    bytes_after: int
    pages_before: int
    free_pages_before: int
    pages_after: int
    seconds: float
    check: check.Report

    def as_dict(self) -> dict:
        return {"path": self.path, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "pages_before": self.pages_before,
                "free_pages_before": self.free_pages_before, "pages_after": self.pages_after,
                "seconds": round(self.seconds, 3), "check": self.check.result}


def vacuum(path: str | os.PathLike[str]) -> VacuumReport:
    """Rebuild the database at ``path`` without its free pages; see the module docstring.

    Raises :class:`~sqlitesaver.errors.BusyTimeoutError` if another connection has it open
    (nothing changed), :class:`~sqlitesaver.errors.NotASaverDatabaseError` /
    :class:`~sqlitesaver.errors.SchemaVersionError` for a file that is not one this version
    manages, and :class:`~sqlitesaver.errors.CorruptDatabaseError` if SQLite finds damage.
    """
    full = os.path.abspath(os.fspath(path))
    started = time.perf_counter()
    _identify(full)
    before = sum(files.family_bytes(full))
    doing = "vacuuming the database"
    with files.exclusive(full, doing, checkpoint_on_close=True) as conn:
        assert conn is not None
        try:
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if application_id != schema.APPLICATION_ID:
                raise NotASaverDatabaseError(f"{full!r} is not a sqlitesaver database "
                                             f"(application_id 0x{application_id:08x}); "
                                             "refusing to touch it", path=full)
            if version > schema.latest_version():
                raise SchemaVersionError(f"{full!r} has schema version {version}, written by a "
                                         "newer sqlitesaver; upgrade sqlitesaver to vacuum it",
                                         path=full)
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("VACUUM")
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:  # we hold the exclusive lock: nobody else can be in the way
                raise apsw.BusyError("the checkpoint after VACUUM could not complete")
            pages_after = conn.execute("PRAGMA page_count").fetchone()[0]
        except apsw.Error as exc:
            raise translate(exc, full, doing) from exc
    report = check.check_database(full)
    after = sum(files.family_bytes(full))
    seconds = time.perf_counter() - started
    log.logger.info("%s: vacuumed from %d to %d bytes (%d of %d pages were free) in %.2f s",
                    full, before, after, free, pages, seconds)
    return VacuumReport(full, before, after, pages, free, pages_after, seconds, report)


def _identify(path: str) -> None:
    """Refuse, before opening it for writing, a path that is not a sqlitesaver database."""
    if not os.path.lexists(path):
        raise CannotOpenError(f"{path!r} does not exist; nothing to vacuum", path=path)
    if not os.path.isfile(path):
        raise CannotOpenError(f"{path!r} is not a regular file", path=path)
    try:
        size, header = read_header(path)
    except apsw.Error as exc:
        raise translate(exc, path, f"reading the file header ({describe(exc)})") from exc
    if size == 0 or not header.startswith(b"SQLite format 3\x00"):
        raise NotASaverDatabaseError(f"{path!r} is not an SQLite database, so not a "
                                     "sqlitesaver database; refusing to touch it", path=path)
    application_id = int.from_bytes(header[68:72], "big")
    if application_id != schema.APPLICATION_ID:
        raise NotASaverDatabaseError(f"{path!r} is an SQLite database of another application "
                                     f"(application_id 0x{application_id:08x}); refusing to "
                                     "touch it", path=path)
