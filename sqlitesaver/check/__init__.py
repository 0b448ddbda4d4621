"""``python -m sqlitesaver check``: verify databases without changing a byte of them.

For each file, in order: the file is a regular, readable SQLite file (looked at with ``stat()``
first, as :mod:`sqlitesaver.paths` does for the Saver: a FIFO is never opened, a symbolic link is
followed to the file whose ``-wal`` SQLite uses); it is a sqlitesaver
database of a schema version this library knows; ``PRAGMA integrity_check`` (full) is ``ok``;
``PRAGMA foreign_key_check`` is empty; the journal mode (sqlitesaver uses WAL); the schema is
exactly the one sqlitesaver creates for that schema version (every table, column, index,
trigger and view, compared by :func:`sqlitesaver.schema.schema_differences`: an added trigger
or a dropped index fails it); and every stored payload (checkpoints, pending writes, log
events) matches its checksum, computed with :mod:`sqlitesaver.integrity` exactly as
:class:`~sqlitesaver.Saver` does on every read, and every text in those rows is valid UTF-8.
Files (schema version 3): every manifest entry matches its checksum and names stored content, and
every content's chunks are all there, each matching its CRC-32, adding up to its size and
SHA-256; content no manifest names is reported as a note (garbage, not damage).
Then the structural invariants the Saver keeps, each its own check: every pending write belongs
to an existing checkpoint; ids are monotonic (a parent is older than its child, and the
``high_water`` rows make the next id the Saver hands out larger than every id ever handed out);
parents exist unless pruned (an existing parent is of the same thread and namespace, a missing
one is older than every remaining checkpoint of the thread and namespace, as ``prune`` leaves
it; a parent's caller-supplied id, kept beside the link, is that parent's own id).

Never writes what it checks. The database is opened with ``SQLITE_OPEN_READONLY`` (what the
URI ``?mode=ro`` means, without escaping the path into a URI), ``query_only`` on, and
``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`` so closing never checkpoints the WAL into the file; no
migration or recovery step of :mod:`sqlitesaver.opening` runs. What SQLite itself does for any
reader of a WAL database still happens: it uses the ``-shm`` index beside the file, creating it
if it is missing, and creates an empty ``-wal`` if there is none (neither holds data; a
``-shm`` is rebuilt from the ``-wal`` whenever it is stale). In a directory the checker cannot
write, it can therefore read a WAL database only when its ``-wal`` and ``-shm`` already exist;
otherwise it says so. ``immutable=1`` would avoid that but ignores the ``-wal`` and locking,
so it would check stale data: never used.

All checks of one database read one snapshot (one read transaction), so a writer in another
process may keep committing meanwhile (WAL readers do not block writers) without making the
checks disagree with each other.

Each database ends in one of three results, which :func:`run` turns into the exit status:

* ``ok`` (0): a sqlitesaver database and every check passed;
* ``damaged`` (1): a check found damage in a sqlitesaver database, including a hot journal and
  an SQLite file too short to hold its header (whose it was cannot be told; damage is never
  passed off as "not ours");
* ``unusable`` (2): not validated: a path that is missing, unreadable, a directory, a FIFO, a
  device or a socket, a symbolic link that leads nowhere or into a loop, or a name SQLite cannot
  take (a NUL, not UTF-8, too long); a file that
  is not an SQLite database (text, empty); an SQLite database of another application (its
  ``application_id``, read through SQL, or from the file header when SQLite cannot read the
  file); a sqlitesaver database of a newer schema version (upgrade sqlitesaver); or SQLite
  cannot open it here (e.g. its ``-wal`` is missing in a read-only directory). The SQLite-level
  checks still run on a newer-version database, and damage they find makes it ``damaged``.

With several paths the worst result wins: 1 if any database is damaged, else 2 if any path was
unusable, else 0. A usage problem with one path never hides damage found in another. Each path,
and each check of it, stands alone: a check that cannot finish (damage no check foresaw, such
as a text that is not UTF-8 where SQLite reports it) is that check FAILED, the others still run,
and the next path is still checked; the command never ends in a traceback.

The layers, a module each: ``report`` (:class:`Report`, its text and the exit status),
``identity`` (the file and what it is), ``sqlite_checks`` (SQLite's own checks and the schema),
``payloads`` (the checksums), ``stored_files`` (the files), ``invariants`` (the structural
invariants) and ``command`` (:func:`check_database`, which runs them in order, and :func:`run`).
"""

from __future__ import annotations

from . import command, invariants, payloads, report, stored_files
from .command import check_database, run
from .report import EXIT_STATUS, FAILED, NOTE, OK, SKIPPED, UNUSABLE, Report, Step, exit_status

__all__ = ["OK", "FAILED", "UNUSABLE", "NOTE", "SKIPPED", "EXIT_STATUS", "Step", "Report",
           "check_database", "exit_status", "run"]

# Also importable from here, as when the validator was one module (sqlitesaver/cli.py imports
# format_report so). Each is the very object of the module that holds it, so patch it there
# (e.g. ``check.command._CHECKS``): patched here, it would change nothing that runs.
format_report = report.format_report
parent_links = invariants.parent_links
report_files, Execute = stored_files.report_files, stored_files.Execute
_CHECKS = command._CHECKS
_checkpoint, _checkpoint_id = report._checkpoint, report._checkpoint_id
_listed, _stopped = report._listed, report._stopped
_counts, _failures, _verified = payloads._counts, payloads._failures, payloads._verified
