"""The PostgreSQL engine's one-round-trip put (issue #17; sqlitesaver/postgres/engine.py,
``_put_at_once``) on a real server: one round trip, counted by a proxy between the engine and
the server; its checksum, completed by the server, is what Python computes, and every covered
column and byte of its row is caught damaged by get, list and the validator, while rows of
the CRC-32 form (the two-round-trip path's) keep verifying; the errors it raises are the
two-round-trip path's, with nothing written; a connection lost once it is sent is "maybe
committed" and not run again, one the server closed while idle is replaced."""

from __future__ import annotations

import logging
import os
import random
import selectors
import shutil
import socket
import tempfile
import threading
import time
from urllib.parse import quote

import pytest

from sqlitesaver import ChecksumError, Saver, integrity
from sqlitesaver.errors import CheckpointNotFoundError, DatabaseIOError, InvalidArgumentError
from sqlitesaver.ids import format_id, parse_id
from sqlitesaver.errors import SchemaVersionError
from sqlitesaver.postgres import check as pg_check, engine as pg_engine, schema as pg_schema
from sqlitesaver.postgres import sql as pg_sql

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")

STATE, META = b"\x81\xa1k\x01", b"\x80"  # msgpack {"k": 1} and {}


def admin(url: str):
    return psycopg.connect(url, autocommit=True)


def contents(url: str) -> tuple:
    """Every row of ours, to compare before and after a refused call."""
    with admin(url) as conn:
        return tuple(conn.execute(f"SELECT * FROM sqlitesaver.{table} ORDER BY 1, 2").fetchall()
                     for table in ("checkpoints", "writes", "log"))


def checksum_of(url: str, thread_id: str) -> list[int]:
    with admin(url) as conn:
        return [row[0] for row in conn.execute(
            "SELECT checksum FROM sqlitesaver.checkpoints WHERE thread_id = %s ORDER BY seq",
            (thread_id,))]


# --- one round trip ------------------------------------------------------------------------

class RoundTrips:
    """A proxy on a Unix socket between clients and the server, counting round trips: each
    time the server answers after the client has sent something since its last answer. A
    libpq pipeline is one (the server sends nothing before the Sync); a simple-query string
    is one; two strings one after the other are two."""

    def __init__(self, server_dir: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="sqlitesaver-proxy-")
        self.target = os.path.join(server_dir, ".s.PGSQL.5432")
        self.count = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(os.path.join(self.dir, ".s.PGSQL.5432"))
        self._listener.listen()
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        return url.split("?host=")[0] + "?host=" + quote(self.dir, safe="/")

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.target)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)
        asked = False  # the client sent something the server has not answered yet
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(1 << 16)
                    if not data:
                        return
                    if key.fileobj is client:
                        asked = True
                    elif asked:
                        asked = False
                        with self._lock:
                            self.count += 1
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._open = False
        self._listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def proxy(pg_cluster):
    counter = RoundTrips(pg_cluster.socket_dir)
    yield counter
    counter.close()


