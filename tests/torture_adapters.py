"""Deliberately broken LangGraph adapters for ``python -m sqlitesaver.torture --langgraph``'s
self-tests (tests/test_torture_langgraph.py).

Each is the library's adapter, reporting to the harness as
:class:`~sqlitesaver.torture.graph_workload.ReportingCheckpointer` does, but breaking the one
rule the harness exists to check: a call is acknowledged only after its COMMIT returned. They
are loaded by the harness's graph child with ``--writer tests/torture_adapters.py:NAME`` and are
never part of the library's normal paths (this file imports LangGraph: keep it apart from
tests/torture_writers.py, which the core torture loads without it).
"""

from __future__ import annotations

from typing import Any

from sqlitesaver.torture.graph_workload import ReportingCheckpointer


class AckPutBeforeCommit(ReportingCheckpointer):
    """Acknowledges a checkpoint before storing it: a kill during the adapter's put (its
    transaction, its fsync) loses a checkpoint LangGraph was told was saved, and resuming
    then runs again nodes of a step that checkpoint had finished. The harness must report
    lost puts (and nodes that ran again)."""

    def put(self, config: dict, checkpoint: dict, metadata: dict, new_versions: dict) -> dict:
        call = self.announce_put(config, checkpoint, metadata)
        self.acknowledge(call)
        return self.store_put(config, checkpoint, metadata, new_versions)


class AckWritesBeforeCommit(ReportingCheckpointer):
    """Acknowledges a task's writes before storing them: a kill during the adapter's
    put_writes loses writes the harness was told were saved. The harness must report lost
    writes."""

    def put_writes(self, config: dict, writes: Any, task_id: str, task_path: str = "") -> None:
        call = self.announce_writes(config, writes, task_id)
        self.acknowledge(call)
        self.store_writes(config, writes, task_id, task_path)


class DropsWrites(ReportingCheckpointer):
    """Acknowledges a task's writes and never stores them (an adapter that swallows an error,
    or keeps writes in memory only): they are lost at every kill, and a run killed after a
    task finished but before the next checkpoint runs that task again on resume. The harness
    must report lost writes and, when a kill lands there, nodes that ran again."""

    def put_writes(self, config: dict, writes: Any, task_id: str, task_path: str = "") -> None:
        self.acknowledge(self.announce_writes(config, writes, task_id))
