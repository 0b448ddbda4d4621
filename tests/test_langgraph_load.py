"""Many graph runs on one checkpointer at once, the way servers run them (issue #14).

A web server shares one checkpointer between request threads, and async servers ``gather``
several ``ainvoke``. Each test here runs a real ``StateGraph`` with a parallel fan-out (so that
several tasks' writes reach the checkpointer at once) from many threads or tasks on one
checkpointer, under a hang detector (all stacks dumped, the run failed, instead of a silent
hang: the deadlock of issue #14 hung every one of these). After each, every thread's final state
must equal that of the same invocations run alone on LangGraph's ``InMemorySaver``, and its
``get_state_history`` must be complete (the same checkpoints, by step and source) and ordered
(newest first, each one's parent the next one). On both engines (LangGraph's SqliteSaver and
PostgresSaver names); the reference runs alone are on SQLite files for both.
"""

from __future__ import annotations

import asyncio
import operator
import sys
import threading
from typing import Annotated

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from conftest import empty_target, is_server
from sqlitesaver.langgraph import AsyncPostgresSaver, AsyncSqliteSaver, PostgresSaver, SqliteSaver

MODES = ("sync", "async", "exit")
#: (engine, concurrent runs): on a server the middle load only (CI's time: 32 runs cost 10 s).
LOADS = [("sqlite", 2), ("sqlite", 8), ("sqlite", 32), ("postgres", 8)]
HANG_SECONDS = 120


def sync_class(target: str) -> type:
    """LangGraph's name for the engine ``target`` names."""
    return PostgresSaver if is_server(target) else SqliteSaver


def async_class(target: str) -> type:
    return AsyncPostgresSaver if is_server(target) else AsyncSqliteSaver


class State(TypedDict):
    log: Annotated[list, operator.add]
    total: Annotated[int, operator.add]


def _node(name: str, amount: int):
    def run(state: State) -> dict:
        return {"log": [f"{name}:{len(state['log'])}"], "total": amount}
    return run


def _ask(state: State) -> dict:
    answer = interrupt({"question": "go on?", "seen": len(state["log"])})
    return {"log": [f"ask:{answer}"], "total": 7}


def fan_out_graph(*, with_interrupt: bool = False) -> StateGraph:
    """a, then b, c and d in parallel, then e (and ``ask``, which interrupts, before e)."""
    builder = StateGraph(State)
    for name, amount in (("a", 1), ("b", 10), ("c", 100), ("d", 1000), ("e", 10000)):
        builder.add_node(name, _node(name, amount))
    builder.add_edge(START, "a")
    for name in "bcd":
        builder.add_edge("a", name)
    if with_interrupt:
        builder.add_node("ask", _ask)
        builder.add_edge(["b", "c", "d"], "ask")
        builder.add_edge("ask", "e")
    else:
        builder.add_edge(["b", "c", "d"], "e")
    builder.add_edge("e", END)
    return builder


def _inputs(worker: int) -> list:
    """Two invocations per thread id: the second continues the thread's state."""
    return [{"log": [f"in:{worker}"], "total": worker}, {"log": ["again"], "total": 1}]


def _history(graph, config, durability: str) -> list[tuple]:
    """A thread's history, checked to be ordered, as comparable (step, source, next) rows."""
    snapshots = list(graph.get_state_history(config))
    for newer, older in zip(snapshots, snapshots[1:]):
        assert newer.parent_config["configurable"]["checkpoint_id"] == \
            older.config["configurable"]["checkpoint_id"]
        assert newer.metadata["step"] > older.metadata["step"] or \
            older.metadata["step"] == -1 or newer.metadata["source"] == "input"
    assert snapshots[-1].parent_config is None
    return [_row(s, durability) for s in snapshots]


def _row(snapshot, durability: str) -> tuple:
    """A history entry as compared: step, source and ``next``. Not ``next`` under
    ``durability="async"``: there LangGraph serializes a checkpoint in a background thread
    while its loop goes on mutating channel objects the checkpoint shares (a barrier's
    ``seen`` set), so a mid-run checkpoint can list a task that was not yet ready. Measured
    with LangGraph's own ``langgraph.checkpoint.sqlite.aio.AsyncSqliteSaver``: 40 of 40
    threads, as with ours; not this library's doing, and not something a checkpointer's
    ``put``, which runs after the mutation, can undo."""
    row = (snapshot.metadata["step"], snapshot.metadata["source"])
    if durability != "async":
        row += (tuple(snapshot.next),)
    return row


def _reference(durability: str, *, with_interrupt: bool = False) -> dict[int, tuple]:
    """What one worker's thread ends as when run alone, keyed by nothing but the worker
    number's effect on the inputs: (final state, history) for a given worker."""
    cache: dict[int, tuple] = {}

    def of(worker: int) -> tuple:
        if worker not in cache:
            graph = fan_out_graph(with_interrupt=with_interrupt).compile(
                checkpointer=InMemorySaver())
            config = {"configurable": {"thread_id": f"w{worker}"}}
            final = _drive(graph, config, worker, durability, with_interrupt)
            cache[worker] = (final, _history(graph, config, durability))
        return cache[worker]
    return of


def _drive(graph, config, worker: int, durability: str, with_interrupt: bool):
    final = None
    for value in _inputs(worker):
        final = graph.invoke(value, config, durability=durability)
        if with_interrupt:
            assert "__interrupt__" in final, final
            final = graph.invoke(Command(resume=f"yes-{worker}"), config,
                                 durability=durability)
    return final


