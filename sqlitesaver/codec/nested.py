"""Payloads holding tuples, sets or frozensets, decoded in constant C stack.

msgpack hands their extension bodies to ext_hook, where unpacking them would recurse:
:func:`_ext_hook` makes the plain decode give up (:class:`_Nested`), and
:func:`_decode_nested` unpacks each body after the payload that holds it, then builds them
innermost first.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import msgpack

from ..errors import SerializationError
from .extensions import _MAX_NESTED, _NESTING, _invalid, _leaf, _type_name
from .strict import _next

class _Nested(Exception):
    """The payload holds a tuple, set or frozenset: decode() takes the longer way."""


def _ext_hook(code: int, body: bytes) -> Any:
    if code in _NESTING:
        raise _Nested
    return _leaf(code, body)


class _Pending:
    """A tuple, set or frozenset met in a payload, built once the payload is unpacked."""

    __slots__ = ("code", "body", "nested", "items", "value")

    def __init__(self, code: int, body: bytes, nested: int) -> None:
        self.code = code
        self.body = body
        self.nested = nested  # tuples/sets/frozensets it is inside of, itself included
        self.items: list = []
        self.value: Any = None


def _decode_nested(data: bytes) -> Any:
    """decode() of a payload that holds tuples, sets or frozensets, in constant C stack.

    Each one the unpacker meets becomes a _Pending, and the lists and dicts holding one are
    noted; once an unpack returns, the bodies met are unpacked in turn (meeting more), then
    built innermost first (one is met while its parent's body is unpacked, so later), and the
    noted lists and dicts get the built values in place of the _Pending (a dict is refilled in
    its order: a tuple key hashes only once built)."""
    pending: list[_Pending] = []
    holders: list = []
    nested = 0  # tuples/sets/frozensets around the body being unpacked

    def ext_hook(code: int, body: bytes) -> Any:
        if code not in _NESTING:
            return _leaf(code, body)
        if nested >= _MAX_NESTED:
            raise _invalid(_NESTING[code], code, ValueError(
                f"more than {_MAX_NESTED} tuples/sets/frozensets nested"))
        found = _Pending(code, body, nested + 1)
        pending.append(found)
        return found

    def list_hook(items: list) -> list:
        if _Pending in map(type, items):
            holders.append(items)
        return items

    def pairs_hook(pairs: list) -> dict:
        result = dict(pairs)
        if _Pending in map(type, chain.from_iterable(pairs)):
            holders.append(result)
        return result

    # One unpacker for the payload and then each body in turn (never one inside another).
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=ext_hook,
                                list_hook=list_hook, object_pairs_hook=pairs_hook,
                                max_buffer_size=len(data))
    value = _next(unpacker, data)
    for found in pending:  # grows while it runs: bodies hold more
        nested = found.nested
        try:
            items = _next(unpacker, found.body)
            if type(items) is not list:
                raise ValueError(f"expected a msgpack array, found {_type_name(type(items))}")
        except SerializationError:
            raise
        except Exception as exc:
            raise _invalid(_NESTING[found.code], found.code, exc) from exc
        found.items = items
    for found in reversed(pending):
        kind = _NESTING[found.code]
        try:
            found.value = kind(_built(item) for item in found.items)
        except Exception as exc:
            raise _invalid(kind, found.code, exc) from exc
    for holder in holders:
        if type(holder) is list:
            holder[:] = map(_built, holder)
        else:
            entries = [(_built(key), _built(item)) for key, item in holder.items()]
            holder.clear()
            holder.update(entries)
    return _built(value)


def _built(obj: Any) -> Any:
    return obj.value if type(obj) is _Pending else obj
