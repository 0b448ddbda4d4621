"""A real LangGraph ``StateGraph`` on the checkpointer, end to end.

The crash test: a graph of five nodes (a, then b and c in parallel, then d, then e) runs with
``durability="sync"`` in a child process. Node c waits until node b's writes are stored (an
Event set when ``put_writes`` returned), tells the parent through a pipe, and blocks; the parent
then SIGKILLs the child: b has finished, c has not. A new process resumes the same thread:
a and b must not run again (a is in the checkpoint, b in its pending writes), c and the rest
must, and the final state must equal that of an uninterrupted run. Every node appends its name
to a log file when it runs, which is how "ran again" is counted.

The interrupt and the async graph run on both engines; the crash test runs on a server in
tests/test_langgraph_postgres.py (with this file's child); the example is written for a file.
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from typing import Annotated

import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from conftest import is_server
from sqlitesaver import check
from sqlitesaver.langgraph import AsyncPostgresSaver, AsyncSqliteSaver, PostgresSaver, SqliteSaver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent('''
    import json, operator, os, sys, threading
    from typing import Annotated
    from typing_extensions import TypedDict
    from langgraph.graph import END, START, StateGraph
    from sqlitesaver.langgraph import PostgresSaver, SqliteSaver

    db, mode, runs_log = sys.argv[1:4]
    Base = PostgresSaver if db.startswith("postgresql://") else SqliteSaver
    ready_fd = int(sys.argv[4]) if mode == "kill" else None
    b_stored = threading.Event()

    class State(TypedDict):
        log: Annotated[list, operator.add]
        total: Annotated[int, operator.add]

    def ran(name):
        fd = os.open(runs_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (name + "\\n").encode())
        os.close(fd)

    def node(name, amount):
        def run(state):
            ran(name)
            if name == "c" and mode == "kill":
                assert b_stored.wait(60), "b's writes were never stored"
                os.write(ready_fd, b"c is running, b is stored\\n")
                threading.Event().wait()  # until SIGKILL
            return {"log": [f"{name}:{len(state['log'])}"], "total": amount}
        return run

    class Checkpointer(Base):
        def put_writes(self, config, writes, task_id, task_path=""):
            super().put_writes(config, writes, task_id, task_path)
            if any(value == ["b:1"] for _, value in writes):  # returned: committed
                b_stored.set()

    builder = StateGraph(State)
    for name, amount in (("a", 1), ("b", 10), ("c", 100), ("d", 1000), ("e", 10000)):
        builder.add_node(name, node(name, amount))
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("a", "c")
    builder.add_edge(["b", "c"], "d")
    builder.add_edge("d", "e")
    builder.add_edge("e", END)

    with Checkpointer.from_conn_string(db) as checkpointer:
        graph = builder.compile(checkpointer=checkpointer)
        config = {"configurable": {"thread_id": "job-1"}}
        start = None if mode == "resume" else {"log": [], "total": 0}
        final = graph.invoke(start, config, durability="sync")
        print(json.dumps({"final": final, "next": list(graph.get_state(config).next)}))
''')


def run_child(db: str, mode: str, runs_log: str, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, db, mode, runs_log, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO), **popen)


def finish(child: subprocess.Popen) -> dict:
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    return json.loads(out)


def runs(path: str) -> Counter:
    with open(path, encoding="utf-8") as f:
        return Counter(f.read().split())


def test_a_run_killed_mid_superstep_resumes_without_redoing_finished_nodes(tmp_path):
    uninterrupted = finish(run_child(str(tmp_path / "clean.db"), "full",
                                     str(tmp_path / "clean-runs.log")))
    assert uninterrupted["next"] == []
    assert uninterrupted["final"] == {"log": ["a:0", "b:1", "c:1", "d:3", "e:4"],
                                      "total": 11111}
    assert runs(str(tmp_path / "clean-runs.log")) == Counter("abcde")

    db, runs_log = str(tmp_path / "crash.db"), str(tmp_path / "crash-runs.log")
    ready_read, ready_write = os.pipe()
    child = run_child(db, "kill", runs_log, str(ready_write), pass_fds=(ready_write,))
    os.close(ready_write)
    with os.fdopen(ready_read, encoding="utf-8") as ready:
        line = ready.readline()  # EOF instead if the child died first
    if not line:
        _, err = child.communicate(timeout=120)
        pytest.fail(f"the child ended before node c was reached: {err}")
    assert line == "c is running, b is stored\n"
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    assert runs(runs_log) == Counter("abc")  # killed with c in progress, d and e not started

    resumed = finish(run_child(db, "resume", runs_log))
    assert resumed == uninterrupted
    # a ran once (in the checkpoint), b once (its writes were pending), c twice (it was
    # killed), d and e once
    assert runs(runs_log) == Counter({"a": 1, "b": 1, "c": 2, "d": 1, "e": 1})
    report = check.check_database(db)
    assert report.ok, check.format_report(report)


# --- in process: interrupts (special writes) and an async graph ----------------------------------

class Ticket(TypedDict, total=False):
    request: str
    approved: str
    done: bool


def approval_graph():
    def ask(state: Ticket) -> Ticket:
        return {"approved": interrupt({"question": f"approve {state['request']}?"})}

    def act(state: Ticket) -> Ticket:
        return {"done": state["approved"] == "yes"}

    builder = StateGraph(Ticket)
    builder.add_node("ask", ask)
    builder.add_node("act", act)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", "act")
    builder.add_edge("act", END)
    return builder


def test_an_interrupt_survives_a_reopen_and_resumes(any_empty_target):
    db = any_empty_target
    Checkpointer = PostgresSaver if is_server(db) else SqliteSaver
    config = {"configurable": {"thread_id": "ticket-7"}}
    with Checkpointer.from_conn_string(db) as checkpointer:
        graph = approval_graph().compile(checkpointer=checkpointer)
        first = graph.invoke({"request": "refund"}, config, durability="sync")
        assert first["__interrupt__"][0].value == {"question": "approve refund?"}
    with Checkpointer.from_conn_string(db) as checkpointer:  # a new process would do the same
        graph = approval_graph().compile(checkpointer=checkpointer)
        assert graph.get_state(config).next == ("ask",)
        final = graph.invoke(Command(resume="yes"), config, durability="sync")
        assert final == {"request": "refund", "approved": "yes", "done": True}
        history = list(graph.get_state_history(config))
        assert history[0].values == final and history[-1].metadata["source"] == "input"


class Order(TypedDict, total=False):
    request: str
    checks: Annotated[list, operator.add]
    approved: str
    done: bool


def review_graph():
    """Async nodes, two of them in parallel, and a static breakpoint before "act" (dynamic
    interrupt() in async code needs Python 3.11; the sync test above covers it)."""
    async def triage(state: Order) -> Order:
        return {"request": state["request"].strip()}

    def check(name: str):
        async def run(state: Order) -> Order:
            return {"checks": [f"{name}:{state['request']}"]}
        return run

    async def act(state: Order) -> Order:
        return {"done": state.get("approved") == "yes"}

    builder = StateGraph(Order)
    builder.add_node("triage", triage)
    builder.add_node("stock", check("stock"))
    builder.add_node("fraud", check("fraud"))
    builder.add_node("act", act)
    builder.add_edge(START, "triage")
    builder.add_edge("triage", "stock")
    builder.add_edge("triage", "fraud")
    builder.add_edge(["stock", "fraud"], "act")
    builder.add_edge("act", END)
    return builder


@pytest.mark.parametrize("durability", ["async", "sync", "exit"])
def test_an_async_graph_runs_on_the_async_saver(any_empty_target, durability):
    db = any_empty_target
    Checkpointer = AsyncPostgresSaver if is_server(db) else AsyncSqliteSaver

    async def main() -> tuple:
        async with Checkpointer.from_conn_string(db) as checkpointer:
            graph = review_graph().compile(checkpointer=checkpointer, interrupt_before=["act"])
            results, lengths = [], []
            for n in range(5):  # several threads, each stopped before "act" and resumed
                config = {"configurable": {"thread_id": f"t{n}"}}
                await graph.ainvoke({"request": f" r{n} "}, config, durability=durability)
                assert (await graph.aget_state(config)).next == ("act",)
                await graph.aupdate_state(config, {"approved": "no" if n % 2 else "yes"},
                                          as_node="fraud")
                results.append(await graph.ainvoke(None, config, durability=durability))
                history = graph.aget_state_history(config)
                lengths.append(len([snapshot async for snapshot in history]))
            return results, lengths

    results, history_lengths = asyncio.run(main())
    assert [r["done"] for r in results] == [True, False, True, False, True]
    assert results[3]["checks"] == ["fraud:r3", "stock:r3"]  # in writes_sort_key order
    assert all(length >= 3 for length in history_lengths), history_lengths
    report = check.check_database(db)
    assert report.ok, check.format_report(report)


def test_the_example_runs_as_documented(tmp_path):
    db = str(tmp_path / "tickets.db")
    done = subprocess.run([sys.executable, os.path.join(REPO, "examples", "langgraph_agent.py"),
                           db], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("paused, asking: {'approve this reply?': '[high]")
    assert lines[1] == "waiting at: ('review',)"
    assert "'reviewed: approved', 'sent']" in lines[2] and "'sent': True" in lines[2]
    assert lines[4] == "after delete_for_runs(['run-1']): 2 checkpoints left"
    assert lines[5].startswith("audit copy after prune(keep_latest): 1 checkpoint, state")
    report = check.check_database(db)
    assert report.ok, check.format_report(report)
