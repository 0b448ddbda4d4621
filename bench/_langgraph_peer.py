"""The LangGraph baseline for bench/run.py, in its own process.

``langgraph.checkpoint.sqlite.SqliteSaver`` runs on the stdlib ``sqlite3`` module. It is measured
here, in a separate interpreter and on separate files, because a process must never hold both
the stdlib's SQLite and APSW's SQLite on one database (each drops the other's POSIX locks); this
process never imports APSW or sqlitesaver, and says so in its reply to ``init``.

Used as its documentation shows: ``sqlite3.connect(path, check_same_thread=False)`` and one
``SqliteSaver`` per file, shared by all threads (it serialises them with its own lock). Its
``setup()`` sets WAL; ``synchronous`` is read back and set to FULL if the build's default is
lower, so its puts are as durable as the Saver's (an fsync of the WAL at every commit).

Checkpoints are bench/_checkpoint.py's (an ``empty_checkpoint()`` whose ``channel_values`` are
the state), as bench/run.py stores them through sqlitesaver's adapter. The read file holds two
threads of ``list_count`` checkpoints: one without pending writes (``get``, ``list``) and one
whose latest checkpoint has bench/_checkpoint.py's two writes, stored with ``put_writes``
(``get_writes``).

Protocol (see :mod:`_common`): ``init`` -> ``{"installed": bool, ...}``; ``run`` with ``config``
in put1, put8, get, get_writes, list, big and ``until`` -> an Outcome; ``cleanup`` (config big)
deletes the 1 MiB thread between rounds; ``quit``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from importlib import metadata as dist_metadata
from typing import Any

from _checkpoint import Checkpoints, fill
from _common import Channel, run_threads, serve

LIST_THREAD = "lg-read"
WRITES_THREAD = "lg-read-writes"
BIG_THREAD = "lg-big"


def main() -> int:
    channel = Channel.for_worker()
    init = channel.receive()
    if init is None:
        return 0
    try:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver
    except ImportError as exc:
        channel.send({"installed": False, "error": f"{type(exc).__name__}: {exc}"})
        return 0

    with open(init["states"], encoding="utf-8") as f:
        states = json.load(f)
    metadata: dict[str, Any] = init["metadata"]
    connections: list[sqlite3.Connection] = []
    pragmas: dict[str, Any] = {}

    def open_saver(name: str) -> SqliteSaver:
        conn = sqlite3.connect(os.path.join(init["dir"], f"langgraph-{name}.db"),
                               check_same_thread=False)
        connections.append(conn)
        saver = SqliteSaver(conn)
        saver.setup()
        default_sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        if default_sync < 2:
            conn.execute("PRAGMA synchronous=FULL")
        pragmas[name] = {
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
            "synchronous": conn.execute("PRAGMA synchronous").fetchone()[0],
            "synchronous_default": default_sync}
        return saver

    def put_op(saver: SqliteSaver, thread_id: str, values: dict) -> Callable[[], None]:
        """One durable put per call, of the thread's next checkpoint (bench/_checkpoint.py)."""
        make = Checkpoints(values).next
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}

        def op() -> None:
            saver.put(config, make(), metadata, {})
        return op

    small, big = states["small"], states["big"]
    put1 = open_saver("put1")
    put8 = open_saver("put8")
    read = open_saver("read")
    bigs = open_saver("big")
    read_config = fill(read, LIST_THREAD, small, metadata, init["list_count"], writes=False)
    writes_config = fill(read, WRITES_THREAD, small, metadata, init["list_count"], writes=True)
    if len(list(read.list(read_config, limit=100))) != min(100, init["list_count"]):
        raise SystemExit("LangGraph peer: the read thread does not list back")

    def get_op() -> None:
        read.get_tuple(read_config)

    def get_writes_op() -> None:
        read.get_tuple(writes_config)

    def list_op() -> None:
        list(read.list(read_config, limit=100))

    configs: dict[str, list[Callable[[], object]]] = {
        "put1": [put_op(put1, "lg1-t00", small)],
        "put8": [put_op(put8, f"lg8-t{i:02d}", small) for i in range(init["threads"])],
        "get": [get_op],
        "get_writes": [get_writes_op],
        "list": [list_op],
        "big": [put_op(bigs, BIG_THREAD, big)],
    }

    def blob(values: dict) -> int:
        return len(put1.serde.dumps_typed(Checkpoints(values).next())[1])

    versions = {}
    for dist in ("langgraph-checkpoint-sqlite", "langgraph-checkpoint", "ormsgpack"):
        try:
            versions[dist] = dist_metadata.version(dist)
        except dist_metadata.PackageNotFoundError:
            versions[dist] = "?"
    channel.send({"installed": True, "versions": versions, "sqlite": sqlite3.sqlite_version,
                  "pragmas": pragmas, "blob_bytes": {"small": blob(small), "big": blob(big)},
                  "apsw_loaded": "apsw" in sys.modules or "sqlitesaver" in sys.modules})

    def run(message: dict[str, Any]) -> dict[str, Any]:
        return run_threads(configs[message["config"]], until=message["until"]).to_json()

    def cleanup(message: dict[str, Any]) -> dict[str, Any]:
        bigs.delete_thread(BIG_THREAD)  # keeps the file from growing by ~50 MiB a round
        return {}

    def close() -> None:
        for conn in connections:
            conn.close()

    serve(channel, {"run": run, "cleanup": cleanup}, close)
    return 0


if __name__ == "__main__":
    sys.exit(main())
