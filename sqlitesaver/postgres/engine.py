"""The PostgreSQL engine: what each storage operation does on a server (issue #16).

:class:`~sqlitesaver.postgres.saver.PostgresServerSaver` (what ``Saver("postgresql://...")``
returns) calls it for every storage step; tests/test_postgres_engine.py also drives it directly.
It takes what the backend-neutral core prepares (bytes already encoded by sqlitesaver.codec,
arguments already checked) and returns rows in the SQLite engine's shapes, so the core verifies
checksums and builds records the same way for both:

* a checkpoint row: ``(seq, thread_id, namespace, parent_seq, created_at, state, metadata,
  checksum, key, parent_key)``;
* a pending-write row: ``(checkpoint_seq, task_id, idx, channel, value, task_path, checksum)``.

Guarantees:

* **One transaction per operation**, ``BEGIN`` ... ``COMMIT`` written by the engine on an
  autocommit connection from a pool. A pooled connection is not checked before use (a round
  trip per call): one found dead by the transaction's ``BEGIN`` (a server restarted
  meanwhile) is dropped and the transaction run on another, which is safe because nothing of
  it ran; so a restart costs a reconnect, not an error. A put sends its whole transaction at
  once (below), so for it "nothing ran" must be known before sending: an idle pooled
  connection the server closed has something to read (its last words, the end of the
  stream), which a poll of its socket finds without a round trip (pool.py,
  ``pooled.closed_while_idle``); it is replaced likewise. A connection lost after the ``BEGIN``
  (after a put's statement was sent) is never retried (a statement that kills its backend
  would, on every try, put the whole cluster through crash recovery): the call raises
  DatabaseIOError ("maybe committed" for a put). A call returns after its COMMIT returned.
  ``synchronous_commit`` is set per transaction (``SET LOCAL``): ``on`` for
  ``durability="full"``, ``off`` for ``"normal"``; a transaction-pooling PgBouncer keeps it.
  So are ``statement_timeout``, ``lock_timeout`` and ``plan_cache_mode``, in every
  transaction. Where no pooler sits between (pool.py, ``_session``), each pooled connection's
  session carries them too, set once when the pool opens it, and a get is one statement sent
  alone, under them; behind one (PgBouncer...) a session setting would stay on a server
  connection other clients get next, and not bound this client's next transaction, so there
  is none. The one-statement writes set ``lock_timeout`` and ``synchronous_commit`` inside
  their statement, before their locks; a statement cannot set its own ``statement_timeout``
  or plan mode: those are the session's, which cannot reach the implicit COMMIT (the server
  stops the timer when the Execute completes), and behind a pooler, the server's defaults.
* **Ids**: unique in the database and never reused (sequences). Within one thread they follow
  commit order: every write to a thread first takes a transaction-level advisory lock on the
  thread (:data:`THREAD_LOCK`, ``hashtext(thread_id)``), and draws its seq after that, so a seq
  committed later in a thread is larger than every seq already committed in it (a reader never
  sees a new checkpoint appear below one it has seen). Writers of different threads do not wait
  for each other (a hash collision only makes two threads share a lock), and their ids are not
  in commit order with each other. ``created_at`` is the server's clock, one for all writers.
* **Statements**: psycopg costs CPU for every statement, and a local server a context switch
  for every round trip. A put is one round trip: one statement, its own transaction on the
  autocommit connection, made of MATERIALIZED CTEs each reading the row of the one before,
  so that they run in order: the ``set_config`` settings, the all-threads lock, the thread's
  lock (``sql._LOCKED``), then (``sql._put_statement``) the seq drawn after the locks, the
  time, the parent looked up, the row inserted or the checkpoint with that caller-supplied id
  updated in place, its checksum completed by the server; prepared, binary. It was a libpq
  pipeline of ``BEGIN``, the locks, the insert and ``COMMIT`` first (session 15): one
  statement costs the client less CPU and one wait on the socket instead of one per
  statement (each gives up the GIL). Its one snapshot is taken before its lock waits:
  ``sql._put_statement`` says what that means for the parent it looks up. Its errors (a
  parent that is not a checkpoint of the thread, a parent not older than the checkpoint it
  would replace) are decided by that statement, which then writes nothing, and raised by the
  client from the row it returns, with the same types and messages as before. A put of
  writes is one round trip the same way (``sql._put_writes_statement``: the checkpoint's row
  locked after the locks, each write's checksum completed with its seq; "not found" decided
  by the statement), and so is a log append (``sql._APPEND_LOG``). A put with files, and any
  of them inside a transaction block, take two round trips: they send their ``BEGIN``,
  settings, locks and first lookup as one simple-query string (values inlined as literals
  psycopg quotes for the connection), and their last statements with their ``COMMIT`` as
  another (the server skips the rest of a
  string after a failing statement: the COMMIT then never runs). A get, and a page of a list
  (the common case: a first page, or one below a known seq), are one: a libpq pipeline of the
  ``set_config`` timeouts and the statements (prepared, binary results: bytea arrives as
  bytes, not as hex text), with ``BEGIN``/``COMMIT`` around a page's two. Measured against
  the same calls as simple-query strings of literals, and as a transaction of several round
  trips: less wall time (bench/postgres.py measures the whole; research/
  postgres_engine_plan.md, sessions 12, 13 and 15).
* **Checksums**: a row written by the one-round-trip put carries a checksum the server
  completed (sqlitesaver/integrity.py, ``server_checksum``: bit 62 set, a SHA-256 of the
  client's CRC-32 over the payloads and keys it knows, and of the seq, time and parent seq
  the server chose), and so do a write of the one-round-trip put of writes
  (``server_write_checksum``: its CRC-32 and its checkpoint's seq) and a log event appended in
  one (``server_log_checksum``: its CRC-32, seq and time); every other row a CRC-32 computed
  by the client. Readers and the validator verify each row in the form its value says. No
  table changed; the schema version is 2 from then on, so that a version that knows only the
  CRC-32 form refuses the database (``SchemaVersionError``: upgrade) instead of reporting its
  rows as damaged.
* **Every thread at once**: each write first takes :data:`ALL_THREADS_LOCK` in shared mode (in
  the ``BEGIN`` string or the put's statement: no round trip), before any thread's lock;
  ``delete_matching`` over every thread takes it in exclusive mode instead of one lock per
  thread, which on a large database exhausted the server's shared lock table
  (``max_locks_per_transaction``: "out of shared memory" past about 20,000 threads with the
  defaults, for every session at once).
* **Retries**: a serialization failure or deadlock (``40001``, ``40P01``) re-runs the whole
  transaction until ``busy_timeout`` has passed, then raises
  :class:`~sqlitesaver.errors.BusyTimeoutError`. The operations here are pure functions of
  their arguments, so re-running them is safe.
* **Maybe committed**: a connection lost while COMMIT was in flight (for a put: once its
  statement was sent) raises :class:`~sqlitesaver.errors.DatabaseIOError` saying so, and is
  never retried; lost before COMMIT, the transaction was not committed (also
  ``DatabaseIOError``, saying that).
* **Reads**: one statement (one snapshot), or several inside one ``REPEATABLE READ READ
  ONLY`` transaction: one snapshot per page, as on SQLite.

The engine, one module a job (each builds on the one before):

* ``sql.py``: the lock keys and the statements, with why each is written as it is;
* ``pool.py``: :class:`~sqlitesaver.postgres.pool.Connections`, opening and the pool (a dead
  pooled connection replaced, a busy pool timed out), on psycopg_pool's pool as
  ``pool_class.py`` adapts it (interruptible waits, capped reconnection backoff, and
  ``lifetime.py``'s finaliser safe at exit and after ``fork()``);
* ``transactions.py``: :class:`~sqlitesaver.postgres.transactions.Transactions`, the write
  protocol (the ``BEGIN`` and ``COMMIT`` strings, or one statement; locks, retries, "maybe
  committed") and the caller's transaction blocks;
* ``reads.py``: :class:`~sqlitesaver.postgres.reads.Reads`, the reads;
* here: :class:`Engine`, with each write operation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .. import integrity
from ..errors import CheckpointNotFoundError, InvalidArgumentError
from ..ids import INT64_MAX, format_id, is_generated, parse_id
from . import files as pg_files
from .reads import Reads
from .sql import (_CHECKPOINT_COLUMNS, _DELETE_CHECKPOINTS, _DELETE_LOG, _HAS_CHECKPOINTS,
                  _INSERT_CHECKPOINT, _INSERT_WRITE, _NEXT_CHECKPOINT, _NEXT_LOG, _PRUNED,
                  _REPLACE_WRITE, _S, _THREAD_CHECKPOINTS, _THREAD_SEQS, _WRITE_COLUMNS,
                  ALL_THREADS_LOCK, SCALAR_WRITES, THREAD_LOCK, _has_nul, check_text)
from .transactions import _Tx

__all__ = ["Engine", "THREAD_LOCK", "ALL_THREADS_LOCK"]


#: Rows a scan of whole checkpoints (copy_thread, delete_matching) holds at once: it reads
#: through a server-side cursor, not the whole result, so memory does not grow with the data.
SCAN_ROWS = 16


@contextlib.contextmanager
def _scan(conn: Any, query: str, params: Sequence[object]) -> Iterator[Any]:
    """Rows of ``query`` fetched :data:`SCAN_ROWS` at a time from a cursor declared in the
    current transaction (its snapshot is the DECLARE's: rows inserted meanwhile by the same
    transaction are not seen)."""
    with conn.cursor(name="sqlitesaver_scan") as cursor:
        cursor.itersize = SCAN_ROWS
        cursor.execute(query, params)
        yield cursor


class Engine(Reads):
    """A PostgreSQL server as a sqlitesaver store. Thread-safe: every call takes a pooled
    connection for its transaction. See the module docstring for what is guaranteed.
    Opening and the pool are :class:`~sqlitesaver.postgres.pool.Connections`', transactions
    :class:`~sqlitesaver.postgres.transactions.Transactions`', reads
    :class:`~sqlitesaver.postgres.reads.Reads`'; the writes are here."""

    # --- writes ---------------------------------------------------------------------------

    def put_checkpoint(self, thread_id: str, namespace: str, parent_id: str | None,
                       checkpoint_id: str | None, state: bytes, metadata: bytes,
                       files: Callable[[Any, int], None] | None = None) -> tuple[str, int]:
        """Insert a checkpoint (or replace the one with caller-supplied id ``checkpoint_id``,
        keeping its seq, ``created_at`` and pending writes); return ``(id, created_at)``.
        ``files(conn, seq)`` stores its files in the same transaction (postgres/files.py).

        One round trip (:meth:`_put_at_once`), its checksum completed by the server; with
        ``files``, or inside the calling thread's transaction block, two (:meth:`_write`:
        the files' statements need the seq first, and a block's statements run in it),
        its checksum a CRC-32 computed here. Readers verify either form."""
        if "\x00" in thread_id or "\x00" in namespace or (
                parent_id is not None and "\x00" in parent_id) or (
                checkpoint_id is not None and "\x00" in checkpoint_id):
            # check_text's own test, inline at every put (its call and keyword dict cost
            # ~0.45 us, the inline test ~0.08); it names the text that holds the NUL.
            check_text(thread_id=thread_id, namespace=namespace, parent_id=parent_id,
                       checkpoint_id=checkpoint_id)
        parent_key = None if parent_id is None or is_generated(parent_id) else parent_id
        if files is None and self._pinned() is None:
            return self._put_at_once(thread_id, namespace, parent_id, parent_key,
                                     checkpoint_id, state, metadata)

        # The next seq, the time, the parent's seq and the replaced checkpoint's seq and time,
        # in one statement (one round trip), after the thread's lock (the BEGIN string's). A
        # seq drawn by a put that then replaces a checkpoint, or fails, is a gap: ids are never
        # reused, not dense.
        query = [f"{_NEXT_CHECKPOINT.removeprefix('SELECT ')}"]
        params: list[object] = []
        if parent_id is not None:
            parent_seq_of = parse_id(parent_id) if parent_key is None else None
            if parent_key is None and parent_seq_of is None:
                query.append("NULL::bigint")  # generated-looking, but no seq has that id
            elif parent_key is None:
                query.append(f"(SELECT seq FROM {_S}.checkpoints WHERE seq = %s AND "
                             "thread_id = %s AND namespace = %s AND key IS NULL)")
                params += [parent_seq_of, thread_id, namespace]
            else:
                query.append(f"(SELECT seq FROM {_S}.checkpoints WHERE thread_id = %s AND "
                             "namespace = %s AND key = %s)")
                params += [thread_id, namespace, parent_key]
        if checkpoint_id is not None:
            query.append(f"(SELECT ARRAY[seq, created_at] FROM {_S}.checkpoints WHERE "
                         "thread_id = %s AND namespace = %s AND key = %s)")
            params += [thread_id, namespace, checkpoint_id]
        lookup = "SELECT " + ", ".join(query)

        def work(tx: _Tx) -> tuple[str, int]:
            # With files, the checkpoint's row is written at once, not in the COMMIT string:
            # its files' rows refer to it (a foreign key), and are written after it.
            write = tx.later if files is None else tx.execute
            drawn, created_now, *looked = tx.row
            parent_seq = None
            if parent_id is not None:
                parent_seq = looked.pop(0)
                if parent_seq is None:
                    raise self._no_parent(thread_id, namespace, parent_id)
            if checkpoint_id is not None:
                found = looked.pop(0)
                if found is not None:
                    seq, created = found
                    if parent_seq is not None and parent_seq >= seq:
                        raise self._parent_not_older(thread_id, checkpoint_id, parent_key,
                                                     parent_seq)
                    write(
                        f"UPDATE {_S}.checkpoints SET parent_seq = %s, parent_key = %s, "
                        "state = %s, metadata = %s, checksum = %s WHERE seq = %s",
                        (parent_seq, parent_key, state, metadata,
                         integrity.checkpoint_checksum(seq, thread_id, namespace, parent_seq,
                                                       created, state, metadata, checkpoint_id,
                                                       parent_key), seq))
                    if files is not None:
                        files(tx, seq)
                    return checkpoint_id, created
            seq, created = drawn, created_now
            write(_INSERT_CHECKPOINT, (
                seq, thread_id, namespace, parent_seq, created, state, metadata,
                integrity.checkpoint_checksum(seq, thread_id, namespace, parent_seq, created,
                                              state, metadata, checkpoint_id, parent_key),
                checkpoint_id, parent_key))
            if files is not None:
                files(tx, seq)
            return (checkpoint_id if checkpoint_id is not None else format_id(seq)), created

        return self._write("putting a checkpoint", work, threads=(thread_id,),
                           first=(lookup, params))

    def _put_at_once(self, thread_id: str, namespace: str, parent_id: str | None,
                     parent_key: str | None, checkpoint_id: str | None, state: bytes,
                     metadata: bytes) -> tuple[str, int]:
        """:meth:`put_checkpoint` in one round trip: one statement (sql._LOCKED, then
        sql._PUT) does on the server what the two-round-trip put does between its strings, so
        the client sends it without waiting for the seq: it sends the CRC-32 of what it knows
        (integrity.checkpoint_client_crc) and the server completes the checksum with the seq,
        time and parent seq it chose (integrity.server_checksum). The errors are the same,
        raised once the statement has written nothing (see sql._put_statement)."""
        # Plain ints: the cursor that sends it dumps every int as a bigint (pooled.configure),
        # so whatever their values each shape is one prepared statement.
        params = {"thread": thread_id, "ns": namespace, "state": state, "metadata": metadata,
                  "key": checkpoint_id, "parent_key": parent_key,
                  "crc": integrity.checkpoint_client_crc(thread_id, namespace, state, metadata,
                                                         checkpoint_id, parent_key)}
        parent = None
        if parent_key is not None:
            parent = "key"
        elif parent_id is not None:
            seq_of = parse_id(parent_id)
            parent = "missing" if seq_of is None else "seq"
            if seq_of is not None:
                params["parent_seq"] = seq_of
        ((parent_seq, seq, created),) = self._write_statement(
            "putting a checkpoint", self._put[parent], params,
            wrote=lambda rows: rows[0][1] is not None)
        if parent_id is not None and parent_seq is None:
            raise self._no_parent(thread_id, namespace, parent_id)
        if seq is None:  # not replaced: the parent is not older than the checkpoint
            raise self._parent_not_older(thread_id, checkpoint_id, parent_key, parent_seq)
        return (checkpoint_id if checkpoint_id is not None else format_id(seq)), created

    # The two refusals of a put, one message each whichever path found them.

    def _no_parent(self, thread_id: str, namespace: str, parent_id: str
                   ) -> CheckpointNotFoundError:
        return CheckpointNotFoundError(
            f"parent_id {parent_id!r} is not a checkpoint of thread {thread_id!r} "
            f"in namespace {namespace!r} on {self.server}; nothing was written.",
            path=self.server)

    def _parent_not_older(self, thread_id: str, checkpoint_id: str | None,
                          parent_key: str | None, parent_seq: int) -> InvalidArgumentError:
        return InvalidArgumentError(
            f"parent_id {parent_key or format_id(parent_seq)!r} is not older "
            f"than checkpoint {checkpoint_id!r} of thread {thread_id!r}, which "
            "it would replace; a checkpoint's parent must be older than it. "
            "Nothing was written.", path=self.server)

    def put_writes(self, thread_id: str, namespace: str, checkpoint_id: str, task_id: str,
                   task_path: str, encoded: Sequence[tuple[int, str, bytes]],
                   replace: bool) -> None:
        """Store ``(index, channel, value bytes)`` writes of a task, all or none.

        One round trip (:meth:`_put_writes_at_once`), their checksums completed by the server
        (integrity.server_write_checksum); inside the calling thread's transaction block, two
        (:meth:`_write`), their checksums CRC-32s computed here. Readers verify either form."""
        check_text(thread_id=thread_id, namespace=namespace, checkpoint_id=checkpoint_id,
                   task_id=task_id, task_path=task_path)
        check_text(**{f"writes[{i}] channel": channel
                      for i, (_, channel, _) in enumerate(encoded)})
        if self._pinned() is None:
            self._put_writes_at_once(thread_id, namespace, checkpoint_id, task_id, task_path,
                                     encoded, replace)
            return

        def work(tx: _Tx) -> None:
            if tx.row is None:
                raise self._not_found(thread_id, namespace, checkpoint_id, "checkpoint_id")
            (seq,) = tx.row
            insert = _REPLACE_WRITE if replace else _INSERT_WRITE
            for index, channel, value in encoded:  # in the COMMIT string: no round trip each
                tx.later(insert, (seq, task_id, index, channel, value, task_path,
                                  integrity.write_checksum(seq, task_id, index, channel,
                                                           task_path, value)))

        self._write("putting pending writes", work, threads=(thread_id,),
                    first=self._seq_query(thread_id, namespace, checkpoint_id))

    def _put_writes_at_once(self, thread_id: str, namespace: str, checkpoint_id: str,
                            task_id: str, task_path: str,
                            encoded: Sequence[tuple[int, str, bytes]], replace: bool) -> None:
        """:meth:`put_writes` in one round trip: one statement (sql._put_writes_statement)
        finds the checkpoint after the thread's lock and inserts the writes, their checksums
        completed with its seq; "not found" raised once it has written nothing."""
        from psycopg.types.numeric import Int8  # one parameter type: one prepared statement

        params: dict[str, object] = {
            "thread": thread_id, "ns": namespace, "task": task_id, "task_path": task_path}
        crcs = [Int8(integrity.write_client_crc(task_id, index, channel, task_path, value))
                for index, channel, value in encoded]
        rows: int | None = len(encoded)
        if 0 < len(encoded) <= SCALAR_WRITES:  # scalars: cheaper to send than arrays
            for n, ((index, channel, value), crc) in enumerate(zip(encoded, crcs)):
                params.update({f"idx{n}": Int8(index), f"channel{n}": channel,
                               f"value{n}": value, f"crc{n}": crc})
        else:  # none (the checkpoint is still looked up), or many
            rows = None
            params.update({"idx": [Int8(index) for index, _, _ in encoded],
                           "channel": [channel for _, channel, _ in encoded],
                           "value": [value for _, _, value in encoded], "crc": crcs})
        if is_generated(checkpoint_id):
            seq = parse_id(checkpoint_id)
            if seq is None:  # generated-looking, but no seq has that id
                raise self._not_found(thread_id, namespace, checkpoint_id, "checkpoint_id")
            by, params["seq"] = "seq", Int8(seq)
        else:
            by, params["key"] = "key", checkpoint_id
        ((found,),) = self._write_statement(
            "putting pending writes", self._put_writes[by, replace, rows], params,
            wrote=lambda rows: rows[0][0] is not None and bool(encoded))
        if found is None:
            raise self._not_found(thread_id, namespace, checkpoint_id, "checkpoint_id")

    def append_log(self, thread_id: str, event: bytes) -> int:
        """Append an event to the thread's log; return its seq. One round trip (one
        statement: sql._APPEND_LOG, its checksum completed by the server); inside the calling
        thread's transaction block, two (:meth:`_write`, a CRC-32 computed here)."""
        check_text(thread_id=thread_id)
        if self._pinned() is None:
            ((seq,),) = self._write_statement(  # ints as bigints: see _put_at_once
                "appending a log event", self._append_log,
                {"thread": thread_id, "event": event,
                 "crc": integrity.log_client_crc(thread_id, event)},
                wrote=lambda rows: True)
            return seq

        def work(tx: _Tx) -> int:
            seq, created = tx.row
            tx.later(f"INSERT INTO {_S}.log (seq, thread_id, created_at, event, checksum) "
                     "VALUES (%s, %s, %s, %s, %s)",
                     (seq, thread_id, created, event,
                      integrity.log_checksum(seq, thread_id, created, event)))
            return seq

        return self._write("appending a log event", work, threads=(thread_id,),
                           first=(_NEXT_LOG, ()))

    def delete_thread(self, thread_id: str) -> int:
        """Delete the thread's checkpoints (their writes cascade) and log; return how many
        checkpoints were deleted."""
        if _has_nul(thread_id):
            return 0  # no stored text holds NUL (check_text): there is no such thread

        def work(conn: Any) -> int:
            both = (thread_id, thread_id)
            with pg_files.collecting(conn, f"checkpoint_{_THREAD_SEQS}", both):
                deleted = conn.execute(_DELETE_CHECKPOINTS, both).rowcount
            conn.execute(_DELETE_LOG, both)
            return deleted

        return self._write("deleting a thread", work, threads=(thread_id,))

    def prune(self, thread_id: str, keep_last: int) -> int:
        """Keep the newest ``keep_last`` checkpoints of each namespace of the thread."""
        if _has_nul(thread_id):
            return 0  # no such thread, as in delete_thread

        params = (thread_id, thread_id, min(keep_last, INT64_MAX))

        def work(conn: Any) -> int:
            # The same condition on files' column: "checkpoint_seq = ANY(...)".
            with pg_files.collecting(conn, f"checkpoint_{_PRUNED}", params):
                return conn.execute(f"DELETE FROM {_S}.checkpoints WHERE {_PRUNED}",
                                    params).rowcount

        return self._write("pruning a thread", work, threads=(thread_id,))

    def copy_thread(self, source: str, target: str, verify: Callable[[tuple], None],
                    verify_writes: Callable[[str, list[tuple]], None]) -> int:
        """Copy the source thread's checkpoints (new seqs, in order, parents remapped) and
        their writes to the empty target thread; ``verify`` / ``verify_writes`` (the core's
        checksum checks) see every source row first and raise to copy nothing. Both threads
        are locked, in sorted order."""
        check_text(source_thread_id=source, target_thread_id=target)

        def work(conn: Any) -> int:
            if conn.execute(_HAS_CHECKPOINTS, (target, target)).fetchone() is not None:
                raise InvalidArgumentError(
                    f"target thread {target!r} already has checkpoints on {self.server}; "
                    "copy to a new thread id (or delete_thread it first). Nothing was "
                    "written.", path=self.server)
            copied: dict[int, int] = {}
            with _scan(conn, _THREAD_CHECKPOINTS, (source, source)) as rows:
                for row in rows:
                    verify(row)
                    old, _, namespace, parent, created, state, meta, _, key, parent_key = row
                    parent = copied.get(parent, parent)
                    seq = copied[old] = conn.execute(_NEXT_CHECKPOINT).fetchone()[0]
                    conn.execute(_INSERT_CHECKPOINT, (
                        seq, target, namespace, parent, created, state, meta,
                        integrity.checkpoint_checksum(seq, target, namespace, parent, created,
                                                      state, meta, key, parent_key),
                        key, parent_key))
                    writes = conn.execute(f"SELECT {_WRITE_COLUMNS} FROM {_S}.writes AS w "
                                          "WHERE w.checkpoint_seq = %s", (old,)).fetchall()
                    verify_writes(key or format_id(old), writes)
                    if writes:
                        with conn.cursor() as cursor:
                            cursor.executemany(_INSERT_WRITE, [
                                (seq, task_id, index, channel, value, task_path,
                                 integrity.write_checksum(seq, task_id, index, channel, task_path,
                                                          value))
                                for _, task_id, index, channel, value, task_path, _ in writes])
            pg_files.copy(conn, copied, self.server)
            return len(copied)

        return self._write("copying a thread", work, threads=(source, target))

    def delete_matching(self, thread_id: str | None, matches: Callable[[tuple], bool]
                        ) -> int:
        """Delete every checkpoint (of ``thread_id``, or of every thread) whose row
        ``matches`` (the core verifies its checksum and compares its metadata) and detach the
        remaining children of deleted ones; return how many were deleted. The thread is
        locked first (every thread: :data:`ALL_THREADS_LOCK`, exclusively), so no put into it
        can link a new child to a checkpoint being deleted."""
        if thread_id is not None and _has_nul(thread_id):
            return 0  # no such thread, as in delete_thread

        def work(conn: Any) -> int:
            query = f"SELECT {_CHECKPOINT_COLUMNS} FROM {_S}.checkpoints AS c ORDER BY c.seq"
            params: tuple = ()
            if thread_id is not None:
                self._lock_threads(conn, thread_id)
                query, params = _THREAD_CHECKPOINTS, (thread_id, thread_id)
            doomed: set[int] = set()
            orphans = []
            with _scan(conn, query, params) as rows:
                for row in rows:
                    if matches(row):
                        doomed.add(row[0])
                    elif row[3] in doomed:  # seq order: a parent is classified before its child
                        seq, thread, ns, _, created, state, meta, _, key, _ = row
                        orphans.append((integrity.checkpoint_checksum(  # detached: its new one
                            seq, thread, ns, None, created, state, meta, key, None), seq))
            if not doomed:
                return 0
            with conn.cursor() as cursor:
                if orphans:
                    cursor.executemany(
                        f"UPDATE {_S}.checkpoints SET parent_seq = NULL, parent_key = NULL, "
                        "checksum = %s WHERE seq = %s",
                        orphans)
                with pg_files.collecting(conn, "checkpoint_seq = ANY(%s)", (sorted(doomed),)):
                    cursor.execute(f"DELETE FROM {_S}.checkpoints WHERE seq = ANY(%s)",
                                   (sorted(doomed),))
            return len(doomed)

        return self._write("deleting checkpoints by metadata", work,
                           every_thread=thread_id is None)
