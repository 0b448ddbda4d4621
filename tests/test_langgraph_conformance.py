"""LangGraph's own contract suite for checkpointers (``langgraph-checkpoint-conformance``), in
full: every capability the installed suite defines, base and extended. Fails if any capability
fails, is skipped, or is not detected as implemented, so a capability a newer suite adds fails
here until the adapter supports it; and the README must name the installed suite's version and
every capability it counts.

The suite calls only the async methods; both classes are run, since they share every method
but ``from_conn_string``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from contextlib import asynccontextmanager
from importlib import metadata

import pytest
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import (BASE_CAPABILITIES,
                                                           EXTENDED_CAPABILITIES, Capability)

from sqlitesaver.langgraph import AsyncSqliteSaver, SqliteSaver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = "langgraph-checkpoint-conformance"


@asynccontextmanager
async def _open(kind: type, path: str):
    if kind is AsyncSqliteSaver:
        async with AsyncSqliteSaver.from_conn_string(path) as checkpointer:
            yield checkpointer
    else:
        with SqliteSaver.from_conn_string(path) as checkpointer:
            yield checkpointer


def _summary(results: dict) -> str:
    """``<suite> <version>: base N of N, extended M of M (names)``: what passed, of what the
    installed suite defines."""
    parts = []
    for group, capabilities in (("base", BASE_CAPABILITIES), ("extended", EXTENDED_CAPABILITIES)):
        names = sorted(capability.value for capability in capabilities)
        passed = [name for name in names if results.get(name) is not None
                  and results[name].passed is True]
        parts.append(f"{group} {len(passed)} of {len(names)}")
    extended = ", ".join(sorted(capability.value for capability in EXTENDED_CAPABILITIES))
    return f"{SUITE} {metadata.version(SUITE)}: {', '.join(parts)} ({extended})"


@pytest.mark.parametrize("kind", [AsyncSqliteSaver, SqliteSaver])
def test_conformance_suite_passes_every_capability(tmp_path, kind):
    files = (str(tmp_path / f"suite-{n}.db") for n in itertools.count())

    @checkpointer_test(name=f"sqlitesaver {kind.__name__}")
    async def factory():  # a fresh database for each capability's suite
        async with _open(kind, next(files)) as checkpointer:
            yield checkpointer

    # Every capability the suite defines, named explicitly: none is left to detection.
    defined = {capability.value for capability in Capability}
    assert defined >= {c.value for c in BASE_CAPABILITIES | EXTENDED_CAPABILITIES}
    report = asyncio.run(validate(factory, capabilities=defined))
    results = report.results
    summary = _summary(results)
    print(f"\n{kind.__name__}: {summary}")  # shown with pytest -s or -rA
    assert set(results) == defined, summary
    missing = sorted(name for name, result in results.items() if not result.detected)
    assert not missing, f"capabilities not implemented: {missing}; {summary}"
    failed = {name: result.failures for name, result in results.items()
              if result.passed is not True}
    assert not failed, (summary, failed)
    assert all(result.tests_passed > 0 and result.tests_failed == 0
               for result in results.values()), summary
    assert report.conformance_level() == "FULL"


def test_the_readme_names_the_installed_suite_and_every_capability_it_counts():
    # The README's "N of N" is about one release of the suite: the one installed here. A newer
    # one (the repository's adds delta_channel_history) fails this until the README says so.
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    (row,) = [line for line in readme.splitlines()
              if line.startswith("| LangGraph's conformance suite")]
    assert f"`{SUITE}` {metadata.version(SUITE)}" in row, row
    counted = re.search(r"base (\d+) of (\d+), extended (\d+) of (\d+): (.*) \|$", row)
    assert counted, row
    base_passed, base_all, passed, extended_all, names = counted.groups()
    assert int(base_passed) == int(base_all) == len(BASE_CAPABILITIES), row
    assert int(passed) == int(extended_all) == len(EXTENDED_CAPABILITIES), row
    assert set(re.findall(r"`(\w+)`", names)) == {c.value for c in EXTENDED_CAPABILITIES}, row


@pytest.mark.parametrize("kind", ["AsyncPostgresSaver", "PostgresSaver"])
def test_conformance_suite_passes_on_postgresql(pg_url, kind):
    """The same suite on PostgreSQL, through the classes named as LangGraph's
    (``from_conn_string`` with the server's URL, issue #17): a fresh schema for each
    capability's suite."""
    import psycopg

    from sqlitesaver import langgraph

    @checkpointer_test(name=f"sqlitesaver {kind}")
    async def factory():
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("DROP SCHEMA IF EXISTS sqlitesaver CASCADE")
        if kind == "AsyncPostgresSaver":
            async with langgraph.AsyncPostgresSaver.from_conn_string(pg_url) as checkpointer:
                yield checkpointer
        else:
            with langgraph.PostgresSaver.from_conn_string(pg_url) as checkpointer:
                checkpointer.setup()  # as LangGraph's docs say to: it must be harmless
                yield checkpointer

    defined = {capability.value for capability in Capability}
    report = asyncio.run(validate(factory, capabilities=defined))
    summary = _summary(report.results)
    print(f"\n{kind}: {summary}")
    assert set(report.results) == defined, summary
    failed = {name: result.failures for name, result in report.results.items()
              if result.passed is not True or not result.detected or result.tests_failed}
    assert not failed, (summary, failed)
    assert report.conformance_level() == "FULL"
