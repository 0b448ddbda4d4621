"""The PostgreSQL engine (sqlitesaver/postgres/engine.py) on a real server, driven directly
(it is not yet behind Saver): rows in the SQLite engine's shapes with checksums the core
verifies, ids unique and in commit order within a thread under concurrent writers, retries of
serialization failures and deadlocks, "maybe committed" only when COMMIT was in flight, a server
restarted between calls, bad input refused with nothing written."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import random
import signal
import threading
import time

import pytest

from sqlitesaver import integrity
from sqlitesaver.errors import (BusyTimeoutError, CannotOpenError, CheckpointNotFoundError,
                                DatabaseIOError, InvalidArgumentError, SaverClosedError,
                                SaverError)
from sqlitesaver.ids import format_id, parse_id
from sqlitesaver.postgres import connect, engine as pg_engine, sql as pg_sql

from conftest import inject_retryable_failures

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")

STATE, META = b"\x81\xa1k\x01", b"\x80"  # msgpack {"k": 1} and {}


@pytest.fixture
def engine(pg_url):
    opened = pg_engine.Engine(pg_url, busy_timeout=5.0)
    yield opened
    opened.close()


def admin(pg_url):
    return psycopg.connect(pg_url, autocommit=True)


def contents(pg_url) -> tuple:
    """Every row of ours, to compare before and after a refused call."""
    with admin(pg_url) as conn:
        return tuple(conn.execute(f"SELECT * FROM sqlitesaver.{table} ORDER BY 1, 2").fetchall()
                     for table in ("checkpoints", "writes", "log"))


def verify_checkpoint(row: tuple, *, server_form: bool | None = None) -> None:
    """The row's checksum holds, in the form its value says; ``server_form``: and that form
    is the one-round-trip put's (True) or a CRC-32 (False)."""
    seq, thread, ns, parent, created, state, meta, checksum, key, parent_key = row
    assert integrity.expected_checkpoint_checksum(checksum, seq, thread, ns, parent, created,
                                                  state, meta, key, parent_key) == checksum
    if server_form is not None:
        assert (checksum >= integrity.SERVER_FORM) is server_form, checksum


# --- rows, ids, checksums ---------------------------------------------------------------------

def test_put_and_get_round_trip_with_verifiable_checksums(engine):
    first, created = engine.put_checkpoint("t", "", None, None, STATE, META)
    second, _ = engine.put_checkpoint("t", "", first, None, b"\x01", META)
    assert parse_id(first) is not None and first < second
    rows = engine.get_rows("t", "", None)
    assert len(rows) == 1 and rows[0][:7] == (parse_id(second), "t", "", parse_id(first),
                                              rows[0][4], b"\x01", META)
    verify_checkpoint(rows[0][:10], server_form=True)  # Python computes what the server did
    assert rows[0][10:] == (None,) * 7  # no pending write joined
    (by_id,) = engine.get_rows("t", "", first)
    assert by_id[4] == created and abs(created / 1e6 - time.time()) < 60  # the server's clock
    assert engine.get_rows("t", "other-ns", None) == []
    assert engine.get_rows("t", "", "ffffffffffffffff") == []


def test_caller_ids_replace_in_place_and_keep_their_writes(engine, pg_url):
    parent, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    key, created = engine.put_checkpoint("t", "", parent, "cp-1", STATE, META)
    engine.put_writes("t", "", "cp-1", "task", "", [(0, "ch", b"\x01")], False)
    again, created_again = engine.put_checkpoint("t", "", parent, "cp-1", b"\x02", META)
    assert (again, created_again) == ("cp-1", created)
    rows = engine.get_rows("t", "", "cp-1")
    assert [row[5] for row in rows] == [b"\x02"] and rows[0][10:13] == (rows[0][0], "task", 0)
    assert rows[0][8:10] == ("cp-1", None)
    verify_checkpoint(rows[0][:10], server_form=True)
    newer, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    before = contents(pg_url)
    with pytest.raises(InvalidArgumentError, match="not older"):
        engine.put_checkpoint("t", "", newer, "cp-1", STATE, META)
    assert contents(pg_url) == before


def test_pending_writes_are_idempotent_unless_replaced(engine):
    cp, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    engine.put_writes("t", "", cp, "task", "p", [(0, "a", b"\x01"), (1, "b", b"\x02")], False)
    engine.put_writes("t", "", cp, "task", "p", [(0, "a", b"\x09")], False)  # kept: first wins
    assert [row[10:16] for row in engine.get_rows("t", "", cp)] == [
        (parse_id(cp), "task", 0, "a", b"\x01", "p"), (parse_id(cp), "task", 1, "b", b"\x02", "p")]
    engine.put_writes("t", "", cp, "task", "p", [(0, "a", b"\x09")], True)  # replaced
    rows = engine.get_rows("t", "", cp)
    assert rows[0][14] == b"\x09"
    for row in rows:
        w = row[10:]
        # The one-round-trip put of writes stores the server-completed form
        assert w[6] >= integrity.SERVER_FORM
        assert integrity.server_write_checksum(
            integrity.write_client_crc(w[1], w[2], w[3], w[5], w[4]), w[0]) == w[6]
        assert integrity.expected_write_checksum(w[6], w[0], w[1], w[2], w[3], w[5],
                                                 w[4]) == w[6]


