"""Would a one-round-trip put be faster on PostgreSQL? The statement shapes, timed side by side.

    python bench/pg_put_shapes.py [--puts 1000] [--rounds 3]

Needs psycopg (``pip install '.[postgres]'``) and PostgreSQL's server binaries (a throwaway
cluster is started: sqlitesaver/pgcluster.py). A put of sqlitesaver's PostgreSQL engine takes
two round trips: the ``BEGIN`` string (timeouts, the advisory locks, the next seq, the time and
the parent and replaced checkpoint looked up) and, once the client has computed the checksum
over the seq and time the server chose, the ``INSERT ...; COMMIT`` string. A one-round-trip put
would need the checksum's server-side part computed by the server (here: a sha256 of the seq,
time and the client's CRC of the payloads, all builtin functions) and everything sent in one
libpq pipeline (prepared statements, binary parameters, one Sync), or be one statement with
the settings and locks in nested subqueries (session 15). This script times these shapes
on a replica of the checkpoints table (4 KiB state, caller-supplied ids with a parent, as
LangGraph's puts), and two bounds: one autocommit INSERT, and the one-pipeline shape without
its locks and timeouts. Best of ``--rounds`` rounds of ``--puts`` puts each, wall and the
client's CPU per put. Nothing asserts; it measures a design question (research/
postgres_engine_plan.md, "Session 13").
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import zlib
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from sqlitesaver.pgcluster import Cluster  # noqa: E402

SCHEMA = """
CREATE SCHEMA s;
CREATE SEQUENCE s.seq AS bigint MINVALUE 1 NO CYCLE;
CREATE TABLE s.checkpoints (seq bigint PRIMARY KEY, thread_id text NOT NULL,
  namespace text NOT NULL, parent_seq bigint, created_at bigint NOT NULL, state bytea NOT NULL,
  metadata bytea NOT NULL, checksum bigint NOT NULL, key text, parent_key text);
CREATE INDEX checkpoints_by_thread ON s.checkpoints (thread_id, namespace, seq);
CREATE UNIQUE INDEX checkpoints_by_key ON s.checkpoints (thread_id, namespace, key)
  WHERE key IS NOT NULL;
