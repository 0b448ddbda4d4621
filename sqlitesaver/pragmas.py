"""The connection profile: every PRAGMA sqlitesaver sets, in one place, each with its reason.

:func:`apply` runs on every connection a Saver opens (writer and readers alike) and reads each
setting back, so a setting that SQLite silently refused is an error, not a surprise after a
power cut. ``synchronous`` and the busy handler are per connection in SQLite, which is why this is
applied to each one rather than once per file.
"""

from __future__ import annotations

from dataclasses import dataclass

import apsw

from . import contention
from .errors import DatabaseFileError

__all__ = ["Profile", "DURABILITY_LEVELS", "apply", "read_back"]

#: durability option -> PRAGMA synchronous value (sqlite.org/pragma.html#pragma_synchronous).
#: "full": the WAL is synced at every COMMIT, so a returned commit survives power loss / OS crash.
#: "normal": no sync at COMMIT; the database stays consistent after power loss, but the last
#: transactions acknowledged before it may roll back. Both survive a process crash (SIGKILL).
DURABILITY_LEVELS = {"full": 2, "normal": 1}

#: Cap the WAL on disk after a checkpoint. SQLite's default (-1) never truncates it, so one burst
#: leaves a huge -wal behind forever (sqlite.org/pragma.html#pragma_journal_size_limit).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class Profile:
    """The settings for one Saver; applied identically to each of its connections."""

    durability: str = "full"
    busy_timeout: float = 30.0  # seconds
    readonly: bool = False  # Saver(readonly=True): connections opened SQLITE_OPEN_READONLY

    @property
    def synchronous(self) -> int:
        return DURABILITY_LEVELS[self.durability]


def _pragma(conn: apsw.Connection, statement: str) -> object:
    # One PRAGMA per execute, result read at once: APSW runs multi-statement strings lazily and a
    # PRAGMA that returns a row would stop the statements after it from running (shared notes).
    row = conn.execute(statement).fetchone()
    return row[0] if row else None


def journal_mode_wal(conn: apsw.Connection, path: str) -> None:
    """WAL: readers never block the writer, and a commit appends to the -wal instead of
    rewriting pages in place, so a crash leaves either the old or the new transaction
    (sqlite.org/wal.html). Read back: SQLite keeps the old mode silently where WAL is impossible
    (e.g. ``:memory:``, some network and virtual filesystems)."""
    mode = str(_pragma(conn, "PRAGMA journal_mode=WAL")).lower()
    if mode != "wal":
        raise DatabaseFileError(
            f"{path!r}: SQLite refused WAL mode (journal_mode is {mode!r}). sqlitesaver needs "
            "WAL for its guarantees; put the database on a local filesystem (not a network "
            "share or tmpfs without shared memory).", path=path)


def synchronous(conn: apsw.Connection, profile: Profile) -> None:
    """FULL by default: the WAL is fsynced at every COMMIT, so a returned commit survives power
    loss. NORMAL gives that up for speed (see DURABILITY_LEVELS). Per connection in SQLite."""
    conn.execute(f"PRAGMA synchronous={profile.synchronous}")


def busy_timeout(conn: apsw.Connection, profile: Profile) -> None:
    """Wait up to ``busy_timeout`` for another connection's lock, with jittered exponential
    backoff, instead of failing at once with SQLITE_BUSY (see :mod:`sqlitesaver.contention`;
    it replaces SQLite's own busy timeout, so ``PRAGMA busy_timeout`` reads 0)."""
    contention.install(conn, profile.busy_timeout)


def foreign_keys(conn: apsw.Connection) -> None:
    """Enforce writes -> checkpoints references and cascade deletes; off by default in SQLite."""
    conn.execute("PRAGMA foreign_keys=ON")


def journal_size_limit(conn: apsw.Connection) -> None:
    """Truncate the -wal to at most JOURNAL_SIZE_LIMIT after each checkpoint resets it."""
    conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")


def query_planner_stability(conn: apsw.Connection) -> None:
    """The query planner's stability guarantee (sqlite.org/c3ref/c_dbconfig_defensive.html,
    SQLITE_DBCONFIG_ENABLE_QPSG): a statement's plan does not depend on the values bound to it.

    Why: without it SQLite marks a cached statement expired whenever a value its plan looked
    at is bound again, and prepares it anew at its next step. The partial index
    ``checkpoints_by_key`` (``WHERE key IS NOT NULL``) makes the planner look at the bound
    thread and namespace of every checkpoint query, so every ``get``, ``list`` page and
    ``put`` re-prepared its statements: a 1-row index lookup by thread and namespace measured
    4.3 us per execution against 1.1 us with this setting (bench/statements.py). Our queries'
    plans do not depend on the values (each is an index lookup by thread and namespace, or by
    seq), so nothing is lost; tests/test_pragmas.py checks the plans."""
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_QPSG, 1)


def apply(conn: apsw.Connection, profile: Profile, path: str, *, set_wal: bool = True) -> None:
    """Apply the whole profile to ``conn`` and verify it took effect.

    ``set_wal=False`` skips ``journal_mode`` (a write on a non-WAL file) for the moments before
    a file has been accepted as ours; the caller applies it afterwards.
    """
    busy_timeout(conn, profile)
    query_planner_stability(conn)
    if set_wal:
        journal_mode_wal(conn, path)
    synchronous(conn, profile)
    foreign_keys(conn)
    journal_size_limit(conn)
    actual = read_back(conn)
    expected: dict[str, object] = {"synchronous": profile.synchronous, "foreign_keys": 1,
                                   "journal_size_limit": JOURNAL_SIZE_LIMIT,
                                   "query_planner_stability": 1}
    if set_wal:
        expected["journal_mode"] = "wal"
    wrong = {k: (actual[k], v) for k, v in expected.items() if actual[k] != v}
    if wrong:
        raise DatabaseFileError(f"{path!r}: SQLite did not accept the settings "
                                f"(setting: (actual, expected)) {wrong}", path=path)


def read_back(conn: apsw.Connection) -> dict[str, object]:
    """The live values of every setting in the profile, as SQLite reports them."""
    return {
        "journal_mode": str(_pragma(conn, "PRAGMA journal_mode")).lower(),
        "synchronous": _pragma(conn, "PRAGMA synchronous"),
        "foreign_keys": _pragma(conn, "PRAGMA foreign_keys"),
        "journal_size_limit": _pragma(conn, "PRAGMA journal_size_limit"),
        # Milliseconds, as PRAGMA busy_timeout would say: the deadline of the connection's
        # busy handler (a connection without one waits 0 ms).
        "busy_timeout": _busy_timeout_ms(conn),
        "query_planner_stability": conn.config(apsw.SQLITE_DBCONFIG_ENABLE_QPSG, -1),
    }


def _busy_timeout_ms(conn: apsw.Connection) -> int:
    waiter = contention.waiter_of(conn)
    if waiter is None:
        return int(_pragma(conn, "PRAGMA busy_timeout"))  # type: ignore[arg-type]
    return round(waiter.timeout * 1000)
