"""The ``sqlitesaver`` logger: what the library noticed, silent unless you ask for it.

``logging.getLogger("sqlitesaver")`` gets a :class:`logging.NullHandler` when this module is
imported (the package imports it), so nothing is printed unless the application configures
logging (``logging.basicConfig(level=logging.INFO)``, or a handler on ``"sqlitesaver"``). Every
record names the database file, or the server as the PostgreSQL engine describes it (never with
its password). What is logged, and at which level, on SQLite:

* **Recovery findings** (``Saver(path)``): WAL frames found at start-up and checkpointed (INFO:
  the last process did not close the database, or another one still has it open), a recovery
  checkpoint that other connections kept from finishing (WARNING), schema migrations applied
  (INFO), temporaries of a killed creation removed (WARNING); an uneventful open at DEBUG.
* **Forced checkpoints**: a commit that left the ``-wal`` past its limit and checkpointed it
  (INFO), or could not because readers held it (WARNING).
* **Busy waits** past :data:`BUSY_WAIT_THRESHOLD` seconds for another connection's lock
  (WARNING), whether the step then went through or timed out.
* **Shutdowns after an I/O error** (ERROR): the Saver closed itself ("maybe committed").
* **Damaged checkpoints skipped** by ``Saver.list(..., skip_damaged=True)`` (WARNING).
* **Maintenance** (INFO): backups, restores, vacuums and salvages, with their sizes.

On a PostgreSQL server (the engine in sqlitesaver/postgres/):

* **Schema migrations** applied at open (INFO), with the versions from and to.
* **Retries**: a transaction run again after a serialization failure or a deadlock (SQLSTATE
  ``40001``, ``40P01``; DEBUG, each time), and a call whose retries took past
  :data:`BUSY_WAIT_THRESHOLD` seconds in all (WARNING), whether it then went through or timed
  out.
* **A dead pooled connection replaced** (INFO): the server closed an idle connection, or
  restarted; the call ran on another connection, nothing was lost.
* **A connection lost inside a transaction** (WARNING): the caller got DatabaseIOError, "maybe
  committed" if COMMIT was in flight.
* **Waits for a pooled connection** past :data:`BUSY_WAIT_THRESHOLD` seconds, every connection
  being in use (WARNING), whether one then came or the call timed out.
* **Damaged checkpoints skipped**, as on SQLite (WARNING).

Why a logger and not only exceptions and :meth:`Saver.stats`: these events are not errors of the
call that meets them (the call succeeds), yet an operator wants to see them when a service is
slow or a disk is failing.
"""

from __future__ import annotations

import logging

from .records import RecoveryReport

__all__ = ["logger", "BUSY_WAIT_THRESHOLD", "recovery", "forced_checkpoint", "busy_wait",
           "shutdown", "damaged_skipped", "server_migrated", "server_retry", "server_retries",
           "server_connection_replaced", "server_connection_lost", "server_pool_wait"]

logger = logging.getLogger("sqlitesaver")
# A library never configures logging for the application: a NullHandler keeps the records from
# reaching logging's last-resort handler (which prints WARNING and above to stderr).
logger.addHandler(logging.NullHandler())

#: Seconds of waiting for another connection's lock after which the wait is logged (on a
#: server: of retrying a transaction, or of waiting for a pooled connection).
BUSY_WAIT_THRESHOLD = 1.0


def recovery(report: RecoveryReport) -> None:
    """Log what the startup recovery of one Saver found and did."""
    path = report.path
    eventful = False
    if report.stale_files_removed:
        eventful = True
        logger.warning("%s: removed %d temporary file(s) left by a database creation that was "
                       "killed: %s", path, len(report.stale_files_removed),
                       ", ".join(report.stale_files_removed))
    if report.wal_frames:
        eventful = True
        logger.info("%s: recovery found %d WAL frame(s) and checkpointed %d (the last process "
                    "did not close the database, or another one has it open)", path,
                    report.wal_frames, report.wal_frames_checkpointed)
    if report.checkpoint_busy:
        eventful = True
        logger.warning("%s: the recovery checkpoint could not finish: another connection "
                       "(a reader or writer in another process) was using the WAL", path)
    if report.migrations_applied:
        eventful = True
        logger.info("%s: migrated the schema from version %d to %d", path,
                    report.schema_version_found, report.schema_version)
    if report.created:
        eventful = True
        logger.info("%s: created a new database (schema version %d)", path,
                    report.schema_version)
    if not eventful:
        logger.debug("%s: opened (integrity check %s, schema version %d) in %.1f ms", path,
                     report.integrity_check, report.schema_version, report.seconds * 1000)


