"""Connections to a PostgreSQL server: bounded waits, and durability read back, not assumed.

Guaranteed by :func:`open_connection`:

* every wait is bounded: ``connect_timeout`` for the connection (libpq's, whole seconds, at
  least 2), ``statement_timeout`` and ``lock_timeout`` for every statement: set for the
  session by :func:`open_connection`, and per transaction (:func:`local_timeouts`, ``SET
  LOCAL``) by the engine, whose pooled connections carry them for the session too
  (:func:`session_settings`) only where no pooler sits between (``prepare_threshold`` set and
  :attr:`ServerSettings.direct`): behind a transaction-pooling PgBouncer a session-level
  ``SET`` stays on whichever server connection ran it, so it neither bounds the next
  transaction (served by another) nor spares the other clients that server connection is
  handed to next;
* the server's ``fsync``, ``full_page_writes`` and ``synchronous_commit`` are read back
  (:class:`ServerSettings`) and a server that cannot keep the durability asked for is refused
  with :class:`~sqlitesaver.errors.UnsafeServerError` naming the setting, before a byte is
  written: with ``fsync`` or ``full_page_writes`` off a crash of the machine can corrupt the
  cluster itself, which neither ``"full"`` nor ``"normal"`` allows (SQLite's ``"normal"`` may
  lose the last commits, never the database). ``synchronous_commit`` is the session's: it is
  set per transaction by the engine (``on`` for ``"full"``, ``off`` for ``"normal"``), since a
  session-level ``SET`` does not survive a transaction-pooling PgBouncer;
* a hot standby (``pg_is_in_recovery()``) is refused for writing with
  :class:`~sqlitesaver.errors.ReadOnlyDatabaseError`;
* text is UTF-8 end to end: ``client_encoding`` is ``UTF8`` whatever ``PGCLIENTENCODING`` or
  the URL say, and a database of another encoding is refused
  (:class:`~sqlitesaver.errors.UnsafeServerError`), before a byte is written: ``LATIN1``
  cannot store most thread ids SQLite takes, and ``SQL_ASCII`` hands text back as bytes, so
  every read of what was written would fail its checksum;
* ``prepare_threshold`` is psycopg's: ``None`` never prepares statements, which is what works
  behind PgBouncer in transaction mode (LangGraph's PostgresSaver fixes it at 0 and fails
  there: langgraph issues #6705, #2576).

Connections are in autocommit mode: the engine writes its own ``BEGIN`` and ``COMMIT``, so that
it knows when a COMMIT is in flight (a connection lost then is "maybe committed").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import (InvalidArgumentError, ReadOnlyDatabaseError, UnsafeServerError,
                      UsageError)
from . import errors as pg_errors

__all__ = ["Options", "ServerSettings", "TCP_DEFAULTS", "libpq_params", "require_psycopg",
           "open_connection", "read_settings", "check_settings", "toast_setting",
           "TOAST_COMPRESSION"]

_EXTRA = "pip install 'sqlitesaver[postgres]'"


#: The least psycopg the engine runs on (pyproject.toml's ``postgres`` extra): 3.3 bounds its
#: wait for a cancelled statement (5 s); with 3.2, a Ctrl-C while a connection is rolled back
#: on its way back to the pool could wait for good on a server that does not answer.
PSYCOPG_MIN = (3, 3)


def require_psycopg() -> Any:
    """The psycopg module, or :class:`UsageError` saying which extra to install (psycopg is
    missing, or older than :data:`PSYCOPG_MIN`)."""
    try:
        import psycopg
    except ImportError as exc:
        raise UsageError(f"a PostgreSQL target needs psycopg 3, which is not installed "
                         f"({exc}): {_EXTRA}") from None
    version = getattr(psycopg, "__version__", "")
    found = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if found < PSYCOPG_MIN:
        raise UsageError(
            f"a PostgreSQL target needs psycopg {'.'.join(map(str, PSYCOPG_MIN))} or later, "
            f"and psycopg {version or '(of unknown version)'} is installed: {_EXTRA} "
            "upgrades it. Nothing was opened.")
    return psycopg


#: The longest timeout PostgreSQL takes (its settings are int milliseconds: 2**31 - 1, ~24.8
#: days); a longer one would fail every statement that sets it, or each pooled connection's
#: set-up (the pool then retries it until connect_timeout ends the open).
MAX_TIMEOUT = 2147483.647


@dataclass(frozen=True)
class Options:
    """How to connect. Times in seconds; ``None`` for no statement or lock timeout."""

    connect_timeout: float = 10.0
    statement_timeout: float | None = 60.0
    lock_timeout: float | None = 30.0
    prepare_threshold: int | None = 5  # psycopg's default; None behind PgBouncer
    application_name: str = "sqlitesaver"

    def check(self) -> None:
        """:class:`~sqlitesaver.errors.InvalidArgumentError` for a value out of range."""
        for name in ("connect_timeout", "statement_timeout", "lock_timeout"):
            value = getattr(self, name)
            if value is None and name != "connect_timeout":
                continue
            if (type(value) not in (int, float) or not math.isfinite(value) or value <= 0
                    or value > MAX_TIMEOUT):
                raise InvalidArgumentError(f"{name} must be a positive number of seconds up "
                                           f"to {MAX_TIMEOUT}"
                                           f"{' or None' if name != 'connect_timeout' else ''}"
                                           f", not {value!r}")
        threshold = self.prepare_threshold
        if threshold is not None and (type(threshold) is not int or threshold < 0):
            raise InvalidArgumentError(f"prepare_threshold must be an int >= 0 or None (never "
                                       f"prepare: behind PgBouncer), not {threshold!r}")


@dataclass(frozen=True)
class ServerSettings:
    """What the server said about itself, read at connect (``SHOW``-equivalent values)."""

    server_version: str
    fsync: str
    full_page_writes: str
    synchronous_commit: str  # the session's default, before the engine sets its own
    in_recovery: bool
    server_encoding: str = "UTF8"
    #: Whether the engine's writes ask for LZ4 TOAST compression (see
    #: :data:`TOAST_COMPRESSION`): the server has it (PostgreSQL 14+ built with it) and its
    #: ``default_toast_compression`` is PostgreSQL's own default, not one an operator set.
    lz4: bool = False
    #: Whether the connection reaches the server's own process: the process id libpq was
    #: given when it connected (BackendKeyData) is ``pg_backend_pid()``. A pooler in between
    #: (PgBouncer, pgcat, a cloud proxy) hands its clients a cancel key of its own, so the two
    #: differ, and the engine then keeps no session state (pool.py, ``_session``) whatever
    #: ``prepare_threshold`` says: PgBouncer 1.21+ prepares statements in transaction mode.
    direct: bool = True


def _millis(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, math.ceil(seconds * 1000))


#: libpq's TCP settings unless the URL gives its own: a peer that vanishes (a network partition,
#: a machine that froze) is noticed within about a minute instead of never. They cannot bound a
#: server process that is alive but stopped (its kernel still acknowledges): statement_timeout
#: is the server's own, so such a server can hold a call until it runs again.
TCP_DEFAULTS = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
                "keepalives_count": "3", "tcp_user_timeout": "60000"}


def libpq_params(params: dict[str, str], options: Options) -> dict[str, str]:
    """The connection parameters: ``params`` with connect_timeout (libpq's is whole seconds
    and treats 1 as 2; a fraction rounds up), client_encoding UTF8 (always), application_name
    and :data:`TCP_DEFAULTS` where ``params`` does not set them. The TCP ones are ignored by
    libpq on a Unix socket."""
    result = dict(TCP_DEFAULTS, application_name=options.application_name)
    result.update(params)
    result["connect_timeout"] = str(max(2, math.ceil(options.connect_timeout)))
    result["client_encoding"] = "UTF8"  # whatever PGCLIENTENCODING or the URL say
    return result


#: Every prepared statement of the engine runs its generic plan: the statements are written so
#: that the generic plan reads only the thread's rows (tests/test_postgres_plans.py checks each
#: one on skewed data), and PostgreSQL's default ("auto") kept planning some of them again at
#: every call (their generic cost estimated above the custom plans'), ~200 us a get here.
PLAN_CACHE_MODE = "force_generic_plan"


def local_timeouts(options: Options) -> str:
    """``SET LOCAL`` statements for ``options``' statement and lock timeouts, to follow a
    ``BEGIN`` in the same simple-query string (values are numbers formatted here, no input)."""
    return (f"SET LOCAL statement_timeout TO '{_millis(options.statement_timeout)}ms'; "
            f"SET LOCAL lock_timeout TO '{_millis(options.lock_timeout)}ms'; "
            f"SET LOCAL plan_cache_mode TO {PLAN_CACHE_MODE}")


def set_local_timeouts(options: Options) -> str:
    """One statement setting ``options``' statement and lock timeouts for the rest of the
    transaction (``set_config(..., true)`` is ``SET LOCAL``), for a pipeline, which takes
    one statement at a time (the values are numbers formatted here, no input)."""
    return (f"SELECT set_config('statement_timeout', '{_millis(options.statement_timeout)}ms', "
            f"true), set_config('lock_timeout', '{_millis(options.lock_timeout)}ms', true), "
            f"set_config('plan_cache_mode', '{PLAN_CACHE_MODE}', true)")


def session_settings(options: Options) -> str:
    """One statement setting ``options``' statement and lock timeouts and
    :data:`PLAN_CACHE_MODE` for the session (``set_config(..., false)`` is a session-level
    ``SET``): what the engine's pool runs once on each connection it opens, unless its
    connections may sit behind a transaction-pooling PgBouncer (``prepare_threshold=None``),
    where a session setting would stay on a server connection other clients get next.
    Transactions set the same values again (:func:`local_timeouts`); a one-statement read or
    write then runs under them, which it cannot set for itself (the values are numbers
    formatted here, no input).

    Its one parameter is the process id libpq was given for the connection: the settings are
    made, and a row returned, only where that is ``pg_backend_pid()`` (see
    :attr:`ServerSettings.direct`), so a connection of the pool that reaches a pooler (a
    multi-host URL, a name moved onto one after the Saver opened) sets nothing on the server
    connection behind it (``pooled.configure``)."""
    return (f"SELECT set_config('statement_timeout', '{_millis(options.statement_timeout)}ms', "
            f"false), set_config('lock_timeout', '{_millis(options.lock_timeout)}ms', false), "
            f"set_config('plan_cache_mode', '{PLAN_CACHE_MODE}', false) "
            "WHERE pg_backend_pid() = %s")


def set_write_settings(options: Options, synchronous_commit: str, toast: str = "") -> str:
    """A SELECT setting a lock timeout and ``synchronous_commit`` (``on`` or ``off``) for the
    rest of the transaction, at the head of a write sent as one statement (sql._LOCKED):
    inside that statement, the lock timeout bounds the waits for the locks it takes after
    it, and synchronous_commit is read at its commit. The lock timeout is the smaller of
    ``options``' lock and statement timeouts that are set: a statement cannot set its own
    statement_timeout, and with no lock timeout its lock waits would otherwise be bounded by
    nothing, where the two-round-trip write's statement_timeout ends them (the values are
    numbers and words formatted here, no input). ``toast``: :func:`toast_setting`'s, if any."""
    bounds = [t for t in (options.lock_timeout, options.statement_timeout) if t is not None]
    lock_timeout = min(bounds) if bounds else None
    return (f"SELECT set_config('synchronous_commit', '{synchronous_commit}', true), "
            f"set_config('lock_timeout', '{_millis(lock_timeout)}ms', true)"
            + (f", set_config({toast}, true)" if toast else ""))


