"""The LangGraph checkpointer's semantics beyond the conformance suite: the serializer protocol,
pending-write rules, list filters, versions, writes that arrive before their checkpoint, the
event loop never blocked, and bad input refused with nothing written. On both engines (LangGraph's
names SqliteSaver and PostgresSaver), but for what is SQLite's: a put blocked on the file's one
write lock, the sqlite3 constructors, the core-API ids seen in a file."""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import random
import sqlite3
import subprocess
import sys
import threading
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT

from conftest import execute_on, is_server, store_digest
from sqlitesaver import (CheckpointNotFoundError, ForeignCheckpointError, InvalidArgumentError,
                         Saver, UsageError, check)
from sqlitesaver.langgraph import AsyncPostgresSaver, AsyncSqliteSaver, PostgresSaver, SqliteSaver
from sqlitesaver.langgraph._rendezvous import Parked, Rendezvous

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg(thread: str = "t", ns: str = "", checkpoint_id: str | None = None) -> dict:
    configurable: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ns}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


_NUMBERS = itertools.count(2, 2)  # even: an odd number sorts between two ids


def an_id(number: int | None = None) -> str:
    """An id shaped and ordered like LangGraph's uuid6 ids, without their randomness."""
    return f"1ef4f797-8335-6428-8001-{next(_NUMBERS) if number is None else number:012x}"


def new_checkpoint(**channel_values: Any) -> dict:
    checkpoint = empty_checkpoint()
    checkpoint["id"] = an_id()
    checkpoint["channel_values"] = channel_values
    return checkpoint


def chain(checkpointer: SqliteSaver, n: int, *, thread: str = "t", ns: str = "",
          metadata: list[dict] | None = None) -> list[str]:
    """n checkpoints, each the child of the previous one; their ids, oldest first."""
    stored, parent = [], None
    for i in range(n):
        checkpoint = new_checkpoint(i=i)
        meta = {"source": "loop", "step": i, **(metadata[i] if metadata else {})}
        parent = checkpointer.put(cfg(thread, ns, parent), checkpoint, meta, {})
        parent = parent["configurable"]["checkpoint_id"]
        stored.append(parent)
    return stored


def sync_class(target: str) -> type:
    """LangGraph's name for the engine ``target`` names: SqliteSaver, or PostgresSaver."""
    return PostgresSaver if is_server(target) else SqliteSaver


def async_class(target: str) -> type:
    return AsyncPostgresSaver if is_server(target) else AsyncSqliteSaver


@pytest.fixture
def store(any_empty_target) -> str:
    """A new SQLite file, or the emptied server database (conftest.any_empty_target)."""
    return any_empty_target


@pytest.fixture
def checkpointer(store):
    with sync_class(store).from_conn_string(store) as made:
        yield made


# --- serializer and storage ----------------------------------------------------------------------

class Reversing(JsonPlusSerializer):
    """A serializer that changes the bytes: the store must hold only what it produced."""

    def __init__(self) -> None:
        super().__init__()
        self.dumped = 0

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        self.dumped += 1
        type_, data = super().dumps_typed(obj)
        return "reversed-" + type_, data[::-1]

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, payload = data
        assert type_.startswith("reversed-"), type_
        return super().loads_typed((type_.removeprefix("reversed-"), payload[::-1]))


def test_the_configured_serde_is_the_only_one_that_sees_values(store):
    serde = Reversing()
    with Saver(store) as saver:
        checkpointer = SqliteSaver(saver, serde=serde)
        stored = checkpointer.put(cfg(), new_checkpoint(secret="PLAINTEXT-CHANNEL"),
                                  {"step": 1}, {})
        checkpointer.put_writes(stored, [("ch", "PLAINTEXT-WRITE")], "task")
        got = checkpointer.get_tuple(cfg())
        assert got.checkpoint["channel_values"] == {"secret": "PLAINTEXT-CHANNEL"}
        assert got.pending_writes == [("task", "ch", "PLAINTEXT-WRITE")]
        assert serde.dumped == 2
        raw = saver.get("t")  # what the store holds: the serializer's own output
        assert raw.state[0].startswith("reversed-") and b"PLAINTEXT" not in raw.state[1]
        assert raw.pending_writes[0].value[0].startswith("reversed-")
    assert b"PLAINTEXT" not in _all_bytes(store)  # closed now: reading it is safe


