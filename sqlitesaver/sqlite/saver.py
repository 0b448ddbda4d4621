"""The SQLite engine's :class:`SqliteFileSaver`: a checkpoint store in one SQLite file.

:class:`SqliteFileSaver` is what :class:`sqlitesaver.Saver` returns for a path (an instance of
``Saver``; not to be confused with :class:`sqlitesaver.langgraph.SqliteFileSaver`, the LangGraph
checkpointer). It inherits every public method that reads or writes checkpoints, and with them
the backend-neutral core (:mod:`sqlitesaver.saver`: argument checks, the codec, checksums
verified on every read, the records returned); this module holds the rest: opening the file,
the write steps, the files stored with a checkpoint, :meth:`SqliteFileSaver.transaction`,
``settings``, ``stats``, ``backup``, ``close`` and what a ``fork()`` leaves. The read steps are
:mod:`sqlitesaver.sqlite.read_steps`, ``delete_thread``, ``prune``, ``copy_thread`` and
``delete_matching`` :mod:`sqlitesaver.sqlite.maintenance` (bases of the class), the SQL text
:mod:`sqlitesaver.sqlite.sql`.

Guarantee: every method that writes runs as one ``BEGIN IMMEDIATE ... COMMIT`` (or joins the
caller's :meth:`SqliteFileSaver.transaction`) and returns only after COMMIT returned. With
``durability="full"`` (the default) a returned write survives a process crash, an OS crash and a
power loss; with ``"normal"`` it survives a process crash, and after a power loss the database is
consistent but the last acknowledged transitions may be missing. A write that raised left nothing
behind, except after :class:`~sqlitesaver.errors.DatabaseIOError`, where it may have reached the
disk ("maybe committed").

The write protocol behind these guarantees (group commit, interruption safety, the bound on the
``-wal``) is :mod:`sqlitesaver.sqlite.transaction`, the read connections and their snapshots
:mod:`sqlitesaver.sqlite.reads`.
"""

from __future__ import annotations

import builtins
import os
import threading
import time
import weakref
from contextlib import contextmanager
from functools import partial
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import apsw

from .. import attachments, contention, integrity, interrupts, log, opening, paths, pragmas
from ..errors import (ChecksumError, CheckpointNotFoundError, ForkedProcessError,
                      InvalidArgumentError, ReadOnlyDatabaseError, SaverClosedError, SaverError,
                      UsageError, describe, restore_advice, translate)
from ..ids import format_id as _format_id
from ..ids import is_generated as _is_generated
from ..ids import parse_id as _parse_id
from ..pragmas import DURABILITY_LEVELS, Profile
from ..saver import Saver
from . import transaction as write_path
from . import queue as write_queue
from . import sql
# The module, for WAL_LIMIT read from it when a Saver opens: a value set on it (tests lower
# it) then holds for the Saver's first commits too.
from . import wal
from .maintenance import MaintenanceSteps
from .read_steps import ReadSteps
from .reads import _Read, _ReaderPool
from .sql import (_INSERT_CHECKPOINT, _INSERT_KEYED_CHECKPOINT, _INSERT_WRITE, _KEYED_LOOKUPS,
                  _NEXT_SEQ_CHECKPOINTS, _NEXT_SEQ_LOG, _REPLACE_WRITE, _SEQ_OF_KEY)
from .transaction import _FileTransaction, _Transaction, _UserTransaction

if TYPE_CHECKING:
    from ..backup import BackupReport
    from .transaction import _Batch

__all__ = ["SqliteFileSaver"]

# Still importable from this module, their home before sql.py (tests/test_pragmas.py and
# bench/core.py read them here); the read and maintenance steps use sql.py's.
_GET_LATEST, _GET_BY_KEY, _GET_BY_SEQ = sql._GET_LATEST, sql._GET_BY_KEY, sql._GET_BY_SEQ
_CHECKPOINT_COLUMNS = sql._CHECKPOINT_COLUMNS

#: Connections of Savers inherited through fork(). Kept referenced for the life of the child so
#: the child never runs sqlite3_close() on a connection whose locks belong to the parent.
_ABANDONED_IN_CHILD: list = []
_LIVE: "weakref.WeakSet[SqliteFileSaver]" = weakref.WeakSet()


