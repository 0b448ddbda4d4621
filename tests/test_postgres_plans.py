"""The PostgreSQL engine's statements read one thread's rows, not every thread's: on skewed data,
under generic plans, no scan of our tables reads more than a few rows.

psycopg prepares a statement after a few executions, and PostgreSQL may then run it with a
generic plan, blind to the thread asked for: "thread_id = $1" is estimated as one thread in as
many as there are, and with few threads a walk of the primary key (all threads' rows in seq
order), filtering by thread, looks as good as the thread's own index. On a cold thread whose
checkpoints are older than a hot thread's many, that walk reads every hot row, on every call
(sqlitesaver/postgres/sql.py, above _GET_LATEST).

Each test runs an engine operation on such a cold thread, records the statements the engine
sends (so the test follows the code, whatever it sends), then runs each again with the generic
plan forced (``plan_cache_mode = force_generic_plan``, PREPARE, ``EXPLAIN (ANALYZE, FORMAT
JSON) EXECUTE``, in a transaction rolled back) and counts, for every scan of our tables, the
rows it read per loop (returned plus removed by its filter). No timing."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import pytest

from sqlitesaver.ids import format_id
from sqlitesaver.postgres import check as pg_check, engine as pg_engine
from sqlitesaver.postgres.schema import SCHEMA

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")

#: Rows of the hot thread (checkpoints, pending writes, log events), all newer than the cold
#: thread's: what a plan walking the wrong index reads.
HOT = 20_000
#: The hot thread's id: long, so that its index (thread_id, namespace, seq) is as tall as a far
#: larger table's. A taller index costs more to enter than the primary key, which is what made
#: the primary key walk the generic plan's choice (with ids of a few characters it was chosen
#: from about 100,000 rows on, here from 5,000).
HOT_ID = "hot-" + "x" * 200
#: Rows of the "mid" thread, older than the hot one: about 1.5 % of the table, a share at
#: which a cursor's custom plan walked the primary key (see test_a_cursor_over_one_thread...).
MID = 300
#: Rows one scan may read per loop: the cold thread has 7 checkpoints, a page asks for 10.
FEW = 20
_TABLES = {"checkpoints", "writes", "log", "files", "file_contents", "file_chunks"}
_S = SCHEMA


@pytest.fixture(scope="module")
def skewed(pg_module_url) -> Iterator[tuple[pg_engine.Engine, str, list[int]]]:
    """An engine on: 'cold' (5 checkpoints in '' and 2 in 'sub', the third with the id
    'cold-key', a pending write on each, 3 log events), 'mid' (MID checkpoints), HOT_ID (HOT
    checkpoints, each with a pending write, and HOT log events), 'late' (5 checkpoints, each
    the child of the one before), in that order of seq, ANALYZEd. Rows written in SQL (fast),
    with checksums of 0: the engine does not verify them (the core does, and nothing here
    reads through it; the validator reports them, and only its statements matter here).
    Yields (engine, url, the cold thread's seqs)."""
    engine = pg_engine.Engine(pg_module_url, busy_timeout=5.0)  # creates the tables
    insert = (f"INSERT INTO {_S}.checkpoints (seq, thread_id, namespace, parent_seq, created_at, "
              "state, metadata, checksum) SELECT nextval('sqlitesaver.checkpoints_seq'), %s, "
              "CASE WHEN g > %s THEN 'sub' ELSE '' END, NULL, 0, '\\x81a16b01'::bytea, "
              "'\\x80'::bytea, 0 FROM generate_series(1, %s) AS g")
    log = (f"INSERT INTO {_S}.log (seq, thread_id, created_at, event, checksum) SELECT "
           "nextval('sqlitesaver.log_seq'), %s, 0, '\\x80'::bytea, 0 FROM generate_series(1, %s)")
    write = (f"INSERT INTO {_S}.writes (checkpoint_seq, task_id, idx, channel, value, checksum) "
             f"SELECT seq, 'task', 0, 'ch', '\\x80'::bytea, 0 FROM {_S}.checkpoints "
             "WHERE thread_id = %s")
    with psycopg.connect(pg_module_url, autocommit=True) as conn:
        conn.execute(insert, ("cold", 5, 7))
        conn.execute(log, ("cold", 3))
        conn.execute(write, ("cold",))
        conn.execute(insert, ("mid", MID, MID))
        conn.execute(insert, (HOT_ID, HOT, HOT))
        conn.execute(log, (HOT_ID, HOT))
        conn.execute(write, (HOT_ID,))
        conn.execute(insert, ("late", 5, 5))
        conn.execute(f"UPDATE {_S}.checkpoints SET parent_seq = seq - 1 WHERE thread_id = 'late' "
                     f"AND seq > (SELECT min(seq) FROM {_S}.checkpoints WHERE thread_id = 'late')")
        conn.execute(f"UPDATE {_S}.checkpoints SET key = 'cold-key' WHERE seq = (SELECT seq "
                     f"FROM {_S}.checkpoints WHERE thread_id = 'cold' ORDER BY seq "
                     "OFFSET 2 LIMIT 1)")
        conn.execute("ANALYZE")
        cold = [seq for (seq,) in conn.execute(
            f"SELECT seq FROM {_S}.checkpoints WHERE thread_id = 'cold' ORDER BY seq")]
    yield engine, pg_module_url, cold
    engine.close()


@contextlib.contextmanager
def recording(monkeypatch) -> Iterator[list[tuple[str, object]]]:
    """The statements on our tables sent while the block runs, with their parameters; not the
    strings of several statements (sent with prepare=False, never prepared) nor INSERTs (they
    find no rows, and would run again when explained)."""
    sent: list[tuple[str, object]] = []
    for cls in (psycopg.Cursor, psycopg.ServerCursor):
        def execute(self, query, params=None, *args, _original=cls.execute, **kwargs):
            if (kwargs.get("prepare") is not False and isinstance(query, str)
                    and f"{_S}." in query and not query.lstrip().startswith("INSERT")):
                sent.append((query, params))
            return _original(self, query, params, *args, **kwargs)
        monkeypatch.setattr(cls, "execute", execute)
    yield sent
    monkeypatch.undo()


def generic_plan(url: str, query: str, params: object) -> dict:
    """``query``'s generic plan, run (EXPLAIN ANALYZE) and rolled back."""
    numbers = iter(range(1, 1000))
    with psycopg.connect(url) as conn:
        try:
            conn.execute("SET plan_cache_mode = force_generic_plan")
            conn.execute("PREPARE probe AS " + re.sub("%s", lambda _: f"${next(numbers)}", query),
                         prepare=False)
            args = ", ".join(psycopg.sql.Literal(p).as_string(conn) for p in params or ())
            ((explained,),) = conn.execute(
                "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probe" + (f"({args})" if args else ""),
                prepare=False).fetchall()
        finally:
            conn.rollback()
    return explained[0]["Plan"]


def _nodes(plan: dict, inside: bool = False) -> Iterator[tuple[dict, bool]]:
    """Every node of the plan, with whether it is inside a SubPlan or InitPlan."""
    inside = inside or plan.get("Parent Relationship") in ("SubPlan", "InitPlan")
    yield plan, inside
    for child in plan.get("Plans", ()):
        yield from _nodes(child, inside)


def wide_scans(plan: dict, *, subplans_only: bool = False) -> list[str]:
    """The scans of our tables that read more than FEW rows per loop, described."""
    found = []
    for node, inside in _nodes(plan):
        if node.get("Relation Name") not in _TABLES or "Scan" not in node["Node Type"]:
            continue
        if subplans_only and not inside:
            continue
        read = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0))
        if read > FEW:
            found.append(f"{node['Node Type']} on {node['Relation Name']} "
                         f"{node.get('Index Name', '')} read {read} rows per loop "
                         f"(filter: {node.get('Filter', '-')})")
    return found


