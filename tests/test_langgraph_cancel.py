"""The async checkpointer as a server uses it: tasks cancelled (``task.cancel()``,
``asyncio.wait_for`` timeouts) in the middle of its calls. A cancelled call raises
CancelledError, nothing else, and leaves the checkpointer whole (its listing closed, every
pooled connection back). On both engines (the adapter is the same code)."""

from __future__ import annotations

import asyncio
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
