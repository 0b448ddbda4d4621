"""Review of the one-statement PostgreSQL put / put_writes, the server-completed checksum form
and the one-statement list page (commits 77a7ca0..93f3628). Each test is evidence for one
question of the review: what it shows is in its docstring.

PostgreSQL tests start throwaway clusters (fixtures pg_url, pg_cluster in tests/conftest.py);
the SQLite tests need nothing."""

from __future__ import annotations

import os
import random
import threading
import time

import apsw
import pytest

from sqlitesaver import ChecksumError, Saver, check, integrity, salvage
from sqlitesaver.errors import BusyTimeoutError, CheckpointNotFoundError
from sqlitesaver.ids import parse_id
from test_postgres_put import wait_for_waiters


STATE, META = b"\x81\xa1k\x01", b"\x80"  # msgpack {"k": 1} and {}


def _try(call):
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - returned for the assertion
        return exc


# --- the checksum form chosen by the stored value: damage must stay damage ------------------

@pytest.fixture
def sqlite_db(tmp_path):
    path = str(tmp_path / "x.db")
    with Saver(path) as saver:
        ref = saver.put("t", {"a": 1})
        saver.put_writes("t", ref.checkpoint_id, "task", [("c", 1)])
    return path


def _damage(path: str, statement: str) -> None:
    conn = apsw.Connection(path)
    try:
        conn.execute(statement)
    finally:
        conn.close()


