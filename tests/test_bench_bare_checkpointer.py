"""bench/_bare_checkpointer.py, the ceiling bench/run.py prints the graph-steps targets against.

A ceiling must do the row's work correctly, only less of it: one that acknowledged a put before
its COMMIT, lost a write, or ran the graph to another result would overstate what a durable
checkpointer can reach. So it is held to the guarantee sqlitesaver's adapter gives (a call
returns after its COMMIT; another connection then sees it), and a graph run on it must end in
the same state, history and pending writes as on LangGraph's InMemorySaver. A copy that releases
its callers before COMMIT is kept here and must fail the first test's check.
SQLite by nature: the bench's APSW ceiling."""

from __future__ import annotations

import faulthandler
import operator
import os
import sys
import threading
from typing import Annotated, TypedDict

import apsw
import pytest

pytest.importorskip("langgraph.graph")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
from _bare_checkpointer import (BareCheckpointer,  # noqa: E402  (bench/_bare_checkpointer.py)
                                StatementGroup)

THREADS, PUTS = 6, 30
HANG_SECONDS = 120
pytestmark = pytest.mark.tooling  # a bench baseline: see pyproject.toml


class ReleasesBeforeCommit(StatementGroup):
    """Broken on purpose: every caller of a batch is released before its COMMIT runs."""

    def __init__(self, conn: apsw.Connection) -> None:
        super().__init__(conn)
        self.released = threading.Event()  # set by a caller once it has looked

    def _lead(self) -> None:
        conn = self._conn
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._leading = False
                    return
            conn.execute("BEGIN IMMEDIATE")
            self._run(conn, [entry[0] for entry in batch])
            for entry in batch:
                entry[1].release()  # too early: the COMMIT below has not run
            if len(batch) > 1:
                # Another thread's call is in the batch: let it look before the COMMIT (as a
                # slow fsync would); it sets the Event once it has looked.
                self.released.wait(5)
            conn.execute("COMMIT")


class AcknowledgesBeforeCommit(BareCheckpointer):
    Group = ReleasesBeforeCommit


def _in_threads(target, count: int) -> None:
    """``target(i)`` in ``count`` threads at once, under the hang detector."""
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        faulthandler.cancel_dump_traceback_later()


def _writes_seen_after_return(saver: BareCheckpointer, path: str) -> list[str]:
    """THREADS threads each put PUTS checkpoints and a write for each; after every call
    returns, a connection of the thread's own reads it back. Returns what it did not see."""
    from langgraph.checkpoint.base import empty_checkpoint

    ready = threading.Barrier(THREADS)
    missing: list[str] = []

    def writer(index: int) -> None:
        reader = apsw.Connection(path)  # another connection sees only committed rows
        try:
            ready.wait()
            for n in range(PUTS):
                thread_id = f"w{index}-{n}"
                checkpoint = empty_checkpoint()
                config = saver.put({"configurable": {"thread_id": thread_id,
                                                     "checkpoint_ns": ""}},
                                   checkpoint, {"step": n}, {})
                if reader.execute("SELECT count(*) FROM checkpoints WHERE thread_id = ?",
                                  (thread_id,)).fetchall() != [(1,)]:
                    missing.append(f"checkpoint of {thread_id}")
                if isinstance(saver, AcknowledgesBeforeCommit):
                    saver._group.released.set()  # looked: the broken leader may COMMIT now
                saver.put_writes(config, [("channel", n)], "task")
                if reader.execute("SELECT count(*) FROM writes WHERE thread_id = ?",
                                  (thread_id,)).fetchall() != [(1,)]:
                    missing.append(f"write of {thread_id}")
                if isinstance(saver, AcknowledgesBeforeCommit):
                    saver._group.released.set()
        finally:
            reader.close()

    _in_threads(writer, THREADS)
    return missing


def test_every_put_and_write_is_committed_when_the_call_returns(tmp_path):
    path = str(tmp_path / "bare.db")
    with BareCheckpointer(path) as saver:
        assert _writes_seen_after_return(saver, path) == []
        assert saver._writer.execute("PRAGMA synchronous").fetchall() == [(2,)]  # FULL
        assert saver._writer.execute("PRAGMA journal_mode").fetchall() == [("wal",)]


def test_the_check_catches_a_ceiling_that_acknowledges_before_commit(tmp_path):
    path = str(tmp_path / "broken.db")
    with AcknowledgesBeforeCommit(path) as saver:
        missing = _writes_seen_after_return(saver, path)
    assert missing, "a ceiling releasing its callers before COMMIT went unnoticed"


class State(TypedDict):
    messages: Annotated[list, operator.add]


def _graph():
    from langgraph.graph import END, START, StateGraph

    builder = StateGraph(State)
    builder.add_node("a", lambda state: {"messages": ["a"]})
    builder.add_node("b", lambda state: {"messages": ["b"]})  # a and b run in one step
    builder.add_node("c", lambda state: {"messages": [f"c saw {len(state['messages'])}"]})
    builder.add_edge(START, "a")
    builder.add_edge(START, "b")
    builder.add_edge("a", "c")
    builder.add_edge("b", "c")
    builder.add_edge("c", END)
    return builder


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_graphs_on_many_threads_end_as_on_langgraphs_in_memory_saver(tmp_path, durability):
    from langgraph.checkpoint.memory import InMemorySaver

    def run(checkpointer) -> dict:
        graph = _graph().compile(checkpointer=checkpointer)
        results: dict = {}

        def invoke(index: int) -> None:
            config = {"configurable": {"thread_id": f"t{index}"}}
            graph.invoke({"messages": [f"start {index}"]}, config, durability=durability)
            history = [(s.values, s.next, s.metadata["step"])
                       for s in graph.get_state_history(config)]
            results[index] = (graph.get_state(config).values, history)

        _in_threads(invoke, 8)
        return results

    with BareCheckpointer(str(tmp_path / "graph.db")) as bare:
        ours = run(bare)
    expected = run(InMemorySaver())
    assert len(ours) == 8 and ours == expected
    assert ours[0][0]["messages"] == ["start 0", "a", "b", "c saw 3"]


def test_bench_graph_cpu_reports_every_checkpointer_and_durability(tmp_path):
    """bench/graph_cpu.py, short: one round, one invoke per thread (figures not meaningful)."""
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(repo, "bench", "graph_cpu.py"),
                           "--rounds", "1", "--invokes", "1", "--threads", "2",
                           "--dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=repo))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line.split("|")[1:3] for line in done.stdout.splitlines()
            if line.startswith("| ") and "checkpointer" not in line]
    assert sorted((kind.strip(), durability.strip()) for kind, durability in rows) == sorted(
        (kind, durability) for kind in ("sqlitesaver", "langgraph", "bare", "memory")
        for durability in ("sync", "async"))


def test_bench_graph_instructions_counts_garbage_per_invoke():
    """bench/graph_instructions.py's measured process, in its garbage mode (its valgrind
    runs are too slow for the suite): it runs the graphs and reports per invoke; through
    sqlitesaver's adapter, no reference cycles (tests/test_reference_cycles.py)."""
    import json
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(repo, "bench", "graph_instructions.py"),
                           "--child", "sqlitesaver", "async", "2", "2", "garbage"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=repo))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    facts = json.loads(done.stdout.splitlines()[-1])
    assert len(facts["collections_per_invoke"]) == 3
    assert facts["cyclic_garbage_per_invoke"] == 0, facts
