"""A throwaway PostgreSQL cluster for the tests and the torture harness.

    with Cluster(settings={"synchronous_commit": "off"}) as cluster:
        ...  # connect to cluster.url: postgresql://postgres@/postgres?host=<socket dir>

Guaranteed: data checksums (``initdb -k``), never ``--no-sync``, and PostgreSQL's durable
defaults (``fsync``, ``synchronous_commit``, ``full_page_writes`` on) changed only by the
caller's ``settings``; no TCP port (a Unix socket in the cluster's own temporary directory);
every wait bounded by ``timeout``, failing with :class:`ClusterError` and the server log's tail;
after the ``with`` block no process, shared memory or file of the cluster is left.

The postmaster is this process's child, not detached by ``pg_ctl``: a killed detached one waits
for PID 1 to reap it (seconds here), its zombie's pid holding the ``postmaster.pid`` lock
against the restart. Started from the main thread, it gets SIGQUIT (an immediate shutdown: it
and its backends exit) if this process dies without closing it, e.g. ended by a test run's hang
detector (``faulthandler`` exits at once, running no cleanup): no server is left running. Its
temporary directory is then left behind; nothing else would know it is unused. As root (which initdb and postgres refuse) both run as the user
``postgres``. Linux only (``/proc``); stdlib only. ``python3 -I sqlitesaver/pgcluster.py``
prints the binaries' directory, or what to install.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import quote

__all__ = ["Cluster", "ClusterError", "find_bindir", "DEBIAN_BINDIRS"]

#: Where Debian's and Ubuntu's packages put each major version's server binaries.
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
_INSTALL = "install PostgreSQL's server (Debian/Ubuntu: 'apt-get install postgresql')"
#: What ``pg_ctl stop -m MODE`` sends (postgresql.org/docs/current/server-shutdown.html).
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_POLL = 0.01  # seconds between two looks at a state awaited under a deadline
_PR_SET_PDEATHSIG = 1  # prctl(2)


def _parent_death_signal() -> Any:
    """A ``preexec_fn`` asking Linux to send the child SIGQUIT when the thread that started it
    ends (``prctl(PR_SET_PDEATHSIG)``), or None where that cannot be had. Looked up here, in
    the parent: the function run in the forked child only calls it. It runs after the child
    took the server user's ids (a change of ids clears the setting), and exits if the parent
    died before it was set."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)
        if os.getppid() != parent:  # the parent died before the setting: nobody would send it
            os._exit(1)
    return die_with_parent


# Not a sqlitesaver.errors.SaverError: errors.py groups what the store's public API raises about
# a database (the file, contention, interruption, the call itself), and a test server failing
# is none of these; a class there would also join the public exception table of the README.
class ClusterError(RuntimeError):
    """The throwaway cluster could not be found, created, started, stopped or killed in time."""


def _has_server(bindir: str) -> bool:
    return all(os.access(os.path.join(bindir, name), os.X_OK) for name in ("initdb", "postgres"))


def find_bindir() -> str:
    """The directory of PostgreSQL's server binaries: ``$SQLITESAVER_PG_BINDIR`` if set, else
    ``pg_config --bindir`` if it holds them (libpq-dev alone brings a pg_config too), else the
    highest version in :data:`DEBIAN_BINDIRS`. Else :class:`ClusterError` says what to install."""
    named = os.environ.get("SQLITESAVER_PG_BINDIR")
    if named:
        if _has_server(named):
            return named
        raise ClusterError(f"SQLITESAVER_PG_BINDIR={named!r} holds no executable initdb and "
                           f"postgres: point it at PostgreSQL's server binaries, or unset it and "
                           f"{_INSTALL}")
    pg_config = shutil.which("pg_config")
    try:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                             timeout=30).stdout.strip() if pg_config else ""
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    if out and _has_server(out):
        return out
    found = [d for d in glob.glob(DEBIAN_BINDIRS) if _has_server(d)]
    if found:
        return max(found, key=lambda d: [int(n) for n in re.findall(r"\d+", d)])
    raise ClusterError(f"PostgreSQL's server binaries (initdb, postgres) were not found in "
                       f"$SQLITESAVER_PG_BINDIR, 'pg_config --bindir' or {DEBIAN_BINDIRS}: "
                       f"{_INSTALL}, or set SQLITESAVER_PG_BINDIR to a directory holding them")