def _all_bytes(path: str) -> bytes:
    """A file's bytes with its -wal's, or every payload stored on a server."""
    if is_server(path):
        return b"".join(bytes(value) for query in (
            "SELECT state FROM checkpoints", "SELECT metadata FROM checkpoints",
            "SELECT value FROM writes", "SELECT event FROM log")
            for (value,) in execute_on(path, query))
    data = b""
    for suffix in ("", "-wal"):
        if os.path.exists(path + suffix):
            with open(path + suffix, "rb") as f:
                data += f.read()
    return data


def test_a_put_with_a_parent_that_does_not_exist_stores_no_parent(checkpointer):
    checkpoint = new_checkpoint()
    stored = checkpointer.put(cfg(checkpoint_id=an_id()), checkpoint, {}, {})
    got = checkpointer.get_tuple(stored)
    assert got.checkpoint["id"] == checkpoint["id"] and got.parent_config is None


def test_putting_a_checkpoint_again_replaces_it_and_keeps_its_writes(checkpointer):
    checkpoint = new_checkpoint(v=1)
    stored = checkpointer.put(cfg(), checkpoint, {"step": 1}, {})
    checkpointer.put_writes(stored, [("ch", "kept")], "task")
    checkpoint["channel_values"] = {"v": 2}
    checkpointer.put(cfg(), checkpoint, {"step": 2}, {})
    got = checkpointer.get_tuple(stored)
    assert got.checkpoint["channel_values"] == {"v": 2} and got.metadata["step"] == 2
    assert got.pending_writes == [("task", "ch", "kept")]


def test_metadata_takes_the_configs_scalars_like_langgraphs_savers(checkpointer):
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "user": "ann",
                               "__private": "x", "limit": 3, "obj": object()},
              "metadata": {"run_id": "r1"}}
    stored = checkpointer.put(config, new_checkpoint(), {"source": "input", "step": -1}, {})
    assert checkpointer.get_tuple(stored).metadata == {
        "source": "input", "step": -1, "user": "ann", "limit": 3, "run_id": "r1"}


# --- pending writes -------------------------------------------------------------------------------

def test_regular_writes_keep_the_first_value_special_ones_the_last(checkpointer):
    stored = checkpointer.put(cfg(), new_checkpoint(), {}, {})
    checkpointer.put_writes(stored, [("a", 1), ("b", 2)], "task")
    checkpointer.put_writes(stored, [("a", "retried"), ("b", "retried")], "task")
    checkpointer.put_writes(stored, [(ERROR, "first error"), (ERROR, "same call, later")],
                            "task")
    checkpointer.put_writes(stored, [(ERROR, "last error"), (INTERRUPT, "stop")], "task")
    got = checkpointer.get_tuple(stored).pending_writes
    assert sorted(got, key=repr) == sorted([
        ("task", "a", 1), ("task", "b", 2), ("task", ERROR, "last error"),
        ("task", INTERRUPT, "stop")], key=repr)


def test_pending_writes_come_back_in_langgraphs_order(checkpointer):
    """writes_sort_key: (task_path, task_id, index); the replay order of a superstep."""
    stored = checkpointer.put(cfg(), new_checkpoint(), {}, {})
    checkpointer.put_writes(stored, [("ch", "z-path")], "task-a", task_path="~1")
    checkpointer.put_writes(stored, [("ch", "b0"), ("ch", "b1")], "task-b", task_path="~0")
    checkpointer.put_writes(stored, [("ch", "no path")], "task-z")
    got = [value for _, _, value in checkpointer.get_tuple(stored).pending_writes]
    assert got == ["no path", "b0", "b1", "z-path"]
    assert [value for _, _, value in next(checkpointer.list(cfg())).pending_writes] == got