# A stored checksum damaged so that bit 62 is set makes readers verify the row in the server
# form (integrity._server_digest), which packed seq / created_at / parent_seq with
# int.to_bytes: a column of another type (a non-STRICT SQLite table holds any) then raised
# AttributeError, which no reader catches (they count TypeError/ValueError/OverflowError as
# damage). Before the change the CRC-32 form packed any type with msgpack: a mismatch.
DAMAGES = {
    "created_at text": "UPDATE checkpoints SET checksum = 4611686018427387909, "
                       "created_at = 'abc'",
    "created_at blob": "UPDATE checkpoints SET checksum = 4611686018427387909, "
                       "created_at = x'00'",
    "parent_seq real": "UPDATE checkpoints SET checksum = 4611686018427387909, "
                       "parent_seq = 1.5",
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_row_read_in_the_server_form_raises_checksum_error_not_attribute_error(
        sqlite_db, damage):
    _damage(sqlite_db, DAMAGES[damage])
    with Saver(sqlite_db) as saver:
        with pytest.raises(ChecksumError):
            saver.get("t")
        with pytest.raises(ChecksumError):
            list(saver.list("t"))


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_the_validator_lists_such_a_row_instead_of_stopping(sqlite_db, damage):
    _damage(sqlite_db, DAMAGES[damage])
    report = check.check_database(sqlite_db)
    text = repr(report.as_dict() if hasattr(report, "as_dict") else report)
    assert "could not finish" not in text, text
    assert "AttributeError" not in text, text


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_salvage_skips_such_a_row_instead_of_raising(sqlite_db, damage, tmp_path):
    _damage(sqlite_db, DAMAGES[damage])
    report = salvage.salvage(sqlite_db, str(tmp_path / "out.db"))
    assert [row["table"] for row in report.skipped] == ["checkpoints"], report.skipped


def test_a_write_damaged_into_the_server_form_with_a_wrong_typed_seq_is_damage(sqlite_db):
    """The same for a pending write, seen by the validator (it reads every write)."""
    _damage(sqlite_db, "UPDATE writes SET checksum = 4611686018427387909, "
                       "checkpoint_seq = 'zz'")
    report = check.check_database(sqlite_db)
    text = repr(report.as_dict() if hasattr(report, "as_dict") else report)
    assert "AttributeError" not in text, text


def test_a_log_event_damaged_into_the_server_form_with_a_wrong_typed_time_is_damage(tmp_path):
    """The same for a log event (main's one-round-trip append_log, server_log_checksum):
    read_log raises ChecksumError, the validator lists it, salvage skips it."""
    path = str(tmp_path / "x.db")
    with Saver(path) as saver:
        saver.append_log("t", {"n": 1})
    _damage(path, "UPDATE log SET checksum = 4611686018427387909, created_at = 'abc'")
    with Saver(path) as saver:
        with pytest.raises(ChecksumError):
            list(saver.read_log("t"))
    report = check.check_database(path)
    assert "AttributeError" not in repr(report.as_dict()), report.as_dict()
    assert [row["table"] for row in salvage.salvage(path, str(tmp_path / "o.db")).skipped] \
        == ["log"]


@pytest.mark.parametrize("stored", [-1, -(1 << 63), (1 << 62) | (1 << 61), (1 << 62) - 1,
                                    1 << 32])
def test_checksum_values_no_form_produces_never_verify(stored):
    """Negative values, bit 62 with bit 60/61 (never a 60-bit digest), just below bit 62 and
    just above a CRC-32: the form the value says is computed, and it differs."""
    args = (5, "t", "", None, 1_700_000_000_000_000, STATE, META, None, None)
    assert integrity.expected_checkpoint_checksum(stored, *args) != stored
    assert integrity.expected_write_checksum(stored, 5, "task", 0, "c", "", b"v") != stored


# --- PostgreSQL: the one-statement put under contention ------------------------------------

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")


def admin(url: str):
    return psycopg.connect(url, autocommit=True)


def _engine(url: str, **options):
    from sqlitesaver.postgres import connect, engine as pg_engine
    return pg_engine.Engine(url, busy_timeout=options.pop("busy_timeout", 10.0),
                            max_connections=options.pop("max_connections", 8),
                            options=connect.Options(**options))


def _rows(url: str, thread: str) -> list[tuple]:
    with admin(url) as conn:
        return conn.execute(
            "SELECT seq, thread_id, namespace, parent_seq, created_at, state, metadata, "
            "checksum, key, parent_key FROM sqlitesaver.checkpoints WHERE thread_id = %s "
            "ORDER BY seq", (thread,)).fetchall()


def _intact(row: tuple) -> bool:
    seq, thread, ns, parent, created, state, meta, checksum, key, parent_key = row
    return integrity.expected_checkpoint_checksum(
        checksum, seq, thread, ns, parent, created, bytes(state), bytes(meta), key,
        parent_key) == checksum


@pytest.mark.parametrize("with_parent", [False, True])
def test_concurrent_puts_of_one_caller_id_all_succeed_into_one_verified_row(pg_url,
                                                                           with_parent,
                                                                           hang_detector):
    """Four puts of the same caller-supplied id in one thread, all sent while a session holds
    the thread's lock, so all four statements take their snapshot before any of them has
    inserted the row: the first inserts it, the other three meet it only through ON CONFLICT
    (READ COMMITTED reads the newest version) and replace it. No unique violation, one row,
    its seq and created_at the first insert's, its checksum verifying."""
    from sqlitesaver.postgres import engine as pg_engine

    hang_detector(90)
    e = _engine(pg_url)
    parent = e.put_checkpoint("t", "", None, "p", STATE, META)[0] if with_parent else None
    holder, watcher = admin(pg_url), admin(pg_url)
    try:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('t'))", (pg_engine.THREAD_LOCK,))
        outcomes: list = []
        workers = [threading.Thread(target=lambda n=n: outcomes.append(_try(
            lambda: e.put_checkpoint("t", "", parent, "k", STATE + bytes([n]), META))))
            for n in range(4)]
        for worker in workers:
            worker.start()
        wait_for_waiters(watcher, 4, workers, outcomes)
        holder.execute("SELECT pg_advisory_unlock_all()")
        for worker in workers:
            worker.join(30)
        assert all(isinstance(o, tuple) and o[0] == "k" for o in outcomes), outcomes
        assert len({o[1] for o in outcomes}) == 1  # one created_at: one row, replaced
        rows = [row for row in _rows(pg_url, "t") if row[8] == "k"]
        assert len(rows) == 1 and _intact(rows[0]), rows
    finally:
        holder.close()
        watcher.close()
        e.close()