def test_a_missing_parent_or_checkpoint_writes_nothing(engine, pg_url):
    engine.put_checkpoint("t", "", None, None, STATE, META)
    before = contents(pg_url)
    with pytest.raises(CheckpointNotFoundError, match="parent_id"):
        engine.put_checkpoint("t", "", "00000000000000ff", None, STATE, META)
    with pytest.raises(CheckpointNotFoundError, match="checkpoint_id"):
        engine.put_writes("t", "", "nope", "task", "", [(0, "a", b"\x01")], False)
    with pytest.raises(CheckpointNotFoundError):
        engine.page("t", None, "nope", None, 10, 1 << 22)
    assert contents(pg_url) == before


@pytest.mark.parametrize("call", [
    lambda e: e.put_checkpoint("t\x00", "", None, None, STATE, META),
    lambda e: e.put_checkpoint("t", "n\x00s", None, None, STATE, META),
    lambda e: e.put_checkpoint("t", "", None, "id\x00", STATE, META),
    lambda e: e.put_writes("t", "", "x", "task", "", [(0, "c\x00", b"\x01")], False),
    lambda e: e.append_log("t\x00", b"\x01"),
])
def test_nul_in_text_is_refused_before_anything_is_written(engine, pg_url, call):
    """PostgreSQL's text cannot hold U+0000 (SQLite's can): a typed error, nothing written."""
    engine.put_checkpoint("t", "", None, None, STATE, META)
    before = contents(pg_url)
    with pytest.raises(InvalidArgumentError, match="NUL"):
        call(engine)
    assert contents(pg_url) == before
    assert engine.get_rows("t\x00", "", None) == []  # reads: there is no such checkpoint
    # deletes: no such thread, 0 as for any thread that is not there (a generic SaverError
    # from psycopg's DataError before, and InvalidArgumentError for delete_matching)
    assert engine.delete_thread("t\x00") == 0
    assert engine.prune("t\x00", 0) == 0
    assert engine.delete_matching("t\x00", lambda row: True) == 0
    assert contents(pg_url) == before


def test_pages_log_prune_delete_and_threads(engine):
    ids = [engine.put_checkpoint("t", ns, None, None, bytes([i]), META)[0]
           for i, ns in enumerate(["", "a", "", "a", ""])]
    engine.put_writes("t", "", ids[2], "task", "", [(0, "c", b"\x07")], False)
    upper, rows, writes, more = engine.page("t", None, None, None, 3, 1 << 22)
    assert [format_id(row[0]) for row in rows] == ids[:1:-1] and len(writes) == 1 and more
    upper, rows, writes, more = engine.page("t", "", ids[4], None, 10, 1 << 22)
    assert [format_id(row[0]) for row in rows] == [ids[2], ids[0]] and not more
    assert upper == parse_id(ids[4]) - 1
    # A page stops after the row that brings its payloads to the budget (2 bytes here:
    # each state is 1 byte, each metadata 1), with more to follow.
    upper, rows, writes, more = engine.page("t", None, None, None, 10, 3)
    assert [format_id(row[0]) for row in rows] == ids[:2:-1] and more
    seqs = [engine.append_log("t", bytes([i])) for i in range(3)]
    last, events = engine.log_page("t", -1, None, 10)
    assert [event[0] for event in events] == seqs == sorted(seqs) and last == seqs[-1]
    for seq, thread, created, event, checksum in events:
        # the one-round-trip append stores the server-completed form
        assert checksum >= integrity.SERVER_FORM
        assert integrity.server_log_checksum(integrity.log_client_crc(thread, event), seq,
                                             created) == checksum
    assert engine.log_page("t", -1, None, 2) == (seqs[-1], events[:2])
    assert engine.log_page("t", seqs[0], seqs[-1], 10) == (seqs[-1], events[1:])
    engine.append_log("u", b"\x00")
    assert engine.threads() == ["t", "u"]
    assert engine.prune("t", 1) == 3  # one per namespace kept
    kept = engine.page("t", None, None, None, 10, 1 << 22)[1]
    assert [format_id(row[0]) for row in kept] == [ids[4], ids[3]]
    assert engine.delete_thread("t") == 2 and engine.threads() == ["u"]
    fresh, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    assert fresh > ids[-1]  # an id is never handed out again, even after deletes


# --- ids in commit order within a thread ------------------------------------------------------

def test_a_seq_is_drawn_only_once_the_thread_lock_is_held(engine, pg_url, hang_detector):
    """Deterministic: another session holds the thread's lock and draws a seq meanwhile; the
    blocked put's seq must come after it (drawn before the lock, it would come before)."""
    hang_detector(60)
    holder = admin(pg_url)
    watcher = admin(pg_url)
    try:
        holder.execute("BEGIN")
        holder.execute(pg_sql._LOCK_THREAD, (pg_engine.THREAD_LOCK, "t"))
        done: list = []
        worker = threading.Thread(target=lambda: done.append(
            engine.put_checkpoint("t", "", None, None, STATE, META)))
        worker.start()
        while not watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                  "AND NOT granted").fetchone()[0]:
            assert worker.is_alive() and not done, "the put did not wait for the thread lock"
            time.sleep(0.005)
        (drawn,) = holder.execute("SELECT nextval('sqlitesaver.checkpoints_seq')").fetchone()
        holder.execute("COMMIT")
        worker.join()
        assert parse_id(done[0][0]) > drawn
    finally:
        holder.close()
        watcher.close()