def test_the_adapters_write_order_is_langgraphs_writes_sort_key():
    """The adapter sorts a write (task_id, index, channel, value, task_path) with an
    itemgetter instead of calling LangGraph's writes_sort_key per write: a LangGraph whose key
    changes must fail here."""
    from langgraph.checkpoint.base import writes_sort_key

    from sqlitesaver.langgraph._convert import _write_order
    rng = random.Random(22)
    for _ in range(500):
        write = (rng.choice(["", "t", "task-b", "\u00e9"]), rng.randrange(-3, 5), "ch", None,
                 rng.choice(["", "~0", "~1, 2", "\U0001f600"]))
        assert _write_order(write) == writes_sort_key(write[4], write[0], write[1]), write


def test_a_mixed_put_writes_is_one_transaction(checkpointer, monkeypatch):
    stored = checkpointer.put(cfg(), new_checkpoint(), {}, {})
    saver = checkpointer.saver
    real = saver.put_writes

    def fail_on_special(*args, replace=False, **kwargs):
        if replace:
            raise RuntimeError("disk gone")
        return real(*args, replace=replace, **kwargs)

    monkeypatch.setattr(saver, "put_writes", fail_on_special)
    with pytest.raises(RuntimeError):
        checkpointer.put_writes(stored, [("ch", 1), (ERROR, "e")], "task")
    monkeypatch.undo()
    assert checkpointer.get_tuple(stored).pending_writes == []  # the regular one rolled back


def _record_parking(monkeypatch, on_park) -> list[int]:
    """Calls on_park() once a job is parked; returns the idents of the threads that ran the
    Saver's put_writes successfully."""
    real_park = Rendezvous.park

    def park(self, job, **options):
        parked = real_park(self, job, **options)
        if parked:
            on_park()
        return parked

    monkeypatch.setattr(Rendezvous, "park", park)
    stored_by: list[int] = []
    real_put_writes = Saver.put_writes

    def put_writes(self, *args, **kwargs):
        real_put_writes(self, *args, **kwargs)
        stored_by.append(threading.get_ident())

    monkeypatch.setattr(Saver, "put_writes", put_writes)
    return stored_by


def test_writes_that_arrive_first_are_stored_in_their_checkpoints_put(checkpointer,
                                                                      monkeypatch):
    """LangGraph's durability="async" often delivers a task's writes before their
    checkpoint: they wait, and the put stores them in its own transaction (one commit)."""
    parked = threading.Event()
    stored_by = _record_parking(monkeypatch, parked.set)
    checkpoint = new_checkpoint()
    errors: list[BaseException] = []

    def early_writes() -> None:
        try:
            checkpointer.put_writes(cfg(checkpoint_id=checkpoint["id"]),
                                    [("ch", 1), (ERROR, "e")], "task")
        except BaseException as exc:  # reported below
            errors.append(exc)

    worker = threading.Thread(target=early_writes)
    worker.start()
    assert parked.wait(30)  # no checkpoint yet: the writes wait for its put
    assert worker.is_alive()
    checkpointer.put(cfg(), checkpoint, {}, {})
    worker.join(30)
    assert not worker.is_alive() and not errors, errors
    assert stored_by == [threading.get_ident()] * 2  # by the put, in its transaction
    assert sorted(checkpointer.get_tuple(cfg()).pending_writes, key=repr) == [
        ("task", ERROR, "e"), ("task", "ch", 1)]


def test_early_writes_whose_put_fails_wait_for_the_next_put(checkpointer, monkeypatch):
    parks: queue.Queue = queue.Queue()
    _record_parking(monkeypatch, lambda: parks.put("parked"))
    checkpoint = new_checkpoint()
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(checkpointer.put_writes(
        cfg(checkpoint_id=checkpoint["id"]), [("ch", 1)], "task")))
    worker.start()
    assert parks.get(timeout=30) == "parked"
    real_store = Parked.store  # the put takes the job, then its transaction fails

    def failing_store(job):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(Parked, "store", property(lambda job: lambda: failing_store(job)))
    with pytest.raises(RuntimeError):
        checkpointer.put(cfg(), checkpoint, {}, {})
    monkeypatch.setattr(Parked, "store", real_store)
    assert checkpointer.get_tuple(cfg()) is None  # rolled back, checkpoint and all
    assert parks.get(timeout=30) == "parked"  # told it failed, the caller parked again
    checkpointer.put(cfg(), checkpoint, {}, {})
    worker.join(30)
    assert outcome == [None]
    assert checkpointer.get_tuple(cfg()).pending_writes == [("task", "ch", 1)]