def open_connection(params: dict[str, str], server: str, options: Options, *,
                    doing: str = "connecting", session_timeouts: bool = True) -> Any:
    """A new autocommit connection with the session's timeouts set (unless
    ``session_timeouts`` is False: the caller sets them per transaction); errors translated.

    libpq takes what ``params`` leaves out from its environment (``PGHOST``, ``PGPASSWORD``,
    ``~/.pgpass``...), as psql does."""
    psycopg = require_psycopg()
    try:
        conn = psycopg.connect(**libpq_params(params, options), autocommit=True,
                               prepare_threshold=options.prepare_threshold)
    except Exception as exc:
        raise pg_errors.translate(exc, server, doing, connecting=True) from exc
    if not session_timeouts:
        return conn
    try:
        # One round trip; set_config(..., false) is a session-level SET.
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), "
            "set_config('lock_timeout', %s, false)",
            (f"{_millis(options.statement_timeout)}ms", f"{_millis(options.lock_timeout)}ms"))
    except BaseException as exc:
        conn.close()
        if isinstance(exc, Exception):
            raise pg_errors.translate(exc, server, doing) from exc
        raise
    return conn


def read_settings(conn: Any, server: str) -> ServerSettings:
    """The server's durability settings and role, in one statement."""
    try:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('fsync'), "
            "current_setting('full_page_writes'), current_setting('synchronous_commit'), "
            "pg_is_in_recovery(), current_setting('server_encoding'), "
            "coalesce((SELECT 'lz4' = ANY(enumvals) AND source = 'default' FROM pg_settings "
            "WHERE name = 'default_toast_compression'), false), pg_backend_pid()").fetchone()
    except Exception as exc:
        raise pg_errors.translate(exc, server, "reading the server's settings") from exc
    return ServerSettings(*row[:-1], direct=row[-1] == conn.info.backend_pid)