def test_concurrent_writers_never_commit_below_what_a_reader_saw(engine, pg_url,
                                                                 hang_detector):
    """8 writers on one thread (and 2 on others) and a reader: each new id the reader sees is
    above every id it saw before, so polling for "newer than X" never misses a checkpoint."""
    hang_detector(120)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    stop = threading.Event()
    errors: list = []
    written: list = []

    def writer(thread_id: str, count: int) -> None:
        try:
            for _ in range(count):
                written.append(engine.put_checkpoint(thread_id, "", None, None,
                                                     rng.randbytes(8), META)[0])
        except BaseException as exc:
            errors.append(exc)

    seen_violations: list = []

    def reader() -> None:
        seen: set[int] = set()
        with admin(pg_url) as conn:
            while not stop.is_set():
                now = {row[0] for row in conn.execute(
                    "SELECT seq FROM sqlitesaver.checkpoints WHERE thread_id = 'shared'")}
                new = now - seen
                if seen and new and min(new) < max(seen):
                    seen_violations.append((min(new), max(seen)))
                seen |= now

    workers = [threading.Thread(target=writer, args=("shared", 40)) for _ in range(8)]
    workers += [threading.Thread(target=writer, args=(f"other-{i}", 40)) for i in range(2)]
    watch = threading.Thread(target=reader)
    watch.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    watch.join()
    assert not errors, (seed, errors[:3])
    assert len(set(written)) == len(written) == 400, seed
    assert not seen_violations, f"seed {seed}: {seen_violations[:5]}"


# --- retries, maybe committed, restarts -------------------------------------------------------

def test_serialization_failures_and_deadlocks_are_retried_then_busy(engine, pg_url,
                                                                    monkeypatch):
    failures = inject_retryable_failures(monkeypatch, 3)
    cp, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    assert failures["left"] == 0 and len(engine.get_rows("t", "", cp)) == 1
    failures["left"] = 10**9
    engine.busy_timeout = 0.2
    before = contents(pg_url)
    start = time.monotonic()
    with pytest.raises(BusyTimeoutError, match="retried until the deadline") as caught:
        engine.put_checkpoint("t", "", None, None, STATE, META)
    assert 0.2 <= time.monotonic() - start < 5 and caught.value.sqlstate in ("40001", "40P01")
    assert contents(pg_url) == before


def test_a_connection_lost_during_commit_is_maybe_committed(engine, pg_url):
    def work(conn):
        conn.execute("INSERT INTO sqlitesaver.log VALUES (999, 'x', 0, '\\x00', 0)")
        with admin(pg_url) as other:  # the backend dies before COMMIT reaches it
            other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))

    with pytest.raises(DatabaseIOError, match="maybe committed"):
        engine._write("testing", work)
    assert engine.log_page("x", -1, None, 10) == (None, [])  # here it was not: hence "maybe"
    engine.append_log("x", b"\x01")  # the pool replaced the dead connection


@pytest.mark.parametrize("kind", ["_write", "_read"])
def test_a_connection_lost_before_commit_was_not_committed_nor_run_again(engine, pg_url,
                                                                          kind):
    """Lost after its BEGIN, a transaction is not run again behind the caller's back: a
    statement that kills its backend would, on every try, put the whole cluster through crash
    recovery (seen: up to 12 tries per call, each a cluster restart, in the server-crash
    torture). Only a connection already dead at the BEGIN is replaced."""
    runs = []

    def work(conn):
        runs.append(conn.info.backend_pid)
        with admin(pg_url) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        conn.execute("SELECT 1")

    with pytest.raises(DatabaseIOError, match="was not committed"):
        getattr(engine, kind)("testing", work)
    assert len(runs) == 1
    engine.append_log("x", b"\x01")  # and the pool replaced the dead connection


@pytest.mark.parametrize("thread_id", ["a'b", "back\\slash", "e\\'; SELECT 1; --", "ünï ☃",
                                       "$$x$$", ""])
def test_a_thread_id_quoted_into_the_begin_string_locks_exactly_that_thread(engine, thread_id):
    """The thread's advisory lock goes into the BEGIN string as a literal (no round trip of its
    own): the lock held must be hashtext of exactly that text, whatever it holds."""
    def held(conn):
        (key2,) = conn.execute("SELECT hashtext(%s)", (thread_id,)).fetchone()
        locks = conn.execute(
            "SELECT classid::bigint << 32 | objid::bigint FROM pg_locks WHERE "
            "locktype = 'advisory' AND pid = pg_backend_pid() AND objsubid = 2 AND mode = "
            "'ExclusiveLock'").fetchall()
        return key2, locks

    key2, locks = engine._write("testing", held, threads=(thread_id,))
    assert locks == [((pg_engine.THREAD_LOCK << 32) | (key2 & 0xFFFFFFFF),)]
    cp, _ = engine.put_checkpoint(thread_id, "", None, None, STATE, META)
    assert engine.get_rows(thread_id, "", cp)[0][1] == thread_id


