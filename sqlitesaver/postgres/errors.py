"""The one place where psycopg's exceptions become sqlitesaver's, for a PostgreSQL server.

Mapped by SQLSTATE (postgresql.org/docs/current/errcodes-appendix.html) where the server sent
one, else (libpq failing before or without a server's answer) by the connection's state. Each
message names the server as :func:`sqlitesaver.postgres.target.describe` shows it (never the
password) and says what to do; the original stays as ``__cause__`` and its SQLSTATE on
``sqlstate``.

A connection lost while a COMMIT was in flight is "maybe committed" (:class:`DatabaseIOError`,
the contract of an fsync failure on SQLite: re-read before retrying); ``committing=True`` says
the caller was committing. Serialization failures and deadlocks (:data:`RETRYABLE`) are the
caller's to retry as a whole transaction within its deadline: past it they become
:class:`BusyTimeoutError`.
"""

from __future__ import annotations

import re

from ..errors import (BusyTimeoutError, CannotOpenError, CorruptDatabaseError, DatabaseIOError,
                      DiskFullError, ReadOnlyDatabaseError, SaverError, ValueTooLargeError)

__all__ = ["translate", "RETRYABLE", "LOST", "sqlstate_of"]

#: Serialization failure, deadlock: the whole transaction may be run again.
RETRYABLE = frozenset({"40001", "40P01"})
#: The connection, or the server behind it, went away: class 08 (connection exception),
#: 57P01-57P03 (admin or crash shutdown, cannot connect now).
LOST_CLASSES = ("08",)
LOST = frozenset({"57P01", "57P02", "57P03"})


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE psycopg carries, or None (libpq's own failures have none)."""
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text)[:500]


def translate(exc: BaseException, server: str, doing: str, *,
              committing: bool = False, connecting: bool = False,
              in_transaction: bool = False) -> SaverError:
    """Map a psycopg exception raised while ``doing`` something on ``server`` (already
    described, without password) to the matching :class:`SaverError`; the caller raises it
    ``from exc``. ``connecting``: raised while opening the connection; ``committing``: raised
    while COMMIT was in flight (a lost connection is then "maybe committed")."""
    if isinstance(exc, SaverError):
        return exc
    state = sqlstate_of(exc)
    detail = _detail(exc)
    where = f"the PostgreSQL server {server}"
    common = {"path": server, "sqlstate": state}
    lost = state in LOST or (state or "").startswith(LOST_CLASSES) or _is_closed(exc)
    if connecting and (state is None or lost or state.startswith("28") or state == "3D000"
                       or state == "53300"):
        return CannotOpenError(f"cannot connect to {where} while {doing} ({detail}). "
                               f"{_connect_advice(state, detail)}; nothing was written.",
                               **common)
    if lost or (state is None and _is_operational(exc)):
        if committing:
            return DatabaseIOError(
                f"the connection to {where} was lost while COMMIT was in flight, {doing} "
                f"({detail}): the transaction may or may not have been committed ('maybe "
                "committed'). Re-read what it wrote before retrying.", **common)
        if in_transaction:
            return DatabaseIOError(
                f"the connection to {where} was lost while {doing} ({detail}) inside this "
                "thread's transaction block: nothing of the block was committed. Let the "
                "block end (raise) and run it again once the server is reachable.", **common)
        return DatabaseIOError(
            f"the connection to {where} was lost while {doing} ({detail}); the transaction "
            "was not committed. Retry once the server is reachable (a restarted server "
            "accepts new connections after its crash recovery).", **common)
    if state in RETRYABLE and in_transaction:
        return BusyTimeoutError(
            f"{where} failed this call with "
            f"{'a deadlock' if state == '40P01' else 'a serialization failure'} while {doing} "
            f"({detail}) inside this thread's transaction block, which cannot be re-run "
            "behind its back: the call was undone. Let the block fail (it rolls back) and run "
            "it again.", **common)
    if state in RETRYABLE:
        return BusyTimeoutError(
            f"{where} kept failing the transaction with "
            f"{'a deadlock' if state == '40P01' else 'serialization failures'} while {doing} "
            f"({detail}), retried until the deadline; nothing was written. Retry later.",
            **common)
    if state in ("55P03", "57014"):  # lock_not_available, query_canceled (statement_timeout)
        return BusyTimeoutError(
            f"{where} did not finish in time while {doing} ({detail}): a lock held by another "
            "session, or a statement past its timeout; nothing was written. Retry later, raise "
            "the timeout, or find the session holding a long transaction "
            "(pg_stat_activity).", **common)
    if state == "25006":  # read_only_sql_transaction
        return ReadOnlyDatabaseError(
            f"{where} refuses writes while {doing} ({detail}): it is a read-only hot standby "
            "or the session is read-only (default_transaction_read_only). Connect to the "
            "primary; nothing was written.", **common)
    if state in ("53100",):  # disk_full
        return DiskFullError(
            f"the disk of {where} is full while {doing} ({detail}); the transaction was "
            "rolled back. Free space on the server and retry.", **common)
    if state in ("54000", "54001"):  # program_limit_exceeded, statement_too_complex
        return ValueTooLargeError(
            f"a value is beyond a limit of {where} while {doing} ({detail}); nothing was "
            "written (a bytea value holds at most 1 GB).", **common)
    if state in ("XX001", "XX002"):  # data_corrupted, index_corrupted
        return CorruptDatabaseError(
            f"{where} reports damage while {doing} ({detail}). Stop writing and have its "
            "administrator check the cluster (amcheck, data checksums) or restore a backup.",
            **common)
    if state in ("58030",):  # io_error
        return DatabaseIOError(
            f"{where} reported an I/O error while {doing} ({detail}); a write that raised this "
            "may or may not be committed: re-read before retrying.", **common)
    return SaverError(f"{where} failed while {doing} ({detail}).", **common)


def _is_closed(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - the extra is installed wherever this runs
        return False
    return isinstance(exc, (psycopg.InterfaceError,)) and "closed" in str(exc)


def _is_operational(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, psycopg.OperationalError)


def _connect_advice(state: str | None, detail: str) -> str:
    lowered = detail.lower()
    if state in ("28P01", "28000") or "password" in lowered or "authentication" in lowered:
        return ("The server refused the credentials: check the user and password (the URL, "
                "PGPASSWORD or ~/.pgpass) and pg_hba.conf")
    if state == "3D000" or "does not exist" in lowered:
        return "The database does not exist: create it (createdb) or fix the name in the URL"
    if state == "53300" or "too many" in lowered:
        return ("The server has no connection slot left: lower the pool's max_size or raise "
                "the server's max_connections")
    if "timeout" in lowered or "timed out" in lowered:
        return ("No answer within the connect timeout: check the host, the port and any "
                "firewall, or raise connect_timeout")
    if state in ("57P03",) or "starting up" in lowered or "shutting down" in lowered:
        return "The server is starting, stopping or in recovery: retry in a moment"
    return ("Check that the server is running and reachable at that host and port (a Unix "
            "socket: its directory), and the URL's spelling")
