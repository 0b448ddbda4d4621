"""The LangGraph graph both graph-steps benches run, and bench/run.py's worker process for it.

The graph: a ``StateGraph`` chain of ``nodes`` nodes; each appends a message to a state that
also holds 2 KiB of context, so a checkpoint is about 3 KiB. :class:`GraphRun` opens one
checkpointer as its documentation shows (``from_conn_string``), compiles the graph on it and
invokes it, each time on a new thread. bench/langgraph_steps.py drives it from its own worker;
bench/run.py starts this file as a process, one per checkpointer, and also runs the graph from
several threads at once on the one checkpointer (``run`` with ``threads``), as a server does.

Importing this module loads neither SQLite library nor LangGraph; :class:`GraphRun` imports the
one checkpointer it opens. A process must never hold both the stdlib ``sqlite3`` and APSW on a
file (each drops the other's POSIX locks), so every process runs one ``kind``: "sqlitesaver"
(``sqlitesaver.langgraph.SqliteSaver``, APSW) or "langgraph" (``langgraph.checkpoint.sqlite``'s
``SqliteSaver``, stdlib ``sqlite3``), and reports whether the other library got loaded anyway.
A third kind, "memory" (LangGraph's ``InMemorySaver``: no file, no SQLite), is what LangGraph's
own runtime reaches when storing costs next to nothing; a fourth, "bare"
(bench/_bare_checkpointer.py, APSW), is the least a durable checkpointer does: bench/run.py's
ceiling for the graph-steps targets.

Protocol as a process (see :mod:`_common`): ``init`` with ``kind``, ``db``, ``nodes`` and
``full_sync`` -> ``{"installed": false, "error"}`` if LangGraph (or the checkpointer) cannot be
imported, else ``{"installed": true, "facts"}`` after the warm-up; ``run`` with ``durability``,
``until`` and optionally ``threads`` (default 1: invokes from that many threads at once, on the
one checkpointer) -> an Outcome whose ``ops`` are graph steps (nodes x completed invokes);
``cleanup`` -> ``{}`` (the memory kind forgets every thread: it holds them all in memory); ``quit``.
"""

from __future__ import annotations

import itertools
import operator
import sys
from contextlib import nullcontext
from importlib import metadata
from typing import Annotated, Any, TypedDict

from _common import Channel, run_threads, serve

KINDS = ("sqlitesaver", "langgraph", "memory", "bare")
DURABILITIES = ("sync", "async")
CONTEXT = ("The customer wrote about an invoice that lists a service twice; the agent looked "
           "up the contract, the payment history and the open tickets. ") * 16  # ~2 KiB


class State(TypedDict):
    context: str
    messages: Annotated[list, operator.add]


def build_graph(nodes: int) -> Any:
    from langgraph.graph import END, START, StateGraph

    builder = StateGraph(State)
    previous = START
    for n in range(nodes):
        name = f"step{n}"
        builder.add_node(name, lambda state, n=n: {"messages": [f"node {n} saw "
                                                                f"{len(state['messages'])}"]})
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    return builder


def open_checkpointer(kind: str, path: str) -> tuple[Any, dict]:
    """The checkpointer as a context manager, and facts about it to print."""
    if kind == "sqlitesaver":
        import apsw

        from sqlitesaver.langgraph import SqliteSaver
        manager = SqliteSaver.from_conn_string(path)
        return manager, {"apsw": apsw.apsw_version(), "sqlite": apsw.sqlite_lib_version(),
                         "langgraph": metadata.version("langgraph")}
    if kind == "bare":
        import apsw
        from _bare_checkpointer import BareCheckpointer
        return BareCheckpointer(path), {"apsw": apsw.apsw_version(),
                                        "sqlite": apsw.sqlite_lib_version(),
                                        "langgraph": metadata.version("langgraph")}
    if kind == "memory":
        from langgraph.checkpoint.memory import InMemorySaver
        return nullcontext(InMemorySaver()), {
            "langgraph": metadata.version("langgraph"),
            "langgraph-checkpoint": metadata.version("langgraph-checkpoint")}
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver
    # from_conn_string opens sqlite3.connect(path, check_same_thread=False): its saver
    # serializes the threads that share it with its own lock.
    manager = SqliteSaver.from_conn_string(path)
    return manager, {"sqlite": sqlite3.sqlite_version,
                     "langgraph-checkpoint-sqlite": metadata.version(
                         "langgraph-checkpoint-sqlite"),
                     "langgraph": metadata.version("langgraph")}