def test_dead_pooled_connections_are_replaced_by_every_kind_of_call(pg_url, pg_cluster):
    """Connections are not checked when the pool hands them out (a round trip per call):
    after a server crash every pooled one is dead, and each kind of call (a write, a get, a
    page, a delete, the thread list, a transaction block) must still work, replacing them."""
    e = pg_engine.Engine(pg_url, busy_timeout=5.0, max_connections=4)
    try:
        first, _ = e.put_checkpoint("t", "", None, None, STATE, META)
        barrier = threading.Barrier(4)

        def hold() -> None:  # four connections out at once, so the pool keeps four
            with e._connection("testing"):
                barrier.wait(timeout=30)

        workers = [threading.Thread(target=hold) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert e._pool.get_stats()["pool_size"] == 4
        for call in (lambda: e.put_checkpoint("t", "", first, None, STATE, META),
                     lambda: e.get_rows("t", "", None),
                     lambda: e.page("t", "", None, None, 10, 1 << 22),
                     lambda: e.delete_thread("gone"),
                     lambda: e.threads()):
            pg_cluster.kill_all()
            pg_cluster.start()
            call()
        pg_cluster.kill_all()
        pg_cluster.start()
        with e.transaction():
            e.append_log("t", b"\x01")
        assert e.log_page("t", 0, None, 10)[1][0][1] == "t"
    finally:
        e.close()


def test_a_server_restarted_between_calls_costs_a_reconnect(engine, pg_cluster):
    first, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    pg_cluster.kill_all()
    pg_cluster.start()
    second, _ = engine.put_checkpoint("t", "", first, None, STATE, META)  # no error
    assert [row[0] for row in engine.page("t", "", None, None, 10, 1 << 22)[1]] == [
        parse_id(second), parse_id(first)]  # the acknowledged one survived the crash


def _session_settings(e) -> tuple:
    with e._pool.connection() as conn:
        return conn.execute("SELECT current_setting('statement_timeout'), "
                            "current_setting('lock_timeout'), "
                            "current_setting('plan_cache_mode')").fetchone()


NO_SESSION_STATE = ("0", "0", "auto")  # the server's defaults


@pytest.mark.parametrize("pooler", ["prepare_threshold=None", "found"])
def test_timeouts_hold_per_transaction_and_leave_no_session_state(pg_url, hang_detector,
                                                                  monkeypatch, pooler):
    """Behind a transaction-pooling PgBouncer, a session-level SET stays on one server
    connection: it bounds no later transaction served by another one, and leaks to the other
    clients that one is handed to. Measured through PgBouncer 1.18 before the fix: another
    client saw lock_timeout=1s set by a Saver, and once PgBouncer had recycled the server
    connection (server_lifetime), a put on a locked thread with busy_timeout=1 waited 12 s,
    until the lock's holder went away. Here the server connection 'handed over' is simulated by
    resetting the pooled connection's session settings to the server's defaults (none).

    A pooler is assumed with ``prepare_threshold=None`` (the setting for PgBouncer), and where
    one is found (ServerSettings.direct; a real PgBouncer: test_postgres_pgbouncer.py), here
    simulated."""
    hang_detector(60)
    threshold = 5
    if pooler == "found":
        read = connect.read_settings
        monkeypatch.setattr(connect, "read_settings", lambda conn, server: connect.ServerSettings(
            **{**read(conn, server).__dict__, "direct": False}))
    else:
        threshold = None
    e = pg_engine.Engine(pg_url, busy_timeout=0.5, max_connections=1,
                         options=connect.Options(lock_timeout=0.5, statement_timeout=1.0,
                                                 prepare_threshold=threshold))
    holder = admin(pg_url)
    try:
        e.put_checkpoint("t", "", None, None, STATE, META)
        e.get_rows("t", "", None)
        assert e.settings()["session_settings"] is False
        assert _session_settings(e) == NO_SESSION_STATE  # nothing left on the session
        with e._pool.connection() as conn:
            conn.execute("SET lock_timeout = 0")
            conn.execute("SET statement_timeout = 0")
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('t'))", (pg_engine.THREAD_LOCK,))
        releaser = threading.Timer(8, lambda: admin(pg_url).execute(  # unbounded otherwise
            "SELECT pg_advisory_unlock_all(), pg_terminate_backend(%s)",
            (holder.info.backend_pid,)))
        releaser.start()
        start = time.monotonic()
        with pytest.raises(BusyTimeoutError):
            e.put_checkpoint("t", "", None, None, STATE, META)
        assert time.monotonic() - start < 4
        releaser.cancel()
        releaser.join()  # ended before the next test counts threads (test_resources)
        holder.execute("SELECT pg_advisory_unlock_all()")
        holder.execute("BEGIN")  # a reader waits behind an exclusive table lock, bounded too
        holder.execute("LOCK TABLE sqlitesaver.checkpoints IN ACCESS EXCLUSIVE MODE")
        start = time.monotonic()
        with pytest.raises(BusyTimeoutError):
            e.get_rows("t", "", None)
        with pytest.raises(BusyTimeoutError):
            e.page("t", "", None, None, 10, 1 << 20)
        assert time.monotonic() - start < 6
        holder.execute("ROLLBACK")
    finally:
        holder.close()
        e.close()


