"""The PostgreSQL engine's SQL: the advisory lock keys, the statements its operations send,
and why each is written as it is. Several are shaped so that a generic plan (psycopg prepares a
statement after a few executions) still reads one thread's rows, not every thread's: see the
comment above :data:`_GET_LATEST`; tests/test_postgres_plans.py checks each on skewed data. Also
:func:`check_text`, since PostgreSQL's text (every statement's text parameter) cannot hold NUL.

Text only: nothing here talks to a server. :mod:`.transactions` takes the locks, :mod:`.reads`
and :mod:`.engine` (the writes) send the statements.
"""

from __future__ import annotations

import re

from ..errors import InvalidArgumentError
from ..integrity import SERVER_FORM
from ..schema import APPLICATION_ID
from . import schema

#: key1 of ``pg_advisory_xact_lock(key1, hashtext(thread_id))``, taken by every write to a
#: thread (the migration lock is ``(APPLICATION_ID, 0)``: another key1, no clash).
THREAD_LOCK = APPLICATION_ID + 1
#: ``(key1, key2)`` of the advisory lock every write takes in shared mode before its thread's,
#: and ``delete_matching`` over every thread in exclusive mode.
ALL_THREADS_LOCK = (APPLICATION_ID + 2, 0)

_S = schema.SCHEMA
_PLAIN_COLUMNS = ("seq, thread_id, namespace, parent_seq, created_at, state, metadata, checksum, "
                  "key, parent_key")
_CHECKPOINT_COLUMNS = ", ".join(f"c.{column}" for column in _PLAIN_COLUMNS.split(", "))
_WRITE_COLUMNS = ("w.checkpoint_seq, w.task_id, w.idx, w.channel, w.value, w.task_path, "
                  "w.checksum")
_LOCK_THREAD = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
_LOCK_ALL_THREADS = "SELECT pg_advisory_xact_lock({}, {})".format(*ALL_THREADS_LOCK)
# The CTEs that begin a write sent as one statement (a put): the write's settings, then the
# all-threads lock (shared), then the thread's lock (its id the parameter ``thread``), in that
# order: each is a MATERIALIZED CTE the next one reads its row from, so it cannot run before
# that row exists (the order of one select list is not defined). What follows them reads
# ``locked``, so it runs after both locks. Formatted with ``settings`` (a SELECT of set_config
# calls: lock_timeout, set before the locks, bounds their waits; synchronous_commit is read at
# the statement's commit), ``key1`` and ``key2`` (ALL_THREADS_LOCK).
_LOCKED = (
    "WITH settings AS MATERIALIZED ({settings}), shared AS MATERIALIZED "
    "(SELECT pg_advisory_xact_lock_shared({key1}, {key2}) AS shared FROM settings), "
    f"locked AS MATERIALIZED (SELECT pg_advisory_xact_lock({THREAD_LOCK}, "
    "hashtext(%(thread)s)) AS locked FROM shared)")
