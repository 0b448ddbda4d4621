"""Power loss under PostgreSQL on LossyFS: do acknowledged COMMITs survive? (issue #17 item 2)

    /work/venv/bin/python research/lossyfs_pg_experiment.py --fsync on --iterations 8
    /work/venv/bin/python research/lossyfs_pg_experiment.py --fsync off --iterations 8
    /work/venv/bin/python research/lossyfs_pg_experiment.py --baseline   # same load, plain dir

Ad hoc (a prototype for a later ``--mode power-loss --backend postgres``). As root: the data
directory lives on a LossyFS mount (sqlitesaver/torture/lossyfs.py, needs fusepy) and the server
runs as user ``postgres``, as this process's child in its own process group. Each iteration:
one client inserts rows in autocommit (``synchronous_commit=on``) noting every acknowledged
COMMIT, for a random 0.3-1.5 s; then power loss: SIGKILL of the whole process group, wait until
no server process is left, ``crash()`` the file system (every unsynced write is dropped); then
the server is started again (crash recovery) and every acknowledged row must be there, and no
row that was never attempted. Prints one line per iteration and a summary.
"""

from __future__ import annotations

import argparse
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from sqlitesaver.pgcluster import find_bindir  # noqa: E402
from sqlitesaver.torture.lossyfs import LossyMount  # noqa: E402

