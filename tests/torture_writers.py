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
