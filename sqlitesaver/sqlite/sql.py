"""The SQLite engine's SQL: the statements :class:`~sqlitesaver.sqlite.saver.SqliteFileSaver`
sends, and why each is written as it is (the PostgreSQL engine's are
:mod:`sqlitesaver.postgres.sql`).

Text only: nothing here opens or talks to a database. The write path
(:mod:`sqlitesaver.sqlite.saver`), the reads (:mod:`sqlitesaver.sqlite.read_steps`) and the
maintenance (:mod:`sqlitesaver.sqlite.maintenance`) send them; tests/test_pragmas.py checks
that the get and keyed-put statements search their indexes.
"""

from __future__ import annotations

_CHECKPOINT_COLUMNS = ("c.seq, c.thread_id, c.namespace, c.parent_seq, c.created_at, c.state, "
                       "c.metadata, c.checksum, c.key, c.parent_key")
_WRITE_COLUMNS = "w.checkpoint_seq, w.task_id, w.idx, w.channel, w.value, w.task_path, w.checksum"


# The state on a get's first row only. The LEFT JOIN gives a checkpoint with pending writes one
# row per write, and repeated the state on each: a 1 MiB state with 10 writes was read and
# copied 10 times, 4.9 ms against 0.1 ms (ad hoc, bare APSW on a read connection). The first
# row in the statement's order holds the checkpoint's first write, the one the subquery finds
# (one search of the writes' primary key per write row: ~1,500 instructions, ~1% of a get of
# the 4 KiB state with 2 writes). The core reads the checkpoint's columns from the first row.
_STATE_ON_THE_FIRST_ROW = (
    "CASE WHEN w.task_id IS NULL THEN c.state WHEN (w.task_id, w.idx) = (SELECT x.task_id, "
    "x.idx FROM writes AS x WHERE x.checkpoint_seq = c.seq ORDER BY x.task_id, x.idx LIMIT 1) "
    "THEN c.state END")


def _get_query(match: str) -> str:
    """Saver.get's one statement for a WHERE clause on the checkpoint ``c``: the checkpoint
    with each of its pending writes (a LEFT JOIN, so one statement and one snapshot), and the
    checkpoint alone, its write columns NULL, when it has none. The checkpoint's columns repeat
    on every row but its state, which only the first row holds (_STATE_ON_THE_FIRST_ROW); a
    writes table's rows are few, and a second statement costs more. The writes come in
    (task_id, idx) order, as the core returns them: the ORDER BY costs no sort (the inner loop
    walks the writes' primary key under one checkpoint: tests/test_pragmas.py checks the
    plan), and the core does not sort them again."""
    columns = _CHECKPOINT_COLUMNS.replace("c.state", _STATE_ON_THE_FIRST_ROW, 1)
    return (f"SELECT {columns}, {_WRITE_COLUMNS} FROM checkpoints AS c "
            f"LEFT JOIN writes AS w ON w.checkpoint_seq = c.seq WHERE {match} "
            "ORDER BY w.task_id, w.idx")


# The latest by a scalar subquery on the covering index, so the join sees one checkpoint row
# (an ORDER BY ... LIMIT 1 here would limit the joined rows instead).
_GET_LATEST = _get_query("c.seq = (SELECT max(seq) FROM checkpoints WHERE thread_id = ? AND "
                         "namespace = ?)")
_GET_BY_KEY = _get_query("c.thread_id = ? AND c.namespace = ? AND c.key = ?")
# A checkpoint with a caller-supplied id is not also reachable by its seq.
_GET_BY_SEQ = _get_query("c.seq = ? AND c.thread_id = ? AND c.namespace = ? AND c.key IS NULL")
_NEXT_SEQ = ("SELECT max(coalesce((SELECT max(seq) FROM {table}), 0), "
             "(SELECT value FROM high_water WHERE name = '{table}')) + 1")
_RAISE_HIGH_WATER = ("UPDATE high_water SET value = max(value, coalesce((SELECT max(seq) FROM "
                     "{table}), 0)) WHERE name = '{table}'")
_NEXT_SEQ_CHECKPOINTS = _NEXT_SEQ.format(table="checkpoints")
_INSERT_CHECKPOINT = ("INSERT INTO checkpoints (seq, thread_id, namespace, parent_seq, "
                      "created_at, state, metadata, checksum) VALUES (?,?,?,?,?,?,?,?)")