def test_aput_writes_that_arrive_first_are_stored_in_their_checkpoints_put(store,
                                                                           monkeypatch):
    async def main() -> tuple:
        parked = asyncio.Event()
        loop = asyncio.get_running_loop()
        stored_by = _record_parking(monkeypatch, lambda: loop.call_soon_threadsafe(parked.set))
        async with async_class(store).from_conn_string(store) as checkpointer:
            checkpoint = new_checkpoint()
            early = asyncio.create_task(checkpointer.aput_writes(
                cfg(checkpoint_id=checkpoint["id"]), [("ch", 1)], "task"))
            await parked.wait()
            assert not early.done()
            await checkpointer.aput(cfg(), checkpoint, {}, {})
            await early
            return stored_by, (await checkpointer.aget_tuple(cfg())).pending_writes

    stored_by, pending = asyncio.run(main())
    assert len(stored_by) == 1 and pending == [("task", "ch", 1)]


def test_writes_for_a_checkpoint_that_never_comes_raise_and_write_nothing(store):
    with sync_class(store).from_conn_string(store) as checkpointer:
        checkpointer.put(cfg(), new_checkpoint(), {}, {})
    before = store_digest(store)
    with sync_class(store).from_conn_string(store) as checkpointer:
        checkpointer.pending_writes_wait = 0.0
        with pytest.raises(CheckpointNotFoundError):
            checkpointer.put_writes(cfg(checkpoint_id=an_id()), [("ch", 1)], "task")
        with pytest.raises(CheckpointNotFoundError):
            asyncio.run(checkpointer.aput_writes(cfg(checkpoint_id=an_id()), [("c", 1)],
                                                 "task"))
    assert store_digest(store) == before


# --- list ----------------------------------------------------------------------------------------

def test_list_filters_namespaces_before_and_limit(checkpointer):
    ids = chain(checkpointer, 5, metadata=[{"run_id": "r1"}] * 3 + [{"run_id": "r2"}] * 2)
    sub = chain(checkpointer, 2, ns="child:1")

    def listed(config, **options) -> list[str]:
        return [t.checkpoint["id"] for t in checkpointer.list(config, **options)]

    assert listed(cfg()) == ids[::-1]
    everything = {"configurable": {"thread_id": "t"}}  # no checkpoint_ns: all namespaces
    assert listed(everything) == sub[::-1] + ids[::-1]
    assert listed(cfg(ns="child:1")) == sub[::-1]
    assert listed(cfg(), filter={"run_id": "r1"}) == ids[2::-1]
    assert listed(cfg(), filter={"run_id": "r2", "step": 4}) == [ids[4]]
    assert listed(cfg(), before=cfg(checkpoint_id=ids[3])) == ids[2::-1]
    assert listed(cfg(), before=cfg(checkpoint_id=ids[3]), limit=2) == [ids[2], ids[1]]
    assert listed(cfg(), limit=0) == []
    # a `before` that names no checkpoint compares ids (uuid6 ids sort by time)
    between = an_id(int(ids[2].rsplit("-", 1)[1], 16) + 1)
    assert listed(cfg(), before=cfg(checkpoint_id=between)) == ids[2::-1]
    assert listed(cfg(), before={"configurable": {}}) == []  # as LangGraph's: NULL compares
    # a config with a checkpoint_id lists just that one (if the filter keeps it)
    assert listed(cfg(checkpoint_id=ids[1])) == [ids[1]]
    assert listed(cfg(checkpoint_id=ids[1]), filter={"run_id": "r2"}) == []
    assert listed(cfg(checkpoint_id=ids[1]), before=cfg(checkpoint_id=ids[1])) == []
    assert listed({"configurable": {"thread_id": "t", "checkpoint_id": sub[0]}}) == [sub[0]]
    # every thread, newest id first
    other = chain(checkpointer, 1, thread="u")
    assert listed(None) == sorted(ids + sub + other, reverse=True)
    assert listed(None, filter={"run_id": "r2"}, limit=1) == [ids[4]]


