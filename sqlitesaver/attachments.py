"""Files stored with a checkpoint, in the checkpoint's own transaction (issue #18).

Guarantee: a checkpoint's files are written in the same SQLite transaction as the checkpoint
(or as whatever :meth:`~sqlitesaver.Saver.attach_files` joins), so after a crash at any instant
a checkpoint that is there has all of its files, whole, and one that is not has none; a
rolled-back transaction leaves no byte of its files behind. Reads never return changed bytes:
each chunk's CRC-32 (over the chunk and its place: digest, index, length) is checked as it is
read, a short, long or reordered file is caught by the chunk count and size of its content row
(itself checksummed), and a whole-file read checks the SHA-256 at the end.

Layout (schema version 3, :mod:`sqlitesaver.schema`): ``files`` is each checkpoint's manifest
(relative path, SHA-256 digest, permission bits); ``file_contents`` has one row per distinct
digest, so identical bytes are stored once however many files and checkpoints hold them;
``file_chunks`` holds the bytes in :data:`CHUNK_SIZE` pieces.

Chunk size: 1 MiB. A chunk is read or written whole, so it bounds the memory a file of any
size takes (one chunk, plus SQLite's page cache) and stays a thousand times under SQLite's
1,000,000,000-byte value limit. Per row SQLite adds an index entry and ~20 bytes, the library
a CRC and a Python call: at 1 MiB that is noise next to the 256 overflow pages the chunk fills,
while a 64 KiB chunk measured ~10% slower to store here and a 16 MiB one makes every read of a
small tail cost 16 MiB of memory. Larger chunks would also make the WAL grow in bigger steps
without making a file more atomic: the transaction is the unit either way.

Reading across snapshots: a content row and its chunks never change once written (the digest
is the content), so a stream reads its manifest entry from one snapshot and then each chunk in
a short read of its own, instead of holding one read transaction for as long as the caller
reads (which would keep the ``-wal`` from being reset, as a long :meth:`Saver.list` would;
see README, "Readers and the WAL"). The bytes returned are therefore exactly those of the
checkpoint as it was when the file was opened; if its checkpoint is pruned or deleted and the
content collected while a stream is open, the stream raises
:class:`~sqlitesaver.errors.FileNotInCheckpointError` instead of returning anything else.

Every function here takes a :class:`FileDb`: one engine's connection, which the caller has put
inside its transaction (writes) or read snapshot (reads); nothing here begins or commits. The
statements are written once, in SQLite's dialect; :class:`FileDb` runs them on a SQLite file,
:class:`sqlitesaver.postgres.files.ServerFileDb` on a PostgreSQL server (placeholders, schema,
and the row locks that keep a content a committing writer references from being collected).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zlib import crc32

from msgpack import Packer

from .errors import (ChecksumError, CorruptDatabaseError, FileAccessError, FileChangedError,
                     FileNotInCheckpointError, InvalidArgumentError, UnsafePathError,
                     restore_advice)

__all__ = ["CHUNK_SIZE", "StoredFile", "Source", "FileDb", "check_name", "check_tree", "prepare",
           "store", "copy", "manifest", "entry", "chunks", "collect", "collect_deleted", "totals",
           "chunk_checksum", "content_checksum", "entry_checksum", "FileStream"]

#: Bytes per stored chunk (see the module docstring for why 1 MiB).
CHUNK_SIZE = 1 << 20
#: Permission bits of a file given as bytes.
DEFAULT_MODE = 0o644
#: Longest name, in UTF-8 bytes, and longest component (Linux's PATH_MAX and NAME_MAX).
MAX_NAME_BYTES = 4096
MAX_COMPONENT_BYTES = 255

_KEY_BUF_SIZE = 256


# --- checksums -----------------------------------------------------------------------------------

def chunk_checksum(digest: bytes, index: int, data: bytes) -> int:
    return crc32(data, crc32(Packer(buf_size=_KEY_BUF_SIZE).pack((digest, index, len(data)))))


def content_checksum(digest: bytes, size: int, chunks: int) -> int:
    return crc32(Packer(buf_size=_KEY_BUF_SIZE).pack((digest, size, chunks)))


def entry_checksum(checkpoint_seq: int, name: str, digest: bytes, mode: int) -> int:
    return crc32(Packer(buf_size=_KEY_BUF_SIZE).pack((checkpoint_seq, name, digest, mode)))


# --- names -----------------------------------------------------------------------------------

def check_name(name: object, where: str = "file name") -> str:
    """``name`` if it is a safe relative POSIX path (``"out/report.md"``), else
    :class:`~sqlitesaver.errors.UnsafePathError` saying why."""
    if type(name) is not str:
        raise InvalidArgumentError(f"{where} must be a str, not {type(name).__name__}")

    def refuse(why: str) -> UnsafePathError:
        error = UnsafePathError(f"{where} {name!r} is refused: {why}. Use a relative path "
                                "of '/'-separated names, such as 'out/report.md'; nothing was "
                                "written.")
        error.name = name
        return error

    if not name:
        raise refuse("it is empty")
    if "\0" in name:
        raise refuse("it contains a NUL character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise refuse("it is not valid UTF-8 text") from None
    if name.startswith("/"):
        raise refuse("it is an absolute path")
    if len(encoded) > MAX_NAME_BYTES:
        raise refuse(f"it is {len(encoded)} bytes long, more than {MAX_NAME_BYTES}")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            shown = "an empty component ('//' or a trailing '/')" if not part else repr(part)
            raise refuse(f"it has {shown} component" if part else f"it has {shown}")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise refuse(f"its component {part[:40]!r}... is more than "
                         f"{MAX_COMPONENT_BYTES} bytes long")
    return name


def check_tree(names: Iterable[str], where: str = "files") -> None:
    """Refuse a set of names in which one is a directory of another (``a`` and ``a/b``): no
    directory can hold both."""
    ordered = sorted(names)
    present = set(ordered)
    for name in ordered:
        parts = name.split("/")
        for end in range(1, len(parts)):
            prefix = "/".join(parts[:end])
            if prefix in present:
                error = UnsafePathError(
                    f"{where}: {prefix!r} and {name!r} cannot both be files: {prefix!r} would "
                    "have to be a file and a directory. Rename one; nothing was written.")
                error.name = name
                raise error


# --- what to store ----------------------------------------------------------------------------

@dataclass
class Source:
    """One file to store, hashed once before the transaction: its bytes (``data``) or the
    path to read them from again inside it (``path``)."""

    name: str
    mode: int
    size: int
    digest: bytes
    data: bytes | memoryview | None = None
    path: str | None = None
    #: (st_dev, st_ino) of the file looked at: every later open of ``path`` must find it
    identity: tuple[int, int] | None = None


def _open_regular(path: str, identity: tuple[int, int] | None = None) -> io.FileIO:
    """``path`` opened for reading, refused (``OSError``) unless it is a regular file once
    open and, with ``identity``, the very file (device and inode) looked at before: opened
    without blocking, so a path that became a FIFO since it was looked at cannot hang the
    caller (inside a transaction: holding the write lock); and a path swapped since, for a
    symbolic link or through a renamed parent directory, to a file elsewhere (outside a
    workspace) is refused, not read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file any more")
        if identity is not None and (st.st_dev, st.st_ino) != identity:
            raise OSError(errno.ESTALE, "another file is at this path than the one looked at "
                                        "(it was replaced, or a directory above it was)")
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def _hash_path(path: str, shown: str, identity: tuple[int, int]) -> tuple[bytes, int]:
    hasher = hashlib.sha256()
    size = 0
    try:
        with _open_regular(path, identity) as f:
            while True:
                block = _read_full(f, CHUNK_SIZE)
                if not block:
                    break
                hasher.update(block)
                size += len(block)
    except OSError as exc:
        raise _access(exc, shown, "reading it to store it; nothing was written") from exc
    return hasher.digest(), size


