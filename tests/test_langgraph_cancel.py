"""The async checkpointer as a server uses it: tasks cancelled (``task.cancel()``,
``asyncio.wait_for`` timeouts) in the middle of its calls. A cancelled call raises
CancelledError, nothing else, and leaves the checkpointer whole (its listing closed, every
pooled connection back). On both engines (the adapter is the same code)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from sqlitesaver import Saver
from sqlitesaver.langgraph import SaverCheckpointer


def _cfg(thread: str, checkpoint_id: str | None = None) -> dict:
    configurable = {"thread_id": thread, "checkpoint_ns": ""}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _checkpoint(n: int) -> dict:
    checkpoint = empty_checkpoint()
    checkpoint["id"] = f"1ef-{n:08d}"
    return checkpoint


def test_an_alist_cancelled_while_its_batch_is_read_raises_cancelled_and_closes(
        any_empty_target, hang_detector):
    """Cancelled while its worker thread reads a batch, ``alist`` closed the listing at once
    from another worker, while the first was still running it: ValueError ("generator already
    executing") replaced the CancelledError, and the listing stayed open."""
    hang_detector(60)
    with Saver(any_empty_target) as saver:
        checkpointer = SaverCheckpointer(saver)
        config = _cfg("t")
        for n in range(3):
            config = checkpointer.put(config, _checkpoint(n + 1), {"step": n}, {})
        entered, release = threading.Event(), threading.Event()
        listings = []
        listing = checkpointer.list

        def recorded(*args, **kwargs):
            listings.append(listing(*args, **kwargs))
            return listings[-1]

        converting = checkpointer._tuple

        def blocking(stored):  # the worker thread, inside the listing's generator
            entered.set()
            assert release.wait(30)
            return converting(stored)

        checkpointer.list = recorded
        checkpointer._tuple = blocking

        async def main() -> None:
            async def consume() -> list:
                return [item async for item in checkpointer.alist(_cfg("t"))]

            task = asyncio.create_task(consume())
            assert await asyncio.to_thread(entered.wait, 30)
            task.cancel()
            # Not synchronisation: a bounded look for what must not happen, the task ending
            # while its batch is still being read (before the fix it ended here, at once,
            # with the ValueError).
            done, _ = await asyncio.wait({task}, timeout=1.0)
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not done, "the cancelled alist ended while its batch was still being read"
            assert listings[0].gi_frame is None  # the listing was closed

        asyncio.run(main())
        del checkpointer._tuple, checkpointer.list
        # still usable
        assert len(list(checkpointer.list(_cfg("t")))) == 3

        async def again() -> int:
            return len([item async for item in checkpointer.alist(_cfg("t"))])

        assert asyncio.run(again()) == 3


def _block_holding(saver: Saver, thread: str) -> tuple[threading.Thread, threading.Event,
                                                         threading.Event]:
    """A thread inside ``saver.transaction()`` that wrote ``thread`` (so a put into it waits
    for the block's end), until ``release`` is set."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with saver.transaction():
            saver.append_log(thread, b"held")
            holding.set()
            assert release.wait(30)

    block = threading.Thread(target=hold)
    block.start()
    assert holding.wait(30)
    return block, holding, release


def test_a_cancelled_aput_has_its_outcome_settled_when_the_cancellation_arrives(
        any_empty_target, hang_detector):
    """``aput`` runs the put in a worker thread, which a cancellation cannot stop: before, the
    CancelledError reached the caller at once and the put committed later, behind its back (a
    server that cancels a request and starts the thread's next run could read the thread
    without it, then see it appear as the thread's latest checkpoint). Now the cancelled call
    waits for its worker (bounded: busy_timeout, statement_timeout) before it raises: what the
    caller reads once the CancelledError arrives is what stays."""
    hang_detector(60)
    with Saver(any_empty_target, busy_timeout=20) as saver:
        checkpointer = SaverCheckpointer(saver)
        first = checkpointer.put(_cfg("t"), _checkpoint(1), {"step": 0}, {})
        entered = threading.Event()
        putting = checkpointer._put_checkpoint

        def entering(*args, **kwargs):
            entered.set()
            return putting(*args, **kwargs)

        checkpointer._put_checkpoint = entering
        block, _, release = _block_holding(saver, "t")
        seen: list[bool] = []

        async def main() -> None:
            async def put() -> None:
                try:
                    await checkpointer.aput(first, _checkpoint(2), {"step": 1}, {})
                except asyncio.CancelledError:
                    # What the caller sees when its cancellation arrives.
                    seen.append(saver.get("t", _checkpoint(2)["id"]) is not None)
                    raise

            task = asyncio.create_task(put())
            assert await asyncio.to_thread(entered.wait, 30)
            task.cancel()
            # Not synchronisation: a bounded look for what must not happen, the cancellation
            # reaching the caller while its put is still waiting for the block.
            await asyncio.wait({task}, timeout=1.0)
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task

        try:
            asyncio.run(main())  # also waits for every worker thread to end
        finally:
            release.set()
            block.join(30)
        stays = saver.get("t", _checkpoint(2)["id"]) is not None
        assert seen == [stays], "the cancelled put's outcome changed after it raised"


def test_an_aput_writes_cancelled_while_waiting_for_its_checkpoint_is_not_stored_later(
        any_empty_target, hang_detector):
    """Writes that arrive before their checkpoint wait for its put; cancelled while waiting,
    they stayed parked and the later put stored them in its transaction: a call that had
    raised CancelledError long before was committed (and, if the checkpoint never came, the
    parked job was kept for ever). Now the cancelled call withdraws its writes (or, if a put
    has just taken them, waits for that put's outcome) before it raises."""
    hang_detector(60)
    with Saver(any_empty_target) as saver:
        checkpointer = SaverCheckpointer(saver)
        first = checkpointer.put(_cfg("t"), _checkpoint(1), {"step": 0}, {})
        target = _cfg("t", _checkpoint(2)["id"])

        async def main() -> None:
            task = asyncio.create_task(
                checkpointer.aput_writes(target, [("channel", "value")], "task-1"))
            for _ in range(10_000):  # until the writes wait for their checkpoint (parked)
                if checkpointer._rendezvous._parked:
                    break
                await asyncio.sleep(0.001)
            assert checkpointer._rendezvous._parked, "the writes never waited"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert not checkpointer._rendezvous._parked, "the cancelled writes are still parked"
        checkpointer.put(first, _checkpoint(2), {"step": 1}, {})
        stored = checkpointer.get_tuple(target)
        assert stored is not None and stored.pending_writes == []


def test_a_storm_of_cancelled_calls_keeps_every_promise(any_empty_target, hang_detector):
    """Tasks sharing one checkpointer (two pooled connections on PostgreSQL), cancelled at
    seeded random moments in aput, aput_writes (some before their checkpoint), aget_tuple and
    alist: each ends with its result, CancelledError or a sqlitesaver error, nothing else; a
    put that returned is stored, a cancelled one is stored afterwards exactly if it was when
    its CancelledError arrived; no writes stay parked; and every pooled connection is back."""
    import random

    from sqlitesaver.errors import SaverError

    hang_detector(180)
    rnd = random.Random(1729)
    options = {"max_connections": 2, "busy_timeout": 10} if "://" in any_empty_target else {}
    with Saver(any_empty_target, **options) as saver:
        checkpointer = SaverCheckpointer(saver)
        checkpointer.pending_writes_wait = 2.0
        outcomes: dict[str, tuple[str, bool | None]] = {}
        unexpected: list[BaseException] = []

        async def one(n: int) -> None:
            thread = f"t{n % 4}"
            checkpoint = _checkpoint(n + 1)
            key = checkpoint["id"]
            config = _cfg(thread)
            try:
                if n % 3 == 0:  # its writes first: they wait for the put
                    writes = asyncio.ensure_future(checkpointer.aput_writes(
                        _cfg(thread, key), [("channel", n)], f"task-{n}"))
                    await asyncio.sleep(0)
                else:
                    writes = None
                try:
                    await checkpointer.aput(config, checkpoint, {"step": n}, {})
                except asyncio.CancelledError:
                    outcomes[key] = ("cancelled", saver.get(thread, key) is not None)
                    raise
                outcomes[key] = ("returned", None)
                if writes is not None:
                    await writes
                await checkpointer.aget_tuple(_cfg(thread, key))
                [item async for item in checkpointer.alist(_cfg(thread), limit=3)]
            except (asyncio.CancelledError, SaverError):
                if writes is not None and not writes.done():
                    writes.cancel()
                    with contextlib.suppress(asyncio.CancelledError, SaverError):
                        await writes
                raise

        async def main() -> None:
            for wave in range(8):
                tasks = [asyncio.create_task(one(wave * 12 + k)) for k in range(12)]
                await asyncio.sleep(rnd.random() * 0.03)
                for task in tasks:
                    if rnd.random() < 0.5:
                        task.cancel()
                for task in tasks:
                    try:
                        await task
                    except (asyncio.CancelledError, SaverError):
                        pass
                    except BaseException as exc:  # noqa: BLE001 - what must not happen
                        unexpected.append(exc)

        asyncio.run(main())
        assert unexpected == []
        for n in range(96):
            key = _checkpoint(n + 1)["id"]
            if key not in outcomes:
                continue
            kind, seen = outcomes[key]
            stored = saver.get(f"t{n % 4}", key) is not None
            assert stored if kind == "returned" else stored == seen, (key, kind, seen)
        assert not checkpointer._rendezvous._parked
        assert not checkpointer._rendezvous._flights
        if "://" not in any_empty_target:
            return  # the rest is the pool's (SQLite has one write lock, not two connections)
        assert not saver._engine._checkouts
        barrier = threading.Barrier(2)  # both pooled connections, in a block each at once

        def hold() -> None:
            with saver.transaction():
                saver.append_log(f"holder-{threading.get_ident()}", b"x")
                barrier.wait(30)

        holders = [threading.Thread(target=hold) for _ in range(2)]
        for holder in holders:
            holder.start()
        for holder in holders:
            holder.join(60)
        assert not barrier.broken
