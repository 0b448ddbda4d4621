"""The adapter side by side with LangGraph's own SQLite saver (``langgraph-checkpoint-sqlite``):
the same puts, then the same ``list`` / ``alist`` calls on both, results compared (ids, threads,
namespaces, metadata) or the same kind of error (a ``ValueError`` for a bad filter key).

Each saver has its own temporary file (never one file for both in one process: SQLite's POSIX
locks are per process). The metadata shapes and filters come from a seeded generator: nested
dicts, keys with ``.``, ``-`` and digits, values of every JSON type. It leaves out the cases
where the README documents a deliberate difference; those have their own tests below, which pin
what each saver does.

SQLite by nature: compared with LangGraph's own SQLite saver.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import sqlite3
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.sqlite import SqliteSaver as TheirSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver as TheirAsyncSaver

from sqlitesaver import InvalidArgumentError
from sqlitesaver.langgraph import AsyncSqliteSaver, SqliteSaver

THREADS = ("t1", "t-2", "3")
NAMESPACES = ("", "child:1")
# Keys a filter may name (letters, digits, "_", "-"), and keys it cannot: a literal dot (a
# dot in a filter is a path step), a space, non-ASCII.
KEYS = ("a", "b", "user", "name", "access-level", "x_1", "0", "12", "A-b_9", "step")
UNFILTERABLE_KEYS = ("user.name", "a.b", "two words", "zoë")
# Top-level scalars, chosen so that equal-looking values of different types meet: LangGraph's
# SQL and Python's == agree on all of them (1 == 1.0 == True, "1" != 1, None only matches None).
SCALARS = (None, True, False, 0, 1, -3, 7, 2**40, 0.0, 1.0, 3.0, 0.5, -2.25, 1e10,
           "", "1", "true", "bob", "ann", "zoë", "a.b", "null")
# Inside dicts and lists, which a filter may also compare whole: values whose == is their JSON
# text's equality (no 1/1.0/True confusion, ASCII only; dict keys in one order), since
# LangGraph compares a dict or a list by its JSON text (see the README).
DEEP_SCALARS = (None, True, False, 2, -3, 7, 2**40, 0.5, -2.25, "", "1", "true", "bob", "a.b")
INNER = (None, True, False, 2, 5, 7, "x", "y", "bob", "")
BAD_KEYS = ("two words", "a;b", "a'b", "zoë", "a/b", "$", "a[0]", 'a"', "", "*", "a b.c",
            "a,b", "a\tb", "a=b", "a)")


def cfg(thread: str | None = None, ns: str | None = None,
        checkpoint_id: str | None = None) -> dict | None:
    if thread is None:
        return None
    configurable: dict[str, Any] = {"thread_id": thread}
    if ns is not None:
        configurable["checkpoint_ns"] = ns
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def an_id(n: int) -> str:
    """Ids shaped like LangGraph's uuid6 ids, growing with n (the order both savers list in)."""
    return f"1ef4f797-8335-6428-8001-{n:012x}"


# --- the generator -------------------------------------------------------------------------------