class GraphRun:
    """One checkpointer of ``kind`` on the file ``path``, and the graph compiled on it; a
    context manager (the checkpointer is closed on exit). Raises ImportError, before opening
    anything, if LangGraph or the checkpointer is not installed.

    ``full_sync``: LangGraph's saver keeps the build's default ``synchronous``; with this set,
    a default below FULL is raised to FULL, so its commits are as durable as sqlitesaver's
    (which is FULL by default: an fsync of the WAL at every commit). Either way the setting in
    force is read back into :attr:`facts`."""

    def __init__(self, kind: str, path: str, nodes: int, *, full_sync: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.kind, self.nodes, self.full_sync = kind, nodes, full_sync
        self.builder = build_graph(nodes)
        self.manager, self.facts = open_checkpointer(kind, path)
        self.threads = itertools.count(1)

    def __enter__(self) -> "GraphRun":
        self.checkpointer = self.manager.__enter__()
        if self.kind == "langgraph":
            conn = self.checkpointer.conn
            default = conn.execute("PRAGMA synchronous").fetchone()[0]
            if self.full_sync and default < 2:
                conn.execute("PRAGMA synchronous=FULL")
            self.facts["synchronous_default"] = default
        self.graph = self.builder.compile(checkpointer=self.checkpointer)
        return self

    def __exit__(self, *exc: object) -> None:
        self.manager.__exit__(*exc)

    def invoke(self, durability: str) -> str:
        """Run the graph once, start to end, on a new thread; return the thread id."""
        thread_id = f"{self.kind}-{next(self.threads)}"
        self.graph.invoke({"context": CONTEXT, "messages": []},
                          {"configurable": {"thread_id": thread_id}}, durability=durability)
        return thread_id

    def forget(self) -> None:
        """The memory kind: drop every thread (it keeps them all in memory, and a run of
        invokes from 8 threads would otherwise hold hundreds of MB); the others keep theirs."""
        if self.kind == "memory":
            for table in (self.checkpointer.storage, self.checkpointer.writes,
                          self.checkpointer.blobs):
                table.clear()

    def warm_up(self) -> dict:
        """One invoke per durability (imports, first pages, the WAL file); then the settings
        in force, the checkpoints one invoke leaves, and whether the process holds the other
        SQLite library, into :attr:`facts` (returned)."""
        for durability in DURABILITIES:
            thread_id = self.invoke(durability)
        self.facts["checkpoints_per_invoke"] = len(list(self.checkpointer.list(
            {"configurable": {"thread_id": thread_id}})))
        if self.kind == "langgraph":
            conn = self.checkpointer.conn
            self.facts["synchronous"] = conn.execute("PRAGMA synchronous").fetchone()[0]
            self.facts["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
            other = "apsw" in sys.modules or "sqlitesaver" in sys.modules
        elif self.kind == "bare":
            conn = self.checkpointer._writer
            self.facts["synchronous"] = conn.execute("PRAGMA synchronous").fetchall()[0][0]
            self.facts["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
            other = "sqlite3" in sys.modules
        elif self.kind == "memory":
            self.facts["synchronous"] = self.facts["journal_mode"] = None
            other = False  # no file: either library would be harmless
            self.facts["sqlite_loaded"] = sorted({"apsw", "sqlite3"} & set(sys.modules))
        else:
            settings = self.checkpointer.saver.settings()["writer"]
            self.facts["synchronous"] = settings["synchronous"]
            self.facts["journal_mode"] = settings["journal_mode"]
            other = "sqlite3" in sys.modules
        self.facts["other_sqlite_loaded"] = other
        return self.facts


def main() -> int:
    channel = Channel.for_worker()
    init = channel.receive()
    if init is None:
        return 0
    try:
        run = GraphRun(init["kind"], init["db"], init["nodes"], full_sync=init["full_sync"])
    except ImportError as exc:
        channel.send({"installed": False, "error": f"{type(exc).__name__}: {exc}"})
        return 0
    nodes = init["nodes"]
    with run:
        channel.send({"installed": True, "facts": run.warm_up()})

        def steps(message: dict[str, Any]) -> dict[str, Any]:
            durability = message["durability"]
            outcome = run_threads([lambda: run.invoke(durability)] * message.get("threads", 1),
                                  until=message["until"])
            outcome.ops *= nodes  # a completed invoke ran every node once: one step each
            return outcome.to_json()

        def cleanup(message: dict[str, Any]) -> dict[str, Any]:
            run.forget()
            return {}

        serve(channel, {"run": steps, "cleanup": cleanup}, lambda: None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
