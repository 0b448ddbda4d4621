"""The argument checks of the backend-neutral core (:mod:`sqlitesaver.saver`), shared by every
public method of :class:`~sqlitesaver.saver.Saver` and its file methods
(:mod:`sqlitesaver.saver_files`).

Guarantee: a check returns only for a value every engine can store as it is given (a text is a
``str`` that encodes as UTF-8, an index an int in SQLite's 64-bit range); anything else raises
:class:`~sqlitesaver.errors.InvalidArgumentError` naming the argument, before any storage step
runs, so a refused call has written nothing. Pure functions: nothing here touches a store.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InvalidArgumentError
from .ids import INT64_MAX as _INT64_MAX

__all__ = ["check_indexes", "check_text"]


def check_text(name: str, value: object, *, allow_empty: bool = False) -> None:
    """``value``, the argument ``name``, is a non-empty ``str`` (empty too if
    ``allow_empty``) that encodes as UTF-8 (no lone surrogate)."""
    if type(value) is not str:
        raise InvalidArgumentError(f"{name} must be a str, not {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidArgumentError(f"{name} must not be empty")
    if not value.isascii():  # only non-ASCII text can hold a lone surrogate
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"{name} {value!r} is not valid UTF-8 text") from None


def check_indexes(indexes: object, writes: Sequence) -> Sequence[int]:
    """``put_writes``' ``indexes``: a sequence (not a text) of distinct 64-bit ints, one per
    write; returned as given."""
    if type(indexes) is not list and type(indexes) is not tuple and (
            isinstance(indexes, (str, bytes)) or not isinstance(indexes, Sequence)):
        raise InvalidArgumentError(
            f"indexes must be a list of ints or None, not {type(indexes).__name__}")
    if len(indexes) != len(writes):
        raise InvalidArgumentError(
            f"indexes has {len(indexes)} entries for {len(writes)} writes: give one per write")
    for position, index in enumerate(indexes):
        if (type(index) is not int and (isinstance(index, bool) or not isinstance(index, int))) \
                or not -_INT64_MAX - 1 <= index <= _INT64_MAX:
            raise InvalidArgumentError(
                f"indexes[{position}] must be an int in SQLite's 64-bit range, not {index!r}")
    if len(set(indexes)) != len(indexes):
        raise InvalidArgumentError(f"indexes must be distinct, not {list(indexes)!r:.80}")
    return indexes