class Cluster:
    """A PostgreSQL cluster in a fresh temporary directory, running for the ``with`` block.

    ``settings`` become ``-c name=value`` options on every start (they win over postgresql.conf
    and ``ALTER SYSTEM``); ``timeout`` bounds each wait (initdb, a start with its recovery, a
    stop, the end of killed processes). The constructor finds the binaries; ``__enter__`` runs
    initdb and starts the server."""

    def __init__(self, settings: Mapping[str, str] | None = None, *,
                 timeout: float = 60.0) -> None:
        self.bindir = find_bindir()
        self.settings = dict(settings or {})
        self.timeout = timeout
        self.socket_dir = self.data_dir = self.log_file = self._real_data = ""  # __enter__
        self._proc: subprocess.Popen[bytes] | None = None  # the postmaster
        self._as_user: dict[str, Any] = {}  # Popen's user/group options, as root
        self._uid = os.geteuid()  # who the server's processes run as
        self._owner = os.getpid()  # a forked child never tears the cluster down

    @property
    def url(self) -> str:
        """``postgresql://postgres@/postgres?host=<socket dir>``: user ``postgres``, trusted."""
        return f"postgresql://postgres@/postgres?host={quote(self.socket_dir, safe='/')}"

    def __enter__(self) -> Cluster:
        self.socket_dir = tempfile.mkdtemp(prefix="sqlitesaver-pg-")
        self.data_dir = os.path.join(self.socket_dir, "data")
        self.log_file = os.path.join(self.socket_dir, "server.log")
        self._real_data = os.path.realpath(self.data_dir)
        try:
            self._run_as_postgres()
            self._initdb()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def _run_as_postgres(self) -> tuple[int, int] | None:
        """As root (which initdb and postgres refuse): run the server as the user ``postgres``,
        owner of the socket directory; return its (uid, gid). None when not root."""
        if os.geteuid() != 0:
            return None
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise ClusterError(
                "running as root, which initdb and postgres refuse, and there is no "
                "user 'postgres' to run them as: install Debian's 'postgresql' package "
                "(it creates the user) or create one ('useradd --system postgres')"
            ) from None
        os.chown(self.socket_dir, user.pw_uid, user.pw_gid)
        self._uid = user.pw_uid
        self._as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        return user.pw_uid, user.pw_gid

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _spawn(self, command: list[str], out: int | IO[bytes],
               preexec: Any = None) -> subprocess.Popen[bytes]:
        """Run ``command`` as the server's user, in its own session (out of reach of the
        terminal's signals), without the PG* variables (PGPORT, PGDATA...) that would change it;
        ``preexec`` runs in the child before it executes ``command``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=self.socket_dir, env=env,
                                start_new_session=True, preexec_fn=preexec, **self._as_user)

    def _initdb(self) -> None:
        command = [os.path.join(self.bindir, "initdb"), "-D", self.data_dir, "-U", "postgres",
                   "-A", "trust", "-E", "UTF8", "--locale=C", "-k"]  # C: whatever LANG says
        proc = self._spawn(command, subprocess.PIPE)
        try:
            output = proc.communicate(timeout=self.timeout)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # initdb and the bootstrap postgres it runs
            output = proc.communicate()[0]
        if proc.returncode != 0:
            who = (f" as user postgres (who must be able to reach {self.socket_dir!r})"
                   if self._as_user else "")
            raise ClusterError(f"initdb failed{who}, exit status {proc.returncode} (timeout "
                               f"{self.timeout} s):\n{output.decode(errors='replace')[-3000:]}")

    def running(self) -> bool:
        """Whether the postmaster this object started is alive."""
        return self._proc is not None and self._proc.poll() is None

    def postmaster_pid(self) -> int | None:
        """The pid in ``postmaster.pid``: the running server's, or a killed one's (its file is
        left behind); None when there is no such file."""
        return self._lock_file()[0]

    def _lock_file(self) -> tuple[int | None, str]:
        """(pid, line 8) of postmaster.pid: "ready" once it accepts connections (pg_ctl -w)."""
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid"), encoding="utf-8") as f:
                lines = f.read().splitlines() + [""] * 8
            return int(lines[0]), lines[7].strip()
        except (OSError, ValueError):  # absent, or being written
            return None, ""

    def start(self) -> None:
        """Start the server and return once it accepts connections, crash recovery included.
        First waits until every process of a previous server is gone (after :meth:`kill_all`,
        or a kill from elsewhere): the lock file of a killed one must name a dead pid."""
        if self.running():
            raise ClusterError(f"the server in {self.data_dir} is already running")
        deadline = time.monotonic() + self.timeout
        self._wait_gone(deadline, kill=False)
        command = [os.path.join(self.bindir, "postgres"), "-D", self.data_dir,
                   "-c", "listen_addresses=", "-k", self.socket_dir]
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        # Only from the main thread: the signal follows the death of the thread that started
        # the server, and a worker thread's end is no reason to stop it.
        preexec = (_parent_death_signal() if threading.current_thread() is threading.main_thread()
                   else None)
        with open(self.log_file, "ab") as log:
            self._proc = proc = self._spawn(command, log, preexec)
        while self._lock_file() != (proc.pid, "ready"):
            if proc.poll() is not None:
                raise ClusterError(f"postgres exited with status {proc.returncode} while "
                                   f"starting{self._log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"postgres (pid {proc.pid}) did not accept connections "
                                   f"within {self.timeout} s{self._log_tail()}")
            time.sleep(_POLL)

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down as ``pg_ctl stop -m MODE`` does: ``smart`` waits for clients
        to leave, ``fast`` disconnects them and writes a checkpoint, ``immediate`` quits at
        once (crash recovery at the next start). Returns once no process of the cluster is left
        (bounded; a straggler is killed). Does nothing if the server is not running."""
        if mode not in _STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(_STOP_SIGNALS)}, not {mode!r}")
        deadline = time.monotonic() + self.timeout
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(_STOP_SIGNALS[mode])
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise ClusterError(f"postgres (pid {proc.pid}) did not stop ({mode}) within "
                                   f"{self.timeout} s{self._log_tail()}") from None
        self._wait_gone(deadline, kill=True)

    def kill_all(self) -> None:
        """SIGKILL the postmaster and every other process of the cluster, as a crash would, and
        return once all are gone (bounded). Nothing is shut down or flushed; :meth:`start`
        then runs crash recovery."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)  # it forks no new backend while we look
        self._wait_gone(time.monotonic() + self.timeout, kill=True)

    def _pids(self) -> set[int]:
        """The cluster's live processes: the server user's whose working directory is the data
        directory (the postmaster's, inherited by its children: found even once reparented after
        a kill). A zombie has none, and holds nothing."""
        found = {self._proc.pid} if self._proc is not None and self._proc.poll() is None else set()
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to look at
                if (entry.isdigit() and int(entry) != os.getpid()
                        and os.stat(f"/proc/{entry}").st_uid == self._uid
                        and os.readlink(f"/proc/{entry}/cwd") == self._real_data):
                    found.add(int(entry))
        return found

    def _wait_gone(self, deadline: float, kill: bool) -> None:
        """Poll until no process of the cluster is left, SIGKILLing them if ``kill``.

        A process is left until it is gone or a zombie. One that is exiting has no working
        directory in /proc any more (so :meth:`_pids` no longer finds it) but still runs, and
        may still hold its files and locks for a while on a loaded machine: each process seen
        is waited for by its pid and start time (never signalled again: its pid may be
        another process's by then), as tests/test_pgcluster.py saw (a killed backend still
        running after kill_all returned, under load)."""
        seen: dict[int, str] = {}  # pid -> start time (field 22 of /proc/<pid>/stat)
        while True:
            pids = self._pids()
            for pid in pids:
                if pid not in seen:
                    started = _start_time(pid)
                    if started is not None:
                        seen[pid] = started
            exiting = {pid for pid, started in seen.items()
                       if pid not in pids and _start_time(pid, running=True) == started}
            if not pids and not exiting:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"processes {sorted(pids | exiting)} of the cluster in "
                                   f"{self.data_dir} are still there after {self.timeout} s"
                                   f"{self._log_tail()}")
            for pid in pids if kill else ():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(_POLL)

    def close(self) -> None:
        """Stop the server (``fast``; SIGKILL if that fails; the error is raised after cleanup)
        and remove the directory. After a kill the server is first started and stopped once more:
        only a postmaster frees what killed ones leave (a System V segment, /dev/shm/PostgreSQL.*).
        Idempotent; does nothing in a forked child."""
        if os.getpid() != self._owner or not self.socket_dir:
            return
        try:
            if self._proc is not None and not self.running() and self.postmaster_pid():
                self.start()  # after a kill: recovery, then a clean stop frees the memory
            self.stop("fast")
        except ClusterError:
            self.kill_all()
            raise
        finally:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = ""

    def _log_tail(self, count: int = 20) -> str:
        try:
            with open(self.log_file, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()[-count:]
        except OSError:
            return f"\n(no server log at {self.log_file})"
        return f"\nlast lines of the server log {self.log_file}:\n" + "\n".join(lines)


def _start_time(pid: int, running: bool = False) -> str | None:
    """The process's start time (field 22 of /proc/<pid>/stat, in clock ticks since boot),
    which with its pid names one process for good; None if there is no such process or, with
    ``running``, if it is a zombie (it holds nothing any more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3
    if running and fields[0] == "Z":
        return None
    return fields[19]


if __name__ == "__main__":
    try:
        print(find_bindir())
    except ClusterError as error:
        sys.exit(str(error))
