"""The public checkpoint store: :class:`Saver`, its backend-neutral core.

``Saver(target)`` returns the storage engine the target names, an instance of ``Saver`` either
way: for a ``postgresql://`` or ``postgres://`` URL a PostgreSQL server
(:class:`~sqlitesaver.postgres.saver.PostgresServerSaver`), for anything else a SQLite file
(:class:`~sqlitesaver.sqlite.saver.SqliteFileSaver`). Each engine is imported when a target names
it; this module imports neither.

What this module holds is what every engine shares, so that it is written once: each public
method that reads or writes checkpoints, pending writes or the log checks its arguments and
encodes its values here, then calls one *storage step* of the engine (``_put_checkpoint``,
``_store_writes``, ``_store_event``, ``_get_rows``, ``_list``, ``_read_log``, ``_threads``,
``_delete_thread``, ``_prune``, ``_copy_thread``, ``_delete_matching``); the rows a step
returns have one shape on every engine, and their checksums are verified and the records built
in the core too (:mod:`sqlitesaver.saver_reads`, a base of :class:`Saver`). The arguments are
checked by :mod:`sqlitesaver.saver_arguments`' functions. The files stored with a checkpoint
are core too (:mod:`sqlitesaver.saver_files`, a base of :class:`Saver`:
:mod:`sqlitesaver.attachments`' statements run through the engine's ``FileDb`` in the engine's
transactions). Each step is declared with the contract an engine implements, and the shape of
the rows it returns, in :mod:`sqlitesaver.storage_steps` (a base of :class:`Saver`); each
public method an engine provides on its own (:meth:`Saver.transaction`, :meth:`Saver.backup`,
:meth:`Saver.stats`, :meth:`Saver.close`, ...) is declared here on :class:`Saver` with its
contract (the declaration raises :class:`NotImplementedError`).

Guarantee, on every engine: a write returns only after the transaction carrying it committed
(what a committed write survives is the engine's ``durability``: see its class). A write that
raised left nothing behind, except after :class:`~sqlitesaver.errors.DatabaseIOError`, where
it may have been committed ("maybe committed"). Reads verify a checksum on every payload and
raise :class:`~sqlitesaver.errors.ChecksumError` rather than return changed bytes; other
damage in a row they read (a text that is not UTF-8, a column of the wrong type) raises
:class:`~sqlitesaver.errors.CorruptDatabaseError`, never a raw exception.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from . import codec
from .errors import ChecksumError, CorruptDatabaseError, InvalidArgumentError, check_command
# Ids are the same on every engine (sqlitesaver/ids.py); the old private names stay.
from .ids import INT64_MAX as _INT64_MAX
from .ids import format_id
from .ids import is_generated as _is_generated
from .postgres.target import SCHEMES as _POSTGRES_SCHEMES  # stdlib only: no psycopg
from .records import Checkpoint, CheckpointRef, LogEvent, RecoveryReport, new_checkpoint_ref
from .saver_arguments import check_indexes as _check_indexes
from .saver_arguments import check_text as _check_text
from .saver_files import FileMethods
# The read side: rows verified and built into records. Imported by name, so that put, get and
# list look them up as globals, as when they were defined here.
from .saver_reads import DamagedReporter as _DamagedReporter
from .saver_reads import VerifiedReads, matches
from .saver_reads import to_datetime as _to_datetime
from .storage_steps import N_CHECKPOINT_COLUMNS as _N_CHECKPOINT_COLUMNS
from .storage_steps import StorageSteps

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from .backup import BackupReport

T = TypeVar("T")

__all__ = ["Saver"]

_EMPTY_DICT = b"\x80"  # msgpack of {}: the usual metadata, not worth a trip through the codec
# Still importable from this module under the names they had here (the engines import them from
# their homes, ids.py and saver_reads.py, now).
_format_id, _matches = format_id, matches


class Saver(StorageSteps, VerifiedReads, FileMethods):
    """A durable checkpoint store in one SQLite file (or, given a ``postgresql://`` URL, on a
    PostgreSQL server).

    ``Saver(path)`` opens ``path``, creating it if it does not exist, and runs the startup
    recovery described by :attr:`recovery`; it returns a
    :class:`~sqlitesaver.sqlite.saver.SqliteFileSaver`, whose docstring gives the options
    (``durability``, ``busy_timeout``, ``integrity_check``, ``readonly``, ``max_readers``) and
    what a path may name. ``Saver("postgresql://...")`` returns a
    :class:`~sqlitesaver.postgres.saver.PostgresServerSaver`. Both are instances of ``Saver``.
    Use it as a context manager or call :meth:`close`. One Saver may be shared by any number of
    threads; it must not cross ``fork()``.

    The methods here are the backend-neutral core (see the module docstring); those that raise
    :class:`NotImplementedError` are the engine's, each with the contract it keeps.
    """

    def __new__(cls, path: Any = None, *args: Any, **options: Any) -> "Saver":
        # The engine is chosen from the target when Saver itself is called: a postgresql:// or
        # postgres:// URL is a server (sqlitesaver.postgres, imported only then: it needs the
        # `postgres` extra), anything else a SQLite file as always. Python then runs the chosen
        # class's __init__. An engine's class called directly is that engine.
        if cls is not Saver:
            return super().__new__(cls)
        if isinstance(path, str) and path.startswith(_POSTGRES_SCHEMES):
            from .postgres.saver import PostgresServerSaver
            return super().__new__(PostgresServerSaver)
        from .sqlite.saver import SqliteFileSaver
        return super().__new__(SqliteFileSaver)

    recovery: RecoveryReport
    """What the startup recovery found and did (a SQLite file's; ``None`` on a server)."""

    #: How messages name where the data is (:attr:`path`), set by the engine when it opens.
    _path: str

    # --- what each engine provides --------------------------------------------------------

    @property
    def path(self) -> str:
        """Where the data is: a file's absolute path, a server's URL without its password."""
        raise NotImplementedError

    @property
    def durability(self) -> str:
        """``"full"`` or ``"normal"``, as opened: what a committed write survives (see the
        engine's class)."""
        raise NotImplementedError

    @property
    def readonly(self) -> bool:
        """True when every write raises :class:`~sqlitesaver.errors.ReadOnlyDatabaseError`."""
        raise NotImplementedError

    @property
    def in_transaction(self) -> bool:
        """True while the calling thread is inside a transaction of this Saver (its own
        :meth:`transaction` block, or a write it is running): a write it makes now joins that
        transaction and is durable only once the outermost block has committed."""
        raise NotImplementedError

    def settings(self) -> dict[str, object]:
        """The settings that decide durability, as the store reports them now."""
        raise NotImplementedError

    def stats(self) -> dict[str, int]:
        """Counters since this Saver opened and sizes now, for monitoring (a snapshot; the
        counters only grow)."""
        raise NotImplementedError

    def backup(self, destination: str | os.PathLike[str]) -> "BackupReport":
        """Copy the stored data, as one consistent snapshot, to the new file ``destination``
        while writers keep writing; nothing is overwritten. Refused inside this thread's
        :meth:`transaction`."""
        raise NotImplementedError

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection. Idempotent. Refused (:class:`~sqlitesaver.errors.UsageError`,
        nothing closed) inside the calling thread's :meth:`transaction`. In a process forked
        after this Saver opened, only marks it closed: the connections are the parent's."""
        raise NotImplementedError

    def __enter__(self) -> "Saver":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- transactions ----------------------------------------------------------------------

    def transaction(self) -> "AbstractContextManager[Any]":
        """Group several operations into one state transition, all of it or none of it.

        Reads inside the block see its uncommitted writes. An exception leaving the block
        rolls everything back and propagates. Nesting: an inner ``transaction()`` is a
        SAVEPOINT, undone alone by an exception leaving it. Nothing is durable until the
        outermost block exits."""
        raise NotImplementedError

    def _atomically(self, doing: str, body: Callable[[], T]) -> T:
        """``body()``, which calls this Saver's write methods, as one transition, as if inside
        :meth:`transaction`; returns what it returned, once committed. For the library's own
        short multi-step transitions (the LangGraph adapter's): an engine may run ``body`` in
        another thread (the SQLite engine: a batch's leader), so it must not depend on the
        calling thread."""
        with self.transaction():
            return body()

    # --- writes ----------------------------------------------------------------------------

    def put(self, thread_id: str, state: Any, *, metadata: dict | None = None,
            parent_id: str | None = None, namespace: str = "",
            checkpoint_id: str | None = None,
            files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
            workspace: str | os.PathLike[str] | None = None) -> CheckpointRef:
        """Store a checkpoint; return its reference after COMMIT returned.

        Generated checkpoint ids (16 lowercase hex digits) are unique in the database and sort
        as strings in commit order. Once committed, an id is never handed out again, not even
        after the checkpoint is deleted (an id returned inside a transaction that then rolled
        back names nothing and may be). ``created_at`` is the wall clock when the write lock
        was taken; order by id, not by time, since the clock can be stepped back.
        ``parent_id``, when given, must name a checkpoint of the same thread and namespace,
        else :class:`~sqlitesaver.errors.CheckpointNotFoundError`.

        ``checkpoint_id``, when given, is the caller's own id for the checkpoint (e.g.
        LangGraph's uuid6 ids) instead of a generated one: any non-empty text except the form
        of a generated id, unique within the thread and namespace, and the id every method then
        takes and returns for it. Putting an id that already exists in the thread and
        namespace replaces that checkpoint's state, metadata and parent in one transaction,
        keeping its place in the order, its ``created_at`` and its pending writes (so a
        retried put is harmless); the parent must then be older than it, else
        :class:`~sqlitesaver.errors.InvalidArgumentError` and nothing is written. Checkpoints
        are listed in commit order of their first put, whatever their ids.

        ``files`` and ``workspace`` store files with the checkpoint, in its transaction (see
        :meth:`attach_files` and README, "Files"): ``files`` maps relative names to bytes or
        to a path to read; ``workspace`` is a directory whose every file is stored under its
        relative path. The checkpoint's files are then exactly these (a replaced checkpoint's
        earlier files included); without either, a replaced checkpoint keeps its files.
        """
        checkpoint_id, created = self._put(thread_id, state, metadata, parent_id, namespace,
                                           checkpoint_id, files, workspace)
        return new_checkpoint_ref(thread_id, namespace, checkpoint_id, _to_datetime(created))

    def _put(self, thread_id: str, state: Any, metadata: dict | None, parent_id: str | None,
             namespace: str, checkpoint_id: str | None,
             files: Mapping[str, bytes | str | os.PathLike[str]] | None = None,
             workspace: str | os.PathLike[str] | None = None) -> tuple[str, int]:
        """:meth:`put`, the same checks and transaction, returning ``(checkpoint_id,
        created_at in microseconds)`` instead of a CheckpointRef: for the LangGraph adapter,
        which discards it (the frozen dataclass and its datetime cost ~1.5 us a put)."""
        with_files = None
        if files is not None or workspace is not None:
            with_files = self._put_files(thread_id, namespace, files, workspace)
        # Each text is checked inline when it is a non-empty ASCII str (check_text passes then,
        # allow_empty or not), by check_text otherwise: one call per argument at every put
        # (bench/instructions.py). The same for every text argument of put_writes.
        if type(thread_id) is not str or not thread_id or not thread_id.isascii():
            _check_text("thread_id", thread_id)
        if type(namespace) is not str or not namespace.isascii():
            _check_text("namespace", namespace, allow_empty=True)
        if parent_id is not None and (
                type(parent_id) is not str or not parent_id or not parent_id.isascii()):
            _check_text("parent_id", parent_id)
        if checkpoint_id is not None:
            if type(checkpoint_id) is not str or not checkpoint_id or \
                    not checkpoint_id.isascii():
                _check_text("checkpoint_id", checkpoint_id)
            if len(checkpoint_id) == 16 and _is_generated(checkpoint_id):  # see _put_keyed
                raise InvalidArgumentError(
                    f"checkpoint_id {checkpoint_id!r} has the form of an id the Saver "
                    "generates (16 lowercase hex digits); a caller-supplied id must not, so "
                    "that every id names one checkpoint. Nothing was written.")
        if metadata is None or (type(metadata) is dict and not metadata):
            metadata_bytes = _EMPTY_DICT
        elif type(metadata) is dict:
            metadata_bytes = codec.encode(metadata, name="metadata")
        else:
            raise InvalidArgumentError(
                f"metadata must be a dict or None, not {type(metadata).__name__}")
        state_bytes = codec.encode(state, name="state")
        if with_files is None:
            checkpoint_id, created = self._put_checkpoint(thread_id, namespace, parent_id,
                                                          checkpoint_id, state_bytes,
                                                          metadata_bytes)
        else:
            checkpoint_id, created = self._put_checkpoint(thread_id, namespace, parent_id,
                                                          checkpoint_id, state_bytes,
                                                          metadata_bytes, with_files)
        return checkpoint_id, created

    def put_writes(self, thread_id: str, checkpoint_id: str, task_id: str,
                   writes: Sequence[tuple[str, Any]], *, namespace: str = "",
                   task_path: str = "", indexes: Sequence[int] | None = None,
                   replace: bool = False) -> None:
        """Store a task's pending writes against a checkpoint, all or none.

        ``writes`` is a sequence of ``(channel, value)``; the i-th is stored under
        ``(task_id, i)``, or under ``(task_id, indexes[i])`` when ``indexes`` (distinct ints,
        one per write, negative ones allowed) is given. Idempotent: a ``(task_id, index)``
        already stored keeps its first value, so a retried task does not duplicate or
        overwrite its writes; with ``replace=True`` the new write replaces it instead (last
        one wins, e.g. LangGraph's error and interrupt channels). Listed in
        ``(task_id, index)`` order.
        """
        # (as in put: every check passes when the five are ASCII strs, the first three
        # non-empty; otherwise each is checked and the first that fails raises)
        if not (type(thread_id) is type(checkpoint_id) is type(task_id) is type(namespace)
                is type(task_path) is str and thread_id and checkpoint_id and task_id and
                (thread_id + checkpoint_id + task_id + namespace + task_path).isascii()):
            _check_text("thread_id", thread_id)
            _check_text("checkpoint_id", checkpoint_id)
            _check_text("task_id", task_id)
            _check_text("namespace", namespace, allow_empty=True)
            _check_text("task_path", task_path, allow_empty=True)
        if type(writes) is not list and type(writes) is not tuple and (
                isinstance(writes, (str, bytes)) or not isinstance(writes, Sequence)):
            # (a list or tuple first: the ABC's isinstance costs ~1 us at every call)
            raise InvalidArgumentError(
                f"writes must be a list of (channel, value) pairs, not {type(writes).__name__}")
        if type(replace) is not bool:
            raise InvalidArgumentError(f"replace must be True or False, not {replace!r}")
        positions = range(len(writes)) if indexes is None else _check_indexes(indexes, writes)
        encoded = []
        for position, (index, item) in enumerate(zip(positions, writes)):
            if not isinstance(item, (tuple, list)) or len(item) != 2:  # (not a union)
                raise InvalidArgumentError(
                    f"writes[{position}] must be a (channel, value) pair, not {item!r:.80}")
            channel, value = item
            if type(channel) is not str or not channel or not channel.isascii():
                _check_text(f"writes[{position}] channel", channel)
            encoded.append((index, channel,
                            codec.encode(value, name=f"writes[{position}] value")))
        self._store_writes(thread_id, namespace, checkpoint_id, task_id, task_path, encoded,
                           replace)

    def append_log(self, thread_id: str, event: Any) -> int:
        """Append an event to the thread's log; return its ``seq`` after COMMIT returned."""
        _check_text("thread_id", thread_id)
        event_bytes = codec.encode(event, name="event")
        return self._store_event(thread_id, event_bytes)

    def delete_thread(self, thread_id: str) -> int:
        """Delete every checkpoint (all namespaces), pending write and log event of the
        thread, in one transaction. Returns how many checkpoints were deleted."""
        _check_text("thread_id", thread_id)
        return self._delete_thread(thread_id)

    def prune(self, thread_id: str, *, keep_last: int) -> int:
        """Keep the newest ``keep_last`` checkpoints of each namespace of the thread, delete
        the older ones with their pending writes, in one transaction. The log is untouched.
        Returns how many checkpoints were deleted."""
        _check_text("thread_id", thread_id)
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
            raise InvalidArgumentError(
                f"keep_last must be an int >= 0, not {keep_last!r}")
        return self._prune(thread_id, keep_last)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> int:
        """Copy every checkpoint of the source thread (all namespaces) with its pending writes
        to the target thread, in one transaction; return how many were copied.

        The copies keep their state, metadata, ``created_at``, order and caller-supplied ids;
        parent links point at the copies (a parent pruned from the source stays a pruned
        parent). Generated ids are new ones, since an id is never handed out twice. The log is
        not copied. The target must have no checkpoint, else
        :class:`~sqlitesaver.errors.InvalidArgumentError`; a source without checkpoints copies
        nothing. Every source payload's checksum is verified on the way: a damaged one raises
        :class:`~sqlitesaver.errors.ChecksumError` and nothing is copied.
        """
        _check_text("source_thread_id", source_thread_id)
        _check_text("target_thread_id", target_thread_id)
        if source_thread_id == target_thread_id:
            raise InvalidArgumentError(
                f"cannot copy thread {source_thread_id!r} onto itself; nothing was written")
        return self._copy_thread(source_thread_id, target_thread_id)

    def delete_matching(self, *filters: dict, thread_id: str | None = None) -> int:
        """Delete every checkpoint whose metadata matches any of ``filters``, in every thread
        (or only in ``thread_id``), with its pending writes, in one transaction; return how
        many were deleted.

        A filter matches as :meth:`list`'s ``metadata`` does (all its key/value pairs present
        and equal under ``==``); an empty one would match everything and is refused. A
        remaining checkpoint whose parent is deleted this way is detached (its ``parent_id``
        becomes ``None``), so no history has a hole in its middle; ``prune`` only removes the
        oldest checkpoints and keeps those links. Every checkpoint considered has its checksum
        verified before its metadata is trusted, so the cost grows with the database (with
        the thread when ``thread_id`` is given); a damaged one raises
        :class:`~sqlitesaver.errors.ChecksumError` and nothing is deleted. The log is
        untouched.
        """
        for position, wanted in enumerate(filters):
            if type(wanted) is not dict or not wanted:
                raise InvalidArgumentError(
                    f"filters[{position}] must be a non-empty dict (an empty one would match "
                    f"every checkpoint), not {wanted!r:.80}; nothing was deleted")
        if thread_id is not None:
            _check_text("thread_id", thread_id)
        if not filters:
            self._check_usable()
            return 0
        return self._delete_matching(filters, thread_id)

    # --- reads -----------------------------------------------------------------------------

    def get(self, thread_id: str, checkpoint_id: str | None = None, *,
            namespace: str = "") -> Checkpoint | None:
        """The checkpoint ``checkpoint_id`` (a generated or a caller-supplied id; the latest of
        the thread and namespace when ``None``) with its metadata, parent id and pending
        writes; ``None`` if there is none. Read from one consistent snapshot."""
        return self._get(thread_id, checkpoint_id, namespace, True)

    def _get(self, thread_id: str, checkpoint_id: str | None, namespace: str,
             records: bool) -> Any:
        """:meth:`get`; with ``records=False``, the checkpoint as the tuple
        :meth:`~sqlitesaver.saver_reads.VerifiedReads._checkpoint` returns then (the LangGraph
        adapter's ``get_tuple``: the same checks, no records)."""
        # Checked inline when non-empty ASCII strs (check_text passes then), as in _put.
        if type(thread_id) is not str or not thread_id or not thread_id.isascii():
            _check_text("thread_id", thread_id)
        if type(namespace) is not str or not namespace.isascii():
            _check_text("namespace", namespace, allow_empty=True)
        if checkpoint_id is not None and (
                type(checkpoint_id) is not str or not checkpoint_id or
                not checkpoint_id.isascii()):
            _check_text("checkpoint_id", checkpoint_id)
        rows = self._get_rows(thread_id, namespace, checkpoint_id)
        if not rows:
            return None
        first = rows[0]
        if first[_N_CHECKPOINT_COLUMNS] is None:  # no write joined (checkpoint_seq is NOT NULL)
            return self._checkpoint(first[:_N_CHECKPOINT_COLUMNS], (), records=records)
        # In (task_id, idx) order already: _get_rows' contract (storage_steps.py).
        return self._checkpoint(first[:_N_CHECKPOINT_COLUMNS],
                                [row[_N_CHECKPOINT_COLUMNS:] for row in rows], records=records)

    def list(self, thread_id: str, *, namespace: str | None = None,
             before: str | None = None, limit: int | None = None,
             metadata: dict | None = None, skip_damaged: bool = False,
             on_damaged: Callable[[str, ChecksumError], None] | None = None
             ) -> Iterator[Checkpoint]:
        """Checkpoints of the thread, newest first, each with its pending writes.

        Streamed in pages (256 checkpoints, then twice as many each time up to 2,048, fewer
        when their payloads pass 4 MiB), so memory stays flat however many there are. Each
        page is read from one snapshot with two queries (checkpoints, then their pending
        writes), and that snapshot ends before the page is handed out, so an iterator kept open
        never holds the WAL. Across pages: a checkpoint committed after the listing began is
        never listed (later pages only go further back in commit order), each checkpoint
        appears at most once and in order, and one deleted or replaced while a long listing
        runs may be missing or show its newer state and writes. ``namespace=None``
        lists every namespace. ``before`` is a checkpoint id: only older checkpoints are
        listed (older in commit order; a caller-supplied id that several namespaces share,
        with ``namespace=None``, means the newest of them). ``metadata`` keeps checkpoints
        whose metadata has all the given keys with values equal under Python ``==`` (so ``1``
        matches ``1.0`` and ``True``). Arguments are checked at the call; ``before`` is looked
        up at the first ``next()``.

        A checkpoint whose bytes fail their checksum (its own, or one of its pending writes')
        raises :class:`~sqlitesaver.errors.ChecksumError` and ends the listing, unless
        ``skip_damaged=True``: then it is left out, the listing goes on, and each one skipped is
        reported as a WARNING on the ``sqlitesaver`` logger and, when ``on_damaged`` is given,
        by calling ``on_damaged(checkpoint_id, error)`` (the id as stored, the ChecksumError
        that would have been raised). A skipped checkpoint does not count towards ``limit``.
        Damage SQLite itself finds (a broken page) still raises
        :class:`~sqlitesaver.errors.CorruptDatabaseError`; ``python -m sqlitesaver salvage``
        copies what is intact into a new database.
        """
        _check_text("thread_id", thread_id)
        if namespace is not None:
            _check_text("namespace", namespace, allow_empty=True)
        if before is not None:
            _check_text("before", before)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise InvalidArgumentError(f"limit must be an int >= 0 or None, not {limit!r}")
        if metadata is not None and type(metadata) is not dict:
            raise InvalidArgumentError(
                f"metadata must be a dict or None, not {type(metadata).__name__}")
        if type(skip_damaged) is not bool:
            raise InvalidArgumentError(f"skip_damaged must be True or False, not "
                                       f"{skip_damaged!r}")
        if on_damaged is not None and (not callable(on_damaged) or not skip_damaged):
            raise InvalidArgumentError("on_damaged must be a callable, given with "
                                       "skip_damaged=True")
        self._check_usable()
        damaged = None
        if skip_damaged:
            damaged = _DamagedReporter(self._path, thread_id, on_damaged)
        return self._list(thread_id, namespace, before, limit, metadata, damaged)

    def read_log(self, thread_id: str, after: int | None = None) -> Iterator[LogEvent]:
        """The thread's log events in append order, those with ``seq > after`` when given, up
        to the newest one when the first is read (a reader never chases a writer forever).
        Streamed in pages like :meth:`list`, each from one snapshot that ends before it is
        handed out; events deleted (``delete_thread``) while a long read runs may be
        missing."""
        _check_text("thread_id", thread_id)
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise InvalidArgumentError(f"after must be an int log seq or None, not {after!r}")
        self._check_usable()
        # SQLite integers are 64-bit; clamping keeps "seq > after" exact for any Python int.
        after = -1 if after is None else max(-1, min(after, _INT64_MAX))
        return self._read_log(thread_id, after)

    def threads(self) -> builtins.list[str]:  # `list` here is the method above
        """Every thread id that has a checkpoint or a log event, sorted."""
        threads = self._threads()
        if not set(map(type, threads)) <= {str}:  # no checksum covers this list: check the type
            bad = next(thread for thread in threads if type(thread) is not str)
            raise CorruptDatabaseError(
                f"{self._path!r} is damaged: a thread id is stored as {type(bad).__name__} "
                f"{bad!r:.60}, not as text, found while listing threads; nothing was returned. "
                f"Restore from a backup; '{check_command(self._path)}' lists the damage without "
                "writing to the file.", path=self._path)
        return threads


#: list() and read_log() read in pages, each from one snapshot that ends before the page is
#: handed out: an iterator the caller keeps open holds no snapshot (on SQLite, it cannot keep
#: the WAL from resetting). The first page has PAGE_ROWS rows, each next one twice as many up
#: to MAX_PAGE_ROWS, and a page ends early once it holds PAGE_BYTES of payload (see
#: sqlitesaver.sqlite.reads._fetch_page and sqlitesaver.postgres.reads). Engines read all three
#: here at call time.
PAGE_ROWS = 256
MAX_PAGE_ROWS = 2048
PAGE_BYTES = 4 * 1024 * 1024