def test_alist_streams_in_batches_and_an_early_stop_releases_its_snapshot(store):
    async def main() -> None:
        async with async_class(store).from_conn_string(store, durability="normal") as cp:
            ids = await asyncio.to_thread(chain, cp, 150)
            assert [t.checkpoint["id"] async for t in cp.alist(cfg())] == ids[::-1]
            seen = []
            async for t in cp.alist(cfg()):
                seen.append(t.checkpoint["id"])
                if len(seen) == 3:
                    break
            assert seen == ids[:-4:-1]
            newer = await cp.aput(cfg(checkpoint_id=ids[-1]), new_checkpoint(), {}, {})
            latest = [t.config async for t in cp.alist(cfg(), limit=1)]
            assert latest == [newer]

    asyncio.run(main())


def test_get_next_version_is_langgraphs_sqlite_format(checkpointer):
    first = checkpointer.get_next_version(None, None)
    second = checkpointer.get_next_version(first, None)
    assert first.split(".")[0] == "1".zfill(32) and second.split(".")[0] == "2".zfill(32)
    assert first < second < checkpointer.get_next_version(second, None)
    assert checkpointer.get_next_version(7, None).split(".")[0] == "8".zfill(32)


# --- the event loop ------------------------------------------------------------------------------

def test_async_methods_never_block_the_event_loop(db_path):
    """A put blocked on the write lock (held by another thread) must leave the loop free."""
    async def main() -> None:
        async with AsyncSqliteSaver.from_conn_string(db_path) as checkpointer:
            loop_thread = threading.get_ident()
            held, release = threading.Event(), threading.Event()

            def hold_the_write_lock() -> None:
                with checkpointer.saver.transaction():
                    held.set()
                    assert release.wait(30), "the event loop was blocked"

            holder = threading.Thread(target=hold_the_write_lock)
            holder.start()
            await asyncio.to_thread(held.wait, 30)
            ran_in: list[int] = []
            real_put = checkpointer.saver._put  # what the adapter's put calls (Saver.put's body)
            loop, started = asyncio.get_running_loop(), asyncio.Event()

            def put(*args, **kwargs):
                ran_in.append(threading.get_ident())
                loop.call_soon_threadsafe(started.set)
                return real_put(*args, **kwargs)  # waits for the holder's lock

            checkpointer.saver._put = put  # type: ignore[method-assign]
            pending = asyncio.create_task(checkpointer.aput(cfg(), new_checkpoint(), {}, {}))
            # the put has started, in a worker thread (bounded: a hang fails, not hangs)...
            await asyncio.wait_for(started.wait(), 30)
            # ...and is blocked; yet this coroutine runs, and reads are served meanwhile
            assert not pending.done()
            assert await checkpointer.aget_tuple(cfg()) is None
            release.set()
            await asyncio.wait_for(pending, 30)
            await asyncio.to_thread(holder.join, 30)
            assert ran_in[0] != loop_thread
            assert (await checkpointer.aget_tuple(cfg())) is not None

    asyncio.run(main())


# --- bad input -----------------------------------------------------------------------------------

def test_bad_input_is_refused_and_writes_nothing(store):
    with sync_class(store).from_conn_string(store) as checkpointer:
        chain(checkpointer, 3)
    before = store_digest(store)
    with sync_class(store).from_conn_string(store) as checkpointer:
        with pytest.raises(InvalidArgumentError, match="takes a sqlitesaver.Saver"):
            SqliteSaver(object())  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="thread_id"):
            checkpointer.get_tuple({"configurable": {}})
        with pytest.raises(InvalidArgumentError, match="strategy"):
            checkpointer.prune(["t"], strategy="keep_some")
        with pytest.raises(InvalidArgumentError):
            checkpointer.prune("t")  # a string is not a list of thread ids
        with pytest.raises(InvalidArgumentError):
            checkpointer.delete_for_runs("run-1")
        with pytest.raises(InvalidArgumentError, match="checkpoint_id"):
            checkpointer.put_writes(cfg(), [("ch", 1)], "task")
        bad = new_checkpoint()
        bad["id"] = "0123456789abcdef"  # the form of the Saver's own ids
        with pytest.raises(InvalidArgumentError):
            checkpointer.put(cfg(), bad, {}, {})
        checkpointer.setup()  # LangGraph code calls it; nothing to do
    assert store_digest(store) == before
    for path in (":memory:", "file:x.db?mode=memory"):
        with pytest.raises(InvalidArgumentError, match="durability"):
            with SqliteSaver.from_conn_string(path):
                pass


