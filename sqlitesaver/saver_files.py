"""The file methods of :class:`~sqlitesaver.saver.Saver` (issue #18), one implementation for
every engine: ``put(files=..., workspace=...)``, :meth:`FileMethods.attach_files`,
``list_files``, ``read_file``, ``open_file``, ``restore_workspace``, ``collect_garbage``.

Part of the backend-neutral core (``Saver`` derives from :class:`FileMethods`): what a file
read verifies and what a put with files guarantees is written once, here and in
:mod:`sqlitesaver.attachments` (the statements, in SQLite's dialect). An engine provides
three hooks, declared at the end of the class: ``_file_write`` (one write transaction, the
thread's writers serialised), ``_file_read`` (one snapshot) and ``_seq_in`` (a checkpoint's
seq), each handing the work an :class:`~sqlitesaver.attachments.FileDb` of its own dialect
(SQLite's: ``attachments.FileDb``; a server's: ``sqlitesaver.postgres.files.ServerFileDb``).
A put's files are stored by the callback :meth:`FileMethods._put_files` returns, which the
engine's ``_put_checkpoint`` runs in the checkpoint's own transaction.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from . import attachments
from . import workspace as workspaces
from .errors import CheckpointNotFoundError
from .ids import format_id as _format_id
from .saver_arguments import check_text as _check_text

__all__ = ["FileMethods"]

T = TypeVar("T")


class FileMethods:
    """The file methods of :class:`~sqlitesaver.saver.Saver` (see the module docstring)."""

    _path: str

    def _check_usable(self) -> None:
        raise NotImplementedError

    def _put_files(self, thread_id: str, namespace: str,
                   files: Mapping[str, bytes | str | os.PathLike[str]] | None,
                   workspace: str | os.PathLike[str] | None
                   ) -> "Callable[[attachments.FileDb, int], None]":
        """put()'s ``files`` and ``workspace``, checked and hashed before any transaction
        begins, as the function that stores them with the checkpoint (``_put_checkpoint``'s
        ``files``): its files become exactly these."""
        self._check_file_args(thread_id, None, namespace, writing=True)
        sources = self._sources(files, workspace)

        def store(db: attachments.FileDb, seq: int) -> None:
            attachments.store(db, seq, sources, replace_all=True, db=self._path)
        return store

    def _sources(self, files: Mapping[str, bytes | str | os.PathLike[str]] | None,
                 workspace: str | os.PathLike[str] | None) -> builtins.list:
        sources = [] if files is None else attachments.prepare(files)
        if workspace is not None:
            self._refuse_database_inside(workspace, "workspace")
            given = {source.name for source in sources}
            for source in workspaces.snapshot_sources(workspace):
                if source.name in given:
                    raise attachments.UnsafePathError(
                        f"{source.name!r} is both in files and in the workspace {workspace!r}; "
                        "give it once. Nothing was written.")
                sources.append(source)
            attachments.check_tree(source.name for source in sources)
        return sources

    def attach_files(self, thread_id: str, checkpoint_id: str,
                     files: Mapping[str, bytes | str | os.PathLike[str]] | None = None, *,
                     workspace: str | os.PathLike[str] | None = None,
                     namespace: str = "") -> None:
        """Add files to an existing checkpoint (replacing those of the same names), in one
        transaction, or in the caller's :meth:`transaction` (so a checkpoint put in that
        block and its files commit together, or not at all).

        ``files`` maps a relative POSIX name (``"out/report.md"``: no leading ``/``, no
        ``.`` or ``..``) to the content as ``bytes`` or to a file to read (a ``str`` or
        ``os.PathLike``: a ``str`` is always a path); ``workspace`` adds every file under a
        directory (see :mod:`sqlitesaver.workspace`). Each content is stored once (by its
        SHA-256) however many files hold it, in chunks of 1 MiB read and written one at a
        time, so a file of any size is never held in memory. A file given by path is hashed
        before the transaction and read again inside it; if it changed meanwhile,
        :class:`~sqlitesaver.errors.FileChangedError` and nothing is written. Content no
        file names any more after the replacement is deleted in the same transaction.
        The write lock (on a server: the thread's lock) is held while the bytes are written:
        other writers (of that thread) wait that long.
        """
        _check_text("thread_id", thread_id)
        _check_text("checkpoint_id", checkpoint_id)
        self._check_file_args(thread_id, checkpoint_id, namespace, writing=True)
        sources = self._sources(files, workspace)

        def work(db: attachments.FileDb) -> None:
            seq = self._seq_in(db, thread_id, namespace, checkpoint_id, "checkpoint_id")
            attachments.store(db, seq, sources, replace_all=False, db=self._path)

        self._file_write("attaching files", work, thread_id)

    def list_files(self, thread_id: str, checkpoint_id: str | None = None, *,
                   namespace: str = "") -> "builtins.list[attachments.StoredFile]":
        """The files of a checkpoint (the latest of the thread and namespace by default),
        sorted by name, as :class:`~sqlitesaver.attachments.StoredFile` (name, SHA-256
        digest in hex, size, permission bits); read from one snapshot, every row's checksum
        verified. A checkpoint that does not exist raises
        :class:`~sqlitesaver.errors.CheckpointNotFoundError`."""
        self._check_file_args(thread_id, checkpoint_id, namespace)

        def work(db: attachments.FileDb) -> builtins.list[attachments.StoredFile]:
            seq, label = self._files_checkpoint(db, thread_id, namespace, checkpoint_id)
            return attachments.manifest(db, seq, self._path, label)

        return self._file_read("listing a checkpoint's files", work)

    def read_file(self, thread_id: str, name: str, *, checkpoint_id: str | None = None,
                  namespace: str = "") -> bytes:
        """The bytes of the checkpoint's file ``name`` (the latest checkpoint by default),
        every chunk's checksum and the whole file's SHA-256 verified; damage raises
        :class:`~sqlitesaver.errors.ChecksumError`, a name it does not have
        :class:`~sqlitesaver.errors.FileNotInCheckpointError`. For a large file use
        :meth:`open_file`."""
        with self.open_file(thread_id, name, checkpoint_id=checkpoint_id,
                            namespace=namespace) as stream:
            return stream.read()

    def open_file(self, thread_id: str, name: str, *, checkpoint_id: str | None = None,
                  namespace: str = "") -> "attachments.FileStream":
        """A binary stream (``read()``, ``readinto()``, a context manager) over the
        checkpoint's file ``name``: its manifest entry is read from one snapshot when this is
        called, then one 1 MiB chunk at a time as the caller reads, each verified before it
        is returned (and the SHA-256 of the whole after the last one). Holds no read
        transaction between reads. See :mod:`sqlitesaver.attachments` for what it returns
        if the checkpoint is deleted meanwhile."""
        self._check_file_args(thread_id, checkpoint_id, namespace)
        attachments.check_name(name)

        def work(db: attachments.FileDb) -> tuple[attachments.StoredFile, str]:
            seq, label = self._files_checkpoint(db, thread_id, namespace, checkpoint_id)
            return attachments.entry(db, seq, name, self._path, label), label

        stored, label = self._file_read("opening a checkpoint's file", work)
        return attachments.FileStream(stored, attachments.chunks(self._read_once, stored,
                                                                 label, self._path))

    def restore_workspace(self, thread_id: str, directory: str | os.PathLike[str], *,
                          checkpoint_id: str | None = None,
                          namespace: str = "") -> "workspaces.RestoreReport":
        """Make ``directory`` hold exactly the checkpoint's files (the latest checkpoint by
        default): differing files written under a temporary name, fsynced and renamed into
        place, the directory fsynced; files not in the checkpoint removed; no symbolic link
        inside it followed. A restore killed at any instant leaves each file whole, old or
        new, and running it again ends in exactly the checkpoint's files (see
        :mod:`sqlitesaver.workspace`). The file list is read from one snapshot."""
        self._refuse_database_inside(directory, "directory")
        manifest = self.list_files(thread_id, checkpoint_id, namespace=namespace)
        label = f"the checkpoint restored into {os.fspath(directory)!r}"
        return workspaces.restore(directory, manifest, lambda stored: attachments.chunks(
            self._read_once, stored, label, self._path))

    def collect_garbage(self) -> dict[str, int]:
        """Delete stored file content that no checkpoint's files name, in one transaction;
        return ``{"contents": n, "bytes": b}`` deleted. ``prune``, ``delete_thread``,
        ``delete_matching`` and a replacing ``attach_files`` already do this in their own
        transaction (and a rolled-back transaction leaves nothing), so this finds something
        only in a database changed outside the Saver; ``python -m sqlitesaver check``
        reports such content."""
        self._check_usable()
        count, size = self._file_write("collecting unreferenced file content",
                                       attachments.collect, None)
        return {"contents": count, "bytes": size}

    def _check_file_args(self, thread_id: str, checkpoint_id: str | None, namespace: str,
                         *, writing: bool = False) -> None:
        _check_text("thread_id", thread_id)
        _check_text("namespace", namespace, allow_empty=True)
        if checkpoint_id is not None:
            _check_text("checkpoint_id", checkpoint_id)

    def _files_checkpoint(self, db: "attachments.FileDb", thread_id: str, namespace: str,
                          checkpoint_id: str | None) -> tuple[int, str]:
        """The seq of the checkpoint whose files are read, and how messages name it."""
        if checkpoint_id is None:
            row = db.execute("SELECT seq, key FROM checkpoints WHERE thread_id = ? AND "
                             "namespace = ? ORDER BY seq DESC LIMIT 1",
                             (thread_id, namespace)).fetchone()
            if row is None:
                raise CheckpointNotFoundError(
                    f"thread {thread_id!r} has no checkpoint in namespace {namespace!r} in "
                    f"{self._path!r}", path=self._path)
            seq, key = row
            checkpoint_id = key if key is not None else _format_id(seq)
        else:
            seq = self._seq_in(db, thread_id, namespace, checkpoint_id, "checkpoint_id")
        return seq, f"checkpoint {checkpoint_id!r} of thread {thread_id!r}"

    def _read_once(self, fetch: "Callable[[attachments.FileDb], Any]") -> Any:
        """``fetch(db)`` in a short read of its own (a chunk of a file being streamed)."""
        return self._file_read("reading a file's chunk", fetch, snapshot=False)

    # What each engine provides for the file methods above.

    def _file_write(self, doing: str, work: "Callable[[attachments.FileDb], T]",
                    thread_id: str | None) -> T:
        """``work(db)`` in one write transaction, committed (or in the calling thread's open
        :meth:`transaction`), serialised with every other write to ``thread_id`` (None: to no
        thread in particular); may write gigabytes, so signals are not deferred across it."""
        raise NotImplementedError

    def _file_read(self, doing: str, work: "Callable[[attachments.FileDb], T]", *,
                   snapshot: bool = True) -> T:
        """``work(db)`` in one read snapshot (``snapshot=False``: a single statement's)."""
        raise NotImplementedError

    def _seq_in(self, db: "attachments.FileDb", thread_id: str, namespace: str,
                checkpoint_id: str, argument: str) -> int:
        """The seq of checkpoint ``checkpoint_id`` of the thread and namespace, looked up in
        ``db``'s transaction; :class:`~sqlitesaver.errors.CheckpointNotFoundError` naming
        ``argument`` if there is none."""
        raise NotImplementedError

    def _refuse_database_inside(self, directory: object, what: str) -> None:
        """Raise if ``directory`` (a workspace to snapshot or restore into) holds this
        Saver's own storage; a server's is never in a local directory."""