PG = pwd.getpwnam("postgres")
AS_PG = {"user": PG.pw_uid, "group": PG.pw_gid, "extra_groups": []}


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is left that is not a zombie."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class Server:
    def __init__(self, bindir: str, data: str, sock: str, log: str, settings: dict) -> None:
        self.bindir, self.data, self.sock, self.log, self.settings = (
            bindir, data, sock, log, settings)
        self.proc: subprocess.Popen | None = None
        self.url = f"postgresql://postgres@/postgres?host={sock}"

    def initdb(self) -> float:
        t = time.monotonic()
        subprocess.run([os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres",
                        "-A", "trust", "-E", "UTF8", "--locale=C", "-k"], check=True,
                       stdout=subprocess.DEVNULL, cwd="/", timeout=300, **AS_PG)
        return time.monotonic() - t

    def start(self, timeout: float = 120) -> float:
        """Start and wait until a connection works; returns the seconds that took."""
        command = [os.path.join(self.bindir, "postgres"), "-D", self.data,
                   "-c", "listen_addresses=", "-k", self.sock]
        for k, v in self.settings.items():
            command += ["-c", f"{k}={v}"]
        t = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd="/",
                                         start_new_session=True, **AS_PG)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited {self.proc.returncode}")
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return time.monotonic() - t
            except psycopg.OperationalError:
                if time.monotonic() - t > timeout:
                    raise
                time.sleep(0.02)

    def power_loss(self, fs: LossyMount) -> None:
        pgid = self.proc.pid
        os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while group_alive(pgid):  # a killed backend may still be leaving a FUSE call
            if time.monotonic() > deadline:
                raise RuntimeError("server processes survived SIGKILL")
            time.sleep(0.01)
        fs.crash()
        # With fsync=off the lock file was never synced: a crash leaves it empty and postgres
        # refuses to start ("lock file postmaster.pid is empty"). Remove it as its HINT tells an
        # operator to, so that the run goes on to show what was lost.
        pid_file = os.path.join(self.data, "postmaster.pid")
        if os.path.exists(pid_file) and os.path.getsize(pid_file) == 0:
            os.unlink(pid_file)
            print("  (postmaster.pid was empty after the crash: removed)", flush=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def client(url: str, first: int, acked: list[int], attempted: list[int],
           stop: threading.Event) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            i = first
            while not stop.is_set():
                attempted.append(i)
                conn.execute("INSERT INTO t (id, pad) VALUES (%s, repeat('x', 200))", (i,))
                acked.append(i)  # the COMMIT (autocommit) returned: acknowledged
                i += 1
    except psycopg.Error:
        pass  # the server was killed under us


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    top = tempfile.mkdtemp(prefix="lossyfs-pg-")
    os.chmod(top, 0o755)
    backing, mnt, sock = (os.path.join(top, n) for n in ("backing", "mnt", "sock"))
    for p in (backing, mnt, sock):
        os.mkdir(p, 0o755)
    os.chown(sock, PG.pw_uid, PG.pw_gid)
    settings = {"fsync": args.fsync, "synchronous_commit": "on", "full_page_writes": "on",
                "max_wal_size": "64MB", "checkpoint_timeout": "30s"}
    fs = LossyMount(backing, mnt) if not args.baseline else None
    root = mnt if fs else backing
    server = Server(find_bindir(), os.path.join(root, "pg", "data"), sock,
                    os.path.join(top, "server.log"), settings)
    failures = 0
    try:
        if fs:
            fs.start()
        os.mkdir(os.path.join(root, "pg"), 0o700)
        os.chown(os.path.join(root, "pg"), PG.pw_uid, PG.pw_gid)
        print(f"initdb {server.initdb():.2f} s", flush=True)
        print(f"start {server.start():.2f} s", flush=True)
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
            print("settings", [conn.execute(f"SHOW {k}").fetchone()[0]
                               for k in ("fsync", "synchronous_commit", "full_page_writes")])
        all_acked: set[int] = set()
        all_attempted: set[int] = set()
        next_id = 1
        total_commits = total_seconds = 0.0
        for it in range(args.iterations):
            acked: list[int] = []
            attempted: list[int] = []
            stop = threading.Event()
            th = threading.Thread(target=client, args=(server.url, next_id, acked, attempted,
                                                       stop))
            run_for = rng.uniform(0.3, 1.5)
            th.start()
            time.sleep(run_for)
            if fs:
                t = time.monotonic()
                server.power_loss(fs)
                kill_s = time.monotonic() - t
            else:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait()
                kill_s = 0.0
            th.join(timeout=30)
            total_commits += len(acked)
            total_seconds += run_for
            all_acked.update(acked)
            all_attempted.update(attempted)
            next_id = (max(attempted) + 1) if attempted else next_id
            try:
                recovery = server.start(timeout=args.start_timeout)
            except Exception as exc:  # noqa: BLE001 - reported, it is the result
                print(f"#{it}: {len(acked)} acknowledged in {run_for:.2f} s; RESTART FAILED: "
                      f"{exc!r}", flush=True)
                failures += 1
                break
            with psycopg.connect(server.url, autocommit=True) as conn:
                try:
                    present = {r[0] for r in conn.execute("SELECT id FROM t")}
                except psycopg.errors.UndefinedTable:
                    present = set()
                    conn.execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
                    print(f"#{it}: table t is gone after the crash", flush=True)
            lost = all_acked - present
            phantom = present - all_attempted
            maybe = (set(attempted) - set(acked)) & present
            print(f"#{it}: ran {run_for:.2f} s, {len(acked)} acknowledged "
                  f"({len(acked) / run_for:.0f}/s), kill+crash {kill_s:.3f} s, recovery "
                  f"{recovery:.2f} s; present {len(present)}, LOST {len(lost)}, phantom "
                  f"{len(phantom)}, in-flight present {len(maybe)}", flush=True)
            if lost or phantom:
                failures += 1
                all_acked &= present  # judge later iterations on what survived
        print(f"summary: fsync={args.fsync} baseline={args.baseline} iterations with loss or "
              f"failure: {failures}; acknowledged {len(all_acked)}; mean "
              f"{total_commits / max(total_seconds, 1e-9):.0f} commits/s", flush=True)
    finally:
        server.stop()
        if fs:
            fs.close()
        if args.keep:
            print("kept", top)
        else:
            shutil.rmtree(top, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fsync", choices=("on", "off"), default="on")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--start-timeout", type=float, default=60)
    parser.add_argument("--baseline", action="store_true",
                        help="no LossyFS: a plain directory, SIGKILL only")
    parser.add_argument("--keep", action="store_true")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