#: The TOAST compression the engine's writes ask for where the server has it (``SET LOCAL
#: default_toast_compression``, read by the server when it compresses a value: a column's
#: values are compressed when their row passes ~2 KB, so a 4 KiB state always is). LZ4 instead
#: of PostgreSQL's default pglz: a put of bench/core.py's 4 KiB state used 213-255 us of server
#: CPU against 263-302 with pglz, and ran 1,597-1,873 puts/s against 1,466-1,666 (ad hoc,
#: LangGraph adapter, one thread, 4 x 3 rounds of 4,000 puts alternating, PostgreSQL 15); LZ4
#: also decompresses faster. Values are then readable by any server of version 14 or later
#: built with LZ4 (Debian's, Red Hat's, the official images): pg_dump writes them
#: decompressed, and a server without it refuses to read them (pg_upgrade to such a build).
#: Not asked for where an operator set ``default_toast_compression`` (its ``source`` in
#: pg_settings is not ``default``: the configuration file, ``ALTER DATABASE``/``ROLE``...):
#: their choice stands. Read at open: a Saver that meets, after a failover, a server built
#: without LZ4 fails its writes until it is opened again.
TOAST_COMPRESSION = "lz4"


def toast_setting(settings: ServerSettings) -> str:
    """The ``set_config`` arguments asking for :data:`TOAST_COMPRESSION` in the rest of the
    transaction, or "" where the server does not have it."""
    return f"'default_toast_compression', '{TOAST_COMPRESSION}'" if settings.lz4 else ""


