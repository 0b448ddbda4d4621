"""Workspaces: a directory stored as a checkpoint's files, and put back exactly (issue #18).

**Snapshot** (:func:`snapshot_sources`): every regular file under the directory becomes one of
the checkpoint's files, named by its relative path (``'/'``-separated), with its permission
bits; the bytes go through :mod:`sqlitesaver.attachments`, content-addressed, so a file whose
content is already stored (unchanged since the last snapshot, or a copy of another) costs a
manifest row and no bytes. A symbolic link to a file inside the directory is stored as that
file's content (and restored as a regular file). Refused with
:class:`~sqlitesaver.errors.UnsafePathError`, before anything is written: a link that leads
out of the directory, a link to a directory, and anything that is not a regular file (a FIFO
is never opened). A regular file is opened as the very file the walk looked at (device and
inode): one swapped meanwhile for a link, or reached through a directory swapped for a link,
is refused with :class:`~sqlitesaver.errors.FileAccessError` and nothing is written. (A link
inside the directory is resolved and checked by path, then opened: a directory along its
target swapped in that short gap is not caught; a directory-descriptor walk would close it.)
Empty directories are not part of a workspace. Snapshot a directory that
nothing writes to meanwhile: each file is stored as it was when it was hashed, or the
transaction fails with :class:`~sqlitesaver.errors.FileChangedError`, but files changed at
different moments of the walk are not a consistent whole.

**Restore** (:func:`restore`) makes the directory hold exactly the checkpoint's files:

* each file that differs (content or permission bits) is written to a temporary name in its own
  directory, fsynced, renamed over the old name, and that directory is fsynced: at every
  instant the name holds the old bytes or the new ones, whole;
* a file already identical is left alone (and fsynced, so its bytes are durable too);
* everything else in the directory is removed: files not in the manifest, temporary files a
  killed restore left, directories that hold no file of the manifest, and a file or a symbolic
  link where the manifest needs a directory (it is replaced, never followed);
* every directory is fsynced at the end.

The tree is walked with directory file descriptors opened ``O_NOFOLLOW``: no symbolic link
inside the directory is ever followed, so a restore never writes or removes anything outside
it. A restore killed at any instant (or failing half-way) leaves every file whole, old or new,
and running it again ends in exactly the manifest (``tests/test_workspace.py`` kills it at
every step). It is not atomic across files: until it returns, the directory may hold some new
files and some old ones.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .attachments import Source, StoredFile, check_name, check_tree, source_from_path
from .errors import FileAccessError, InvalidArgumentError, UnsafePathError

__all__ = ["TEMP_MARK", "RestoreReport", "FileSystem", "snapshot_sources", "restore"]

#: The start of a temporary file's name during a restore: ``.sqlitesaver-restore-PID-RANDOM``.
TEMP_MARK = ".sqlitesaver-restore-"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# --- snapshot ---------------------------------------------------------------------------------

def _unsafe(name: str, why: str) -> UnsafePathError:
    error = UnsafePathError(f"workspace entry {name!r} is refused: {why}. Nothing was written.")
    error.name = name
    return error


def snapshot_sources(directory: str | os.PathLike[str]) -> list[Source]:
    """Every file of ``directory`` as a hashed :class:`~sqlitesaver.attachments.Source`,
    sorted by name; raises before anything is written (see the module docstring)."""
    text = os.fspath(directory)
    if not isinstance(text, str):
        raise InvalidArgumentError("workspace must be a str or os.PathLike path, not bytes")
    root = os.path.realpath(text)
    if not os.path.isdir(root):
        raise InvalidArgumentError(f"workspace {text!r} is not a directory; nothing was "
                                   "written")
    sources: list[Source] = []
    for current, dirs, files in os.walk(root, followlinks=False, onerror=_raise):
        dirs.sort()
        for name in list(dirs):
            full = os.path.join(current, name)
            if os.path.islink(full):
                rel = _relative(root, full)
                raise _unsafe(rel, f"it is a symbolic link to a directory "
                                   f"({os.readlink(full)!r}); store the directory itself")
        for name in sorted(files):
            full = os.path.join(current, name)
            rel = _relative(root, full)
            check_name(rel, "workspace entry")
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(full)
                if os.path.commonpath([root, target]) != root:
                    raise _unsafe(rel, f"it is a symbolic link that leads out of the workspace "
                                       f"{root!r}, to {target!r}")
                if not os.path.isfile(target) or os.path.islink(target):
                    raise _unsafe(rel, f"it is a symbolic link to {target!r}, which is not a "
                                       "regular file")
                sources.append(source_from_path(rel, target, full))
            elif stat.S_ISREG(st.st_mode):
                # The file this lstat saw, and no other: swapped meanwhile for a link, or
                # reached through a directory renamed to a link, it is refused when opened.
                sources.append(source_from_path(rel, full, seen=st))
            else:
                from .paths import kind
                raise _unsafe(rel, f"it is {kind(st.st_mode)}, not a regular file")
    check_tree((s.name for s in sources), "workspace")
    return sources


def _raise(exc: OSError) -> None:
    error = FileAccessError(f"cannot read the workspace directory {exc.filename!r} "
                            f"({type(exc).__name__}: {exc.strerror or exc}); nothing was "
                            "written")
    error.file = exc.filename
    raise error from exc


def _relative(root: str, full: str) -> str:
    return os.path.relpath(full, root).replace(os.sep, "/")


# --- restore ----------------------------------------------------------------------------------

class FileSystem:
    """The file-system calls a restore makes that change something, one method each, so that
    tests can fail (or kill) it at every one of them in turn."""

    open = staticmethod(os.open)
    write = staticmethod(os.write)
    fchmod = staticmethod(os.fchmod)
    fsync = staticmethod(os.fsync)
    rename = staticmethod(os.rename)
    unlink = staticmethod(os.unlink)
    mkdir = staticmethod(os.mkdir)
    rmdir = staticmethod(os.rmdir)


@dataclass
class RestoreReport:
    """What :func:`restore` did: files written, files already identical, entries removed
    (relative paths; a directory removed with what it held counts once)."""

    directory: str
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def restore(directory: str | os.PathLike[str], files: Iterable[StoredFile],
            content: Callable[[StoredFile], Iterator[bytes]], *,
            fs: FileSystem | None = None) -> RestoreReport:
    """Make ``directory`` hold exactly ``files`` (see the module docstring), reading each
    file's bytes from ``content(file)``. The directory is created if missing (its parent
    must exist). OS errors raise :class:`~sqlitesaver.errors.FileAccessError` naming the
    file; run the restore again once the cause is fixed."""
    fs = fs or FileSystem()
    text = os.fspath(directory)
    if not isinstance(text, str):
        raise InvalidArgumentError("directory must be a str or os.PathLike path, not bytes")
    root = os.path.abspath(text)
    wanted = {f.name: f for f in files}
    for name in wanted:
        check_name(name, "stored file name")
    check_tree(wanted, "stored files")
    needed = {"/".join(name.split("/")[:end]) for name in wanted
              for end in range(1, name.count("/") + 1)}
    report = RestoreReport(root)
    job = _Restore(fs, root, wanted, needed, content, report)
    job.run()
    return report


class _Restore:
    def __init__(self, fs: FileSystem, root: str, wanted: dict[str, StoredFile],
                 needed: set[str], content: Callable[[StoredFile], Iterator[bytes]],
                 report: RestoreReport) -> None:
        self.fs, self.root, self.wanted, self.needed = fs, root, wanted, needed
        self.content, self.report = content, report

    def run(self) -> None:
        fs, root = self.fs, self.root
        try:
            if not os.path.lexists(root):
                parent = os.path.dirname(root)
                if not os.path.isdir(parent):
                    raise InvalidArgumentError(f"cannot restore into {root!r}: its parent "
                                               f"directory {parent!r} does not exist")
                self._os(fs.mkdir, root, 0o755, what=root)
                self._fsync_path(parent)
            try:
                rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except NotADirectoryError:
                raise InvalidArgumentError(f"cannot restore into {root!r}: it is not a "
                                           "directory") from None
        except OSError as exc:
            raise _failed(exc, root) from exc
        try:
            for name in sorted(self.wanted):
                self._place_path(rootfd, name)
            self._sweep(rootfd, "")
            self._sync_dirs(rootfd, "")
        finally:
            os.close(rootfd)

    # Each OS call that changes something goes through here: an error names the file.
    def _os(self, call: Callable, *args: object, what: str, **kwargs: object) -> object:
        try:
            return call(*args, **kwargs)
        except OSError as exc:
            raise _failed(exc, what) from exc

    def _fsync_path(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._os(self.fs.fsync, fd, what=path)
        finally:
            os.close(fd)

    def _full(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/")) if rel else self.root

    def _enter(self, dfd: int, name: str, rel: str) -> int:
        """A descriptor of directory ``name`` in ``dfd``, made a directory if it is not one
        (missing, a file, a symbolic link: replaced, never followed)."""
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise _failed(exc, self._full(rel)) from exc
            self._os(self.fs.unlink, name, dir_fd=dfd, what=self._full(rel))
            self.report.removed.append(rel)
        self._os(self.fs.mkdir, name, 0o755, dir_fd=dfd, what=self._full(rel))
        self._os(self.fs.fsync, dfd, what=self._full(rel))
        return self._os(os.open, name, _DIR_FLAGS, dir_fd=dfd, what=self._full(rel))  # type: ignore[return-value]

    def _place_path(self, rootfd: int, name: str) -> None:
        parts = name.split("/")
        opened: list[int] = []
        dfd = rootfd
        try:
            for end, part in enumerate(parts[:-1], 1):
                dfd = self._enter(dfd, part, "/".join(parts[:end]))
                opened.append(dfd)
            self._place(dfd, parts[-1], self.wanted[name])
        finally:
            for fd in opened:
                os.close(fd)

    def _place(self, dfd: int, base: str, stored: StoredFile) -> None:
        fs, full = self.fs, self._full(stored.name)
        try:
            st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise _failed(exc, full) from exc
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == stored.size \
                and stat.S_IMODE(st.st_mode) == stored.mode and self._same(dfd, base, stored):
            self.report.unchanged.append(stored.name)
            return
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._remove_tree(dfd, base, full)  # nothing in it is in the manifest
            self.report.removed.append(stored.name + "/")
        temp = f"{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        fd = self._os(fs.open, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o600, dir_fd=dfd, what=full)
        renamed = False
        try:
            try:
                for piece in self.content(stored):
                    view = memoryview(piece)
                    while view:
                        written = self._os(fs.write, fd, view, what=full)
                        view = view[written:]  # type: ignore[index]
                self._os(fs.fchmod, fd, stored.mode, what=full)
                self._os(fs.fsync, fd, what=full)
            finally:
                os.close(fd)
            self._os(fs.rename, temp, base, src_dir_fd=dfd, dst_dir_fd=dfd, what=full)
            renamed = True
        finally:
            if not renamed:
                try:
                    os.unlink(temp, dir_fd=dfd)  # best effort: the next restore removes it
                except OSError:
                    pass
        self._os(fs.fsync, dfd, what=full)
        self.report.written.append(stored.name)

    def _same(self, dfd: int, base: str, stored: StoredFile) -> bool:
        """Whether the regular file ``base`` holds exactly the stored bytes; if so it is
        fsynced too (a rerun after a kill may find it renamed but its directory unsynced)."""
        try:
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return False
        try:
            hasher = hashlib.sha256()
            while True:
                block = os.read(fd, 1 << 20)
                if not block:
                    break
                hasher.update(block)
            if hasher.hexdigest() != stored.digest:
                return False
            self._os(self.fs.fsync, fd, what=self._full(stored.name))
            return True
        finally:
            os.close(fd)

    def _sweep(self, dfd: int, prefix: str) -> None:
        """Remove what the manifest does not name under ``dfd`` (``prefix``: its path)."""
        changed = False
        with os.scandir(dfd) as entries:
            found = sorted((entry.name, entry.is_dir(follow_symlinks=False))
                           for entry in entries)
        for name, is_dir in found:
            rel = prefix + name
            if is_dir and rel in self.needed:
                sub = self._os(os.open, name, _DIR_FLAGS, dir_fd=dfd, what=self._full(rel))
                try:
                    self._sweep(sub, rel + "/")  # type: ignore[arg-type]
                finally:
                    os.close(sub)  # type: ignore[arg-type]
            elif is_dir:
                self._remove_tree(dfd, name, self._full(rel))
                self.report.removed.append(rel + "/")
                changed = True
            elif rel not in self.wanted:
                self._os(self.fs.unlink, name, dir_fd=dfd, what=self._full(rel))
                if not name.startswith(TEMP_MARK):
                    self.report.removed.append(rel)
                changed = True
        if changed:
            self._os(self.fs.fsync, dfd, what=self._full(prefix.rstrip("/")))

    def _remove_tree(self, dfd: int, name: str, full: str) -> None:
        sub = self._os(os.open, name, _DIR_FLAGS, dir_fd=dfd, what=full)
        try:
            with os.scandir(sub) as entries:
                found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
            for child, is_dir in found:
                if is_dir:
                    self._remove_tree(sub, child, os.path.join(full, child))  # type: ignore[arg-type]
                else:
                    self._os(self.fs.unlink, child, dir_fd=sub, what=os.path.join(full, child))
        finally:
            os.close(sub)  # type: ignore[arg-type]
        self._os(self.fs.rmdir, name, dir_fd=dfd, what=full)

    def _sync_dirs(self, dfd: int, prefix: str) -> None:
        """fsync every directory of the manifest, deepest first, then ``dfd``."""
        for rel in sorted((d for d in self.needed if d.count("/") == prefix.count("/")
                           and d.startswith(prefix)), reverse=True):
            sub = self._os(os.open, rel[len(prefix):], _DIR_FLAGS, dir_fd=dfd,
                           what=self._full(rel))
            try:
                self._sync_dirs(sub, rel + "/")  # type: ignore[arg-type]
            finally:
                os.close(sub)  # type: ignore[arg-type]
        self._os(self.fs.fsync, dfd, what=self._full(prefix.rstrip("/")))


def _failed(exc: OSError, what: str) -> FileAccessError:
    error = FileAccessError(
        f"restoring files failed at {what!r} ({type(exc).__name__}: {exc.strerror or exc}). "
        "Every file there is whole (its old or its new content); fix the cause and run the "
        "restore again, which ends in exactly the checkpoint's files.")
    error.file = what
    return error
