"""``python -m sqlitesaver check postgresql://...`` (sqlitesaver/postgres/check.py) on a real
server: the same results and exit codes as for a file, each kind of damage found and named,
nothing written, the password never printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sqlitesaver import Saver, check
from sqlitesaver.postgres import check as pg_check
from sqlitesaver.postgres import schema

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def admin(url: str):
    return psycopg.connect(url, autocommit=True)


def everything(url: str) -> tuple:
    """Every row of ours and the catalog of our schema: what a check must not change."""
    with admin(url) as conn:
        rows = tuple(conn.execute(f"SELECT * FROM sqlitesaver.{table} ORDER BY 1, 2").fetchall()
                     for table in ("checkpoints", "writes", "log", "schema_version"))
        return rows, pg_check.describe_schema(conn)


@pytest.fixture
def filled(pg_url):
    with Saver(pg_url) as saver:
        first = saver.put("t", {"n": 1})
        saver.put("t", {"n": 2}, parent_id=first.checkpoint_id, checkpoint_id="mine")
        saver.put_writes("t", "mine", "task", [("ch", b"\x01"), ("ch", [1, 2])])
        saver.append_log("t", {"event": 1})
    return pg_url


def steps(report) -> dict:
    return {step.name: step.status for step in report.steps}


def test_expected_is_what_the_migrations_create(pg_url):
    """Guards EXPECTED: a migration added without its description fails here (the dump to
    paste is in the message)."""
    with admin(pg_url) as conn:
        schema.migrate(conn, "srv")
        found = pg_check.describe_schema(conn)
    assert found == pg_check.EXPECTED[schema.latest_version()], found


def test_a_healthy_server_is_ok_and_unchanged(filled):
    before = everything(filled)
    report = pg_check.check_server(filled)
    assert report.ok and report.exit_status == 0, check.format_report(report)
    assert steps(report) == {"connect": "ok", "identity": "ok", "server settings": "ok",
                             "schema": "ok", "checksums": "ok", "files": "ok", "invariants": "ok"}
    assert report.payloads_checked == {"checkpoints": 2, "writes": 2, "log": 1}
    assert everything(filled) == before


@pytest.mark.parametrize("damage, step, named", [
    ("UPDATE sqlitesaver.checkpoints SET state = state || '\\x00'::bytea WHERE key = 'mine'",
     "checksums", "checkpoint 'mine' of thread 't'"),
    ("UPDATE sqlitesaver.writes SET idx = 7 WHERE idx = 1", "checksums",
     "pending write ('task', 7)"),
    ("UPDATE sqlitesaver.log SET event = '\\x01'", "checksums", "log event"),
    ("CREATE TRIGGER swallow BEFORE INSERT ON sqlitesaver.checkpoints FOR EACH ROW EXECUTE "
     "FUNCTION suppress_redundant_updates_trigger()", "schema", "trigger checkpoints.swallow"),
    ("DROP INDEX sqlitesaver.checkpoints_by_key", "schema", "index checkpoints_by_key is missing"),
    ("CREATE RULE nothing AS ON INSERT TO sqlitesaver.log DO INSTEAD NOTHING", "schema",
     "rule log.nothing"),
    ("SELECT setval('sqlitesaver.checkpoints_seq', 1)", "invariants",
     "above the largest its sequence has handed out"),
    ("UPDATE sqlitesaver.checkpoints SET parent_seq = 9999, checksum = 0 WHERE key = 'mine'",
     "invariants", "not older than it"),
])
def test_damage_is_found_and_named(filled, damage, step, named):
    with admin(filled) as conn:
        conn.execute(damage)
    before = everything(filled)
    report = pg_check.check_server(filled)
    text = check.format_report(report)
    assert report.exit_status == 1 and steps(report)[step] == "FAILED", text
    assert named in text, text
    assert everything(filled) == before  # the check wrote nothing


def test_not_ours_absent_newer_or_unreachable_is_unusable(pg_url, tmp_path):
    with admin(pg_url) as conn:
        empty = pg_check.check_server(pg_url)
        conn.execute("CREATE SCHEMA sqlitesaver")
        conn.execute("CREATE TABLE sqlitesaver.checkpoints (x int)")
        foreign = pg_check.check_server(pg_url)
        conn.execute("DROP SCHEMA sqlitesaver CASCADE")
        schema.migrate(conn, "srv")
        conn.execute("UPDATE sqlitesaver.schema_version SET version = 99")
        newer = pg_check.check_server(pg_url)
    secret = "pa55-W0rd"
    unreachable = pg_check.check_server(f"postgresql://u:{secret}@/db?host={tmp_path}")
    for report, says in ((empty, "no sqlitesaver tables"), (foreign, "did not create"),
                         (newer, "upgrade sqlitesaver"), (unreachable, "cannot connect")):
        text = check.format_report(report)
        assert report.exit_status == 2 and says in text, text
    assert secret not in check.format_report(unreachable)
    assert foreign.sqlitesaver is False and empty.sqlitesaver is False


def test_the_command_line_checks_a_server_and_a_file_together(filled, tmp_path):
    path = str(tmp_path / "state.db")
    with Saver(path) as saver:
        saver.put("t", {"n": 1})
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-m", "sqlitesaver", "check", filled, path,
                           "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert [db["result"] for db in result["databases"]] == ["ok", "ok"]
    with admin(filled) as conn:
        conn.execute("UPDATE sqlitesaver.log SET checksum = 0")
    done = subprocess.run([sys.executable, "-m", "sqlitesaver", "check", filled],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1 and "FAILED" in done.stdout, done.stdout + done.stderr
