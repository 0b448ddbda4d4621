"""Putting whole database files into place, and knowing whether a database is in use.

Shared by backup, restore, vacuum and salvage (:mod:`sqlitesaver.backup`,
:mod:`sqlitesaver.vacuum`, :mod:`sqlitesaver.salvage`). The rules they follow:

* **A new file appears whole or not at all.** It is written under a temporary name in the
  destination's directory, synced, checked, and then linked to its final name (``link`` fails if
  the name exists, so nothing is ever overwritten by accident), and the directory is synced.
  The temporary name carries the same mark as the one :mod:`sqlitesaver.opening` uses when it
  creates a database (``.NAME.sqlitesaver-new-PID-RANDOM``), so if the process is killed
  half-way, the next ``Saver(NAME)`` removes the leftover (its process is gone).
* **A database file never changes its name without its -wal.** SQLite finds the ``-wal`` by
  name; a ``-wal`` left beside a different database file is replayed into it (sqlite.org/
  howtocorrupt.html, section 1.3). So a database is replaced only under an exclusive lock, with
  its ``-wal`` and ``-journal`` moved aside together with it under the same new name.
* **"In use" means another connection has the database open**, found by taking SQLite's
  exclusive lock without waiting: a connection in WAL mode holds a shared lock on the database
  file for as long as it is open, idle or not, so ``PRAGMA locking_mode=EXCLUSIVE`` and
  ``BEGIN EXCLUSIVE`` fail at once with SQLITE_BUSY while any other connection (in this process
  or another) is attached. Not seen: a connection opened ``immutable`` (it takes no locks; only
  a read-only Saver in a read-only directory does that), and a process that has opened the file
  but not yet read it at the moment of the probe.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import apsw

from .errors import BusyTimeoutError, CannotOpenError, InvalidArgumentError, translate

__all__ = ["NEW_MARK", "temp_beside", "check_new_destination", "fsync_path", "link_into_place",
           "remove_family", "discard_reader_files", "family_bytes", "exclusive", "move_aside"]

#: The mark of a file under construction; the same as ``sqlitesaver.opening._NEW_MARK``, whose
#: stale-file cleanup removes what a killed backup, restore or salvage left (tests hold them
#: equal).
NEW_MARK = ".sqlitesaver-new-"

#: SQLite's lock bytes in the unix VFS (sqlite.org/lockingv3.html, os_unix.c): PENDING_BYTE,
#: RESERVED_BYTE, then the 510 bytes of the SHARED range.
_LOCK_START, _LOCK_LENGTH = 0x40000000, 512


def temp_beside(path: str) -> str:
    """A fresh temporary name in ``path``'s directory, marked as a file under construction."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}{NEW_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def check_new_destination(path: str | os.PathLike[str], what: str) -> str:
    """The absolute path of a database to be created at ``path``; raise if it, its ``-wal`` or
    its ``-journal`` exists (a stray journal would be replayed into the new file), or if its
    directory does not exist."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError(f"{what} must be a file path, not {text!r}")
    full = os.path.abspath(text)
    for suffix in ("", "-wal", "-journal"):
        if os.path.lexists(full + suffix):
            extra = "" if not suffix else (
                f" (a {suffix[1:]} without its database: it would be replayed into a new file "
                "of that name)")
            raise InvalidArgumentError(
                f"{what} {full + suffix!r} already exists{extra}; nothing is ever overwritten. "
                "Choose a new path, or move that file away first.", path=full)
    directory = os.path.dirname(full)
    if not os.path.isdir(directory):
        raise CannotOpenError(f"cannot create {full!r}: the directory {directory!r} does not "
                              "exist (create it first)", path=full)
    return full


def fsync_path(path: str) -> None:
    """fsync a file or a directory by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_into_place(temp: str, path: str) -> None:
    """Give the complete, synced file ``temp`` the name ``path``, never replacing a file that
    appeared there meanwhile, and sync the directory. ``temp`` is gone afterwards."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise InvalidArgumentError(f"{path!r} appeared while it was being written; it was left "
                                   "alone and nothing was written there", path=path) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
            raise
        # No hard links on this filesystem: rename is atomic but replaces, so look once more.
        if os.path.lexists(path):
            raise InvalidArgumentError(f"{path!r} appeared while it was being written; it was "
                                       "left alone", path=path) from None
        os.rename(temp, path)
    else:
        os.unlink(temp)
    fsync_path(os.path.dirname(os.path.abspath(path)))


def remove_family(base: str) -> None:
    """Remove a file of ours and the files SQLite keeps beside it, if present."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(base + suffix)
        except FileNotFoundError:
            pass