def assert_narrow(url: str, sent: list[tuple[str, object]], *, subplans_only: bool = False
                  ) -> None:
    assert sent, "the operation sent no statement on our tables: the recording is broken"
    problems = {query: wide for query, params in sent
                if (wide := wide_scans(generic_plan(url, query, params),
                                       subplans_only=subplans_only))}
    assert not problems, "\n\n".join(f"{query}\n  " + "\n  ".join(wide)
                                     for query, wide in problems.items())


# --- reads ------------------------------------------------------------------------------

def test_get_of_the_latest_and_by_id_read_only_the_threads_rows(skewed, monkeypatch):
    engine, url, cold = skewed
    with recording(monkeypatch) as sent:
        (latest,) = engine.get_rows("cold", "", None)
        (latest_sub,) = engine.get_rows("cold", "sub", None)
        assert engine.get_rows("cold", "", format_id(cold[1]))[0][0] == cold[1]
        assert engine.get_rows("cold", "", "cold-key")[0][0] == cold[2]
        assert engine.get_rows("nobody", "", None) == []
    assert (latest[0], latest_sub[0]) == (cold[4], cold[6])
    assert_narrow(url, sent)


@pytest.mark.parametrize("namespace", [None, "", "sub"])
def test_a_page_of_a_list_reads_only_the_threads_rows(skewed, monkeypatch, namespace):
    engine, url, cold = skewed
    with recording(monkeypatch) as sent:
        _, rows, writes, _ = engine.page("cold", namespace, None, None, 10, 1 << 20)
        # below a checkpoint given by id: the other path (several statements)
        _, below, _, _ = engine.page("cold", namespace, format_id(cold[-1]) if namespace is None
                                     else format_id(cold[6 if namespace else 4]), None, 10,
                                     1 << 20)
    expected = {None: cold, "": cold[:5], "sub": cold[5:]}[namespace][::-1]
    assert [row[0] for row in rows] == expected and [row[0] for row in below] == expected[1:]
    assert [write[0] for write in writes] == expected
    if namespace is None:  # below a caller-supplied id in any namespace: one more lookup
        with recording(monkeypatch) as more:
            _, below_key, _, _ = engine.page("cold", None, "cold-key", None, 10, 1 << 20)
        assert [row[0] for row in below_key] == [cold[1], cold[0]]
        sent += more
    assert_narrow(url, sent)