def forced_checkpoint(path: str, wal_bytes: int, busy: bool) -> None:
    """A commit left the ``-wal`` at ``wal_bytes`` and forced a checkpoint."""
    if busy:
        logger.warning("%s: the -wal reached %d bytes and a forced checkpoint could not "
                       "truncate it: readers (in another process?) held it; it may keep "
                       "growing until they finish", path, wal_bytes)
    else:
        logger.info("%s: the -wal reached %d bytes; forced a checkpoint that truncated it",
                    path, wal_bytes)


def busy_wait(path: str, doing: str, waited: float, *, gave_up: bool) -> None:
    """A step waited ``waited`` seconds for another connection's lock."""
    if waited < BUSY_WAIT_THRESHOLD:
        return
    if gave_up:
        logger.warning("%s: gave up waiting for another connection's lock after %.2f s while "
                       "%s", path, waited, doing)
    else:
        logger.warning("%s: waited %.2f s for another connection's lock while %s", path,
                       waited, doing)


def shutdown(path: str, reason: str) -> None:
    """The Saver shut itself down after an I/O error."""
    logger.error("%s: %s", path, reason)


def damaged_skipped(path: str, thread_id: str, checkpoint_id: str, error: BaseException) -> None:
    """``list(..., skip_damaged=True)`` skipped a checkpoint that failed its checksum."""
    logger.warning("%s: skipped damaged checkpoint %r of thread %r: %s", path, checkpoint_id,
                   thread_id, error)


# --- a PostgreSQL server (sqlitesaver/postgres/): ``server`` as the engine describes it
# (pg_target.describe: never a password). Called only off the hot path (a retry, a dead
# connection, a long wait, a migration), and every message is formatted lazily.

def server_migrated(server: str, found: int, version: int) -> None:
    """Opening applied the schema migrations from version ``found`` to ``version``."""
    logger.info("%s: migrated the schema from version %d to %d%s", server, found, version,
                " (created the tables)" if found == 0 else "")


def server_retry(server: str, doing: str, sqlstate: str | None, retry: int) -> None:
    """A transaction failed with a serialization failure or a deadlock and runs again."""
    logger.debug("%s: %s (SQLSTATE %s) while %s; running the transaction again (retry %d)",
                 server, "a deadlock" if sqlstate == "40P01" else "a serialization failure",
                 sqlstate, doing, retry)


def server_retries(server: str, doing: str, retries: int, waited: float, *,
                   gave_up: bool) -> None:
    """A call retried its transaction ``retries`` times over ``waited`` seconds, then went
    through (or, ``gave_up``, timed out)."""
    if waited < BUSY_WAIT_THRESHOLD:
        return
    if gave_up:
        logger.warning("%s: gave up after running the transaction %d time(s) again over %.2f s "
                       "(serialization failures or deadlocks) while %s", server, retries,
                       waited, doing)
    else:
        logger.warning("%s: ran the transaction %d time(s) again over %.2f s (serialization "
                       "failures or deadlocks) while %s", server, retries, waited, doing)


def server_connection_replaced(server: str, doing: str) -> None:
    """A pooled connection was found dead by a transaction's first statement and replaced."""
    logger.info("%s: a pooled connection was dead (the server closed an idle connection, or "
                "restarted); replaced it while %s, nothing was lost", server, doing)


def server_connection_lost(server: str, doing: str, *, committing: bool) -> None:
    """The connection was lost inside a transaction: the caller gets DatabaseIOError."""
    if committing:
        logger.warning("%s: the connection was lost while COMMIT was in flight, %s: the "
                       "transaction may or may not have been committed (DatabaseIOError, "
                       "'maybe committed')", server, doing)
    else:
        logger.warning("%s: the connection was lost while %s: the transaction was not "
                       "committed (DatabaseIOError)", server, doing)


def server_rollback_failed(server: str, error: BaseException) -> None:
    """A connection given back inside a transaction could not be rolled back (psycopg_pool
    logged this too when it rolled back itself): it was closed, and the pool opens another."""
    logger.warning("%s: a connection given back inside a transaction could not be rolled back "
                   "(%s: %s); closed it, the pool opens another, nothing committed was lost",
                   server, type(error).__name__, error)


def server_pool_wait(server: str, doing: str, waited: float, *, gave_up: bool) -> None:
    """A call waited ``waited`` seconds for a pooled connection, every one being in use."""
    if waited < BUSY_WAIT_THRESHOLD:
        return
    if gave_up:
        logger.warning("%s: gave up waiting for a pooled connection after %.2f s (every one in "
                       "use) while %s", server, waited, doing)
    else:
        logger.warning("%s: waited %.2f s for a pooled connection (every one in use) while %s",
                       server, waited, doing)
