"""The least a durable LangGraph checkpointer on APSW can do: the ceiling of the graph-steps rows.

:class:`BareCheckpointer` is LangGraph's own ``SqliteSaver`` (langgraph-checkpoint-sqlite: the
same tables, statements, ``serde.dumps_typed`` of checkpoints and write values, JSON metadata)
moved onto APSW with the two things that let many graphs share one file fast, and nothing else:

- **group commit**: bench/core.py's ``BareGroupCommit`` (the least a group commit can do in
  Python), whose items here are each call's statements: a caller that finds no leader leads,
  lets the queue fill (yielding the GIL until no more calls arrive, at most 0.5 ms), runs every
  queued call's statements in one ``BEGIN IMMEDIATE ... COMMIT`` and releases their callers.
  Each call returns only after the COMMIT of its batch returned;
- **reads without a lock**: each thread reads on a connection of its own (WAL: readers never
  wait for the writer).

``journal_mode=WAL`` and ``synchronous=FULL``: an fsync of the WAL at every COMMIT, as
sqlitesaver's default. Left out, and so not paid for, against sqlitesaver's adapter: checksums,
exact-type encoding (codec), ids that follow commit order, the rendezvous of writes that arrive
before their checkpoint, per-call savepoints (a failing call fails its whole batch here), lock
retries, recovery at open, interruption safety. A bench baseline, never a store: it is not
tested for crashes and has no error handling to speak of.

The gathering wait was measured against none (a leader taking only what is queued) on the
8-thread graph rows, 7 interleaved runs each of 50 invokes per thread (ad hoc, session 13):
medians 515 against 491 steps/s (sync) and 480 against 432 (async). It is kept: a ceiling
should be the better of the two.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import apsw
from langgraph.checkpoint.base import (WRITES_IDX_MAP, BaseCheckpointSaver, ChannelVersions,
                                       Checkpoint, CheckpointMetadata, CheckpointTuple,
                                       get_checkpoint_id, get_checkpoint_metadata)

from core import BareGroupCommit  # bench/core.py

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL, parent_checkpoint_id TEXT, type TEXT,
    checkpoint BLOB, metadata BLOB,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id));
CREATE TABLE IF NOT EXISTS writes (
    thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL, task_id TEXT NOT NULL, idx INTEGER NOT NULL,
    channel TEXT NOT NULL, type TEXT, value BLOB, task_path TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx));
"""
_PUT = ("INSERT OR REPLACE INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, "
        "parent_checkpoint_id, type, checkpoint, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)")
_WRITE = ("INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, "
          "channel, type, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_SELECT = ("SELECT thread_id, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata "
           "FROM checkpoints WHERE thread_id = ? AND checkpoint_ns = ? ")
_PENDING = ("SELECT task_id, channel, type, value FROM writes WHERE thread_id = ? AND "
            "checkpoint_ns = ? AND checkpoint_id = ? ORDER BY task_id, idx")


def _open(path: str) -> apsw.Connection:
    conn = apsw.Connection(path)
    conn.set_busy_timeout(5000)
    conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL")
    return conn


class StatementGroup(BareGroupCommit):
    """``BareGroupCommit`` whose items are lists of ``(query, params)``: one call's statements."""

    def _run(self, conn: apsw.Connection, items: list) -> None:
        for statements in items:
            for query, params in statements:
                conn.execute(query, params)


class BareCheckpointer(BaseCheckpointSaver):
    """See the module docstring. A context manager: closes its connections on exit."""

    Group = StatementGroup

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._writer = _open(path)
        self._writer.execute(SCHEMA)
        self._group = self.Group(self._writer)
        self._lock = threading.Lock()  # the list of read connections
        self._local = threading.local()
        self._readers: list[apsw.Connection] = []

    def __enter__(self) -> "BareCheckpointer":
        return self

    def __exit__(self, *exc: object) -> None:
        for conn in self._readers:
            conn.close()
        self._writer.close()

    # --- writes: group commit ------------------------------------------------------------

    def _commit(self, statements: list[tuple[str, Sequence[Any]]]) -> None:
        self._group.submit(statements)

    def put(self, config: dict, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> dict:
        configurable = config["configurable"]
        thread_id, checkpoint_ns = str(configurable["thread_id"]), configurable["checkpoint_ns"]
        type_, data = self.serde.dumps_typed(checkpoint)
        meta = json.dumps(get_checkpoint_metadata(config, metadata),
                          ensure_ascii=False).encode("utf-8", "ignore")
        self._commit([(_PUT, (thread_id, checkpoint_ns, checkpoint["id"],
                              configurable.get("checkpoint_id"), type_, data, meta))])
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                                 "checkpoint_id": checkpoint["id"]}}

    def put_writes(self, config: dict, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        configurable = config["configurable"]
        verb = ("INSERT OR REPLACE " if all(w[0] in WRITES_IDX_MAP for w in writes)
                else "INSERT OR IGNORE ")
        key = (str(configurable["thread_id"]), str(configurable["checkpoint_ns"]),
               str(configurable["checkpoint_id"]), task_id, task_path)
        self._commit([(verb + _WRITE, (*key, WRITES_IDX_MAP.get(channel, idx), channel,
                                       *self.serde.dumps_typed(value)))
                      for idx, (channel, value) in enumerate(writes)])

    # --- reads: a connection per thread -------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[apsw.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _open(self.path)
            with self._lock:
                self._readers.append(conn)
        conn.execute("BEGIN")  # one snapshot for the checkpoint and its writes
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _tuple(self, conn: apsw.Connection, checkpoint_ns: str, row: tuple) -> CheckpointTuple:
        thread_id, checkpoint_id, parent_id, type_, data, meta = row
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                                   "checkpoint_id": checkpoint_id}}
        pending = [(task_id, channel, self.serde.loads_typed((t, value)))
                   for task_id, channel, t, value in conn.execute(
                       _PENDING, (thread_id, checkpoint_ns, checkpoint_id))]
        parent = ({"configurable": {"thread_id": thread_id, "checkpoint_ns": checkpoint_ns,
                                    "checkpoint_id": parent_id}} if parent_id else None)
        return CheckpointTuple(config, self.serde.loads_typed((type_, data)),
                               json.loads(meta) if meta is not None else {}, parent, pending)

    def get_tuple(self, config: dict) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        with self._reading() as conn:
            if checkpoint_id:
                rows = conn.execute(_SELECT + "AND checkpoint_id = ?",
                                    (thread_id, checkpoint_ns, checkpoint_id)).fetchall()
            else:
                rows = conn.execute(_SELECT + "ORDER BY checkpoint_id DESC LIMIT 1",
                                    (thread_id, checkpoint_ns)).fetchall()
            return self._tuple(conn, checkpoint_ns, rows[0]) if rows else None

    def list(self, config: dict | None, *, filter: dict | None = None,
             before: dict | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        """Only what the bench asks: a thread's checkpoints, newest first."""
        configurable = (config or {})["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns = configurable.get("checkpoint_ns", "")
        with self._reading() as conn:
            rows = conn.execute(_SELECT + "ORDER BY checkpoint_id DESC LIMIT ?",
                                (thread_id, checkpoint_ns, -1 if limit is None else limit)
                                ).fetchall()
            found = [self._tuple(conn, checkpoint_ns, row) for row in rows]
        yield from found
