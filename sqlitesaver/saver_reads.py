"""How the backend-neutral core (:mod:`sqlitesaver.saver`) turns the rows a storage step
returns into records: :class:`VerifiedReads`, a base of :class:`~sqlitesaver.saver.Saver`, with
the checksum checks (``_verify``, ``_verify_writes``), the building of a
:class:`~sqlitesaver.records.Checkpoint` (``_checkpoint``) and the pairing of a listing's
checkpoints with their pending writes (``_merge``); and what they and the engines share:
:func:`to_datetime` (a stored ``created_at``), :func:`matches` (a metadata filter) and
:class:`DamagedReporter` (``list(skip_damaged=True)``'s report of a skipped checkpoint).

Guarantee: no record is built from a payload whose checksum does not hold. A checkpoint's or
a pending write's bytes that fail their checksum, or a column of the wrong type in the row,
raise the engine's :class:`~sqlitesaver.errors.ChecksumError` (``_checksum_error``) before
anything is decoded; a listing's metadata filter is applied only to verified metadata. The
rows have the one shape every engine returns (see :mod:`sqlitesaver.saver`); the methods are
called as ``self._checkpoint`` etc., as before they moved here, so the hot reads pay no extra
lookup.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from . import codec, integrity, log
from .errors import ChecksumError, SaverError
from .ids import format_id as _format_id
from .records import Checkpoint, new_checkpoint, new_pending_write

__all__ = ["DamagedReporter", "VerifiedReads", "matches", "to_datetime"]

# Bound once for the hot reads (no module lookup per row): a test that replaces codec.decode
# must replace this name too.
_decode = codec.decode


class VerifiedReads:
    """The core's read-side methods of :class:`~sqlitesaver.saver.Saver` (see the module
    docstring)."""

    _path: str

    def _checksum_error(self, what: str) -> ChecksumError:
        """The engine's (declared on :class:`~sqlitesaver.saver.Saver`)."""
        raise NotImplementedError

    def _verify(self, row: tuple) -> None:
        seq, thread_id, namespace, parent_seq, created, state, meta, checksum, key, \
            parent_key = row
        try:
            intact = integrity.expected_checkpoint_checksum(  # in the form it is stored in
                checksum, seq, thread_id, namespace, parent_seq, created, state, meta, key,
                parent_key) == checksum
        except (TypeError, ValueError, OverflowError):  # a column of the wrong type: damage
            intact = False
        if not intact:
            raise self._checksum_error(
                f"checkpoint {key or _format_id(seq)!r} of thread {thread_id!r}")

    def _verify_writes(self, checkpoint_id: str, writes: Iterable[tuple]) -> None:
        for w_seq, task_id, index, channel, value, task_path, checksum in writes:
            try:
                intact = integrity.expected_write_checksum(  # in its stored form
                    checksum, w_seq, task_id, index, channel, task_path, value) == checksum
            except (TypeError, ValueError, OverflowError):  # a column of the wrong type
                intact = False
            if not intact:
                raise self._checksum_error(
                    f"pending write ({task_id!r}, {index}) of checkpoint {checkpoint_id!r}")

    def _checkpoint(self, row: tuple, writes: Sequence[tuple],
                    metadata: dict | None = None, *, records: bool = True) -> Any:
        """The record of a checkpoint row and its write rows; ``metadata``: the row's
        metadata, already verified and decoded (a listing's filter read it).

        ``records=False`` (the LangGraph adapter's ``get_tuple``, which builds LangGraph's
        own objects): the same checks and decoding, but a tuple ``(thread_id, namespace,
        checkpoint_id, parent_id, state, metadata, writes)``, each write a tuple ``(task_id,
        index, channel, value, task_path)``, and no ``created_at``: no record built only to
        be taken apart."""
        seq, thread_id, namespace, parent_seq, created, state, meta, _, key, parent_key = row
        if metadata is None:
            self._verify(row)
            metadata = _decode(meta)
        checkpoint_id = _format_id(seq) if key is None else key
        pending: Any = ()
        if writes:
            self._verify_writes(checkpoint_id, writes)
            # Two comprehensions rather than tuples then records: 305,352 -> 302,368
            # instructions per get with 2 writes (bench/instructions.py core-get-writes).
            if records:
                pending = tuple([new_pending_write(task_id, index, channel, _decode(value),
                                                   task_path)
                                 for _, task_id, index, channel, value, task_path, _ in writes])
            else:
                pending = [(task_id, index, channel, _decode(value), task_path)
                           for _, task_id, index, channel, value, task_path, _ in writes]
        if parent_key is None and parent_seq is not None:
            parent_key = _format_id(parent_seq)
        if not records:
            return (thread_id, namespace, checkpoint_id, parent_key, _decode(state), metadata,
                    pending)
        return new_checkpoint(thread_id, namespace, checkpoint_id, parent_key,
                              to_datetime(created), _decode(state), metadata, pending)

    def _merge(self, checkpoints: Iterator[tuple], writes: Iterator[tuple],
               limit: int | None, metadata: dict | None,
               damaged: Callable[[str, ChecksumError], None] | None = None
               ) -> Generator[Checkpoint, None, int]:
        """Pair two streams ordered by descending seq: checkpoints and their writes.
        ``damaged``: skip a checkpoint that fails a checksum and report it there. Returns
        how many checkpoints it yielded (``yield from`` hands it to the caller)."""
        pending = next(writes, None)
        produced = 0
        previous = None
        checkpoint_of = self._checkpoint
        for row in checkpoints:
            seq = row[0]
            if previous is not None and seq >= previous:
                raise SaverError(f"internal error: checkpoints listed out of order ({seq} "
                                 f"after {previous}) in {self._path!r}", path=self._path)
            previous = seq
            mine: builtins.list[tuple] | tuple = ()  # a list only when it has writes
            while pending is not None and pending[0] >= seq:
                if pending[0] == seq:
                    if not mine:
                        mine = []
                    mine.append(pending)
                current, pending = pending[0], next(writes, None)
                if pending is not None and pending[0] > current:
                    raise SaverError(f"internal error: pending writes listed out of order "
                                     f"({pending[0]} after {current}) in {self._path!r}",
                                     path=self._path)
            try:
                if metadata is None:
                    checkpoint = checkpoint_of(row, mine)
                else:
                    self._verify(row)
                    found = _decode(row[6])
                    if not matches(found, metadata):
                        continue
                    checkpoint = checkpoint_of(row, mine, found)
            except ChecksumError as exc:
                if damaged is None:
                    raise
                damaged(row[8] if row[8] is not None else _format_id(seq), exc)
                continue
            yield checkpoint
            produced += 1
            if limit is not None and produced >= limit:
                break
        return produced


class DamagedReporter:
    """``list(skip_damaged=True)``: report each damaged checkpoint skipped (the logger, then the
    caller's ``on_damaged``)."""

    __slots__ = ("path", "thread_id", "on_damaged")

    def __init__(self, path: str, thread_id: str,
                 on_damaged: Callable[[str, ChecksumError], None] | None) -> None:
        self.path = path
        self.thread_id = thread_id
        self.on_damaged = on_damaged

    def __call__(self, checkpoint_id: str, error: ChecksumError) -> None:
        log.damaged_skipped(self.path, self.thread_id, checkpoint_id, error)
        if self.on_damaged is not None:
            self.on_damaged(checkpoint_id, error)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_datetime(us: int) -> datetime:
    # Exact, unlike fromtimestamp(float); positional, as keyword parsing costs 40% more.
    return _EPOCH + timedelta(0, 0, us)


def matches(found: Any, wanted: dict) -> bool:
    return isinstance(found, dict) and all(
        key in found and found[key] == value for key, value in wanted.items())