_INSERT_KEYED_CHECKPOINT = ("INSERT INTO checkpoints (seq, thread_id, namespace, parent_seq, "
                            "created_at, state, metadata, checksum, key, parent_key) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?)")
# Every thread id, sorted: a loose index scan. A few threads may hold millions of rows, and
# "SELECT thread_id FROM checkpoints UNION SELECT thread_id FROM log" read every entry of both
# indexes (SCAN ... USING COVERING INDEX: 40,000 for 6 ids). Here each table's ids are walked
# one descent of its index each (checkpoints_by_thread, log_by_thread: min() and "thread_id > ?"
# are SEARCHes of it), and only the ids found are merged and sorted (BINARY, as before).
# A thread id stored as a blob (a damaged file: the column's TEXT affinity turns numbers into
# text) sorts after every text, so the walk still reaches it and threads() still refuses it.
_THREADS = ("WITH RECURSIVE c(id) AS (SELECT min(thread_id) FROM checkpoints UNION ALL "
            "SELECT (SELECT min(thread_id) FROM checkpoints WHERE thread_id > c.id) FROM c "
            "WHERE c.id IS NOT NULL), "
            "l(id) AS (SELECT min(thread_id) FROM log UNION ALL "
            "SELECT (SELECT min(thread_id) FROM log WHERE thread_id > l.id) FROM l "
            "WHERE l.id IS NOT NULL) "
            "SELECT id FROM c WHERE id IS NOT NULL UNION "
            "SELECT id FROM l WHERE id IS NOT NULL ORDER BY 1")
# A keyed put's three lookups as one statement (?1 thread, ?2 namespace, ?3 the key, ?4 the
# parent): the row the key names if it is stored (seq, created_at: a LEFT JOIN on one row, so a
# missing key reads as NULLs), the parent's seq (NULL if there is none), and the next seq. One
# statement cost 8 us against 16 for the three (ad hoc, APSW, a cached statement each).
# `key = ?` implies `key IS NOT NULL`, so SQLite uses the partial index checkpoints_by_key.
_KEYED_LOOKUP = ("SELECT c.seq, c.created_at, {parent}, "
                 + _NEXT_SEQ_CHECKPOINTS.removeprefix("SELECT ")
                 + " FROM (SELECT 1) LEFT JOIN checkpoints AS c "
                 "ON c.thread_id = ?1 AND c.namespace = ?2 AND c.key = ?3")
_KEYED_LOOKUPS = {
    None: _KEYED_LOOKUP.format(parent="NULL"),  # no parent: three parameters
    "key": _KEYED_LOOKUP.format(parent="(SELECT seq FROM checkpoints WHERE thread_id = ?1 AND "
                                       "namespace = ?2 AND key = ?4)"),
    # A checkpoint with a caller-supplied id is not also reachable by its seq.
    "seq": _KEYED_LOOKUP.format(parent="(SELECT seq FROM checkpoints WHERE seq = ?4 AND "
                                       "thread_id = ?1 AND namespace = ?2 AND key IS NULL)"),
}
# The seq alone, from that index: no text (nor any column of the row) to decode.
_SEQ_OF_KEY = "SELECT seq FROM checkpoints WHERE thread_id = ? AND namespace = ? AND key = ?"
_INSERT_WRITE = ("INSERT INTO writes (checkpoint_seq, task_id, idx, channel, value, task_path, "
                 "checksum) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING")
_REPLACE_WRITE = (_INSERT_WRITE.removesuffix("DO NOTHING")
                  + "(checkpoint_seq, task_id, idx) DO UPDATE SET channel = excluded.channel, "
                  "value = excluded.value, task_path = excluded.task_path, "
                  "checksum = excluded.checksum")
_NEXT_SEQ_LOG = _NEXT_SEQ.format(table="log")
# Two subqueries, so that each is one index lookup (SQLite's min/max optimisation).
_NAMESPACE_RANGE = ("SELECT (SELECT min(namespace) FROM checkpoints WHERE thread_id = ?), "
                    "(SELECT max(namespace) FROM checkpoints WHERE thread_id = ?)")
