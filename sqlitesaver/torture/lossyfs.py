"""A FUSE file system that loses unsynced writes on command: power loss under PostgreSQL.

    with LossyMount(backing_dir, mount_dir) as fs:   # runs this file in a child process
        ...              # a server keeps its data directory under mount_dir
        fs.crash()       # "power loss": every write not yet fsync'd is dropped

A passthrough over ``backing_dir`` modelling a disk with a volatile write cache, after LazyFS's
default configuration ("When Amnesia Strikes", FAST '24; github dsrhaslab/lazyfs), which cannot be
built offline here:

- **File data** (``write``, ``truncate``/``ftruncate``, ``open(O_TRUNC)``) is kept in memory per
  file (per backing inode): 4 KiB pages overlaid on the backing file, a pending size and the
  lowest size the file was cut to since its last sync. Every reader through the mount sees it at
  once. It reaches the backing file only at an ``fsync``/``fdatasync`` *of that file*; ``close``
  (FUSE ``flush``/``release``) writes nothing.
- **Metadata** (create, mkdir, rename, unlink, rmdir, chmod, chown, utimens, symlink, link) goes
  to the backing directory at once and survives a crash, so a directory ``fsync`` has nothing to
  flush. As far as the LazyFS paper and README tell, this is LazyFS's default too (its cache holds
  file data only; metadata calls pass through). Consequence: a file created and written but not
  synced survives a crash with its last synced content (often empty), and a rename or unlink is
  never undone. That is weaker than a real ext4 crash (which can lose an unsynced create or
  rename): this file system tests lost *data*, not lost *directory entries*.
- **Power loss** is a write of anything to the control file ``/.lossyfs-crash`` at the mount's
  root (:func:`crash`): the write returns once every cached page, pending size and pending
  truncation has been dropped; each file is then its backing file, i.e. its content at its last
  fsync (or as written by a metadata operation). Open file handles stay valid. A control file was
  chosen over a signal (libfuse's loop holds the main thread in C, where a Python signal handler
  would not run until unmount) and over a socket (one more thing to clean up): the write is
  synchronous, needs no extra process, and only root can write it (mode 0600, and
  ``default_permissions`` makes the kernel check). It is not listed by ``readdir``.
- The backing files are treated as the durable medium: a sync writes the pages to the backing
  file but does not ``os.fsync`` it (``sync_backing=True`` does), since no real power is cut.

Kernel caches would hide a crash, so the mount uses ``direct_io`` (every read and write comes to
this process; shared ``mmap`` of files is then unavailable, which PostgreSQL's data directory does
not need), ``attr_timeout=0``/``entry_timeout=0``/``negative_timeout=0`` (sizes are asked every
time), ``hard_remove`` (an unlinked open file leaves no ``.fuse_hidden*`` in its directory) and,
as root, ``allow_other`` + ``default_permissions`` (the server runs as user ``postgres``); files
and directories created through the mount are chowned to the caller.

Single-threaded by default (``nothreads``): every operation holds the GIL for its bookkeeping
anyway and the backing I/O is page-cache speed, so threads would buy little and cost races; the
state is nevertheless guarded by one lock, so ``threads=True`` works too.

Requires Linux, ``/dev/fuse`` and fusepy (``pip install fusepy``, over libfuse 2); fusepy is
imported only when the file system runs, in the child (``python lossyfs.py BACKING MOUNT``).
Stdlib otherwise; this file runs standalone.
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["LossyMount", "crash", "available", "CONTROL", "PAGE"]

#: The control file, relative to the mount's root: a write to it is a power loss.
CONTROL = ".lossyfs-crash"
PAGE = 4096
_CONTROL_FH = 1 << 62  # a file handle no backing descriptor can have
_POLL = 0.01


def available() -> str | None:
    """None if a LossyFS can be mounted here, else why not (for a test's skip message)."""
    if not sys.platform.startswith("linux"):
        return "LossyFS needs Linux"
    try:
        importlib.import_module("fuse")  # fusepy
    except (ImportError, OSError) as exc:  # OSError: libfuse.so.2 is missing
        return f"fusepy is unavailable ({exc}): pip install fusepy, apt-get install libfuse2"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if not (shutil.which("fusermount") or shutil.which("fusermount3")):
        return "fusermount is not installed (apt-get install fuse3)"
    return None


def crash(mountpoint: str) -> None:
    """Power loss on the LossyFS mounted at ``mountpoint``: returns once every unsynced write
    is gone."""
    fd = os.open(os.path.join(mountpoint, CONTROL), os.O_WRONLY)
    try:
        os.write(fd, b"crash\n")
    finally:
        os.close(fd)


class _Node:
    """The unsynced state of one file (one backing inode). Exists only while dirty.

    Invariants: ``low <= size``; bytes of the backing file at or past ``low`` read as zeros
    (the file was cut there since its last sync); a cached page's bytes past ``size`` are zero.
    """

    __slots__ = ("pages", "size", "low")

    def __init__(self, size: int) -> None:
        self.pages: dict[int, bytearray] = {}
        self.size = size
        self.low = size


def _operations_base() -> Any:
    from fuse import Operations  # fusepy: imported only where the file system runs
    return Operations


def make_operations(backing: str, sync_backing: bool = False) -> Any:
    """The fusepy ``Operations`` object of a LossyFS over the directory ``backing``."""
    from fuse import FuseOSError, fuse_get_context

    class LossyFS(_operations_base()):  # type: ignore[misc]
        # Operations on a handle get path None once its file is unlinked (hard_remove): they
        # only use the handle.
        flag_nullpath_ok = 1

        def __init__(self) -> None:
            self.root = os.path.realpath(backing)
            self._mutex = threading.RLock()
            self.nodes: dict[tuple[int, int], _Node] = {}  # (st_dev, st_ino) -> unsynced state
            self.open_fh: dict[int, tuple[tuple[int, int], int]] = {}  # fh -> (key, open flags)
            self.crashes = 0

        # -- helpers ------------------------------------------------------------------------
        def _full(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        @staticmethod
        def _is_control(path: str | None) -> bool:
            return path == "/" + CONTROL

        @staticmethod
        def _key(st: os.stat_result) -> tuple[int, int]:
            return (st.st_dev, st.st_ino)

        def _node(self, fd: int) -> _Node:
            st = os.fstat(fd)
            key = self._key(st)
            node = self.nodes.get(key)
            if node is None:
                node = self.nodes[key] = _Node(st.st_size)
            return node

        def _opened(self, key: tuple[int, int]) -> bool:
            return any(k == key for k, _ in self.open_fh.values())

        def _chown_to_caller(self, full: str) -> None:
            uid, gid, _pid = fuse_get_context()
            if os.geteuid() == 0 and (uid, gid) != (0, 0):
                os.lchown(full, uid, gid)

        def _base_page(self, fd: int, node: _Node, idx: int) -> bytearray:
            start = idx * PAGE
            page = bytearray(os.pread(fd, PAGE, start)) if start < node.low else bytearray()
            page.extend(bytes(PAGE - len(page)))
            if node.low < start + PAGE:  # cut since the last sync: the backing bytes are gone
                cut = max(0, node.low - start)
                page[cut:] = bytes(PAGE - cut)
            return page

        def _read(self, fd: int, node: _Node, size: int, offset: int) -> bytes:
            end = min(offset + size, node.size)
            out = bytearray()
            pos = offset
            while pos < end:
                idx, within = divmod(pos, PAGE)
                n = min(PAGE - within, end - pos)
                page = node.pages.get(idx)
                if page is None:
                    page = self._base_page(fd, node, idx)
                out += page[within:within + n]
                pos += n
            return bytes(out)

        def _write(self, fd: int, node: _Node, data: bytes, offset: int) -> None:
            pos, end, view = offset, offset + len(data), memoryview(data)
            while pos < end:
                idx, within = divmod(pos, PAGE)
                n = min(PAGE - within, end - pos)
                page = node.pages.get(idx)
                if page is None:
                    page = (bytearray(PAGE) if n == PAGE else self._base_page(fd, node, idx))
                    node.pages[idx] = page
                page[within:within + n] = view[pos - offset:pos - offset + n]
                pos += n
            node.size = max(node.size, end)

        def _truncate(self, node: _Node, length: int) -> None:
            if length < node.size:
                for idx in [i for i in node.pages if i * PAGE >= length]:
                    del node.pages[idx]
                idx, within = divmod(length, PAGE)
                if within and idx in node.pages:
                    node.pages[idx][within:] = bytes(PAGE - within)
                node.low = min(node.low, length)
            node.size = length

        def _flush(self, fd: int) -> None:
            """Write the file's unsynced state to the backing file: the 'disk' now has it."""
            key = self._key(os.fstat(fd))
            node = self.nodes.pop(key, None)
            if node is not None:
                if os.fstat(fd).st_size > node.low:
                    os.ftruncate(fd, node.low)
                os.ftruncate(fd, node.size)
                for idx, page in sorted(node.pages.items()):
                    n = min(PAGE, node.size - idx * PAGE)
                    if n > 0:
                        os.pwrite(fd, page[:n], idx * PAGE)
            if sync_backing:
                os.fsync(fd)

        def _forget_if_gone(self, key: tuple[int, int] | None, nlink_before: int) -> None:
            """After an unlink or a rename over ``key``: drop its unsynced state when no name
            and no open handle is left (else a new file reusing the inode would inherit it)."""
            if key is not None and nlink_before <= 1 and not self._opened(key):
                self.nodes.pop(key, None)

        def crash(self) -> None:
            """Power loss: every unsynced write, size change and truncation is gone."""
            with self._mutex:
                self.nodes.clear()
                self.crashes += 1

        # -- files --------------------------------------------------------------------------
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            if self._is_control(path):
                now = time.time()
                return {"st_mode": 0o100600, "st_nlink": 1, "st_uid": 0, "st_gid": 0,
                        "st_size": 0, "st_atime": now, "st_mtime": now, "st_ctime": now}
            with self._mutex:
                if fh is not None and fh in self.open_fh:
                    st = os.fstat(fh)
                else:
                    st = os.lstat(self._full(path))
                attrs = {k: getattr(st, k) for k in (
                    "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime",
                    "st_mtime", "st_ctime", "st_blocks", "st_ino")}
                node = self.nodes.get(self._key(st))
                if node is not None:
                    attrs["st_size"] = node.size
                    attrs["st_blocks"] = (node.size + 511) // 512
                return attrs

        def open(self, path: str, flags: int) -> int:
            if self._is_control(path):
                return _CONTROL_FH
            with self._mutex:
                # Always read-write underneath (as root): a sync may come through any handle.
                base = flags & ~(os.O_ACCMODE | os.O_TRUNC | os.O_CREAT | os.O_EXCL
                                 | os.O_APPEND | getattr(os, "O_DIRECT", 0))
                full = self._full(path)
                try:
                    fd = os.open(full, base | os.O_RDWR)
                except PermissionError:  # e.g. a read-only file when not root
                    fd = os.open(full, base | (flags & os.O_ACCMODE))
                key = self._key(os.fstat(fd))
                self.open_fh[fd] = (key, flags)
                if flags & os.O_TRUNC:
                    self._truncate(self._node(fd), 0)
                return fd

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            with self._mutex:
                full = self._full(path)
                fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
                self._chown_to_caller(full)
                key = self._key(os.fstat(fd))
                self.nodes.pop(key, None)  # a brand-new file: nothing may be pending on it
                self.open_fh[fd] = (key, os.O_RDWR)
                return fd

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            if fh == _CONTROL_FH:
                return b""
            with self._mutex:
                key = self.open_fh[fh][0]
                node = self.nodes.get(key)
                if node is None:
                    return os.pread(fh, size, offset)
                return self._read(fh, node, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            if fh == _CONTROL_FH:
                self.crash()
                return len(data)
            with self._mutex:
                node = self._node(fh)
                if self.open_fh[fh][1] & os.O_APPEND:
                    offset = node.size
                self._write(fh, node, data, offset)
                return len(data)

        def truncate(self, path: str, length: int, fh: int | None = None) -> None:
            if self._is_control(path):
                return
            with self._mutex:
                if fh is not None and fh in self.open_fh:
                    self._truncate(self._node(fh), length)
                    return
                fd = os.open(self._full(path), os.O_RDWR)
                try:
                    self._truncate(self._node(fd), length)
                finally:
                    os.close(fd)

        def fsync(self, path: str, datasync: int, fh: int) -> None:
            if fh == _CONTROL_FH:
                return
            with self._mutex:
                self._flush(fh)

        def flush(self, path: str, fh: int) -> None:
            return None  # close(2) writes nothing: only fsync does

        def release(self, path: str, fh: int) -> None:
            if fh == _CONTROL_FH:
                return
            with self._mutex:
                key, _flags = self.open_fh.pop(fh)
                try:
                    if os.fstat(fh).st_nlink == 0 and not self._opened(key):
                        self.nodes.pop(key, None)  # unlinked and now closed: unreachable
                finally:
                    os.close(fh)

        # -- metadata: straight to the backing directory ------------------------------------
        def _lstat_key(self, full: str) -> tuple[tuple[int, int] | None, int]:
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                return None, 0
            return self._key(st), st.st_nlink

        def unlink(self, path: str) -> None:
            if self._is_control(path):
                raise FuseOSError(errno.EPERM)
            with self._mutex:
                full = self._full(path)
                key, nlink = self._lstat_key(full)
                os.unlink(full)
                self._forget_if_gone(key, nlink)

        def rename(self, old: str, new: str) -> None:
            if self._is_control(old) or self._is_control(new):
                raise FuseOSError(errno.EPERM)
            with self._mutex:
                target = self._full(new)
                key, nlink = self._lstat_key(target)
                os.rename(self._full(old), target)
                if key is not None and os.path.isdir(target):
                    key = None  # a directory replaced an empty directory: no file state
                self._forget_if_gone(key, nlink)

        def link(self, target: str, source: str) -> None:
            with self._mutex:
                os.link(self._full(source), self._full(target))

        def symlink(self, target: str, source: str) -> None:
            with self._mutex:
                full = self._full(target)
                os.symlink(source, full)
                self._chown_to_caller(full)

        def readlink(self, path: str) -> str:
            return os.readlink(self._full(path))

        def mkdir(self, path: str, mode: int) -> None:
            with self._mutex:
                full = self._full(path)
                os.mkdir(full, mode)
                self._chown_to_caller(full)

        def rmdir(self, path: str) -> None:
            with self._mutex:
                os.rmdir(self._full(path))

        def mknod(self, path: str, mode: int, dev: int) -> None:
            with self._mutex:
                full = self._full(path)
                os.mknod(full, mode, dev)
                self._chown_to_caller(full)

        def chmod(self, path: str, mode: int) -> None:
            if self._is_control(path):
                raise FuseOSError(errno.EPERM)
            os.chmod(self._full(path), mode)

        def chown(self, path: str, uid: int, gid: int) -> None:
            if self._is_control(path):
                raise FuseOSError(errno.EPERM)
            os.lchown(self._full(path), uid, gid)

        def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
            if self._is_control(path):
                return
            os.utime(self._full(path), times, follow_symlinks=False)

        def access(self, path: str, amode: int) -> None:
            if not self._is_control(path) and not os.path.lexists(self._full(path)):
                raise FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> list[str]:
            return [".", ".."] + os.listdir(self._full(path))

        def fsyncdir(self, path: str, datasync: int, fh: int) -> None:
            return None  # metadata is written through: nothing is pending on a directory

        def statfs(self, path: str) -> dict[str, Any]:
            sv = os.statvfs(self._full(path))
            return {k: getattr(sv, k) for k in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")}

    return LossyFS()


def serve(backing: str, mountpoint: str, *, threads: bool = False,
          sync_backing: bool = False) -> None:
    """Mount a LossyFS of ``backing`` at ``mountpoint`` in the foreground until unmounted."""
    from fuse import FUSE

    os.umask(0)  # the modes the kernel sends already have the caller's umask applied
    options: dict[str, Any] = dict(
        foreground=True, nothreads=not threads, fsname="lossyfs", direct_io=True,
        attr_timeout=0, entry_timeout=0, negative_timeout=0, hard_remove=True)
    if os.geteuid() == 0:
        options.update(allow_other=True, default_permissions=True)
    FUSE(make_operations(backing, sync_backing), mountpoint, **options)


class LossyMount:
    """A LossyFS of ``backing`` mounted at ``mountpoint`` by a child process (``python`` is the
    interpreter, which must have fusepy) for the ``with`` block; every wait bounded by
    ``timeout``. On exit it is unmounted (lazily if busy) and the child reaped or killed."""

    def __init__(self, backing: str, mountpoint: str, *, python: str | None = None,
                 threads: bool = False, sync_backing: bool = False,
                 timeout: float = 30.0) -> None:
        self.backing, self.mountpoint = backing, mountpoint
        self.python = python or sys.executable
        self.threads, self.sync_backing, self.timeout = threads, sync_backing, timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = os.path.join(os.path.dirname(os.path.abspath(mountpoint)),
                                os.path.basename(mountpoint) + ".lossyfs.log")

    def __enter__(self) -> LossyMount:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        command = [self.python, "-I", os.path.abspath(__file__), self.backing, self.mountpoint]
        command += ["--threads"] * self.threads + ["--sync-backing"] * self.sync_backing
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"LossyFS did not mount at {self.mountpoint} "
                                   f"(exit {self.proc.returncode}): {self._log_tail()}")
            time.sleep(_POLL)

    def crash(self) -> None:
        """Power loss: drop every write not yet fsync'd."""
        crash(self.mountpoint)

    def _log_tail(self) -> str:
        try:
            with open(self.log, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the child: pending operations on the mount then fail (ENOTCONN)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        if self.proc is None:
            return
        tool = shutil.which("fusermount") or shutil.which("fusermount3") or "fusermount"
        if os.path.ismount(self.mountpoint):
            if subprocess.run([tool, "-u", self.mountpoint], capture_output=True,
                              timeout=self.timeout).returncode != 0:
                subprocess.run([tool, "-uz", self.mountpoint], capture_output=True,
                               timeout=self.timeout)
        try:
            self.proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        if os.path.ismount(self.mountpoint):  # the child died without unmounting
            subprocess.run([tool, "-uz", self.mountpoint], capture_output=True,
                           timeout=self.timeout)
        self.proc = None


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--threads", action="store_true")
    parser.add_argument("--sync-backing", action="store_true")
    args = parser.parse_args(argv)
    serve(args.backing, args.mountpoint, threads=args.threads, sync_backing=args.sync_backing)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