def test_a_reader_never_sees_a_seq_committed_below_one_it_already_saw(pg_url, hang_detector):
    """Ids in commit order within a thread: 6 writers put into one thread for ~2 s (and at
    least 200 puts in all, however slowly a loaded machine runs them) while a reader polls
    the thread's seqs. Every seq that appears later than a poll must be above the highest
    that poll saw (a put that drew its seq before another's commit and committed after it
    would show up as a gap filled later)."""
    hang_detector(90)
    e = _engine(pg_url)
    stop = time.monotonic() + 2.0
    errors: list = []
    puts: list = []  # one entry per put that returned (list.append is atomic)

    def write() -> None:
        while time.monotonic() < stop or len(puts) < 200:
            try:
                e.put_checkpoint("t", "", None, None, STATE, META)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                return
            puts.append(1)

    workers = [threading.Thread(target=write) for _ in range(6)]
    for worker in workers:
        worker.start()
    seen: set[int] = set()
    violations = []
    with admin(pg_url) as reader:
        polling = True
        while polling:
            polling = any(w.is_alive() for w in workers)  # one last poll after they end
            now = {s for (s,) in reader.execute(
                "SELECT seq FROM sqlitesaver.checkpoints WHERE thread_id = 't'")}
            top = max(seen, default=0)
            violations += [s for s in now - seen if s < top]
            seen |= now
    e.close()
    assert not errors, errors
    assert len(seen) == len(puts) >= 200 and not violations, (len(seen), len(puts),
                                                              violations[:10])


# --- lock_timeout inside the statement; errors leave the connection clean -----------------

def _pooled_idle(e) -> None:
    """Every connection the pool hands out now is idle (no transaction left open), with the
    session's own settings: the pool's (pool.py, ``_session``: the lock timeout given, here
    the same as the statement's own) or, where it has none, the server's."""
    from psycopg.pq import TransactionStatus

    with e._connection("looking") as conn:
        assert conn.info.transaction_status == TransactionStatus.IDLE
        expected = str(round(e._options.lock_timeout * 1000)) if conn.sqlitesaver_session \
            else "0"  # pg_settings' setting: in ms, the unit of lock_timeout
        assert conn.execute("SELECT (SELECT setting FROM pg_settings WHERE name = "
                            "'lock_timeout'), current_setting('synchronous_commit')"
                            ).fetchone() == (expected, "on")


@pytest.mark.parametrize("held", ["thread lock", "all-threads lock"])
@pytest.mark.parametrize("call", ["put", "put_writes"])
def test_lock_timeout_bounds_both_advisory_waits_of_the_statement(pg_url, held, call,
                                                                   hang_detector):
    from sqlitesaver.postgres import engine as pg_engine

    hang_detector(60)
    e = _engine(pg_url, lock_timeout=0.3)
    cid = e.put_checkpoint("t", "", None, "c", STATE, META)[0]
    holder = admin(pg_url)
    try:
        if held == "thread lock":
            holder.execute("SELECT pg_advisory_lock(%s, hashtext('t'))",
                           (pg_engine.THREAD_LOCK,))
        else:
            holder.execute("SELECT pg_advisory_lock(%s, %s)", pg_engine.ALL_THREADS_LOCK)
        run = (lambda: e.put_checkpoint("t", "", cid, None, STATE, META)) if call == "put" \
            else (lambda: e.put_writes("t", "", cid, "task", "", [(0, "c", b"v")], False))
        started = time.monotonic()
        with pytest.raises(BusyTimeoutError) as caught:
            run()
        assert time.monotonic() - started < 3 and caught.value.sqlstate == "55P03"
        assert "maybe" not in str(caught.value)
        holder.execute("SELECT pg_advisory_unlock_all()")
        _pooled_idle(e)
        run()  # and the same call goes through once the lock is free
    finally:
        holder.close()
        e.close()


@pytest.mark.parametrize("call", ["put by key", "put by seq", "put_writes by key",
                                  "put_writes by seq"])
def test_lock_timeout_bounds_the_for_key_share_row_lock(pg_url, call, hang_detector):
    """An outside session holds the parent / checkpoint row FOR UPDATE (not under any lock of
    ours): the statement's FOR KEY SHARE waits for it, bounded by the lock_timeout it set."""
    hang_detector(60)
    e = _engine(pg_url, lock_timeout=0.3)
    key = "c" if call.endswith("key") else None
    cid = e.put_checkpoint("t", "", None, key, STATE, META)[0]
    holder = admin(pg_url)
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM sqlitesaver.checkpoints WHERE thread_id = 't' FOR UPDATE")
        run = (lambda: e.put_checkpoint("t", "", cid, None, STATE, META)) \
            if call.startswith("put ") \
            else (lambda: e.put_writes("t", "", cid, "task", "", [(0, "c", b"v")], False))
        started = time.monotonic()
        with pytest.raises(BusyTimeoutError) as caught:
            run()
        assert time.monotonic() - started < 3 and caught.value.sqlstate == "55P03"
        holder.execute("ROLLBACK")
        _pooled_idle(e)
        run()
    finally:
        holder.close()
        e.close()


