"""``python -m sqlitesaver.torture --langgraph``: it passes the adapter, and it catches adapters
that acknowledge before COMMIT (tests/torture_adapters.py).

The subprocess runs are short and seeded; the in-process tests crash a graph run at a chosen
checkpoint (its put raises, as if the process died there) and hand what the writer reported to
the harness's own judgement, so that "ran again" is tested deterministically, not only when a
random kill happens to land between a task's writes and the next checkpoint.

SQLite only: the harness writes database files (a server backend is issue #17's).
"""

from __future__ import annotations

import io
import os
import threading

import pytest

pytest.importorskip("langgraph")

from sqlitesaver.torture.graph_child import load_adapter  # noqa: E402
from sqlitesaver.torture.graph_harness import GraphRun  # noqa: E402
from sqlitesaver.torture.graph_workload import (ReportingCheckpointer, RunSpec,  # noqa: E402
                                                build_graph, reference)
from sqlitesaver.torture.harness import Options  # noqa: E402

from test_torture import _database_line, torture  # noqa: E402

ADAPTERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torture_adapters.py")


# --- the adapter passes ------------------------------------------------------------------------

def test_the_adapter_passes_with_graphs_on_several_threads(tmp_path):
    status, output, report = torture("--langgraph", "--threads", "3", "--iterations", "3",
                                     "--max-interval", "0.4", "--seed", "1501",
                                     cwd=str(tmp_path))
    assert status == 0, output
    summary = report["summary"]
    assert summary["verdict"] == "PASS" and summary["iterations"] == 3, output
    assert summary["puts_acknowledged"] > 0 and summary["writes_acknowledged"] > 0, output
    for violation in ("lost", "partial", "ran_again", "wrong_final_states", "corrupt",
                      "writer_errors"):
        assert summary[violation] == 0, (violation, output)
    assert summary["graph_runs_started"] > 0 and summary["threads"] == 3
    assert report["options"]["langgraph"] is True
    assert report["final"][-1]["phase"] == "final read-back" and report["final"][-1]["ok"]
    assert "torture --langgraph: 3 iterations, 1 worker(s) x 3 threads" in output
    assert "PASS (seed 1501)" in output


# --- broken adapters are caught ------------------------------------------------------------------

@pytest.mark.tooling
@pytest.mark.parametrize("adapter, lost", [("AckPutBeforeCommit", "lost_puts"),
                                           ("AckWritesBeforeCommit", "lost_writes")])
def test_acknowledging_before_commit_is_reported_as_lost(tmp_path, adapter, lost):
    db = str(tmp_path / "broken.db")  # kept on failure: under tmp_path, not in /tmp
    status, output, report = torture("--langgraph", "--threads", "4", "--iterations", "100",
                                     "--max-interval", "0.4", "--seed", "1502", "--db", db,
                                     "--writer", f"{ADAPTERS}:{adapter}", cwd=str(tmp_path))
    assert status == 1, output
    summary = report["summary"]
    assert summary[lost] >= 1 and summary["lost"] == summary[lost], output
    assert summary["partial"] == summary["corrupt"] == summary["writer_errors"] == 0, output
    assert "LOST" in output and "FAIL (seed 1502)" in output
    assert "--langgraph" in output.split("run it again with:")[1]  # the command repeats it
    assert _database_line(output) == db and os.path.exists(db)


def test_langgraph_mode_is_sigkill_only(tmp_path):
    status, output, _ = torture("--langgraph", "--mode", "power-loss", cwd=str(tmp_path))
    assert status == 2 and "usage:" in output, output


# --- the judgement, on a run crashed on purpose ------------------------------------------------

class SimulatedCrash(Exception):
    pass


def _crashed_run(db: str, adapter: type[ReportingCheckpointer], spec: RunSpec,
                 crash_step: int) -> list[dict]:
    """Run ``spec`` through ``adapter`` until the put of the checkpoint of ``crash_step``,
    which raises instead (the process "dies" there); return what the writer reported, in
    order, as the harness would have read it from the pipe."""
    messages: list[dict] = []
    lock = threading.Lock()

    def report(message: dict) -> None:
        with lock:
            messages.append(message)

    class Crashing(adapter):  # type: ignore[valid-type, misc]
        def put(self, config, checkpoint, metadata, new_versions):
            if metadata.get("step") == crash_step:
                raise SimulatedCrash(f"killed before the put of step {crash_step}")
            return super().put(config, checkpoint, metadata, new_versions)

    with Crashing.from_conn_string(db) as checkpointer:
        checkpointer.report = report
        graph = build_graph(lambda thread, node, step, task: report(
            {"m": "node", "t": thread, "n": node, "s": step, "task": task})).compile(
            checkpointer=checkpointer)
        report({"m": "run", "lane": 0, **spec.as_message()})
        with pytest.raises(SimulatedCrash):
            graph.invoke(spec.input(), {"configurable": {"thread_id": spec.thread}},
                         durability=spec.durability)
    return messages


def _judge(db: str, messages: list[dict]):
    harness = GraphRun(Options(db=db, langgraph=True), io.StringIO())
    worker = harness.workers[0]
    for message in messages:
        harness.handle(worker, message)
    assert harness.id_problems == []
    verdict, recovery = harness.verify(worker)
    assert recovery is not None
    return harness, verdict


# The checkpoint of step 2 follows the superstep in which b, c and d ran (step 2 of the tasks):
# crashing before it leaves their writes on the checkpoint of step 1, and a resume from there
# must take them from the pending writes, not run the nodes again. Durability "sync" only: with
# "async" a put that raises does not stop the loop (it runs on, and its later writes wait for
# a checkpoint that never comes), so raising is no stand-in for a kill there; the subprocess
# runs above kill async runs for real.

def test_a_run_crashed_after_its_parallel_tasks_resumes_without_running_them(tmp_path):
    db = str(tmp_path / "crash.db")
    spec = RunSpec("w0-i1.r1", salt=3, rounds=2, size=100, durability="sync")
    messages = _crashed_run(db, ReportingCheckpointer, spec, crash_step=2)
    started = [m["n"] for m in messages if m["m"] == "node"]
    assert sorted(started) == ["a", "b", "c", "d"], started
    harness, verdict = _judge(db, messages)
    assert verdict.ok, verdict
    assert verdict.resumed == 1 and verdict.redone == 0 and not verdict.ran_again
    assert harness.counts["writes acked"] >= 4  # __start__, a, b, c, d (b-d maybe in flight)
    assert reference(spec)["log"][-1].startswith("e:9")


@pytest.mark.tooling
def test_writes_acknowledged_but_not_stored_are_lost_and_their_nodes_run_again(tmp_path):
    db = str(tmp_path / "crash.db")
    spec = RunSpec("w0-i1.r1", salt=5, rounds=1, size=0, durability="sync")
    adapter = load_adapter(f"{ADAPTERS}:DropsWrites")
    messages = _crashed_run(db, adapter, spec, crash_step=2)
    _, verdict = _judge(db, messages)
    assert not verdict.ok
    # every task's writes were dropped: __start__'s, a's (recovered by the checkpoint of
    # step 1, which was stored), and b's, c's and d's, which nothing recovers
    assert len(verdict.lost_writes) == 5, verdict.lost_writes
    ran_again = sorted(line.split("node ")[1][0] for line in verdict.ran_again)
    assert ran_again == ["b", "c", "d"], verdict.ran_again
    assert all("its writes were acknowledged" in line for line in verdict.ran_again)
    assert not verdict.wrong_final  # LangGraph ran them again, so the state is still right
