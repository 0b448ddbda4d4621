"""A LangGraph support-ticket graph on sqlitesaver: interrupt, restart, resume, then the thread
maintenance LangGraph's own SQLite saver does not implement (copy_thread, delete_for_runs, prune).

    pip install 'sqlitesaver[langgraph]'
    python examples/langgraph_agent.py [DATABASE]

No model and no network: the nodes are plain functions, so the run is deterministic. The only
sqlitesaver-specific line is the import of SqliteSaver; the rest is LangGraph as documented.
The database defaults to a new file in a temporary directory.
"""

from __future__ import annotations

import operator
import os
import sys
import tempfile
from typing import Annotated

from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from sqlitesaver.langgraph import SqliteSaver  # was: from langgraph.checkpoint.sqlite import ...


class Ticket(TypedDict, total=False):
    messages: Annotated[list[str], operator.add]
    priority: str
    draft: str
    sent: bool


def triage(ticket: Ticket) -> Ticket:
    urgent = any(word in ticket["messages"][0].lower() for word in ("wrong", "broken"))
    return {"priority": "high" if urgent else "normal", "messages": ["triaged"]}


def draft(ticket: Ticket) -> Ticket:
    return {"draft": f"[{ticket['priority']}] We are correcting your invoice today.",
            "messages": ["drafted"]}


def review(ticket: Ticket) -> Ticket:
    # Pauses the run: the question is saved with the checkpoint, and the answer comes back
    # through Command(resume=...), possibly in another process, days later.
    decision = interrupt({"approve this reply?": ticket["draft"]})
    return {"messages": [f"reviewed: {decision}"]}


def send(ticket: Ticket) -> Ticket:
    return {"sent": True, "messages": ["sent"]}


def build() -> StateGraph:
    builder = StateGraph(Ticket)
    for name, step in (("triage", triage), ("draft", draft), ("review", review),
                       ("send", send)):
        builder.add_node(name, step)
    builder.add_edge(START, "triage")
    builder.add_edge("triage", "draft")
    builder.add_edge("draft", "review")
    builder.add_edge("review", "send")
    builder.add_edge("send", END)
    return builder


def main(path: str) -> None:
    first_run = {"configurable": {"thread_id": "ticket-42", "run_id": "run-1"}}
    thread = {"configurable": {"thread_id": "ticket-42"}}

    # 1. Run until the graph asks for a human decision. durability="sync": every checkpoint
    #    is committed (fsynced) before the next step starts.
    with SqliteSaver.from_conn_string(path) as checkpointer:
        graph = build().compile(checkpointer=checkpointer)
        paused = graph.invoke({"messages": ["My invoice is wrong"]}, first_run,
                              durability="sync")
        print("paused, asking:", paused["__interrupt__"][0].value)

    # 2. A new process (here: a new checkpointer on the same file) picks the thread up.
    with SqliteSaver.from_conn_string(path) as checkpointer:
        graph = build().compile(checkpointer=checkpointer)
        print("waiting at:", graph.get_state(thread).next)
        done = graph.invoke(Command(resume="approved"),
                            {"configurable": {**thread["configurable"], "run_id": "run-2"}},
                            durability="sync")
        print("final state:", done)
        history = list(graph.get_state_history(thread))
        print(f"history: {len(history)} checkpoints, newest first:",
              [snapshot.metadata["source"] for snapshot in history])

        # 3. What LangGraph's SqliteSaver leaves unimplemented, each one transaction.
        checkpointer.copy_thread("ticket-42", "ticket-42-audit")  # a full copy, ids kept
        checkpointer.delete_for_runs(["run-1"])   # drop the first run's checkpoints
        print("after delete_for_runs(['run-1']):",
              len(list(checkpointer.list(thread))), "checkpoints left")
        checkpointer.prune(["ticket-42-audit"], strategy="keep_latest")
        audit = {"configurable": {"thread_id": "ticket-42-audit"}}
        print("audit copy after prune(keep_latest):",
              len(list(checkpointer.list(audit))), "checkpoint, state",
              graph.get_state(audit).values)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory() as directory:
            main(os.path.join(directory, "tickets.db"))