def test_a_cancelled_put_is_not_maybe_committed_and_leaves_the_connection_clean(
        pg_url, hang_detector):
    """pg_cancel_backend while the statement waits for its lock: 57014, translated
    (BusyTimeoutError, nothing written), not "maybe committed"; the pooled connection is
    reusable."""
    from sqlitesaver.postgres import engine as pg_engine

    hang_detector(60)
    e = _engine(pg_url, max_connections=1)
    e.put_checkpoint("t", "", None, None, STATE, META)
    holder, watcher = admin(pg_url), admin(pg_url)
    try:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('t'))", (pg_engine.THREAD_LOCK,))
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.append(_try(
            lambda: e.put_checkpoint("t", "", None, None, STATE, META))))
        worker.start()
        wait_for_waiters(watcher, 1, [worker], outcome)
        watcher.execute("SELECT pg_cancel_backend(pid) FROM pg_locks WHERE NOT granted")
        worker.join(30)
        assert isinstance(outcome[0], BusyTimeoutError), outcome
        assert outcome[0].sqlstate == "57014" and "maybe" not in str(outcome[0])
        holder.execute("SELECT pg_advisory_unlock_all()")
        _pooled_idle(e)
        assert len(_rows(pg_url, "t")) == 1
    finally:
        holder.close()
        watcher.close()
        e.close()


# --- REPEATABLE READ as the database default: 40001 retried ---------------------------------

@pytest.fixture
def rr_url(pg_url):
    with admin(pg_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f"ALTER DATABASE {name} SET default_transaction_isolation = "
                     "'repeatable read'")
    return pg_url


def test_under_repeatable_read_a_parent_deleted_while_waiting_is_retried_then_not_found(
        rr_url, hang_detector):
    """With the database's default isolation REPEATABLE READ (the statement sets none), the
    FOR KEY SHARE of a parent deleted after the snapshot fails with 40001: it must be retried
    (a new snapshot) and end as "not found", not as BusyTimeoutError or a raw error."""
    from sqlitesaver.postgres import engine as pg_engine

    hang_detector(60)
    e = _engine(rr_url)
    parent = e.put_checkpoint("t", "", None, "p", STATE, META)[0]
    holder, watcher = admin(rr_url), admin(rr_url)
    try:
        holder.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext('t'))",
                       (pg_engine.THREAD_LOCK,))
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.append(_try(
            lambda: e.put_checkpoint("t", "", parent, "child", STATE, META))))
        worker.start()
        wait_for_waiters(watcher, 1, [worker], outcome)
        holder.execute("DELETE FROM sqlitesaver.checkpoints WHERE thread_id = 't'")
        holder.execute("COMMIT")
        worker.join(30)
        assert isinstance(outcome[0], CheckpointNotFoundError), outcome
        assert e.retries >= 1
        assert _rows(rr_url, "t") == []
    finally:
        holder.close()
        watcher.close()
        e.close()


def test_under_repeatable_read_concurrent_puts_of_one_caller_id_are_retried(rr_url,
                                                                           hang_detector):
    from sqlitesaver.postgres import engine as pg_engine

    hang_detector(90)
    e = _engine(rr_url)
    holder, watcher = admin(rr_url), admin(rr_url)
    try:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('t'))", (pg_engine.THREAD_LOCK,))
        outcomes: list = []
        workers = [threading.Thread(target=lambda n=n: outcomes.append(_try(
            lambda: e.put_checkpoint("t", "", None, "k", STATE + bytes([n]), META))))
            for n in range(3)]
        for worker in workers:
            worker.start()
        wait_for_waiters(watcher, 3, workers, outcomes)
        holder.execute("SELECT pg_advisory_unlock_all()")
        for worker in workers:
            worker.join(30)
        assert all(isinstance(o, tuple) for o in outcomes), outcomes
        rows = _rows(rr_url, "t")
        assert len(rows) == 1 and _intact(rows[0])
    finally:
        holder.close()
        watcher.close()
        e.close()


# --- the one-namespace list page: same rows as the multi-statement path ---------------------