def _access(exc: OSError, shown: str, doing: str) -> FileAccessError:
    error = FileAccessError(f"cannot use file {shown!r} while {doing} "
                            f"({type(exc).__name__}: {exc.strerror or exc})", path=None)
    error.file = shown
    return error


def source_from_path(name: str, path: str, shown: str | None = None,
                     seen: os.stat_result | None = None) -> Source:
    """A regular file at ``path`` (looked at with ``stat()`` first: a FIFO is never
    opened), hashed. ``seen`` is what the caller already found there (a workspace walk's
    ``lstat``): the file opened must be that one (see :func:`_open_regular`)."""
    shown = shown or path
    try:
        st = os.stat(path) if seen is None else seen
    except FileNotFoundError:
        raise InvalidArgumentError(
            f"files[{name!r}] is the path {shown!r}, which does not exist. A str or path "
            "names a file to read; pass bytes to store content directly. Nothing was "
            "written.") from None
    except OSError as exc:
        raise _access(exc, shown, "looking at it to store it; nothing was written") from exc
    if not stat.S_ISREG(st.st_mode):
        from .paths import kind
        error = UnsafePathError(f"files[{name!r}] is {shown!r}, which is {kind(st.st_mode)}, "
                                "not a regular file; only regular files are stored. Nothing "
                                "was written.")
        error.name = name
        raise error
    identity = (st.st_dev, st.st_ino)
    digest, size = _hash_path(path, shown, identity)
    return Source(name, stat.S_IMODE(st.st_mode), size, digest, path=path, identity=identity)