def test_malformed_calls_and_unserializable_values_are_typed_errors_writing_nothing(store):
    """What a caller can get wrong in a put or put_writes (a value its serializer cannot
    serialize, writes that are not (channel, value) pairs, a config, checkpoint or metadata
    that is not a dict) raised the serializer's bare TypeError, or a ValueError, TypeError,
    KeyError or AttributeError from unpacking it: now an error of sqlitesaver.errors
    (SerializationError is a TypeError, InvalidArgumentError a ValueError, as before), and
    nothing is written, on both the sync and async methods."""
    from sqlitesaver import SerializationError

    with sync_class(store).from_conn_string(store) as checkpointer:
        last = cfg("t", "", chain(checkpointer, 2)[-1])
    before = store_digest(store)
    unserializable = new_checkpoint()
    unserializable["channel_values"] = {"x": object()}
    no_id = new_checkpoint()
    del no_id["id"]
    with sync_class(store).from_conn_string(store) as checkpointer:
        calls = [
            (SerializationError, lambda: checkpointer.put(last, unserializable, {}, {})),
            (SerializationError, lambda: checkpointer.put_writes(last, [("a", object())], "t")),
            (SerializationError, lambda: checkpointer.put_writes(
                last, [("a", 1), ("__error__", object())], "t")),
            (InvalidArgumentError, lambda: checkpointer.put_writes(last, [("a",)], "t")),
            (InvalidArgumentError, lambda: checkpointer.put_writes(last, [("a", 1, 2)], "t")),
            (InvalidArgumentError, lambda: checkpointer.put_writes(last, 5, "t")),
            (InvalidArgumentError, lambda: checkpointer.put_writes(last, "ab", "t")),
            (InvalidArgumentError, lambda: checkpointer.put_writes(last, [(["a"], 1)], "t")),
            (InvalidArgumentError, lambda: checkpointer.put("t", new_checkpoint(), {}, {})),
            (InvalidArgumentError, lambda: checkpointer.put(
                {"configurable": "t"}, new_checkpoint(), {}, {})),
            (InvalidArgumentError, lambda: checkpointer.put(last, "checkpoint", {}, {})),
            (InvalidArgumentError, lambda: checkpointer.put(last, new_checkpoint(), "m", {})),
            (InvalidArgumentError, lambda: checkpointer.put(last, no_id, {}, {})),
            (InvalidArgumentError, lambda: checkpointer.get_tuple(["t"])),
        ]
        for expected, call in calls:
            with pytest.raises(expected):
                call()
        with pytest.raises(SerializationError):
            asyncio.run(checkpointer.aput(last, unserializable, {}, {}))
        with pytest.raises(InvalidArgumentError):
            asyncio.run(checkpointer.aput_writes(last, [("a",)], "t"))
        with pytest.raises(SerializationError):
            asyncio.run(checkpointer.aput_writes(last, [("a", object())], "t"))
    assert store_digest(store) == before


def test_langgraphs_tutorial_constructors_say_what_to_use_instead(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "stdlib.db"))  # what LangGraph's SqliteSaver takes
    try:
        for kind in (SqliteSaver, AsyncSqliteSaver):
            with pytest.raises(InvalidArgumentError, match="takes a sqlitesaver.Saver") as raised:
                kind(conn)  # type: ignore[arg-type]
            message = str(raised.value)
            for advice in ("sqlite3.Connection", f"{kind.__name__}.from_conn_string(path)",
                           "temporary directory", "InMemorySaver"):
                assert advice in message, (advice, message)
    finally:
        conn.close()

    async def open_async(path: str) -> None:
        async with AsyncSqliteSaver.from_conn_string(path):
            pass

    for path in (":memory:", "", "file:x.db?mode=memory"):
        with pytest.raises(InvalidArgumentError, match="SqliteSaver.from_conn_string") as sync:
            with SqliteSaver.from_conn_string(path):
                pass
        with pytest.raises(InvalidArgumentError, match="AsyncSqliteSaver.from_conn_string") \
                as async_:
            asyncio.run(open_async(path))
        for raised in (sync, async_):
            assert "temporary directory" in str(raised.value)
            assert "from langgraph.checkpoint.memory import InMemorySaver" in str(raised.value)
    assert not os.path.exists("file:x.db?mode=memory")


