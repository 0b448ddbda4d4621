"""Where a 1-thread durable put's time goes on PostgreSQL, layer by layer, in one run.

    python bench/pg_put_layers.py [--puts 1000] [--rounds 5] [--db URL]

Needs ``pip install '.[bench,postgres]'`` and PostgreSQL's server binaries (a throwaway cluster
is started: sqlitesaver/pgcluster.py, durable defaults), or ``--db``: an empty database, where
it leaves its tables. bench/postgres.py's "durable put, 1
thread" row compares this library's LangGraph ``PostgresSaver`` with LangGraph's own and finds
them at the same rate within this machine's spread (issue #17 asks for >= 1.0x); this script
says why, by timing each layer of our put beside the baselines, on one server:

* ``bare INSERT``: one autocommit INSERT of ``msgpack.packb(state)`` on a connection of its
  own (bench/postgres.py's ceiling);
* ``engine statement``: the engine's one-statement put (``Connections._put[None]``: settings,
  both advisory locks, the seq, the server-side checksum, the insert) sent on a connection of
  its own with the same prepared RawCursor, pre-encoded: what our put costs the server;
* ``Saver.put``: the core put of the state (encode, checksum, the pool, the statement);
* ``adapter put`` / ``LangGraph put``: ``put`` of bench/_checkpoint.py's checkpoint through
  sqlitesaver.langgraph's PostgresSaver and through LangGraph's.

Each row runs in a thread of its own, as bench/postgres.py's do (signal deferral, which only
the main thread pays for, is then not counted), ``--puts`` puts per round after 50 warm-up
ones, the rows' order reversed every other round. Printed per put, medians over the rounds:
wall time, the thread's CPU time (``time.thread_time``: Python, psycopg and the kernel's work
for its socket calls) and the rest (wall - CPU: the server's work, the WAL flush, the wait
for the answer), and the WAL bytes written per put (``pg_current_wal_lsn()`` before and after
the row: the whole cluster's, and only that row runs meanwhile; warm-up included). Nothing
asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (HERE, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import msgpack  # noqa: E402

import core  # noqa: E402  (bench/core.py: the 4 KiB state)
from _checkpoint import Checkpoints, config  # noqa: E402

METADATA = {"source": "loop", "step": 3, "run_id": "bench"}
WAL = "SELECT pg_current_wal_lsn()"
WAL_SINCE = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::bigint"


def in_thread(puts: int, put: Callable[[], object]) -> tuple[float, float]:
    """(wall, thread CPU) seconds of ``puts`` calls of ``put`` in a new thread, after 50."""
    result: list[tuple[float, float]] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(50):
                put()
            wall, cpu = time.perf_counter(), time.thread_time()
            for _ in range(puts):
                put()
            result.append((time.perf_counter() - wall, time.thread_time() - cpu))
        except BaseException as exc:  # reported by the main thread
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return result[0]


def rows(url: str, stack) -> dict[str, Callable[[], object]]:
    import psycopg
    from psycopg import RawCursor
    from psycopg.types.numeric import Int8

    from langgraph.checkpoint.postgres import PostgresSaver as TheirSaver
    from sqlitesaver import Saver
    from sqlitesaver.langgraph import PostgresSaver as OurSaver

    state = core.make_state()
    packed = msgpack.packb(state)
    found: dict[str, Callable[[], object]] = {}

    bare = stack.enter_context(psycopg.connect(url, autocommit=True))
    bare.execute("CREATE TABLE layers_bare (thread_id text NOT NULL, seq bigserial, "
                 "state bytea NOT NULL, PRIMARY KEY (thread_id, seq))")
    insert, packb = "INSERT INTO layers_bare (thread_id, state) VALUES (%s, %s)", msgpack.packb
    found["bare INSERT (ceiling)"] = lambda: bare.execute(insert, ("t", packb(state)),
                                                          prepare=True)

    saver = stack.enter_context(Saver(url))
    query, names = saver._engine._put[None]  # the statement the engine sends
    raw = stack.enter_context(psycopg.connect(url, autocommit=True))
    cursor = RawCursor(raw)
    params = {"thread": "raw", "ns": "", "state": packed, "metadata": msgpack.packb(METADATA),
              "key": None, "parent_key": None, "crc": Int8(1)}
    values = [params[name] for name in names]
    found["engine statement, pre-encoded"] = lambda: cursor.execute(query, values,
                                                                    prepare=True, binary=True)
    found["Saver.put"] = lambda: saver.put("core", state)

    for label, kind in (("adapter put", OurSaver), ("LangGraph put", TheirSaver)):
        checkpointer = stack.enter_context(kind.from_conn_string(url))
        if kind is TheirSaver:
            checkpointer.setup()
        checkpoints = Checkpoints(state, versioned=True)
        thread = config(f"{label}-thread")

        def put(checkpointer=checkpointer, checkpoints=checkpoints, thread=thread) -> None:
            checkpointer.put(thread, checkpoints.next(), METADATA, checkpoints.new_versions)
        found[label] = put
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", help="an empty PostgreSQL database (default: a throwaway cluster)")
    args = parser.parse_args(argv)
    import contextlib

    import psycopg

    from sqlitesaver.pgcluster import Cluster

    print("$ python bench/pg_put_layers.py " + " ".join(argv if argv is not None
                                                          else sys.argv[1:]), flush=True)
    with contextlib.ExitStack() as stack:
        url = args.db or stack.enter_context(Cluster()).url
        monitor = stack.enter_context(psycopg.connect(url, autocommit=True))
        contenders = rows(url, stack)
        figures: dict[str, list[tuple[float, float, float]]] = {n: [] for n in contenders}
        for round_no in range(args.rounds):
            order = list(contenders) if round_no % 2 == 0 else list(contenders)[::-1]
            for name in order:
                (before,) = monitor.execute(WAL).fetchone()
                wall, cpu = in_thread(args.puts, contenders[name])
                (size,) = monitor.execute(WAL_SINCE, (before,)).fetchone()
                figures[name].append((wall / args.puts * 1e6, cpu / args.puts * 1e6,
                                      size / (args.puts + 50)))
        print(f"{'per put (median of ' + str(args.rounds) + ' rounds)':34} {'wall us':>8} "
              f"{'CPU us':>7} {'rest us':>8} {'WAL bytes':>10}")
        for name, rounds in figures.items():
            wall, cpu, size = (statistics.median(r[i] for r in rounds) for i in range(3))
            rest = statistics.median(r[0] - r[1] for r in rounds)
            print(f"{name:34} {wall:8.0f} {cpu:7.0f} {rest:8.0f} {size:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
