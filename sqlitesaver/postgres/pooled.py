"""What the PostgreSQL engine keeps on each pooled connection, set up once as the pool opens it
(:func:`configure`, psycopg_pool's ``configure``): the session's timeouts and plan cache mode
(unless behind PgBouncer), the RawCursor its one-statement writes are sent with (every int a
bigint) and the poll of its socket with which
:func:`closed_while_idle` finds, without a round trip, an idle connection whose server went
away. Used by :mod:`.pool` (the pool) and :mod:`.transactions` (the writes)."""

from __future__ import annotations

import select
from typing import Any

__all__ = ["configure", "closed_while_idle"]


def configure(conn: Any, settings: str | None = None) -> None:
    """Set up a new pooled connection: run ``settings`` (``connect.session_settings``: the
    session's statement and lock timeouts and plan cache mode, which the engine's
    one-statement reads and writes run under; None behind PgBouncer, where every statement
    that needs them runs in a transaction that sets them) and say in
    ``conn.sqlitesaver_session`` whether they were made (not on a connection that reaches a
    pooler), make its RawCursor for the
    one-statement writes (``Transactions._send``), here, once per connection, rather than on
    its first write (what a write runs is then the same every time: tests/test_interrupts.py
    injects an exception at each of its lines), and the poll of its socket for
    :func:`closed_while_idle` (made at every write, with its imports, it cost ~1.5 us). An
    error here is psycopg_pool's to handle: the connection is discarded and another tried."""
    from psycopg import RawCursor

    # Autocommit: for the session. A connection that reaches a pooler sets nothing and is
    # marked so (connect.session_settings' WHERE): its reads set theirs per transaction.
    conn.sqlitesaver_session = settings is not None and bool(
        conn.execute(settings, (conn.info.backend_pid,), prepare=False).fetchall())
    from psycopg.types.numeric import Int8BinaryDumper

    # Its ints are bigints whatever their values (psycopg's int dumper picks int2/4/8 by value:
    # a prepared statement each), not wrapped in Int8 by each call (~4% of a put's client CPU,
    # py-spy, session 21); this cursor's adapters only.
    cursor = conn.sqlitesaver_cursor = RawCursor(conn)
    cursor.adapters.register_dumper(int, Int8BinaryDumper)
    if hasattr(select, "poll"):  # for closed_while_idle, made once (its socket stays)
        poll = select.poll()
        poll.register(conn.pgconn.socket, select.POLLIN)
        conn.sqlitesaver_poll = poll.poll


def closed_while_idle(conn: Any) -> None:
    """Raise (psycopg's OperationalError, ``conn`` then broken) if the server closed this idle
    pooled connection (a restart, a crash, an idle timeout, pg_terminate_backend), without a
    round trip: an idle connection of ours has nothing to read (no LISTEN; its session
    settings were answered when :func:`configure` ran them, and the server reports none of
    them when they change) unless its server went away, leaving its last words (a FATAL
    error) and the end of the stream; a poll that finds the socket readable tells. For a write sent in one round
    trip (``Transactions._write_statement``), which may commit as soon as it is sent: a
    connection found dead only by its answer is "maybe committed", one found dead here sent
    nothing and is replaced. Whatever made it readable, it is not used: after a fast
    shutdown libpq had read the FATAL message but not yet the end (seen in
    tests/test_postgres_engine.py), and a false alarm costs one reconnect."""
    poll = getattr(conn, "sqlitesaver_poll", None)  # made by configure
    if poll is not None:
        readable = bool(poll(0))
    else:  # pragma: no cover - Windows
        readable = bool(select.select([conn.pgconn.socket], [], [], 0)[0])
    if readable:
        import psycopg

        conn.pgconn.consume_input()  # raises if libpq reads the end of the stream
        conn.pgconn.finish()  # broken from now on: the pool discards it
        raise psycopg.OperationalError("the server sent something on an idle pooled "
                                       "connection: its last words before closing it")