def test_a_direct_connections_session_carries_the_timeouts_and_the_plan_mode(pg_url,
                                                                             hang_detector):
    """With no pooler between (prepare_threshold set, the server's own process reached), each
    pooled connection's session carries the timeouts and the generic plan mode
    (connect.session_settings), and a get, one statement sent alone, runs under them: behind
    an exclusive table lock it fails at the lock timeout, not never."""
    hang_detector(60)
    e = pg_engine.Engine(pg_url, busy_timeout=0.5, max_connections=1,
                         options=connect.Options(lock_timeout=0.5, statement_timeout=1.0))
    holder = admin(pg_url)
    releaser = None
    try:
        e.put_checkpoint("t", "", None, None, STATE, META)
        assert connect.read_settings(holder, "server").direct is True
        assert e.settings()["session_settings"] is True
        assert _session_settings(e) == ("1s", "500ms", "force_generic_plan")
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE sqlitesaver.checkpoints IN ACCESS EXCLUSIVE MODE")
        releaser = threading.Timer(8, lambda: admin(pg_url).execute(  # unbounded otherwise
            "SELECT pg_terminate_backend(%s)", (holder.info.backend_pid,)))
        releaser.start()
        start = time.monotonic()
        with pytest.raises(BusyTimeoutError):
            e.get_rows("t", "", None)
        assert time.monotonic() - start < 4
        holder.execute("ROLLBACK")
        assert len(e.get_rows("t", "", None)) == 1
    finally:
        if releaser is not None:
            releaser.cancel()
            releaser.join()  # ended before the next test counts threads
        holder.close()
        e.close()


def _held(e, count: int) -> list:
    """The settings of ``count`` pooled connections held at once (so that they are distinct),
    with whether each says it carries them."""
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(e._connection("looking")) for _ in range(count)]
        assert len({id(conn) for conn in conns}) == count
        return [(conn.sqlitesaver_session, conn.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), "
            "current_setting('plan_cache_mode')").fetchone()) for conn in conns]


def test_every_pooled_connection_carries_the_session_settings_after_a_restart_too(
        pg_url, pg_cluster, hang_detector):
    """Not only the pool's first connection: each one it opens, and those it opens again after
    the server restarted (a stale one is replaced on its next use)."""
    hang_detector(60)
    e = pg_engine.Engine(pg_url, busy_timeout=5.0, max_connections=3,
                         options=connect.Options(lock_timeout=0.5, statement_timeout=1.0))
    ours = (True, ("1s", "500ms", "force_generic_plan"))
    try:
        e.put_checkpoint("t", "", None, None, STATE, META)
        assert _held(e, 3) == [ours] * 3
        pg_cluster.kill_all()
        pg_cluster.start()
        for _ in range(3):
            assert len(e.get_rows("t", "", None)) == 1  # each stale connection replaced
        assert _held(e, 3) == [ours] * 3
    finally:
        e.close()


def test_a_pooled_connection_that_reaches_a_pooler_sets_nothing(pg_url, monkeypatch,
                                                                 hang_detector):
    """The first connection reached the server itself, a later one of the same pool does not
    (a URL of several hosts, a name moved onto a PgBouncer): that one's session gets nothing
    (connect.session_settings' WHERE), and its reads set their timeouts per transaction. The
    pooler is simulated: the process id libpq was given, as a pooler's cancel key would have
    it, is no backend's."""
    hang_detector(60)
    from psycopg import ConnectionInfo

    e = pg_engine.Engine(pg_url, busy_timeout=5.0, max_connections=2,
                         options=connect.Options(lock_timeout=0.5, statement_timeout=1.0))
    try:
        e.put_checkpoint("t", "", None, None, STATE, META)
        assert _held(e, 1) == [(True, ("1s", "500ms", "force_generic_plan"))]
        monkeypatch.setattr(ConnectionInfo, "backend_pid", property(lambda self: 1))
        with e._connection("holding the first") as first:
            assert first.sqlitesaver_session is True
            assert len(e.get_rows("t", "", None)) == 1  # on a second one, opened now
            with e._connection("looking") as second:
                assert second is not first
                assert second.sqlitesaver_session is False
                assert second.execute("SELECT current_setting('statement_timeout'), "
                                      "current_setting('lock_timeout'), current_setting("
                                      "'plan_cache_mode')").fetchone() == NO_SESSION_STATE
    finally:
        e.close()


def test_a_server_down_is_said_so_not_busy(pg_cluster, pg_url):
    """The pool cannot hand out a connection because the server is down: before, that was a
    BusyTimeoutError advising to raise max_connections (every caller, during an outage)."""
    e = pg_engine.Engine(pg_url, busy_timeout=1.0, options=connect.Options(connect_timeout=2))
    try:
        e.put_checkpoint("t", "", None, None, STATE, META)
        pg_cluster.stop()
        try:
            for _ in range(2):
                start = time.monotonic()
                with pytest.raises(CannotOpenError, match="running and reachable"):
                    e.put_checkpoint("t", "", None, None, STATE, META)
                assert time.monotonic() - start < 8
        finally:
            pg_cluster.start()
        e.put_checkpoint("t", "", None, None, STATE, META)
    finally:
        e.close()


def test_a_restart_costs_a_reconnect_even_with_busy_timeout_zero(pg_cluster, pg_url):
    e = pg_engine.Engine(pg_url, busy_timeout=0)
    try:
        e.put_checkpoint("t", "", None, None, STATE, META)
        pg_cluster.kill_all()
        pg_cluster.start()
        e.put_checkpoint("t", "", None, None, STATE, META)  # was BusyTimeoutError
    finally:
        e.close()