# The seq and the time, after the thread's lock: the lock is a statement before this one (the
# order in which one select list is evaluated is not defined).
_NEXT_CHECKPOINT = (f"SELECT nextval('{_S}.checkpoints_seq'), "
                    "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
_NEXT_LOG = _NEXT_CHECKPOINT.replace("checkpoints_seq", "log_seq")
_INSERT_CHECKPOINT = (f"INSERT INTO {_S}.checkpoints (seq, thread_id, namespace, parent_seq, "
                      "created_at, state, metadata, checksum, key, parent_key) "
                      "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")


def _server_digest(*values: str) -> str:
    """SQL computing ``integrity._server_digest`` of the SQL expressions given (bigint, or
    NULL: then nothing): the same bytes hashed (``int8send`` is big-endian), the first 15 hex
    digits of the SHA-256 as 60 bits, and bit 62 set."""
    data = " || ".join(f"coalesce(int8send({value}), ''::bytea)" for value in values)
    return (f"({SERVER_FORM}::bigint | ('x' || left(encode(sha256({data}), 'hex'), 15))"
            "::bit(60)::bigint)")


def _server_checksum(seq: str, created: str, parent_seq: str) -> str:
    """SQL computing ``integrity.server_checksum(%(crc)s, seq, created, parent_seq)`` from the
    SQL expressions given (a NULL parent adds nothing)."""
    return _server_digest("%(crc)s::bigint", seq, created, parent_seq)


def _put_statement(parent: str | None) -> str:
    """The one-round-trip put (engine.put_checkpoint), after :data:`_LOCKED` (the settings and
    locks, which the pool formats and puts in front: ``Connections._put``): one statement, its
    own transaction. After the thread's lock it draws the seq and the time (ids in commit
    order within the thread), finds the parent's seq (``parent``: how, see :data:`_PUT`), and
    inserts the checkpoint with its checksum completed here (:func:`_server_checksum`, the
    client's CRC-32 as ``%(crc)s``), or, when the thread and namespace have a checkpoint with
    the caller-supplied id ``%(key)s`` (``checkpoints_by_key``), updates that one in place,
    keeping its seq, created_at and pending writes, its checksum recomputed from them. It
    writes nothing when a parent was asked for and not found (the insert's WHERE), nor when
    the parent is not older than the checkpoint it would replace (the update's WHERE). One
    row back: (the parent's seq or NULL, the seq written or NULL, its created_at or NULL),
    from which the client raises the same errors as before, nothing written. ``n`` is
    referenced twice, so it is evaluated once (a CTE with a volatile function is never
    inlined). Parameters by name: thread, ns, state, metadata (bytea), crc (bigint), key,
    parent_key, and parent_seq when ``parent`` is "seq".

    One statement has one snapshot, taken when it starts, before it waits for the locks: a
    parent committed by another writer of the thread while this put waited is not seen (the
    put then overlapped the parent's own put, and "not found" is one of its outcomes), and
    one deleted meanwhile (delete_thread, prune: they hold the thread's lock) would still be
    seen, so the parent is read ``FOR KEY SHARE``, which in READ COMMITTED reads the row's
    newest version and skips a deleted one. The ON CONFLICT arbiter and its update read the
    newest version anyway."""
    found = {None: "NULL::bigint", "missing": "NULL::bigint",
             "seq": (f"(SELECT seq FROM {_S}.checkpoints WHERE seq = %(parent_seq)s "
                     "AND thread_id = %(thread)s AND namespace = %(ns)s AND key IS NULL "
                     "FOR KEY SHARE)"),
             "key": (f"(SELECT seq FROM {_S}.checkpoints WHERE thread_id = %(thread)s "
                     "AND namespace = %(ns)s AND key = %(parent_key)s FOR KEY SHARE)")}[parent]
    return (
        f"n AS ({_NEXT_CHECKPOINT.replace(', ', ' AS seq, ', 1)} AS created, "
        f"{found} AS parent_seq FROM locked), "
        f"put AS (INSERT INTO {_S}.checkpoints AS c (seq, thread_id, namespace, parent_seq, "
        "created_at, state, metadata, checksum, key, parent_key) "
        "SELECT n.seq, %(thread)s::text, %(ns)s::text, n.parent_seq, n.created, "
        "%(state)b::bytea, %(metadata)b::bytea, "
        f"{_server_checksum('n.seq', 'n.created', 'n.parent_seq')}, "
        "%(key)s::text, %(parent_key)s::text FROM n"
        f"{'' if parent is None else ' WHERE n.parent_seq IS NOT NULL'} "
        "ON CONFLICT (thread_id, namespace, key) WHERE key IS NOT NULL DO UPDATE SET "
        "parent_seq = excluded.parent_seq, parent_key = excluded.parent_key, "
        "state = excluded.state, metadata = excluded.metadata, "
        f"checksum = {_server_checksum('c.seq', 'c.created_at', 'excluded.parent_seq')} "
        "WHERE excluded.parent_seq IS NULL OR excluded.parent_seq < c.seq "
        "RETURNING c.seq, c.created_at) "
        "SELECT n.parent_seq, put.seq, put.created_at FROM n LEFT JOIN put ON true")


#: The one-round-trip put's statement (after :data:`_LOCKED`) by how its parent is found: None
#: (no parent), "seq" (a generated id: by seq), "key" (a caller-supplied id), "missing" (a
#: generated-looking id that no seq has: nothing is inserted, and the client says the parent
#: was not found).
_PUT = {parent: _put_statement(parent) for parent in (None, "seq", "key", "missing")}

def _put_writes_statement(by: str, replace: bool, rows: int | None = None) -> str:
    """A put of pending writes in one statement, after :data:`_LOCKED` (as the put's). It
    finds the checkpoint (``by`` "key": its caller-supplied id ``%(key)s``; "seq": its
    generated id's ``%(seq)s``) in its snapshot and locks that row FOR KEY SHARE, which reads
    the row's newest version: the plan may scan the index before the advisory locks, but the
    row lock comes after them (``target`` joins ``locked``), so a checkpoint deleted while
    this waited for its thread's lock is not found (as the put's parent: see
    :func:`_put_statement`). It inserts each write, its checksum completed here from the
    client's CRC-32 (``%(crc)s``, one per write) and the checkpoint's seq
    (integrity.server_write_checksum). The writes are arrays (``%(idx)s``, ``%(channel)s``,
    ``%(value)s``, ``%(crc)s``) unnested together, or, for ``rows`` writes, that many rows of
    scalar parameters (``%(idx0)s``, ``%(channel0)s``, ...): psycopg dumps a scalar for less
    CPU than an array (the engine's put of two writes: 190 us of client CPU against 284,
    session 15). ``replace``: a write already there is replaced (special channels), else kept
    (regular writes keep their first value). Returns the checkpoint's seq, or NULL when there
    is none (then nothing was written)."""
    match = ("thread_id = %(thread)s AND namespace = %(ns)s AND key = %(key)s" if by == "key"
             else "seq = %(seq)s AND thread_id = %(thread)s AND namespace = %(ns)s "
             "AND key IS NULL")
    conflict = ("(checkpoint_seq, task_id, idx) DO UPDATE SET channel = excluded.channel, "
                "value = excluded.value, task_path = excluded.task_path, "
                "checksum = excluded.checksum") if replace else "DO NOTHING"
    return (
        f"target AS MATERIALIZED (SELECT c.seq FROM {_S}.checkpoints AS c, locked WHERE "
        f"{match.replace('seq =', 'c.seq =')} FOR KEY SHARE OF c), "
        f"put AS (INSERT INTO {_S}.writes (checkpoint_seq, task_id, idx, channel, value, "
        "task_path, checksum) SELECT target.seq, %(task)s::text, w.idx, w.channel, w.value, "
        f"%(task_path)s::text, {_server_digest('w.crc', 'target.seq')} FROM target, "
        f"{_writes_rows(rows)} AS w (idx, channel, value, crc) ON CONFLICT {conflict}) "
        "SELECT (SELECT seq FROM target)")


def _writes_rows(rows: int | None) -> str:
    """The writes of :func:`_put_writes_statement` as a relation: ``rows`` rows of scalar
    parameters, or the four arrays unnested."""
    if rows is None:
        return ("unnest(%(idx)s::bigint[], %(channel)s::text[], %(value)s::bytea[], "
                "%(crc)s::bigint[])")
    return "(VALUES " + ", ".join(
        f"(%(idx{n})s::bigint, %(channel{n})s::text, %(value{n})b::bytea, %(crc{n})s::bigint)"
        for n in range(rows)) + ")"


#: Up to this many writes, a put of writes sends scalar parameters (_writes_rows), one
#: statement for each count; more, arrays.
SCALAR_WRITES = 8


#: The one-round-trip put of writes (after :data:`_LOCKED`), by (how the checkpoint is found,
#: whether a write already there is replaced, how many writes as scalars, or None: arrays).
_PUT_WRITES = {(by, replace, rows): _put_writes_statement(by, replace, rows)
               for by in ("key", "seq") for replace in (False, True)
               for rows in (None, *range(1, SCALAR_WRITES + 1))}

#: A log append in one statement, after :data:`_LOCKED` (as the put's): the seq and the time
#: drawn after the thread's lock, the event inserted with its checksum completed here from the
#: client's CRC-32 (``%(crc)s``) and them (integrity.server_log_checksum); returns the seq.
#: Parameters: thread, event (bytea), crc (bigint).
_APPEND_LOG = (
    f"n AS ({_NEXT_LOG.replace(', ', ' AS seq, ', 1)} AS created FROM locked) "
    f"INSERT INTO {_S}.log (seq, thread_id, created_at, event, checksum) SELECT n.seq, "
    f"%(thread)s::text, n.created, %(event)b::bytea, "
    f"{_server_digest('%(crc)s::bigint', 'n.seq', 'n.created')} FROM n RETURNING seq")

_INSERT_WRITE = (f"INSERT INTO {_S}.writes (checkpoint_seq, task_id, idx, channel, value, "
                 "task_path, checksum) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
_REPLACE_WRITE = (_INSERT_WRITE.removesuffix("DO NOTHING")
                  + "(checkpoint_seq, task_id, idx) DO UPDATE SET channel = excluded.channel, "
                  "value = excluded.value, task_path = excluded.task_path, "
                  "checksum = excluded.checksum")


# The state repeats on the row of each pending write (unlike SQLite's get since session 22,
# sqlitesaver/sqlite/sql.py). Two ways to send it once were measured and not kept: a window
# (row_number() over the statement's order, one sort for both) cost a get without writes
# ~39 us more (114 -> 153 us, a prepared statement in a loop, ad hoc); the correlated
# subquery SQLite uses would sort the checkpoint's writes again for each of them here, where
# the index's collation need not be "C" (a thousand writes: a million rows sorted per get).
def _get_query(match: str) -> str:
    """The checkpoint matching ``match`` with each of its pending writes, in one statement."""
    return (f"SELECT {_CHECKPOINT_COLUMNS}, {_WRITE_COLUMNS} FROM {_S}.checkpoints AS c "
            f"LEFT JOIN {_S}.writes AS w ON w.checkpoint_seq = c.seq WHERE {match} "
            "ORDER BY w.task_id COLLATE \"C\", w.idx")


# One thread's rows through checkpoints_by_thread (thread_id, namespace, seq), whatever the
# plan. psycopg prepares a statement after a few executions, and PostgreSQL may then keep a
# generic plan, which cannot see the thread: it estimates "thread_id = $1" as one thread in as
# many as there are, so with few threads it expected a walk of checkpoints_pkey backwards
# (newest first) to meet the thread's rows at once. On a thread whose checkpoints are old, with
# 100,000 newer ones of another thread, that walk read all 100,000 for every get (about 20 ms;
# the thread's own index reads one row). An equality cannot steer it: "thread_id = $1" makes
# thread_id a constant to the planner, so "ORDER BY thread_id, seq" is only "ORDER BY seq",
# which the pkey provides too. A range that admits one value ("namespace >= $2 AND namespace
# <= $2") is the same condition (text compares equal only when identical in a deterministic
# collation, and a database's default collation is one) but no equality: ordered by that column
# then seq, the rows come without a sort only from checkpoints_by_thread, and a generic plan
# estimates the range as narrow, so a DELETE with no order takes that index too. The range is
# on namespace where the statement knows it (thread_id = $1 then bounds the index scan on both
# columns), else on thread_id. tests/test_postgres_plans.py checks each statement's generic
# plan on such skewed data.
#
# The newest checkpoint of (thread, namespace): parameters (thread, namespace, namespace).
_GET_LATEST = _get_query(f"c.seq = (SELECT seq FROM {_S}.checkpoints WHERE thread_id = %s "
                         "AND namespace >= %s AND namespace <= %s "
                         "ORDER BY namespace DESC, seq DESC LIMIT 1)")
_GET_BY_KEY = _get_query("c.thread_id = %s AND c.namespace = %s AND c.key = %s")
_GET_BY_SEQ = _get_query("c.seq = %s AND c.thread_id = %s AND c.namespace = %s "
                         "AND c.key IS NULL")
#: A page's ``(seq, payload size)`` rows, newest first: parameters (thread, namespace,
#: namespace, highest seq, how many).
_PAGE_SIZES = (f"SELECT seq, octet_length(state) + octet_length(metadata) AS size FROM "
               f"{_S}.checkpoints WHERE thread_id = %s AND namespace >= %s AND namespace <= %s "
               "AND seq <= %s ORDER BY namespace DESC, seq DESC LIMIT %s")
#: The same over every namespace of the thread: parameters (thread, thread, thread, highest
#: seq, how many, how many). No index holds a thread's rows in seq order across namespaces:
#: the thread's namespaces are found one index descent each (a recursive walk), the newest of
#: each (up to a page) read as in _PAGE_SIZES, and those merged. A page reads at most the
#: thread's own rows (as on SQLite, whose pages across namespaces sort the thread's seqs), and
#: a page's worth with one namespace, never other threads' rows.
_PAGE_SIZES_ALL = (
    f"WITH RECURSIVE spaces (namespace) AS ((SELECT namespace FROM {_S}.checkpoints "
    "WHERE thread_id = %s ORDER BY namespace LIMIT 1) UNION ALL SELECT (SELECT n.namespace "
    f"FROM {_S}.checkpoints AS n WHERE n.thread_id = %s AND n.namespace > s.namespace "
    "ORDER BY n.namespace LIMIT 1) FROM spaces AS s WHERE s.namespace IS NOT NULL) "
    "SELECT p.seq, p.size FROM spaces AS s CROSS JOIN LATERAL (SELECT seq, "
    f"octet_length(state) + octet_length(metadata) AS size FROM {_S}.checkpoints "
    "WHERE thread_id = %s AND namespace >= s.namespace AND namespace <= s.namespace "
    "AND seq <= %s ORDER BY namespace DESC, seq DESC LIMIT %s) AS p "
    "ORDER BY p.seq DESC LIMIT %s")


def _page_sizes(thread_id: str, namespace: str | None, upper: int, want: int
                ) -> tuple[str, list[object]]:
    """The statement (and its parameters) of a page's sizes: :data:`_PAGE_SIZES`, or
    :data:`_PAGE_SIZES_ALL` when ``namespace`` is None (every namespace)."""
    if namespace is None:
        return _PAGE_SIZES_ALL, [thread_id, thread_id, thread_id, upper, want, want]
    return _PAGE_SIZES, [thread_id, namespace, namespace, upper, want]


#: The page's checkpoint rows, and their pending writes, after ``WITH sized AS (<a page's
#: sizes>), run AS (...)``: the seqs chosen go in as an array (an InitPlan), so both tables
#: are read by primary key whatever the plan. A join or IN on the CTE let a generic plan scan
#: the whole table and hash it (100,006 checkpoints read for a page of 6).
_PAGE_RUN = ("run AS (SELECT seq, size, sum(size) OVER (ORDER BY seq DESC) AS total, "
             "count(*) OVER () AS found FROM sized) ")
_PAGE_ROWS = (f"SELECT {_CHECKPOINT_COLUMNS}, run.size, run.total, run.found FROM run JOIN "
              f"{_S}.checkpoints AS c ON c.seq = run.seq WHERE c.seq = ANY(ARRAY(SELECT seq "
              "FROM run WHERE total - size < %s)) ORDER BY c.seq DESC")
#: A page's checkpoint rows of one namespace, chosen as :data:`_PAGE_SIZES` and ``run`` choose
#: them, in one statement without the join: each row with its size, running total and the
#: count found, newest first. Parameters: _PAGE_SIZES's, then the budget. The join above cost
#: a page of 100 rows of 4 KiB about twice the wall time of this form (1.26-1.45 ms against
#: 2.40-2.54 ms, /tmp scripts of session 15, custom and generic plans alike). The rows pass
#: through the window functions as they are stored (a large value as its TOAST pointer:
#: octet_length reads its size without fetching it), and only those within the budget are
#: sent. The outer ORDER BY is the window's, so it costs no sort.
_PAGE_ROWS_ONE = (
    f"SELECT {_PLAIN_COLUMNS}, size, total, found FROM (SELECT *, sum(size) OVER (ORDER BY "
    "namespace DESC, seq DESC) AS total, count(*) OVER () AS found FROM (SELECT "
    f"{_PLAIN_COLUMNS}, octet_length(state) + octet_length(metadata) AS size FROM "
    f"{_S}.checkpoints WHERE thread_id = %s AND namespace >= %s AND namespace <= %s "
    "AND seq <= %s ORDER BY namespace DESC, seq DESC LIMIT %s) AS page) AS run "
    "WHERE total - size < %s ORDER BY namespace DESC, seq DESC")
_PAGE_WRITES = (f"SELECT {_WRITE_COLUMNS} FROM {_S}.writes AS w WHERE w.checkpoint_seq = "
                "ANY(ARRAY(SELECT seq FROM run WHERE total - size < %s)) "
                "ORDER BY w.checkpoint_seq DESC, w.task_id COLLATE \"C\", w.idx")

#: The newest log event's seq of a thread (NULL if none): parameters (thread, thread).
_LOG_LAST = (f"SELECT (SELECT seq FROM {_S}.log WHERE thread_id >= %s AND thread_id <= %s "
             "ORDER BY thread_id DESC, seq DESC LIMIT 1)")
#: Log rows of a thread in a seq range: (thread, thread, after, last, how many).
_LOG_PAGE = (f"SELECT seq, thread_id, created_at, event, checksum FROM {_S}.log "
             "WHERE thread_id >= %s AND thread_id <= %s AND seq > %s AND seq <= %s "
             "ORDER BY thread_id, seq LIMIT %s")
#: Whether the thread has a checkpoint: (thread, thread).
_HAS_CHECKPOINTS = (f"SELECT 1 FROM {_S}.checkpoints WHERE thread_id >= %s AND thread_id <= %s "
                    "ORDER BY thread_id LIMIT 1")
#: The seqs of the thread's checkpoints, as a condition on ``seq`` (``checkpoint_seq`` of the
#: files' rows: see delete_thread): (thread, thread).
_THREAD_SEQS = (f"seq = ANY(ARRAY(SELECT seq FROM {_S}.checkpoints WHERE thread_id >= %s "
                "AND thread_id <= %s))")
#: The thread's whole checkpoints in seq order, read through a cursor (copy_thread,
#: delete_matching): (thread, thread). "thread_id = %s ORDER BY seq": a cursor's plan favours
#: its first rows, and walked the primary key over every thread's rows, filtering (a thread of
#: 1,000 checkpoints below 100,000 of another: 101,000 rows read, 23 ms; 4 ms now). Ordered by
#: (thread_id, seq), the thread's rows come from its index and are sorted: the same order.
_THREAD_CHECKPOINTS = (f"SELECT {_CHECKPOINT_COLUMNS} FROM {_S}.checkpoints AS c "
                       "WHERE c.thread_id >= %s AND c.thread_id <= %s ORDER BY c.thread_id, c.seq")
#: Every thread id with a checkpoint or a log event, sorted by code point (``COLLATE "C"``, as
#: on SQLite). A loose index scan: a few threads may hold millions of rows, and "SELECT
#: thread_id FROM checkpoints UNION SELECT thread_id FROM log" read every one (a Seq Scan of
#: each table, 40,000 rows for 6 ids). Here each table's ids are walked one index descent each
#: (checkpoints_by_thread, log_by_thread: min() becomes an Index Only Scan, Limit 1, generic
#: plan or not), so the rows read are the distinct ids plus one per table. The walk compares in
#: the column's collation, the index's: deterministic (a database's default is one), so ">"
#: steps over no id and "UNION" under "C" merges only identical ones; the few ids found are
#: then sorted in "C" as before.
_THREADS = (f"WITH RECURSIVE c (id) AS (SELECT min(thread_id) FROM {_S}.checkpoints UNION ALL "
            f"SELECT (SELECT min(n.thread_id) FROM {_S}.checkpoints AS n "
            "WHERE n.thread_id > c.id) FROM c WHERE c.id IS NOT NULL), "
            f"l (id) AS (SELECT min(thread_id) FROM {_S}.log UNION ALL "
            f"SELECT (SELECT min(n.thread_id) FROM {_S}.log AS n WHERE n.thread_id > l.id) "
            "FROM l WHERE l.id IS NOT NULL) "
            "SELECT id COLLATE \"C\" FROM c WHERE id IS NOT NULL UNION "
            "SELECT id COLLATE \"C\" FROM l WHERE id IS NOT NULL ORDER BY 1")
#: Deleting a thread's checkpoints, and its log: (thread, thread).
_DELETE_CHECKPOINTS = (f"DELETE FROM {_S}.checkpoints WHERE thread_id >= %s "
                       "AND thread_id <= %s")
_DELETE_LOG = f"DELETE FROM {_S}.log WHERE thread_id >= %s AND thread_id <= %s"
#: The checkpoints prune deletes: all but the newest ``keep_last`` of each namespace of the
#: thread, as a condition on ``seq``: (thread, thread, keep_last).
_PRUNED = ("seq = ANY(ARRAY(SELECT seq FROM (SELECT seq, row_number() OVER (PARTITION BY "
           f"namespace ORDER BY seq DESC) AS rank FROM {_S}.checkpoints WHERE "
           "thread_id >= %s AND thread_id <= %s) AS ranked WHERE rank > %s))")


def check_text(**named: str | None) -> None:
    """PostgreSQL's text cannot hold NUL (U+0000), which SQLite's can: refuse it up front
    with a typed error, before anything is written, rather than fail inside the transaction."""
    for name, value in named.items():
        if value is not None and "\x00" in value:
            raise InvalidArgumentError(
                f"{name} {value!r:.80} contains a NUL character (U+0000), which PostgreSQL "
                "cannot store in text; nothing was written. Remove it, or use the SQLite "
                "engine.")


def _has_nul(*values: str | None) -> bool:
    return any(value is not None and "\x00" in value for value in values)


def positional(query: str) -> tuple[str, tuple[str, ...]]:
    """``query`` with its named parameters (``%(name)s``, ``%(name)b``) as ``$1``, ``$2``...
    (a name used twice is one parameter), and the names in that order, for a RawCursor
    (``Transactions._send``). Our statements hold no other ``%`` and no ``$``."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)[sb]", number, query), tuple(names)