def test_the_one_statement_page_equals_the_transaction_path(pg_url):
    """Engine.page outside a block (the pipelined path: _PAGE_ROWS_ONE for one namespace,
    _PAGE_ROWS for all) against the same call inside a transaction block (work(): the sizes,
    then the rows by seq), over random sizes, namespaces, bounds, page lengths and budgets,
    prepared statements included (more than psycopg's threshold of calls)."""
    rng = random.Random(17)
    e = _engine(pg_url)
    try:
        seqs = []
        for n in range(60):
            ns = rng.choice(["", "a", "b"])
            state = os.urandom(rng.choice([0, 1, 10, 300, 3000]))
            cid = e.put_checkpoint("t", ns, None, rng.choice([None, f"k{n}"]), state, META)[0]
            if rng.random() < 0.3:
                e.put_writes("t", ns, cid, "task", "", [(0, "c", b"v" * n)], False)
            seqs.append(_rows(pg_url, "t")[-1][0])
        e.put_checkpoint("other", "", None, None, b"x" * 100, META)
        for _ in range(120):
            ns = rng.choice([None, "", "a", "b", "missing"])
            upper = rng.choice([None, rng.choice(seqs), rng.choice(seqs) - 1])
            want = rng.choice([1, 2, 5, 17, 100])
            budget = rng.choice([1, 50, 400, 3001, 10_000, 1 << 40])
            fast = e.page("t", ns, None, upper, want, budget)
            with e.transaction():
                slow = e.page("t", ns, None, upper, want, budget)
            assert _norm(fast) == _norm(slow), (ns, upper, want, budget)
    finally:
        e.close()


def _norm(page):
    bound, rows, writes, more = page
    return (bound, [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                    for r in rows],
            [tuple(bytes(v) if isinstance(v, memoryview) else v for v in w) for w in writes],
            more)


# --- lock_timeout=None: statement_timeout bounds the one-statement write's lock wait ------

@pytest.mark.parametrize("call", ["put", "put_writes", "append_log"])
def test_with_no_lock_timeout_statement_timeout_still_bounds_a_writes_lock_wait(
        pg_url, call, hang_detector):
    from sqlitesaver.postgres import engine as pg_engine

    hang_detector(60)
    e = _engine(pg_url, lock_timeout=None, statement_timeout=0.3)
    cid = e.put_checkpoint("t", "", None, "c", STATE, META)[0]
    run = {"put": lambda: e.put_checkpoint("t", "", None, None, STATE, META),
           "put_writes": lambda: e.put_writes("t", "", cid, "task", "", [(0, "c", b"v")],
                                              False),
           "append_log": lambda: e.append_log("t", b"\x01")}[call]
    holder = admin(pg_url)
    outcome: list = []
    try:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('t'))", (pg_engine.THREAD_LOCK,))
        worker = threading.Thread(target=lambda: outcome.append(_try(run)))
        worker.start()
        # The lock is held until the worker ends (its statement_timeout, 0.3 s, ends it), or
        # for 30 s, a bound only against a hang: how late a loaded machine runs it is no
        # longer part of the check (3 s was).
        worker.join(30)
        ended_while_held = not worker.is_alive()
    finally:
        holder.execute("SELECT pg_advisory_unlock_all()")
        holder.close()
        worker.join(30)
        e.close()
    assert ended_while_held and isinstance(outcome[0], BusyTimeoutError), outcome


# --- puts, puts of writes and deletes of one thread racing ----------------------------------