def test_a_long_outage_costs_a_reconnect_once_the_server_is_back(pg_cluster, pg_url,
                                                                monkeypatch, hang_detector):
    """psycopg_pool retries a failed connection attempt after a delay that doubles (1 s, 2 s,
    4 s ... up to its reconnect_timeout, 5 min), and counts the connection it is reconnecting
    in its size: after an outage of a minute, every call for up to a minute after the server
    was back got BusyTimeoutError ("every connection stayed in use": none was). A long outage
    is modelled in a second by a steeper backoff (x100: the pool's third attempt ~100 s after
    its second)."""
    from psycopg_pool import base

    hang_detector(90)
    monkeypatch.setattr(base.AttemptWithBackoff, "DELAY_BACKOFF", 100.0)
    e = pg_engine.Engine(pg_url, busy_timeout=1.0, max_connections=1,
                         options=connect.Options(connect_timeout=3))
    try:
        e.put_checkpoint("t", "", None, None, STATE, META)
        pg_cluster.stop()
        try:
            deadline = time.monotonic() + 60
            while e._pool.get_stats().get("connections_errors", 0) < 2:  # two attempts failed
                assert time.monotonic() < deadline
                with pytest.raises(SaverError):  # CannotOpenError (or busy, while it backs off)
                    e.put_checkpoint("t", "", None, None, STATE, META)
        finally:
            pg_cluster.start()
        start = time.monotonic()
        e.put_checkpoint("t", "", None, None, STATE, META)  # was BusyTimeoutError for ~100 s
        assert time.monotonic() - start < 6
        assert not e._checkouts
    finally:
        e.close()


def test_every_connection_in_use_is_busy(pg_url):
    e = pg_engine.Engine(pg_url, busy_timeout=0.3, max_connections=1)
    try:
        with e._connection("holding the only connection"):
            start = time.monotonic()
            with pytest.raises(BusyTimeoutError, match="stayed in use"):
                e.put_checkpoint("t", "", None, None, STATE, META)
            assert time.monotonic() - start < 2
        e.put_checkpoint("t", "", None, None, STATE, META)
    finally:
        e.close()


@pytest.mark.parametrize("ending", [None, ValueError, KeyboardInterrupt])
def test_a_block_left_in_a_transaction_returns_its_connection_rolled_back(pg_url, ending):
    """A block that leaves its connection inside a transaction, ending normally or by an
    exception (KeyboardInterrupt included), gets it back rolled back, never committed, its
    checkout ended, idle in the pool for the next call. (The pool's own ``connection()``,
    used before, committed after a normal end.)"""
    from psycopg.pq import TransactionStatus

    e = pg_engine.Engine(pg_url, busy_timeout=1.0, max_connections=1)
    try:
        with contextlib.suppress(ValueError, KeyboardInterrupt):
            with e._connection("testing") as conn:
                conn.execute("BEGIN")
                conn.execute("CREATE TABLE left_open (x int)")
                assert id(conn) in e._checkouts
                if ending is not None:
                    raise ending()
        assert id(conn) not in e._checkouts
        with admin(pg_url) as look:
            assert look.execute("SELECT to_regclass('left_open')").fetchone() == (None,)
        stats = e._pool.get_stats()
        assert stats["pool_available"] == stats["pool_size"] == 1, stats
        with e._connection("testing") as again:  # the only connection, idle
            assert again is conn
            assert again.info.transaction_status == TransactionStatus.IDLE
        e.put_checkpoint("t", "", None, None, STATE, META)
    finally:
        e.close()


def test_a_connection_broken_in_a_block_is_not_lent_again(pg_url):
    e = pg_engine.Engine(pg_url, busy_timeout=5.0, max_connections=1)
    try:
        with pytest.raises(psycopg.OperationalError):
            with e._connection("testing") as conn:
                conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert conn.broken
        with e._connection("testing") as again:
            assert again is not conn
            assert again.execute("SELECT 1").fetchone() == (1,)
    finally:
        e.close()


def test_prepared_or_never_prepared(pg_url):
    for threshold in (None, 0):
        e = pg_engine.Engine(pg_url, options=connect.Options(prepare_threshold=threshold))
        try:
            cp = None
            for _ in range(3):
                cp, _ = e.put_checkpoint("t", "", cp, None, STATE, META)
            assert e.settings()["prepare_threshold"] == threshold
        finally:
            e.close()


def test_settings_and_closing(engine):
    settings = engine.settings()
    assert settings["engine"] == "postgresql" and settings["fsync"] == "on"
    assert settings["synchronous_commit"] == "on" and "@" in settings["server"]
    engine.close()
    engine.close()
    with pytest.raises(SaverClosedError):
        engine.put_checkpoint("t", "", None, None, STATE, META)


def test_normal_durability_commits_asynchronously(pg_url):
    e = pg_engine.Engine(pg_url, durability="normal")
    try:
        seen = e._write("testing", lambda conn: conn.execute(
            "SELECT current_setting('synchronous_commit')").fetchone()[0])
        assert seen == "off" and e.settings()["synchronous_commit"] == "off"
    finally:
        e.close()
    with pytest.raises(InvalidArgumentError, match="durability"):
        pg_engine.Engine(pg_url, durability="off")


# --- copy and delete by metadata --------------------------------------------------------------

