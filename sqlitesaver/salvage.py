"""``python -m sqlitesaver salvage SRC DST``: copy everything intact out of a damaged database.

A backup restores the past; salvage keeps the present, minus what is broken. It reads SRC
without writing to it, row by row, verifies every checkpoint, pending write and log event with
the checksum :mod:`sqlitesaver.integrity` computes (as every read of a Saver does), and copies
each one that verifies into a new database at DST, keeping its seq (so checkpoint ids, their
order and log seqs are unchanged), thread, namespace, your own ids, ``created_at`` and bytes.
What it skips is reported, by table, thread and id, with the reason:

* a **checkpoint** whose checksum fails, or whose row SQLite cannot read (a damaged page), is
  skipped with **its pending writes** (they belong to it: a task's writes without their
  checkpoint cannot be resumed from);
* a **pending write** or **log event** whose checksum fails or that cannot be read is skipped
  alone;
* where a damaged page hides a range of rows (the table's own b-tree cannot be walked past it),
  salvage seeks past it (doubling the distance, then bisecting back) and reports the range of
  seqs it could not see;
* a checkpoint whose **parent was skipped** is kept and **detached** (its parent id becomes
  ``None``, its checksum recomputed), as ``delete_matching`` leaves the children of what it
  deletes: keeping a link to a parent that is not there would look like a pruned parent to
  some readers and be flagged by ``check`` as a broken chain when it is not the oldest. Each
  detached checkpoint is reported. A parent that was already missing in SRC (pruned) stays
  missing, as it was.

The high-water marks (the largest ids ever handed out) are carried over and raised past every
seq seen, skipped ones included, so no skipped id is ever handed out again for new data.

DST is built under a temporary name, committed in one transaction, set to WAL, synced,
validated with :func:`sqlitesaver.check.check_database`, and linked into place; it must not
exist. SRC is opened like the validator opens it (``SQLITE_OPEN_READONLY``, ``query_only``, no
checkpoint on close: see :mod:`sqlitesaver.check`; like any reader of a WAL database, SQLite may
create an empty ``-wal`` and a ``-shm`` beside it), inside one read transaction, so salvage can
run while another process still uses SRC. Damage SQLite reports in page 1 or the schema leaves
nothing to walk: then it fails (restore a backup instead).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import apsw

from . import check, files, integrity, log, schema
from .errors import (CorruptDatabaseError, DatabaseFileError, NotASaverDatabaseError,
                     SaverError, SchemaVersionError, describe, translate)

__all__ = ["SalvageReport", "salvage"]

_PAGE = 1024
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class SalvageReport:
    """What :func:`salvage` copied to ``path`` and what it left behind.

    ``skipped``: one dict per row not copied, ``{"table", "thread_id", ..., "why"}`` (a
    checkpoint names its ``checkpoint_id`` and namespace and how many pending writes went with
    it; a pending write its ``checkpoint_id``, ``task_id`` and ``index``; a log event its
    ``seq``). ``unreadable``: ranges of seqs a damaged page hid, ``{"table", "after_seq",
    "before_seq", "why"}`` (``before_seq`` None: to the end). ``detached``: checkpoints copied
    without their skipped parent, ``{"thread_id", "namespace", "checkpoint_id", "parent_id"}``.
    """

    source: str
    path: str
    copied: dict[str, int] = field(default_factory=lambda: {"checkpoints": 0, "writes": 0,
                                                             "log": 0})
    skipped: list[dict] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)
    detached: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    check: check.Report | None = None

    @property
    def complete(self) -> bool:
        """True when nothing was skipped or unreadable: DST holds everything SRC held."""
        return not self.skipped and not self.unreadable

    def as_dict(self) -> dict:
        return {"source": self.source, "path": self.path, "complete": self.complete,
                "copied": self.copied, "skipped": self.skipped, "unreadable": self.unreadable,
                "detached": self.detached, "seconds": round(self.seconds, 3),
                "check": self.check.result if self.check else None}


def salvage(source: str | os.PathLike[str], destination: str | os.PathLike[str]
            ) -> SalvageReport:
    """Copy every row of ``source`` that verifies into the new database ``destination``; see
    the module docstring. Raises :class:`~sqlitesaver.errors.SaverError` subclasses when it
    cannot run (``destination`` exists, ``source`` is not a sqlitesaver database or SQLite
    cannot read its first page); a database with damage is not an error: the report says what
    was skipped."""
    started = time.perf_counter()
    src_path = os.path.abspath(os.fspath(source))
    dst = files.check_new_destination(destination, "the salvage destination")
    if dst == src_path:
        raise SaverError(f"cannot salvage {src_path!r} onto itself", path=dst)
    report = SalvageReport(src_path, dst)
    src = _open_source(src_path)
    temp = files.temp_beside(dst)
    try:
        try:
            version = _identify(src, src_path)
            dest = _create(temp, dst)
        except apsw.Error as exc:
            raise translate(exc, src_path, "opening the database to salvage") from exc
        try:
            _Copier(src, src_path, version, dest, report).run()
            dest.execute("PRAGMA journal_mode=WAL").fetchall()
        except apsw.Error as exc:
            # Reading SRC is guarded row by row; an error here is writing the copy.
            raise translate(exc, dst, "writing the salvaged database") from exc
        finally:
            dest.close()
        files.fsync_path(temp)
        report.check = check.check_database(temp)
        files.discard_reader_files(temp)
        if not report.check.ok:
            failed = "; ".join(f"{s.name}: {s.detail}" for s in report.check.steps
                               if s.status in (check.FAILED, check.UNUSABLE))
            raise SaverError(f"the salvaged copy of {src_path!r} failed validation ({failed}); "
                             f"nothing was written at {dst!r}. Please report this as a "
                             "sqlitesaver bug.", path=dst)
        try:
            files.link_into_place(temp, dst)
        except OSError as exc:
            raise translate(exc, dst, "putting the salvaged database in place") from exc
    finally:
        src.close()
        files.remove_family(temp)
    report.seconds = time.perf_counter() - started
    log.logger.info("%s: salvaged into %s: copied %s; skipped %d row(s), %d unreadable "
                    "range(s), %d checkpoint(s) detached", src_path, dst, report.copied,
                    len(report.skipped), len(report.unreadable), len(report.detached))
    return report


def _open_source(path: str) -> apsw.Connection:
    if not os.path.isfile(path):
        raise translate(FileNotFoundError(path), path, "opening the database to salvage")
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error as exc:
        raise translate(exc, path, "opening the database to salvage") from exc
    try:
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        conn.set_busy_timeout(10_000)
        conn.execute("PRAGMA query_only=1")
        conn.execute("PRAGMA trusted_schema=0")
        conn.execute("BEGIN")  # one snapshot for the whole copy
    except apsw.Error as exc:
        conn.close()
        raise translate(exc, path, "opening the database to salvage") from exc
    return conn


def _identify(conn: apsw.Connection, path: str) -> int:
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except (apsw.CorruptError, apsw.NotADBError) as exc:
        raise CorruptDatabaseError(
            f"{path!r}: SQLite cannot read its first page or schema ({describe(exc)}), so "
            "there is nothing salvage can walk; restore from a backup ('python -m sqlitesaver "
            "restore BACKUP PATH')", path=path) from exc
    if application_id != schema.APPLICATION_ID:
        raise NotASaverDatabaseError(f"{path!r} is not a sqlitesaver database (application_id "
                                     f"0x{application_id:08x}); nothing to salvage", path=path)
    if version > schema.latest_version():
        raise SchemaVersionError(f"{path!r} has schema version {version}, written by a newer "
                                 "sqlitesaver; salvage it with that version", path=path)
    if version < 1:
        raise DatabaseFileError(f"{path!r} has no sqlitesaver schema (version {version}); "
                                "nothing to salvage", path=path)
    return version


def _create(temp: str, dst: str) -> apsw.Connection:
    """A new database at ``temp`` with the current schema, in a write transaction. Rollback
    journal while it is filled (the file is nobody's until it is linked into place, and the
    journal of a new file is small); switched to WAL at the end."""
    conn = apsw.Connection(temp, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        schema.migrate(conn)
        conn.execute("BEGIN IMMEDIATE")
    except BaseException:
        conn.close()
        raise
    return conn


class _Copier:
    """One salvage: walks SRC table by table, copies what verifies, records the rest."""

    def __init__(self, src: apsw.Connection, path: str, version: int, dest: apsw.Connection,
                 report: SalvageReport) -> None:
        self.src = src
        self.path = path
        self.dest = dest
        self.report = report
        self.ids = "key, parent_key" if version >= 2 else "NULL, NULL"
        self.copied: set[int] = set()    # checkpoint seqs copied
        self.skipped: set[int] = set()   # checkpoint seqs seen and skipped
        self.gaps: dict[str, list[tuple[int, int | None]]] = {"checkpoints": [], "log": []}
        self.largest = {"checkpoints": 0, "log": 0}  # largest seq seen, skipped included

    def run(self) -> None:
        for seq in self._seqs("checkpoints"):
            self._checkpoint(seq)
        for seq in self._seqs("log"):
            self._log_event(seq)
        self._high_water()
        self.dest.execute("COMMIT")

    # --- walking a table past damage ------------------------------------------------------

    def _seqs(self, table: str) -> Iterator[int]:
        """Every seq of ``table`` that can be reached, in order; ranges hidden by a damaged
        page are recorded in ``report.unreadable``. Each page of the walk seeks to the first
        seq it wants (``>=``): seeking to one above a row on a damaged page would read it."""
        query = f"SELECT seq FROM {table} WHERE seq >= ? ORDER BY seq LIMIT {_PAGE}"
        start = _INT64_MIN
        while True:
            got: list[int] = []
            error: apsw.Error | None = None
            try:
                for (seq,) in self.src.execute(query, (start,)):
                    got.append(seq)
            except apsw.Error as exc:
                error = exc
            for seq in got:
                self.largest[table] = max(self.largest[table], seq)
                yield seq
            if error is None and len(got) < _PAGE:
                return
            if got:
                if got[-1] >= _INT64_MAX:
                    return
                start = got[-1] + 1
            if error is None:
                continue
            # The walk stopped at a page it cannot read, somewhere at or after `start`.
            after = start - 1 if start > _INT64_MIN else _INT64_MIN
            upper = self._next_readable(table, start)
            if upper is not None and upper <= start and not got:
                # The probe reads `start` but the walk cannot get past it: give it up too.
                upper = self._next_readable(table, start + 1) if start < _INT64_MAX else None
            self._gap(table, after, upper, error)
            if upper is None:
                return
            self.largest[table] = max(self.largest[table], upper - 1)
            start = upper

    def _probe(self, table: str, at: int) -> tuple[bool, int | None]:
        """(could be read, the first seq >= ``at``)."""
        try:
            row = self.src.execute(f"SELECT seq FROM {table} WHERE seq >= ? ORDER BY seq "
                                   "LIMIT 1", (at,)).fetchone()
        except apsw.Error:
            return False, None
        return True, None if row is None else row[0]

    def _next_readable(self, table: str, start: int) -> int | None:
        """The first seq at or above ``start`` from which the b-tree can be read again, or
        None: double the distance until a probe reads, then bisect back to the first that
        does."""
        ok, found = self._probe(table, start)
        if ok:
            return found
        failed, step = start, 1
        while True:
            at = min(start + step, _INT64_MAX)
            ok, found = self._probe(table, at)
            if ok:
                break
            failed = at
            if at == _INT64_MAX:
                return None
            step *= 2
        good = at
        while good - failed > 1:
            middle = (good + failed) // 2
            ok, candidate = self._probe(table, middle)
            if ok:
                good, found = middle, candidate
            else:
                failed = middle
        return found

    def _gap(self, table: str, after: int, before: int | None, error: apsw.Error) -> None:
        self.gaps[table].append((after, before))
        self.report.unreadable.append({
            "table": table, "after_seq": None if after == _INT64_MIN else after,
            "before_seq": before, "why": f"a damaged page hides these rows ({describe(error)})"})

    def _in_gap(self, table: str, seq: int) -> bool:
        return any(after < seq and (before is None or seq < before)
                   for after, before in self.gaps[table])

    # --- checkpoints and their pending writes ------------------------------------------------

    def _checkpoint(self, seq: int) -> None:
        try:
            row = self.src.execute(
                "SELECT seq, thread_id, namespace, parent_seq, created_at, state, metadata, "
                f"checksum, {self.ids} FROM checkpoints WHERE seq = ?", (seq,)).fetchone()
        except apsw.Error as exc:
            self._skip_checkpoint(seq, None, f"its row cannot be read ({describe(exc)})")
            return
        if row is None:  # gone between the walk and now: cannot happen in one snapshot
            return
        (_, thread_id, namespace, parent_seq, created, state, meta, checksum, key,
         parent_key) = row
        why = _mismatch(functools.partial(integrity.expected_checkpoint_checksum, checksum),
                        (seq, thread_id, namespace, parent_seq, created, state, meta, key,
                         parent_key), checksum)
        if why:
            self._skip_checkpoint(seq, row, why)
            return
        if parent_seq is not None and (parent_seq in self.skipped
                                       or self._in_gap("checkpoints", parent_seq)):
            self.report.detached.append({
                "thread_id": thread_id, "namespace": namespace,
                "checkpoint_id": key or _format_id(seq),
                "parent_id": parent_key or _format_id(parent_seq)})
            parent_seq = parent_key = None
            checksum = integrity.checkpoint_checksum(seq, thread_id, namespace, None, created,
                                                     state, meta, key, None)
        self.dest.execute(
            "INSERT INTO checkpoints (seq, thread_id, namespace, parent_seq, created_at, "
            "state, metadata, checksum, key, parent_key) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (seq, thread_id, namespace, parent_seq, created, state, meta, checksum, key,
             parent_key))
        self.copied.add(seq)
        self.report.copied["checkpoints"] += 1
        self._writes(seq, thread_id, key or _format_id(seq))

    def _skip_checkpoint(self, seq: int, row: tuple | None, why: str) -> None:
        self.skipped.add(seq)
        thread_id = namespace = key = None
        if row is not None:
            thread_id, namespace, key = row[1], row[2], row[8]
        else:
            try:  # the key columns sit early in the row: often readable when a payload is not
                found = self.src.execute(f"SELECT thread_id, namespace, {self.ids.split(',')[0]}"
                                         " FROM checkpoints WHERE seq = ?", (seq,)).fetchone()
                if found:
                    thread_id, namespace, key = found
            except apsw.Error:
                pass
        try:
            writes = self.src.execute("SELECT count(*) FROM writes WHERE checkpoint_seq = ?",
                                      (seq,)).fetchone()[0]
        except apsw.Error:
            writes = None
        self.report.skipped.append({
            "table": "checkpoints", "thread_id": _text(thread_id), "namespace": _text(namespace),
            "checkpoint_id": _text(key) if key is not None else _format_id(seq),
            "writes_skipped": writes, "why": why})

    def _writes(self, seq: int, thread_id: str, checkpoint_id: str) -> None:
        try:
            rows = self.src.execute(
                "SELECT checkpoint_seq, task_id, idx, channel, value, task_path, checksum "
                "FROM writes WHERE checkpoint_seq = ? ORDER BY task_id, idx", (seq,)).fetchall()
        except apsw.Error as exc:
            self.report.skipped.append({
                "table": "writes", "thread_id": thread_id, "checkpoint_id": checkpoint_id,
                "task_id": None, "index": None,
                "why": f"the pending writes of this checkpoint cannot be read ({describe(exc)})"})
            return
        for w_seq, task_id, index, channel, value, task_path, checksum in rows:
            why = _mismatch(functools.partial(integrity.expected_write_checksum, checksum),
                            (w_seq, task_id, index, channel, task_path, value), checksum)
            if why:
                self.report.skipped.append({
                    "table": "writes", "thread_id": thread_id, "checkpoint_id": checkpoint_id,
                    "task_id": _text(task_id), "index": index if type(index) is int else None,
                    "why": why})
                continue
            self.dest.execute(
                "INSERT INTO writes (checkpoint_seq, task_id, idx, channel, value, task_path, "
                "checksum) VALUES (?,?,?,?,?,?,?)",
                (w_seq, task_id, index, channel, value, task_path, checksum))
            self.report.copied["writes"] += 1

    # --- the log ---------------------------------------------------------------------------

    def _log_event(self, seq: int) -> None:
        try:
            row = self.src.execute("SELECT seq, thread_id, created_at, event, checksum FROM log "
                                   "WHERE seq = ?", (seq,)).fetchone()
        except apsw.Error as exc:
            thread_id = None
            try:
                found = self.src.execute("SELECT thread_id FROM log WHERE seq = ?",
                                         (seq,)).fetchone()
                thread_id = found[0] if found else None
            except apsw.Error:
                pass
            self.report.skipped.append({"table": "log", "thread_id": _text(thread_id),
                                        "seq": seq,
                                        "why": f"its row cannot be read ({describe(exc)})"})
            return
        if row is None:
            return
        _, thread_id, created, event, checksum = row
        why = _mismatch(functools.partial(integrity.expected_log_checksum, checksum),
                        (seq, thread_id, created, event), checksum)
        if why:
            self.report.skipped.append({"table": "log", "thread_id": _text(thread_id),
                                        "seq": seq, "why": why})
            return
        self.dest.execute("INSERT INTO log (seq, thread_id, created_at, event, checksum) "
                          "VALUES (?,?,?,?,?)", row)
        self.report.copied["log"] += 1

    def _high_water(self) -> None:
        try:
            marks = {name: value for name, value in
                     self.src.execute("SELECT name, value FROM high_water")
                     if type(value) is int}
        except apsw.Error:
            marks = {}
        for table in ("checkpoints", "log"):
            value = max(marks.get(table, 0), self.largest[table])
            self.dest.execute("UPDATE high_water SET value = ? WHERE name = ?", (value, table))


def _mismatch(compute: Callable[..., int], columns: tuple, checksum: object) -> str | None:
    """None if the row verifies, else why not."""
    try:
        if compute(*columns) == checksum:
            return None
    except (TypeError, ValueError) as exc:
        return f"a column has the wrong type ({type(exc).__name__}: {exc})"
    return "its bytes do not match their checksum (changed on disk after they were written)"


def _format_id(seq: object) -> str:
    return format(seq, "016x") if type(seq) is int and seq >= 0 else f"<seq {seq!r}>"


def _text(value: object) -> str | None:
    """A value for the report (JSON-safe): text as is, anything else as its repr."""
    return value if value is None or isinstance(value, str) else repr(value)