def test_a_put_is_one_round_trip_and_the_counter_can_tell_two(pg_url, proxy):
    e = pg_engine.Engine(proxy.url(pg_url), busy_timeout=5.0, max_connections=1)
    try:
        parent, _ = e.put_checkpoint("t", "", None, None, STATE, META)  # the pool's connection
        e.put_checkpoint("t", "", None, "keyed", STATE, META)
        cases = [lambda: e.put_checkpoint("t", "", None, None, STATE, META),
                 lambda: e.put_checkpoint("t", "", parent, None, STATE, META),
                 lambda: e.put_checkpoint("t", "", "keyed", None, STATE, META),
                 lambda: e.put_checkpoint("t", "", parent, "keyed", STATE, META)]  # replaces
        trips: list[list[int]] = [[] for _ in cases]
        for _ in range(8):  # past psycopg's prepare threshold: prepared ones too
            for case, counted in zip(cases, trips):
                before = proxy.count
                case()
                counted.append(proxy.count - before)
        # One each, but for the call at which psycopg prepares the statement (once per
        # connection and statement: its Parse is a round trip of its own outside a pipeline;
        # the write is in the next one). Cases 2 and 4 share one (a parent by seq).
        for counted in trips:
            assert sorted(counted) in ([1] * 8, [1] * 7 + [2]), trips
        assert sum(counted.count(2) for counted in trips) == 3, trips  # by seq, by id, none
        with pytest.raises(CheckpointNotFoundError):  # a refused put: one round trip as well
            before = proxy.count
            e.put_checkpoint("t", "", "nope", None, STATE, META)
        assert proxy.count - before == 1
        # The counter sees two when there are two: the BEGIN string, then the COMMIT string.
        before = proxy.count
        e._write("testing", lambda tx: tx.row, first=("SELECT 1", ()))
        assert proxy.count - before == 2
        with e.transaction():  # the two-round-trip path (a block's own statements)
            before = proxy.count
            e.put_checkpoint("t", "", parent, None, STATE, META)
            assert proxy.count - before > 1
    finally:
        e.close()


# --- the checksum forms ----------------------------------------------------------------------