def test_copy_thread_remaps_parents_and_verifies_every_row(engine, pg_url):
    a, _ = engine.put_checkpoint("src", "", None, None, STATE, META)
    b, _ = engine.put_checkpoint("src", "", a, "keyed", STATE, META)
    engine.put_writes("src", "", "keyed", "task", "", [(0, "c", b"\x05")], False)
    seen: list = []
    assert engine.copy_thread("src", "dst", lambda row: seen.append(row[0]),
                              lambda cid, writes: seen.append((cid, len(writes)))) == 2
    keyed_seq = engine.get_rows("src", "", b)[0][0]
    assert seen == [parse_id(a), (a, 0), keyed_seq, ("keyed", 1)]  # each source row, in order
    rows = engine.page("dst", None, None, None, 10, 1 << 22)[1]
    (copied_b, copied_a) = rows
    assert copied_b[8] == "keyed" and copied_b[3] == copied_a[0] != parse_id(a)
    for row in rows:
        verify_checkpoint(row)
    before = contents(pg_url)
    with pytest.raises(InvalidArgumentError, match="already has checkpoints"):
        engine.copy_thread("src", "dst", lambda row: None, lambda cid, w: None)

    def damaged(row):
        raise CheckpointNotFoundError("stands in for the core's ChecksumError")

    with pytest.raises(CheckpointNotFoundError):
        engine.copy_thread("src", "dst2", damaged, lambda cid, w: None)
    assert contents(pg_url) == before


def test_delete_matching_detaches_children_and_locks_threads(engine):
    a, _ = engine.put_checkpoint("t", "", None, None, b"\x01", META)
    b, _ = engine.put_checkpoint("t", "", a, None, b"\x02", META)
    c, _ = engine.put_checkpoint("t", "", b, None, b"\x03", META)
    engine.put_checkpoint("u", "", None, None, b"\x02", META)
    assert engine.delete_matching("t", lambda row: row[5] == b"\x02") == 1
    rows = engine.page("t", None, None, None, 10, 1 << 22)[1]
    assert [format_id(r[0]) for r in rows] == [c, a] and rows[0][3] is None  # detached
    verify_checkpoint(rows[0])
    assert engine.delete_matching(None, lambda row: row[5] == b"\x02") == 1  # u's
    assert engine.delete_matching(None, lambda row: False) == 0


def test_delete_matching_over_every_thread_takes_one_lock_not_one_per_thread(engine, pg_url):
    """One advisory lock per thread exhausted the server's shared lock table on a large
    database: with the defaults (max_locks_per_transaction=64, max_connections=100), 30,000
    threads made delete_matching fail with "out of shared memory" (53200), every time, and
    every other session of the server needing a lock meanwhile with it."""
    for i in range(300):
        engine.put_checkpoint(f"thread-{i}", "", None, None, b"\x01" if i % 2 else b"\x02",
                              META)
    held: list[int] = []
    watcher = admin(pg_url)
    try:
        def matches(row):
            if not held:
                held.append(watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = "
                                            "'advisory' AND granted").fetchone()[0])
            return row[5] == b"\x02"

        assert engine.delete_matching(None, matches) == 150
        assert held == [1]
    finally:
        watcher.close()


def test_a_write_waits_for_a_delete_matching_over_every_thread(engine, pg_url, hang_detector):
    """A put cannot link a child to a checkpoint being deleted: the put waits."""
    hang_detector(60)
    parent, _ = engine.put_checkpoint("t", "", None, None, b"\x02", META)
    entered, release = threading.Event(), threading.Event()
    results: dict = {}  # by name: the put may finish before the deleter's thread records

    def matches(row):
        entered.set()
        assert release.wait(20)
        return row[5] == b"\x02"

    deleter = threading.Thread(target=lambda: results.setdefault(
        "deleted", engine.delete_matching(None, matches)))
    deleter.start()
    assert entered.wait(20)
    putter = threading.Thread(target=lambda: results.setdefault(
        "put", _try(lambda: engine.put_checkpoint("t", "", parent, None, STATE, META))))
    putter.start()
    watcher = admin(pg_url)
    try:  # until the put waits on the server for the delete's lock (a state, not a guess)
        deadline = time.monotonic() + 20
        while not watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                  "AND NOT granted").fetchone()[0]:
            assert putter.is_alive() and "put" not in results, \
                f"the put did not wait for the delete: {results}"
            assert time.monotonic() < deadline, "the put never waited for the delete's lock"
            time.sleep(0.005)
    finally:
        watcher.close()
    assert putter.is_alive() and "put" not in results  # waiting for the delete's lock
    release.set()
    deleter.join()
    putter.join()
    assert results["deleted"] == 1 and isinstance(results["put"], CheckpointNotFoundError)


def _try(call):
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - returned for the assertion
        return exc


_SCAN_PROBE = """
import os, resource, sys
from sqlitesaver.postgres import engine as pg_engine
pg_engine.SCAN_ROWS = 4
e = pg_engine.Engine(sys.argv[1], durability="normal")
blob = os.urandom(1 << 20)
for i in range(40):
    e.put_checkpoint("src", "", None, None, blob + bytes([i]), b"\\x80")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[2] == "copy_thread":
    assert e.copy_thread("src", "dst", lambda row: None, lambda key, writes: None) == 40
else:
    assert e.delete_matching(None, lambda row: row[5][-1] % 2 == 0) == 20
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
e.close()
"""


