"""The bound on the ``-wal``: what keeps a SQLite Saver's write-ahead log from growing without
bound while readers overlap.

Guarantee: after each COMMIT of the write path (:mod:`sqlitesaver.sqlite.transaction`), the
``-wal`` is checkpointed as SQLite's automatic checkpoint would (PASSIVE, past
:data:`AUTOCHECKPOINT_PAGES`) and, past :data:`WAL_LIMIT`, truncated by a checkpoint that waits
up to :data:`WAL_CHECKPOINT_WAIT` for older readers; readers that outlast it only postpone the
next attempt by another :data:`WAL_LIMIT`, never stall a commit longer. A checkpoint that fails
is reported to the caller whose commit ran it, and its transitions stay committed.

Its place: called by the batch's leader at the end of ``_Transaction._finish`` (holding the
write lock, in its deferred section); :class:`_WalLength` is the write connection's wal hook,
set by :class:`~sqlitesaver.sqlite.saver.SqliteFileSaver` when it opens, which also reads
:data:`WAL_LIMIT` from here then; the reads (:mod:`sqlitesaver.sqlite.reads`) wait up to
:data:`WAL_CHECKPOINT_WAIT` for a forced checkpoint. The constants are read at call time from
this module, where tests lower them. The state (the hook's page count, the threshold, the
``_readers_open`` event, the counters) belongs to the Saver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import apsw

from .. import log, opening

if TYPE_CHECKING:
    from .saver import SqliteFileSaver

#: Bytes of ``-wal`` past which a commit forces a TRUNCATE checkpoint (see :func:`bound`): four
#: times what SQLite's automatic checkpoint lets it reach (1,000 pages of 4 KiB) when no reader
#: is in its way.
WAL_LIMIT = 16 * 1024 * 1024
#: Seconds that checkpoint waits for older readers to finish before giving up for now.
WAL_CHECKPOINT_WAIT = 0.5
#: WAL pages after a commit that start a PASSIVE checkpoint: SQLite's own default.
AUTOCHECKPOINT_PAGES = 1000


class _WalLength:
    """The write connection's wal hook: records how many pages the WAL holds after each
    commit (no reference to the Saver, so no reference cycle through the connection)."""

    __slots__ = ("pages",)

    def __init__(self) -> None:
        self.pages = 0

    def __call__(self, conn: apsw.Connection, name: str, pages: int) -> int:
        self.pages = pages
        return apsw.SQLITE_OK


def bound(saver: SqliteFileSaver) -> None:
    """Leader only, after a COMMIT, holding the lock: keep the ``-wal`` bounded.

    SQLite's automatic checkpoint never waits, and a WAL restarts from its beginning only
    when no reader still uses it, so overlapping readers that never all stop at once let it
    grow without bound (measured: 92 MiB after 6,000 puts of 4 KiB with three threads
    listing). Past :data:`WAL_LIMIT`, a TRUNCATE checkpoint waits (with backoff, up to
    :data:`WAL_CHECKPOINT_WAIT`) for the readers that started before it to finish; readers
    that start meanwhile read the database file and do not hold it up. If readers outlast
    the wait (another process's long read), the WAL is left alone until it has grown by
    another :data:`WAL_LIMIT`, rather than stalling every commit.
    """
    pages = saver._wal.pages
    if pages >= AUTOCHECKPOINT_PAGES:
        # A wal hook replaces SQLite's automatic checkpoint (sqlite.org/c3ref/
        # wal_autocheckpoint.html): this is the PASSIVE checkpoint it would have run.
        try:
            saver._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except apsw.Error as exc:
            raise saver._translate(exc, "checkpointing the WAL after a commit (the "
                                        "transitions of that commit are durable)") from exc
    size = pages * saver._frame_bytes  # the WAL as SQLite will have written it
    if size <= WAL_LIMIT:
        saver._wal_threshold = WAL_LIMIT  # restarted (or never past): a busy one is over
    if size <= saver._wal_threshold:
        return
    saver._stats["wal_checkpoints"] += 1
    # This Saver's new reads wait meanwhile (at most WAL_CHECKPOINT_WAIT), so only reads
    # already running are waited for: threads reading all the time would otherwise keep
    # taking fresh WAL read locks, and the checkpoint, whose busy handler needs the GIL
    # they are busy with, could miss every gap between them (seen in tests).
    saver._readers_open.clear()
    try:
        busy = opening.truncate_wal(saver._writer, saver._path, WAL_CHECKPOINT_WAIT)
    except apsw.Error as exc:
        # The transitions are committed and their callers told so; this call reports the
        # failure (and an I/O error shuts the Saver down, as after any other).
        raise saver._translate(exc, "checkpointing the WAL after a commit (the "
                                    "transitions of that commit are durable)") from exc
    finally:
        saver._readers_open.set()
    log.forced_checkpoint(saver._path, size, busy)
    if busy:
        saver._stats["wal_checkpoints_busy"] += 1
        saver._wal_threshold = size + WAL_LIMIT
    else:
        saver._wal_threshold = WAL_LIMIT