def test_reading_the_log_reads_only_the_threads_events(skewed, monkeypatch):
    engine, url, _ = skewed
    with recording(monkeypatch) as sent:
        last, rows = engine.log_page("cold", 0, None, 100)
        assert engine.log_page("nobody", 0, None, 100) == (None, [])
    assert len(rows) == 3 and last == rows[-1][0]
    assert_narrow(url, sent)



def test_listing_threads_reads_one_index_entry_per_thread(skewed, monkeypatch):
    """threads() walks each table's ids one index descent each (sql.py, _THREADS): the full
    "SELECT thread_id ... UNION ..." it replaced read every checkpoint and log event (a Seq
    Scan of each, 20,000 rows of the hot thread apiece)."""
    engine, url, _ = skewed
    with recording(monkeypatch) as sent:
        assert engine.threads() == sorted(["cold", "mid", HOT_ID, "late"])
    assert_narrow(url, sent)
    ((query, params),) = sent
    scans = [node for node, _ in _nodes(generic_plan(url, query, params))
             if node.get("Relation Name") in _TABLES]
    assert scans and {node["Node Type"] for node in scans} <= {"Index Only Scan", "Index Scan"}, scans
    # a descent per id (4 in checkpoints, 2 in the log) and one past the last, of a row each
    assert sum(node["Actual Loops"] for node in scans) <= 4 + 2 + 2 * 2, scans
    assert sum(node["Actual Rows"] * node["Actual Loops"] for node in scans) <= 4 + 2, scans


# --- writes ---------------------------------------------------------------------------------

def test_delete_thread_and_prune_read_only_the_threads_rows(skewed, monkeypatch):
    engine, url, _ = skewed
    with recording(monkeypatch) as sent:
        assert engine.delete_thread("nobody") == 0
        assert engine.prune("cold", 100) == 0  # keeps all 7: deletes nothing
    assert_narrow(url, sent)


def test_copy_thread_and_delete_matching_read_only_the_threads_rows(skewed, monkeypatch):
    engine, url, cold = skewed
    with recording(monkeypatch) as sent:
        assert engine.copy_thread("cold", "copy", lambda row: None,
                                  lambda checkpoint, writes: None) == 7
        assert engine.delete_matching("cold", lambda row: False) == 0
    assert engine.delete_thread("copy") == 7  # before explaining: "copy" is empty again
    assert_narrow(url, sent)


