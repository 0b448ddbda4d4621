"""``--mode io-faults``: the library passes the whole I/O-error loop, and the loop catches
deliberately broken error handling (tests/torture_writers.py).

Every run has a fixed seed; failures print the harness output, which names the fault kind, k and
the violation.

SQLite by nature: I/O errors injected through the VFS.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

import sqlitesaver
from sqlitesaver.torture.harness import Options
from sqlitesaver.torture.iofaults import FAULT_KINDS, run_io_faults

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sqlitesaver.__file__)))
WRITERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torture_writers.py")


def test_library_passes_every_fault_kind_to_the_end_of_its_loop(tmp_path):
    report_path = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_ROOT,
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "sqlitesaver.torture", "--mode", "io-faults",
                           "--seed", "4101", "--report", str(report_path)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    report = json.loads(report_path.read_text())
    summary = report["summary"]
    assert summary["verdict"] == "PASS" and summary["violations"] == 0, output
    assert summary["incomplete_loops"] == [], output
    assert set(report["loops"]) == {kind.name for kind in FAULT_KINDS}
    for kind in FAULT_KINDS:
        loop = report["loops"][kind.name]
        # Every k up to the last one injected its fault, and each raised the mapped error.
        assert loop["complete"] and loop["faults"] == loop["steps"] - 1 >= 1, (kind, output)
        assert loop["errors"] == {kind.expected.__name__: loop["faults"]}, (kind, output)
    # The loops reach into the transitions, not only the open: faults hit a transition in
    # flight, and after EIO that transition was found in both states ("maybe committed").
    assert summary["inflight"].get("absent", 0) > 0, output
    assert "PASS (seed 4101)" in output


def run_broken(tmp_path, writer: str, seed: int) -> tuple[int, str, dict]:
    out = io.StringIO()
    options = Options(db=str(tmp_path / "broken.db"), seed=seed, mode="io-faults",
                      iterations=None, writer=f"{WRITERS}:{writer}")  # type: ignore[arg-type]
    status, report = run_io_faults(options, out)
    return status, out.getvalue(), report


@pytest.mark.tooling
def test_an_error_swallowed_by_the_caller_is_reported(tmp_path):
    status, output, report = run_broken(tmp_path, "SwallowsErrors", 4102)
    assert status == 1, output
    (step,) = report["violations"]  # it stops at the first, and keeps the evidence
    assert "no error reached the caller" in " ".join(step["violations"]), output


@pytest.mark.tooling
def test_a_saver_that_does_not_shut_down_after_an_io_error_is_reported(tmp_path):
    status, output, report = run_broken(tmp_path, "KeepsGoingAfterIOError", 4103)
    assert status == 1, output
    (step,) = report["violations"]
    assert step["raised"] == "DatabaseIOError", output
    assert "still usable after DatabaseIOError" in " ".join(step["violations"]), output


@pytest.mark.tooling
def test_a_full_disk_reported_as_an_io_error_is_reported(tmp_path):
    status, output, report = run_broken(tmp_path, "FullDiskAsIOError", 4104)
    assert status == 1, output
    (step,) = report["violations"]
    assert step["kind"].startswith("write-full"), output
    assert "expected DiskFullError, got DatabaseIOError" in " ".join(step["violations"]), output


def test_io_faults_mode_refuses_several_workers(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sqlitesaver.torture", "--mode", "io-faults",
                           "--workers", "2"], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))
    assert proc.returncode == 2 and "one worker" in proc.stderr, proc.stderr
    assert os.listdir(tmp_path) == []
