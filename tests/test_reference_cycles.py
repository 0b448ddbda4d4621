"""No write or read leaves reference cycles behind: garbage that only Python's cyclic GC frees.

Found in session 17 (research/concurrency_benchmark.md, "Session 17"): with 8 graph runs on one
checkpointer, every batch that ran queued jobs (sqlitesaver/sqlite/queue.py) was a cycle
(batch -> its jobs -> each job -> its batch, with each job's closure), and every queued write
that failed (a write arriving before its checkpoint, at each step of LangGraph's async
durability) left its exception in a cycle through the frames of its traceback. The collections
they caused cost a sync graph run ~4% of its instructions and an async one up to ~1 ms per
invoke (a full collection of the whole heap now and then).

Each test runs its calls with the cyclic GC off, then collects with ``DEBUG_SAVEALL`` and
requires nothing found. The calls catch their errors without keeping them (a test that kept an
exception in a local would make a cycle of its own: exception -> traceback -> frame -> local).
"""

from __future__ import annotations

import collections
import gc
import os
import threading
from collections.abc import Callable

import pytest

from test_group_commit import run_batch
import sqlitesaver
from sqlitesaver import CheckpointNotFoundError, Saver, SaverError


def cyclic_garbage(work: Callable[[], None], *, only_ours: bool = False) -> list[str]:
    """The types of the objects ``work()`` left in reference cycles (none, if it left none);
    ``only_ours``: only this library's objects, frames and functions among them."""
    gc.collect()
    debug = gc.get_debug()
    gc.disable()
    try:
        gc.set_debug(debug | gc.DEBUG_SAVEALL)
        work()
        gc.collect()
        found = [type(obj).__qualname__ for obj in gc.garbage
                 if not only_ours or _ours(obj)]
    finally:
        gc.garbage.clear()
        gc.set_debug(debug)
        gc.enable()
    return found


_PACKAGE = os.path.dirname(sqlitesaver.__file__)


def _ours(obj: object) -> bool:
    """An object of this library's classes, or a frame or function of its code."""
    if type(obj).__module__.startswith("sqlitesaver"):
        return True
    code = getattr(obj, "f_code", None) or getattr(obj, "__code__", None)
    return code is not None and code.co_filename.startswith(_PACKAGE)


def summary(found: list[str]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in collections.Counter(found).most_common(8))


def outcome(call: Callable[[], object]) -> Callable[[], str]:
    """``call`` made to return its error's class name instead of raising it (see above)."""
    def run() -> str:
        try:
            call()
        except SaverError as exc:
            return type(exc).__name__
        return "ok"
    return run


def test_one_thread_reads_and_writes_leave_no_cycles(db_path):
    with Saver(db_path) as saver:
        first = saver.put("t", {"n": 0}).checkpoint_id
        results: list[str] = []

        def work() -> None:
            for i in range(20):
                ref = saver.put("t", {"n": i}, metadata={"step": i}, parent_id=first)
                saver.put_writes("t", ref.checkpoint_id, f"task{i}", [("ch", [i, "x"])])
                saver.get("t")
                list(saver.list("t", limit=5))
                saver.append_log("t", {"i": i})
                list(saver.read_log("t"))
                with saver.transaction():
                    saver.put("u", {"n": i})
                    saver.put_writes("u", saver.get("u").checkpoint_id, "task", [("c", i)])
                results.append(outcome(lambda: saver.put("t", {}, parent_id="0fffffffffffffff"))())
                results.append(outcome(lambda: saver.put_writes("t", "0ffffffffffffffe", "task",
                                                                [("c", 1)]))())
        found = cyclic_garbage(work)
        assert set(results) == {CheckpointNotFoundError.__name__}, results
        assert found == [], f"reference cycles left: {summary(found)}"


def test_queued_writes_and_their_errors_leave_no_cycles(db_path, hang_detector):
    """Writes queued for another thread's batch (run by its leader), one of which fails:
    the batch with its jobs, and the failing job's error, raised in its caller's thread."""
    hang_detector(120)
    with Saver(db_path) as saver:
        base = saver.put("w", {"n": 0}).checkpoint_id
        results: dict = {}

        def work() -> None:
            calls = {f"put{i}": outcome(lambda i=i: saver.put(f"t{i}", {"n": i}))
                     for i in range(4)}
            calls["writes"] = outcome(lambda: saver.put_writes("w", base, "task", [("c", 1)]))
            calls["missing"] = outcome(
                lambda: saver.put_writes("w", "0fffffffffffffff", "task", [("c", 1)]))
            results.update(run_batch(saver, calls, lead_work=lambda: "led"))
        found = cyclic_garbage(work)
        assert results.pop("missing") == CheckpointNotFoundError.__name__, results
        assert results.pop("lead") == "led"
        assert set(results.values()) == {"ok"}, results
        assert found == [], f"reference cycles left: {summary(found)}"


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_graphs_on_many_threads_leave_no_cycles(db_path, hang_detector, durability):
    """LangGraph's own runtime, through the adapter, 4 graph runs at once (under "async"
    writes reach the checkpointer before their checkpoint: the rendezvous and the queued
    writes that fail and wait). LangGraph's runtime leaves cycles of its own with a parallel
    fan-out (its futures), whatever the checkpointer: only this library's objects, frames and
    functions count."""
    pytest.importorskip("langgraph")
    from test_langgraph_load import fan_out_graph

    from sqlitesaver.langgraph import SqliteSaver

    hang_detector(120)
    with SqliteSaver.from_conn_string(db_path) as checkpointer:
        graph = fan_out_graph().compile(checkpointer=checkpointer)
        start = threading.Barrier(4)
        errors: list[str] = []

        def run(worker: int) -> None:
            start.wait()
            try:
                for n in range(3):
                    graph.invoke({"log": [f"in:{worker}"], "total": n},
                                 {"configurable": {"thread_id": f"w{worker}-{n}"}},
                                 durability=durability)
            except Exception as exc:  # kept as text: see the module docstring
                errors.append(f"{type(exc).__name__}: {exc}")

        def work() -> None:
            threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        found = cyclic_garbage(work, only_ours=True)
        assert errors == []
        assert found == [], f"reference cycles left: {summary(found)}"