def test_a_cursor_over_one_thread_is_not_planned_as_a_walk_of_every_thread(skewed,
                                                                            monkeypatch):
    """copy_thread's and delete_matching's scan runs through a cursor, planned with its values
    (a custom plan) for its first rows: for a thread of MID checkpoints (1.5 % of the table)
    below HOT newer ones it walked checkpoints_pkey to its end, filtering by thread."""
    engine, url, _ = skewed
    with recording(monkeypatch) as sent:
        assert engine.delete_matching("mid", lambda row: False) == 0
    (scan,) = [(query, params) for query, params in sent if "ORDER BY" in query]
    with psycopg.connect(url) as conn:
        declare = psycopg.ClientCursor(conn).mogrify(*scan)
        ((explained,),) = conn.execute(
            f"EXPLAIN (FORMAT JSON) DECLARE probe CURSOR FOR {declare}").fetchall()
        conn.rollback()
    walks = [node for node, _ in _nodes(explained[0]["Plan"])
             if node.get("Index Name") == "checkpoints_pkey" and "thread_id" in node.get(
                 "Filter", "")]
    assert not walks, walks


# --- the validator ----------------------------------------------------------------------------

def test_the_validators_parent_links_read_a_few_rows_per_link(skewed, monkeypatch):
    """Its full scans are its job; what it looks up per row (the oldest checkpoint of a linked
    checkpoint's thread) must not be one more full scan per row."""
    _, url, _ = skewed
    with recording(monkeypatch) as sent:
        pg_check.check_server(url)
    assert any("parent_seq IS NOT NULL" in query for query, _ in sent)
    assert_narrow(url, sent, subplans_only=True)


# --- every prepared statement runs its generic plan ---------------------------------------------

def test_the_engines_prepared_statements_are_never_planned_again_per_call(pg_url):
    """The statements above are written for their generic plan, and the engine forces it
    (connect.PLAN_CACHE_MODE, SET LOCAL in every transaction): under PostgreSQL's default
    ("auto") some were planned again at every call, their generic cost estimated above the
    custom plans' (~200 us a get). pg_prepared_statements (PostgreSQL 14+) counts the plans of
    the one pooled connection's statements: custom ones mean the setting is not in force."""
    engine = pg_engine.Engine(pg_url, busy_timeout=5.0, max_connections=1)
    try:
        first, _ = engine.put_checkpoint("t", "", None, None, b"\x80", b"\x80")
        engine.put_writes("t", "", first, "task", "", [(0, "c", b"\x80")], False)
        for _ in range(8):  # past psycopg's prepare threshold and PostgreSQL's five custom plans
            assert engine.get_rows("t", "", None)
            assert engine.get_rows("t", "", first)
            engine.page("t", "", None, None, 10, 1 << 20)
        with engine._connection("looking at the plans") as conn:
            if conn.info.server_version < 140000:
                pytest.skip("pg_prepared_statements counts plans from PostgreSQL 14 on")
            counts = conn.execute(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE '%sqlitesaver.checkpoints%'").fetchall()
    finally:
        engine.close()
    assert counts, "no prepared statement of the engine's reads was found"
    assert [(statement, custom) for statement, _, custom in counts if custom] == []
    assert all(generic > 0 for _, generic, _ in counts)


# --- the put (last: it adds to the threads above) ------------------------------------------------

def test_a_put_reads_only_the_threads_rows(skewed, monkeypatch):
    """The one-statement writes (sql._LOCKED, then sql._PUT, _PUT_WRITES or _APPEND_LOG), which
    run under the generic plan too where the pooled session forces it (pool.py, ``_session``):
    the put's parent found by seq or by caller-supplied id, a checkpoint replaced in place (ON
    CONFLICT on checkpoints_by_key), pending writes to a checkpoint found by seq or by id, one
    write and several, kept or replaced, and a log event."""
    engine, url, cold = skewed
    with recording(monkeypatch) as sent:
        late = engine.page("late", "", None, None, 1, 1 << 20)[1][0][0]
        engine.put_checkpoint("late", "", format_id(late), None, b"\x80", b"\x80")
        engine.put_checkpoint("cold", "", "cold-key", "cold-new", b"\x80", b"\x80")
        engine.put_checkpoint("cold", "", format_id(cold[0]), "cold-key", b"\x80", b"\x80")
        engine.put_writes("cold", "", format_id(cold[1]), "task", "", [(0, "c", b"\x80")],
                          False)
        engine.put_writes("cold", "", "cold-key", "task", "",
                          [(i, "c", b"\x80") for i in range(3)], True)
        engine.append_log("cold", b"\x80")
    writes = [(query, list(params)) for query, params in sent  # $n, as the RawCursor sends it
              if "put AS (INSERT" in query or f"INSERT INTO {_S}.log" in query]
    assert len(writes) == 6
    assert_narrow(url, writes)