def inner_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth >= 2 or roll < 0.6:
        return rng.choice(INNER)
    if roll < 0.8:
        return [inner_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return inner_dict(rng, depth + 1)


def inner_dict(rng: random.Random, depth: int) -> dict:
    keys = sorted(set(rng.sample(KEYS, rng.randrange(3))))  # one key order for equal dicts
    return {key: inner_value(rng, depth) for key in keys}


def nested(rng: random.Random, depth: int) -> dict:
    """A dict a filter can walk into: scalars of every type, nested dicts, lists, dicts."""
    out: dict[str, Any] = {}
    keys = rng.sample(KEYS, rng.randrange(1, 4))
    for key in keys if depth == 0 else sorted(keys):
        roll = rng.random()
        if roll < 0.5:
            out[key] = rng.choice(SCALARS if depth == 0 else DEEP_SCALARS)
        elif roll < 0.7 and depth < 3:
            out[key] = nested(rng, depth + 1)
        elif roll < 0.85:
            out[key] = [inner_value(rng, 1) for _ in range(rng.randrange(3))]
        else:
            out[key] = inner_dict(rng, 1)
    return out


def metadata(rng: random.Random) -> dict:
    meta = nested(rng, 0)
    for key in UNFILTERABLE_KEYS:
        if rng.random() < 0.2:
            meta[key] = rng.choice(SCALARS)
    return meta


def paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every (path, value) a filter can name in a metadata dict."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in KEYS:
                found.append(((*prefix, key), item))
                found.extend(paths(item, (*prefix, key)))
    return found


def a_filter(rng: random.Random, stored: list[dict]) -> dict:
    wanted: dict[str, Any] = {}
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        roll = rng.random()
        known = paths(rng.choice(stored))
        if roll < 0.45 and known:
            path, value = rng.choice(known)
            wanted[".".join(path)] = copy.deepcopy(value)  # a value some checkpoint has
        elif roll < 0.65 and known:
            path, _ = rng.choice(known)
            wanted[".".join(path)] = rng.choice(SCALARS)
        elif roll < 0.8 and known:
            path, _ = rng.choice(known)  # a step past it: into a scalar, a list, or nothing
            wanted[".".join((*path, rng.choice(KEYS)))] = rng.choice((None, None, 1, "bob"))
        elif roll < 0.97:
            path = rng.sample(KEYS, rng.randrange(1, 4))
            wanted[".".join(path)] = rng.choice(SCALARS)
        else:
            wanted[rng.choice(BAD_KEYS)] = rng.choice(SCALARS)
    return wanted


def a_query(rng: random.Random, stored: list[dict], ids: list[str]) -> dict:
    thread = rng.choice((None, None, *THREADS))
    ns = None if thread is None else rng.choice((None, *NAMESPACES))
    query: dict[str, Any] = {"config": cfg(thread, ns), "filter": a_filter(rng, stored)}
    if thread is not None and rng.random() < 0.1:
        query["config"] = cfg(thread, ns, rng.choice(ids))
    if rng.random() < 0.3:
        query["limit"] = rng.randrange(1, 6)
    if rng.random() < 0.15:
        query["before"] = cfg("any", None, rng.choice(ids))
    return query


def dataset(seed: int, n: int = 45) -> list[tuple[dict, dict, dict]]:
    """(config, checkpoint, metadata) for n puts across threads and namespaces, ids growing."""
    rng = random.Random(seed)
    puts = []
    for i in range(n):
        checkpoint = empty_checkpoint()
        checkpoint["id"] = an_id(i + 1)
        checkpoint["channel_values"] = {"i": i}
        config = cfg(rng.choice(THREADS), rng.choice(NAMESPACES))
        puts.append((config, checkpoint, metadata(rng)))
    return puts


def outcome(call) -> Any:
    """What a list call returned (thread, namespace, id, metadata of each tuple, in order),
    or the kind of error it raised."""
    try:
        return [(t.config["configurable"]["thread_id"], t.config["configurable"]["checkpoint_ns"],
                 t.checkpoint["id"], t.metadata) for t in call()]
    except ValueError as exc:
        return ("ValueError", type(exc))


def same(ours: Any, theirs: Any, query: dict) -> None:
    if isinstance(ours, tuple):  # an error: ours is InvalidArgumentError, a ValueError
        assert ours[1] is InvalidArgumentError, (query, ours)
        assert isinstance(theirs, tuple), (query, theirs)
        return
    assert ours == theirs, query


@pytest.fixture
def both(tmp_path):
    with SqliteSaver.from_conn_string(str(tmp_path / "ours.db")) as ours, \
            TheirSaver.from_conn_string(str(tmp_path / "theirs.db")) as theirs:
        yield ours, theirs


# --- the differential tests ----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_list_with_filters_matches_langgraphs_saver(both, seed):
    ours, theirs = both
    puts = dataset(seed)
    for config, checkpoint, meta in puts:
        assert ours.put(config | {}, checkpoint, meta, {}) == \
            theirs.put(config | {}, checkpoint, meta, {})
    stored = [meta for _, _, meta in puts]
    ids = [checkpoint["id"] for _, checkpoint, _ in puts]
    rng = random.Random(1000 + seed)
    matched = errors = 0
    for _ in range(250):
        query = a_query(rng, stored, ids)
        args = (query["config"],)
        options = {k: query[k] for k in ("filter", "limit", "before") if k in query}
        got = outcome(lambda: ours.list(*args, **options))
        same(got, outcome(lambda: theirs.list(*args, **options)), query)
        matched += bool(got) and not isinstance(got, tuple)
        errors += isinstance(got, tuple)
    # the generator reaches both outcomes and the error: the comparisons are not all empty
    assert matched > 40 and errors > 0, (matched, errors)


def test_alist_with_filters_matches_langgraphs_async_saver(tmp_path):
    async def main() -> None:
        async with AsyncSqliteSaver.from_conn_string(str(tmp_path / "ours.db")) as ours, \
                TheirAsyncSaver.from_conn_string(str(tmp_path / "theirs.db")) as theirs:
            puts = dataset(7)
            for config, checkpoint, meta in puts:
                await ours.aput(config | {}, checkpoint, meta, {})
                await theirs.aput(config | {}, checkpoint, meta, {})
            stored = [meta for _, _, meta in puts]
            ids = [checkpoint["id"] for _, checkpoint, _ in puts]
            rng = random.Random(7007)
            for _ in range(120):
                query = a_query(rng, stored, ids)
                options = {k: query[k] for k in ("filter", "limit", "before") if k in query}
                results = []
                for saver in (ours, theirs):
                    try:
                        results.append([(t.checkpoint["id"], t.metadata) async for t
                                        in saver.alist(query["config"], **options)])
                    except ValueError as exc:
                        results.append(("ValueError", type(exc)))
                same(*results, query)

    asyncio.run(main())


NESTED = {"user": {"name": "bob", "access-level": 3, "0": {"deep": True}, "tags": ["x"]},
          "step": 2, "source": "loop", "user.name": "literal", "none": None}


@pytest.mark.parametrize("wanted, hit", [
    ({"user.name": "bob"}, True),                 # a dotted key is a path
    ({"user.access-level": 3}, True),             # hyphens
    ({"user.access-level": 3.0}, True),           # 3 == 3.0, in SQLite too
    ({"user.0.deep": True}, True),                # digits are a key, not an index
    ({"user.0.deep": 1}, True),                   # True == 1, in SQLite too
    ({"user.tags": ["x"]}, True),                 # a list, compared whole
    ({"user": {"name": "bob", "access-level": 3, "0": {"deep": True}, "tags": ["x"]}}, True),
    ({"user.name": "literal"}, False),            # the literal "user.name" key is not a path
    ({"user.missing": None}, True),               # None: a missing key
    ({"none": None}, True),                       # ... or None
    ({"step.x": None}, True),                     # ... or a step into a scalar
    ({"user.tags.0": None}, True),                # ... or into a list
    ({"user.name": None}, False),
    ({"step": "2"}, False),                       # "2" is not 2
    ({"user.name": "bob", "step": 2, "source": "loop"}, True),
    ({"user.name": "bob", "step": 3}, False),
])
def test_nested_and_dotted_filters_as_langgraphs_saver_reads_them(both, wanted, hit):
    ours, theirs = both
    for saver in (ours, theirs):
        checkpoint = empty_checkpoint()
        checkpoint["id"] = an_id(1)
        saver.put(cfg("t", ""), checkpoint, NESTED, {})
    for config in (cfg("t", ""), cfg("t"), None, cfg("t", "", an_id(1))):
        for saver in (ours, theirs):
            found = [t.checkpoint["id"] for t in saver.list(config, filter=wanted)]
            assert found == ([an_id(1)] if hit else []), (saver, config)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_bad_filter_key_raises_a_value_error_in_both(both, key):
    ours, theirs = both
    for saver in (ours, theirs):
        checkpoint = empty_checkpoint()
        checkpoint["id"] = an_id(1)
        saver.put(cfg("t", ""), checkpoint, {key: 1, "a": 1}, {})
    for config in (cfg("t", ""), cfg("t"), None, cfg("t", "", an_id(1))):
        with pytest.raises(ValueError, match="Invalid filter key"):
            list(theirs.list(config, filter={"a": 1, key: 1}))
        with pytest.raises(InvalidArgumentError, match="Invalid filter key"):
            list(ours.list(config, filter={"a": 1, key: 1}))
    # refused before anything is read: also where LangGraph's SQL would select nothing
    with pytest.raises(InvalidArgumentError, match="Invalid filter key"):
        list(ours.list(cfg("t"), filter={key: 1}, before={"configurable": {}}))


def test_delta_channel_history_matches_langgraphs_saver(both, monkeypatch):
    ours, theirs = both
    writes_of = {0: [("ch", "a"), ("other", 1)], 1: [("ch", "b")], 3: [("ch", "c")]}
    for saver in (ours, theirs):
        parent = cfg("t", "")
        for step in range(5):
            checkpoint = empty_checkpoint()
            checkpoint["id"] = an_id(step + 1)
            checkpoint["channel_values"] = {"ch": "seed"} if step == 1 else {}
            parent = saver.put(parent, checkpoint, {"step": step}, {})
            if step in writes_of:
                saver.put_writes(parent, writes_of[step], f"task-{step}")
    head = cfg("t", "", an_id(5))
    for channels in (["ch"], ["ch", "other", "none"], []):
        expected = theirs.get_delta_channel_history(config=head, channels=channels)
        assert ours.get_delta_channel_history(config=head, channels=channels) == expected
        assert asyncio.run(ours.aget_delta_channel_history(config=head, channels=channels)) \
            == expected
    assert expected == {} and "seed" in theirs.get_delta_channel_history(
        config=head, channels=["ch"])["ch"]
    # the async walk is one trip to a worker thread, not one per ancestor
    trips = []
    to_thread = asyncio.to_thread
    monkeypatch.setattr(asyncio, "to_thread",
                        lambda *args, **kwargs: trips.append(args[0]) or to_thread(*args,
                                                                                    **kwargs))
    asyncio.run(ours.aget_delta_channel_history(config=head, channels=["ch", "other"]))
    assert len(trips) == 1, trips


# --- the documented differences, pinned on both sides --------------------------------------------

def put_both(both, meta: dict) -> None:
    for saver in both:
        checkpoint = empty_checkpoint()
        checkpoint["id"] = an_id(1)
        saver.put(cfg("t", ""), checkpoint, meta, {})


def hits(saver, wanted: dict, **options) -> list[str]:
    return [t.checkpoint["id"] for t in saver.list(cfg("t"), filter=wanted, **options)]


@pytest.mark.parametrize("meta, wanted", [
    ({"d": {"x": 1, "y": 2}}, {"d": {"y": 2, "x": 1}}),   # dict key order
    ({"l": [1]}, {"l": [True]}),                         # 1 and True inside a list
    ({"l": [1]}, {"l": [1.0]}),                          # 1 and 1.0 inside a list
    ({"l": ["zoë"]}, {"l": ["zoë"]}),                    # non-ASCII text inside a list
])
def test_lists_and_dicts_compare_as_values_here_as_json_text_there(both, meta, wanted):
    put_both(both, meta)
    ours, theirs = both
    assert hits(ours, wanted) == [an_id(1)]
    assert hits(theirs, wanted) == []


def test_a_string_never_equals_a_dict_here(both):
    put_both(both, {"d": {"x": 1}})
    ours, theirs = both
    assert hits(ours, {"d": '{"x":1}'}) == []
    assert hits(theirs, {"d": '{"x":1}'}) == [an_id(1)]  # its JSON text, compared as text


def test_values_of_other_types_compare_with_equality_here_with_str_there(both):
    import uuid
    run = uuid.UUID(int=5)
    put_both(both, {"run": str(run)})
    ours, theirs = both
    assert hits(ours, {"run": run}) == [] and hits(ours, {"run": str(run)}) == [an_id(1)]
    assert hits(theirs, {"run": run}) == [an_id(1)]


def test_ints_beyond_64_bits_compare_here_overflow_there(both):
    put_both(both, {"big": 2**64})
    ours, theirs = both
    assert hits(ours, {"big": 2**64}) == [an_id(1)]
    with pytest.raises(OverflowError):
        hits(theirs, {"big": 2**64})


def test_nan_and_infinity_in_metadata(both):
    put_both(both, {"nan": math.nan, "inf": math.inf})
    ours, theirs = both
    assert hits(ours, {"inf": math.inf}) == [an_id(1)]
    assert hits(ours, {"nan": math.nan}) == [] and hits(ours, {"nan": None}) == []
    # LangGraph's saver writes NaN/Infinity into its JSON: SQLite before 3.42 (no JSON5)
    # rejects that text, later versions read NaN as NULL.
    try:
        found = hits(theirs, {"nan": None})
    except sqlite3.OperationalError:
        assert sqlite3.sqlite_version_info < (3, 42)
    else:
        assert found == [an_id(1)] and sqlite3.sqlite_version_info >= (3, 42)


@pytest.mark.parametrize("key", ["a..b", ".a", "a.", "."])
def test_an_empty_path_step_is_refused_here_a_json_path_error_there(both, key):
    put_both(both, {"a": {"b": 1}})
    ours, theirs = both
    with pytest.raises(InvalidArgumentError, match="no step may be empty"):
        hits(ours, {key: 1})
    with pytest.raises(sqlite3.OperationalError):  # once a row has the path's first step
        hits(theirs, {key: 1})


def test_a_key_ending_in_a_newline_is_refused_here(both):
    put_both(both, {"a": 1})
    ours, theirs = both
    with pytest.raises(InvalidArgumentError, match="Invalid filter key"):
        hits(ours, {"a\n": None})
    assert hits(theirs, {"a\n": None}) == [an_id(1)]  # its `$` matches before a final newline


def test_a_key_that_is_not_a_string(both):
    put_both(both, {"1": 1})
    ours, theirs = both
    with pytest.raises(InvalidArgumentError, match="Invalid filter key"):
        hits(ours, {1: 1})
    with pytest.raises(TypeError):
        hits(theirs, {1: 1})


def test_a_negative_limit_is_refused_here_unlimited_there(both):
    put_both(both, {"a": 1})
    ours, theirs = both
    with pytest.raises(InvalidArgumentError, match="limit"):
        hits(ours, {"a": 1}, limit=-1)
    assert hits(theirs, {"a": 1}, limit=-1) == [an_id(1)]


def test_metadata_keeps_exact_types_here(both):
    put_both(both, {"pair": (1, 2)})
    ours, theirs = both
    assert next(ours.list(cfg("t"))).metadata == {"pair": (1, 2)}
    assert next(theirs.list(cfg("t"))).metadata == {"pair": [1, 2]}  # JSON has no tuple
    assert hits(ours, {"pair": [1, 2]}) == [] and hits(ours, {"pair": (1, 2)}) == [an_id(1)]
    assert hits(theirs, {"pair": [1, 2]}) == [an_id(1)]
