"""The PostgreSQL engine's one-round-trip put of pending writes (issue #17; sqlitesaver/postgres/
engine.py, ``_put_writes_at_once``) on a real server: one round trip, counted by the proxy of
tests/test_postgres_put.py; each write's checksum, completed by the server with its
checkpoint's seq, is what Python computes, and every covered column and byte of its row is
caught damaged by get, list and the validator, while writes of the CRC-32 form (a transaction
block's) keep verifying; a missing checkpoint, or one deleted while the put waited for its
thread's lock, is "not found" with nothing written."""

from __future__ import annotations

import random

import pytest

from sqlitesaver import ChecksumError, Saver, integrity
from sqlitesaver.errors import CheckpointNotFoundError
from sqlitesaver.ids import parse_id
from sqlitesaver.postgres import check as pg_check, engine as pg_engine
from sqlitesaver.postgres import sql as pg_sql
from test_postgres_put import META, STATE, RoundTrips, admin, contents, deleted_while_waiting

__all__ = ["RoundTrips"]  # the proxy fixture's class, imported for it


@pytest.fixture
def proxy(pg_cluster):
    counter = RoundTrips(pg_cluster.socket_dir)
    yield counter
    counter.close()


@pytest.fixture
def engine(pg_url):
    opened = pg_engine.Engine(pg_url, busy_timeout=5.0)
    yield opened
    opened.close()


WRITES = [(0, "a", b"\x01"), (1, "b", b"\x02\x03")]


def test_a_put_of_writes_is_one_round_trip(pg_url, proxy):
    e = pg_engine.Engine(proxy.url(pg_url), busy_timeout=5.0, max_connections=1)
    try:
        generated, _ = e.put_checkpoint("t", "", None, None, STATE, META)
        e.put_checkpoint("t", "", None, "keyed", STATE, META)
        cases = [(checkpoint_id, replace) for checkpoint_id in (generated, "keyed")
                 for replace in (False, True)]
        trips: list[list[int]] = [[] for _ in cases]
        for n in range(8):  # past psycopg's prepare threshold: prepared ones too
            for (checkpoint_id, replace), counted in zip(cases, trips):
                before = proxy.count
                e.put_writes("t", "", checkpoint_id, f"task{n}", "", WRITES, replace)
                counted.append(proxy.count - before)
        # One each, but for the call at which psycopg prepares the statement (its Parse is a
        # round trip of its own outside a pipeline), once per statement and connection.
        for counted in trips:
            assert sorted(counted) in ([1] * 8, [1] * 7 + [2]), trips
        with pytest.raises(CheckpointNotFoundError):  # a refused put of writes: one as well
            before = proxy.count
            e.put_writes("t", "", "nope", "task", "", WRITES, False)
        assert proxy.count - before == 1
        with e.transaction():  # the two-round-trip path (a block's own statements)
            before = proxy.count
            e.put_writes("t", "", generated, "block", "", WRITES, False)
            assert proxy.count - before > 1
    finally:
        e.close()


@pytest.mark.parametrize("count", [1, pg_sql.SCALAR_WRITES, pg_sql.SCALAR_WRITES + 1, 40])
def test_few_writes_as_scalars_and_many_as_arrays_store_the_same(engine, count):
    """Up to sql.SCALAR_WRITES writes go as scalar parameters, more as arrays: both store
    every write, in the server form, its checksum right; regular ones keep their first
    value, replaced ones take the new one."""
    checkpoint_id, _ = engine.put_checkpoint("t", "", None, "mine", STATE, META)
    writes = [(index, f"c{index}", bytes([index % 256]) * (index + 1)) for index in range(count)]
    engine.put_writes("t", "", checkpoint_id, "task", "p", writes, False)
    engine.put_writes("t", "", checkpoint_id, "task", "p",
                      [(index, channel, b"new") for index, channel, _ in writes], False)
    engine.put_writes("t", "", checkpoint_id, "special", "", writes, True)
    engine.put_writes("t", "", checkpoint_id, "special", "",
                      [(index, channel, b"new") for index, channel, _ in writes], True)
    rows = engine.get_rows("t", "", checkpoint_id)
    stored = {(row[11], row[12]): (row[13], row[14], row[15]) for row in rows}
    assert stored == {**{("task", i): (c, v, "p") for i, c, v in writes},
                      **{("special", i): (c, b"new", "") for i, c, _ in writes}}
    for row in rows:  # what readers verify (the values are not msgpack: not read by a Saver)
        seq, task, index, channel, value, path, checksum = row[10:]
        assert checksum >= integrity.SERVER_FORM
        assert integrity.expected_write_checksum(checksum, seq, task, index, channel, path,
                                                 value) == checksum