async def _alist(checkpointer: SqliteSaver, config: dict | None) -> list:
    return [t async for t in checkpointer.alist(config)]


def test_a_checkpoint_the_core_api_wrote_is_refused_by_name(db_path):
    with Saver(db_path) as saver:
        checkpointer = SqliteSaver(saver)
        ids = chain(checkpointer, 2)
        core = saver.put("core", {"messages": ["hi"]}, metadata={"step": 1}, namespace="ns")
        for read in (lambda: checkpointer.get_tuple(cfg("core", "ns")),
                     lambda: list(checkpointer.list(None)),
                     lambda: list(checkpointer.list({"configurable": {"thread_id": "core"}})),
                     lambda: list(checkpointer.list(None, filter={"step": 1})),
                     lambda: asyncio.run(checkpointer.aget_tuple(cfg("core", "ns"))),
                     lambda: asyncio.run(_alist(checkpointer, None))):
            with pytest.raises(ForeignCheckpointError) as raised:
                read()
            error = raised.value
            assert isinstance(error, UsageError) and error.path == saver.path
            assert (error.thread_id, error.namespace, error.checkpoint_id) == \
                ("core", "ns", core.checkpoint_id)
            for part in (repr(core.checkpoint_id), "'core'", "'ns'",
                         "not written through sqlitesaver.langgraph", "its state is a dict",
                         "one database through one API"):
                assert part in str(error), (part, str(error))
        # The adapter's own checkpoints read as before; a filter that leaves the core's out
        # never meets it.
        assert [t.checkpoint["id"] for t in checkpointer.list(cfg())] == ids[::-1]
        assert [t.checkpoint["id"] for t in checkpointer.list(None, filter={"source": "loop"})] \
            == ids[::-1]
        # A pending write the core API put on the adapter's checkpoint.
        saver.put_writes("t", ids[1], "core-task", [("ch", "plain")])
        with pytest.raises(ForeignCheckpointError, match="pending write 0 of task 'core-task'"):
            checkpointer.get_tuple(cfg())
        assert checkpointer.get_tuple(cfg(checkpoint_id=ids[0])).checkpoint["id"] == ids[0]
    report = check.check_database(db_path)
    assert report.ok, check.format_report(report)


def test_thread_maintenance_through_the_sync_api(checkpointer):
    ids = chain(checkpointer, 4, metadata=[{"run_id": r} for r in ("a", "b", "b", "c")])
    checkpointer.copy_thread("t", "copy")
    checkpointer.prune(["copy"], strategy="keep_latest")
    checkpointer.delete_for_runs(["b"])  # every thread: in "copy", run b was pruned already
    remaining = [t for t in checkpointer.list(cfg())]
    assert [t.checkpoint["id"] for t in remaining] == [ids[3], ids[0]]
    assert remaining[0].parent_config is None  # its parent was deleted: detached
    (kept,) = checkpointer.list(cfg("copy"))
    assert kept.checkpoint["id"] == ids[3]
    assert kept.parent_config["configurable"]["checkpoint_id"] == ids[2]  # a pruned parent
    checkpointer.prune(["copy", "t"], strategy="delete")
    checkpointer.delete_thread("nobody")
    assert list(checkpointer.list(None)) == []
    checkpointer.saver.close()
    report = check.check_database(checkpointer.saver.path)
    assert report.ok, check.format_report(report)


def test_the_core_package_never_imports_langgraph():
    code = ("import sys, sqlitesaver, sqlitesaver.check, sqlitesaver.torture; "
            "loaded = [m for m in sys.modules if m.split('.')[0] in "
            "('langgraph', 'langchain_core')]; assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr
