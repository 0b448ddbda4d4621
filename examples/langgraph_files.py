"""A LangGraph graph whose nodes write files, stored with each step's checkpoint (issue #18).

``python examples/langgraph_files.py [DIR]`` (needs ``pip install 'sqlitesaver[langgraph]'``).

The pattern: nodes write into the thread's working directory; the checkpointer snapshots that
directory into every checkpoint it puts, in the checkpoint's own transaction (a subclass of
the adapter's ``SqliteSaver`` that wraps ``put`` in ``saver.transaction()`` and calls
``attach_files(..., workspace=...)``). A checkpoint that says "node b done" then always has the
files node b left, whole; a step that crashed half-way through writing a file has no
checkpoint, and restoring the previous checkpoint's workspace before resuming puts the
directory back as that checkpoint saw it, so the step runs again on the right files.

Run the graph with ``durability="sync"``: then LangGraph stores a step's checkpoint before the
next step's writes, so no write waits for a checkpoint put inside another transaction (with
``"async"`` such early writes wait for their 30 s deadline; see the README's LangGraph
section).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from sqlitesaver.langgraph import SqliteSaver


class WorkspaceSqliteSaver(SqliteSaver):
    """Every checkpoint carries a snapshot of its thread's working directory."""

    def __init__(self, saver: Any, root: str, **kwargs: Any) -> None:
        super().__init__(saver, **kwargs)
        self.root = root

    def workspace(self, thread_id: str) -> str:
        path = os.path.join(self.root, thread_id)
        os.makedirs(path, exist_ok=True)
        return path

    def put(self, config, checkpoint, metadata, new_versions):  # type: ignore[override]
        thread_id = config["configurable"]["thread_id"]
        namespace = config["configurable"].get("checkpoint_ns", "")
        with self.saver.transaction():  # the checkpoint and its files: one COMMIT
            stored = super().put(config, checkpoint, metadata, new_versions)
            self.saver.attach_files(thread_id, checkpoint["id"], namespace=namespace,
                                    workspace=self.workspace(thread_id))
        return stored


class State(TypedDict):
    steps: list[str]


def build(checkpointer: WorkspaceSqliteSaver):
    def node(name: str, content: str):
        def run(state: State, config) -> dict:
            directory = checkpointer.workspace(config["configurable"]["thread_id"])
            with open(os.path.join(directory, f"{name}.md"), "w") as f:
                f.write(content)
            return {"steps": state["steps"] + [name]}
        return run

    builder = StateGraph(State)
    builder.add_node("plan", node("plan", "# Plan\n1. write the report\n"))
    builder.add_node("report", node("report", "# Report\nAll done.\n"))
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "report")
    builder.add_edge("report", END)
    return builder.compile(checkpointer=checkpointer)


def main(base: str) -> None:
    db, root = os.path.join(base, "graph.db"), os.path.join(base, "workspaces")
    config = {"configurable": {"thread_id": "job-1"}}
    with SqliteSaver.from_conn_string(db) as plain:
        checkpointer = WorkspaceSqliteSaver(plain.saver, root)
        graph = build(checkpointer)
        graph.invoke({"steps": []}, config, durability="sync")
        saver = checkpointer.saver
        latest = checkpointer.get_tuple(config).config["configurable"]["checkpoint_id"]
        print("files of the last checkpoint:",
              [f.name for f in saver.list_files("job-1", latest)])
        # A later step crashed half-way through a file: put the directory back as the last
        # checkpoint had it before resuming.
        with open(os.path.join(root, "job-1", "report.md"), "w") as f:
            f.write("# Rep")
        saver.restore_workspace("job-1", os.path.join(root, "job-1"), checkpoint_id=latest)
        with open(os.path.join(root, "job-1", "report.md")) as f:
            print("report.md after restore:", repr(f.read()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
