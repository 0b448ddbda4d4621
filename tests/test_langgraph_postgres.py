"""LangGraph on PostgreSQL under LangGraph's names (issue #17): ``PostgresSaver`` and
``AsyncPostgresSaver`` with ``from_conn_string``, what they refuse and why, and the crash test of
tests/test_langgraph_graph.py (SIGKILL mid-superstep, then resume) on a real server.
LangGraph's conformance suite runs on both classes in tests/test_langgraph_conformance.py."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import psycopg
import pytest

from sqlitesaver import Saver, check
from sqlitesaver.errors import InvalidArgumentError
from sqlitesaver.langgraph import AsyncPostgresSaver, PostgresSaver, SqliteSaver
from sqlitesaver.postgres import target
from test_langgraph_graph import approval_graph, finish, run_child, runs


def _dsn(url: str) -> str:
    """The same server as a libpq key=value DSN (what LangGraph's docs also accept)."""
    return " ".join(f"{key}={value}" for key, value in target.parse(url).items())


@pytest.mark.parametrize("form", ["url", "dsn"])
def test_from_conn_string_opens_the_server_and_a_graph_resumes_an_interrupt(pg_url, form):
    from langgraph.types import Command

    conn_string = pg_url if form == "url" else _dsn(pg_url)
    config = {"configurable": {"thread_id": "ticket-7"}}
    with PostgresSaver.from_conn_string(conn_string, pipeline=True) as checkpointer:
        checkpointer.setup()
        assert checkpointer.saver.path.startswith("postgresql://")
        graph = approval_graph().compile(checkpointer=checkpointer)
        paused = graph.invoke({"request": "refund"}, config)
        assert paused["__interrupt__"][0].value == {"question": "approve refund?"}
    with PostgresSaver.from_conn_string(conn_string) as checkpointer:  # a new pool: reopened
        graph = approval_graph().compile(checkpointer=checkpointer)
        assert graph.get_state(config).next == ("ask",)
        final = graph.invoke(Command(resume="yes"), config)
        assert final == {"request": "refund", "approved": "yes", "done": True}
        history = list(graph.get_state_history(config))
    steps = [snapshot.metadata["step"] for snapshot in history]
    assert steps == sorted(steps, reverse=True) and steps[-1] == -1, steps
    with psycopg.connect(pg_url) as conn:  # the rows are where the server keeps them
        (count,) = conn.execute("SELECT count(*) FROM sqlitesaver.checkpoints").fetchone()
    assert count == len(history)


def test_the_async_class_runs_concurrent_graphs_and_closes_off_the_loop(pg_url):
    from langgraph.types import Command

    async def main() -> list[dict]:
        async with AsyncPostgresSaver.from_conn_string(pg_url) as checkpointer:
            graph = approval_graph().compile(checkpointer=checkpointer)
            configs = [{"configurable": {"thread_id": f"t{n}"}} for n in range(8)]
            await asyncio.gather(*(graph.ainvoke({"request": f"r{n}"}, config)
                                   for n, config in enumerate(configs)))
            results = await asyncio.gather(*(graph.ainvoke(Command(resume="yes"), config)
                                             for config in configs))
        assert checkpointer.saver._closed
        return results

    results = asyncio.run(asyncio.wait_for(main(), 120))
    assert results == [{"request": f"r{n}", "approved": "yes", "done": True} for n in range(8)]


@pytest.mark.parametrize("kind", [PostgresSaver, AsyncPostgresSaver])
def test_a_psycopg_connection_is_refused_saying_what_to_write(pg_url, kind):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with pytest.raises(InvalidArgumentError) as caught:
            kind(conn)
    message = str(caught.value)
    assert f"{kind.__name__}.from_conn_string(url)" in message
    assert "psycopg" in message and "connection pool" in message


@pytest.mark.parametrize("given", ["checkpoints.db", ":memory:", "", None, 5,
                                   "app:secret@db/agents"])
def test_what_is_not_a_server_is_refused_before_connecting(given):
    with pytest.raises(InvalidArgumentError) as caught:
        with PostgresSaver.from_conn_string(given):
            pytest.fail("opened")
    message = str(caught.value)
    assert "postgresql:// URL" in message and "SqliteSaver.from_conn_string" in message
    assert "secret" not in message


def test_an_unreachable_server_is_a_clear_error_without_the_password(tmp_path):
    from sqlitesaver.errors import CannotOpenError

    url = f"postgresql://app:hunter2@/agents?host={tmp_path}&connect_timeout=2"
    with pytest.raises(CannotOpenError) as caught:
        with PostgresSaver.from_conn_string(url, connect_timeout=2):
            pytest.fail("opened")
    assert "hunter2" not in str(caught.value)
    assert str(tmp_path) in str(caught.value)


def test_a_sqlite_checkpointer_on_a_saver_on_a_server_is_the_same_checkpointer(pg_url):
    # The class names LangGraph's package; the Saver decides the engine.
    with Saver(pg_url) as saver:
        assert type(SqliteSaver(saver)).__mro__[1] is type(PostgresSaver(saver)).__mro__[1]


def test_a_run_killed_mid_superstep_resumes_on_the_server_without_redoing_nodes(tmp_path,
                                                                                pg_url):
    """tests/test_langgraph_graph.py's crash test, its crashed run on a PostgreSQL server (the
    uninterrupted run it is compared with stays on a file: the graph's result is the
    engine's to keep, not to change)."""
    clean = finish(run_child(str(tmp_path / "clean.db"), "full", str(tmp_path / "clean.log")))
    assert clean["next"] == [] and clean["final"]["total"] == 11111

    runs_log = str(tmp_path / "crash.log")
    ready_read, ready_write = os.pipe()
    child = run_child(pg_url, "kill", runs_log, str(ready_write), pass_fds=(ready_write,))
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
    assert runs(runs_log) == Counter("abc")

    resumed = finish(run_child(pg_url, "resume", runs_log))
    assert resumed == clean
    assert runs(runs_log) == Counter({"a": 1, "b": 1, "c": 2, "d": 1, "e": 1})
    report = check.check_database(pg_url)
    assert report.ok, check.format_report(report)
