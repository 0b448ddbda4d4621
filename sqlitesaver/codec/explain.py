"""Why encode() refuses a value: the error that names what and where.

:func:`_inspect` walks a value in packing order, following containers by identity: for values
that share containers (where the scan cannot tell how much packing would write), and for
failures, where :func:`_explain` turns the first object that keeps the value from being stored
into a :class:`SerializationError` with its path from the value's name.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

from ..errors import SerializationError
# MAX_OBJECTS is read through the module (scan.MAX_OBJECTS), so that this walk and the scan
# always count against the same bound, also when a test lowers it there.
from . import scan
from .extensions import _MAX_DEPTH, _MAX_NESTED, _SUPPORTED, _packers, _type_name
from .scan import _ATOMS, _CLEAN, _CONTAINERS, _HAS_BYTEARRAY, _NATIVE_EXTRAS, _NESTERS

def _too_many() -> str:
    return (f"it holds more than {scan.MAX_OBJECTS:,} objects, counting a container once for every "
            "place it appears in (each place is stored in full)")


def _explain(value: Any, name: str, cause: BaseException | None) -> SerializationError:
    """The error for the first object, in packing order, that makes ``encode(value)`` fail."""
    problem, _ = _inspect(value, name, leaves=True)
    if problem is not None:
        return problem
    if isinstance(cause, RecursionError):
        return SerializationError(f"cannot serialize {name}: it is nested too deeply for the "
                                  "current Python recursion limit")
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return SerializationError(f"cannot serialize {name}{detail}")


def _children(obj: Any, path: Any) -> Iterator[tuple[Any, Any]]:
    """The objects inside a container, in packing order, each with its path."""
    if type(obj) is dict:
        for i, (key, item) in enumerate(obj.items()):
            yield key, (path, "key", i)
            yield item, (path, "value", key)
    else:
        how = "index" if type(obj) is list or type(obj) is tuple else "member"
        for i, item in enumerate(obj):
            yield item, (path, how, i)


def _leaf_reason(obj: Any) -> str | None:
    """Why the packer refuses ``obj`` (not a container), or None if it does not. Packing it
    alone, so it accepts exactly what the packer accepts."""
    kind = type(obj)
    if kind is bytearray:
        return None
    if kind in _NATIVE_EXTRAS:
        return f"{_type_name(kind)} is not supported; sqlitesaver stores {_SUPPORTED}"
    try:
        _packers[0](obj)
        return None
    except UnicodeEncodeError as exc:  # in a str, or in a datetime's timezone name
        what = "this str" if kind is str else f"its timezone name {exc.object!r}"
        reason = (f"{what} cannot be encoded as UTF-8 ({exc.reason}: "
                  f"{exc.object[exc.start:exc.end]!r} at index {exc.start})")
    except TypeError as exc:
        reason = str(exc)
    except Exception as exc:
        reason = f"{_type_name(kind)} cannot be packed ({type(exc).__name__}: {exc})"
    if kind is datetime.datetime or kind is datetime.time:
        reason = f"{_type_name(kind)}: {reason}"
    return reason


def _inspect(value: Any, name: str, *, leaves: bool) -> tuple[SerializationError | None, int]:
    """Walk ``value`` once, in packing order, entering each distinct container once; return
    the error for the first thing that keeps it from being stored (None if nothing does), and
    _HAS_BYTEARRAY or _CLEAN.

    Exact where _scan() is fast: it follows containers by identity, so it finds a value that
    contains itself at the first repeat, and its work grows with the objects the value really
    holds, not with the copies packing would write; those it counts from each container's
    totals (objects, levels and tuples/sets/frozensets below it), kept once it is walked.
    With ``leaves`` it also packs every leaf alone, to name the one the packer refuses; without,
    it only checks the structure (encode() packs next, and explains a failure with ``leaves``).
    A Python walk: for failures, and values that share containers.
    """
    found = _CLEAN
    walked: dict[int, tuple[int, int, int]] = {}  # id -> (objects, levels, nesters) below it
    open_paths: dict[int, Any] = {}  # id -> path, for each container the walk is inside of

    def error(path: Any, reason: str) -> tuple[SerializationError, int]:
        return SerializationError(f"cannot serialize {_render(name, path)}: {reason}"), found

    too_deep = f"it is nested more than {_MAX_DEPTH} containers deep"
    too_nested = f"more than {_MAX_NESTED} tuples/sets/frozensets are nested in one another"
    # A frame per open container: [obj, its children, depth, nesters around its children,
    # objects so far, levels below, nesters below, whether its str keys count].
    stack: list[list] = []
    item: tuple | None = (value, None, 0, 0)  # the next object: obj, path, depth, nesters around
    while True:
        if item is not None:
            obj, path, depth, nested = item
            item = None
            kind = type(obj)
            if depth > _MAX_DEPTH:
                return error(path, too_deep)
            if kind in _CONTAINERS:
                key = id(obj)
                if key in open_paths:
                    return error(path, f"it contains itself (it is the same {_type_name(kind)}"
                                       f" as {_render(name, open_paths[key])}, which holds it)")
                nester = kind in _NESTERS
                if nester and nested >= _MAX_NESTED:
                    return error(path, too_nested)
                totals = walked.get(key)
                if totals is None:
                    if not (_packs_alone(obj) if leaves else _flat(obj)):
                        open_paths[key] = path
                        counts_keys = kind is dict and not set(map(type, obj)) <= {str}
                        stack.append([obj, _children(obj, path), depth, nested + nester, 1, 0,
                                      0, counts_keys])
                        continue
                    totals = walked[key] = _flat_totals(obj)
                objects, levels, nesters = totals
                if depth + levels > _MAX_DEPTH:
                    return error(path, too_deep)
                if nested + nesters > _MAX_NESTED:
                    return error(path, too_nested)
            else:
                if kind is bytearray:
                    found = _HAS_BYTEARRAY
                elif kind in _NATIVE_EXTRAS or leaves:
                    reason = _leaf_reason(obj)
                    if reason is not None:
                        return error(path, reason)
                objects, levels, nesters = 1, 0, 0
                if stack and path[1] == "key" and not stack[-1][7]:
                    objects = 0  # a str key of a dict whose keys are all str: see MAX_OBJECTS
        else:
            frame = stack[-1]
            step = next(frame[1], None)
            if step is not None:
                item = (step[0], step[1], frame[2] + 1, frame[3])
                continue
            stack.pop()
            obj = frame[0]
            del open_paths[id(obj)]
            objects, levels, nesters = frame[4], frame[5], frame[6] + (type(obj) in _NESTERS)
            walked[id(obj)] = (objects, levels, nesters)
        if not stack:
            if objects > scan.MAX_OBJECTS:
                return error(None, _too_many())
            return None, found
        parent = stack[-1]
        parent[4] += objects
        parent[5] = max(parent[5], levels + 1)
        parent[6] = max(parent[6], nesters)


def _flat(obj: Any) -> bool:
    """True if the container holds atoms only (no container, nothing _scan() rejects)."""
    if type(obj) is dict:
        return set(map(type, obj)) <= _ATOMS and set(map(type, obj.values())) <= _ATOMS
    return set(map(type, obj)) <= _ATOMS


def _packs_alone(obj: Any) -> bool:
    """True if the container holds atoms only and packs: nothing in it to explain."""
    if not _flat(obj):
        return False
    try:
        _packers[0](obj)
    except Exception:
        return False
    return True


def _flat_totals(obj: Any) -> tuple[int, int, int]:
    """(objects, levels, nesters) of a container of atoms only, as _inspect() counts them."""
    objects = 1 + len(obj)
    if type(obj) is dict and not set(map(type, obj)) <= {str}:
        objects += len(obj)
    return objects, 1 if obj else 0, 1 if type(obj) in _NESTERS else 0


def _render(name: str, path: Any) -> str:
    parts = []
    while path is not None:
        path, how, what = path
        if how == "value":
            text = repr(what)
            parts.append(f"[{text if len(text) <= 60 else text[:57] + '...'}]")
        elif how == "index":
            parts.append(f"[{what}]")
        else:
            parts.append(f"[<{how} {what}>]")
    parts.reverse()
    if len(parts) > 24:  # a path hundreds of levels deep
        parts[8:-8] = ["..."]
    return name + "".join(parts)

