"""Where a get-latest's time goes on PostgreSQL, layer by layer, in one run.

    python bench/pg_get_layers.py [--gets 2000] [--rounds 3] [--grow 6000] [--burst 8] [--db URL]

Needs ``pip install '.[bench,postgres]'`` and PostgreSQL's server binaries (a throwaway cluster
is started: sqlitesaver/pgcluster.py, durable defaults), or ``--db``: an empty database, where
it leaves its tables. bench/postgres.py's "get latest" row compares this library's LangGraph
``PostgresSaver`` with LangGraph's own; this script says where each one's time goes, by timing
each layer of our get beside the baselines, on one server, each on a thread of 5 checkpoints
of bench/_checkpoint.py's 4 KiB state:

* ``bare SELECT + unpackb``: one prepared binary SELECT of the newest row of a thread on a
  connection of its own, its value decoded with ``msgpack.unpackb`` (bench/postgres.py's
  ceiling);
* ``engine get_rows``: the engine's read (``Engine.get_rows``: the pooled connection, the one
  statement, the rows), not decoded;
* ``Saver.get``: the core get (checksums verified, the state decoded, the record built);
* ``adapter get_tuple`` / ``LangGraph get_tuple``: ``get_tuple`` of the thread's latest
  checkpoint through sqlitesaver.langgraph's PostgresSaver and through LangGraph's.

``--grow N`` first puts N more checkpoints per contender on 6 threads of their own and runs
``VACUUM ANALYZE`` (bench/postgres.py's growth step: the plans of a database in use). ``--burst
K`` then runs K threads of gets at once on our savers, so that their pools hold K connections
when the 1-thread layers are timed, as after bench/postgres.py's 8-thread rows (the pool's
lending order then matters: sqlitesaver/postgres/pool_class.py). Each layer runs in a thread of
its own, ``--gets`` calls per round after 50 warm-up ones, the layers' order reversed every
other round. Printed per get, medians over the rounds: wall time, the thread's CPU time
(``time.thread_time``) and the rest (wall - CPU: the server's work and the wait for the
answer). Nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (HERE, REPO):
    if path not in sys.path:
        sys.path.insert(0, path)

import msgpack  # noqa: E402

import core  # noqa: E402  (bench/core.py: the 4 KiB state)
from _checkpoint import Checkpoints, config  # noqa: E402
from pg_put_layers import METADATA, in_thread  # noqa: E402

GROW_THREADS = 6


def rows(url: str, stack, grow: int, burst: int) -> dict[str, Callable[[], object]]:
    import psycopg

    from langgraph.checkpoint.postgres import PostgresSaver as TheirSaver
    from sqlitesaver.langgraph import PostgresSaver as OurSaver

    state = core.make_state()
    found: dict[str, Callable[[], object]] = {}

    bare = stack.enter_context(psycopg.connect(url, autocommit=True))
    bare.execute("CREATE TABLE layers_bare_get (thread_id text NOT NULL, seq bigserial, "
                 "state bytea NOT NULL, PRIMARY KEY (thread_id, seq))")
    for _ in range(5):
        bare.execute("INSERT INTO layers_bare_get (thread_id, state) VALUES ('t', %s)",
                     (msgpack.packb(state),))
    select = "SELECT seq, state FROM layers_bare_get WHERE thread_id = %s ORDER BY seq DESC LIMIT 1"
    unpackb = msgpack.unpackb

    def bare_get() -> None:
        for _, value in bare.execute(select, ("t",), prepare=True, binary=True):
            unpackb(value)
    found["bare SELECT + unpackb"] = bare_get

    ours = stack.enter_context(OurSaver.from_conn_string(url))
    theirs = stack.enter_context(TheirSaver.from_conn_string(url))
    theirs.setup()
    for checkpointer, tag in ((ours, "ours"), (theirs, "theirs")):
        checkpoints = Checkpoints(state, versioned=True)
        for _ in range(5):
            checkpointer.put(config(f"{tag}-read"), checkpoints.next(), METADATA,
                             checkpoints.new_versions)
        growing = [Checkpoints(state, versioned=True) for _ in range(GROW_THREADS)]
        for i in range(grow):
            made = growing[i % GROW_THREADS]
            checkpointer.put(config(f"{tag}-grow-{i % GROW_THREADS}"), made.next(), METADATA,
                             made.new_versions)
    if grow:
        bare.execute("VACUUM ANALYZE")
    saver = ours.saver
    engine = saver._engine  # private: tests/test_bench_postgres.py keeps it from rotting
    found["engine get_rows"] = lambda: engine.get_rows("ours-read", "", None)
    found["Saver.get"] = lambda: saver.get("ours-read")
    found["adapter get_tuple"] = lambda: ours.get_tuple(config("ours-read"))
    found["LangGraph get_tuple"] = lambda: theirs.get_tuple(config("theirs-read"))
    if burst > 1:
        gate = threading.Barrier(burst)

        def together() -> None:
            gate.wait()  # all at once, so that the pool opens a connection for each
            for _ in range(200):
                ours.get_tuple(config("ours-read"))
        threads = [threading.Thread(target=together) for _ in range(burst)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grow", type=int, default=0,
                        help="checkpoints put per contender on other threads first, then "
                             "VACUUM ANALYZE")
    parser.add_argument("--burst", type=int, default=0,
                        help="threads of gets at once on our saver before timing")
    parser.add_argument("--db", help="an empty PostgreSQL database (default: a throwaway cluster)")
    args = parser.parse_args(argv)
    import contextlib

    from sqlitesaver.pgcluster import Cluster

    print("$ python bench/pg_get_layers.py " + " ".join(argv if argv is not None
                                                          else sys.argv[1:]), flush=True)
    with contextlib.ExitStack() as stack:
        url = args.db or stack.enter_context(Cluster()).url
        layers = rows(url, stack, args.grow, args.burst)
        figures: dict[str, list[tuple[float, float]]] = {name: [] for name in layers}
        for round_no in range(args.rounds):
            order = list(layers) if round_no % 2 == 0 else list(layers)[::-1]
            for name in order:
                wall, cpu = in_thread(args.gets, layers[name])
                figures[name].append((wall / args.gets * 1e6, cpu / args.gets * 1e6))
        print(f"{'per get (median of ' + str(args.rounds) + ' rounds)':34} {'wall us':>8} "
              f"{'CPU us':>7} {'rest us':>8} {'gets/s':>8}")
        for name, rounds in figures.items():
            wall, cpu = (statistics.median(r[i] for r in rounds) for i in range(2))
            rest = statistics.median(r[0] - r[1] for r in rounds)
            print(f"{name:34} {wall:8.0f} {cpu:7.0f} {rest:8.0f} {1e6 / wall:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