def discard_reader_files(path: str) -> None:
    """Remove the empty ``-wal`` and the ``-shm`` that a read-only check of our own new file
    (nobody else knows its name) left beside it; a ``-wal`` with data is never removed."""
    try:
        if os.path.getsize(path + "-wal") == 0:
            os.unlink(path + "-wal")
    except FileNotFoundError:
        pass
    try:
        os.unlink(path + "-shm")
    except FileNotFoundError:
        pass


def family_bytes(path: str) -> tuple[int, int]:
    """Sizes of the database file and of its ``-wal`` (0 when absent)."""
    sizes = []
    for name in (path, path + "-wal"):
        try:
            sizes.append(os.stat(name).st_size)
        except FileNotFoundError:
            sizes.append(0)
    return sizes[0], sizes[1]


def _in_use(path: str, doing: str, exc: BaseException | None = None) -> BusyTimeoutError:
    return BusyTimeoutError(
        f"{path!r} is in use: another connection (a Saver, a reader or a check, in this process "
        f"or another) has it open, so {doing} is refused and nothing was changed. Stop every "
        "process using it (close its Savers), then run this again.", path=path,
        sqlite_result=getattr(exc, "result", None),
        sqlite_extended_result=getattr(exc, "extendedresult", None))


@contextmanager
def exclusive(path: str, doing: str, *, checkpoint_on_close: bool = False,
              allow_unreadable: bool = False) -> Iterator[apsw.Connection | None]:
    """Hold SQLite's exclusive lock on the database ``path`` for the block, or raise
    :class:`~sqlitesaver.errors.BusyTimeoutError` at once if any other connection has it open
    (see the module docstring). Yields the connection holding the lock, in exclusive locking
    mode: no other connection can read or write until the block ends.

    ``checkpoint_on_close``: closing the connection checkpoints the WAL into the file and
    removes it (vacuum); without it nothing is written on close (restore, which moves the file
    away). ``allow_unreadable``: a file SQLite cannot read (not a database, damaged page 1) is
    locked at the POSIX level instead, on SQLite's lock bytes, and ``None`` is yielded; that
    probe cannot see connections of this process, and closing its descriptor would drop their
    locks, which is why a readable file is always probed through SQLite.
    """
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE)
    except apsw.Error as exc:
        raise translate(exc, path, doing) from exc
    locked = False
    try:
        if not checkpoint_on_close:
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE").fetchall()
            # No busy handler: a lock held by anyone else is an answer, not a wait. In
            # exclusive locking mode the lock stays held after the transaction ends.
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("ROLLBACK")
            locked = True
        except apsw.BusyError as exc:
            raise _in_use(path, doing, exc) from exc
        except (apsw.NotADBError, apsw.CorruptError) as exc:
            if not allow_unreadable:
                raise translate(exc, path, doing) from exc
    finally:
        if not locked:
            conn.close()
    if locked:
        try:
            yield conn
        finally:
            conn.close()
        return
    with _posix_exclusive(path, doing):
        yield None


@contextmanager
def _posix_exclusive(path: str, doing: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, _LOCK_LENGTH, _LOCK_START)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise _in_use(path, doing) from None
            raise
        yield
    finally:
        os.close(fd)


def move_aside(path: str) -> str | None:
    """Rename the database ``path`` with its ``-wal`` and ``-journal`` to one new name,
    ``PATH.replaced-YYYYmmddTHHMMSSZ`` (the ``-wal`` keeps pairing with its own database), and
    remove its ``-shm`` (an index SQLite rebuilds). The caller holds the exclusive lock (or the
    files have no database to lock). Returns the new name, or None if there was nothing."""
    present = [s for s in ("", "-wal", "-journal") if os.path.lexists(path + s)]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = f"{path}.replaced-{stamp}"
    n = 1
    while any(os.path.lexists(aside + s) for s in ("", "-wal", "-shm", "-journal")):
        n += 1
        aside = f"{path}.replaced-{stamp}-{n}"
    # The database first: from then on nothing opens the old -wal under the old name with the
    # old database, and the lock we hold moves with the file.
    for suffix in present:
        os.rename(path + suffix, aside + suffix)
    try:
        os.unlink(path + "-shm")
    except FileNotFoundError:
        pass
    fsync_path(os.path.dirname(os.path.abspath(path)))
    return aside
