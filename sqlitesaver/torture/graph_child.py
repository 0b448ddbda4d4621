"""A ``--langgraph`` torture writer process; started by the harness, not by people.

``python -m sqlitesaver.torture.graph_child --db PATH --fd N --worker W --incarnation I
--seed S --durability D [--threads T] [--writer FILE:CLASS]``

It opens one checkpointer (:class:`~sqlitesaver.torture.graph_workload.ReportingCheckpointer`,
or the ``--writer`` subclass of it) with ``from_conn_string``, as an application would, and
shares it between ``T`` threads, as a server shares one checkpointer between its requests.
Each thread runs graph runs one after the other, each on a new LangGraph thread
``w<W>.<L>-i<I>.r<N>`` with a seeded input and durability
(:func:`~sqlitesaver.torture.graph_workload.next_spec`); LangGraph runs each run's parallel
tasks and background puts in threads of its own.

Messages on pipe ``N`` (one atomic frame each, see :mod:`~sqlitesaver.torture.protocol`):
``hello`` once LangGraph is imported (the harness's kill clock starts here), ``ready`` once the
checkpointer is open (recovery done); per run, ``run`` (its spec) before ``invoke`` and
``done`` (its final state's digest) after it returned; ``node`` as each node starts (thread,
node, step, task id); for each ``put`` and ``put_writes``, an ``intent`` before the adapter's
call and an ``ack`` after it returned. A failure ends the process with exit status 3 after an
``error`` message.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
import traceback
from typing import Any

from ..errors import SaverError
from .child import _stamp, child_arguments, load_named, target
from .graph_workload import ReportingCheckpointer, build_graph, next_spec, state_digest
from .protocol import send
from .workload import thread_prefix

__all__ = ["main", "load_adapter"]


def load_adapter(spec: str | None) -> type[ReportingCheckpointer]:
    """``None`` for the library's adapter (reporting), or ``FILE.py:CLASS`` naming a subclass
    of :class:`ReportingCheckpointer` (the harness's self-tests run broken adapters so)."""
    if spec is None:
        return ReportingCheckpointer
    adapter = load_named(spec, "_torture_adapter")
    if not (isinstance(adapter, type) and issubclass(adapter, ReportingCheckpointer)):
        raise ValueError(f"{spec}: {spec.rpartition(':')[2]} is not a subclass of "
                         "sqlitesaver.torture.graph_workload.ReportingCheckpointer")
    return adapter


def main(argv: list[str] | None = None) -> int:
    args = child_arguments("python -m sqlitesaver.torture.graph_child").parse_args(argv)
    args.db = target(args)
    fd = args.fd

    def report(message: dict[str, Any]) -> None:
        send(fd, message)

    report({"m": "hello", "pid": os.getpid()})
    adapter = load_adapter(args.writer)
    started = time.perf_counter()
    try:
        manager = adapter.from_conn_string(args.db, durability=args.durability)
        checkpointer = manager.__enter__()  # never closed: the process ends by SIGKILL
    except SaverError as exc:
        report({"m": "error", "error": f"{type(exc).__name__}: {exc}"[:3000]})
        return 3
    checkpointer.report = report

    def on_start(thread: str, node: str, step: int, task: str) -> None:
        report({"m": "node", "t": thread, "n": node, "s": step, "task": task})

    graph = build_graph(on_start).compile(checkpointer=checkpointer)
    report({"m": "ready", "seconds": time.perf_counter() - started, "db": _stamp(args.db)})
    lanes = [threading.Thread(target=_lane, name=f"lane-{lane}", daemon=True,
                              args=(graph, report, args, lane))
             for lane in range(args.threads)]
    for lane in lanes:
        lane.start()
    for lane in lanes:
        lane.join()  # lanes never end: a kill, or a lane's failure (os._exit), ends the process
    return 1


def _lane(graph: Any, report: Any, args: argparse.Namespace, lane: int) -> None:
    """One writer thread: graph runs one after the other, forever. Whatever ends it ends the
    process: exit status 3 after a Saver error or any other failure of a run."""
    prefix = thread_prefix(args.worker, lane)
    rng = random.Random(f"{args.seed}/{prefix}/{args.incarnation}")
    count = 0
    try:
        while True:
            count += 1
            spec = next_spec(rng, f"{prefix}i{args.incarnation}.r{count}")
            report({"m": "run", "lane": lane, **spec.as_message()})
            final = graph.invoke(spec.input(), {"configurable": {"thread_id": spec.thread}},
                                 durability=spec.durability)
            report({"m": "done", "t": spec.thread, "dg": state_digest(final)})
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        try:
            report({"m": "error", "error": f"{type(exc).__name__}: {exc}"[:3000]})
        finally:
            os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