#: The oldest server major version accepted: ``plan_cache_mode`` (see PLAN_CACHE_MODE) is 12's.
MIN_SERVER_VERSION = 12


def _major(version: str) -> int | None:
    """The major version in ``server_version`` ("15.18 (Debian ...)", "12.3", "17beta1"), or
    None if it does not start with one (a fork's own numbering: not refused on a guess)."""
    digits = ""
    for char in version:
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else None


def check_settings(settings: ServerSettings, durability: str, server: str, *,
                   writing: bool) -> None:
    """Refuse a server that cannot keep ``durability``, or a database that cannot hold every
    text (see the module docstring)."""
    major = _major(settings.server_version)
    if major is not None and major < MIN_SERVER_VERSION:
        raise UnsafeServerError(
            f"the PostgreSQL server {server} is version {settings.server_version}; sqlitesaver "
            f"needs {MIN_SERVER_VERSION} or newer (its transactions set plan_cache_mode, "
            "which older servers do not know, and are tested on 15). Upgrade the server; "
            "nothing was written.", path=server)
    if settings.server_encoding != "UTF8":
        raise UnsafeServerError(
            f"the database {server} is encoded in {settings.server_encoding!r}, not UTF8: it "
            "cannot store every text sqlitesaver takes (thread ids, namespaces, task ids...), "
            "or hands it back as bytes (SQL_ASCII). Use a database created with ENCODING "
            "'UTF8' (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0); nothing was "
            "written.", path=server)
    for name in ("fsync", "full_page_writes"):
        if getattr(settings, name) != "on":
            raise UnsafeServerError(
                f"the PostgreSQL server {server} runs with {name}=off: an operating-system "
                f"crash or power loss there can corrupt the whole cluster, which durability="
                f"{durability!r} does not allow. Set {name}=on in postgresql.conf (or ALTER "
                "SYSTEM) and restart it; nothing was written.", path=server)
    if writing and settings.in_recovery:
        raise ReadOnlyDatabaseError(
            f"the PostgreSQL server {server} is a read-only hot standby (in recovery): connect "
            "to the primary to write; nothing was written.", path=server)
