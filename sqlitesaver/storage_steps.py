"""The storage steps: what each engine implements beneath the backend-neutral core
(:mod:`sqlitesaver.saver`), declared on :class:`StorageSteps`, a base of
:class:`~sqlitesaver.saver.Saver`, each with the contract the engine keeps (the declaration
raises :class:`NotImplementedError`; SQLite's steps are :mod:`sqlitesaver.sqlite.saver` and
its bases, PostgreSQL's :mod:`sqlitesaver.postgres.saver`), and the shape of the rows they
return.

Every public method of ``Saver`` checks its arguments and encodes its values, then calls one
step here; what it reads back it verifies and builds into records
(:mod:`sqlitesaver.saver_reads`). A step's guarantee is its docstring's: a write step is one
transaction (or joins the calling thread's), whole or not at all; a read step reads committed
data (or the calling thread's own transaction) from one snapshot, or from one snapshot a
page. The engine-provided public methods (``transaction``, ``close``, ``stats`` ...) are
declared on ``Saver`` itself, with the API they document.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import ChecksumError
from .records import Checkpoint, LogEvent

if TYPE_CHECKING:
    from . import attachments

__all__ = ["N_CHECKPOINT_COLUMNS", "StorageSteps"]

# The rows storage steps return, on every engine: a checkpoint's 10 columns (seq, thread_id,
# namespace, parent_seq, created_at, state, metadata, checksum, key, parent_key) and, after
# them in _get_rows' rows, a pending write's 7 (checkpoint_seq, task_id, idx, channel, value,
# task_path, checksum).
N_CHECKPOINT_COLUMNS = 10


class StorageSteps:
    """The storage steps each engine implements, and what else it provides to the core (see
    the module docstring)."""

    # The storage steps: each public method checks its arguments and encodes its values above
    # them (the backend-neutral core), then calls one of these, which the engine implements
    # (SQLite's in sqlitesaver/sqlite/saver.py, PostgreSQL's in sqlitesaver/postgres/saver.py).
    # Each takes checked arguments and encoded bytes, and returns plain values or rows in the
    # shapes above; checksums are verified and records built in the core
    # (sqlitesaver/saver_reads.py), once. A step checks that the Saver is usable
    # (_check_usable) before it touches the store.

    def _put_checkpoint(self, thread_id: str, namespace: str, parent_id: str | None,
                        checkpoint_id: str | None, state: bytes, metadata: bytes,
                        files: "Callable[[attachments.FileDb, int], None] | None" = None
                        ) -> tuple[str, int]:
        """Insert the checkpoint (or replace the one with caller-supplied id
        ``checkpoint_id``) in one transaction, or in the calling thread's open one; return its
        id and ``created_at`` (microseconds since the epoch). ``files``, when given, is called
        with the engine's :class:`~sqlitesaver.attachments.FileDb` and the checkpoint's seq in
        that same transaction, after the checkpoint row is written (a put with files); if the
        engine runs the transaction again (a retry on a server), it is called again.

        A new checkpoint gets the next generated id, larger than every id handed out before
        in its thread. A replaced one keeps its place in the order, its ``created_at`` and its
        pending writes; its parent must then be older than it, else
        :class:`~sqlitesaver.errors.InvalidArgumentError`. ``parent_id`` must name a
        checkpoint of the same thread and namespace, else
        :class:`~sqlitesaver.errors.CheckpointNotFoundError`. Either way nothing is
        written."""
        raise NotImplementedError

    def _store_writes(self, thread_id: str, namespace: str, checkpoint_id: str, task_id: str,
                      task_path: str, encoded: builtins.list[tuple[int, str, bytes]],
                      replace: bool) -> None:
        """Store ``(index, channel, value bytes)`` of a task against the checkpoint
        ``checkpoint_id`` of the thread and namespace, each with its checksum, all or none (a
        storage step). A ``(task_id, index)`` already stored keeps its first value, unless
        ``replace``. A checkpoint that does not exist raises
        :class:`~sqlitesaver.errors.CheckpointNotFoundError`."""
        raise NotImplementedError

    def _store_event(self, thread_id: str, event_bytes: bytes) -> int:
        """Append the encoded event to the thread's log, with its checksum; return its seq,
        never handed out before (a storage step)."""
        raise NotImplementedError

    def _delete_thread(self, thread_id: str) -> int:
        """Delete every checkpoint (all namespaces), pending write and log event of the thread,
        and what only they hold, in one transaction; return how many checkpoints were deleted.
        A deleted id is never handed out again (a storage step)."""
        raise NotImplementedError

    def _prune(self, thread_id: str, keep_last: int) -> int:
        """Delete all but the newest ``keep_last`` (an int >= 0, of any size) checkpoints of
        each namespace of the thread, with their pending writes, in one transaction; return how
        many were deleted (a storage step)."""
        raise NotImplementedError

    def _copy_thread(self, source_thread_id: str, target_thread_id: str) -> int:
        """Copy the source thread as :meth:`copy_thread` says, in one transaction; return how
        many checkpoints were copied (a storage step). Verifies every source row
        (:meth:`_verify`, :meth:`_verify_writes`) before copying it; a target that has a
        checkpoint raises :class:`~sqlitesaver.errors.InvalidArgumentError`."""
        raise NotImplementedError

    def _delete_matching(self, filters: tuple[dict, ...], thread_id: str | None) -> int:
        """Delete as :meth:`delete_matching` says (``filters``: one or more non-empty dicts;
        every thread when ``thread_id`` is None), in one transaction; return how many were
        deleted (a storage step). A checkpoint's metadata is compared only once its checksum
        holds (:meth:`_verify`)."""
        raise NotImplementedError

    def _get_rows(self, thread_id: str, namespace: str, checkpoint_id: str | None
                  ) -> builtins.list[tuple]:
        """The checkpoint (the latest of the thread and namespace when ``checkpoint_id`` is
        None) joined with each of its pending writes, from one snapshot: a checkpoint's
        columns then a write's (all None when it has none), the writes in (task_id, idx)
        order (the core does not sort them); [] if there is none (a storage step). The core
        reads the checkpoint's columns from the first row only: the others may hold None for
        the state, so that a large one is not read and sent once per write."""
        raise NotImplementedError

    def _list(self, thread_id: str, namespace: str | None, before: str | None,
              limit: int | None, metadata: dict | None,
              damaged: Callable[[str, ChecksumError], None] | None = None
              ) -> Iterator[Checkpoint]:
        """What :meth:`list` yields, its arguments checked (a storage step): pages of
        :data:`~sqlitesaver.saver.PAGE_ROWS` checkpoint rows, then twice as many each time up
        to :data:`~sqlitesaver.saver.MAX_PAGE_ROWS` (both read at call time), each page read
        from one snapshot that ends before it is handed out, and turned into records by
        :meth:`_merge` (``damaged``: its reporter of skipped checkpoints). ``before`` is looked
        up at the first ``next()``."""
        raise NotImplementedError

    def _read_log(self, thread_id: str, after: int) -> Iterator[LogEvent]:
        """What :meth:`read_log` yields (``after`` >= -1 and in the int64 range): the events
        with ``seq > after`` up to the newest when the read began, in pages like :meth:`_list`,
        each event's checksum verified before it is decoded (a storage step)."""
        raise NotImplementedError

    def _threads(self) -> builtins.list[str]:
        """Every thread id with a checkpoint or a log event, sorted, as stored (a storage
        step; :meth:`threads` checks their type)."""
        raise NotImplementedError

    # --- what each engine provides to the core ---------------------------------------------

    def _check_usable(self) -> None:
        """Raise unless this Saver may be used now:
        :class:`~sqlitesaver.errors.ForkedProcessError` in a process forked after it opened,
        :class:`~sqlitesaver.errors.SaverClosedError` once it is closed or shut down."""
        raise NotImplementedError

    def _checksum_error(self, what: str) -> ChecksumError:
        """The error for ``what`` (e.g. "checkpoint 'x' of thread 't'") failing its checksum,
        with this engine's advice on what to do about it."""
        raise NotImplementedError
