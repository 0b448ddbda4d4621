"""``--backend postgres --mode power-loss``: server crashes with the page cache lost too.

Like ``--mode server-crash`` (:class:`~sqlitesaver.torture.server.ServerCrashRun`), but the
throwaway cluster's data directory lives on a LossyFS mount (:mod:`.lossyfs`: a FUSE file system
that keeps every write not yet fsync'd in memory), and each crash is a power loss:

1. every server process is SIGKILLed (as in server-crash), and the run waits until all are gone;
2. the file system drops every write not fsync'd (:meth:`LossyMount.crash`);
3. the server is started again (crash recovery); one that cannot start is a FAIL, with the tail
   of its log;
4. the same oracle as server-crash: every acknowledged transition present and whole, a COMMIT
   cut off by the crash "maybe committed".

The socket directory and the server log stay outside the mount. Needs Linux, ``/dev/fuse``,
fusepy (over libfuse 2) and fusermount; where they are missing, or the mount fails, the mode
refuses with :data:`HOW_TO_GET_IT` (:class:`LossyFSUnavailable`).

Not modelled (see lossyfs.py): lost directory entries (an unsynced create or rename survives),
torn writes inside one synced file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from .. import pgcluster
from . import lossyfs
from .writers import signals_deferred
from .server import OwnedServer, ServerCrashRun, handle_termination

__all__ = ["HOW_TO_GET_IT", "LossyFSUnavailable", "LossyCluster", "PowerLossServer",
           "PowerLossRun", "unavailable", "power_loss_server"]

#: What a machine needs for the mode, said whenever it cannot run.
HOW_TO_GET_IT = ("to get it: pip install fusepy (into this Python), apt-get install fuse3 "
                 "libfuse2, and run as root with /dev/fuse present (in a container: "
                 "--device /dev/fuse --cap-add SYS_ADMIN)")
#: Seconds for each wait of the cluster: initdb takes 6-14 s on LossyFS, a restart after a
#: power loss 1.5-4 s (the startup fsync of every file goes through Python).
TIMEOUT = 120.0


class LossyFSUnavailable(pgcluster.ClusterError):
    """LossyFS cannot run here (no fusepy, /dev/fuse or fusermount), or its mount failed."""


def unavailable() -> str | None:
    """Why the mode cannot run here (:func:`lossyfs.available`), or None."""
    return lossyfs.available()


class LossyCluster(pgcluster.Cluster):
    """A :class:`~sqlitesaver.pgcluster.Cluster` whose data directory is on a LossyFS mount.

    Layout, in one temporary directory (the socket directory, owned by the server's user):
    ``backing/`` (the "disk"), ``mnt/`` (the mount; ``mnt/data`` is the data directory),
    ``server.log`` and the socket. :meth:`close` stops the server, unmounts and only then
    removes the directory."""

    def __init__(self, settings: Mapping[str, str] | None = None, *,
                 timeout: float = TIMEOUT) -> None:
        super().__init__(settings, timeout=timeout)
        self.fs: lossyfs.LossyMount | None = None
        self.backing = self.mountpoint = ""

    def __enter__(self) -> LossyCluster:
        why = unavailable()
        if why is not None:
            raise LossyFSUnavailable(why)
        self.socket_dir = tempfile.mkdtemp(prefix="sqlitesaver-pg-")
        self.backing = os.path.join(self.socket_dir, "backing")
        self.mountpoint = os.path.join(self.socket_dir, "mnt")
        self.data_dir = os.path.join(self.mountpoint, "data")
        self.log_file = os.path.join(self.socket_dir, "server.log")
        try:
            for path in (self.backing, self.mountpoint):
                os.mkdir(path, 0o755)
            owner = self._run_as_postgres()
            self.fs = lossyfs.LossyMount(self.backing, self.mountpoint, timeout=self.timeout)
            try:
                self.fs.start()
            except (RuntimeError, OSError) as exc:
                raise LossyFSUnavailable(f"the mount failed: {exc}") from None
            os.mkdir(self.data_dir, 0o700)  # through the mount: created as root, then chowned
            if owner is not None:
                os.chown(self.data_dir, *owner)
            self._real_data = os.path.realpath(self.data_dir)
            self._initdb()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def power_loss(self) -> None:
        """Drop every write to the data directory not yet fsync'd. Call with no server process
        left (:meth:`kill_all`): a write still queued would otherwise land after it."""
        assert self.fs is not None
        self.fs.crash()

    def close(self) -> None:
        """Stop the server (after a kill it is first started once more, to free its shared
        memory; if it cannot start, what is left is killed), unmount, then remove the
        directory. A stop that fails is raised after the cleanup. Idempotent."""
        if os.getpid() != self._owner or not self.socket_dir:
            return
        error: pgcluster.ClusterError | None = None
        try:
            lock = os.path.join(self.data_dir, "postmaster.pid")
            emptied = False
            if self._proc is not None and not self.running():
                with contextlib.suppress(OSError):
                    if os.path.getsize(lock) == 0:
                        # Left empty by a power loss (fsync=off): postgres refuses it, so the
                        # start below, which frees the shared memory the killed server left
                        # (found by the data directory, not the lock file), could not run.
                        self._wait_gone(time.monotonic() + self.timeout, kill=True)
                        os.unlink(lock)
                        emptied = True
            if self._proc is not None and not self.running() and (
                    emptied or self.postmaster_pid()):
                with contextlib.suppress(pgcluster.ClusterError):  # reported by the run
                    self.start()
            self.stop("fast")
        except pgcluster.ClusterError as exc:
            error = exc
            with contextlib.suppress(pgcluster.ClusterError):
                self.kill_all()
        finally:
            if self.fs is not None:
                self.fs.close()  # unmounts (lazily if busy) and reaps the FUSE process
            if not os.path.ismount(self.mountpoint):
                shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = ""
        if error is not None:
            raise error


class PowerLossServer(OwnedServer):
    """An :class:`OwnedServer` on a :class:`LossyCluster`: :meth:`crash` is a power loss."""

    def __init__(self, settings: Mapping[str, str] | None = None,
                 timeout: float = TIMEOUT) -> None:
        self.cluster = LossyCluster(settings, timeout=timeout)

    def crash(self) -> int:
        """SIGKILL every server process, wait until all are gone (:meth:`OwnedServer.crash`),
        then drop every unsynced write; returns how many processes were killed."""
        killed = super().crash()
        with signals_deferred():
            self.cluster.power_loss()
        return killed


@contextlib.contextmanager
def power_loss_server(out: TextIO, settings: Mapping[str, str] | None = None
                      ) -> Iterator[PowerLossServer]:
    """A :class:`PowerLossServer` for the block, removed at its end (also on SIGTERM/SIGHUP)."""
    with handle_termination():
        started = time.monotonic()
        with PowerLossServer(settings) as server:
            print(f"throwaway PostgreSQL cluster in {server.directory}, data directory on "
                  f"LossyFS at {server.cluster.data_dir} (mount, initdb and start "
                  f"{time.monotonic() - started:.1f} s; removed at the end)", file=out,
                  flush=True)
            yield server


class PowerLossRun(ServerCrashRun):
    """``--backend postgres --mode power-loss``: each iteration is one power loss (see the
    module docstring). The writers are driven exactly as in server-crash (``Options.mode`` is
    ``server-crash``); only the crash, the banner and the summary differ."""

    server: PowerLossServer
    CRASHES = ("power losses (SIGKILL of every server process, then every write not fsync'd "
               "dropped by LossyFS)")
    failed_starts = 0  # restarts after a power loss that failed (each also an error)

    def restart_server(self) -> float | None:
        try:
            return super().restart_server()
        except pgcluster.ClusterError as exc:
            self.failed_starts += 1
            n = len(self.restart_seconds) + 1
            message = f"the server could not start after power loss {n}: {exc}"
            self.errors.append(message)
            self.print(f"{n:>4}/{self.o.iterations}  SERVER DID NOT START after the power "
                       f"loss: {exc}")
            self.stopped = True
            return None

    def extra_summary(self) -> dict[str, Any]:
        summary = super().extra_summary()
        summary["mode"] = "power-loss"
        summary["power_losses"] = len(self.processes_killed)  # a failed start included
        summary["failed_starts"] = self.failed_starts
        return summary

    def extra_rows(self) -> list[tuple[str, Any]]:
        s = self.summary
        rows = [(k, v) for k, v in super().extra_rows() if k != "server crashes"]
        return [("power losses", f"{s['power_losses']} (every server process SIGKILLed, "
                                 f"{s['server_processes_killed_p50']} processes p50, then every "
                                 "unsynced write dropped)"),
                ("server failed to start", s["failed_starts"]), *rows]

    def report(self) -> dict[str, Any]:
        report = super().report()
        report["options"]["mode"] = "power-loss"
        return report