def test_the_server_computes_the_checksum_python_computes(pg_url):
    """integrity.server_checksum and sql._server_checksum, over values of every sign and size
    and a missing parent (seeded; the seed is in the message)."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    expression = pg_sql._server_checksum("%(seq)s::bigint", "%(created)s::bigint",
                                         "%(parent)s::bigint")
    with admin(pg_url) as conn:
        for case in range(200):
            values = {"crc": rng.randrange(1 << 32),
                      "seq": rng.choice([1, rng.randrange(1 << 63), -rng.randrange(1 << 63)]),
                      "created": rng.choice([0, rng.randrange(1 << 53), (1 << 63) - 1]),
                      "parent": rng.choice([None, rng.randrange(-(1 << 63), 1 << 63)])}
            (found,) = conn.execute(f"SELECT {expression}", values).fetchone()
            expected = integrity.server_checksum(values["crc"], values["seq"],
                                                 values["created"], values["parent"])
            assert found == expected and found >= integrity.SERVER_FORM, (seed, case, values)


@pytest.fixture
def written(pg_url):
    """A thread 't' with a parent (CRC-32 form: put inside a transaction block, the
    two-round-trip path) and its child with a caller-supplied id and pending writes (the
    one-round-trip put: server form), and a thread 'u' of one checkpoint of each form."""
    with Saver(pg_url) as saver:
        with saver.transaction():
            parent = saver.put("t", {"n": 1}, metadata={"m": 1})
            saver.put("u", {"n": 3})
        saver.put("t", {"n": 2}, parent_id=parent.checkpoint_id, checkpoint_id="mine",
                  metadata={"m": 2})
        saver.put("u", {"n": 4})
    return pg_url


def test_both_forms_are_written_read_and_validated(written):
    crc, server = checksum_of(written, "t")
    assert crc < 1 << 32 and server >= integrity.SERVER_FORM
    assert [c >= integrity.SERVER_FORM for c in checksum_of(written, "u")] == [False, True]
    with Saver(written) as saver:
        assert [cp.state for cp in saver.list("t")] == [{"n": 2}, {"n": 1}]
        assert saver.get("t").metadata == {"m": 2} and saver.get("t").checkpoint_id == "mine"
        assert saver.copy_thread("t", "copy") == 2  # every source row verified first
        assert [cp.state for cp in saver.list("copy")] == [{"n": 2}, {"n": 1}]
    report = pg_check.check_server(written)
    assert report.ok, report


#: Damage to one covered column or byte of the checkpoint "mine" (server form) of thread 't':
#: (name, the SET clause, the thread and namespace to read it back from).
DAMAGE = [
    ("a bit of the state", "state = set_byte(state, 1, get_byte(state, 1) # 1)", "t", ""),
    ("a byte of the metadata", "metadata = set_byte(metadata, 0, get_byte(metadata, 0) # 4)",
     "t", ""),
    ("the state one byte longer", "state = state || '\\x00'::bytea", "t", ""),
    ("the thread", "thread_id = 'v'", "v", ""),
    ("the namespace", "namespace = 'elsewhere'", "t", "elsewhere"),
    ("the caller-supplied id", "key = 'yours'", "t", ""),
    ("the parent's caller-supplied id", "parent_key = 'p'", "t", ""),
    ("the seq", "seq = seq + 1000", "t", ""),
    ("created_at", "created_at = created_at + 1", "t", ""),
    ("the parent seq", "parent_seq = parent_seq - 1", "t", ""),
    ("no parent seq", "parent_seq = NULL", "t", ""),
    ("bit 0 of the checksum", "checksum = checksum # 1", "t", ""),
    ("the form bit of the checksum", "checksum = checksum # (1::bigint << 62)", "t", ""),
    ("the checksum cut to 32 bits (a CRC-32 form)", "checksum = checksum & 4294967295", "t", ""),
]


@pytest.mark.parametrize("name, damage, thread_id, namespace", DAMAGE,
                         ids=[case[0] for case in DAMAGE])
def test_damage_to_a_server_form_row_is_caught_by_get_list_and_the_validator(
        written, name, damage, thread_id, namespace):
    assert checksum_of(written, "t")[1] >= integrity.SERVER_FORM  # "mine": the server form
    with admin(written) as conn:
        conn.execute("DELETE FROM sqlitesaver.writes")  # a seq changed keeps no dangling write
        conn.execute(f"UPDATE sqlitesaver.checkpoints SET {damage} WHERE key = 'mine'")
    with Saver(written) as saver:
        with pytest.raises(ChecksumError):
            saver.get(thread_id, namespace=namespace)
        with pytest.raises(ChecksumError):
            list(saver.list(thread_id))
    report = pg_check.check_server(written)
    assert {step.name: step.status for step in report.steps}["checksums"] == "FAILED", report
    assert report.payloads_failed == 1


def test_damage_to_a_crc_form_row_is_still_caught(written):
    with admin(written) as conn:
        conn.execute("UPDATE sqlitesaver.checkpoints SET created_at = created_at + 1 "
                     "WHERE thread_id = 'u' AND checksum < 4294967296")
    with Saver(written) as saver:
        with pytest.raises(ChecksumError):
            list(saver.list("u"))
    assert pg_check.check_server(written).payloads_failed == 1


def test_a_version_before_the_server_form_refuses_the_database_rather_than_call_it_damaged(
        pg_url, monkeypatch):
    """Schema version 2 marks a database that may hold server-form checksums: a version that
    knows only version 1 (simulated: MIGRATIONS cut to 1) would read those rows as damaged
    (ChecksumError, "restore from a backup"); it refuses to open the database instead, and its
    validator says so. A version 1 database is migrated to 2 with no table changed, its
    CRC-32 rows kept and verified."""
    every = pg_schema.MIGRATIONS
    monkeypatch.setattr(pg_schema, "MIGRATIONS", every[:1])
    with Saver(pg_url) as saver:  # version 1; rows in the CRC-32 form (a block's put)
        with saver.transaction():
            first = saver.put("t", {"n": 1})
    monkeypatch.setattr(pg_schema, "MIGRATIONS", every)
    with Saver(pg_url) as saver:  # migrated to 2
        saver.put("t", {"n": 2}, parent_id=first.checkpoint_id)
        assert [cp.state for cp in saver.list("t")] == [{"n": 2}, {"n": 1}]
    assert [c >= integrity.SERVER_FORM for c in checksum_of(pg_url, "t")] == [False, True]
    report = pg_check.check_server(pg_url)
    assert report.ok and report.schema_version == 2, report
    monkeypatch.setattr(pg_schema, "MIGRATIONS", every[:1])  # the version before, again
    with pytest.raises(SchemaVersionError, match="version 2.*upgrade sqlitesaver"):
        Saver(pg_url)
    report = pg_check.check_server(pg_url)
    assert {step.name: step.status for step in report.steps}["identity"] == "UNUSABLE", report
    assert report.payloads_failed == 0


# --- the errors, nothing written -------------------------------------------------------------

@pytest.fixture
def engine(pg_url):
    opened = pg_engine.Engine(pg_url, busy_timeout=5.0)
    yield opened
    opened.close()


def _refusal(call) -> tuple[type, str]:
    with pytest.raises((CheckpointNotFoundError, InvalidArgumentError)) as caught:
        call()
    return type(caught.value), str(caught.value)


@pytest.mark.parametrize("parent_id, checkpoint_id, refused", [
    ("00000000000000ff", None, CheckpointNotFoundError),  # a generated id no seq has here
    ("ffffffffffffffff", "mine", CheckpointNotFoundError),  # generated-looking, not an int64
    ("not-there", None, CheckpointNotFoundError),  # a caller-supplied id
    ("other-ns", None, CheckpointNotFoundError),  # a checkpoint of another namespace
    ("newer", "mine", InvalidArgumentError),  # not older than the checkpoint it would replace
    ("mine", "mine", InvalidArgumentError),  # itself
])
def test_a_refused_put_writes_nothing_and_says_what_the_two_round_trip_put_says(
        engine, pg_url, parent_id, checkpoint_id, refused):
    first, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    engine.put_checkpoint("t", "", first, "mine", STATE, META)
    engine.put_writes("t", "", "mine", "task", "", [(0, "c", b"\x01")], False)
    engine.put_checkpoint("t", "", "mine", "newer", STATE, META)
    engine.put_checkpoint("t", "other", None, "other-ns", STATE, META)
    commits = engine.commits
    before = contents(pg_url)
    kind, message = _refusal(lambda: engine.put_checkpoint("t", "", parent_id, checkpoint_id,
                                                           b"\x05", META))
    assert kind is refused and "othing was written" in message
    assert contents(pg_url) == before and engine.commits == commits
    with engine.transaction():  # the two-round-trip path: the same type and message
        assert _refusal(lambda: engine.put_checkpoint("t", "", parent_id, checkpoint_id,
                                                      b"\x05", META)) == (kind, message)
    assert contents(pg_url) == before


def test_replacing_keeps_seq_created_at_and_pending_writes(engine, pg_url):
    first, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    engine.put_checkpoint("t", "", None, "mine", STATE, META)
    key, created = engine.put_checkpoint("t", "", None, "mine", STATE, META)
    engine.put_writes("t", "", "mine", "task", "", [(0, "c", b"\x01")], False)
    (row,) = engine.get_rows("t", "", "mine")
    time.sleep(0.01)  # a later clock: created_at kept, not drawn again
    assert engine.put_checkpoint("t", "", first, "mine", b"\x09", b"\x81\xa1m\x02") == (
        "mine", created)
    (again,) = engine.get_rows("t", "", "mine")
    assert again[0] == row[0] and again[4] == row[4] == created
    assert again[3] == parse_id(first) and again[5:7] == (b"\x09", b"\x81\xa1m\x02")
    assert again[10:] == row[10:]  # its pending write, untouched
    seq, thread, ns, parent, created_at, state, meta, checksum, key, parent_key = again[:10]
    assert checksum >= integrity.SERVER_FORM and checksum != row[7]
    assert integrity.expected_checkpoint_checksum(checksum, seq, thread, ns, parent, created_at,
                                                  state, meta, key, parent_key) == checksum
    newest, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    assert parse_id(newest) > row[0]  # a seq drawn by the replacing put is a gap, never reused
    assert format_id(row[0]) < newest


# --- locks ----------------------------------------------------------------------------------

def test_the_put_takes_the_all_threads_lock_before_the_threads(engine, pg_url, hang_detector):
    """Both locks are taken by the put's one statement (sql._LOCKED): the all-threads lock
    (shared) must come first, as in every other write. Here its exclusive holder makes the
    put wait for it, holding nothing of its thread yet; once it is released the put goes on."""
    hang_detector(60)
    key1, key2 = pg_engine.ALL_THREADS_LOCK
    holder, watcher = admin(pg_url), admin(pg_url)
    try:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (key1, key2))
        done: list = []
        worker = threading.Thread(target=lambda: done.append(_try(
            lambda: engine.put_checkpoint("t", "", None, None, STATE, META))))
        worker.start()
        waiting: list = []
        while not waiting:
            waiting = watcher.execute(
                "SELECT pid, classid::bigint, objid::bigint FROM pg_locks WHERE "
                "locktype = 'advisory' AND NOT granted").fetchall()
            assert worker.is_alive(), done
            time.sleep(0.005)
        ((pid, classid, objid),) = waiting
        assert (classid, objid) == (key1, key2)
        assert watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                               "AND pid = %s AND granted", (pid,)).fetchone() == (0,)
        holder.execute("SELECT pg_advisory_unlock_all()")
        worker.join(30)
        assert isinstance(done[0], tuple) and engine.get_rows("t", "", done[0][0])
    finally:
        holder.close()
        watcher.close()


@pytest.mark.parametrize("parent", ["by id", "by seq"])
def test_a_parent_deleted_while_the_put_waits_for_its_lock_is_not_found(engine, pg_url,
                                                                        hang_detector, parent):
    """The put's one statement takes its snapshot before it waits for the thread's lock. The
    parent is deleted and committed by the lock's holder meanwhile (as delete_thread and
    prune do, under that lock): the put must not see it in its old snapshot and link a new
    checkpoint to it (it reads the parent FOR KEY SHARE: the newest version, skipped once
    deleted). It raises "not found" and writes nothing, as a put after the delete would."""
    hang_detector(60)
    key = "parent" if parent == "by id" else None
    parent_id, _ = engine.put_checkpoint("t", "", None, key, STATE, META)
    outcome = deleted_while_waiting(
        pg_url, lambda: engine.put_checkpoint("t", "", parent_id, "child", STATE, META))
    assert isinstance(outcome, CheckpointNotFoundError), outcome
    assert contents(pg_url)[0] == []


def wait_for_waiters(watcher, count: int, workers, outcomes) -> None:
    """Return once ``count`` lock requests wait on the server (seen by ``watcher``); fail if a
    worker ended first (its outcome says why) or after 20 s."""
    deadline = time.monotonic() + 20
    while True:
        (waiting,) = watcher.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
        if waiting >= count:
            return
        assert all(w.is_alive() for w in workers), outcomes
        assert time.monotonic() < deadline, f"{waiting} waiting"
        time.sleep(0.005)


def deleted_while_waiting(pg_url: str, call) -> object:
    """``call()``'s result or exception, run in a thread while another session holds thread
    't''s lock; once ``call``'s statement has begun (its snapshot) and waits for that lock,
    the holder deletes the thread's checkpoints (their writes cascade) and commits, as
    delete_thread does under the same lock."""
    holder, watcher = admin(pg_url), admin(pg_url)
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext('t'))",
                       (pg_engine.THREAD_LOCK,))
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.append(_try(call)))
        worker.start()
        wait_for_waiters(watcher, 1, [worker], outcome)  # its statement has begun, and waits
        holder.execute("DELETE FROM sqlitesaver.checkpoints WHERE thread_id = 't'")
        holder.execute("COMMIT")
        worker.join(30)
        assert not worker.is_alive()
        return outcome[0]
    finally:
        holder.close()
        watcher.close()


@pytest.mark.parametrize("threshold, after", [(5, "1500ms"), (None, "0")])
@pytest.mark.parametrize("durability, synchronous_commit", [("full", "on"), ("normal", "off")])
def test_the_puts_settings_hold_in_its_statement_and_not_after(pg_url, durability,
                                                               synchronous_commit, threshold,
                                                               after):
    """synchronous_commit and lock_timeout are set (set_config, local) by the put's statement
    before its locks and its row, and gone once it committed: the session's are left (the
    lock timeout pool.py's ``_session`` sets, none with ``prepare_threshold=None``). The put's
    lock timeout is the smaller of the two timeouts (connect.set_write_settings). Seen from
    inside the statement by a trigger on the checkpoints table (made for this test's database
    only)."""
    from sqlitesaver.postgres import connect

    e = pg_engine.Engine(pg_url, durability=durability, max_connections=1,
                         options=connect.Options(lock_timeout=1.5, statement_timeout=1.0,
                                                 prepare_threshold=threshold))
    conn = admin(pg_url)
    try:
        conn.execute("CREATE TABLE public.seen (synchronous_commit text, lock_timeout text)")
        conn.execute("CREATE FUNCTION public.look() RETURNS trigger LANGUAGE plpgsql AS $$ "
                     "BEGIN INSERT INTO public.seen VALUES (current_setting('synchronous_commit'), "
                     "current_setting('lock_timeout')); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER look BEFORE INSERT ON sqlitesaver.checkpoints "
                      "FOR EACH ROW EXECUTE FUNCTION public.look()")
        e.put_checkpoint("t", "", None, None, STATE, META)
        assert conn.execute("SELECT * FROM public.seen").fetchall() == [
            (synchronous_commit, "1s")]
        with e._connection("looking") as pooled:  # the same connection: the put's are gone
            assert pooled.execute("SELECT current_setting('lock_timeout'), current_setting("
                                  "'synchronous_commit')").fetchone() == (after, "on")
    finally:
        conn.execute("DROP TRIGGER IF EXISTS look ON sqlitesaver.checkpoints")
        conn.execute("DROP FUNCTION IF EXISTS public.look()")
        conn.execute("DROP TABLE IF EXISTS public.seen")
        conn.close()
        e.close()


# --- lost connections ------------------------------------------------------------------------

def test_a_put_lost_once_sent_is_maybe_committed_and_not_run_again(engine, pg_url,
                                                                   hang_detector):
    """The pipeline is sent; the put waits for the thread's lock (another session holds it);
    its backend is terminated: nothing committed here, but the client cannot know that, so
    "maybe committed", and it must not run the put again on another connection."""
    hang_detector(60)
    holder, watcher = admin(pg_url), admin(pg_url)
    try:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext('t'))", (pg_engine.THREAD_LOCK,))
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.append(_try(
            lambda: engine.put_checkpoint("t", "", None, None, STATE, META))))
        worker.start()
        wait_for_waiters(watcher, 1, [worker], outcome)
        watcher.execute("SELECT pg_terminate_backend(pid) FROM pg_locks "
                        "WHERE locktype = 'advisory' AND NOT granted")
        worker.join(30)
        assert isinstance(outcome[0], DatabaseIOError) and "maybe committed" in str(outcome[0])
        # A run again would be in the call, which has returned: none waits for the lock.
        assert watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                               "AND NOT granted").fetchone() == (0,)
        holder.execute("SELECT pg_advisory_unlock_all()")
        assert engine.get_rows("t", "", None) == []
        engine.put_checkpoint("t", "", None, None, STATE, META)  # the pool replaced it
    finally:
        holder.close()
        watcher.close()


def test_an_idle_connection_the_server_closed_is_replaced_before_anything_is_sent(engine,
                                                                                 pg_url, caplog):
    first, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    caplog.set_level(logging.INFO, logger="sqlitesaver")
    with engine._connection("looking") as conn:
        pid = conn.info.backend_pid
    with admin(pg_url) as conn:  # its last words (FATAL 57P01), then the end of the stream
        # its FATAL message is sent before it exits; the timeout waits for the exit
        assert conn.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()[0]
    second, _ = engine.put_checkpoint("t", "", first, None, STATE, META)  # no error
    assert any("replaced it while putting a checkpoint" in r.getMessage()
               for r in caplog.records), "the dead connection was not found before the put"
    assert [row[0] for row in engine.page("t", "", None, None, 10, 1 << 20)[1]] == [
        parse_id(second), parse_id(first)]


def _try(call):
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - returned for the assertion
        return exc
