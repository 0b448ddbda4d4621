"""The files step (schema version 3, :mod:`sqlitesaver.attachments`): every manifest entry
matches its checksum and names stored content, and every content's chunks are all there, each
matching its CRC-32, adding up to its size and SHA-256; content no manifest names is a note.
:func:`report_files` runs on either engine."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apsw

from .. import attachments
from ..errors import SaverError
from .payloads import _rows
from .report import FAILED, NOTE, OK, SKIPPED, Report, _checkpoint_id, _listed
from .sqlite_checks import _known_schema


# --- files (schema version 3, sqlitesaver.attachments) ----------------------------------------

def _check_files(report: Report, conn: apsw.Connection) -> None:
    """The files step on a SQLite file (see :func:`report_files`); text that is not UTF-8 in a
    manifest is reported, not raised."""
    if not _known_schema(report, "files"):
        return
    if (report.schema_version or 0) < 3:
        report.add("files", SKIPPED, f"schema version {report.schema_version} stores no files")
        return

    def execute(sql: str, params: Sequence[object] = ()) -> Iterable[tuple]:
        return conn.execute(sql, params)
    report_files(report, _rows(conn, ["checkpoint_seq", "name", "digest", "mode", "checksum"],
                               "FROM files ORDER BY checkpoint_seq, name"), execute, execute)


#: A statement in SQLite's dialect (``?`` placeholders, bare table names) and its parameters,
#: run by an engine; its rows.
Execute = Callable[..., Iterable[tuple]]


def report_files(report: Report, manifest: Iterable[tuple[Sequence[Any], Sequence[str]]],
                 execute: Execute, stream: Execute) -> None:
    """The files step of the validator, on any engine: every manifest entry's checksum and
    name, and that its content exists; every content's record, its chunks (all there, in
    order, each matching its CRC-32) and the SHA-256 and size of their concatenation.
    Content that no manifest names is reported as a note: it is garbage, not damage
    (``Saver.collect_garbage()`` deletes it). ``manifest``: the ``files`` rows ``(seq, name,
    digest, mode, checksum)``, each with the columns found damaged on the way; ``execute``
    runs :mod:`sqlitesaver.attachments`' dialect of SQL on the engine, ``stream`` the same
    for one content's chunks, without holding them all in memory at once."""
    name = "files"
    problems: list[str] = []
    entries = 0
    for values, bad in manifest:
        entries += 1
        seq, file_name, digest, mode, checksum = values
        where = f"file {file_name!r} of checkpoint {_checkpoint_id(seq)!r}"
        if bad:
            problems.append(f"{where}: {', '.join(bad)} is not valid UTF-8")
            continue
        try:
            intact = attachments.entry_checksum(seq, file_name, digest, mode) == checksum
        except (TypeError, ValueError, OverflowError):
            intact = False
        if not intact:
            problems.append(f"{where}: its manifest entry does not match its checksum")
            continue
        try:
            attachments.check_name(file_name)
        except SaverError as exc:
            problems.append(f"{where}: {exc}")
    for seq, file_name, digest in execute(
            "SELECT checkpoint_seq, name, digest FROM files AS f WHERE NOT EXISTS "
            "(SELECT 1 FROM file_contents AS c WHERE c.digest = f.digest) "
            "ORDER BY checkpoint_seq, name"):
        problems.append(f"file {file_name!r} of checkpoint {_checkpoint_id(seq)!r} names "
                        f"content {_hex(digest)} that is not stored")
    contents = chunk_rows = total = 0
    for digest, size, count, checksum in execute(
            "SELECT digest, size, chunks, checksum FROM file_contents ORDER BY digest"):
        contents += 1
        where = f"content {_hex(digest)}"
        try:
            intact = attachments.content_checksum(digest, size, count) == checksum
        except (TypeError, ValueError, OverflowError):
            intact = False
        if not intact:
            problems.append(f"{where}: its record does not match its checksum")
            continue
        hasher, length, expected = hashlib.sha256(), 0, 0
        for index, data, chunk_sum in stream(
                "SELECT idx, data, checksum FROM file_chunks WHERE digest = ? ORDER BY idx",
                (digest,)):
            chunk_rows += 1
            try:
                ok = index == expected and \
                    attachments.chunk_checksum(digest, index, data) == chunk_sum
            except (TypeError, ValueError, OverflowError):
                ok = False
            if not ok:
                problems.append(f"{where}: chunk {index!r} (expected chunk {expected}) is "
                                "missing, out of place or does not match its checksum")
                break
            hasher.update(data)
            length += len(data)
            expected += 1
        else:
            if expected != count or length != size or hasher.digest() != digest:
                problems.append(f"{where}: its {expected} chunk(s) hold {length} bytes with "
                                f"another digest; its record says {count} chunk(s), {size} "
                                "bytes")
        total += size if type(size) is int else 0
    for (digest,) in execute(
            "SELECT DISTINCT digest FROM file_chunks AS k WHERE NOT EXISTS "
            "(SELECT 1 FROM file_contents AS c WHERE c.digest = k.digest)"):
        problems.append(f"chunks of content {_hex(digest)} whose record is missing")
    ((orphans, orphan_bytes),) = list(execute(
        "SELECT count(*), coalesce(sum(size), 0) FROM file_contents AS c WHERE NOT EXISTS "
        "(SELECT 1 FROM files AS f WHERE f.digest = c.digest)"))
    summary = (f"{entries} file(s) in manifests, {contents} distinct content(s) of {total} "
               f"bytes in {chunk_rows} chunk(s)")
    if problems:
        report.add(name, FAILED, f"{len(problems)} problem(s) in {summary}: "
                                 f"{_listed(problems)}")
    elif orphans:
        report.add(name, NOTE, f"{summary}: all match their checksums and digests; "
                               f"{orphans} content(s) ({orphan_bytes} bytes) that no "
                               "checkpoint's files name, which Saver.collect_garbage() deletes")
    else:
        report.add(name, OK, f"{summary}: all match their checksums and digests, every "
                             "content is named by a file")


def _hex(digest: object) -> str:
    return f"{digest.hex()[:16]}..." if isinstance(digest, bytes) else repr(digest)
