"""Group commit: one exception at every line of a member that joins through the new
non-blocking acquire (it arrives while the leader's gathering wait has released the lock, so it
is never counted in _waiting), and of the leader of such a batch. The member takes the write
lock itself (a put inside its own transaction()): a plain put would be queued for the leader
(sqlitesaver/sqlite/queue.py), which test_interrupts covers.
SQLite by nature: the SQLite engine's group commit."""

from __future__ import annotations

import threading
import time

import pytest

from sqlitesaver import Saver
from sqlitesaver.sqlite import transaction as write_path

# _sigint_raises and quick_heal are autouse fixtures: imported, they apply here too.
from test_interrupts import (UNRAISABLE_INJECTIONS, Injector, Raised,  # noqa: F401
                             _member_put, assert_batch_verdicts, assert_usable_or_shut,
                             _sigint_raises, quick_heal)

pytestmark = UNRAISABLE_INJECTIONS  # see test_interrupts


def _batch_joined_without_waiting(saver: Saver, trace_leader, trace_member) -> dict:
    results: dict = {}
    gathering = threading.Event()

    def leader() -> None:
        with saver._waiting_cond:
            saver._waiting = 1  # a phantom waiter: the leader gathers for GATHER_WAIT
        call = lambda: saver.put("lead", {"n": 1})  # noqa: E731
        try:
            results["leader"] = trace_leader.run(call) if trace_leader else call()
        except BaseException as exc:
            results["leader"] = Raised(exc)
        finally:
            with saver._waiting_cond:
                saver._waiting = 0  # the phantom goes with it: a member left alone need not wait
            gathering.set()

    def member() -> None:
        # Wait until the leader is in its gathering wait: batch open, nobody owning it.
        deadline = time.monotonic() + 30
        while not (saver._batch is not None and saver._owner is None) and \
                not gathering.is_set() and time.monotonic() < deadline:
            time.sleep(0.0005)
        try:
            call = lambda: _member_put(saver, "locking")  # noqa: E731
            results["member"] = trace_member.run(call) if trace_member else call()
        except BaseException as exc:
            results["member"] = Raised(exc)
        finally:
            with saver._waiting_cond:
                saver._waiting = 0
            with saver._lock:  # free while the leader gathers: wake it, nobody else is coming
                saver._batch_cond.notify_all()

    threads = [threading.Thread(target=leader, daemon=True),
               threading.Thread(target=member, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a thread of the batch hung"
    return results


@pytest.mark.parametrize("role", ["leader", "member"])
def test_one_exception_at_every_line_of_a_batch_joined_without_waiting(tmp_path, hang_detector,
                                                                       monkeypatch, role):
    hang_detector(600)
    # A batch of two is full: the leader commits as soon as the member has joined, instead of
    # gathering for the phantom waiter until GATHER_WAIT (which it still does at the points
    # where the member never joins).
    monkeypatch.setattr(write_path, "MAX_BATCH", 2)
    # The uninjected run must form the batch of two, so its leader gathers until the member
    # joins (the batch is then full) however late a loaded machine runs the member: a bound
    # of 0.3 s made the join a race. Woken at once when the member ends without joining.
    monkeypatch.setattr(write_path, "GATHER_WAIT", 60)
    with Saver(str(tmp_path / "count.db"), durability="normal") as saver:
        counter = Injector(None)
        before = dict(saver._stats)
        results = _batch_joined_without_waiting(saver, counter if role == "leader" else None,
                                                counter if role == "member" else None)
        # It did join the leader's batch (one COMMIT for both).
        assert saver._stats["commits"] - before["commits"] == 1, (saver._stats, results)
        assert saver._waiting == 0
    total = counter.lines
    assert total > 20, total
    # The injected runs keep the bound they had: at many points the member never joins, and
    # a bound keeps any of those whose wake-up went astray short (a point that misses the join
    # is judged all the same; the last assertion needs one join among all the points).
    monkeypatch.setattr(write_path, "GATHER_WAIT", 0.3)
    joined = 0
    for at in range(1, total + 1):
        path = str(tmp_path / f"{role}-{at}.db")
        with Saver(path, durability="normal") as saver:
            injector = Injector(at)
            before = dict(saver._stats)
            results = _batch_joined_without_waiting(
                saver, injector if role == "leader" else None,
                injector if role == "member" else None)
            joined += saver._stats["transitions"] - before["transitions"] == 2
            assert_batch_verdicts(results, role, at, path)
            assert saver._batch is None and not saver._lock._is_owned()
            assert_usable_or_shut(saver, path)
            assert_batch_verdicts(results, role, at, path)  # the probe committed none of it
    print(role, "lines", total, "batches of two", joined)
    assert joined > 0, "no point formed a batch of two: the test checked no join"
