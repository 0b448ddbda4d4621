"""Deliberately broken writers for the torture harness's self-tests (tests/test_torture.py).

Each breaks one rule the library keeps; the harness must report the damage. They are loaded by
the harness's child process with ``--writer tests/torture_writers.py:NAME`` and are never part
of the library's normal paths.
"""

from __future__ import annotations

from typing import Any, Callable

from sqlitesaver import DatabaseIOError, DiskFullError, Saver, SaverError, pragmas
from sqlitesaver.torture.workload import Transition, Writer


class AckBeforeCommit(Writer):
    """Acknowledges a transition before running it: a kill during the Saver call loses a
    transition the caller was told was saved. The harness must report it as lost."""

    def apply(self, saver: Saver, tx: Transition,
              ack: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        ack({"ck": {}, "log": []})
        return self.run(saver, tx)


class SplitCommit(Writer):
    """Commits each operation of a multi-operation transition on its own (checkpoint, then
    its writes, then the log event): a kill between them leaves half a transition. The
    harness must report it as partial."""

    mix = {"multi": 1.0}

    def run(self, saver: Saver, tx: Transition) -> dict[str, Any]:
        result: dict[str, Any] = {"ck": {}, "log": []}
        for op, value in zip(tx.ops, tx.values):
            self.run_op(saver, op, value, result)
        return result


def _unsafe_journal(journal_mode: str, synchronous: str) -> None:
    """Make every connection this process opens use ``journal_mode``/``synchronous`` instead
    of WAL + FULL, bypassing the library's read-back check (which would refuse).

    ``secure_delete`` makes prunes and deletions overwrite every freed page, so those
    transactions rewrite many pages in place: the window a kill has to hit.
    """

    def set_journal(conn: Any, path: str) -> None:
        conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchall()

    def apply(conn: Any, profile: Any, path: str, *, set_wal: bool = True) -> None:
        pragmas.busy_timeout(conn, profile)
        if set_wal:
            set_journal(conn, path)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA secure_delete=ON").fetchall()
        pragmas.foreign_keys(conn)

    pragmas.journal_mode_wal = set_journal
    pragmas.apply = apply


class _UnsafeJournal(Writer):
    journal_mode = ""
    synchronous = ""
    #: Transactions that rewrite many pages: large blobs (overflow chains, freelist reuse),
    #: prunes and deletions (freeing pages), among ordinary ones.
    mix = {"put_blob": 6, "put": 3, "multi": 3, "writes": 2, "prune": 4, "delete": 2}

    def open(self, path: str, durability: str) -> Saver:
        _unsafe_journal(self.journal_mode, self.synchronous)
        saver = super().open(path, durability)
        mode = saver.settings()["writer"]["journal_mode"]
        if mode != self.journal_mode.lower():
            saver.close()
            raise RuntimeError(f"the broken writer wanted journal_mode={self.journal_mode}, "
                               f"SQLite kept {mode}")
        return saver


class JournalOff(_UnsafeJournal):
    """``journal_mode=OFF``: pages are rewritten in place with nothing to roll back from, so
    a kill in the middle of writing a transaction's pages leaves a mix of old and new pages."""

    journal_mode = "OFF"
    synchronous = "OFF"


class SyncOffRollbackJournal(_UnsafeJournal):
    """A rollback journal with ``synchronous=OFF``: unsafe on power loss, but every write is
    in the OS page cache when the process dies, so the hot journal rolls a half-written
    transaction back. SIGKILL cannot tell it from the real thing; issue #4's power-loss VFS
    can."""

    journal_mode = "DELETE"
    synchronous = "OFF"


# --- broken error handling, for --mode io-faults ---------------------------------------------

class SwallowsErrors(Writer):
    """Catches the Saver's error and carries on as if the transition had been saved: the
    caller is told a failed write succeeded. The I/O-fault loop must report that no error
    reached the caller."""

    def run(self, saver: Saver, tx: Transition) -> dict[str, Any]:
        try:
            return super().run(saver, tx)
        except SaverError:
            return {"ck": {}, "log": []}


class KeepsGoingAfterIOError(Writer):
    """Its Saver does not shut down after an I/O error, so the next write retries on the
    connection whose write or fsync failed (PostgreSQL's 'fsyncgate' mistake). The I/O-fault
    loop must report the Saver as still usable."""

    def open(self, path: str, durability: str) -> Saver:
        saver = super().open(path, durability)
        saver._fail = lambda exc, doing: None  # type: ignore[method-assign]
        return saver


class FullDiskAsIOError(Writer):
    """Reports a full disk as a generic I/O error, hiding that the transaction was rolled back
    and that the same Saver may carry on. The I/O-fault loop must report the wrong error."""

    def run(self, saver: Saver, tx: Transition) -> dict[str, Any]:
        try:
            return super().run(saver, tx)
        except DiskFullError as exc:
            raise DatabaseIOError(str(exc), path=exc.path) from exc


# --- broken group commit, for --threads ------------------------------------------------------
# Both are correct with one thread, where every transition leads its own batch; only when
# several threads share a Saver, so that transitions join each other's batches, do they break.
# They break the Saver's internals on purpose, in the child process only.

def _write_path() -> Any:
    from sqlitesaver.sqlite import transaction
    return transaction


class MemberReturnsBeforeCommit(Writer):
    """A transition that joined another thread's batch (taking the write lock, or queued for its
    leader to run) returns, and is acknowledged, as soon as its own work is in the shared
    transaction, without waiting for the batch's COMMIT: a kill
    before the leader's COMMIT loses a transition the caller was told was saved. The harness
    must report it as lost (with --threads; with one thread there is no one to join)."""

    def open(self, path: str, durability: str) -> Saver:
        module = _write_path()

        class DoneAtOnce(module._Batch):
            __slots__ = ()

            def __init__(self, leader: int) -> None:
                super().__init__(leader)
                # Members stop waiting for the COMMIT before it happened, and are told it did
                # (a member returns only once `committed` is set): the Event they wait on is
                # there, already set, before any of them joins.
                self.committed = True
                self.waitable().set()

        module._Batch = DoneAtOnce
        # A transition queued for the leader (sqlite/queue.py) is woken as soon as the leader
        # has run it, and finds its batch "committed".
        run = module.queue.run

        def run_and_wake(saver: Any, job: Any, conn: Any, batch: Any) -> None:
            run(saver, job, conn, batch)
            job.wake()

        module.queue.run = run_and_wake
        return super().open(path, durability)


class FailedMemberLeaks(Writer):
    """A transition that fails inside a batch is not rolled back to its savepoint, so its work
    stays in the shared transaction and the batch's COMMIT makes it durable, although the
    caller got the exception. Alone in its batch it is rolled back with the whole transaction,
    so one thread hides it. The harness must report the aborted transitions as leaked."""

    #: Many aborts, and no prunes or deletions: a leaked checkpoint would change what a later
    #: prune keeps and turn the leak into losses too.
    mix = {"abort": 30, "put": 26, "writes": 20, "log": 20, "multi": 14}

    def open(self, path: str, durability: str) -> Saver:
        transaction = _write_path()._Transaction
        rollback = transaction._rollback

        def keep_a_failed_member(conn: Any, depth: int | str) -> None:
            if depth != "member":
                rollback(conn, depth)

        transaction._rollback = staticmethod(keep_a_failed_member)
        return super().open(path, durability)


# --- files outside the checkpoint's transaction, for issue #18 -------------------------------

class FilesOutsideTransaction(Writer):
    """Stores a checkpoint, commits it, and only then attaches its files in a transaction of
    their own (as an application that writes "step 7 done" and then the file step 7 made
    would): a kill between the two commits leaves a checkpoint without its files. The harness
    must report the transition as partial."""

    mix = {"files": 3, "workspace": 2, "put": 1}

    @staticmethod
    def run_put_files(saver: Saver, op: dict[str, Any], value: Any,
                      result: dict[str, Any]) -> None:
        state, files = value
        ref = saver.put(op["thread"], state, metadata=op["meta"], parent_id=op["parent_id"],
                        namespace=op["ns"])
        saver.attach_files(op["thread"], ref.checkpoint_id, files, namespace=op["ns"])
        result["ck"][op["tag"]] = ref.checkpoint_id


class FilesOnly(Writer):
    """Not broken: the library's writer with a mix of file transitions (and prunes and
    deletions, which collect their content), so that a short run stores many files."""

    mix = {"files": 5, "workspace": 5, "put": 2, "prune": 2, "delete": 1}
    # Every file transition carries a file above the chunk size (the default is a fifth):
    # test_torture.py requires one stored, and how many transitions a writer makes before
    # its kill depends on the machine's load (a loaded run once stored none).
    big_file_share = 1.0


# --- PostgreSQL, for tests/test_torture_postgres.py ------------------------------------------

#: Seconds at most that :class:`AckBeforeServerCommit` holds a transaction open after its
#: acknowledgement, waiting for its server connection to end: only so that a writer whose
#: harness died does not wait for ever (the harness kills it, or crashes its server, within
#: --max-interval of its ready).
ACK_WINDOW_LIMIT = 300.0


def _wait_for_the_server_to_go(conn: Any, limit: float = ACK_WINDOW_LIMIT) -> None:
    """Block until the server side of ``conn`` (a psycopg connection idle inside a
    transaction) sends something or closes: a backend idle in a transaction sends nothing
    unasked, so its socket becomes readable only when the server process ends (a crash, a
    kill: end of file) or is told to end it (its FATAL message). No polling, no sleep."""
    import select

    select.select([conn.fileno()], [], [], limit)


class AckBeforeServerCommit(Writer):
    """Runs each transition inside a transaction block and acknowledges it from inside the
    block, after its statements ran but before the block's COMMIT was sent: a writer killed
    there (sigkill mode), or a server crashed there (server-crash mode), loses a transition the
    caller was told was saved; the server rolls it back. The harness must report it as lost.

    The window between the acknowledgement and the COMMIT is held open until the writer is
    killed or its server connection ends (:func:`_wait_for_the_server_to_go`), so every kill
    or crash lands in it, by construction: left to the few Python statements between the two,
    a crash at a random moment missed it often enough, on a loaded machine, for 30 crashes of
    3 writers to catch nothing. Each incarnation therefore acknowledges one transition and
    commits none."""

    def apply(self, saver: Saver, tx: Transition,
              ack: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        with saver.transaction():
            result = self.run(saver, tx)
            ack(result)
            _wait_for_the_server_to_go(saver._engine._pinned().conn)  # type: ignore[attr-defined]
        return result


class RecordsArgv(Writer):
    """Not broken: the library's writer, which first appends its command line (one JSON list
    per line) to the file named by $TORTURE_ARGV_LOG, so a test can check that no password
    reached it."""

    def open(self, path: str, durability: str) -> Saver:
        import json
        import os
        import sys

        with open(os.environ["TORTURE_ARGV_LOG"], "a", encoding="utf-8") as f:
            f.write(json.dumps(sys.argv) + "\n")
        return super().open(path, durability)
