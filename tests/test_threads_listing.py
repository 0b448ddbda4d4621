"""``Saver.threads()`` walks each table's thread ids one index descent each (a loose index scan,
sqlitesaver/sqlite/sql.py and sqlitesaver/postgres/sql.py, ``_THREADS``) instead of reading
every row: it returns what the full scan it replaced returned (kept here as ``OLD``, run beside
it), and on SQLite its plan searches the indexes (tests/test_postgres_plans.py checks the
PostgreSQL plan on skewed data). No timing: the plan, and the rows the statement visits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import apsw
import pytest

from sqlitesaver import Saver
from sqlitesaver.errors import CorruptDatabaseError

from conftest import execute_on, is_server

#: The statement threads() sent before the loose index scan, per engine: the reference.
OLD = {False: "SELECT thread_id FROM checkpoints UNION SELECT thread_id FROM log ORDER BY 1",
       True: 'SELECT thread_id COLLATE "C" FROM checkpoints UNION '
             'SELECT thread_id COLLATE "C" FROM log ORDER BY 1'}

#: Ids that sort differently by code point than by a locale, prefixes of each other, case,
#: trailing spaces, canonically equivalent but distinct strings, outside the BMP.
TRICKY = [" ", "a", "a ", "a  ", "A", "ab", "a b", "aB", "Ab", "b", "t", "t1", "t10", "t2",
          "\u00e9", "e\u0301", "E", "caf\u00e9", "cafe\u0301", "\u00df", "ss", "\u212b", "\u00c5",
          "\u65e5\u672c", "\U0001f600", "\U0001f600 ", "z" * 300, "z" * 299, "~", "\x7f",
          "\t", "a\tb"]
assert len(set(TRICKY)) == len(TRICKY)


def listed(target: str) -> tuple[list[str], list[str]]:
    """(threads(), what OLD returns) on ``target``."""
    with Saver(target) as saver:
        new = saver.threads()
    return new, [row[0] for row in execute_on(target, OLD[is_server(target)])]


def test_empty_store(db_target):
    assert listed(db_target) == ([], [])


@pytest.mark.parametrize("where", ["both", "checkpoints only", "log only", "split"])
def test_ids_match_the_full_scan(db_target, where):
    with Saver(db_target, durability="normal") as saver, saver.transaction():
        for n, thread in enumerate(TRICKY):
            in_checkpoints = where in ("both", "checkpoints only") or (where == "split"
                                                                        and n % 3 != 1)
            in_log = where in ("both", "log only") or (where == "split" and n % 3 != 0)
            if in_checkpoints:
                saver.put(thread, {"n": n})
                saver.put(thread, {"n": n}, namespace="sub")
            if in_log:
                saver.append_log(thread, {"n": n})
                saver.append_log(thread, {"n": n + 1})
    new, old = listed(db_target)
    assert new == old == sorted(TRICKY)  # code point order on both engines


def test_many_threads_and_many_rows_per_thread(db_target):
    with Saver(db_target, durability="normal") as saver, saver.transaction():
        for n in range(500):
            thread = f"thread-{n:x}"
            for _ in range(1 + (n % 3) * 5):
                saver.put(thread, {"n": n})
            if n % 7 == 0:
                saver.append_log(thread, {"n": n})
            if n % 11 == 0:
                saver.append_log(f"log-{n}", {"n": n})
    new, old = listed(db_target)
    assert new == old and len(new) == 500 + len(range(0, 500, 11))


def test_after_deleting_the_first_last_and_a_middle_thread(db_target):
    with Saver(db_target, durability="normal") as saver:
        for thread in ("a", "b", "c", "d", "e"):
            saver.put(thread, {})
            saver.append_log(thread, {})
        for thread in ("a", "c", "e"):
            saver.delete_thread(thread)
    assert listed(db_target) == (["b", "d"], ["b", "d"])


# --- SQLite: the plan, and the rows visited -------------------------------------------------

ROWS = 20_000


@pytest.fixture(scope="module")
def skewed_file(tmp_path_factory) -> str:
    """A file with ROWS checkpoints and ROWS log events, in 3 threads each (rows written in
    SQL, checksums of 0: threads() reads no payload), plus one of each through the Saver."""
    path = str(tmp_path_factory.mktemp("threads") / "skewed.db")
    with Saver(path) as saver:
        saver.put("first", {})
        saver.append_log("\U0001f600", {})
    numbers = ("(WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < ?) "
               "SELECT n FROM g)")
    conn = apsw.Connection(path)
    try:
        with conn:
            conn.execute("INSERT INTO checkpoints (seq, thread_id, namespace, parent_seq, "
                         "created_at, state, metadata, checksum) SELECT 100 + n, "
                         f"'hot-' || (n % 3), '', NULL, 0, x'80', x'80', 0 FROM {numbers}",
                         (ROWS,))
            conn.execute("INSERT INTO log (seq, thread_id, created_at, event, checksum) "
                         f"SELECT 100 + n, 'log-' || (n % 3), 0, x'80', 0 FROM {numbers}",
                         (ROWS,))
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return path


@contextlib.contextmanager
def sent_statements() -> Iterator[list[str]]:
    """The statements run on connections opened while the block runs (apsw's exec trace)."""
    sent: list[str] = []

    def trace(cursor, sql, bindings) -> bool:
        sent.append(sql)
        return True

    def hook(conn: apsw.Connection) -> None:
        conn.exec_trace = trace

    apsw.connection_hooks.append(hook)
    try:
        yield sent
    finally:
        apsw.connection_hooks.remove(hook)


def visited(path: str, statement: str) -> tuple[list[str], int]:
    """``statement``'s EXPLAIN QUERY PLAN details, and the virtual machine steps it takes (in
    hundreds): the rows it visits, without a clock."""
    conn = apsw.Connection(path)
    try:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]
        steps = 0

        def count() -> bool:
            nonlocal steps
            steps += 1
            return False

        conn.set_progress_handler(count, 100)
        conn.execute(statement).fetchall()
        return plan, steps
    finally:
        conn.close()


