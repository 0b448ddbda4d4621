"""Group commit (found in review of f614923; the hole predates it): an
asynchronous exception delivered in the leader's gathering wait just after Condition.wait let
go of the write lock (right after ``self._release_save()`` returns, where CPython does check
for one) leaves _finish without the lock: its finally calls batch.end() (nobody joined yet, so
there is no Event to set) and notify_all() (RuntimeError: un-acquired lock), and _abandon,
seeing the lock not held, leaves the batch open. The next write from another thread joins that
batch, makes a fresh Event with waitable() and waits for an end() that already happened: it
hung for ever (with the Event made lazily and never set); before that change every later write
failed with InterruptedTransitionError instead. Now _abandon takes the lock back and ends the
batch as its leader would, and the next write commits.
SQLite by nature: the SQLite engine's group commit."""

from __future__ import annotations

import linecache
import sys
import threading

from sqlitesaver import Saver

# _sigint_raises and quick_heal are autouse fixtures: imported, they apply here too.
from test_interrupts import (assert_usable_or_shut, _sigint_raises,  # noqa: F401
                             quick_heal)


class Injected(BaseException):
    pass


def _after_release_save(fired: list):
    source = threading.__file__

    def local(frame, event, arg):
        if event == "line" and not fired and frame.f_code.co_filename == source and \
                linecache.getline(source, frame.f_lineno).strip() == "gotit = False":
            fired.append(frame.f_lineno)
            raise Injected("delivered right after Condition.wait's _release_save()")
        return local

    def tracer(frame, event, arg):
        if frame.f_code.co_filename == source and frame.f_code.co_name == "wait":
            return local
        return None
    return tracer


def test_an_exception_in_the_gathering_wait_after_it_let_go_of_the_lock(db_path, hang_detector):
    hang_detector(120)
    with Saver(db_path, durability="normal") as saver:
        saver.put("warm", {})
        fired: list = []
        outcome: dict = {}
        stay = threading.Event()  # the leader's thread lives on (its ident is not reused)

        def lead() -> None:
            with saver._waiting_cond:
                saver._waiting = 1  # a writer that never comes: the leader gathers
            sys.settrace(_after_release_save(fired))
            try:
                outcome["lead"] = saver.put("lead", {"n": 1})
            except BaseException as exc:
                outcome["lead"] = exc
            finally:
                sys.settrace(None)
                with saver._waiting_cond:
                    saver._waiting = 0
                outcome["left"] = True
            stay.wait(120)

        t = threading.Thread(target=lead, daemon=True)
        t.start()
        try:
            for _ in range(600):
                if outcome.get("left"):
                    break
                stay.wait(0.05)
            assert fired, "the injection point was not reached"
            assert isinstance(outcome["lead"], BaseException), outcome
            # (b) no hang, (c) usable: the next write commits.
            assert_usable_or_shut(saver, db_path)
        finally:
            stay.set()
            t.join(10)
    # The leader was told it failed: its transition must not be committed.
    with Saver(db_path) as saver:
        assert saver.get("lead") is None