def _abandon_after_fork() -> None:
    for saver in list(_LIVE):
        _ABANDONED_IN_CHILD.append((saver._writer, saver._pool))
        # A lock held by another parent thread at fork() stays held forever in the child;
        # fresh locks let the child reach the ForkedProcessError instead of hanging.
        saver._lock = threading.RLock()
        saver._batch_cond = threading.Condition(saver._lock)
        saver._waiting_lock = threading.RLock()
        saver._waiting_cond = threading.Condition(saver._waiting_lock)
        saver._jobs, saver._jobs_open = [], False
        saver._pool._lock = threading.Lock()
        saver._forked = True  # _check_usable: cheaper than comparing os.getpid() every call


_NO_FORK_HOOK = not hasattr(os, "register_at_fork")  # then compare pids at every call
if not _NO_FORK_HOOK:
    os.register_at_fork(after_in_child=_abandon_after_fork)


class SqliteFileSaver(ReadSteps, MaintenanceSteps, Saver):
    """A durable checkpoint store in one SQLite file: what ``Saver(path)`` returns.

    ``Saver(path)`` opens ``path``, creating it if it does not exist, and runs the startup
    recovery described by :attr:`recovery`. Use it as a context manager or call :meth:`close`.
    One Saver may be shared by any number of threads; it must not cross ``fork()``.

    ``path`` is looked at with ``stat()`` before anything opens it (see
    :mod:`sqlitesaver.paths`): a directory, FIFO, device or socket, a symbolic link that leads
    nowhere or into a loop, or a directory along it that is a file raise
    :class:`~sqlitesaver.errors.CannotOpenError`; a NUL, a name that is not UTF-8 or too long
    for its ``-wal`` (or for SQLite) raise :class:`~sqlitesaver.errors.InvalidArgumentError`;
    nothing is written either way. A symbolic link to a database is followed once, here:
    :attr:`path` is the real file, beside which SQLite keeps the ``-wal`` and ``-shm``.

    Options:
        durability: ``"full"`` (default; ``synchronous=FULL``) or ``"normal"``
            (``synchronous=NORMAL``: faster, but a power loss may drop the last acknowledged
            transitions; a process crash never does).
        busy_timeout: seconds to wait for another connection's lock before
            :class:`~sqlitesaver.errors.BusyTimeoutError`.
        integrity_check: ``"quick"`` (default), ``"full"`` or ``"off"``: which check the
            startup recovery runs. ``"quick"`` (``PRAGMA quick_check``) does not compare
            indexes with their tables: a damaged index entry can make a thread look empty
            (``get`` returns ``None``, ``list`` nothing) without an error; ``"full"`` finds it,
            at a cost that grows faster than the file. Whatever the mode, a schema changed
            outside sqlitesaver (an added trigger or view, a dropped or changed index, table
            or column) raises :class:`~sqlitesaver.errors.SchemaMismatchError`.
        readonly: open for reading only. Nothing is written: no file is created, no WAL
            checkpoint or schema migration runs (an older schema raises
            :class:`~sqlitesaver.errors.SchemaVersionError`), and every write method raises
            :class:`~sqlitesaver.errors.ReadOnlyDatabaseError`. Works on a file or directory
            that cannot be written. In a directory that cannot be written and holds no
            ``-wal``, SQLite cannot coordinate with writers, so the file is read as it is
            (``immutable``): for archives and read-only mounts, not beside a live writer.
        max_readers: the most read connections open at once (default 32; each holds two file
            descriptors). A read past it waits for one to be free, in arrival order, rather
            than fail; a read inside the calling thread's own :meth:`transaction` uses the
            write connection and never waits. Of the connections a burst of reads opened, at
            most :data:`~sqlitesaver.sqlite.reads.MAX_IDLE_READERS` stay open once reads
            stop (or once the surplus has been idle
            :data:`~sqlitesaver.sqlite.reads.READER_IDLE_SECONDS`). Running out of file
            descriptors raises :class:`~sqlitesaver.errors.TooManyOpenFilesError`, naming the
            limit.
    """

    def __init__(self, path: str | os.PathLike[str], *, durability: str = "full",
                 busy_timeout: float = 30.0, integrity_check: str = "quick",
                 readonly: bool = False, max_readers: int = 32) -> None:
        self._closed = True  # until fully open, so close() and __del__ paths are safe
        self._path = _check_path(path)
        if durability not in DURABILITY_LEVELS:
            raise InvalidArgumentError(
                f"durability must be one of {sorted(DURABILITY_LEVELS)}, not {durability!r}")
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)) \
                or not 0 <= busy_timeout <= 86400:
            raise InvalidArgumentError(
                f"busy_timeout must be a number of seconds from 0 to 86400, not {busy_timeout!r}")
        if integrity_check not in opening.INTEGRITY_MODES:
            raise InvalidArgumentError(
                f"integrity_check must be one of {opening.INTEGRITY_MODES}, "
                f"not {integrity_check!r}")
        if not isinstance(readonly, bool):
            raise InvalidArgumentError(f"readonly must be True or False, not {readonly!r}")
        if isinstance(max_readers, bool) or not isinstance(max_readers, int) \
                or not 1 <= max_readers <= 1024:
            raise InvalidArgumentError(
                f"max_readers must be an int from 1 to 1024, not {max_readers!r}")
        self._profile = Profile(durability=durability, busy_timeout=float(busy_timeout),
                                readonly=readonly)
        open_database = opening.open_readonly if readonly else opening.open_writer
        self._writer, self.recovery = open_database(self._path, self._profile, integrity_check)
        log.recovery(self.recovery)
        self._waiter = contention.waiter_of(self._writer)  # its busy handler; see contention
        # The steps every transaction retries on a busy lock, made once (the connection is
        # this Saver's for its life): not two closures per transaction.
        self._begin_step = write_path._begin_immediate(self._writer)
        self._commit_step = write_path._commit(self._writer)
        self._lock = threading.RLock()   # serialises the write connection between threads
        self._depth = 0                  # transaction nesting of the thread holding _lock
        self._owner: int | None = None   # that thread's ident while a transaction is open
        self._batch: _Batch | None = None  # the open group-commit transaction, if any
        self._batch_cond = threading.Condition(self._lock)  # a member finished its work
        self._waiting = 0                # transitions waiting for the write connection
        # The lock of _waiting_cond, for sections that notify nobody (a `with` on it is one C
        # call, on the Condition two Python ones: the queue's hand-over runs at every commit).
        self._waiting_lock = threading.RLock()
        self._waiting_cond = threading.Condition(self._waiting_lock)
        # Transitions queued for the open batch's leader, and whether one will run them
        # (sqlitesaver/sqlite/queue.py); both under _waiting_cond.
        self._jobs: builtins.list[write_queue._Job] = []
        self._jobs_open = False
        # Whether the last batch was shared: its successor's leader yields the GIL once
        # before it commits (sqlite/transaction.py, _Transaction._finish).
        self._concurrent = False
        self._stats = {"commits": 0, "transitions": 0, "wal_checkpoints": 0,
                       "wal_checkpoints_busy": 0}
        # WAL bytes past which a commit forces a checkpoint
        self._wal_threshold = wal.WAL_LIMIT
        # The WAL's length after each of this Saver's commits, from SQLite's wal hook: a stat()
        # of the -wal right after its fsync cost ~70 us per put here (bench: 0.49x bare).
        self._wal = wal._WalLength()
        self._frame_bytes = 24 + self._writer.execute("PRAGMA page_size").fetchone()[0]
        if not readonly:
            self._writer.set_wal_hook(self._wal)
        self._readers_open = threading.Event()  # cleared while that checkpoint runs
        self._readers_open.set()
        self._pool = _ReaderPool(max_readers)
        self._pid = os.getpid()
        self._forked = False  # set in a child process by _abandon_after_fork
        self._failure: str | None = None          # why it shut down after an I/O error
        self._failure_error: apsw.Error | None = None  # that error
        self._closed = False
        _LIVE.add(self)

    @property
    def path(self) -> str:
        """The database file: absolute, and if the path given was a symbolic link, the file it
        leads to (its ``-wal`` and ``-shm`` are beside this one)."""
        return self._path

    @property
    def durability(self) -> str:
        return self._profile.durability

    @property
    def readonly(self) -> bool:
        """True when opened with ``readonly=True``: every write raises
        :class:`~sqlitesaver.errors.ReadOnlyDatabaseError`."""
        return self._profile.readonly

    @property
    def in_transaction(self) -> bool:
        """True while the calling thread is inside a transaction of this Saver (its own
        :meth:`transaction` block, or a write it is running): a write it makes now joins that
        transaction and is durable only once the outermost block has committed."""
        return self._owner == threading.get_ident()

    def settings(self) -> dict[str, object]:
        """The live PRAGMA values of the write connection and of a read connection, as SQLite
        reports them: ``{"writer": {...}, "reader": {...}}``. Each connection gets the same
        profile (see :mod:`sqlitesaver.pragmas`); readers are also ``query_only``."""
        with self._lock:
            self._check_usable()
            writer = pragmas.read_back(self._writer)
        with _Read(self, "reading settings") as read:
            reader = pragmas.read_back(read.conn)
            reader["query_only"] = read.conn.execute("PRAGMA query_only").fetchone()[0]
        return {"writer": writer, "reader": reader}

    def stats(self) -> dict[str, int]:
        """Counters since this Saver opened and file sizes now, for monitoring (a snapshot;
        the counters only grow):

        - ``commits``: COMMITs that wrote; ``transitions``: the transitions they carried
          (group commit: ``transitions / commits`` is the mean batch);
        - ``lock_waits``: backoff pauses the write connection took waiting for another
          connection's lock (opening included);
        - ``wal_checkpoints``: checkpoints forced because the ``-wal`` had grown past
          :data:`~sqlitesaver.sqlite.wal.WAL_LIMIT` after a commit;
          ``wal_checkpoints_busy``: those that readers kept from truncating it within
          :data:`~sqlitesaver.sqlite.wal.WAL_CHECKPOINT_WAIT`;
        - ``wal_bytes``, ``db_bytes``: the sizes of the ``-wal`` (0 if absent) and the
          database file;
        - ``readers_open``, ``readers_idle``: read connections open now (at most
          ``max_readers``), and those of them not in use; ``reader_waits``: reads that waited
          for a read connection because ``max_readers`` were in use;
        - ``file_contents``, ``file_bytes``: distinct file contents stored (see
          :meth:`attach_files`) and their bytes, each content counted once however many
          checkpoints hold it.
        """
        with self._lock:
            self._check_usable()
            counters = dict(self._stats)
            counters["lock_waits"] = self._waiter.waits if self._waiter else 0
        counters.update(self._pool.counts())
        counters["wal_bytes"] = _size(self._path + "-wal")
        counters["db_bytes"] = _size(self._path)
        with _Read(self, "counting stored files") as read:
            counters["file_contents"], counters["file_bytes"] = attachments.totals(read.conn)
        return counters

    def backup(self, destination: str | os.PathLike[str]) -> "BackupReport":
        """Copy this database, as one consistent snapshot, to the new file ``destination``
        while writers (this Saver's threads, other processes) keep writing; return a
        :class:`~sqlitesaver.backup.BackupReport`. Uses SQLite's backup API from a read
        connection; the copy is written under a temporary name, fsynced, validated like
        ``python -m sqlitesaver check``, and only then linked to ``destination``, which must
        not exist (nothing is overwritten). A copy that fails validation (the source is
        damaged) raises :class:`~sqlitesaver.errors.CorruptDatabaseError` and leaves nothing.
        Refused inside this thread's :meth:`transaction`. See :mod:`sqlitesaver.backup`."""
        from ..backup import backup_saver
        self._check_usable()
        if self._depth and self._owner == threading.get_ident():
            raise InvalidArgumentError(
                f"backup of {self._path!r} inside a transaction is refused: it would copy the "
                "committed database without this transaction's writes. Back up after the "
                "block ends.", path=self._path)
        return backup_saver(self, destination)

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection. Idempotent. Waits for a transaction in another thread.

        Closing the last connection checkpoints the WAL into the database file. If that hits
        an I/O error, every connection is still closed and every committed transition is still
        in the ``-wal`` for the next open to recover; the error is raised (translated) so that
        a failing disk does not go unnoticed.
        """
        if self._closed:
            return
        if os.getpid() != self._pid:
            self._closed = True  # never close the parent's connections from a child
            return
        if self._owner == threading.get_ident():
            raise UsageError(
                f"close() was called inside this thread's transaction on {self._path!r}; "
                "leave the 'with saver.transaction():' block first (it commits or rolls back "
                "there). Nothing was closed.", path=self._path)
        failed: apsw.Error | None = None
        with self._lock:
            # A batch other threads still have open ends first (committed, or failed after an
            # I/O error): closing the connection under it would leave its members unanswered.
            while self._batch is not None and self._owner != threading.get_ident():
                self._batch_cond.wait()
            if self._closed:
                return
            self._closed = True
            write_queue.close(self)  # queued transitions: handed back, refused by the lock path
            readers = self._pool.close()  # readers in use are closed when they come back
            for conn in [*readers, self._writer]:
                try:
                    conn.close()
                except apsw.Error as exc:  # closed anyway; go on closing the others
                    failed = failed or exc
        _LIVE.discard(self)
        if failed is not None and self._failure is None:
            raise translate(failed, self._path, "closing the database (checkpointing its WAL "
                                                "on close)") from failed

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._profile.durability
        return f"<Saver {self._path!r} {state}>"

    # --- transactions ----------------------------------------------------------------------

    def transaction(self) -> "_Transaction":
        """Group several operations into one state transition: one ``BEGIN IMMEDIATE ...
        COMMIT``, all of it or none of it.

        The calling thread holds the write connection until the block ends; other threads'
        writes wait. Reads inside the block see its uncommitted writes. An exception leaving
        the block rolls everything back and propagates.

        Nesting: an inner ``transaction()`` is a SAVEPOINT. An exception leaving the inner
        block undoes only the inner block; if the outer block catches it, the outer block
        carries on and commits the rest. Nothing is durable until the outermost block exits.
        """
        return _UserTransaction(self, "running a transaction")

    def _atomically(self, doing: str, body: Callable[[], Any]) -> Any:
        """As :meth:`Saver._atomically`; queued for an open batch's leader, which runs
        ``body`` in its thread as the connection's owner, so that the write methods it calls
        nest as savepoints in the batch (:mod:`sqlitesaver.sqlite.queue`)."""
        if self._owner == threading.get_ident():
            return super()._atomically(doing, body)
        return write_queue.submit(self, doing, lambda conn: body(), _Transaction)

    # --- storage steps (see Saver) ------------------------------------------------------

    def _put_checkpoint(self, thread_id: str, namespace: str, parent_id: str | None,
                        checkpoint_id: str | None, state: bytes, metadata: bytes,
                        files: Callable[[attachments.FileDb, int], None] | None = None
                        ) -> tuple[str, int]:
        """A new checkpoint's seq is the largest committed in the database so far plus one
        (``_NEXT_SEQ``: a ``high_water`` row remembers deleted ones), taken under the write
        lock, so generated ids follow commit order across threads."""
        if files is not None:
            # Files may be gigabytes: a _FileTransaction, which Ctrl-C interrupts (rolled
            # back), holds the checkpoint and its files.
            with _FileTransaction(self, "putting a checkpoint with files") as conn:
                found = self._put_checkpoint(thread_id, namespace, parent_id, checkpoint_id,
                                             state, metadata)
                seq = self._checkpoint_seq(conn, thread_id, namespace, found[0],
                                           "checkpoint_id")
                files(attachments.FileDb(conn), seq)
            return found
        # Run by the thread that holds the write connection: this one, or a batch's leader
        # (write_queue.submit); either way inside one transaction, and returned once committed.
        # A partial of a function, not a closure: two objects per write instead of a function,
        # its cells and their tuple (GC-tracked objects are what make Python's cyclic GC run).
        return write_queue.submit(
            self, "putting a checkpoint",
            partial(SqliteFileSaver._put_step, self, thread_id, namespace, parent_id,
                    checkpoint_id, state, metadata), _Transaction)

    def _put_step(self, thread_id: str, namespace: str, parent_id: str | None,
                  checkpoint_id: str | None, state: bytes, metadata: bytes,
                  conn: apsw.Connection) -> tuple[str, int]:
        """:meth:`_put_checkpoint`'s storage step, run by the thread holding the connection."""
        created = time.time_ns() // 1000  # under the write lock: follows commit order
        if checkpoint_id is not None:
            return checkpoint_id, self._put_keyed(conn, thread_id, namespace, checkpoint_id,
                                                  parent_id, created, state, metadata)
        parent_seq = None
        if parent_id is not None:
            parent_seq = self._checkpoint_seq(conn, thread_id, namespace, parent_id,
                                              "parent_id")
        # A parent's caller-supplied id is kept beside its seq: it outlives the parent.
        parent_key = None if parent_id is None or _is_generated(parent_id) else parent_id
        seq = conn.execute(_NEXT_SEQ_CHECKPOINTS).fetchone()[0]
        ids = () if parent_key is None else (None, parent_key)  # (key, parent_key)
        conn.execute(
            _INSERT_KEYED_CHECKPOINT if ids else _INSERT_CHECKPOINT,
            (seq, thread_id, namespace, parent_seq, created, state, metadata,
             integrity.checkpoint_checksum(seq, thread_id, namespace, parent_seq, created,
                                           state, metadata, *ids), *ids))
        return _format_id(seq), created

    def _put_keyed(self, conn: apsw.Connection, thread_id: str, namespace: str, key: str,
                   parent_id: str | None, created: int, state: bytes, metadata: bytes) -> int:
        """Insert or replace the checkpoint with caller-supplied id ``key``, inside the
        caller's transaction; return its ``created_at``. The parent, if any, is looked up in
        the same statement (:data:`_KEYED_LOOKUPS`)."""
        # A parent's caller-supplied id is kept beside its seq: it outlives the parent.
        parent_key = None
        if parent_id is None:
            kind, bindings = None, (thread_id, namespace, key)
        elif len(parent_id) == 16 and _is_generated(parent_id):
            # (the length first, as is_generated does: a LangGraph id, 36 characters, is never
            # a generated one, and the test costs less than the call, at every put and write)
            parent = _parse_id(parent_id)
            if parent is None:
                self._not_found(thread_id, namespace, parent_id, "parent_id")
            kind, bindings = "seq", (thread_id, namespace, key, parent)
        else:
            parent_key = parent_id
            kind, bindings = "key", (thread_id, namespace, key, parent_id)
        try:  # as self._damage() does, without its generator (this runs at every put)
            seq, found_created, parent_seq, next_seq = conn.execute(
                _KEYED_LOOKUPS[kind], bindings).fetchone()
        except UnicodeDecodeError as exc:
            raise self._translate(exc, "putting a checkpoint") from exc
        if parent_id is not None and parent_seq is None:
            self._not_found(thread_id, namespace, parent_id, "parent_id")
        if seq is None:
            seq = next_seq
            conn.execute(_INSERT_KEYED_CHECKPOINT, (
                seq, thread_id, namespace, parent_seq, created, state, metadata,
                integrity.checkpoint_checksum(seq, thread_id, namespace, parent_seq, created,
                                              state, metadata, key, parent_key),
                key, parent_key))
            return created
        created = found_created
        if parent_seq is not None and parent_seq >= seq:
            # A replaced checkpoint keeps its seq: a newer parent (or itself) would break
            # "a parent is older than its child", the order history is read in.
            raise InvalidArgumentError(
                f"parent_id {parent_key or _format_id(parent_seq)!r} is not older than "
                f"checkpoint {key!r} of thread {thread_id!r}, which it would replace; a "
                "checkpoint's parent must be older than it. Nothing was written.",
                path=self._path)
        conn.execute(
            "UPDATE checkpoints SET parent_seq = ?, parent_key = ?, state = ?, metadata = ?, "
            "checksum = ? WHERE seq = ?",
            (parent_seq, parent_key, state, metadata,
             integrity.checkpoint_checksum(seq, thread_id, namespace, parent_seq, created,
                                           state, metadata, key, parent_key), seq))
        return created

    # --- files (sqlitesaver.attachments, sqlitesaver.workspace) ------------------------------

    def _refuse_database_inside(self, directory: object, what: str) -> None:
        """A workspace that holds this Saver's own database is refused: a restore would
        delete the database and its ``-wal`` under the open connections (every transition
        acknowledged after that would be lost), and a snapshot would store files that change
        while it reads them."""
        text = os.fspath(directory) if isinstance(directory, (str, os.PathLike)) else None
        if not isinstance(text, str):
            return  # not a str path: the workspace module refuses it with its own error
        root = os.path.realpath(text)
        database = os.path.realpath(self._path)
        if os.path.commonpath([root, database]) == root:
            error = attachments.UnsafePathError(
                f"{what} {text!r} holds this Saver's database {self._path!r} (with its -wal "
                "and -shm): a restore would delete them while they are open, losing what is "
                "written after it, and a snapshot would store them half-written. Keep the "
                "database outside the workspace. Nothing was written.", path=self._path)
            error.name = os.path.relpath(database, root)
            raise error

    def _file_write(self, doing: str, work: Callable[[attachments.FileDb], Any],
                    thread_id: str | None, *, bulk: bool = True) -> Any:
        """One ``BEGIN IMMEDIATE ... COMMIT`` (the write lock: one writer at a time, whatever
        its thread); ``bulk``: a _FileTransaction, which Ctrl-C interrupts."""
        with (_FileTransaction if bulk else _Transaction)(self, doing) as conn:
            return work(attachments.FileDb(conn))

    def _file_read(self, doing: str, work: Callable[[attachments.FileDb], Any], *,
                   snapshot: bool = True) -> Any:
        with _Read(self, doing, snapshot=snapshot) as read:
            return work(attachments.FileDb(read.conn))

    def _seq_in(self, db: attachments.FileDb, thread_id: str, namespace: str,
                checkpoint_id: str, argument: str) -> int:
        return self._checkpoint_seq(db.conn, thread_id, namespace, checkpoint_id, argument)

    def collect_garbage(self) -> dict[str, int]:
        """As :meth:`Saver.collect_garbage`. The freed pages are reused; ``python -m
        sqlitesaver vacuum`` returns them to the file system."""
        self._check_usable()
        count, size = self._file_write("collecting unreferenced file content",
                                       attachments.collect, None, bulk=False)
        return {"contents": count, "bytes": size}

    def _store_writes(self, thread_id: str, namespace: str, checkpoint_id: str, task_id: str,
                      task_path: str, encoded: builtins.list[tuple[int, str, bytes]],
                      replace: bool) -> None:
        write_queue.submit(  # a partial, not a closure: see _put_checkpoint
            self, "putting pending writes",
            partial(SqliteFileSaver._writes_step, self, thread_id, namespace, checkpoint_id,
                    task_id, task_path, encoded, replace), _Transaction)

    def _writes_step(self, thread_id: str, namespace: str, checkpoint_id: str, task_id: str,
                     task_path: str, encoded: builtins.list[tuple[int, str, bytes]],
                     replace: bool, conn: apsw.Connection) -> None:
        """:meth:`_store_writes`' storage step, run by the thread holding the connection."""
        seq = self._checkpoint_seq(conn, thread_id, namespace, checkpoint_id, "checkpoint_id")
        conn.executemany(
            _REPLACE_WRITE if replace else _INSERT_WRITE,
            [(seq, task_id, index, channel, value, task_path,
              integrity.write_checksum(seq, task_id, index, channel, task_path, value))
             for index, channel, value in encoded])

    def _store_event(self, thread_id: str, event_bytes: bytes) -> int:
        return write_queue.submit(  # a partial, not a closure: see _put_checkpoint
            self, "appending a log event", partial(_event_step, thread_id, event_bytes),
            _Transaction)

    # --- internals -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._forked or (_NO_FORK_HOOK and os.getpid() != self._pid):
            raise ForkedProcessError(
                f"this Saver for {self._path!r} was opened in process {self._pid} and is used "
                f"in process {os.getpid()} after fork(); SQLite connections must not cross a "
                "fork. Open a new Saver in this process.", path=self._path)
        if self._closed or self._failure is not None:
            reason = self._failure or "it was closed"
            raise SaverClosedError(f"this Saver for {self._path!r} cannot be used: {reason}. "
                                   "Open a new Saver.", path=self._path)

    def _check_writable(self, doing: str) -> None:
        """Before a write waits for anything: refuse it on a closed, failed, forked or
        read-only Saver."""
        self._check_usable()
        if self._profile.readonly:
            raise ReadOnlyDatabaseError(
                f"{self._path!r} was opened with readonly=True, so {doing} is refused; "
                "nothing was written. Open a Saver without readonly=True to write.",
                path=self._path)

    def _fail(self, exc: BaseException, doing: str) -> None:
        """After an I/O error, stop using these connections: a retried fsync can report
        success on data the kernel already dropped (the 'fsyncgate' problem)."""
        if self._failure is None:
            self._failure = (f"it shut itself down after an I/O error while {doing} "
                             f"({describe(exc)}); "
                             "reopen to recover and re-read what you wrote last")
            self._failure_error = exc if isinstance(exc, apsw.Error) else apsw.IOError(str(exc))
            log.shutdown(self._path, self._failure)
        if self._owner == threading.get_ident():
            # Inside this thread's transition: its batch must end first, failed as a whole
            # (nothing more is committed on this connection), and then its leader closes
            # the Saver (sqlite/failure.py, end_failed).
            return
        self._shut()

    def _shut(self) -> None:
        """Close after an I/O error: every connection, whatever closing them raises."""
        try:
            self.close()
        except SaverError:  # not raised once _failure is set; closed either way
            pass

    def _translate(self, exc: BaseException, doing: str) -> SaverError:
        if isinstance(exc, apsw.IOError):
            self._fail(exc, doing)
        limit = None
        if isinstance(exc, apsw.TooBigError):
            try:
                limit = self._writer.limit(apsw.SQLITE_LIMIT_LENGTH, -1)
            except apsw.Error:
                pass  # closed meanwhile: the message gives SQLite's default
        return translate(exc, self._path, doing, limit=limit)

    @contextmanager
    def _damage(self, doing: str) -> Iterator[None]:
        """Around reads inside a write transaction (whose exit propagates anything but an APSW
        error as the caller's own): a stored text that is not UTF-8 raises
        :class:`~sqlitesaver.errors.CorruptDatabaseError`, as
        :class:`~sqlitesaver.sqlite.reads._Read` does."""
        try:
            yield
        except UnicodeDecodeError as exc:
            raise self._translate(exc, doing) from exc

    def _checkpoint_seq(self, conn: apsw.Connection, thread_id: str, namespace: str,
                        checkpoint_id: str, argument: str) -> int:
        if len(checkpoint_id) == 16 and _is_generated(checkpoint_id):  # see _put_keyed
            seq = _parse_id(checkpoint_id)
            found = None if seq is None else conn.execute(
                "SELECT seq FROM checkpoints WHERE seq = ? AND thread_id = ? AND namespace = ? "
                "AND key IS NULL", (seq, thread_id, namespace)).fetchone()
        else:
            found = conn.execute(_SEQ_OF_KEY, (thread_id, namespace, checkpoint_id)).fetchone()
        if found is not None:
            return found[0]
        self._not_found(thread_id, namespace, checkpoint_id, argument)

    def _not_found(self, thread_id: str, namespace: str, checkpoint_id: str,
                   argument: str) -> NoReturn:
        raise CheckpointNotFoundError(
            f"{argument} {checkpoint_id!r} is not a checkpoint of thread {thread_id!r} "
            f"in namespace {namespace!r} in {self._path!r}; nothing was written.",
            path=self._path)

    def _checksum_error(self, what: str) -> ChecksumError:
        return ChecksumError(
            f"{what} in {self._path!r} does not match its checksum: the bytes changed on disk "
            f"after they were written. The data was not returned; {restore_advice(self._path)} "
            "(list(..., skip_damaged=True) reads past damaged checkpoints).",
            path=self._path)

    def _reader(self, section: interrupts.deferred | None = None) -> apsw.Connection:
        """A read connection from the pool; waits while ``max_readers`` are in use (with
        ``section``, the caller's deferral of signals, ended meanwhile)."""
        return self._pool.acquire(self._open_reader, self._closed_while_waiting, section)

    def _open_reader(self) -> apsw.Connection:
        try:
            return opening.open_reader(self._path, self._profile)
        except apsw.Error as exc:  # through _translate: an I/O error shuts the Saver down
            raise self._translate(exc, "opening a read connection") from exc

    def _closed_while_waiting(self) -> SaverError:
        try:
            self._check_usable()
        except SaverError as exc:
            return exc
        return SaverClosedError(f"this Saver for {self._path!r} was closed while this read "
                                "waited for a read connection. Open a new Saver.",
                                path=self._path)

    def _release_reader(self, conn: apsw.Connection, reusable: bool = True) -> None:
        # A connection still in a read transaction (an unfinished statement keeps one open even
        # after COMMIT, and get_autocommit() does not show it) would serve an old snapshot to
        # the next reader: close it instead of pooling it.
        try:
            reusable = reusable and conn.txn_state() == apsw.SQLITE_TXN_NONE
        except apsw.Error:
            reusable = False
        self._pool.release(conn, reusable)


def _event_step(thread_id: str, event_bytes: bytes, conn: apsw.Connection) -> int:
    """SqliteFileSaver._store_event's storage step, run by the thread holding the connection."""
    created = time.time_ns() // 1000
    seq = conn.execute(_NEXT_SEQ_LOG).fetchone()[0]
    conn.execute(
        "INSERT INTO log (seq, thread_id, created_at, event, checksum) VALUES (?,?,?,?,?)",
        (seq, thread_id, created, event_bytes,
         integrity.log_checksum(seq, thread_id, created, event_bytes)))
    return seq


def _check_path(path: object) -> str:
    try:
        text = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidArgumentError(
            f"path must be a str or os.PathLike, not {type(path).__name__}") from None
    if isinstance(text, bytes):
        raise InvalidArgumentError("path must be a str, not bytes")
    if not text or text == ":memory:" or text.startswith("file:"):
        raise InvalidArgumentError(
            f"path must name a file on a local filesystem, not {text!r} (in-memory and URI "
            "databases cannot give the durability guarantees)")
    # Absolute, because read connections are opened later, possibly after a chdir(); then
    # looked at without opening it (a FIFO would block the open), a symbolic link followed.
    return paths.resolve(os.path.abspath(text))


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
