"""The checksums step: every stored payload (checkpoints, pending writes, log events) matches
its checksum, computed with :mod:`sqlitesaver.integrity` exactly as the Saver does on every
read, and every text in those rows is valid UTF-8 (:func:`_rows` reads them without raising)."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import apsw

from .. import integrity
from ..errors import describe
from .report import _SHOWN, FAILED, OK, Report, _checkpoint_id
from .sqlite_checks import _known_schema


# --- payload checksums ------------------------------------------------------------------------

def _check_payloads(report: Report, conn: apsw.Connection) -> None:
    name = "checksums"
    if not _known_schema(report, name):
        return
    try:
        for table, rows in (("checkpoints", _checkpoint_failures(conn, report.schema_version)),
                            ("writes", _write_failures(conn)),
                            ("log", _log_failures(conn))):
            report.payloads_checked[table] = 0
            for failure in rows:
                report.payloads_checked[table] += 1
                if failure is None:
                    continue
                report.payloads_failed += 1
                if len(report.payload_failures) < _SHOWN:
                    report.payload_failures.append(failure)
    except apsw.Error as exc:
        report.add(name, FAILED, f"reading the payloads failed ({describe(exc)}) after "
                                 f"{_counts(report.payloads_checked)}{_failures(report)}")
        return
    counts = _counts(report.payloads_checked)
    if report.payloads_failed:
        report.add(name, FAILED, f"{report.payloads_failed} payload(s) do not match their "
                                 f"checksum (checked {counts}){_failures(report)}")
    else:
        report.add(name, OK, f"{counts}: all match")


def _failures(report: Report) -> str:
    """': <the first failures>', or '' when there are none."""
    if not report.payloads_failed:
        return ""
    shown = "; ".join(_describe_failure(f) for f in report.payload_failures)
    hidden = report.payloads_failed - len(report.payload_failures)
    return f": {shown}" + (f" (and {hidden} more)" if hidden else "")


def _counts(checked: dict[str, int]) -> str:
    labels = {"checkpoints": "checkpoints", "writes": "pending writes", "log": "log events"}
    return ", ".join(f"{n} {labels[table]}" for table, n in checked.items()) or "0 payloads"


def _verified(compute, key: dict, columns: tuple, checksum: object) -> dict | None:
    """None when ``compute(*columns) == checksum``, else the failure's key."""
    try:
        if compute(*columns) == checksum:
            return None
    except (TypeError, ValueError, OverflowError) as exc:  # a column of the wrong type: damage
        return dict(key, error=f"{type(exc).__name__}: {exc}")
    return key


def _rows(conn: apsw.Connection, columns: Sequence[str], rest: str
          ) -> Iterator[tuple[list, list[str]]]:
    """``SELECT columns rest``, each row with the names of its columns that hold a text that
    is not valid UTF-8 (APSW would raise UnicodeDecodeError on the whole row): such a text
    comes back as a str with the bad bytes escaped (``\\xff``), everything else as stored.
    Each column is read twice: as bytes when it holds text, as itself otherwise."""
    select = ", ".join(f"iif(typeof({c}) = 'text', CAST({c} AS BLOB), NULL), "
                       f"iif(typeof({c}) = 'text', NULL, {c})" for c in columns)
    for row in conn.execute(f"SELECT {select} {rest}"):
        values, bad = [], []
        for column, text, other in zip(columns, row[::2], row[1::2]):
            if text is None:
                values.append(other)
                continue
            try:
                values.append(text.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(text.decode("utf-8", "backslashreplace"))
                bad.append(column)
        yield values, bad


def _not_utf8(key: dict, bad: list[str]) -> dict:
    return dict(key, error=f"{', '.join(bad)}: text that is not valid UTF-8")


def _checkpoint_failures(conn: apsw.Connection, version: int | None
                         ) -> Iterator[dict | None]:
    # Schema version 1 (never migrated here: the check writes nothing) has no id columns.
    ids = ["key", "parent_key"] if (version or 0) >= 2 else ["NULL", "NULL"]
    for values, bad in _rows(conn, ["seq", "thread_id", "namespace", "parent_seq", "created_at",
                                    "state", "metadata", "checksum", *ids],
                             "FROM checkpoints ORDER BY seq"):
        (seq, thread_id, namespace, parent_seq, created, state, meta, checksum, key,
         parent_key) = values
        failure = {"table": "checkpoints",
                   "checkpoint_id": _checkpoint_id(seq) if key is None else key,
                   "thread_id": thread_id, "namespace": namespace}
        yield _not_utf8(failure, bad) if bad else _verified(
            functools.partial(integrity.expected_checkpoint_checksum, checksum), failure,
            (seq, thread_id, namespace, parent_seq, created, state, meta, key, parent_key),
            checksum)


def _write_failures(conn: apsw.Connection) -> Iterator[dict | None]:
    for values, bad in _rows(conn, ["checkpoint_seq", "task_id", "idx", "channel", "value",
                                    "task_path", "checksum"],
                             "FROM writes ORDER BY checkpoint_seq, task_id, idx"):
        seq, task_id, index, channel, value, task_path, checksum = values
        failure = {"table": "writes", "checkpoint_id": _checkpoint_id(seq),
                   "task_id": task_id, "index": index}
        yield _not_utf8(failure, bad) if bad else _verified(
            functools.partial(integrity.expected_write_checksum, checksum), failure,
            (seq, task_id, index, channel, task_path, value), checksum)


def _log_failures(conn: apsw.Connection) -> Iterator[dict | None]:
    for values, bad in _rows(conn, ["seq", "thread_id", "created_at", "event", "checksum"],
                             "FROM log ORDER BY seq"):
        seq, thread_id, created, event, checksum = values
        failure = {"table": "log", "seq": seq, "thread_id": thread_id}
        yield _not_utf8(failure, bad) if bad else _verified(
            functools.partial(integrity.expected_log_checksum, checksum), failure,
            (seq, thread_id, created, event), checksum)


def _describe_failure(failure: dict) -> str:
    table = failure["table"]
    if table == "checkpoints":
        text = (f"checkpoint {failure['checkpoint_id']!r} of thread {failure['thread_id']!r}"
                + (f" (namespace {failure['namespace']!r})" if failure["namespace"] else ""))
    elif table == "writes":
        text = (f"pending write ({failure['task_id']!r}, {failure['index']}) of checkpoint "
                f"{failure['checkpoint_id']!r}")
    else:
        text = f"log event {failure['seq']} of thread {failure['thread_id']!r}"
    return f"{table}: {text}" + (f" [{failure['error']}]" if "error" in failure else "")
