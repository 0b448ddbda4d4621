"""The LangGraph ``BaseCheckpointSaver`` on a :class:`~sqlitesaver.Saver`: every method, sync and
async, with the Saver's guarantees.

Guarantees: a method that writes returns only after its SQLite COMMIT returned (with the
Saver's ``durability="full"`` default, the write survives a process crash, an OS crash and a
power loss), and each call is one transaction: ``put_writes``, ``delete_for_runs``,
``copy_thread`` and ``prune`` are all or nothing however many rows they touch (a ``put`` also
stores, in its transaction, the writes that arrived for its checkpoint first). Reads never wait
for writes (the Saver reads on a pool of WAL readers) and never return bytes that changed on disk
(every payload is checksummed). The ``a*`` methods run the same code in a worker thread
(``asyncio.to_thread``), so the event loop never blocks on SQLite or on a serializer.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from itertools import chain, islice
from typing import Any

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (BaseCheckpointSaver, ChannelVersions, Checkpoint,
                                           CheckpointMetadata, CheckpointTuple,
                                           SerializerProtocol, get_checkpoint_metadata)
except ImportError as exc:  # the core never needs LangGraph; this module does
    raise ImportError("sqlitesaver.langgraph needs LangGraph's checkpoint package: "
                      "pip install 'sqlitesaver[langgraph]'") from exc

from .. import Saver
from ..errors import CheckpointNotFoundError, InvalidArgumentError
from ..postgres.target import is_url
from . import _convert
from ._rendezvous import STORED, Key, Parked, Rendezvous

__all__ = ["SaverCheckpointer", "file_path"]

#: Checkpoints an ``alist`` fetches per trip to its worker thread.
_BATCH = 64
_STRATEGIES = {"keep_latest": 1, "delete": 0}  # prune strategy -> checkpoints kept per namespace


class SaverCheckpointer(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer backed by a :class:`~sqlitesaver.Saver` (see the module
    docstring for what it guarantees). Use :class:`~sqlitesaver.langgraph.SqliteSaver` or
    :class:`~sqlitesaver.langgraph.AsyncSqliteSaver`; they differ only in ``from_conn_string``.

    ``saver`` stays the caller's: closing it is the caller's job (``from_conn_string`` does it).
    ``serde`` is LangGraph's serializer protocol, applied to every checkpoint and write value.
    """

    #: Seconds ``put_writes`` waits for the checkpoint it names to be put before raising
    #: :class:`~sqlitesaver.errors.CheckpointNotFoundError`. LangGraph's default
    #: ``durability="async"`` often delivers a task's writes before the checkpoint they belong
    #: to (the two are submitted to a thread pool unordered); they are then stored in that
    #: checkpoint's own transaction (see :mod:`sqlitesaver.langgraph._rendezvous`).
    pending_writes_wait: float = 30.0

    def __init__(self, saver: Saver, *, serde: SerializerProtocol | None = None) -> None:
        if not isinstance(saver, Saver):
            raise InvalidArgumentError(self._not_a_saver(saver))
        super().__init__(serde=serde)
        self.saver = saver
        self._rendezvous = Rendezvous()

    @classmethod
    def _not_a_saver(cls, given: object) -> str:
        """Why ``cls(given)`` is refused, and what to write instead (a LangGraph tutorial
        passes a connection it made)."""
        return (f"{cls.__name__} takes a sqlitesaver.Saver, not a {type(given).__module__}."
                f"{type(given).__qualname__}: it opens the database file itself (through APSW, "
                "with its crash recovery and settings) instead of using a connection you made. "
                f"Use {cls.__name__}.from_conn_string(path) with a file path, or "
                f"{cls.__name__}(Saver(path)); {_THROWAWAY}")

    def setup(self) -> None:
        """Nothing to do: the Saver created (or migrated) its schema when it opened. Here so
        that code written for LangGraph's savers, which calls ``setup()``, runs unchanged."""

    # --- reads ---------------------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (the latest of its thread and ``checkpoint_ns`` when
        it has no ``checkpoint_id``) with its pending writes, or None. One snapshot.
        :class:`~sqlitesaver.errors.ForeignCheckpointError` if the core API wrote it."""
        thread_id, namespace, checkpoint_id = _convert.location(config)
        saver = self.saver
        if type(saver).get is not Saver.get:
            # A subclass's own get (access control, logging) is the read, as for list() with
            # a checkpoint id.
            stored = saver.get(thread_id, checkpoint_id, namespace=namespace)
            return None if stored is None else self._tuple(stored)
        # Saver.get's read and checks without its records (see Saver._get): LangGraph's
        # objects are built straight from the verified, decoded parts.
        parts = saver._get(thread_id, checkpoint_id, namespace, False)
        return None if parts is None else _convert.parts_to_tuple(parts, self.serde,
                                                                   path=saver.path)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None,
             limit: int | None = None) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first (commit order), as LangGraph's SqliteSaver lists them:
        of the config's thread, of its ``checkpoint_ns`` if it has one (all namespaces if not),
        only its ``checkpoint_id`` if it has one; ``filter`` keeps those whose metadata matches
        every key, read as LangGraph's SQLite saver reads it: a dotted key is a path into
        nested metadata, ``None`` also matches a missing key, a key with characters other than
        letters, digits, ``_``, ``.`` and ``-`` raises ``InvalidArgumentError`` (a
        ``ValueError``) (see :class:`~sqlitesaver.langgraph._convert.Filter`); ``before`` keeps
        those older than that checkpoint (one that does not exist compares by id, as
        LangGraph's uuid6 ids sort by time). A thread's checkpoints stream from one snapshot.
        ``config=None`` lists every thread: each thread is read in turn and the whole result
        is sorted by id in memory. A checkpoint it would return that the core API wrote raises
        :class:`~sqlitesaver.errors.ForeignCheckpointError`."""
        wanted = _convert.Filter.of(filter)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise InvalidArgumentError(f"limit must be an int >= 0 or None, not {limit!r}")
        if limit is not None and limit > sys.maxsize:
            limit = None  # more than can be listed; islice() refuses it with a ValueError
        if before is not None:
            configurable = before.get("configurable") if isinstance(before, Mapping) else None
            if not isinstance(configurable, Mapping):
                raise InvalidArgumentError(f"before must be a config (a dict whose "
                                           f"'configurable' is a dict) or None, not "
                                           f"{before!r:.80}")
            before_id = configurable.get("checkpoint_id")
            if not before_id:
                return  # LangGraph's savers compare with NULL here: nothing is older
            if not isinstance(before_id, str):
                raise InvalidArgumentError(f"before's checkpoint_id must be a str, not "
                                           f"{type(before_id).__name__}")
        else:
            before_id = None
        if config is None:
            yield from self._list_every_thread(wanted, before_id, limit)
            return
        thread_id, namespace, checkpoint_id = _convert.location(config, default_ns=None)
        if checkpoint_id is not None:
            yield from islice(self._list_one(thread_id, namespace, checkpoint_id, wanted,
                                             before_id), limit)
            return
        stream = self._stream(thread_id, namespace, wanted, before_id, limit)
        try:
            for stored in stream:
                yield self._tuple(stored)
        finally:
            stream.close()

    def _tuple(self, stored: Any) -> CheckpointTuple:
        return _convert.to_tuple(stored, self.serde, path=self.saver.path)

    def _stream(self, thread_id: str, namespace: str | None, wanted: _convert.Filter,
                before_id: str | None, limit: int | None) -> Iterator:
        """The Saver's list, lazily (nothing is read before the first ``next()``), with the
        part of the filter the Saver does not check applied here."""
        # The Saver stops at `limit` only when it checks the whole filter itself.
        listed = self.saver.list(thread_id, namespace=namespace, before=before_id,
                                 limit=None if wanted.paths else limit,
                                 metadata=wanted.direct)
        try:
            try:
                first = next(listed, None)
            except CheckpointNotFoundError:
                # `before` names no checkpoint of this thread (deleted, or never stored):
                # compare ids, as LangGraph's own savers do.
                listed = self.saver.list(thread_id, namespace=namespace,
                                         metadata=wanted.direct)
                found: Iterator = (stored for stored in listed
                                   if stored.checkpoint_id < before_id)
            else:
                found = listed if first is None else chain((first,), listed)
            if wanted.paths:
                found = (stored for stored in found if wanted.rest_matches(stored.metadata))
            yield from islice(found, limit)
        finally:
            listed.close()  # ends the read snapshot now, not when the garbage collector runs

    def _list_one(self, thread_id: str, namespace: str | None, checkpoint_id: str,
                  wanted: _convert.Filter, before_id: str | None) -> Iterator[CheckpointTuple]:
        if namespace is not None and before_id is None:
            found = self.saver.get(thread_id, checkpoint_id, namespace=namespace)
            candidates = [] if found is None else [found]
        else:  # rare: scan the thread for the id
            candidates = [stored for stored in self._stream(thread_id, namespace,
                                                            _convert.Filter.of(None),
                                                            before_id, None)
                          if stored.checkpoint_id == checkpoint_id]
        for stored in candidates:
            if wanted.matches(stored.metadata):
                yield self._tuple(stored)

    def _list_every_thread(self, wanted: _convert.Filter, before_id: str | None,
                           limit: int | None) -> Iterator[CheckpointTuple]:
        found = [stored for thread_id in self.saver.threads()
                 for stored in self.saver.list(thread_id, metadata=wanted.direct)
                 if (before_id is None or stored.checkpoint_id < before_id)
                 and wanted.rest_matches(stored.metadata)]
        found.sort(key=lambda stored: stored.checkpoint_id, reverse=True)
        for stored in found[:limit]:
            yield self._tuple(stored)

    # --- writes --------------------------------------------------------------------------------

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        """Store the checkpoint under its own id, its parent being the config's
        ``checkpoint_id``, in one transaction, together with any writes that arrived for it
        first (their ``put_writes`` calls are still waiting); return the config that names it.
        A parent that does not exist (deleted, or never stored) is recorded as no parent.
        Putting an id again replaces that checkpoint and keeps its pending writes, as
        LangGraph's SqliteSaver does."""
        thread_id, namespace, parent_id = _convert.location(config)
        if (type(checkpoint) is not dict and not isinstance(checkpoint, Mapping)) or (
                type(metadata) is not dict and not isinstance(metadata, Mapping)):
            raise InvalidArgumentError(
                f"checkpoint and metadata must be dicts, not {type(checkpoint).__name__} and "
                f"{type(metadata).__name__}; nothing was written")
        if "id" not in checkpoint:
            raise InvalidArgumentError("the checkpoint has no 'id'; nothing was written")
        checkpoint_id = checkpoint["id"]
        state = _convert.dumps(self.serde, checkpoint, "checkpoint %.80r", checkpoint_id)
        stored_metadata = get_checkpoint_metadata(config, metadata)
        saver = self.saver
        if saver.in_transaction:
            # Inside the caller's own transaction this put's end is not its COMMIT, so it must
            # not settle early writes: they keep waiting for a put of their own, or their
            # deadline. Saver.put runs as a savepoint there: undone alone if the parent is
            # missing.
            self._put_checkpoint(thread_id, namespace, checkpoint_id, parent_id, state,
                                 stored_metadata)
            return _convert.to_config(thread_id, namespace, checkpoint_id)
        with self._rendezvous.storing((thread_id, namespace, checkpoint_id)) as take:
            early = take()  # from here on, writes for this checkpoint wait for its end (RETRY)
            if not early:
                # The usual case: the checkpoint alone, in a transaction of its own (no
                # nesting, the fewest statements).
                self._put_checkpoint(thread_id, namespace, checkpoint_id, parent_id, state,
                                     stored_metadata)
            else:
                # Writes that came first go in the checkpoint's transaction: one COMMIT, one
                # fsync for both; their callers return once it committed (STORED).
                def put_with_writes() -> None:
                    self._put_checkpoint(thread_id, namespace, checkpoint_id, parent_id,
                                         state, stored_metadata)
                    for job in early:
                        job.store()
                saver._atomically("putting a checkpoint with the writes that came first",
                                  put_with_writes)
        return _convert.to_config(thread_id, namespace, checkpoint_id)

    def _put_checkpoint(self, thread_id: str, namespace: str, checkpoint_id: str,
                        parent_id: str | None, state: list, metadata: dict) -> None:
        # Saver._put: Saver.put without the CheckpointRef it would build and this discards.
        try:
            self.saver._put(thread_id, state, metadata, parent_id, namespace, checkpoint_id)
        except CheckpointNotFoundError:
            if parent_id is None:
                raise
            # The failed put was undone whole (its own transaction, or a savepoint in the
            # caller's): put it without the parent that is gone.
            self.saver._put(thread_id, state, metadata, None, namespace, checkpoint_id)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                   task_id: str, task_path: str = "") -> None:
        """Store a task's writes against the config's checkpoint, all in one transaction:
        regular channels keep their first value when retried, special ones (errors,
        interrupts) take the last. Writes that arrive before their checkpoint wait up to
        :attr:`pending_writes_wait` seconds and are stored in its transaction (inside the
        caller's own ``saver.transaction()`` they raise at once: nothing else can commit the
        checkpoint meanwhile); either way this returns only after they are committed."""
        key, store = self._prepare_writes(config, writes, task_id, task_path)
        deadline, trust_recent = None, True
        while True:
            try:
                return store()
            except CheckpointNotFoundError:
                if self.saver.in_transaction:
                    # Inside the caller's transaction, which holds the write lock: no other
                    # thread's put can commit the checkpoint before it ends, and a parked job
                    # taken by one would be stored by it after this call raised (and after
                    # the caller's transaction rolled back). The writes belong to this
                    # transaction or to nothing.
                    raise
                if deadline is None:
                    deadline = time.monotonic() + self.pending_writes_wait
                elif time.monotonic() >= deadline:
                    raise  # waited pending_writes_wait: the checkpoint never came
            job = Parked(key, store)
            if not self._rendezvous.park(job, trust_recent=trust_recent):
                trust_recent = False  # put meanwhile: try again, then wait if need be
                continue
            if not job.wait(deadline):
                if self._rendezvous.withdraw(job):
                    continue  # the last try: CheckpointNotFoundError if still missing
                # A put took it just now; its outcome is imminent, but never wait unbounded.
                job.wait(time.monotonic() + self.pending_writes_wait)
            if job.outcome == STORED:
                return None
            # FAILED, RETRY, or never settled: store them ourselves (storing is idempotent).

    def _prepare_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                        task_id: str, task_path: str) -> tuple[Key, Callable[[], None]]:
        """The checkpoint's key, and a function storing the writes (serialized once, here)
        in one transaction: its own, or the caller's."""
        thread_id, namespace, checkpoint_id = _convert.location(config)
        if checkpoint_id is None:
            raise InvalidArgumentError("put_writes needs the config of a checkpoint: "
                                       "configurable['checkpoint_id'] is missing")
        regular, special = _convert.split_writes(writes, self.serde)
        stores = [(indexes, pairs, replace) for (indexes, pairs), replace
                  in ((regular, False), (special, True)) if pairs]

        def store() -> None:
            if len(stores) > 1:
                with self.saver.transaction():
                    for indexes, pairs, replace in stores:
                        self.saver.put_writes(thread_id, checkpoint_id, task_id, pairs,
                                              namespace=namespace, task_path=task_path,
                                              indexes=indexes, replace=replace)
                return
            # One kind of write (the usual case; or none): its own transaction. Not inside a
            # `with nullcontext():`, whose three Python calls cost more than the branch.
            for indexes, pairs, replace in stores:
                self.saver.put_writes(thread_id, checkpoint_id, task_id, pairs,
                                      namespace=namespace, task_path=task_path,
                                      indexes=indexes, replace=replace)

        return (thread_id, namespace, checkpoint_id), store

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint (all namespaces) and pending write of the thread."""
        self.saver.delete_thread(str(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete, in every thread and in one transaction, the checkpoints whose metadata
        ``run_id`` is one of ``run_ids``, with their pending writes. A remaining checkpoint
        whose parent is deleted is detached (no ``parent_config``)."""
        ids = _sequence("run_ids", run_ids)
        self.saver.delete_matching(*({"run_id": str(run_id)} for run_id in ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint (all namespaces) of the source thread, with its ids,
        metadata, parent chain and pending writes, to the target thread, in one transaction.
        The target must have no checkpoints (:class:`~sqlitesaver.errors.InvalidArgumentError`
        otherwise); a source without checkpoints copies nothing."""
        self.saver.copy_thread(str(source_thread_id), str(target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep only the newest checkpoint of each namespace of each
        thread; ``"delete"``: delete all their checkpoints. One transaction for all threads.
        Like LangGraph's base contract says, ``keep_latest`` is not aware of the beta
        ``DeltaChannel``: do not prune threads of graphs that use it."""
        if not isinstance(strategy, str) or strategy not in _STRATEGIES:
            raise InvalidArgumentError(
                f"strategy must be one of {sorted(_STRATEGIES)}, not {strategy!r}")
        threads = [str(thread_id) for thread_id in _sequence("thread_ids", thread_ids)]
        with self.saver.transaction():
            for thread_id in threads:
                self.saver.prune(thread_id, keep_last=_STRATEGIES[strategy])

    def get_next_version(self, current: str | None, channel: None) -> str:
        """LangGraph's SqliteSaver's version strings, so graphs see the same versions: a
        zero-padded counter (monotonic) and a random fraction."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # --- async: the same work in a worker thread -----------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *,
                    filter: dict[str, Any] | None = None, before: RunnableConfig | None = None,
                    limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        listed = self.list(config, filter=filter, before=before, limit=limit)
        # Held by the worker thread while it reads a batch and while it closes the listing: a
        # task cancelled (or timed out) while a batch was being read leaves that worker
        # running, and closing the generator it is still running raised a raw ValueError
        # ("generator already executing") in place of the CancelledError, leaving the listing
        # open. The close waits for that batch instead (bounded, as every read is).
        turn = threading.Lock()
        try:
            while True:
                batch = await asyncio.to_thread(_take, listed, _BATCH, turn)
                for item in batch:
                    yield item
                if len(batch) < _BATCH:
                    return
        finally:
            await asyncio.to_thread(_close, listed, turn)

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint,
                   metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        return await _settled(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]],
                          task_id: str, task_path: str = "") -> None:
        key, store = await asyncio.to_thread(self._prepare_writes, config, writes, task_id,
                                             task_path)
        deadline, trust_recent = None, True
        while True:
            try:
                return await _settled(store)
            except CheckpointNotFoundError:
                if deadline is None:
                    deadline = time.monotonic() + self.pending_writes_wait
                elif time.monotonic() >= deadline:
                    raise
            job = Parked(key, store, loop=asyncio.get_running_loop())
            if not self._rendezvous.park(job, trust_recent=trust_recent):
                trust_recent = False
                continue
            try:
                if not await job.wait_async(deadline):
                    if self._rendezvous.withdraw(job):
                        continue
                    await job.wait_async(time.monotonic() + self.pending_writes_wait)
            except asyncio.CancelledError:
                # Not left parked for a later put to store behind the caller's back: withdrawn,
                # or, if a put has just taken it, that put's outcome waited for (bounded).
                if not self._rendezvous.withdraw(job):
                    await _outlive(asyncio.ensure_future(asyncio.to_thread(
                        job.wait, time.monotonic() + self.pending_writes_wait)))
                raise
            if job.outcome == STORED:
                return None

    async def aget_delta_channel_history(self, *, config: RunnableConfig,
                                         channels: Sequence[str]) -> Any:
        """LangGraph's own ``get_delta_channel_history`` (beta, for ``DeltaChannel``): the walk
        up the parent chain, one ``get_tuple`` per ancestor, all in one worker thread rather
        than a trip to a thread per ancestor (LangGraph's default async walk)."""
        return await asyncio.to_thread(self.get_delta_channel_history, config=config,
                                       channels=channels)

    async def adelete_thread(self, thread_id: str) -> None:
        await _settled(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await _settled(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await _settled(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await _settled(self.prune, thread_ids, strategy=strategy)


_THROWAWAY = ("for a throwaway database use a file in a temporary directory "
              "(os.path.join(tempfile.mkdtemp(), 'checkpoints.db')), or LangGraph's "
              "InMemorySaver (from langgraph.checkpoint.memory import InMemorySaver).")


def file_path(cls: type, conn_string: object) -> object:
    """``conn_string`` if it can name a database file; the in-memory and URI strings LangGraph's
    tutorials pass to ``from_conn_string`` raise
    :class:`~sqlitesaver.errors.InvalidArgumentError` saying what to use instead (anything else
    the Saver checks when it opens)."""
    if isinstance(conn_string, str) and (conn_string in ("", ":memory:")
                                         or conn_string.startswith("file:")):
        raise InvalidArgumentError(
            f"{cls.__name__}.from_conn_string takes a database file path, not "
            f"{conn_string!r}: an in-memory or URI database cannot be durable, and durability "
            f"is what sqlitesaver is for; {_THROWAWAY}")
    return conn_string


def server_target(cls: type, conn_string: object) -> str:
    """``conn_string`` if it can name a PostgreSQL server (a ``postgresql://`` URL or a libpq
    key=value DSN); anything else raises :class:`~sqlitesaver.errors.InvalidArgumentError`
    saying what to use instead (whether the server answers is checked when the Saver opens)."""
    if isinstance(conn_string, str) and (is_url(conn_string) or "=" in conn_string):
        return conn_string
    raise InvalidArgumentError(
        f"{cls.__name__}.from_conn_string takes a PostgreSQL server, as a postgresql:// URL "
        "(postgresql://user@host:5432/dbname) or a libpq key=value DSN, not "
        f"{_shown(conn_string)}. For a database file use SqliteSaver.from_conn_string(path).")


def connection_refused(cls: type, given: object) -> str:
    """Why a PostgreSQL checkpointer refuses ``cls(given)`` (LangGraph's takes a psycopg
    connection or pool), and what to write instead."""
    return (f"{cls.__name__} takes a sqlitesaver.Saver, not a {type(given).__module__}."
            f"{type(given).__qualname__}: the Saver opens its own connection pool, reads the "
            "server's durability settings back and runs each call in one transaction, so it "
            f"does not use a connection or pool you made. Use {cls.__name__}.from_conn_string("
            f"url), or {cls.__name__}(Saver(url)) with a postgresql:// URL.")


def _shown(value: object) -> str:
    # never a password: a string with an '@' (user:password@host without a scheme) is not shown
    if isinstance(value, str) and "@" in value:
        return "that string"
    return f"{value!r:.80}"


async def _settled(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` (a write) in a worker thread, as ``asyncio.to_thread``, but a
    cancellation (``task.cancel()``, a ``wait_for`` timeout) of the awaiting task reaches it only
    once the worker has ended: a worker cannot be stopped, and a write that went on alone
    committed behind the back of a caller that had already seen its CancelledError (and may have
    read the thread, or started its next run, meanwhile). When the CancelledError arrives the
    write has committed or not, for good: "maybe committed", as a lost connection is; re-read
    before retrying. The wait is the call's own, bounded (busy_timeout, statement_timeout)."""
    future = asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await _outlive(future)
        raise


async def _outlive(future: asyncio.Future) -> None:
    """Wait for ``future`` to end, whatever cancellations arrive meanwhile (the caller raises
    its CancelledError afterwards); its outcome is retrieved, not raised."""
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            continue
        except BaseException:
            break  # (an interruption of this wait itself: the caller's exception goes on)
    if future.done() and not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" warning


def _take(iterator: Iterator, n: int, turn: threading.Lock) -> list:
    with turn:
        return list(islice(iterator, n))


def _close(iterator: Iterator, turn: threading.Lock) -> None:
    with turn:  # after a batch still being read (see alist)
        iterator.close()


def _sequence(name: str, value: object) -> Sequence:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidArgumentError(f"{name} must be a list of ids, not {value!r:.80}")
    return value
