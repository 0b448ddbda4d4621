"""bench/postgres.py runs end to end on a server and prints every row with its target and
ceiling. The figures are not judged: a benchmark on a shared machine is measured, not asserted
(research/postgres_benchmark.md has a full run's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import postgres  # noqa: E402  (bench/postgres.py)


@pytest.mark.tooling
def test_a_short_run_prints_every_row_beside_its_target_and_ceiling(pg_url, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "run.py"), "--backend", "postgres",
         "--db", pg_url, "--quick", "--seconds", "0.1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for _, title in postgres.ROWS:
        (line,) = [line for line in lines if line.startswith(title)]
        assert ("met" in line) and ("x" in line), line
    report = json.loads(out.read_text())
    assert [row["row"] for row in report["table"]] == [title for _, title in postgres.ROWS]
    assert all(row["ours"] > 0 and row["langgraph"] > 0 and row["ceiling"] > 0
               for row in report["table"]), report["table"]
    contenders = report["facts"]["contenders"]
    assert contenders["langgraph"]["synchronous_commit"] == "on"  # as durable as ours
    assert contenders["sqlitesaver"]["settings"]["synchronous_commit"] == "on"
    assert report["errors"] == {}


def test_a_database_already_holding_tables_is_refused(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.checkpoints (x int)")
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "postgres.py"), "--db", pg_url,
         "--quick"], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode != 0
    assert "public.checkpoints" in done.stderr + done.stdout


@pytest.mark.tooling
def test_the_put_layers_script_prints_every_layer(pg_url):
    """bench/pg_put_layers.py (where a 1-thread put's time goes) runs and prints a row per
    layer with its four figures: it reads the engine's statement from a private attribute,
    which this keeps from rotting unseen."""
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "pg_put_layers.py"), "--db", pg_url,
         "--puts", "5", "--rounds", "1"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for title in ("bare INSERT (ceiling)", "engine statement, pre-encoded", "Saver.put",
                  "adapter put", "LangGraph put"):
        (line,) = [line for line in lines if line.startswith(title)]
        figures = line[len(title):].split()
        assert len(figures) == 4 and float(figures[0]) > 0, line


@pytest.mark.tooling
def test_the_get_layers_script_prints_every_layer(pg_url):
    """bench/pg_get_layers.py (where a get's time goes), with its growth step and a burst:
    a row per layer with its four figures (it reads the engine from a private attribute)."""
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "bench", "pg_get_layers.py"), "--db", pg_url,
         "--gets", "5", "--rounds", "1", "--grow", "12", "--burst", "3"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for title in ("bare SELECT + unpackb", "engine get_rows", "Saver.get", "adapter get_tuple",
                  "LangGraph get_tuple"):
        (line,) = [line for line in lines if line.startswith(title)]
        figures = line[len(title):].split()
        assert len(figures) == 4 and float(figures[0]) > 0, line


def test_a_threads_channel_versions_only_grow_across_rows_and_rounds():
    """Each row and round asks the contender for its put ops anew, on the same LangGraph
    threads (put1 and put8 share thread 0). Their channel versions must go on growing, as a
    graph's do: restarted at 1, LangGraph's blob upsert (ON CONFLICT DO NOTHING) skipped every
    value already stored at that version, and its puts stored no values from the second round
    on while ours stored them whole (session 21)."""
    pytest.importorskip("langgraph.checkpoint.base")

    class Recorder:
        def __init__(self) -> None:
            self.puts: list[tuple[str, str, tuple]] = []

        def put(self, config, checkpoint, metadata, new_versions):
            self.puts.append((config["configurable"]["thread_id"], checkpoint["id"],
                              tuple(sorted(new_versions.items()))))

    contender = postgres.Contender("langgraph", "postgresql://unused", "langgraph")
    contender.saver = recorder = Recorder()
    for threads in (1, 8, 1, 8):  # put1, put8, then the next round's
        for op in contender.ops("put", threads):
            op()
            op()
    by_thread: dict[str, list] = {}
    for thread_id, checkpoint_id, versions in recorder.puts:
        by_thread.setdefault(thread_id, []).append((checkpoint_id, versions))
    assert len(by_thread) == 8 and len(by_thread["langgraph-put-0"]) == 8
    for puts in by_thread.values():
        ids = [checkpoint_id for checkpoint_id, _ in puts]
        assert ids == sorted(set(ids))  # unique, increasing
        versions = [dict(v) for _, v in puts]
        assert all(v.keys() == versions[0].keys() for v in versions)
        for channel in versions[0]:
            seen = [v[channel] for v in versions]
            assert seen == sorted(set(seen)), seen  # never a version again