def _run_threads(checkpointer, n: int, durability: str, *, with_interrupt: bool) -> None:
    graph = fan_out_graph(with_interrupt=with_interrupt).compile(checkpointer=checkpointer)
    start = threading.Barrier(n)
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            start.wait()
            config = {"configurable": {"thread_id": f"w{worker}"}}
            results[worker] = _drive(graph, config, worker, durability, with_interrupt)
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    expected = _reference(durability, with_interrupt=with_interrupt)
    for worker in range(n):
        config = {"configurable": {"thread_id": f"w{worker}"}}
        final, history = expected(worker)
        assert results[worker] == final
        assert graph.get_state(config).values == final
        assert _history(graph, config, durability) == history


@pytest.mark.parametrize("durability", MODES)
@pytest.mark.parametrize("engine, n", LOADS)
def test_threads_invoking_graphs_on_one_checkpointer(engine, n, request, tmp_path, hang_detector,
                                                     durability):
    hang_detector(HANG_SECONDS)
    target = empty_target(engine, request, tmp_path)
    with sync_class(target).from_conn_string(target) as checkpointer:
        _run_threads(checkpointer, n, durability, with_interrupt=False)


@pytest.mark.parametrize("durability", MODES)
def test_interrupts_and_resumes_on_many_threads(any_empty_target, hang_detector, durability):
    hang_detector(HANG_SECONDS)
    with sync_class(any_empty_target).from_conn_string(any_empty_target) as checkpointer:
        _run_threads(checkpointer, 8, durability, with_interrupt=True)


async def _arun(graph, worker: int, durability: str):
    config = {"configurable": {"thread_id": f"w{worker}"}}
    final = None
    for value in _inputs(worker):
        final = await graph.ainvoke(value, config, durability=durability)
    return final


async def _ahistory(graph, worker: int, durability: str) -> list[tuple]:
    config = {"configurable": {"thread_id": f"w{worker}"}}
    snapshots = [s async for s in graph.aget_state_history(config)]
    for newer, older in zip(snapshots, snapshots[1:]):
        assert newer.parent_config["configurable"]["checkpoint_id"] == \
            older.config["configurable"]["checkpoint_id"]
    return [_row(s, durability) for s in snapshots]


@pytest.mark.parametrize("durability", MODES)
@pytest.mark.parametrize("engine, n", LOADS)
def test_gather_of_ainvoke_on_one_async_checkpointer(engine, n, request, tmp_path, hang_detector,
                                                     durability):
    """The reference history here is each worker's invocations run alone on a fresh
    AsyncSqliteSaver: through ``ainvoke`` with ``durability="async"``, LangGraph's own
    ``langgraph.checkpoint.sqlite.aio.AsyncSqliteSaver`` lists the same ``next`` as ours for
    a mid-run checkpoint, and ``InMemorySaver`` another one (measured: 40 of 40 threads
    each), so InMemorySaver is the reference for final states only."""
    hang_detector(HANG_SECONDS)

    async def main() -> tuple[list, dict, dict]:
        target = empty_target(engine, request, tmp_path)
        async with async_class(target).from_conn_string(target) as cp:
            graph = fan_out_graph().compile(checkpointer=cp)
            finals = await asyncio.gather(*(_arun(graph, w, durability) for w in range(n)))
            for worker in range(n):
                config = {"configurable": {"thread_id": f"w{worker}"}}
                assert (await graph.aget_state(config)).values == finals[worker]
            histories = {w: await _ahistory(graph, w, durability) for w in range(n)}
        alone = {}
        for worker in range(n):
            async with AsyncSqliteSaver.from_conn_string(
                    str(tmp_path / f"alone-{worker}.db")) as cp:
                graph = fan_out_graph().compile(checkpointer=cp)
                await _arun(graph, worker, durability)
                alone[worker] = await _ahistory(graph, worker, durability)
        return finals, histories, alone

    finals, histories, alone = asyncio.run(main())
    expected = _reference(durability)
    for worker in range(n):
        assert finals[worker] == expected(worker)[0]
        assert histories[worker] == alone[worker]


@pytest.mark.skipif(sys.version_info < (3, 11), reason=(
    "LangGraph's interrupt() inside ainvoke needs Python 3.11 (asyncio tasks carry the "
    "runnable config in contextvars only from 3.11: 'Called get_config outside of a runnable "
    "context' on 3.10, with LangGraph's own checkpointers too)"))
def test_async_interrupts_and_resumes_gathered(any_empty_target, hang_detector):
    hang_detector(HANG_SECONDS)

    async def main() -> dict:
        async with async_class(any_empty_target).from_conn_string(any_empty_target) as cp:
            graph = fan_out_graph(with_interrupt=True).compile(checkpointer=cp)

            async def run(worker: int):
                config = {"configurable": {"thread_id": f"w{worker}"}}
                final = None
                for value in _inputs(worker):
                    paused = await graph.ainvoke(value, config)
                    assert "__interrupt__" in paused, paused
                    final = await graph.ainvoke(Command(resume=f"yes-{worker}"), config)
                return final

            return dict(enumerate(await asyncio.gather(*(run(w) for w in range(8)))))

    finals = asyncio.run(main())
    expected = _reference("async", with_interrupt=True)
    assert finals == {worker: expected(worker)[0] for worker in range(8)}
