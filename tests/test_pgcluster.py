"""The throwaway PostgreSQL cluster (sqlitesaver/pgcluster.py) that the PostgreSQL engine's tests
and torture runs will use: durable settings, extra settings, a SIGKILL of every server process
that loses no commit, a stop and a close that leave nothing behind. It is driven with psql from
the server's bindir, so these tests need no psycopg; they skip only where no PostgreSQL server
is installed (CI installs one: .ci/run)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from sqlitesaver import pgcluster
from sqlitesaver.pgcluster import Cluster, ClusterError


def _require_server() -> None:
    try:
        pgcluster.find_bindir()
    except ClusterError as exc:
        pytest.skip(f"no PostgreSQL server binaries on this machine: {exc}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One cluster for the module (initdb takes about a second); every test leaves it running."""
    _require_server()
    with Cluster() as running:
        yield running


def psql(cluster: Cluster, sql: str, *target: str) -> str:
    """Run ``sql`` with psql (unaligned, tuples only) and return its output; fail on an error.
    ``target`` replaces the default ``-h <socket dir> -U postgres`` (e.g. the cluster's URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    target = target or ("-h", cluster.socket_dir, "-U", "postgres", "-d", "postgres")
    result = subprocess.run([os.path.join(cluster.bindir, "psql"), "-X", "-At", "-v",
                             "ON_ERROR_STOP=1", *target, "-c", sql],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie holds no memory, file or lock)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _server_processes(cluster: Cluster) -> set[int]:
    """The postmaster and its children, as /proc shows them now."""
    pm = cluster.postmaster_pid()
    assert pm is not None and _alive(pm)
    children = {int(e) for e in os.listdir("/proc") if e.isdigit()
                and (_stat(int(e)) or ["", ""])[1] == str(pm) and _alive(int(e))}
    return {pm} | children


def test_the_server_is_durable_and_checksums_data(cluster):
    for name in ("fsync", "synchronous_commit", "full_page_writes", "data_checksums"):
        assert psql(cluster, f"SHOW {name}") == "on", name
    assert psql(cluster, "SHOW listen_addresses") == ""  # no TCP port: the socket only


def test_url_paths_and_postmaster_pid(cluster):
    assert cluster.url == f"postgresql://postgres@/postgres?host={cluster.socket_dir}"
    assert psql(cluster, "SELECT current_user || ' ' || current_database()",
                cluster.url) == "postgres postgres"
    assert os.path.isfile(os.path.join(cluster.data_dir, "PG_VERSION"))
    assert os.path.exists(os.path.join(cluster.socket_dir, ".s.PGSQL.5432"))
    pm = cluster.postmaster_pid()
    assert pm is not None and cluster.running()
    assert _stat(pm)[1] == str(os.getpid())  # a child of this process: reaped when killed


def test_kill_all_then_start_recovers_every_committed_row(cluster):
    psql(cluster, "CREATE TABLE IF NOT EXISTS survivors (note text)")
    psql(cluster, "INSERT INTO survivors VALUES ('committed before the kill')")
    # A client in the middle of a statement: its backend is killed too, its psql sees it die.
    sleeper = subprocess.Popen([os.path.join(cluster.bindir, "psql"), "-X", "-h",
                                cluster.socket_dir, "-U", "postgres", "-c", "SELECT pg_sleep(600)"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while psql(cluster, "SELECT count(*) FROM pg_stat_activity "
                            "WHERE query = 'SELECT pg_sleep(600)'") != "1":
            assert time.monotonic() < deadline and sleeper.poll() is None, "the sleeper never ran"
        before = _server_processes(cluster)
        killed_pm = cluster.postmaster_pid()
        assert len(before) >= 6  # postmaster, checkpointer, ..., the sleeper's backend
        cluster.kill_all()
        assert [pid for pid in before if _alive(pid)] == []
        assert not cluster.running()
        assert cluster.postmaster_pid() == killed_pm  # its lock file stays: no shutdown ran
        assert sleeper.wait(timeout=60) != 0
    finally:
        sleeper.kill()
        sleeper.wait(timeout=60)
    cluster.start()
    assert cluster.postmaster_pid() != killed_pm
    assert psql(cluster, "SELECT note FROM survivors") == "committed before the kill"
    with open(cluster.log_file, encoding="utf-8", errors="replace") as f:
        assert "not properly shut down; automatic recovery in progress" in f.read()


def test_stop_leaves_no_process_and_start_brings_the_server_back(cluster):
    before = _server_processes(cluster)
    cluster.stop()
    assert [pid for pid in before if _stat(pid) is not None] == []  # reaped, not even zombies
    assert cluster.postmaster_pid() is None and not cluster.running()
    cluster.stop()  # stopping a stopped server does nothing
    cluster.start()
    assert psql(cluster, "SELECT 1") == "1"
    with pytest.raises(ClusterError, match="already running"):
        cluster.start()


def test_extra_settings_take_effect_and_close_after_a_kill_leaves_nothing():
    _require_server()
    with Cluster(settings={"synchronous_commit": "off", "max_connections": "37"}) as other:
        assert psql(other, "SHOW synchronous_commit") == "off"
        assert psql(other, "SHOW max_connections") == "37"
        assert psql(other, "SHOW fsync") == "on"
        with open(os.path.join(other.data_dir, "postmaster.pid"), encoding="utf-8") as f:
            shmid = f.read().splitlines()[6].split()[1]  # "key shmid": the System V segment
        with open(f"/proc/{other.postmaster_pid()}/maps", encoding="utf-8") as f:
            dsm = {line.split()[-1] for line in f if "/dev/shm/PostgreSQL." in line}
        processes = _server_processes(other)
        base = other.socket_dir
        other.kill_all()  # the harshest way out: killed processes free no shared memory
    assert not os.path.exists(base)
    assert [pid for pid in processes if _alive(pid)] == []
    with open("/proc/sysvipc/shm", encoding="utf-8") as f:
        assert shmid not in {line.split()[1] for line in f.readlines()[1:]}
    assert dsm and not any(os.path.exists(path) for path in dsm)


def test_a_missing_server_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SQLITESAVER_PG_BINDIR", str(tmp_path))
    with pytest.raises(ClusterError) as named:
        Cluster()
    assert f"SQLITESAVER_PG_BINDIR={str(tmp_path)!r}" in str(named.value)
    assert "apt-get install postgresql" in str(named.value)
    monkeypatch.delenv("SQLITESAVER_PG_BINDIR")
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config
    monkeypatch.setattr(pgcluster, "DEBIAN_BINDIRS", str(tmp_path / "*" / "bin"))
    with pytest.raises(ClusterError, match=r"not found .*'apt-get install postgresql'"):
        Cluster()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs the user 'postgres'")
def test_root_without_a_postgres_user_is_told_so(monkeypatch):
    _require_server()

    def no_such_user(name: str) -> None:
        raise KeyError(name)

    monkeypatch.setattr(pgcluster.pwd, "getpwnam", no_such_user)
    with pytest.raises(ClusterError, match="no user 'postgres'.*'postgresql' package"):
        with Cluster():
            pass


_DIES_HOLDING_A_CLUSTER = """
import os, sys
from sqlitesaver.pgcluster import Cluster
cluster = Cluster().__enter__()
print(cluster.postmaster_pid(), cluster.socket_dir, flush=True)
sys.stdin.readline()  # the test has looked at the server: die as a hang detector ends a run
os._exit(1)  # no cleanup, no atexit, no finalizer (faulthandler's exit=True does this)
"""


def test_a_process_that_dies_without_closing_its_cluster_leaves_no_server_running():
    _require_server()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, "-c", _DIES_HOLDING_A_CLUSTER],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=repo))
    pid_text, socket_dir = child.stdout.readline().split()
    postmaster = int(pid_text)
    try:
        assert _alive(postmaster)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 1
        deadline = time.monotonic() + 60  # an immediate shutdown takes milliseconds
        while _alive(postmaster) and time.monotonic() < deadline:
            time.sleep(0.01)  # another process's end: nothing to wait on but its /proc entry
        assert not _alive(postmaster), "the orphaned postmaster is still running"
    finally:
        if _alive(postmaster):
            os.kill(postmaster, signal.SIGKILL)
        shutil.rmtree(socket_dir, ignore_errors=True)  # left behind by design (docstring)


def test_a_process_still_exiting_is_waited_for_after_its_working_directory_is_gone(
        monkeypatch, hang_detector):
    # Seen under load (session 27): kill_all returned while a killed backend, no longer shown
    # with a working directory in /proc, was still running. The wait now follows each
    # process it saw, by pid and start time, until it is gone or a zombie. Here a process
    # stands for one: shown once, then hidden while it still runs.
    import threading

    hang_detector(120)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    polls: list[set[int]] = []
    polled_hidden = threading.Event()

    def pids() -> set[int]:
        shown = {child.pid} if not polls else set()
        polls.append(shown)
        if len(polls) >= 3:
            polled_hidden.set()  # the wait went on polling with nothing shown
        return shown
    cluster = Cluster.__new__(Cluster)  # no server: only the wait is under test
    cluster.timeout, cluster.data_dir = 60.0, "(test)"
    monkeypatch.setattr(cluster, "_pids", pids)
    waiter = threading.Thread(target=cluster._wait_gone, args=(time.monotonic() + 60, False))
    waiter.start()
    try:
        assert polled_hidden.wait(30), f"the wait returned while the process ran: {polls}"
        assert waiter.is_alive()
    finally:
        child.kill()
        waiter.join(60)
        child.wait()
    assert not waiter.is_alive()
