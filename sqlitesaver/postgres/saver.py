"""``Saver("postgresql://...")``: the same Saver, its storage on a PostgreSQL server.

:class:`PostgresServerSaver` is what :class:`sqlitesaver.Saver` returns for a PostgreSQL URL (an
instance of ``Saver``). It inherits every public method and with them the backend-neutral
core: argument checks, the codec, checksums verified on every read, the records returned, the
exceptions; it replaces only the storage steps (``Saver``'s ``_put_checkpoint``,
``_store_writes``, ``_store_event``, ``_get_rows``, ``_list``, ``_read_log``, ``_threads``,
``_delete_thread``, ``_prune``, ``_copy_thread``, ``_delete_matching``) with
:class:`~sqlitesaver.postgres.engine.Engine` calls. What each guarantees on a server is in
``engine.py``'s docstring.

Files stored with a checkpoint are the core's (sqlitesaver/saver.py, sqlitesaver/attachments.py)
on :mod:`sqlitesaver.postgres.files`' statements and locks. :meth:`backup` raises
:class:`~sqlitesaver.errors.UsageError` whose message gives the ``pg_dump`` recipe.
``readonly``, ``integrity_check`` and
``max_readers`` are SQLite options, refused here.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .. import attachments, codec, integrity, interrupts
from ..errors import (CheckpointNotFoundError, ChecksumError, ForkedProcessError,
                      InvalidArgumentError, SaverClosedError, UsageError)
from ..records import Checkpoint, LogEvent
from .. import saver as _core  # PAGE_ROWS, MAX_PAGE_ROWS, PAGE_BYTES: read at call time
from ..saver import Saver
from ..saver_reads import matches as _matches
from ..saver_reads import to_datetime as _to_datetime
from . import connect
from . import files as pg_files
from .engine import Engine, check_text

__all__ = ["PostgresServerSaver"]

_LIVE: weakref.WeakSet = weakref.WeakSet()
_ABANDONED_IN_CHILD: list = []


def _abandon_after_fork() -> None:
    # A child must never use, nor close, the parent's connections: closing one sends the
    # server a Terminate message on the socket the parent still uses. Kept referenced, so that
    # not even garbage collection closes them (psycopg's own finaliser skips a forked child).
    for saver in list(_LIVE):
        _ABANDONED_IN_CHILD.append(saver._engine)
        saver._forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_abandon_after_fork)

_SQLITE_ONLY = {"integrity_check": "quick", "readonly": False, "max_readers": 32}


class PostgresServerSaver(Saver):
    """A durable checkpoint store on a PostgreSQL server; see the module docstring.

    Options (besides ``durability`` and ``busy_timeout``, as for a file):
        durability: ``"full"`` (each COMMIT returns once the server has flushed it to its
            WAL: ``synchronous_commit=on`` per transaction) or ``"normal"``
            (``synchronous_commit=off``: a server crash may drop the last acknowledged
            transitions, never corrupt). A server running with ``fsync`` or
            ``full_page_writes`` off is refused (:class:`~sqlitesaver.errors.UnsafeServerError`).
        busy_timeout: seconds a transition may wait for a thread lock held by another writer
            (PostgreSQL's ``lock_timeout``), for a free pooled connection, and retrying
            serialization failures and deadlocks, before
            :class:`~sqlitesaver.errors.BusyTimeoutError`.
        connect_timeout: seconds to wait for the server when connecting.
        statement_timeout: seconds any one statement may run (``None``: no limit).
        prepare_threshold: psycopg's; ``None`` never prepares statements and keeps no
            session settings on the pooled connections (behind PgBouncer in transaction
            mode; a pooler found at open is treated so whatever this says).
        max_connections: the most connections the pool opens.
    """

    def __init__(self, target: str, *, durability: str = "full", busy_timeout: float = 30.0,
                 connect_timeout: float = 10.0, statement_timeout: float | None = 60.0,
                 prepare_threshold: int | None = 5, max_connections: int = 10,
                 **sqlite_options: Any) -> None:
        self._closed = True  # until fully open, so close() and __del__ paths are safe
        for name, value in sqlite_options.items():
            if name not in _SQLITE_ONLY:
                raise TypeError(f"Saver() got an unexpected keyword argument {name!r}")
            if value != _SQLITE_ONLY[name]:
                raise InvalidArgumentError(
                    f"{name} is an option of the SQLite engine, not of a PostgreSQL server "
                    f"({name}={value!r}); leave it out. Nothing was written.")
        if (isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float))
                or not 0 <= busy_timeout <= 86400):
            raise InvalidArgumentError(
                f"busy_timeout must be a number of seconds from 0 to 86400, not "
                f"{busy_timeout!r}")
        options = connect.Options(connect_timeout=connect_timeout,
                                  statement_timeout=statement_timeout,
                                  lock_timeout=max(busy_timeout, 0.001),
                                  prepare_threshold=prepare_threshold)
        self._engine = Engine(target, durability=durability, busy_timeout=busy_timeout,
                              options=options, max_connections=max_connections)
        self._path = self._engine.server
        self._durability = durability
        self.recovery = None  # type: ignore[assignment]  # SQLite's startup recovery only
        self._pid = os.getpid()
        self._forked = False
        self._failure = None
        self._closed = False
        _LIVE.add(self)

    # --- what differs from a file ---------------------------------------------------------

    @property
    def path(self) -> str:
        """The server, as ``postgresql://user@host:port/dbname`` without the password."""
        return self._path

    @property
    def durability(self) -> str:
        return self._durability

    @property
    def readonly(self) -> bool:
        return False

    @property
    def in_transaction(self) -> bool:
        """True while the calling thread is inside this Saver's :meth:`transaction`."""
        return self._engine.in_transaction()

    @property
    def _depth(self) -> int:  # as the SQLite engine's: the calling thread's block nesting
        return self._engine.depth()

    @property
    def _owner(self) -> int | None:  # as the SQLite engine's, seen from the calling thread
        return threading.get_ident() if self._engine.in_transaction() else None

    def transaction(self) -> "_Block":
        """Group several operations into one state transition: one server transaction for
        the block, all of it or none of it; a block nested in it is a savepoint. See
        :meth:`sqlitesaver.postgres.engine.Engine.transaction` for what differs from a file:
        other threads do not wait for the block unless they write the same thread (whose
        lock the block holds), and a serialization failure or deadlock inside fails that
        call rather than being retried."""
        return _Block(self)

    def settings(self) -> dict[str, object]:
        """The server's durability settings as read at open, and this Saver's."""
        self._check_usable()
        return self._engine.settings()

    def stats(self) -> dict[str, int]:
        """Counters since this Saver opened, its connections now, and what the sqlitesaver
        tables hold now, for monitoring (a snapshot; the counters only grow). The keys SQLite's
        :meth:`~sqlitesaver.sqlite.saver.SqliteFileSaver.stats` has, where they mean the same:

        - ``commits``: COMMITs that committed; ``transitions``: the transitions they carried,
          the same number here (the server shares WAL flushes between concurrent COMMITs:
          there is no batch of ours to count);
        - ``file_contents``, ``file_bytes``: distinct file contents stored and their bytes;
        - ``db_bytes``: what differs: the bytes of the sqlitesaver tables, their indexes and
          TOAST on the server (``pg_total_relation_size``), not a whole database file; the
          server's WAL is shared with every other database, so there is no ``wal_bytes``,
          nor ``wal_checkpoints`` (the server's checkpoints are its own).

        And in place of SQLite's ``lock_waits`` and readers (waits for another writer's lock
        happen inside the server, and one pool serves reads and writes):

        - ``retries``: transactions run again after a serialization failure or deadlock;
        - ``connections_open``, ``connections_idle``: pooled connections open now (at most
          ``max_connections``), and those of them not in use; ``connection_waits``: calls
          that waited for a pooled connection because every one was in use.
        """
        self._check_usable()
        return self._engine.stats()

    def backup(self, destination: Any) -> Any:
        """Refused (:class:`~sqlitesaver.errors.UsageError`), naming the recipe: on a server,
        back up with PostgreSQL's own tools. ``pg_dump`` reads one consistent snapshot while
        writers keep writing (its sequence values are read after it: never below an id in
        the copy, so the restored store never reuses one); tests/test_postgres_saver.py
        follows the recipe and checks the restored store."""
        raise UsageError(
            f"backup() is not available on PostgreSQL ({self._path}): back up with the "
            "server's tools. Dump the sqlitesaver schema (one consistent snapshot while "
            "writers keep writing): pg_dump --schema=sqlitesaver --format=custom "
            "--file=sqlitesaver.dump 'postgresql://...'; restore it into an empty database: "
            "pg_restore --single-transaction --exit-on-error --dbname='postgresql://.../new' "
            "sqlitesaver.dump; check the copy: python -m sqlitesaver check "
            "'postgresql://.../new'. Nothing was written.", path=self._path)

    def close(self) -> None:
        """Close every pooled connection. Idempotent. In a forked child, only marks this
        Saver closed: the connections are the parent's."""
        if self._closed:
            return
        if os.getpid() == self._pid and not self._forked and self._engine.in_transaction():
            raise UsageError(
                f"close() was called inside this thread's transaction on {self._path}; leave "
                "the 'with saver.transaction():' block first (it commits or rolls back there). "
                "Nothing was closed.", path=self._path)
        self._closed = True
        _LIVE.discard(self)
        if os.getpid() == self._pid and not self._forked:
            self._engine.close()

    def __repr__(self) -> str:
        return f"<Saver {self._path!r} {'closed' if self._closed else self._durability}>"

    def _check_usable(self) -> None:
        if self._forked or os.getpid() != self._pid:
            raise ForkedProcessError(
                f"this Saver for {self._path} was opened in process {self._pid} and is used "
                f"in process {os.getpid()} after fork(); a connection must not cross a fork. "
                "Open a new Saver in this process.", path=self._path)
        if self._closed:
            raise SaverClosedError(f"this Saver for {self._path} was closed. Open a new "
                                   "Saver.", path=self._path)

    def _checksum_error(self, what: str) -> ChecksumError:
        return ChecksumError(
            f"{what} on {self._path} does not match its checksum: the bytes changed after they "
            "were written. The data was not returned; restore the server's data from a backup "
            "(list(..., skip_damaged=True) reads past damaged checkpoints).", path=self._path)

    # --- files (the core's, on postgres/files.py's statements and locks) -----------------------

    def _file_write(self, doing: str, work: Callable[[attachments.FileDb], Any],
                    thread_id: str | None) -> Any:
        """One retried write transaction (the engine's), holding the thread's lock."""
        self._check_usable()
        return self._engine._write(doing, lambda conn: work(pg_files.ServerFileDb(conn)),
                                   threads=() if thread_id is None else (thread_id,))

    def _file_read(self, doing: str, work: Callable[[attachments.FileDb], Any], *,
                   snapshot: bool = True) -> Any:
        self._check_usable()
        return self._engine._read(doing, lambda conn: work(pg_files.ServerFileDb(conn)))

    def _seq_in(self, db: attachments.FileDb, thread_id: str, namespace: str,
                checkpoint_id: str, argument: str) -> int:
        return self._engine._seq_of(db.conn, thread_id, namespace, checkpoint_id, argument)

    def _check_file_args(self, thread_id: str, checkpoint_id: str | None, namespace: str,
                         *, writing: bool = False) -> None:
        super()._check_file_args(thread_id, checkpoint_id, namespace, writing=writing)
        if writing:  # PostgreSQL's text cannot hold NUL: refused before anything is written
            check_text(thread_id=thread_id, namespace=namespace, checkpoint_id=checkpoint_id)
        elif any("\x00" in text for text in (thread_id, namespace, checkpoint_id or "")):
            # No stored text holds NUL, as get() finds: there is no such checkpoint.
            raise CheckpointNotFoundError(
                f"thread {thread_id!r} has no checkpoint {checkpoint_id!r} in namespace "
                f"{namespace!r} on {self._path}", path=self._path)

    # --- storage steps (see Saver) ----------------------------------------------------------

    def _put_checkpoint(self, thread_id: str, namespace: str, parent_id: str | None,
                        checkpoint_id: str | None, state: bytes, metadata: bytes,
                        files: Callable[[attachments.FileDb, int], None] | None = None
                        ) -> tuple[str, int]:
        self._check_usable()
        if files is not None:
            store = files  # the put's files, in the put's own (retried) transaction

            def files_on(conn: Any, seq: int) -> None:
                store(pg_files.ServerFileDb(conn), seq)
            return self._engine.put_checkpoint(thread_id, namespace, parent_id,
                                               checkpoint_id, state, metadata, files_on)
        return self._engine.put_checkpoint(thread_id, namespace, parent_id, checkpoint_id,
                                           state, metadata)

    def _store_writes(self, thread_id: str, namespace: str, checkpoint_id: str, task_id: str,
                      task_path: str, encoded: list[tuple[int, str, bytes]],
                      replace: bool) -> None:
        self._check_usable()
        self._engine.put_writes(thread_id, namespace, checkpoint_id, task_id, task_path,
                                encoded, replace)

    def _store_event(self, thread_id: str, event: bytes) -> int:
        self._check_usable()
        return self._engine.append_log(thread_id, event)

    def _delete_thread(self, thread_id: str) -> int:
        self._check_usable()
        return self._engine.delete_thread(thread_id)

    def _prune(self, thread_id: str, keep_last: int) -> int:
        self._check_usable()
        return self._engine.prune(thread_id, keep_last)

    def _copy_thread(self, source: str, target: str) -> int:
        self._check_usable()
        return self._engine.copy_thread(source, target, self._verify, self._verify_writes)

    def _delete_matching(self, filters: tuple[dict, ...], thread_id: str | None) -> int:
        self._check_usable()

        def matches(row: tuple) -> bool:
            self._verify(row)  # its metadata is trusted only once its checksum holds
            found = codec.decode(row[6])
            return any(_matches(found, wanted) for wanted in filters)

        return self._engine.delete_matching(thread_id, matches)

    def _get_rows(self, thread_id: str, namespace: str, checkpoint_id: str | None
                  ) -> list[tuple]:
        self._check_usable()
        return self._engine.get_rows(thread_id, namespace, checkpoint_id)

    def _threads(self) -> list[str]:
        self._check_usable()
        return self._engine.threads()

    def _list(self, thread_id: str, namespace: str | None, before: str | None,
              limit: int | None, metadata: dict | None,
              damaged: Callable[[str, ChecksumError], None] | None = None
              ) -> Iterator[Checkpoint]:
        upper: int | None = None
        produced = pages = 0
        while True:
            self._check_usable()
            want = min(_core.MAX_PAGE_ROWS, _core.PAGE_ROWS << pages)
            if limit is not None and metadata is None:
                want = min(want, limit - produced)
            upper, rows, writes, more = self._engine.page(thread_id, namespace, before,
                                                          upper, want, _core.PAGE_BYTES)
            if limit == 0:  # after the check of `before`: a bad id raises at any limit
                return
            remaining = None if limit is None else limit - produced
            for checkpoint in self._merge(iter(rows), iter(writes), remaining, metadata,
                                          damaged):
                produced += 1
                yield checkpoint
            if not more or not rows or (limit is not None and produced >= limit):
                return
            upper = rows[-1][0] - 1
            pages += 1

    def _read_log(self, thread_id: str, after: int) -> Iterator[LogEvent]:
        last: int | None = None
        pages = 0
        while True:
            self._check_usable()
            want = min(_core.MAX_PAGE_ROWS, _core.PAGE_ROWS << pages)
            last, rows = self._engine.log_page(thread_id, after, last, want)
            for seq, thread, created, event, checksum in rows:
                try:
                    intact = integrity.expected_log_checksum(  # in its stored form
                        checksum, seq, thread, created, event) == checksum
                except (TypeError, ValueError, OverflowError):
                    intact = False
                if not intact:
                    raise self._checksum_error(f"log event {seq} of thread {thread!r}")
                yield LogEvent(seq, thread, _to_datetime(created), codec.decode(event))
            if last is None or len(rows) < want:
                return
            after = rows[-1][0]
            pages += 1


class _Block:
    """:meth:`PostgresServerSaver.transaction`'s context manager: the engine's block
    (a generator's), with a Ctrl-C at the start of its exit held back to the exit's end.

    CPython handles a signal at every function's entry: one at the first instruction of the
    exit (this ``__exit__``, or contextlib's, before the engine's generator resumes) skipped
    the whole exit, and while the KeyboardInterrupt was kept (an interactive session keeps the
    last one) the block's connection stayed checked out with its transaction open, and the
    thread's next write ran inside it, acknowledged but never committed
    (tests/test_postgres_interrupts.py). So, in the main thread, a deferral begun in
    ``__enter__`` stays installed across the body narrowed to the exit's frames
    (:meth:`~sqlitesaver.interrupts.deferred.narrow`, as the SQLite engine's blocks do): the
    body stays interruptible, and a signal at the exit is raised just after it."""

    __slots__ = ("_saver", "_inner", "_held")

    def __init__(self, saver: PostgresServerSaver) -> None:
        self._saver = saver
        self._inner: Any = None
        self._held: interrupts.deferred | None = None

    def __enter__(self) -> PostgresServerSaver:
        saver = self._saver
        saver._check_usable()
        held = interrupts.deferred()
        held.__enter__()
        try:
            inner = saver._engine.transaction()
            inner.__enter__()
            self._inner = inner
            held.narrow(_exiting)  # a signal that came meanwhile: raised here
            self._held, held = held, None  # one statement: nothing can come between
        except BaseException:
            inner, self._inner = self._inner, None
            try:
                if inner is not None:  # entered: end it, as a block that raised would
                    inner.__exit__(*sys.exc_info())
            finally:
                kept, self._held = self._held, None  # handed over just before the exception
                for section in (held, kept):
                    if section is not None:
                        section.__exit__(None, None, None)
            raise
        return saver

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        try:
            inner, self._inner = self._inner, None
            return bool(inner.__exit__(exc_type, exc, tb))
        finally:
            held, self._held = self._held, None
            if held is not None:
                held.__exit__(None, None, None)  # a signal held back: raised here


_exiting = interrupts.within(frozenset({_Block.__exit__.__code__}))

