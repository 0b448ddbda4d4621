"""Every setting the README promises, read back from live connections, also after reopen.
SQLite by nature: PRAGMAs (a server's settings read back: tests/test_postgres_connect.py)."""

from __future__ import annotations

import threading

import apsw

import pytest

from sqlitesaver import Saver
from sqlitesaver.pragmas import JOURNAL_SIZE_LIMIT

PROMISED = {
    "full": {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1,
             "journal_size_limit": JOURNAL_SIZE_LIMIT, "busy_timeout": 30000,
             "query_planner_stability": 1},
    "normal": {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1,
               "journal_size_limit": JOURNAL_SIZE_LIMIT, "busy_timeout": 30000,
               "query_planner_stability": 1},
}


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_settings_on_writer_and_reader_also_after_reopen(db_path, durability):
    for _ in range(2):  # create, then reopen
        with Saver(db_path, durability=durability) as saver:
            live = saver.settings()
            assert live["writer"] == PROMISED[durability]
            assert {k: v for k, v in live["reader"].items() if k != "query_only"} == \
                PROMISED[durability]
            assert live["reader"]["query_only"] == 1


def test_default_durability_is_full(db_path):
    with Saver(db_path) as saver:
        assert saver.durability == "full"
        assert saver.settings()["writer"]["synchronous"] == 2


def test_busy_timeout_option_reaches_every_connection(db_path):
    with Saver(db_path, busy_timeout=2.5) as saver:
        live = saver.settings()
        assert live["writer"]["busy_timeout"] == 2500
        assert live["reader"]["busy_timeout"] == 2500


def test_readers_opened_by_other_threads_get_the_profile(db_path):
    with Saver(db_path, durability="normal") as saver:
        results = []
        barrier = threading.Barrier(4)

        def read_settings():
            barrier.wait()  # all four read at once, so several reader connections exist
            results.append(saver.settings()["reader"])

        threads = [threading.Thread(target=read_settings) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 4
        for reader in results:
            assert reader["synchronous"] == 1 and reader["journal_mode"] == "wal"


@pytest.mark.parametrize("integrity_check", ["quick", "full", "off"])
@pytest.mark.parametrize("journal_mode", ["delete", "truncate", "persist", "off"])
def test_a_database_left_in_a_rollback_journal_mode_opens_in_wal(db_path, journal_mode,
                                                                 integrity_check):
    # Another tool (or a restore) may leave our file in a rollback-journal mode. Opening must
    # switch it back to WAL and keep the data; SQLite 3.54 failed the first checkpoint after
    # that switch with SQLITE_LOCKED when an integrity check ran first.
    import apsw
    with Saver(db_path) as saver:
        ref = saver.put("t", {"n": 1})
    conn = apsw.Connection(db_path)
    assert conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchall() == [(journal_mode,)]
    conn.close()
    with Saver(db_path, integrity_check=integrity_check) as saver:
        assert saver.settings()["writer"]["journal_mode"] == "wal"
        assert saver.get("t").checkpoint_id == ref.checkpoint_id
        saver.put("t", {"n": 2})


def test_query_plans_use_the_indexes_with_planner_stability(db_path):
    """QPSG fixes each plan without looking at the bound values: the lookups a Saver runs must
    still be index searches (a scan here would make every get linear in the database)."""
    with Saver(db_path) as saver:
        saver.put("t", {"n": 1})
        saver.put("t", {"n": 2}, checkpoint_id="mine")
        conn = saver._writer
        assert conn.config(apsw.SQLITE_DBCONFIG_ENABLE_QPSG, -1) == 1
        plans = {
            "latest": ("SELECT seq FROM checkpoints WHERE thread_id = ? AND namespace = ? "
                       "ORDER BY seq DESC LIMIT 1", ("t", ""), "checkpoints_by_thread"),
            "by key": ("SELECT seq FROM checkpoints WHERE thread_id = ? AND namespace = ? AND "
                       "key = ?", ("t", "", "mine"), "checkpoints_by_key"),
            "writes": ("SELECT idx FROM writes WHERE checkpoint_seq = ?", (1,), "PRIMARY KEY"),
        }
        for name, (query, params, index) in plans.items():
            detail = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + query,
                                                             params))
            assert "SEARCH" in detail and index in detail, (name, detail)


def test_the_get_statements_search_their_indexes(db_path):
    """Saver.get's own statements (one LEFT JOIN each): every table they touch is searched by
    an index, never scanned, for the latest, a caller-supplied id and a generated id; and their
    ORDER BY (the pending writes in (task_id, idx) order, which the core no longer sorts)
    costs no sort: the writes' primary key already walks them in that order."""
    from sqlitesaver.sqlite import saver as saver_module  # the SQLite engine's statements
    with Saver(db_path) as saver:
        ref = saver.put("t", {"n": 1})
        saver.put("t", {"n": 2}, checkpoint_id="mine")
        saver.put_writes("t", "mine", "task", [("c", 1)])
        conn = saver._writer
        seq = saver_module._parse_id(ref.checkpoint_id)
        for name, query, params in (
                ("latest", saver_module._GET_LATEST, ("t", "")),
                ("by key", saver_module._GET_BY_KEY, ("t", "", "mine")),
                ("by seq", saver_module._GET_BY_SEQ, (seq, "t", ""))):
            steps = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + query, params)]
            assert not any(step.startswith("SCAN") for step in steps), (name, steps)
            assert any("SEARCH w USING PRIMARY KEY" in step for step in steps), (name, steps)
            assert not any("TEMP B-TREE" in step for step in steps), (name, steps)
        assert saver.get("t", "mine").pending_writes[0].value == 1
        assert saver.get("t", ref.checkpoint_id).state == {"n": 1}


def test_the_keyed_put_lookup_searches_its_indexes_and_reads_each_kind_of_parent(db_path):
    """A put with a caller-supplied id looks up its own row, its parent and the next seq in one
    statement (saver_module._KEYED_LOOKUPS): every lookup of checkpoints is an index search,
    whichever kind of parent (none, a caller-supplied id, a generated id), and each reads what
    the three separate statements read."""
    from sqlitesaver.sqlite import saver as saver_module
    with Saver(db_path) as saver:
        ref = saver.put("t", {"n": 1})
        saver.put("t", {"n": 2}, checkpoint_id="mine", parent_id=ref.checkpoint_id)
        conn = saver._writer
        seq = saver_module._parse_id(ref.checkpoint_id)
        mine_seq, mine_created = conn.execute(
            "SELECT seq, created_at FROM checkpoints WHERE key = 'mine'").fetchone()
        next_seq = mine_seq + 1
        for kind, parent, parent_seq in ((None, (), None), ("key", ("mine",), mine_seq),
                                         ("seq", (seq,), seq)):
            query = saver_module._KEYED_LOOKUPS[kind]
            for key, found in (("mine", (mine_seq, mine_created)), ("new", (None, None))):
                params = ("t", "", key, *parent)
                steps = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + query, params)]
                assert not any(step.startswith(("SCAN c", "SCAN checkpoints"))
                               for step in steps), (kind, steps)
                assert conn.execute(query, params).fetchall() == [
                    (*found, parent_seq, next_seq)], (kind, key)
            # a parent that is not there reads as NULL (the put then raises)
            if kind is not None:
                missing = ("t", "", "new", "nobody" if kind == "key" else seq + 100)
                assert conn.execute(query, missing).fetchall() == [
                    (None, None, None, next_seq)], kind
