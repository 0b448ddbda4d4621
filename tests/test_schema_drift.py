"""A schema changed behind the Saver's back is refused at open and fails the validator (issue
#13, class 6); and what the default ``integrity_check="quick"`` does not see (a damaged index),
as the README documents it.

Each change is made with APSW on a closed database. The Saver must refuse to open it
(SchemaMismatchError naming the object, nothing written, read-only too), and
``python -m sqlitesaver check`` must fail its ``schema`` check naming the object, exit 1.

SQLite by nature: a file's schema (a server's: tests/test_postgres_schema.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import apsw
import pytest

from conftest import family_digest
from sqlitesaver import (CorruptDatabaseError, Saver, SchemaMismatchError, check, schema)
from test_bad_input import child_env, small_db
from test_check import assert_unchanged
from test_damaged_text import set_ff

DRIFT = {
    # change: (statements, what the error names)
    "dropped index": (["DROP INDEX checkpoints_by_thread"],
                      "missing index 'checkpoints_by_thread' (on table 'checkpoints')"),
    "dropped unique index": (["DROP INDEX checkpoints_by_key"],
                             "missing index 'checkpoints_by_key' (on table 'checkpoints')"),
    "index made not unique": (["DROP INDEX checkpoints_by_key",
                               "CREATE INDEX checkpoints_by_key ON checkpoints "
                               "(thread_id, namespace, key) WHERE key IS NOT NULL"],
                              "index 'checkpoints_by_key' (on table 'checkpoints') differs"),
    "index on other columns": (["DROP INDEX log_by_thread",
                                "CREATE INDEX log_by_thread ON log (seq, thread_id)"],
                               "index 'log_by_thread' (on table 'log') differs: it indexes "
                               "(seq, thread_id), not (thread_id, seq)"),
    "extra index": (["CREATE INDEX mine ON checkpoints (created_at)"],
                    "extra index 'mine' (on table 'checkpoints')"),
    "trigger that deletes after insert": (
        ["CREATE TRIGGER vanish AFTER INSERT ON checkpoints BEGIN "
         "DELETE FROM checkpoints WHERE seq = NEW.seq; END"],
        "extra trigger 'vanish' (on table 'checkpoints'): create trigger vanish after insert"),
    "extra view": (["CREATE VIEW latest AS SELECT max(seq) FROM checkpoints"],
                   "extra view 'latest'"),
    "extra table": (["CREATE TABLE notes (x)"], "extra table 'notes'"),
    "added column": (["ALTER TABLE log ADD COLUMN note TEXT"],
                     "table 'log' differs: extra column 'note'"),
    "dropped column": (["ALTER TABLE checkpoints DROP COLUMN parent_key"],
                       "table 'checkpoints' differs: missing column 'parent_key'"),
    "renamed column": (["ALTER TABLE writes RENAME COLUMN task_path TO path"],
                       "table 'writes' differs: missing column 'task_path'; extra column 'path'"),
    "dropped table": (["DROP TABLE log"], "missing table 'log'"),
}


def drift(path: str, statements: list[str]) -> None:
    conn = apsw.Connection(path)
    for statement in statements:
        conn.execute(statement)
    conn.close()
    assert not os.path.exists(path + "-wal")


@pytest.mark.parametrize("change", list(DRIFT))
@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_the_saver_refuses_a_changed_schema_and_writes_nothing(db_path, change, readonly):
    small_db(db_path)
    statements, named = DRIFT[change]
    drift(db_path, statements)
    before = family_digest(db_path)
    messages = []
    for _ in range(2):
        with pytest.raises(SchemaMismatchError) as info:
            Saver(db_path, readonly=readonly).close()
        message = str(info.value)
        assert named in message, message
        assert repr(db_path) in message and "nothing was written" in message
        assert "python -m sqlitesaver check" in message and info.value.path == db_path
        messages.append(message)
    assert messages[0] == messages[1]
    assert isinstance(info.value, CorruptDatabaseError)
    assert_unchanged(db_path, before)  # (a read-only open may leave an empty -wal, as SQLite does)


@pytest.mark.parametrize("change", list(DRIFT))
def test_the_validator_fails_a_changed_schema_naming_it(db_path, change):
    small_db(db_path)
    statements, named = DRIFT[change]
    drift(db_path, statements)
    before = family_digest(db_path)
    done = subprocess.run([sys.executable, "-m", "sqlitesaver", "check", "--json", db_path],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    (report,) = json.loads(done.stdout)["databases"]
    found = {c["name"]: c for c in report["checks"]}
    assert found["schema"]["status"] == "failed", found["schema"]
    assert named in found["schema"]["detail"], found["schema"]["detail"]
    assert_unchanged(db_path, before)


def test_a_trigger_that_deletes_after_insert_never_gets_to_lose_a_put(db_path):
    # What the refusal prevents: with the trigger, put() returns an id get() cannot find.
    small_db(db_path)
    drift(db_path, DRIFT["trigger that deletes after insert"][0])
    conn = apsw.Connection(db_path)
    conn.execute("INSERT INTO checkpoints (thread_id, namespace, created_at, state, metadata, "
                 "checksum) VALUES ('t', '', 0, x'01', x'80', 0)")
    assert conn.changes() == 1
    assert conn.execute("SELECT count(*) FROM checkpoints WHERE created_at = 0").fetchone() == (0,)
    conn.close()
    with pytest.raises(SchemaMismatchError, match="extra trigger 'vanish'"):
        Saver(db_path)


def test_the_schema_of_every_version_passes(db_path, monkeypatch):
    for version in range(1, schema.latest_version() + 1):
        path = f"{db_path}.v{version}"
        monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:version])
        Saver(path).close()
        report = check.check_database(path)
        assert report.ok and report.schema_version == version, check.format_report(report)
        monkeypatch.undo()
        with Saver(path) as saver:  # migrates an older one; the check at open passes
            assert saver.recovery.schema_version_found == version
        assert check.check_database(path).ok


def test_comments_whitespace_and_case_do_not_count():
    assert schema.normalize_sql("CREATE  INDEX x ON t ( a , -- why\n b ) /* c */") == \
        schema.normalize_sql("create index x on t(a,b)")
    assert schema.normalize_sql("CREATE TABLE t (a TEXT DEFAULT 'A  b')") != \
        schema.normalize_sql("CREATE TABLE t (a TEXT DEFAULT 'a b')")
    assert schema.normalize_sql('CREATE TABLE "T  x" (a)') != \
        schema.normalize_sql('CREATE TABLE "t x" (a)')


def test_planner_statistics_are_not_schema(db_path):
    small_db(db_path)
    drift(db_path, ["ANALYZE"])
    with Saver(db_path) as saver:
        assert saver.get("t") is not None
    assert check.check_database(db_path).ok


# --- what integrity_check="quick" does not see -----------------------------------------------

def test_a_damaged_index_entry_hides_a_thread_from_quick_but_not_from_full(db_path):
    """Documented next to the option: quick_check does not compare indexes with their
    tables, so an index entry whose thread id is damaged makes that thread look empty."""
    with Saver(db_path) as saver:
        saver.put("THREAD-MARKER", {"n": 1})
        saver.put("u", 2)
    set_ff(db_path, "checkpoints_by_thread", b"THREAD-MARKER")
    before = family_digest(db_path)
    with Saver(db_path) as saver:  # the default, quick: opens
        assert saver.get("THREAD-MARKER") is None
        assert list(saver.list("THREAD-MARKER")) == []
        assert saver.get("u").state == 2
    assert family_digest(db_path) == before
    with pytest.raises(CorruptDatabaseError, match="failed PRAGMA integrity_check"):
        Saver(db_path, integrity_check="full")
    assert family_digest(db_path) == before
    report = check.check_database(db_path)
    assert [s.name for s in report.steps if s.status == check.FAILED] == ["integrity_check"]
    assert_unchanged(db_path, before)