def test_sqlite_plan_searches_the_indexes(skewed_file):
    with sent_statements() as sent:
        with Saver(skewed_file) as saver:
            found = saver.threads()
    assert found == ["first", "hot-0", "hot-1", "hot-2", "log-0", "log-1", "log-2",
                     "\U0001f600"]
    (statement,) = [sql for sql in sent if "thread_id" in sql and "log" in sql]
    plan, steps = visited(skewed_file, statement)
    tables = [detail for detail in plan if " checkpoints " in detail + " " or " log " in detail]
    assert any("checkpoints_by_thread (thread_id>?)" in d for d in tables), plan
    assert any("log_by_thread (thread_id>?)" in d for d in tables), plan
    # "SCAN checkpoints USING COVERING INDEX" is the full index scan of the old statement
    assert all(detail.startswith("SEARCH ") for detail in tables), plan
    # The full scan took about 4,800 hundred steps here (2 per entry of each index), the walk 5.
    assert steps < 50, steps


def test_the_old_statement_fails_these_checks(skewed_file):
    """The plan test's criteria tell the two statements apart (they are not vacuous)."""
    plan, steps = visited(skewed_file, OLD[False])
    assert any(detail.startswith("SCAN checkpoints") for detail in plan) and steps > 1000


@pytest.mark.parametrize("stored", ["x'62'", "x'ff00'", "x''"])
def test_sqlite_an_id_stored_as_a_blob_is_still_refused(tmp_path, stored):
    """A damaged file (TEXT affinity makes a number text; a blob stays one): a blob sorts after
    every text, so the walk still reaches it, and threads() refuses the list as before."""
    path = str(tmp_path / "state.db")
    with Saver(path) as saver:
        for thread in ("a", "b", "c"):
            saver.put(thread, {})
            saver.append_log(thread, {})
    execute_on(path, f"UPDATE checkpoints SET thread_id = {stored} WHERE thread_id = 'b'")
    with Saver(path) as saver, pytest.raises(CorruptDatabaseError, match="listing threads"):
        saver.threads()
