"""``python -m sqlitesaver check postgresql://...``: verify a server's sqlitesaver tables
without writing to them (issue #16, item 6).

The same report, results and exit codes as for a file (sqlitesaver/check/: 0 ok, 1 damaged,
2 unusable), from one read-only ``REPEATABLE READ`` transaction (one snapshot: writers may keep
committing meanwhile). In order:

* **connect** (unusable if the server cannot be reached, with why, never the password);
* **identity**: a ``sqlitesaver`` schema with our version row, of a version this library knows
  (unusable otherwise: another application's schema, none at all, or a newer version);
* **server settings**: ``fsync``, ``full_page_writes`` and ``data_checksums`` (a note, not
  damage, when one is off: the Saver refuses such a server);
* **schema**: every table, column, index, constraint, sequence, trigger, rule and view in the
  ``sqlitesaver`` schema is exactly what the migrations create (:data:`EXPECTED`): an added
  trigger or rule can swallow what ``put`` wrote, a dropped index lets duplicates in;
* **checksums**: every checkpoint, pending write and log event matches its checksum, computed
  as the Saver does on every read (a checkpoint in the form its checksum value says: a CRC-32,
  or the server-completed form of the one-round-trip put, sqlitesaver/integrity.py); read
  through a server-side cursor, so memory stays flat;
* **files**: every file stored with a checkpoint, as for a file (``check.report_files``: the
  same statements, on :mod:`sqlitesaver.postgres.files`' dialect): manifest entries, content
  records and chunks against their checksums, each content's SHA-256 and size;
* **invariants**: every pending write belongs to an existing checkpoint; ids are below the
  sequence each was drawn from (so none is handed out again) and a parent is older than its
  child; an existing parent is of the same thread and namespace, a missing one older than
  every remaining checkpoint of them (as ``prune`` leaves it).

:data:`EXPECTED` is the schema as PostgreSQL 15 describes it; tests/test_postgres_check.py
compares it with a freshly migrated database, so a migration added without it fails there.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from .. import integrity
from ..check.invariants import parent_links
from ..check.payloads import _counts, _failures, _verified
from ..check.report import (FAILED, NOTE, OK, UNUSABLE, Report, _checkpoint, _checkpoint_id,
                            _listed, _stopped)
from ..check.stored_files import report_files
from ..errors import SaverError
from . import connect, schema
from . import target as pg_target
from .files import server_sql

__all__ = ["check_server", "describe_schema", "EXPECTED"]

_S = schema.SCHEMA
_SHOWN = 5
_BATCH = 512  # rows per round trip of the server-side cursors


def check_server(url: str) -> Report:
    """Check the sqlitesaver tables on the server ``url`` without writing; see the module
    docstring. Whatever goes wrong is reported in the :class:`Report`, never raised."""
    try:
        params = pg_target.parse(url)
        server = pg_target.describe(params)
    except SaverError as exc:
        report = Report("<a PostgreSQL URL>")
        report.add("connect", UNUSABLE, str(exc))
        return report
    report = Report(server)
    try:
        _check_server(report, params, server)
    except Exception as exc:  # outside every check: the server as a whole was not checked
        report.add("check", FAILED, _stopped(exc))
    return report


def _check_server(report: Report, params: dict[str, str], server: str) -> None:
    try:
        conn = connect.open_connection(params, server, connect.Options(statement_timeout=None,
                                                                       lock_timeout=None),
                                       doing="checking")
    except SaverError as exc:
        report.add("connect", UNUSABLE, str(exc))
        return
    try:
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            settings = connect.read_settings(conn, server)
            version = schema.read_version(conn, server)
        except SaverError as exc:
            report.sqlitesaver = False if "another application" in str(exc) or \
                "did not create" in str(exc) else None
            report.add("identity", UNUSABLE, str(exc))
            return
        report.add("connect", OK, f"PostgreSQL {settings.server_version}, one read-only "
                                  "snapshot for every check")
        if version == 0:
            report.sqlitesaver = False
            report.add("identity", UNUSABLE, f"no sqlitesaver tables on {server} (no schema "
                                             f"{_S!r}): nothing to check")
            return
        report.sqlitesaver, report.schema_version = True, version
        report.add("identity", OK, f"sqlitesaver schema version {version}")
        _check_settings(report, conn, settings)
        for name, check in (("schema", _check_schema), ("checksums", _check_payloads),
                            ("files", _check_files), ("invariants", _check_invariants)):
            try:
                check(report, conn)
            except Exception as exc:  # damage no check foresaw: the others still run
                report.add(name, FAILED, _stopped(exc))
                conn.execute("ROLLBACK")  # an error aborts the transaction: a new snapshot
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    finally:
        conn.close()  # a read-only transaction: nothing to commit


def _check_settings(report: Report, conn: Any, settings: connect.ServerSettings) -> None:
    (checksums,) = conn.execute("SELECT current_setting('data_checksums')").fetchone()
    found = {"fsync": settings.fsync, "full_page_writes": settings.full_page_writes,
             "data_checksums": checksums}
    text = ", ".join(f"{name}={value}" for name, value in found.items())
    if found["fsync"] != "on" or found["full_page_writes"] != "on":
        report.add("server settings", NOTE, f"{text}: a crash of the machine can corrupt this "
                                            "cluster; the Saver refuses to write here")
    elif checksums != "on":
        report.add("server settings", NOTE, f"{text}: the server cannot detect damage in its "
                                            "own pages (initdb -k); our payload checksums "
                                            "still do for what they cover")
    else:
        report.add("server settings", OK, text)


# --- the schema -----------------------------------------------------------------------------

def describe_schema(conn: Any) -> dict[str, str]:
    """Every object of the ``sqlitesaver`` schema, as ``"kind name" -> definition``. The
    definitions PostgreSQL prints qualify names by the session's ``search_path``: it is set to
    ``pg_catalog`` alone for the session first, so they are always schema-qualified."""
    conn.execute("SELECT set_config('search_path', 'pg_catalog', false)")
    found: dict[str, str] = {}
    for name, kind in conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s", (_S,)):
        found[f"relation {name}"] = {"r": "table", "i": "index", "S": "sequence", "v": "view",
                                     "m": "materialized view", "p": "partitioned table",
                                     "f": "foreign table", "c": "type"}.get(kind, kind)
    for table, column, kind, nullable, default in conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default FROM "
            "information_schema.columns WHERE table_schema = %s", (_S,)):
        found[f"column {table}.{column}"] = (f"{kind}{' NOT NULL' if nullable == 'NO' else ''}"
                                             f"{f' DEFAULT {default}' if default else ''}")
    for name, definition in conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s", (_S,)):
        found[f"index {name}"] = definition
    for table, name, definition in conn.execute(
            "SELECT coalesce(r.relname, ''), c.conname, pg_get_constraintdef(c.oid) FROM "
            "pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace LEFT JOIN pg_class r "
            "ON r.oid = c.conrelid WHERE n.nspname = %s", (_S,)):
        found[f"constraint {table}.{name}"] = definition
    for name, kind, increment, cycle in conn.execute(
            "SELECT sequencename, data_type::text, increment_by, cycle FROM pg_sequences "
            "WHERE schemaname = %s", (_S,)):
        found[f"sequence {name}"] = f"{kind} increment {increment}{' CYCLE' if cycle else ''}"
    for table, name, definition in conn.execute(
            "SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM "
            "pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal", (_S,)):
        found[f"trigger {table}.{name}"] = definition
    for table, name, definition in conn.execute(
            "SELECT tablename, rulename, definition FROM pg_rules WHERE schemaname = %s",
            (_S,)):
        found[f"rule {table}.{name}"] = definition
    for table, name, definition in conn.execute(
            "SELECT tablename, policyname, coalesce(qual, '') FROM pg_policies "
            "WHERE schemaname = %s", (_S,)):
        found[f"policy {table}.{name}"] = definition
    return found


def _check_schema(report: Report, conn: Any) -> None:
    expected = EXPECTED.get(report.schema_version or 0)
    if expected is None:
        report.add("schema", NOTE, f"no description of schema version "
                                   f"{report.schema_version} to compare with")
        return
    found = describe_schema(conn)
    problems = [f"{key} is missing" for key in sorted(expected.keys() - found.keys())]
    problems += [f"{key} was added ({found[key]})" for key in sorted(found.keys()
                                                                     - expected.keys())]
    problems += [f"{key} is {found[key]!r}, not {expected[key]!r}"
                 for key in sorted(expected.keys() & found.keys())
                 if found[key] != expected[key]]
    if problems:
        report.add("schema", FAILED, f"{len(problems)} difference(s) from the schema sqlitesaver "
                                     f"creates for version {report.schema_version}: "
                                     f"{_listed(problems)}")
    else:
        report.add("schema", OK, f"as sqlitesaver creates it for version "
                                 f"{report.schema_version}: {len(found)} objects, nothing else")


# --- payload checksums ------------------------------------------------------------------------

def _stream(conn: Any, name: str, query: str) -> Iterator[tuple]:
    """The rows of ``query`` through a server-side cursor (``_BATCH`` per round trip)."""
    with conn.cursor(name=name) as cursor:
        cursor.itersize = _BATCH
        cursor.execute(query)
        yield from cursor


def _check_payloads(report: Report, conn: Any) -> None:
    checks = (
        ("checkpoints", "SELECT seq, thread_id, namespace, parent_seq, created_at, state, "
                        f"metadata, checksum, key, parent_key FROM {_S}.checkpoints ORDER BY seq",
         _checkpoint_failure),
        ("writes", "SELECT checkpoint_seq, task_id, idx, channel, value, task_path, checksum "
                   f"FROM {_S}.writes ORDER BY checkpoint_seq, task_id COLLATE \"C\", idx",
         _write_failure),
        ("log", f"SELECT seq, thread_id, created_at, event, checksum FROM {_S}.log ORDER BY seq",
         _log_failure))
    for table, query, verify in checks:
        report.payloads_checked[table] = 0
        for row in _stream(conn, f"sqlitesaver_check_{table}", query):
            report.payloads_checked[table] += 1
            failure = verify(row)
            if failure is None:
                continue
            report.payloads_failed += 1
            if len(report.payload_failures) < _SHOWN:
                report.payload_failures.append(failure)
    counts = _counts(report.payloads_checked)
    if report.payloads_failed:
        report.add("checksums", FAILED, f"{report.payloads_failed} payload(s) do not match "
                                        f"their checksum (checked {counts}){_failures(report)}")
    else:
        report.add("checksums", OK, f"{counts}: all match")


def _checkpoint_failure(row: tuple) -> dict | None:
    seq, thread_id, namespace, parent_seq, created, state, meta, checksum, key, parent_key = row
    failure = {"table": "checkpoints", "checkpoint_id": _checkpoint_id(seq) if key is None
               else key, "thread_id": thread_id, "namespace": namespace}
    # In the form its checksum says (integrity.expected_checkpoint_checksum): a CRC-32, or
    # the one-round-trip put's server-completed value.
    expected = functools.partial(integrity.expected_checkpoint_checksum, checksum)
    return _verified(expected, failure, (seq, thread_id, namespace, parent_seq, created, state,
                                         meta, key, parent_key), checksum)


def _write_failure(row: tuple) -> dict | None:
    seq, task_id, index, channel, value, task_path, checksum = row
    failure = {"table": "writes", "checkpoint_id": _checkpoint_id(seq), "task_id": task_id,
               "index": index}
    return _verified(functools.partial(integrity.expected_write_checksum, checksum), failure,
                     (seq, task_id, index, channel, task_path, value), checksum)


def _log_failure(row: tuple) -> dict | None:
    seq, thread_id, created, event, checksum = row
    return _verified(functools.partial(integrity.expected_log_checksum, checksum),
                     {"table": "log", "seq": seq, "thread_id": thread_id},
                     (seq, thread_id, created, event), checksum)



# --- files ---------------------------------------------------------------------------------------

def _check_files(report: Report, conn: Any) -> None:
    def execute(sql: str, params: tuple = ()) -> Any:
        return conn.execute(server_sql(sql), params, binary=True)

    def stream(sql: str, params: tuple = ()) -> Iterator[tuple]:
        # A content's chunks through a server-side cursor, a few at a time: a file of any size
        # is never held in memory at once.
        with conn.cursor(name="sqlitesaver_check_chunks", binary=True) as cursor:
            cursor.itersize = 4
            cursor.execute(server_sql(sql), params)
            yield from cursor

    manifest = ((row, ()) for row in _stream(
        conn, "sqlitesaver_check_files", f"SELECT checkpoint_seq, name, digest, mode, checksum "
        f"FROM {_S}.files ORDER BY checkpoint_seq, name COLLATE \"C\""))
    report_files(report, manifest, execute, stream)


# --- invariants ---------------------------------------------------------------------------------

#: Each parent link with its parent (if still there) and the oldest checkpoint of the child's
#: thread and namespace. That oldest one is found through checkpoints_by_thread: as
#: min(o.seq) with "o.namespace = c.namespace" the planner walked checkpoints_pkey from the
#: oldest row of the table for every link, filtering by thread (2,004 links after 100,000
#: checkpoints of another thread: 99,806 rows each, 34 s); ordered by namespace, a range that
#: admits one value, only that index gives the order (see _GET_LATEST in sql.py).
_PARENT_LINKS = (
    "SELECT c.seq, c.thread_id, c.namespace, c.parent_seq, p.seq, p.thread_id, p.namespace, "
    f"(SELECT o.seq FROM {_S}.checkpoints AS o WHERE o.thread_id = c.thread_id AND "
    "o.namespace >= c.namespace AND o.namespace <= c.namespace ORDER BY o.namespace, o.seq "
    f"LIMIT 1), c.parent_key, p.key FROM {_S}.checkpoints AS c LEFT JOIN {_S}.checkpoints AS p "
    "ON p.seq = c.parent_seq WHERE c.parent_seq IS NOT NULL ORDER BY c.seq")


def _check_invariants(report: Report, conn: Any) -> None:
    problems = [f"pending write ({task_id!r}, {index}) of checkpoint {_checkpoint_id(seq)!r}, "
                "which does not exist"
                for seq, task_id, index in conn.execute(
                    f"SELECT checkpoint_seq, task_id, idx FROM {_S}.writes AS w WHERE NOT "
                    f"EXISTS (SELECT 1 FROM {_S}.checkpoints AS c WHERE c.seq = "
                    "w.checkpoint_seq) ORDER BY 1, 2, 3")]
    for table in ("checkpoints", "log"):
        last, called, top = conn.execute(
            f"SELECT s.last_value, s.is_called, (SELECT max(seq) FROM {_S}.{table}) "
            f"FROM {_S}.{table}_seq AS s").fetchone()
        drawn = last if called else last - 1  # the largest id the sequence handed out
        if top is not None and top > drawn:
            problems.append(f"{table} holds seq {top}, above the largest its sequence has "
                            f"handed out ({drawn}): that id will be handed out again")
    for seq, thread_id, namespace, parent_seq in conn.execute(
            f"SELECT seq, thread_id, namespace, parent_seq FROM {_S}.checkpoints "
            "WHERE parent_seq >= seq ORDER BY seq"):
        problems.append(f"{_checkpoint(seq, thread_id, namespace)} has parent "
                        f"{_checkpoint_id(parent_seq)!r}, which is not older than it")
    found, present, pruned, _ = parent_links(conn.execute(_PARENT_LINKS))
    problems += found
    if problems:
        report.add("invariants", FAILED, f"{len(problems)} violation(s): {_listed(problems)}")
    else:
        report.add("invariants", OK, f"every pending write belongs to a checkpoint; no id "
                                     f"above its sequence; {present + pruned} parent link(s): "
                                     f"{present} to an existing checkpoint of the same thread "
                                     f"and namespace, {pruned} to a pruned one")


#: What :func:`describe_schema` finds after each schema version's migrations (PostgreSQL 15):
#: never edited for a released version, only extended by a new one (as SQLite's migrations).
EXPECTED: dict[int, dict[str, str]] = {
    1: {'column checkpoints.checksum': 'bigint NOT NULL',
        'column checkpoints.created_at': 'bigint NOT NULL',
        'column checkpoints.key': 'text',
        'column checkpoints.metadata': 'bytea NOT NULL',
        'column checkpoints.namespace': 'text NOT NULL',
        'column checkpoints.parent_key': 'text',
        'column checkpoints.parent_seq': 'bigint',
        'column checkpoints.seq': 'bigint NOT NULL',
        'column checkpoints.state': 'bytea NOT NULL',
        'column checkpoints.thread_id': 'text NOT NULL',
        'column file_chunks.checksum': 'bigint NOT NULL',
        'column file_chunks.data': 'bytea NOT NULL',
        'column file_chunks.digest': 'bytea NOT NULL',
        'column file_chunks.idx': 'integer NOT NULL',
        'column file_contents.checksum': 'bigint NOT NULL',
        'column file_contents.chunks': 'integer NOT NULL',
        'column file_contents.digest': 'bytea NOT NULL',
        'column file_contents.size': 'bigint NOT NULL',
        'column files.checkpoint_seq': 'bigint NOT NULL',
        'column files.checksum': 'bigint NOT NULL',
        'column files.digest': 'bytea NOT NULL',
        'column files.mode': 'integer NOT NULL',
        'column files.name': 'text NOT NULL',
        'column log.checksum': 'bigint NOT NULL',
        'column log.created_at': 'bigint NOT NULL',
        'column log.event': 'bytea NOT NULL',
        'column log.seq': 'bigint NOT NULL',
        'column log.thread_id': 'text NOT NULL',
        'column schema_version.application_id': 'bigint NOT NULL',
        'column schema_version.only_row': 'boolean NOT NULL DEFAULT true',
        'column schema_version.version': 'integer NOT NULL',
        'column writes.channel': 'text NOT NULL',
        'column writes.checkpoint_seq': 'bigint NOT NULL',
        'column writes.checksum': 'bigint NOT NULL',
        'column writes.idx': 'bigint NOT NULL',
        'column writes.task_id': 'text NOT NULL',
        'column writes.task_path': "text NOT NULL DEFAULT ''::text",
        'column writes.value': 'bytea NOT NULL',
        'constraint checkpoints.checkpoints_pkey': 'PRIMARY KEY (seq)',
        'constraint file_chunks.file_chunks_digest_fkey': 'FOREIGN KEY (digest) REFERENCES '
                                                          'sqlitesaver.file_contents(digest) '
                                                          'ON DELETE CASCADE',
        'constraint file_chunks.file_chunks_pkey': 'PRIMARY KEY (digest, idx)',
        'constraint file_contents.file_contents_pkey': 'PRIMARY KEY (digest)',
        'constraint files.files_checkpoint_seq_fkey': 'FOREIGN KEY (checkpoint_seq) '
                                                      'REFERENCES '
                                                      'sqlitesaver.checkpoints(seq) ON DELETE '
                                                      'CASCADE',
        'constraint files.files_digest_fkey': 'FOREIGN KEY (digest) REFERENCES '
                                              'sqlitesaver.file_contents(digest)',
        'constraint files.files_pkey': 'PRIMARY KEY (checkpoint_seq, name)',
        'constraint log.log_pkey': 'PRIMARY KEY (seq)',
        'constraint schema_version.schema_version_only_row_check': 'CHECK (only_row)',
        'constraint schema_version.schema_version_pkey': 'PRIMARY KEY (only_row)',
        'constraint writes.writes_checkpoint_seq_fkey': 'FOREIGN KEY (checkpoint_seq) '
                                                        'REFERENCES '
                                                        'sqlitesaver.checkpoints(seq) ON '
                                                        'DELETE CASCADE',
        'constraint writes.writes_pkey': 'PRIMARY KEY (checkpoint_seq, task_id, idx)',
        'index checkpoints_by_key': 'CREATE UNIQUE INDEX checkpoints_by_key ON '
                                    'sqlitesaver.checkpoints USING btree (thread_id, '
                                    'namespace, key) WHERE (key IS NOT NULL)',
        'index checkpoints_by_thread': 'CREATE INDEX checkpoints_by_thread ON '
                                       'sqlitesaver.checkpoints USING btree (thread_id, '
                                       'namespace, seq)',
        'index checkpoints_pkey': 'CREATE UNIQUE INDEX checkpoints_pkey ON '
                                  'sqlitesaver.checkpoints USING btree (seq)',
        'index file_chunks_pkey': 'CREATE UNIQUE INDEX file_chunks_pkey ON '
                                  'sqlitesaver.file_chunks USING btree (digest, idx)',
        'index file_contents_pkey': 'CREATE UNIQUE INDEX file_contents_pkey ON '
                                    'sqlitesaver.file_contents USING btree (digest)',
        'index files_by_digest': 'CREATE INDEX files_by_digest ON sqlitesaver.files USING '
                                 'btree (digest)',
        'index files_pkey': 'CREATE UNIQUE INDEX files_pkey ON sqlitesaver.files USING btree '
                            '(checkpoint_seq, name)',
        'index log_by_thread': 'CREATE INDEX log_by_thread ON sqlitesaver.log USING btree '
                               '(thread_id, seq)',
        'index log_pkey': 'CREATE UNIQUE INDEX log_pkey ON sqlitesaver.log USING btree (seq)',
        'index schema_version_pkey': 'CREATE UNIQUE INDEX schema_version_pkey ON '
                                     'sqlitesaver.schema_version USING btree (only_row)',
        'index writes_pkey': 'CREATE UNIQUE INDEX writes_pkey ON sqlitesaver.writes USING '
                             'btree (checkpoint_seq, task_id, idx)',
        'relation checkpoints': 'table',
        'relation checkpoints_by_key': 'index',
        'relation checkpoints_by_thread': 'index',
        'relation checkpoints_pkey': 'index',
        'relation checkpoints_seq': 'sequence',
        'relation file_chunks': 'table',
        'relation file_chunks_pkey': 'index',
        'relation file_contents': 'table',
        'relation file_contents_pkey': 'index',
        'relation files': 'table',
        'relation files_by_digest': 'index',
        'relation files_pkey': 'index',
        'relation log': 'table',
        'relation log_by_thread': 'index',
        'relation log_pkey': 'index',
        'relation log_seq': 'sequence',
        'relation schema_version': 'table',
        'relation schema_version_pkey': 'index',
        'relation writes': 'table',
        'relation writes_pkey': 'index',
        'sequence checkpoints_seq': 'bigint increment 1',
        'sequence log_seq': 'bigint increment 1'},
}
#: Version 2 changed no table (a new checksum form; see schema.MIGRATIONS).
EXPECTED[2] = EXPECTED[1]