def prepare(files: Mapping[str, object]) -> list[Source]:
    """Check and hash the ``files=`` argument: ``{name: bytes | bytearray | memoryview | str
    | os.PathLike}``; a str or path-like is a file to read. Raises before anything is
    written."""
    if not isinstance(files, Mapping):
        raise InvalidArgumentError(
            f"files must be a mapping of name to bytes or a path, not {type(files).__name__}")
    sources = []
    for name, value in files.items():
        check_name(name, "files key")
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value) if not isinstance(value, bytes) else value
            sources.append(Source(name, DEFAULT_MODE, len(data),
                                  hashlib.sha256(data).digest(), data=data))
        elif isinstance(value, (str, os.PathLike)):
            path = os.fspath(value)
            if not isinstance(path, str):
                raise InvalidArgumentError(f"files[{name!r}]: a path must be a str, not bytes")
            sources.append(source_from_path(name, os.path.abspath(path), path))
        else:
            raise InvalidArgumentError(
                f"files[{name!r}] must be bytes (the content) or a str / os.PathLike (a file "
                f"to read), not {type(value).__name__}; nothing was written")
    check_tree(source.name for source in sources)
    return sources


# --- the statements, per engine ---------------------------------------------------------------

class FileDb:
    """The file functions' connection: SQLite's (an ``apsw.Connection``; ``?`` placeholders,
    the tables by their bare names). :class:`sqlitesaver.postgres.files.ServerFileDb` is a
    PostgreSQL server's; the statements of the functions below are the same for both, only
    :meth:`claim` and :meth:`unreferenced` differ in what they lock."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        """Run one statement; the result has ``fetchone()``, ``fetchall()`` and iterates."""
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        self.conn.executemany(sql, rows)

    def claim(self, digest: bytes, size: int, count: int) -> bool:
        """Make the content ``digest`` stored for the rest of this transaction: False if it
        already is (its chunks too), True if its record was inserted here and the caller
        must write its chunks. SQLite has one writer at a time: nothing can delete it before
        COMMIT."""
        if self.execute("SELECT 1 FROM file_contents WHERE digest = ?",
                        (digest,)).fetchone() is not None:
            return False  # stored once, whoever holds it
        # The content row first: file_chunks refers to it.
        self.execute("INSERT INTO file_contents (digest, size, chunks, checksum) "
                     "VALUES (?,?,?,?)", (digest, size, count,
                                          content_checksum(digest, size, count)))
        return True

    def unreferenced(self, candidates: Iterable[bytes] | None) -> list[tuple[bytes, int]]:
        """``(digest, size)`` of each content (among ``candidates``, or all) that no
        manifest names, safe to delete in this transaction. One index lookup per content
        (``files_by_digest``)."""
        if candidates is None:
            return self.execute(
                "SELECT digest, size FROM file_contents AS c WHERE NOT EXISTS "
                "(SELECT 1 FROM files AS f WHERE f.digest = c.digest)").fetchall()
        orphans = []
        for digest in candidates:
            row = self.execute(
                "SELECT digest, size FROM file_contents AS c WHERE digest = ? AND NOT EXISTS "
                "(SELECT 1 FROM files AS f WHERE f.digest = c.digest)", (digest,)).fetchone()
            if row is not None:
                orphans.append(row)
        return orphans

    def manifests(self, seqs: Sequence[int]) -> Iterator[tuple]:
        """The ``files`` rows ``(checkpoint_seq, name, digest, mode, checksum)`` of the
        checkpoints ``seqs``, one checkpoint after the other (a lookup each: SQLite's
        statements cost no round trip)."""
        for seq in seqs:
            for row in self.execute("SELECT name, digest, mode, checksum FROM files WHERE "
                                    "checkpoint_seq = ? ORDER BY name", (seq,)).fetchall():
                yield (seq, *row)

    def delete_contents(self, digests: Sequence[bytes]) -> None:
        for digest in digests:
            # Chunks explicitly, not only through ON DELETE CASCADE: it does not depend on the
            # connection's foreign_keys setting.
            self.execute("DELETE FROM file_chunks WHERE digest = ?", (digest,))
            self.execute("DELETE FROM file_contents WHERE digest = ?", (digest,))


# --- writing ----------------------------------------------------------------------------------

def store(conn: FileDb, seq: int, sources: list[Source], *, replace_all: bool,
          db: str) -> None:
    """Inside the caller's transaction: make ``sources`` the files of checkpoint ``seq``,
    storing each content not stored yet. ``replace_all``: the checkpoint's files become
    exactly ``sources``; else they are added, replacing files of the same names. Content no
    longer referenced afterwards is deleted here, in the same transaction. Contents are
    claimed in digest order: two writers on a server lock the contents they share in one
    order, so they cannot deadlock on them."""
    existing = {name: digest for name, digest in conn.execute(
        "SELECT name, digest FROM files WHERE checkpoint_seq = ?", (seq,))}
    if replace_all:
        dropped = set(existing)
    else:
        dropped = {s.name for s in sources if s.name in existing}
        check_tree({*existing, *(s.name for s in sources)}, "files of the checkpoint")
    candidates = {existing[name] for name in dropped}
    if dropped:
        conn.executemany("DELETE FROM files WHERE checkpoint_seq = ? AND name = ?",
                         [(seq, name) for name in dropped])
    for source in sorted(sources, key=lambda source: source.digest):
        _store_content(conn, source, db)
        conn.execute(
            "INSERT INTO files (checkpoint_seq, name, digest, mode, checksum) VALUES (?,?,?,?,?)",
            (seq, source.name, source.digest, source.mode,
             entry_checksum(seq, source.name, source.digest, source.mode)))
    candidates -= {s.digest for s in sources}
    if candidates:
        collect(conn, candidates)


def _store_content(conn: FileDb, source: Source, db: str) -> None:
    count = max(1, -(-source.size // CHUNK_SIZE))
    if not conn.claim(source.digest, source.size, count):
        return  # stored once, whoever holds it
    insert = "INSERT INTO file_chunks (digest, idx, data, checksum) VALUES (?,?,?,?)"
    if source.data is not None:
        view = memoryview(source.data)
        for index in range(count):
            data = bytes(view[index * CHUNK_SIZE:(index + 1) * CHUNK_SIZE])
            conn.execute(insert, (source.digest, index, data,
                                  chunk_checksum(source.digest, index, data)))
        return
    # Read again inside the transaction, checking the bytes still have the digest hashed
    # before it: what is stored under a digest is always the content of that digest.
    assert source.path is not None
    hasher = hashlib.sha256()
    size = 0
    changed = False
    try:
        with _open_regular(source.path, source.identity) as f:
            for index in range(count):
                data = _read_full(f, CHUNK_SIZE)
                hasher.update(data)
                size += len(data)
                if index < count - 1 and len(data) != CHUNK_SIZE:
                    changed = True  # shorter than it was
                    break
                conn.execute(insert, (source.digest, index, data,
                                      chunk_checksum(source.digest, index, data)))
            changed = changed or bool(f.read(1))  # longer than it was
    except OSError as exc:
        raise _access(exc, source.path, "reading it to store it; nothing was written") from exc
    if changed or size != source.size or hasher.digest() != source.digest:
        raise FileChangedError(
            f"file {source.path!r} (stored as {source.name!r}) changed while it was being "
            f"stored in {db!r}: it was {source.size} bytes with SHA-256 "
            f"{source.digest.hex()[:16]}..., and reading it again gave other bytes. Nothing of "
            "this transaction was written. Store it again once nothing writes to it.",
            path=db)


def _read_full(f: io.RawIOBase, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the file (a raw read may return less)."""
    data = f.read(n) or b""
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def collect(conn: FileDb, candidates: Iterable[bytes] | None = None) -> tuple[int, int]:
    """Inside the caller's transaction: delete every content (with its chunks) that no
    manifest names, among ``candidates`` or all of them; return (contents, bytes) deleted."""
    orphans = conn.unreferenced(candidates)
    if orphans:
        conn.delete_contents([digest for digest, _ in orphans])
    return len(orphans), sum(size for _, size in orphans if type(size) is int)