def test_the_server_computes_the_write_checksum_python_computes(pg_url):
    """integrity.server_write_checksum and sql._server_digest over values of every sign and
    size (seeded; the seed is in the message)."""
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    expression = pg_sql._server_digest("%(crc)s::bigint", "%(seq)s::bigint")
    with admin(pg_url) as conn:
        for case in range(200):
            values = {"crc": rng.randrange(1 << 32),
                      "seq": rng.choice([1, rng.randrange(1 << 63), -rng.randrange(1 << 63)])}
            (found,) = conn.execute(f"SELECT {expression}", values).fetchone()
            expected = integrity.server_write_checksum(values["crc"], values["seq"])
            assert found == expected and found >= integrity.SERVER_FORM, (seed, case, values)


@pytest.fixture
def written(pg_url):
    """Thread 't': a checkpoint with a caller-supplied id and one write of the server form
    (task "new"), and one of the CRC-32 form (task "old", put inside a transaction block)."""
    with Saver(pg_url) as saver:
        saver.put("t", {"n": 1}, checkpoint_id="mine")
        with saver.transaction():
            saver.put_writes("t", "mine", "old", [("c", 1)])
        saver.put_writes("t", "mine", "new", [("c", 2)], task_path="p")
    return pg_url


def write_checksums(url: str) -> dict[str, int]:
    with admin(url) as conn:
        return dict(conn.execute("SELECT task_id, checksum FROM sqlitesaver.writes").fetchall())


def test_both_forms_are_written_read_and_validated(written):
    forms = {task: checksum >= integrity.SERVER_FORM
             for task, checksum in write_checksums(written).items()}
    assert forms == {"old": False, "new": True}
    with Saver(written) as saver:
        got = saver.get("t")
        assert [(w.task_id, w.value, w.task_path) for w in got.pending_writes] == [
            ("new", 2, "p"), ("old", 1, "")]
        assert saver.copy_thread("t", "copy") == 1  # every source row verified first
        assert len(saver.get("copy").pending_writes) == 2
    report = pg_check.check_server(written)
    assert report.ok, report


#: Damage to one covered column or byte of the server-form write (task "new").
DAMAGE = [
    ("a bit of the value", "value = set_byte(value, 0, get_byte(value, 0) # 1)"),
    ("the value one byte longer", "value = value || '\\x00'::bytea"),
    ("the task id", "task_id = 'other'"),
    ("the index", "idx = idx + 1"),
    ("the channel", "channel = 'd'"),
    ("the task path", "task_path = 'q'"),
    ("bit 0 of the checksum", "checksum = checksum # 1"),
    ("the form bit of the checksum", "checksum = checksum # (1::bigint << 62)"),
    ("the checksum cut to 32 bits (a CRC-32 form)", "checksum = checksum & 4294967295"),
]


@pytest.mark.parametrize("name, damage", DAMAGE, ids=[case[0] for case in DAMAGE])
def test_damage_to_a_server_form_write_is_caught_by_get_list_and_the_validator(
        written, name, damage):
    with admin(written) as conn:
        conn.execute(f"UPDATE sqlitesaver.writes SET {damage} WHERE task_id = 'new'")
    with Saver(written) as saver:
        with pytest.raises(ChecksumError):
            saver.get("t")
        with pytest.raises(ChecksumError):
            list(saver.list("t"))
    report = pg_check.check_server(written)
    assert {step.name: step.status for step in report.steps}["checksums"] == "FAILED", report
    assert report.payloads_failed == 1


def test_damage_to_the_checkpoint_seq_of_a_server_form_write_is_caught(written):
    """The write moved to another checkpoint (its seq is covered by the server's digest)."""
    with Saver(written) as saver:
        other = saver.put("t", {"n": 2})
    with admin(written) as conn:
        conn.execute("UPDATE sqlitesaver.writes SET checkpoint_seq = %s WHERE task_id = 'new'",
                     (parse_id(other.checkpoint_id),))
    with Saver(written) as saver:
        with pytest.raises(ChecksumError):
            saver.get("t")
    assert pg_check.check_server(written).payloads_failed == 1


@pytest.mark.parametrize("checkpoint_id", ["nope", "00000000000000ff", "0000000000000zzz"])
@pytest.mark.parametrize("replace", [False, True])
def test_writes_to_a_missing_checkpoint_write_nothing(engine, pg_url, checkpoint_id, replace):
    engine.put_checkpoint("t", "", None, None, STATE, META)
    engine.put_checkpoint("t", "", None, "mine", STATE, META)
    engine.put_writes("t", "", "mine", "task", "", WRITES, False)
    before = contents(pg_url)
    with pytest.raises(CheckpointNotFoundError, match="checkpoint_id"):
        engine.put_writes("t", "", checkpoint_id, "task", "", WRITES, replace)
    with pytest.raises(CheckpointNotFoundError, match="checkpoint_id"):  # another namespace
        engine.put_writes("t", "sub", "mine", "task", "", WRITES, replace)
    assert contents(pg_url) == before


