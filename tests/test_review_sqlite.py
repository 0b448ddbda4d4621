"""Defects found by the adversarial review of the SQLite write path and the LangGraph adapter
(branch review-sqlite): each test failed on the code it was written against."""

from __future__ import annotations

import threading
import time

from langgraph.checkpoint.base import empty_checkpoint

from sqlitesaver import CheckpointNotFoundError, Saver
from sqlitesaver.langgraph import SqliteSaver


def _cfg(checkpoint_id: str | None = None) -> dict:
    configurable = {"thread_id": "t", "checkpoint_ns": ""}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def test_put_writes_inside_a_transaction_never_parks_for_another_threads_put(
        db_path, hang_detector):
    """``put_writes`` inside ``saver.transaction()`` for a checkpoint not yet stored parked its
    writes while holding the write lock: no other thread could commit that checkpoint meanwhile,
    so every writer stood still for twice ``pending_writes_wait``, and a put from another thread
    took the parked job and, once the caller had been told ``CheckpointNotFoundError: nothing
    was written`` (and its transaction rolled back), committed those writes anyway."""
    hang_detector(60)
    with Saver(db_path) as saver:
        checkpointer = SqliteSaver(saver)
        checkpointer.pending_writes_wait = 5.0  # room for the put to take the job meanwhile
        checkpoint = empty_checkpoint()
        checkpoint["id"] = "1ef4f797-8335-6428-8001-000000000002"
        decided = threading.Event()  # the writes parked, or the call ended
        parked: list[bool] = []
        park = checkpointer._rendezvous.park

        def observed_park(job, **kwargs):
            accepted = park(job, **kwargs)
            parked.append(accepted)
            decided.set()
            return accepted

        checkpointer._rendezvous.park = observed_park  # type: ignore[method-assign]
        outcome: list[BaseException | None] = []

        def write_inside_a_transaction() -> None:
            try:
                with saver.transaction():
                    checkpointer.put_writes(_cfg(checkpoint["id"]), [("c", "v")], "task")
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertions
                outcome.append(exc)
            decided.set()

        writer = threading.Thread(target=write_inside_a_transaction)
        started = time.monotonic()
        writer.start()
        assert decided.wait(30)
        putter = None
        if parked:  # (the bug) a put from elsewhere now takes the parked writes
            putter = threading.Thread(target=checkpointer.put,
                                      args=(_cfg(), checkpoint, {}, {}))
            putter.start()
        writer.join(30)
        assert not writer.is_alive()
        elapsed = time.monotonic() - started
        if putter is None:
            checkpointer.put(_cfg(), checkpoint, {}, {})
        else:
            putter.join(30)
            assert not putter.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], CheckpointNotFoundError), outcome
        stored = saver.get("t", checkpoint["id"])
        assert stored is not None
        # Told that nothing was written: nothing of it may be committed, then or later.
        assert stored.pending_writes == (), stored.pending_writes
        assert not parked, "parked while holding the write lock"
        assert elapsed < checkpointer.pending_writes_wait, elapsed
