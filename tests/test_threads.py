"""One Saver shared by many threads stays correct, on either engine (``any_target``)."""

from __future__ import annotations

import threading

from sqlitesaver import Saver


def test_many_threads_writing_and_reading(any_target):
    workers, per_worker = 8, 40
    errors: list[BaseException] = []
    acked: dict[str, list[str]] = {}
    start = threading.Barrier(workers)
    with Saver(any_target, durability="normal") as saver:

        def work(w: int) -> None:
            thread_id = f"t{w}"
            ids = acked.setdefault(thread_id, [])
            try:
                start.wait()
                parent = None
                for n in range(per_worker):
                    with saver.transaction():
                        ref = saver.put(thread_id, {"w": w, "n": n}, parent_id=parent)
                        saver.put_writes(thread_id, ref.checkpoint_id, "task", [("n", n)])
                    ids.append(ref.checkpoint_id)
                    parent = ref.checkpoint_id
                    latest = saver.get(thread_id)
                    assert latest.checkpoint_id == ref.checkpoint_id
                    assert latest.state == {"w": w, "n": n}
                    saver.append_log(thread_id, n)
            except BaseException as exc:  # reported below, with the thread that failed
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        all_ids = [i for ids in acked.values() for i in ids]
        assert len(all_ids) == len(set(all_ids)) == workers * per_worker
        for w in range(workers):
            listed = list(saver.list(f"t{w}"))
            assert [c.checkpoint_id for c in listed] == acked[f"t{w}"][::-1]
            assert [c.state["n"] for c in listed] == list(range(per_worker))[::-1]
            assert all(c.pending_writes[0].value == c.state["n"] for c in listed)
            assert [e.event for e in saver.read_log(f"t{w}")] == list(range(per_worker))


def test_transaction_blocks_other_threads_writes_until_it_ends(any_target):
    """On PostgreSQL only writers of the same thread wait (README, PostgreSQL): this one is."""
    with Saver(any_target, durability="normal") as saver:
        inside = threading.Event()
        other_done = threading.Event()
        order: list[str] = []

        def other() -> None:
            inside.wait()
            saver.put("t", "other")      # waits for the transaction below
            order.append("other")
            other_done.set()

        thread = threading.Thread(target=other)
        thread.start()
        with saver.transaction():
            saver.put("t", "mine")
            inside.set()
            # the other thread cannot have written: we hold the write connection
            assert not other_done.wait(0.2)
            order.append("mine")
        thread.join()
        assert order == ["mine", "other"]
        assert [c.state for c in saver.list("t")] == ["other", "mine"]