"""
TIMEOUTS = ("SET LOCAL synchronous_commit TO on; SET LOCAL statement_timeout TO '30000ms'; "
            "SET LOCAL lock_timeout TO '5000ms'")
SET_CONFIG = ("SELECT set_config('synchronous_commit', 'on', true), "
              "set_config('statement_timeout', '30000ms', true), "
              "set_config('lock_timeout', '5000ms', true)")
LOOKUP = ("SELECT nextval('s.seq'), (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, "
          "(SELECT seq FROM s.checkpoints WHERE thread_id = %s AND namespace = %s AND key = %s), "
          "(SELECT ARRAY[seq, created_at] FROM s.checkpoints WHERE thread_id = %s "
          "AND namespace = %s AND key = %s)")
INSERT = ("INSERT INTO s.checkpoints VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
ONE_STATEMENT = (
    "INSERT INTO s.checkpoints AS c (seq, thread_id, namespace, parent_seq, created_at, state, "
    "metadata, checksum, key, parent_key) SELECT n.seq, %(t)s, %(ns)s, p.seq, n.created, "
    "%(state)s, %(meta)s, ('x' || substr(encode(sha256(int8send(n.seq) || int8send(n.created) "
    "|| int4send(%(crc)s::int)), 'hex'), 1, 15))::bit(60)::bigint, %(k)s, %(pk)s "
    "FROM (SELECT nextval('s.seq') AS seq, "
    "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS created) n "
    "LEFT JOIN s.checkpoints p ON p.thread_id = %(t)s AND p.namespace = %(ns)s "
    "AND p.key = %(pk)s ON CONFLICT (thread_id, namespace, key) WHERE key IS NOT NULL "
    "DO UPDATE SET parent_seq = excluded.parent_seq, state = excluded.state, "
    "metadata = excluded.metadata, checksum = excluded.checksum "
    "RETURNING c.seq, c.created_at, c.parent_seq")


# The same put as ONE statement, no pipeline, no BEGIN/COMMIT (autocommit: the statement is its
# own transaction): the settings and both locks in nested subqueries of its FROM, so that each
# is done before the next (a subquery whose target list calls a volatile function is never
# pulled up into its parent, so it produces its row first), and the seq drawn above them.
# lock_timeout set by set_config inside the statement bounds the lock waits that follow it in
# the same statement, and synchronous_commit is read at the commit; statement_timeout cannot
# bound the statement that sets it (its timer started first).
ONE_STATEMENT_LOCKED = ONE_STATEMENT.replace(
    "FROM (SELECT nextval('s.seq') AS seq, "
    "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS created) n ",
    "FROM (SELECT nextval('s.seq') AS seq, "
    "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS created FROM "
    "(SELECT pg_advisory_xact_lock(3, hashtext(%(t)s)) AS locked FROM "
    "(SELECT pg_advisory_xact_lock_shared(1, 2) AS shared FROM "
    "(SELECT set_config('synchronous_commit', 'on', true), "
    "set_config('lock_timeout', '5000ms', true)) AS settings) AS all_threads) AS thread) n ")
assert ONE_STATEMENT_LOCKED != ONE_STATEMENT


def shapes(conn, state: bytes, meta: bytes) -> dict[str, Callable[[], None]]:
    from psycopg import ClientCursor, sql

    keys = itertools.count(1)
    literal = ClientCursor(conn)

    def two_round_trips() -> None:  # the engine's shape today
        n = next(keys)
        key, parent = f"k{n}", f"k{n - 1}"
        thread = sql.Literal("thread").as_string(conn)
        begin = (f"BEGIN; {TIMEOUTS}; SELECT pg_advisory_xact_lock_shared(1, 2); "
                 f"SELECT pg_advisory_xact_lock(3, hashtext({thread})); "
                 + literal.mogrify(LOOKUP, ("thread", "", parent, "thread", "", key)))
        cursor = conn.execute(begin, prepare=False)
        while cursor.nextset():
            pass
        seq, created, parent_seq, _ = cursor.fetchone()
        checksum = zlib.crc32(meta, zlib.crc32(state, zlib.crc32(seq.to_bytes(8, "big")
                                                                 + created.to_bytes(8, "big"))))
        conn.execute(literal.mogrify(INSERT, (seq, "thread", "", parent_seq, created, state,
                                              meta, checksum, key, parent)) + "; COMMIT",
                     prepare=False)

    def one_pipeline(locks: bool = True) -> Callable[[], None]:
        def put() -> None:
            n = next(keys)
            crc = zlib.crc32(meta, zlib.crc32(state)) - (1 << 31)
            with conn.pipeline():
                conn.execute("BEGIN")
                if locks:
                    conn.execute(SET_CONFIG)
                    conn.execute("SELECT pg_advisory_xact_lock_shared(1, 2)")
                    conn.execute("SELECT pg_advisory_xact_lock(3, hashtext(%s))", ("thread",))
                cursor = conn.execute(ONE_STATEMENT, {
                    "t": "thread", "ns": "", "state": state, "meta": meta, "crc": crc,
                    "k": f"k{n}", "pk": f"k{n - 1}"}, binary=True)
                conn.execute("COMMIT")
            cursor.fetchone()
        return put

    def one_statement() -> None:
        n = next(keys)
        crc = zlib.crc32(meta, zlib.crc32(state)) - (1 << 31)
        conn.execute(ONE_STATEMENT_LOCKED, {
            "t": "thread", "ns": "", "state": state, "meta": meta, "crc": crc,
            "k": f"k{n}", "pk": f"k{n - 1}"}, binary=True).fetchone()

    def autocommit_insert() -> None:
        conn.execute("INSERT INTO s.checkpoints VALUES (nextval('s.seq'), %s, %s, NULL, 0, %s, "
                      "%s, 0, %s, NULL)", ("thread", "", state, meta, f"k{next(keys)}"),
                      binary=True)

    return {"two round trips (the engine's shape)": two_round_trips,
            "one pipeline (server-side digest)": one_pipeline(),
            "one pipeline, no locks or timeouts": one_pipeline(locks=False),
            "one statement (settings, locks inside)": one_statement,
            "one autocommit INSERT (bound)": autocommit_insert}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import psycopg

    print("$ python " + " ".join(sys.argv))
    with Cluster() as cluster:
        conn = psycopg.connect(cluster.url, autocommit=True, prepare_threshold=0)
        conn.execute(SCHEMA, prepare=False)
        contenders = shapes(conn, os.urandom(4096), os.urandom(100))
        best: dict[str, tuple[float, float]] = {}
        for round_ in range(args.rounds):
            order = list(contenders) if round_ % 2 == 0 else list(contenders)[::-1]
            for name in order:
                put = contenders[name]
                for _ in range(50):
                    put()
                wall, cpu = time.perf_counter(), time.thread_time()
                for _ in range(args.puts):
                    put()
                result = ((time.perf_counter() - wall) / args.puts * 1e6,
                          (time.thread_time() - cpu) / args.puts * 1e6)
                best[name] = min(best.get(name, result), result)
        for name, (wall, cpu) in best.items():
            print(f"{name:40} wall {wall:7.1f} us  client CPU {cpu:6.1f} us per put")
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
