"""``python -m sqlitesaver.torture --backend postgres --mode power-loss`` (issue #17 item 2): the
owned cluster's data directory on LossyFS, each crash a SIGKILL of every server process and then
the loss of every write not fsync'd. A short PASS with fsync=on, the teeth (fsync=off: an
acknowledged transition lost, or a server that cannot start), and the clean refusals where
LossyFS cannot run. The runs are skipped where LossyFS or PostgreSQL is unavailable; the
refusals run everywhere. Every run has a fixed seed, named in its output."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from sqlitesaver.torture import __main__ as torture_main
from sqlitesaver.torture import lossyfs
from test_torture_postgres import assert_cluster_gone, torture

_WHY_NOT = lossyfs.available()
needs_lossyfs = pytest.mark.skipif(_WHY_NOT is not None,
                                   reason=f"LossyFS cannot run here: {_WHY_NOT}")


@pytest.fixture
def postgres(request) -> None:
    """The server binaries and psycopg: the session cluster's checks (skip locally, fail in
    CI) decide."""
    request.getfixturevalue("pg_cluster")


@pytest.fixture
def workdir():
    """A directory the user ``postgres`` can traverse (the owned cluster and its mount live in
    it), removed afterwards."""
    directory = tempfile.mkdtemp(prefix="pgpowerloss-")
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def assert_unmounted(workdir: str, output: str) -> None:
    """No LossyFS mount left under ``workdir``: this run's (another test's run, on another
    pytest worker, may have its own mounted meanwhile)."""
    root = os.path.realpath(workdir) + os.sep
    with open("/proc/mounts", encoding="utf-8") as f:
        mounts = [line for line in f if line.startswith("lossyfs ")
                  and os.path.realpath(line.split()[1]).startswith(root)]
    assert not mounts, f"LossyFS left mounted: {mounts}\n{output}"


@needs_lossyfs
def test_power_loss_passes_with_fsync_on(postgres, workdir, hang_detector):
    hang_detector(120)
    status, output, report = torture("--backend", "postgres", "--mode", "power-loss",
                                     "--iterations", "3", "--workers", "2", "--seed", "1707",
                                     cwd=workdir)
    assert status == 0, output
    s = report["summary"]
    assert s["verdict"] == "PASS" and s["mode"] == "power-loss", output
    assert s["power_losses"] == 3 and s["failed_starts"] == 0, output
    assert s["lost"] == s["partial"] == s["corrupt"] == s["writer_errors"] == 0, output
    assert s["transitions_acknowledged"] > 0 and s["restart_p50_ms"] > 0, output
    assert report["server"]["fsync"] == "on" and report["options"]["mode"] == "power-loss"
    assert "data directory on LossyFS" in output and "PASS (seed 1707)" in output, output
    assert_cluster_gone(workdir, output)
    assert_unmounted(workdir, output)


@needs_lossyfs
def test_power_loss_with_fsync_off_fails(postgres, workdir, hang_detector):
    # fsync=off: nothing reaches the "disk" but what initdb synced; the first power loss loses
    # every acknowledged transition, or the server cannot start (an empty postmaster.pid,
    # pg_logical files empty). Either is a FAIL.
    hang_detector(120)
    status, output, report = torture("--backend", "postgres", "--mode", "power-loss",
                                     "--iterations", "3", "--workers", "2", "--seed", "1708",
                                     "--server-setting", "fsync=off", cwd=workdir)
    assert status == 1, output
    s = report["summary"]
    assert s["verdict"] == "FAIL", output
    assert s["lost"] >= 1 or s["failed_starts"] >= 1, output
    if s["failed_starts"]:
        assert "could not start after power loss" in output
        assert "last lines of the server log" in output, output
    assert "FAIL (seed 1708)" in output and "--server-setting fsync=off" in output, output
    assert_cluster_gone(workdir, output)
    assert_unmounted(workdir, output)


def test_power_loss_refuses_where_lossyfs_cannot_run(monkeypatch, capsys):
    monkeypatch.setattr(lossyfs, "available", lambda: "/dev/fuse does not exist")
    status = torture_main.main(["--backend", "postgres", "--mode", "power-loss",
                                "--iterations", "1", "--seed", "1"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "LossyFS" in err and "/dev/fuse does not exist" in err, err
    assert "pip install fusepy" in err and "apt-get install fuse3 libfuse2" in err, err
    assert "Traceback" not in err


def test_power_loss_refuses_a_mount_that_fails(postgres, monkeypatch, capsys, tmp_path):
    def fail(self):
        raise RuntimeError("fusermount: mount failed: Operation not permitted")

    monkeypatch.setattr(lossyfs, "available", lambda: None)
    monkeypatch.setattr(lossyfs.LossyMount, "start", fail)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    status = torture_main.main(["--backend", "postgres", "--mode", "power-loss",
                                "--iterations", "1", "--seed", "1"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "the mount failed" in err and "Operation not permitted" in err, err
    assert "pip install fusepy" in err and "Traceback" not in err, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("sqlitesaver-pg-")]


@pytest.mark.parametrize("args, expected", [
    (("--mode", "power-loss", "--db", "postgresql://postgres@/postgres?host=/nowhere"),
     "runs only on a throwaway cluster"),
    (("--mode", "sigkill", "--server-setting", "fsync=off"), "--server-setting sets up"),
    (("--backend", "postgres", "--mode", "power-loss", "--server-setting", "fsync"),
     "takes NAME=VALUE"),
])
def test_power_loss_usage_errors(capsys, args, expected):
    with pytest.raises(SystemExit) as exc:
        torture_main.main(list(args))
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err
