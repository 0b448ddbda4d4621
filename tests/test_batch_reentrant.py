"""Group commit: a write that re-enters from the leader's own thread while its batch is
open (here: a signal handler for a signal interrupts.deferred does not hold back, running in
the main thread during the leader's gathering wait) is a *member* of that batch as far as
_join knows (it opens SAVEPOINT member), but _leave takes it for the leader (batch.leader ==
its thread): when it fails, it rolls the whole batch back instead of its own savepoint, and
the leader and every member that did nothing wrong get an error.
SQLite by nature: the SQLite engine's group commit."""

from __future__ import annotations

import signal
import threading

from sqlitesaver import CheckpointNotFoundError, Saver

from test_group_commit import queued


def test_a_failing_write_reentering_the_leaders_thread_fails_alone(db_path):
    main = threading.main_thread().ident
    assert threading.get_ident() == main
    with Saver(db_path) as saver:
        saver.put("warm", {})
        results: dict = {}

        def handler(signum, frame):  # runs in the main thread: the batch's leader
            try:
                results["handler"] = saver.put_writes("a", "00000000000fffff", "task",
                                                      [("ch", 1)])
            except Exception as exc:
                results["handler"] = exc

        def member() -> None:
            try:
                with saver.transaction():
                    signal.pthread_kill(main, signal.SIGWINCH)
                    queued(saver, 1)  # the handler's write waits for the connection
                    results["member"] = saver.put("a", {"n": 2})
            except Exception as exc:
                results["member"] = exc

        previous = signal.signal(signal.SIGWINCH, handler)
        try:
            t = threading.Thread(target=member)
            try:
                with saver.transaction():
                    results["lead"] = saver.put("lead", {"n": 1})
                    t.start()
                    queued(saver, 1)  # the member waits: the leader gathers it
            except Exception as exc:
                results["lead"] = exc
            t.join(60)
            assert not t.is_alive()
        finally:
            signal.signal(signal.SIGWINCH, previous)
        assert isinstance(results["handler"], CheckpointNotFoundError), results
        # The leader's and the member's transitions did nothing wrong: they commit.
        assert not isinstance(results["lead"], Exception), results
        assert not isinstance(results["member"], Exception), results
    with Saver(db_path) as saver:
        assert saver.get("lead").checkpoint_id == results["lead"].checkpoint_id
        assert saver.get("a").checkpoint_id == results["member"].checkpoint_id