@pytest.mark.parametrize("operation", ["copy_thread", "delete_matching"])
def test_whole_thread_scans_hold_a_few_rows_not_the_thread(pg_url, operation):
    """copy_thread and delete_matching verify every row in Python; they read them through a
    server-side cursor. Before, the whole result came at once (into libpq's memory, unseen by
    tracemalloc): delete_matching over 300 checkpoints of 1 MiB grew the client by 606 MB
    (SQLite's: 1 MB), which for a store of gigabytes is the process's memory. Measured in a
    child process: the peak RSS while scanning 40 MiB of checkpoints."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SCAN_PROBE, pg_url, operation],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))
    assert done.returncode == 0, done.stderr
    grown_mib = int(done.stdout.split()[-1]) / 1024
    assert grown_mib < 25, f"{grown_mib:.0f} MiB more while scanning 40 MiB of checkpoints"


def test_statements_sent_with_the_commit_are_all_or_nothing(pg_url):
    """A write's last statements go in its COMMIT string (one round trip). One of them failing
    must leave nothing of the transaction, earlier statements of the string included, and
    the connection usable (max_connections=1: the next write gets the same one)."""
    e = pg_engine.Engine(pg_url, busy_timeout=5.0, max_connections=1)
    try:
        insert = ("INSERT INTO sqlitesaver.log (seq, thread_id, created_at, event, checksum) "
                  "VALUES (%s, %s, 0, %s, 0)")

        def work(tx):
            tx.execute(insert, (1001, "now", b"\x01"))
            tx.later(insert, (1002, "later", b"\x02"))
            tx.later("SELECT 1 / %s", (0,))

        with pytest.raises(SaverError, match="division by zero"):
            e._write("testing", work)
        assert e.log_page("now", -1, None, 10) == (None, [])
        assert e.log_page("later", -1, None, 10) == (None, [])
        seq = e.append_log("after", b"\x03")
        assert [row[0] for row in e.log_page("after", -1, None, 10)[1]] == [seq]
    finally:
        e.close()


def test_a_page_in_one_round_trip_is_the_page_of_the_statement_by_statement_path(engine):
    """A first page (or one below a known seq) is chosen in SQL and read in one round trip;
    inside a transaction block (and below a `before` id) the same page is read statement by
    statement, its rows chosen in Python. Both must give the same rows, writes, bound and
    "more" for any sizes, page lengths and budgets (seeded; the seed is in the message)."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    parent = None
    for _ in range(30):
        parent, _ = engine.put_checkpoint("t", rng.choice(["", "sub"]), None, None,
                                          os.urandom(rng.randrange(1, 300)),
                                          os.urandom(rng.randrange(1, 50)))
        for task in range(rng.randrange(3)):
            ns = engine.page("t", None, None, None, 1, 1 << 22)[1][0][2]
            engine.put_writes("t", ns, parent, f"task{task}", "",
                              [(i, "ch", os.urandom(rng.randrange(1, 40)))
                               for i in range(rng.randrange(1, 3))], False)
    for case in range(60):
        namespace = rng.choice([None, "", "sub"])
        upper = rng.choice([None, rng.randrange(1, 40)])
        want, budget = rng.randrange(1, 35), rng.choice([1, rng.randrange(1, 4000), 1 << 22])
        fast = engine.page("t", namespace, None, upper, want, budget)
        with engine.transaction():
            slow = engine.page("t", namespace, None, upper, want, budget)
        assert fast == slow, (f"seed {seed}, case {case}: namespace={namespace!r} "
                              f"upper={upper} want={want} budget={budget}")


def test_ctrl_c_while_waiting_for_a_pooled_connection_loses_no_connection(pg_url):
    """Ctrl-C in a call waiting for a pooled connection (every one in use) raises
    KeyboardInterrupt there, and the connection later freed goes to the next caller, not to
    the interrupted wait: psycopg_pool's waiter caught only Exception, so the pool handed the
    connection to a waiter that was gone, and with max_connections=1 every later call got
    BusyTimeoutError (found in session 16's review)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT raises KeyboardInterrupt in a lock wait only in the main thread")
    # Python's own handler, whatever this process inherited (a background job's SIGINT is
    # ignored, and Python then installs none: CI ran it so).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    e = pg_engine.Engine(pg_url, busy_timeout=3.0, max_connections=1)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with e._connection("holding the only connection"):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    main = threading.main_thread().ident

    def interrupt_once_queued() -> None:
        deadline = time.monotonic() + 10
        while not e._pool._waiting and time.monotonic() < deadline:
            time.sleep(0.001)  # polls for the waiter the main thread is about to become
        signal.pthread_kill(main, signal.SIGINT)

    faulthandler.dump_traceback_later(60, exit=True)
    try:
        assert held.wait(10)
        interrupter = threading.Thread(target=interrupt_once_queued)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            e.put_checkpoint("t", "", None, None, STATE, META)
        interrupter.join()
        release.set()
        holder.join()
        start = time.monotonic()
        e.put_checkpoint("t", "", None, None, STATE, META)  # BusyTimeoutError when lost
        assert time.monotonic() - start < 5
        assert e._pool.get_stats()["pool_available"] == 1
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGINT, previous)
        release.set()
        holder.join()
        e.close()