def copy(conn: FileDb, seqs: Mapping[int, int], db: str) -> None:
    """Inside ``copy_thread``'s transaction: give each copied checkpoint (old seq -> new seq)
    the files of its source, sharing their content; every source row's checksum verified."""
    for old, name, digest, mode, checksum in conn.manifests(list(seqs)):
        new = seqs[old]
        try:
            intact = entry_checksum(old, name, digest, mode) == checksum
        except (TypeError, ValueError, OverflowError):
            intact = False
        if not intact:
            raise _damage(db, f"the manifest entry {name!r} of a checkpoint being copied")
        conn.execute("INSERT INTO files (checkpoint_seq, name, digest, mode, checksum) "
                     "VALUES (?,?,?,?,?)",
                     (new, name, digest, mode, entry_checksum(new, name, digest, mode)))


def collect_deleted(conn: FileDb) -> None:
    """After ``prune`` / ``delete_thread`` / ``delete_matching`` deleted checkpoints (and, by
    ON DELETE CASCADE, their manifests), inside the same transaction: delete the content no
    manifest names any more. Costs one index lookup per stored content; nothing when no file
    was ever stored."""
    collect(conn)


def totals(conn: Any) -> tuple[int, int]:
    """(distinct contents, their bytes) stored."""
    count, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM file_contents"
                               ).fetchone()
    return count, size