def test_puts_writes_and_deletes_racing_raise_only_not_found_and_leave_verified_rows(
        pg_url, hang_detector):
    """For ~2.5 s, 6 workers on one thread: puts (parents by generated id and by caller id,
    replacing caller ids), puts of writes, delete_thread, prune, delete_matching (one thread
    and every thread). Every snapshot-before-lock race (a parent or checkpoint deleted while
    a statement waited) must end as CheckpointNotFoundError (or InvalidArgumentError for a
    parent not older), never as another error (a foreign key violation, a unique violation,
    a raw psycopg exception); every row left verifies and every parent link points to an
    older checkpoint of the thread or is gone with a deletion."""
    from sqlitesaver.errors import InvalidArgumentError

    hang_detector(90)
    e = _engine(pg_url, busy_timeout=20.0)
    stop = time.monotonic() + 2.5
    unexpected: list = []
    ids: list[str] = []

    def work(n: int) -> None:
        rng = random.Random(n)
        while time.monotonic() < stop:
            op = rng.random()
            try:
                parent = rng.choice(ids) if ids and rng.random() < 0.8 else None
                if op < 0.45:
                    key = rng.choice([None, None, f"k{rng.randrange(6)}"])
                    ids.append(e.put_checkpoint("t", "", parent, key, STATE, META)[0])
                elif op < 0.8 and ids:
                    e.put_writes("t", "", rng.choice(ids), f"task{n}", "",
                                 [(i, "c", b"v") for i in range(rng.choice([1, 2, 9]))],
                                 rng.random() < 0.5)
                elif op < 0.86:
                    e.prune("t", rng.choice([1, 3]))
                elif op < 0.9:
                    e.delete_thread("t")
                elif op < 0.95:
                    e.delete_matching("t", lambda row: row[0] % 3 == 0)
                else:
                    e.delete_matching(None, lambda row: row[0] % 5 == 0)
            except (CheckpointNotFoundError, InvalidArgumentError):
                pass
            except Exception as exc:  # noqa: BLE001
                unexpected.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    e.close()
    assert not unexpected, [(type(x).__name__, str(x)[:200]) for x in unexpected[:5]]
    rows = _rows(pg_url, "t")
    assert all(_intact(row) for row in rows)
    seqs = {row[0] for row in rows}
    assert all(row[3] is None or (row[3] < row[0]) for row in rows)
    with admin(pg_url) as conn:
        for seq, task, idx, channel, value, path, checksum in conn.execute(
                "SELECT checkpoint_seq, task_id, idx, channel, value, task_path, checksum "
                "FROM sqlitesaver.writes"):
            assert seq in seqs
            assert integrity.expected_write_checksum(checksum, seq, task, idx, channel, path,
                                                     bytes(value)) == checksum


# --- the lookups run after the locks under a prepared generic plan too ----------------------

@pytest.mark.parametrize("call", ["put by seq", "put by key", "put_writes by seq",
                                  "put_writes by key"])
def test_prepared_generic_plans_look_up_after_the_lock(pg_url, call, hang_detector):
    """plan_cache_mode=force_generic_plan for the database and 8 calls first on the engine's
    only connection (past psycopg's prepare threshold: the statement is prepared, its plan
    generic). Then the lock holder deletes the parent / checkpoint while the statement waits.
    Had the FOR KEY SHARE lookup run before the thread's lock, the holder's DELETE would wait
    for the statement's row lock while the statement waits for the holder's advisory lock: a
    deadlock (40P01) or a lock timeout instead of "not found"."""
    from sqlitesaver.postgres import engine as pg_engine

    hang_detector(60)
    with admin(pg_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f"ALTER DATABASE {name} SET plan_cache_mode = force_generic_plan")
    e = _engine(pg_url, max_connections=1, lock_timeout=5.0)
    by_key = call.endswith("key")
    writes = call.startswith("put_writes")

    def run(target):
        if writes:
            e.put_writes("t", "", target, "task", "", [(0, "c", b"v")], False)
        else:
            e.put_checkpoint("t", "", target, None, STATE, META)

    for n in range(8):
        target = e.put_checkpoint("t", "", None, f"w{n}" if by_key else None, STATE, META)[0]
        run(target)
    with e._connection("looking") as conn:
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements WHERE "
                            "generic_plans > 0 AND statement LIKE '%pg_advisory_xact_lock%'"
                            ).fetchone()[0] >= 1
    target = e.put_checkpoint("t", "", None, "victim" if by_key else None, STATE, META)[0]
    holder, watcher = admin(pg_url), admin(pg_url)
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext('t'))",
                       (pg_engine.THREAD_LOCK,))
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.append(_try(lambda: run(target))))
        worker.start()
        wait_for_waiters(watcher, 1, [worker], outcome)
        holder.execute("DELETE FROM sqlitesaver.checkpoints WHERE seq = %s",
                       (parse_id(target) if not by_key else
                        _rows(pg_url, "t")[-1][0],))
        holder.execute("COMMIT")
        worker.join(30)
        assert isinstance(outcome[0], CheckpointNotFoundError), outcome
    finally:
        holder.close()
        watcher.close()
        e.close()
