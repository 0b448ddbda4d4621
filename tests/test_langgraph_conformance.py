"""LangGraph's own contract suite for checkpointers (``langgraph-checkpoint-conformance``), in
full: the five base capabilities and the three extended ones (copy_thread, delete_for_runs,
prune). Fails if any capability fails, is skipped, or is not detected as implemented.

The suite calls only the async methods; both classes are run, since they share every method
but ``from_conn_string``.
"""

from __future__ import annotations

import asyncio
import itertools
from contextlib import asynccontextmanager

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from sqlitesaver.langgraph import AsyncSqliteSaver, SqliteSaver


@asynccontextmanager
async def _open(kind: type, path: str):
    if kind is AsyncSqliteSaver:
        async with AsyncSqliteSaver.from_conn_string(path) as checkpointer:
            yield checkpointer
    else:
        with SqliteSaver.from_conn_string(path) as checkpointer:
            yield checkpointer


@pytest.mark.parametrize("kind", [AsyncSqliteSaver, SqliteSaver])
def test_conformance_suite_passes_every_capability(tmp_path, kind):
    files = (str(tmp_path / f"suite-{n}.db") for n in itertools.count())

    @checkpointer_test(name=f"sqlitesaver {kind.__name__}")
    async def factory():  # a fresh database for each capability's suite
        async with _open(kind, next(files)) as checkpointer:
            yield checkpointer

    report = asyncio.run(validate(factory))
    results = report.results
    assert set(results) == {capability.value for capability in ALL_CAPABILITIES}
    missing = sorted(name for name, result in results.items() if not result.detected)
    assert not missing, f"capabilities not implemented: {missing}"
    failed = {name: result.failures for name, result in results.items()
              if result.passed is not True}
    assert not failed, failed
    assert all(result.tests_passed > 0 and result.tests_failed == 0
               for result in results.values())
    assert report.conformance_level() == "FULL"