def test_no_writes_for_an_existing_checkpoint_write_nothing_and_raise_nothing(engine, pg_url):
    mine, _ = engine.put_checkpoint("t", "", None, None, STATE, META)
    before = contents(pg_url)
    engine.put_writes("t", "", mine, "task", "", [], False)
    assert contents(pg_url) == before
    with pytest.raises(CheckpointNotFoundError):
        engine.put_writes("t", "", "nope", "task", "", [], False)


@pytest.mark.parametrize("by", ["id", "seq"])
def test_a_checkpoint_deleted_while_its_writes_wait_for_the_lock_is_not_found(
        engine, pg_url, hang_detector, by):
    """As the put's parent (tests/test_postgres_put.py): the statement's snapshot is older
    than its lock, the checkpoint is deleted and committed by the lock's holder meanwhile;
    the writes must not go in (their foreign key would fail, or worse): "not found"."""
    hang_detector(60)
    checkpoint_id, _ = engine.put_checkpoint("t", "", None, "mine" if by == "id" else None,
                                             STATE, META)
    outcome = deleted_while_waiting(
        pg_url, lambda: engine.put_writes("t", "", checkpoint_id, "task", "", WRITES, False))
    assert isinstance(outcome, CheckpointNotFoundError), outcome
    assert contents(pg_url)[:2] == ([], [])


# --- the log append, one round trip too ---------------------------------------------------------

def test_a_log_append_is_one_round_trip(pg_url, proxy):
    e = pg_engine.Engine(proxy.url(pg_url), busy_timeout=5.0, max_connections=1)
    try:
        e.append_log("t", b"\x01")  # the pool's connection
        counted = []
        for n in range(8):  # past psycopg's prepare threshold
            before = proxy.count
            e.append_log("t", bytes([n]))
            counted.append(proxy.count - before)
        assert sorted(counted) in ([1] * 8, [1] * 7 + [2]), counted
        with e.transaction():  # the two-round-trip path
            before = proxy.count
            e.append_log("t", b"\x02")
            assert proxy.count - before > 1
    finally:
        e.close()


def test_the_server_computes_the_log_checksum_python_computes(pg_url):
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    expression = pg_sql._server_digest("%(crc)s::bigint", "%(seq)s::bigint",
                                       "%(created)s::bigint")
    with admin(pg_url) as conn:
        for case in range(100):
            values = {"crc": rng.randrange(1 << 32), "seq": rng.randrange(1, 1 << 63),
                      "created": rng.choice([0, rng.randrange(1 << 53), (1 << 63) - 1])}
            (found,) = conn.execute(f"SELECT {expression}", values).fetchone()
            assert found == integrity.server_log_checksum(
                values["crc"], values["seq"], values["created"]), (seed, case, values)


@pytest.fixture
def logged(pg_url):
    """Thread 't': an event of the CRC-32 form (appended inside a transaction block), then
    one of the server form."""
    with Saver(pg_url) as saver:
        with saver.transaction():
            saver.append_log("t", {"n": 1})
        saver.append_log("t", {"n": 2})
    return pg_url


LOG_DAMAGE = [
    ("a bit of the event", "event = set_byte(event, 1, get_byte(event, 1) # 1)"),
    ("the thread", "thread_id = 'v'"),
    ("the seq", "seq = seq + 1000"),
    ("created_at", "created_at = created_at + 1"),
    ("bit 0 of the checksum", "checksum = checksum # 1"),
    ("the form bit of the checksum", "checksum = checksum # (1::bigint << 62)"),
]


def test_both_log_forms_are_read_and_validated(logged):
    with admin(logged) as conn:
        forms = [checksum >= integrity.SERVER_FORM for (checksum,) in conn.execute(
            "SELECT checksum FROM sqlitesaver.log ORDER BY seq")]
    assert forms == [False, True]
    with Saver(logged) as saver:
        assert [event.event for event in saver.read_log("t")] == [{"n": 1}, {"n": 2}]
    assert pg_check.check_server(logged).ok


@pytest.mark.parametrize("name, damage", LOG_DAMAGE, ids=[case[0] for case in LOG_DAMAGE])
def test_damage_to_a_server_form_log_event_is_caught(logged, name, damage):
    with admin(logged) as conn:
        conn.execute(f"UPDATE sqlitesaver.log SET {damage} "
                     "WHERE checksum >= 4611686018427387904")
        thread_id = conn.execute("SELECT thread_id FROM sqlitesaver.log "
                                 "ORDER BY seq DESC LIMIT 1").fetchone()[0]
    with Saver(logged) as saver:
        with pytest.raises(ChecksumError):
            list(saver.read_log(thread_id))
    report = pg_check.check_server(logged)
    assert report.payloads_failed == 1, report