# --- reading ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoredFile:
    """One file of a checkpoint: its relative path, the SHA-256 of its content (hex), its size
    in bytes, and its permission bits."""

    name: str
    digest: str
    size: int
    mode: int


def _damage(db: str, what: str) -> ChecksumError:
    return ChecksumError(
        f"{what} in {db!r} does not match its checksum: the bytes changed on disk after they "
        f"were written. The data was not returned; {restore_advice(db)}.", path=db)


def _content(conn: FileDb, digest: bytes, name: str, db: str) -> tuple[int, int] | None:
    row = conn.execute("SELECT size, chunks, checksum FROM file_contents WHERE digest = ?",
                       (digest,)).fetchone()
    if row is None:
        return None
    size, count, checksum = row
    try:
        intact = content_checksum(digest, size, count) == checksum
    except (TypeError, ValueError, OverflowError):
        intact = False
    if not intact or type(size) is not int or type(count) is not int:
        raise _damage(db, f"the content record of file {name!r}")
    return size, count


def manifest(conn: FileDb, seq: int, db: str, label: str) -> list[StoredFile]:
    """The files of checkpoint ``seq``, by name, every row's checksum verified. ``label``
    names the checkpoint in messages."""
    found = []
    for name, digest, mode, checksum in conn.execute(
            "SELECT name, digest, mode, checksum FROM files WHERE checkpoint_seq = ? "
            "ORDER BY name", (seq,)):
        found.append(_entry(conn, seq, name, digest, mode, checksum, db, label))
    return found


