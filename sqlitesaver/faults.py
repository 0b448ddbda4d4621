"""Fault injection below SQLite: simulated power loss and failing I/O, through an APSW VFS.

Why (issue #4): a SIGKILL leaves the OS page cache intact, so every ``synchronous`` setting, even
OFF, survives it (sqlite.org/pragma.html#pragma_synchronous). Power loss and failing disks are what
``synchronous`` is about. Like SQLite's own crash and I/O-error tests (sqlite.org/testing.html),
the two VFS classes here wrap SQLite's ``unix`` VFS:

* :class:`PowerLossVFS` keeps an undo log of every write and truncate that the file's ``xSync``
  has not made durable yet, and at a crash point (the Nth sync, the Nth write, or at random)
  "loses power": each unsynced write is kept, dropped or torn per 512-byte sector, files created
  and never synced may vanish, the ``-shm`` files are deleted, and the process exits at once
  with :data:`CRASH_EXIT_STATUS` (no close, no checkpoint, no ``atexit``).
* :class:`IOFaultVFS` fails the k-th read, write, sync or truncate, once or persistently, with
  EIO (``SQLITE_IOERR_*``) or a full disk (``SQLITE_FULL``), until :meth:`IOFaultVFS.clear`.

Installing one (:func:`install_power_loss`, :func:`install_io_faults`) registers it as the
process's *default* VFS, so every connection a :class:`~sqlitesaver.Saver` opens afterwards
(writer, readers, the header read, the creation of a new file) goes through it with no change to
the library's opening code. ``uninstall()`` unregisters it and makes the previous default the
default again. Install before opening the Saver; connections opened earlier keep their VFS.

What counts as an I/O operation: only operations on the files that hold data -- the main
database, its ``-wal`` and its rollback ``-journal`` (super-journals too). Temporary files
(sorts, temp tables, statement journals) pass straight to ``unix`` and are neither counted,
tracked nor failed. ``-shm`` is not a file SQLite opens through ``xOpen``; ``xShm*`` cannot be
overridden from Python, so it is never counted or failed.

The power-loss model, precisely:

* Write-through: every write reaches the real file at once, so other processes see what the OS
  page cache would show. Before each write the VFS reads and remembers the pre-image of the
  region and the file size; before each truncate, the removed tail. A successful ``xSync`` of a
  file forgets that file's entries (a sync of one file does not make another durable; all
  handles of a name share one log, as ``fsync`` flushes the inode whatever the descriptor).
* At power loss the log is undone newest first, so overlapping writes restore correctly and
  each sector ends holding one of its historical versions. Each write is split at absolute
  512-byte boundaries (:data:`SECTOR_SIZE`); each piece independently is *kept* (new bytes stay),
  *dropped* (pre-image restored) or *torn*, with weights ``keep``/``drop``/``tear``. A torn piece
  is one of (``tear_modes``): ``"new-prefix"`` (new bytes up to a random split, old after it),
  ``"old-prefix"`` (old bytes up to the split, new after it) or ``"garbage"`` (random bytes).
  Only bytes the write covered ever change, which is what the ``unix`` VFS promises SQLite with
  ``SQLITE_IOCAP_POWERSAFE_OVERWRITE``; SQLite still sees ``unix``'s own sector size (4096).
  Tearing at 512 bytes inside it is finer, hence stricter, than what SQLite is told.
* A write that extended the file: if no later operation left the file longer, the file ends
  after its last kept or torn sector (dropped trailing sectors vanish, dropped sectors before a
  kept one read as zeros); all dropped gives back the old size.
* A truncate is kept or dropped whole (``tear`` counts as drop): dropped, the removed tail comes
  back (only the part beyond what later kept writes now cover).
* A file created through this VFS (``SQLITE_OPEN_CREATE`` of a name that did not exist) and
  never synced since vanishes with probability ``vanish``. The first sync counts as making its
  directory entry durable: that is what ``unix`` does for ``-wal`` and journals (it fsyncs the
  directory at their first sync); for a main database SQLite creates, it is optimistic
  (sqlitesaver creates its files elsewhere and fsyncs the directory itself).
* Deletions are durable at once: a deleted journal never comes back. That models
  ``synchronous=EXTRA``; for ``journal_mode=DELETE`` with FULL it is optimistic.
* ``-shm``: the VFS deletes the ``-shm`` of every main database it saw (``delete_shm=True``),
  at the crash, through the ``unix`` VFS. SQLite rebuilds it from the WAL on the next open, so
  the caller reopens the database with a plain ``Saver(path)``, nothing else to do.
* One writer process: only the crashing process's own unsynced writes are modelled. Any other
  process using the database must be dead before the database is reopened (power loss stops
  every process; a survivor would keep the deleted ``-shm`` mapped).
* For a writer process (the torture child): install before opening the Saver, write each
  acknowledgement with an unbuffered write or a flush (``os._exit`` flushes nothing), pass
  ``report_fd`` to get one JSON line saying where the crash hit and what it dropped.
* The undo log holds every pre-image until the next sync: with ``synchronous=OFF`` it grows
  with the workload (fine for test runs, not for long ones).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import traceback
from collections.abc import Iterable
from typing import Any

import apsw

__all__ = ["CRASH_EXIT_STATUS", "SECTOR_SIZE", "FILE_KINDS", "TEAR_MODES", "PowerLossVFS",
           "IOFaultVFS", "install_power_loss", "install_io_faults"]

#: Exit status of a process that "lost power" (distinct from 0, 1, the harness's 3 and -9).
CRASH_EXIT_STATUS = 86
#: The unit in which the power-loss model keeps, drops or tears a write.
SECTOR_SIZE = 512
#: The files whose I/O is counted, tracked and failed.
FILE_KINDS = ("db", "wal", "journal")
TEAR_MODES = ("new-prefix", "old-prefix", "garbage")
IO_KINDS = ("read", "write", "sync", "truncate")

_FLAG_KINDS = ((apsw.SQLITE_OPEN_MAIN_DB, "db"), (apsw.SQLITE_OPEN_WAL, "wal"),
               (apsw.SQLITE_OPEN_MAIN_JOURNAL, "journal"),
               (apsw.SQLITE_OPEN_SUPER_JOURNAL, "journal"))
_KIND_FLAG = {"db": apsw.SQLITE_OPEN_MAIN_DB, "wal": apsw.SQLITE_OPEN_WAL,
              "journal": apsw.SQLITE_OPEN_MAIN_JOURNAL}
_EIO = {"read": apsw.SQLITE_IOERR_READ, "write": apsw.SQLITE_IOERR_WRITE,
        "sync": apsw.SQLITE_IOERR_FSYNC, "truncate": apsw.SQLITE_IOERR_TRUNCATE}
_WRITE, _TRUNCATE = 0, 1
_KEEP, _DROP, _TEAR = 0, 1, 2


def _file_kind(flags: int) -> str | None:
    for flag, kind in _FLAG_KINDS:
        if flags & flag:
            return kind
    return None


#: The name SQLite passes to xOpen: a URIFilename for main databases, a str for the others,
#: None for anonymous temporary files.
_Name = str | apsw.URIFilename | None


def _filename(name: _Name) -> str | None:
    if name is None:
        return None
    return name.filename() if isinstance(name, apsw.URIFilename) else str(name)


class _FaultVFS(apsw.VFS):
    """Installs itself as the default VFS on top of ``base``; ``uninstall()`` undoes that."""

    def __init__(self, name: str, base: str) -> None:
        if name in apsw.vfs_names():
            raise RuntimeError(f"a VFS named {name!r} is already registered: uninstall() the "
                               "previous one first (or pass another name)")
        self.vfs_name = name
        self.base = base
        self.previous_default = apsw.vfs_names()[0]
        #: Files opened through this VFS, per kind (proof that connections use it).
        self.opens = dict.fromkeys(FILE_KINDS, 0)
        self._lock = threading.Lock()
        super().__init__(name, base, makedefault=True)
        self._installed = True

    def uninstall(self) -> None:
        """Unregister; if this VFS was the default, make the previous default the default
        again. Idempotent. Close every connection that uses it first."""
        if not self._installed:
            return
        self._installed = False
        was_default = apsw.vfs_names()[0] == self.vfs_name
        self.unregister()
        if was_default and self.previous_default in apsw.vfs_names():
            apsw.set_default_vfs(self.previous_default)

    def __enter__(self):  # noqa: ANN204 (returns the subclass)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    def xOpen(self, name: _Name, flags: list[int]) -> apsw.VFSFile:
        kind = _file_kind(flags[0])
        filename = _filename(name)
        if kind is None or filename is None:
            return apsw.VFSFile(self.base, name, flags)  # temp files: untouched, uncounted
        with self._lock:
            self.opens[kind] += 1
        return self._open(kind, filename, name, flags)

    def _open(self, kind: str, filename: str, name: _Name, flags: list[int]) -> apsw.VFSFile:
        raise NotImplementedError


# --- power loss -----------------------------------------------------------------------------

class _FileState:
    """The unsynced history of one file name."""

    __slots__ = ("kind", "undo", "created")

    def __init__(self, kind: str, created: bool) -> None:
        self.kind = kind
        #: (_WRITE, offset, length, pre-image, size before) | (_TRUNCATE, size, size before, tail)
        self.undo: list[tuple] = []
        self.created = created  # created through this VFS and never synced since


class _PowerLossFile(apsw.VFSFile):
    def __init__(self, vfs: "PowerLossVFS", state: _FileState, filename: str, name: _Name,
                 flags: list[int]) -> None:
        super().__init__(vfs.base, name, flags)
        self._vfs = vfs
        self._state = state
        self._filename = filename
        self._writable = bool(flags[0] & apsw.SQLITE_OPEN_READWRITE)

    def xWrite(self, data: bytes, offset: int) -> None:
        vfs = self._vfs
        with vfs._lock:
            vfs._check_alive()
            size = apsw.VFSFile.xFileSize(self)
            old = b""
            if offset < size:
                want = min(len(data), size - offset)
                old = apsw.VFSFile.xRead(self, want, offset).ljust(want, b"\0")
            apsw.VFSFile.xWrite(self, data, offset)
            self._state.undo.append((_WRITE, offset, len(data), old, size))
            vfs.counts["write"] += 1
            crash = vfs._crash_point("write", self._filename)
        if crash:
            vfs.crash()  # after the write: it is pending, its fate decided with the others

    def xTruncate(self, newsize: int) -> None:
        vfs = self._vfs
        with vfs._lock:
            vfs._check_alive()
            size = apsw.VFSFile.xFileSize(self)
            tail = b""
            if newsize < size:
                tail = apsw.VFSFile.xRead(self, size - newsize, newsize).ljust(
                    size - newsize, b"\0")
            apsw.VFSFile.xTruncate(self, newsize)
            if newsize != size:
                self._state.undo.append((_TRUNCATE, newsize, size, tail))
            vfs.counts["truncate"] += 1

    def xSync(self, flags: int) -> None:
        vfs = self._vfs
        with vfs._lock:
            vfs._check_alive()
            vfs.counts["sync"] += 1
            crash = vfs._crash_point("sync", self._filename)
            pending = len(self._state.undo)
        if crash:
            vfs.crash()  # at the sync: it does not happen
        apsw.VFSFile.xSync(self, flags)
        with vfs._lock:
            # Only what was written before the sync began is known durable.
            del self._state.undo[:pending]
            self._state.created = False

    def xClose(self) -> None:
        try:
            apsw.VFSFile.xClose(self)
        finally:
            self._vfs._forget_handle(self._filename, self)


class PowerLossVFS(_FaultVFS):
    """Simulated power loss (see the module docstring for the exact model).

    Crash points count operations on database files only (main db, ``-wal``, ``-journal``):
    ``crash_on`` picks which ones count (``"sync"``, ``"write"`` or ``"any"``); the process
    crashes at the ``crash_after``-th of them (1-based), and at each of them with probability
    ``crash_probability``. A crash at a write happens after the write (it is then pending like
    the others); a crash at a sync happens instead of the sync. With ``crash_after=None`` and
    ``crash_probability=0`` it never crashes and only counts (:attr:`counts`), so a caller can
    measure a workload to choose N.

    Every random choice comes from ``seed``: the same workload with the same seed crashes at
    the same point and keeps, drops and tears the same sectors.
    """

    def __init__(self, *, seed: int, crash_on: str = "sync", crash_after: int | None = None,
                 crash_probability: float = 0.0, keep: float = 1.0, drop: float = 1.0,
                 tear: float = 1.0, tear_modes: Iterable[str] = TEAR_MODES,
                 vanish: float = 0.5, delete_shm: bool = True, report_fd: int | None = None,
                 name: str = "sqlitesaver-power-loss", base: str = "unix") -> None:
        if crash_on not in ("sync", "write", "any"):
            raise ValueError(f"crash_on must be 'sync', 'write' or 'any', not {crash_on!r}")
        if crash_after is not None and (isinstance(crash_after, bool)
                                        or not isinstance(crash_after, int) or crash_after < 1):
            raise ValueError(f"crash_after must be None or an int >= 1, not {crash_after!r}")
        if not 0.0 <= crash_probability <= 1.0 or not 0.0 <= vanish <= 1.0:
            raise ValueError("crash_probability and vanish are probabilities (0 to 1)")
        if min(keep, drop, tear) < 0 or keep + drop + tear <= 0:
            raise ValueError("keep, drop and tear are weights >= 0, not all 0")
        self.tear_modes = tuple(tear_modes)
        if not self.tear_modes or set(self.tear_modes) - set(TEAR_MODES):
            raise ValueError(f"tear_modes must be a non-empty subset of {TEAR_MODES}")
        self.seed = seed
        self.crash_on = crash_on
        self.crash_after = crash_after
        self.crash_probability = crash_probability
        self.vanish = vanish
        self.delete_shm = delete_shm
        self.report_fd = report_fd
        total = keep + drop + tear
        self._keep_below = keep / total
        self._drop_below = (keep + drop) / total
        self._crash_rng = random.Random(f"{seed}/crash")
        self._fate_rng = random.Random(f"{seed}/fate")
        #: Operations on database files since install: write, sync, truncate.
        self.counts = {"write": 0, "sync": 0, "truncate": 0}
        #: Where the crash was triggered: {"op", "n" (its number among counted ops), "file"}.
        self.crashed_at: dict[str, Any] | None = None
        self._ticks = 0
        self._dead = False
        self._states: dict[str, _FileState] = {}
        self._handles: dict[str, list[_PowerLossFile]] = {}
        self._databases: set[str] = set()
        super().__init__(name, base)

    # -- files --

    def _open(self, kind: str, filename: str, name: _Name, flags: list[int]) -> apsw.VFSFile:
        # Not xAccess: unix reports an empty file as missing (for journals), and a 0-byte
        # -wal opened by a second connection would then look created, its history lost.
        existed = os.path.lexists(filename)
        with self._lock:
            state = self._states.get(filename)
            if state is None or not existed:  # a name seen before but deleted behind our back
                state = _FileState(kind, created=False)
        handle = _PowerLossFile(self, state, filename, name, flags)  # may raise CantOpen
        with self._lock:
            if not existed:
                state.created = bool(flags[0] & apsw.SQLITE_OPEN_CREATE)
            self._states[filename] = state
            if kind == "db":
                self._databases.add(filename)
            if handle._writable:
                self._handles.setdefault(filename, []).append(handle)
        return handle

    def _forget_handle(self, filename: str, handle: _PowerLossFile) -> None:
        with self._lock:
            handles = self._handles.get(filename, [])
            if handle in handles:
                handles.remove(handle)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        apsw.VFS.xDelete(self, filename, syncdir)
        with self._lock:
            self._states.pop(filename, None)  # deletions are durable at once (module doc)

    # -- crash points --

    def _check_alive(self) -> None:
        if self._dead:  # another thread's I/O while the power is out: it never happens
            raise apsw.exception_for(apsw.SQLITE_IOERR)

    def _crash_point(self, op: str, filename: str) -> bool:
        if self.crashed_at is not None or self.crash_on not in (op, "any"):
            return False
        self._ticks += 1
        if self._ticks == self.crash_after or (
                self.crash_probability and self._crash_rng.random() < self.crash_probability):
            self.crashed_at = {"op": op, "n": self._ticks, "file": filename}
            return True
        return False

    def crash(self) -> None:
        """Lose power now: :meth:`apply_power_loss`, report it on ``report_fd`` (one JSON
        line), and ``os._exit(CRASH_EXIT_STATUS)``. Never returns. If applying fails, the
        traceback goes to stderr and the status is 1."""
        try:
            report = self.apply_power_loss()
            if self.report_fd is not None:
                os.write(self.report_fd, (json.dumps({"power_loss": report}) + "\n").encode())
        except BaseException:
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            os._exit(1)
        os._exit(CRASH_EXIT_STATUS)

    # -- the power loss itself --

    def apply_power_loss(self) -> dict[str, Any]:
        """Undo, sector by sector and at random, every write and truncate not yet synced;
        delete unsynced created files at random and the ``-shm`` files. Afterwards every file
        operation through this VFS fails (the power is out). Returns what it did; testable
        in-process, :meth:`crash` adds the exit."""
        with self._lock:
            self._dead = True
            rng = self._fate_rng
            report: dict[str, Any] = {"at": self.crashed_at, "counts": dict(self.counts),
                                      "sectors": {"kept": 0, "dropped": 0, "torn": 0},
                                      "truncates": {"kept": 0, "dropped": 0},
                                      "vanished": [], "shm_deleted": []}
            for filename, state in self._states.items():
                if state.created and rng.random() < self.vanish:
                    if apsw.VFS.xAccess(self, filename, apsw.SQLITE_ACCESS_EXISTS):
                        apsw.VFS.xDelete(self, filename, False)
                        report["vanished"].append(filename)
                elif state.undo:
                    self._undo_file(filename, state, rng, report)
                state.undo.clear()
                state.created = False
            if self.delete_shm:
                for filename in sorted(self._databases):
                    shm = filename + "-shm"
                    if apsw.VFS.xAccess(self, shm, apsw.SQLITE_ACCESS_EXISTS):
                        apsw.VFS.xDelete(self, shm, False)
                        report["shm_deleted"].append(shm)
            return report

    def _undo_file(self, filename: str, state: _FileState, rng: random.Random,
                   report: dict[str, Any]) -> None:
        handles = self._handles.get(filename)
        handle: apsw.VFSFile
        if handles:
            handle, opened = handles[0], False
        else:
            if not apsw.VFS.xAccess(self, filename, apsw.SQLITE_ACCESS_EXISTS):
                return  # removed outside SQLite (e.g. a temporary file the library unlinked)
            handle = apsw.VFSFile(self.base, filename,
                                  [apsw.SQLITE_OPEN_READWRITE | _KIND_FLAG[state.kind], 0])
            opened = True
        try:
            for entry in reversed(state.undo):
                if entry[0] == _WRITE:
                    self._undo_write(handle, entry, rng, report["sectors"])
                else:
                    self._undo_truncate(handle, entry, rng, report["truncates"])
        finally:
            if opened:
                handle.xClose()

    def _fate(self, rng: random.Random) -> int:
        r = rng.random()
        return _KEEP if r < self._keep_below else _DROP if r < self._drop_below else _TEAR

    def _undo_write(self, handle: apsw.VFSFile, entry: tuple, rng: random.Random,
                    tally: dict[str, int]) -> None:
        _, offset, length, old, old_size = entry
        end = offset + length
        size = apsw.VFSFile.xFileSize(handle)
        last_kept = old_size  # the end of the last kept or torn sector past the old end
        start = offset
        while start < end:
            stop = min(end, (start // SECTOR_SIZE + 1) * SECTOR_SIZE)
            fate = self._fate(rng)
            if fate != _DROP and stop > old_size:
                last_kept = max(last_kept, stop)
            if fate == _KEEP:
                tally["kept"] += 1
            else:
                width = stop - start
                before = old[start - offset:stop - offset].ljust(width, b"\0")
                if fate == _DROP:
                    tally["dropped"] += 1
                    piece = before
                else:
                    tally["torn"] += 1
                    now = b""
                    if start < size:
                        now = apsw.VFSFile.xRead(handle, min(stop, size) - start, start)
                    piece = self._tear(before, now.ljust(width, b"\0"), rng)
                limit = min(stop, size)  # never past what later kept operations left
                if start < limit:
                    apsw.VFSFile.xWrite(handle, piece[:limit - start], start)
            start = stop
        if end > old_size and size <= end:
            new_size = min(size, last_kept)
            if new_size < size:
                apsw.VFSFile.xTruncate(handle, new_size)

    def _tear(self, before: bytes, after: bytes, rng: random.Random) -> bytes:
        mode = rng.choice(self.tear_modes)
        if mode == "garbage":
            return rng.randbytes(len(before))
        if len(before) < 2:  # no split point inside one byte
            return rng.choice((before, after))
        split = rng.randint(1, len(before) - 1)
        if mode == "new-prefix":
            return after[:split] + before[split:]
        return before[:split] + after[split:]

    def _undo_truncate(self, handle: apsw.VFSFile, entry: tuple, rng: random.Random,
                       tally: dict[str, int]) -> None:
        _, newsize, old_size, tail = entry
        if rng.random() < self._keep_below:
            tally["kept"] += 1
            return
        tally["dropped"] += 1
        size = apsw.VFSFile.xFileSize(handle)
        if old_size > newsize:
            if newsize <= size < old_size:
                apsw.VFSFile.xWrite(handle, tail[size - newsize:], size)
        elif size == newsize:  # it had extended the file and nothing later did
            apsw.VFSFile.xTruncate(handle, old_size)


def install_power_loss(*, seed: int, crash_on: str = "sync", crash_after: int | None = None,
                       crash_probability: float = 0.0, **options: Any) -> PowerLossVFS:
    """Make simulated power loss the default VFS of this process; call before opening the
    Saver. The process exits with :data:`CRASH_EXIT_STATUS` at the crash point. Other options
    (``keep``, ``drop``, ``tear``, ``tear_modes``, ``vanish``, ``delete_shm``, ``report_fd``,
    ``name``, ``base``): see :class:`PowerLossVFS`."""
    return PowerLossVFS(seed=seed, crash_on=crash_on, crash_after=crash_after,
                        crash_probability=crash_probability, **options)


# --- I/O errors -----------------------------------------------------------------------------

class _IOFaultFile(apsw.VFSFile):
    def __init__(self, vfs: "IOFaultVFS", kind: str, filename: str, name: _Name,
                 flags: list[int]) -> None:
        super().__init__(vfs.base, name, flags)
        self._vfs = vfs
        self._kind = kind
        self._filename = filename

    def xRead(self, amount: int, offset: int) -> bytes:
        self._vfs._operation("read", self._kind, self._filename)
        return super().xRead(amount, offset)

    def xWrite(self, data: bytes, offset: int) -> None:
        self._vfs._operation("write", self._kind, self._filename)
        super().xWrite(data, offset)

    def xSync(self, flags: int) -> None:
        self._vfs._operation("sync", self._kind, self._filename)
        super().xSync(flags)

    def xTruncate(self, newsize: int) -> None:
        self._vfs._operation("truncate", self._kind, self._filename)
        super().xTruncate(newsize)


class IOFaultVFS(_FaultVFS):
    """Fails chosen I/O operations on database files (main db, ``-wal``, ``-journal``).

    Unarmed it only counts (:attr:`counts`, per kind, since install). :meth:`arm` makes the
    ``at``-th matching operation from then on fail -- and, with ``persistent=True``, every
    matching one after it -- until :meth:`clear`. A failed operation does nothing to the file.
    Errors: ``"eio"`` raises SQLite's extended I/O error of the operation
    (``SQLITE_IOERR_READ`` / ``_WRITE`` / ``_FSYNC`` / ``_TRUNCATE``, which sqlitesaver maps to
    :class:`~sqlitesaver.errors.DatabaseIOError`); ``"full"`` raises ``SQLITE_FULL``
    (:class:`~sqlitesaver.errors.DiskFullError`) and applies to writes only, the one operation
    the ``unix`` VFS reports a full disk for.

    APSW re-raises an exception raised in a Python VFS method when the SQLite call returns,
    even where SQLite itself ignores the error (the checkpoint that closing the last connection
    runs, the automatic checkpoint after a COMMIT). So a fault there surfaces as an exception
    that a failing disk under the C ``unix`` VFS would not produce: an auto-checkpoint fault
    makes a COMMIT that did commit raise ("maybe committed" covers it), and a fault during
    ``Saver.close()`` escapes as a raw ``apsw.IOError`` (see the report of issue #4).
    """

    def __init__(self, *, name: str = "sqlitesaver-io-faults", base: str = "unix") -> None:
        #: Operations on database files since install, per kind (read, write, sync, truncate).
        self.counts = dict.fromkeys(IO_KINDS, 0)
        #: Faults raised since the last arm(); ``last_fault`` is (op, file, n) of the latest.
        self.injected = 0
        self.last_fault: tuple[str, str, int] | None = None
        self._armed = False
        self._at = 0
        self._seen = 0
        self._kinds: frozenset[str] = frozenset()
        self._files: frozenset[str] = frozenset()
        self._persistent = False
        self._error = "eio"
        super().__init__(name, base)

    def arm(self, at: int, *, kinds: Iterable[str] = ("write",), persistent: bool = False,
            error: str = "eio", files: Iterable[str] = FILE_KINDS) -> None:
        """Fail the ``at``-th operation (1-based, counted from this call) whose kind is in
        ``kinds`` on a file whose kind is in ``files``; with ``persistent`` also every later
        one, until :meth:`clear`."""
        kinds, files = frozenset(kinds), frozenset(files)
        if isinstance(at, bool) or not isinstance(at, int) or at < 1:
            raise ValueError(f"at must be an int >= 1, not {at!r}")
        if not kinds or kinds - set(IO_KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {IO_KINDS}")
        if not files or files - set(FILE_KINDS):
            raise ValueError(f"files must be a non-empty subset of {FILE_KINDS}")
        if error not in ("eio", "full"):
            raise ValueError(f"error must be 'eio' or 'full', not {error!r}")
        if error == "full" and kinds != {"write"}:
            raise ValueError("error='full' applies to writes only (kinds=('write',))")
        with self._lock:
            self._at, self._kinds, self._files = at, kinds, files
            self._persistent, self._error = persistent, error
            self._seen = 0
            self.injected = 0
            self.last_fault = None
            self._armed = True

    def clear(self) -> None:
        """The fault clears: no more injected errors (counting goes on)."""
        with self._lock:
            self._armed = False

    @property
    def seen(self) -> int:
        """Matching operations since the last :meth:`arm` (the failed ones included)."""
        return self._seen

    def _open(self, kind: str, filename: str, name: _Name, flags: list[int]) -> apsw.VFSFile:
        return _IOFaultFile(self, kind, filename, name, flags)

    def _operation(self, op: str, kind: str, filename: str) -> None:
        with self._lock:
            self.counts[op] += 1
            if not self._armed or op not in self._kinds or kind not in self._files:
                return
            self._seen += 1
            if self._seen < self._at or (self._seen > self._at and not self._persistent):
                return
            self.injected += 1
            self.last_fault = (op, filename, self._seen)
            code = apsw.SQLITE_FULL if self._error == "full" else _EIO[op]
        raise apsw.exception_for(code)


def install_io_faults(*, name: str = "sqlitesaver-io-faults", base: str = "unix"
                      ) -> IOFaultVFS:
    """Make the I/O-fault VFS the default VFS of this process (unarmed: it only counts until
    :meth:`IOFaultVFS.arm`); call before opening the Saver."""
    return IOFaultVFS(name=name, base=base)