def entry(conn: FileDb, seq: int, name: str, db: str, label: str) -> StoredFile:
    row = conn.execute("SELECT name, digest, mode, checksum FROM files WHERE checkpoint_seq = ? "
                       "AND name = ?", (seq, name)).fetchone()
    if row is None:
        raise FileNotInCheckpointError(f"{label} in {db!r} has no file named {name!r} "
                                       "(list_files() lists the ones it has)", path=db)
    return _entry(conn, seq, *row, db, label)


def _entry(conn: FileDb, seq: int, name: str, digest: bytes, mode: int,
           checksum: int, db: str, label: str) -> StoredFile:
    try:
        intact = entry_checksum(seq, name, digest, mode) == checksum
    except (TypeError, ValueError, OverflowError):
        intact = False
    if not intact or type(digest) is not bytes or len(digest) != 32:
        raise _damage(db, f"the manifest entry {name!r} of {label}")
    content = _content(conn, digest, name, db)
    if content is None:
        raise CorruptDatabaseError(
            f"{db!r} is damaged: file {name!r} of {label} names content "
            f"{digest.hex()[:16]}... that is not stored. Nothing was returned; "
            f"{restore_advice(db)}.", path=db)
    return StoredFile(name, digest.hex(), content[0], mode)


def chunks(read: Callable[[Callable[[FileDb], object]], object], stored: StoredFile,
           label: str, db: str) -> Iterator[bytes]:
    """The content of ``stored``, chunk by chunk, each fetched by ``read(fn)`` (which runs
    ``fn(conn)`` in a short read of its own) and verified; the size and SHA-256 of the whole
    are checked after the last chunk."""
    digest = bytes.fromhex(stored.digest)
    count = max(1, -(-stored.size // CHUNK_SIZE))
    hasher = hashlib.sha256()
    size = 0
    for index in range(count):
        def fetch(conn: FileDb, index: int = index) -> object:
            return conn.execute("SELECT data, checksum FROM file_chunks WHERE digest = ? AND "
                                "idx = ?", (digest, index)).fetchone()
        row = read(fetch)
        if row is None:
            if read(lambda conn: conn.execute("SELECT 1 FROM file_contents WHERE digest = ?",
                                              (digest,)).fetchone()) is None:
                raise FileNotInCheckpointError(
                    f"file {stored.name!r} of {label} in {db!r} was deleted while it was being "
                    "read (its checkpoint was pruned or deleted); the bytes read so far are "
                    "its own, the rest is gone", path=db)
            raise CorruptDatabaseError(
                f"{db!r} is damaged: chunk {index} of file {stored.name!r} of {label} is "
                f"missing. Nothing more was returned; {restore_advice(db)}.", path=db)
        data, checksum = row  # type: ignore[misc]
        try:
            intact = chunk_checksum(digest, index, data) == checksum
        except (TypeError, ValueError, OverflowError):
            intact = False
        if not intact:
            raise _damage(db, f"chunk {index} of file {stored.name!r} of {label}")
        hasher.update(data)
        size += len(data)
        if index == count - 1 and (size != stored.size or hasher.digest() != digest):
            raise _damage(db, f"file {stored.name!r} of {label} (its chunks add up to "
                              f"{size} bytes of another digest)")
        yield data


class FileStream(io.RawIOBase):
    """A read-only binary stream over a stored file (``Saver.open_file``): chunks are read
    one at a time as the caller reads, each verified; ``name``, ``size``, ``digest`` and
    ``mode`` describe the file."""

    def __init__(self, stored: StoredFile, pieces: Iterator[bytes]) -> None:
        super().__init__()
        self.stored = stored
        self.name = stored.name  # type: ignore[misc]
        self.size = stored.size
        self.digest = stored.digest
        self.mode_bits = stored.mode
        self._pieces = pieces
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on a closed file stream")
        while not self._buffer:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buffer = memoryview(piece)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        self._buffer = memoryview(b"")
        closing = getattr(self._pieces, "close", None)
        if closing is not None:
            closing()
        super().close()
