"""Model-based test: a real Saver against a plain in-memory model.

:class:`SaverMachine` drives a ``Saver`` in a temporary directory with random sequences of
``put`` (with generated and with caller-supplied ids, which a second put replaces),
``put_writes`` (by position or by explicit index, keeping the first value or replacing it),
``get``, ``list``, ``append_log``, ``read_log``, ``delete_thread``, ``prune``, ``copy_thread``,
``delete_matching``, ``transaction`` blocks (flat and nested, completing or raising part-way) and
``reopen``, and after every step compares everything the public API can see (every thread's
checkpoints with their pending writes, every log, ``threads()``) with the model.

The plain tests at the end pin the documented semantics the machine relies on: nested
transactions are savepoints, reads inside a transaction see its uncommitted writes while other
threads' reads do not, and ``list()`` is a lazy iterator whose snapshot starts at the first
``next()``.

Reproducing a failure: Hypothesis prints the failing steps and (``print_blob=True``) a
``@reproduce_failure`` line, and it replays the failure from its example database
(``.hypothesis/``) on the next run.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import math
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

import apsw
import pytest
from hypothesis import Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, initialize, invariant,
                                 multiple, rule)

from sqlitesaver import (Checkpoint, CheckpointNotFoundError, InvalidArgumentError, Saver,
                         SaverClosedError, check)

# --- value strategies and a type-exact comparison ------------------------------------------------

THREADS = ("t1", "T2", "ü3")          # sorted() and SQLite's BINARY order agree on these
NAMESPACES = ("", "sub")
TASKS = ("task-a", "Task-b", "tâsk-c")  # (task_id, idx) ordering: upper < lower < non-ASCII
CHANNELS = ("messages", "x", "ü")
META_KEYS = ("source", "step", "writes", "tag")
META_VALUES = (None, 0, 1, True, False, 1.5, "input", "loop", "", (1, 2), [1, 2], {"n": 1})
BOGUS_ID = "ffffffffffffffff"          # a well-formed id that is never issued in a test run
KEYS = ("key-1", "key-2", "kü-3")       # caller-supplied ids: few, so that puts replace


def generated(checkpoint_id: str) -> bool:
    return len(checkpoint_id) == 16 and not checkpoint_id.strip("0123456789abcdef")


def aliases(checkpoint_id: str) -> list[str]:
    """Strings that int(x, 16) reads as the same number as a real id but that are not its
    id (for a caller-supplied id: near misses): none of them may find the checkpoint."""
    if not generated(checkpoint_id):
        return [checkpoint_id.upper(), " " + checkpoint_id, checkpoint_id + " ",
                checkpoint_id[:-1]]
    last = checkpoint_id[-1]
    return [checkpoint_id.upper() if not last.isdigit()
            else checkpoint_id[:-1] + chr(ord(last) + 0xFEE0),  # a fullwidth digit
            "0x" + checkpoint_id[2:], " " + checkpoint_id[1:],
            checkpoint_id[:4] + "_" + checkpoint_id[5:], "0" + checkpoint_id,
            checkpoint_id.lstrip("0")]
INT64_MAX = 2**63 - 1


def _scalars(allow_nan: bool) -> st.SearchStrategy:
    return st.one_of(
        st.none(), st.booleans(), st.integers(),
        st.integers(min_value=2**63 - 2, max_value=2**70),      # beyond msgpack's 64 bits
        st.integers(min_value=-2**70, max_value=-2**63 + 1),
        st.floats(allow_nan=allow_nan), st.text(max_size=8), st.binary(max_size=8),
        st.uuids(), st.decimals(allow_nan=False, allow_infinity=False, places=3),
        st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)),
    )


hashables = st.recursive(
    _scalars(allow_nan=False),  # nan != nan: it cannot be looked up as a set member / dict key
    lambda inner: st.tuples(inner) | st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=4)

values = st.recursive(
    _scalars(allow_nan=True) | st.binary(max_size=8).map(bytearray),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=5) | hashables, inner, max_size=4),
        st.sets(hashables, max_size=3),
        st.frozensets(hashables, max_size=3),
    ),
    max_leaves=6)

states = st.dictionaries(st.text(max_size=6), values, max_size=3) | values
metadatas = st.dictionaries(st.sampled_from(META_KEYS), st.sampled_from(META_VALUES), max_size=3)
write_lists = st.lists(st.tuples(st.sampled_from(CHANNELS), values), min_size=1, max_size=3)
thread_ids = st.sampled_from(THREADS)
namespaces = st.sampled_from(NAMESPACES)
task_ids = st.sampled_from(TASKS)
task_paths = st.sampled_from(("", "graph/node:1"))
# durability="normal" (synchronous=NORMAL) in most examples: this machine checks the logic of
# the store (ordering, idempotency, rollbacks, filters), not crash or power-loss durability,
# which NORMAL and FULL share for everything observable without pulling the plug (both are
# consistent and keep every commit across a process crash; see test_atomicity.py for the
# kill tests). It saves one fsync per write. One example in ten uses "full" anyway.
durabilities = st.integers(0, 9).map(lambda i: "full" if i == 9 else "normal")


def same(a: Any, b: Any) -> bool:
    """Equal and of exactly the same types, recursively (``==`` alone says ``True == 1``,
    ``(1,) != [1]`` but ``{1} == frozenset({1})``, ``0.0 == -0.0``, ``nan != nan``)."""
    if type(a) is not type(b):
        return False
    kind = type(a)
    if kind is float:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if kind is decimal.Decimal:
        return a.as_tuple() == b.as_tuple()
    if kind in (datetime.datetime, datetime.time):
        return (a.isoformat() == b.isoformat() and a.fold == b.fold
                and type(a.tzinfo) is type(b.tzinfo))
    if kind in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if kind is dict:
        if len(a) != len(b):
            return False
        keys_b = {key: key for key in b}  # maps a key equal to k to b's own key object
        return all(k in keys_b and same(k, keys_b[k]) and same(v, b[keys_b[k]])
                   for k, v in a.items())
    if kind in (set, frozenset):
        members_b = {m: m for m in b}
        return len(a) == len(b) and all(m in members_b and same(m, members_b[m]) for m in a)
    return a == b


# --- the model -----------------------------------------------------------------------------------

@dataclass
class MCheckpoint:
    thread: str
    ns: str
    id: str
    parent: str | None
    state: Any
    metadata: dict
    created_at: datetime.datetime
    order: int  # commit order, independent of the id, so list order is checked against it
    writes: dict[tuple[str, int], tuple[str, Any, str]] = field(default_factory=dict)
    # the parent's `order` (its identity: a caller-supplied id can name a new checkpoint after
    # the old one with that id was deleted); None when there is no link
    parent_order: int | None = None


@dataclass
class MLogEvent:
    seq: int
    thread: str
    event: Any
    created_at: datetime.datetime | None = None  # learnt on the first read, then must not change


@dataclass
class Model:
    # live ones, by (thread, namespace, id): caller-supplied ids are unique only there
    checkpoints: dict[tuple[str, str, str], MCheckpoint] = field(default_factory=dict)
    log: list[MLogEvent] = field(default_factory=list)                 # live ones, seq order
    max_id: str = ""          # greatest generated id ever committed (deleted ones included)
    max_seq: int = 0          # greatest log seq ever committed
    last_created: datetime.datetime | None = None
    order: int = 0

    def find(self, thread: str, ns: str, checkpoint_id: str) -> MCheckpoint | None:
        return self.checkpoints.get((thread, ns, checkpoint_id))

    def add(self, cp: MCheckpoint) -> None:
        self.checkpoints[(cp.thread, cp.ns, cp.id)] = cp

    def remove(self, gone: list[MCheckpoint]) -> None:
        for cp in gone:
            del self.checkpoints[(cp.thread, cp.ns, cp.id)]

    def newest_first(self, thread: str, ns: str | None = None) -> list[MCheckpoint]:
        return sorted((cp for cp in self.checkpoints.values()
                       if cp.thread == thread and (ns is None or cp.ns == ns)),
                      key=lambda cp: cp.order, reverse=True)

    def latest(self, thread: str, ns: str) -> MCheckpoint | None:
        found = self.newest_first(thread, ns)
        return found[0] if found else None

    def threads(self) -> list[str]:
        return sorted({cp.thread for cp in self.checkpoints.values()}
                      | {e.thread for e in self.log})

    def n_writes(self) -> int:
        return sum(len(cp.writes) for cp in self.checkpoints.values())


class Boom(Exception):
    """Raised by the test inside transaction blocks."""


def check_checkpoint(got: Checkpoint | None, want: MCheckpoint | None) -> None:
    if want is None:
        assert got is None, f"expected no checkpoint, got {got!r:.300}"
        return
    assert got is not None, f"checkpoint {want.id} is missing"
    assert (got.thread_id, got.namespace, got.checkpoint_id, got.parent_id) == \
        (want.thread, want.ns, want.id, want.parent)
    assert got.created_at == want.created_at
    assert same(got.state, want.state), (got.state, want.state)
    assert same(got.metadata, want.metadata), (got.metadata, want.metadata)
    expected = [(task, idx, *want.writes[(task, idx)]) for task, idx in sorted(want.writes)]
    actual = [(w.task_id, w.index, w.channel, w.value, w.task_path) for w in got.pending_writes]
    assert len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected)), \
        (actual, expected)


def no_open_transaction(saver: Saver) -> None:
    """After a transaction block, nothing may be left open on the write connection (a leak
    would silently turn every later call into part of one never-committed transaction)."""
    assert saver._depth == 0 and saver._owner is None
    if hasattr(saver, "_writer"):  # the SQLite engine's one write connection
        assert saver._writer.get_autocommit()
    else:  # PostgreSQL: no connection pinned to this thread, none left inside a transaction
        assert not saver.in_transaction
        assert all(conn.info.transaction_status == conn.info.transaction_status.IDLE
                   for conn in saver._engine._pool._pool)


# --- the machine ---------------------------------------------------------------------------------

class SaverMachine(RuleBasedStateMachine):
    refs = Bundle("refs")  # (thread, namespace, checkpoint_id) of every put, live or not

    def __init__(self) -> None:
        super().__init__()
        self.dir: str | None = None
        self.saver: Saver | None = None
        self.model = Model()
        self.seen_refs: list[tuple[str, str, str]] = []  # also ids rolled back or deleted
        self.seen_seqs: list[int] = []

    @initialize(target=refs, durability=durabilities,
                seed=st.lists(st.tuples(thread_ids, namespaces, metadatas), max_size=10),
                seed_log=st.lists(st.tuples(thread_ids, st.integers(0, 9)), max_size=4))
    def open(self, durability: str, seed: list, seed_log: list):
        """A new database, seeded with some checkpoints and log events so that the rules
        have something to read, filter, prune and delete from the first step."""
        self.saver = self._new_store(durability)
        assert self.saver.durability == durability
        for thread, logged in seed_log:
            self._append_log(self.model, thread, logged)
        return multiple(*(self._put(self.model, thread, ns, {"seed": i}, metadata, "latest",
                                    None)
                          for i, (thread, ns, metadata) in enumerate(seed)))

    def _new_store(self, durability: str) -> Saver:
        """A Saver on a new, empty database (PostgresSaverMachine: on a server)."""
        self.dir = tempfile.mkdtemp(prefix="sqlitesaver-stateful-")
        self.path = os.path.join(self.dir, "state.db")
        saver = Saver(self.path, durability=durability)
        assert saver.recovery.created is True
        return saver

    def teardown(self) -> None:
        try:
            if self.saver is not None:
                self.saver.close()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)

    # --- operations shared by the rules and the transaction blocks -------------------------------

    def _put(self, m: Model, thread: str, ns: str, state: Any, metadata: dict,
             parent_mode: str, data: st.DataObject | None,
             key: str | None = None) -> tuple[str, str, str] | None:
        latest = m.latest(thread, ns)
        if parent_mode == "latest" or data is None or not self.seen_refs:
            parent = latest.id if latest else None
        elif parent_mode == "none":
            parent = None
        else:  # valid only if it is a live checkpoint of this thread and namespace
            same_thread = [cp.id for cp in m.newest_first(thread)]  # either namespace
            parent = data.draw(st.sampled_from(same_thread or [BOGUS_ID])
                               | st.sampled_from([r[2] for r in self.seen_refs] + [BOGUS_ID]),
                               label="parent_id")
        parent_cp = None if parent is None else m.find(thread, ns, parent)
        if parent is not None and parent_cp is None:
            event("put: parent_id names no checkpoint")
            with pytest.raises(CheckpointNotFoundError):
                self.saver.put(thread, state, metadata=metadata, parent_id=parent, namespace=ns,
                               checkpoint_id=key)
            return None
        replaced = None if key is None else m.find(thread, ns, key)
        if replaced is not None and parent_cp is not None \
                and parent_cp.order >= replaced.order:
            event("put: replacing with a parent that is not older")
            with pytest.raises(InvalidArgumentError):
                self.saver.put(thread, state, metadata=metadata, parent_id=parent, namespace=ns,
                               checkpoint_id=key)
            return None
        ref = self.saver.put(thread, state, metadata=metadata, parent_id=parent, namespace=ns,
                             checkpoint_id=key)
        assert (ref.thread_id, ref.namespace) == (thread, ns)
        parent_order = None if parent_cp is None else parent_cp.order
        if replaced is not None:
            # same place in the order, same created_at, same pending writes; the rest is new
            event("put: replaced a checkpoint by its caller-supplied id")
            assert ref.checkpoint_id == key and ref.created_at == replaced.created_at
            replaced.state, replaced.metadata = state, metadata
            replaced.parent, replaced.parent_order = parent, parent_order
            return (thread, ns, key)
        if key is None:
            # ids sort as strings in commit order and are never reused, even after the newest
            # checkpoints were deleted or pruned
            assert generated(ref.checkpoint_id) and ref.checkpoint_id > m.max_id, \
                (ref.checkpoint_id, m.max_id)
            m.max_id = ref.checkpoint_id
        else:
            assert ref.checkpoint_id == key
        # created_at is wall-clock time: this assumes the clock is not stepped back mid-test
        assert m.last_created is None or ref.created_at >= m.last_created
        m.last_created = ref.created_at
        m.order += 1
        m.add(MCheckpoint(thread, ns, ref.checkpoint_id, parent, state, metadata, ref.created_at,
                          m.order, parent_order=parent_order))
        triple = (thread, ns, ref.checkpoint_id)
        self.seen_refs.append(triple)
        return triple

    def _put_writes(self, m: Model, thread: str, ns: str, checkpoint_id: str, task: str,
                    writes: list, task_path: str, indexes: list[int] | None = None,
                    replace: bool = False) -> None:
        cp = m.find(thread, ns, checkpoint_id)
        if cp is None:
            event("put_writes: target gone")
            with pytest.raises(CheckpointNotFoundError):
                self.saver.put_writes(thread, checkpoint_id, task, writes, namespace=ns,
                                      task_path=task_path, indexes=indexes, replace=replace)
            return
        positions = range(len(writes)) if indexes is None else indexes
        if any((task, idx) in cp.writes for idx in positions):
            event(f"put_writes: retried (task_id, idx), replace={replace}")
        self.saver.put_writes(thread, checkpoint_id, task, writes, namespace=ns,
                              task_path=task_path, indexes=indexes, replace=replace)
        for idx, (channel, value) in zip(positions, writes):
            if replace:
                cp.writes[(task, idx)] = (channel, value, task_path)  # last one wins
            else:
                cp.writes.setdefault((task, idx), (channel, value, task_path))  # first one wins

    def _append_log(self, m: Model, thread: str, event: Any) -> None:
        seq = self.saver.append_log(thread, event)
        assert type(seq) is int and seq > m.max_seq, (seq, m.max_seq)
        m.max_seq = seq
        m.log.append(MLogEvent(seq, thread, event))
        self.seen_seqs.append(seq)

    def _delete_thread(self, m: Model, thread: str) -> None:
        gone = [cp for cp in m.checkpoints.values() if cp.thread == thread]
        assert self.saver.delete_thread(thread) == len(gone)
        m.remove(gone)
        m.log = [e for e in m.log if e.thread != thread]

    def _prune(self, m: Model, thread: str, keep_last: int) -> None:
        gone = [cp for ns in NAMESPACES for cp in m.newest_first(thread, ns)[keep_last:]]
        event(f"prune: deletes {'some' if gone else 'none'}")
        assert self.saver.prune(thread, keep_last=keep_last) == len(gone)
        m.remove(gone)

    def _copy_thread(self, m: Model, source: str, target: str) -> list[tuple[str, str, str]]:
        """Copies in the same order with new orders; caller-supplied ids kept, generated ones
        new (learnt from the API, checked to be fresh); links follow the copies, a link to a
        checkpoint outside the source (pruned) is kept as it was."""
        if source == target or any(cp.thread == target for cp in m.checkpoints.values()):
            event("copy_thread: refused")
            with pytest.raises(InvalidArgumentError):
                self.saver.copy_thread(source, target)
            return []
        originals = sorted((cp for cp in m.checkpoints.values() if cp.thread == source),
                           key=lambda cp: cp.order)
        event(f"copy_thread: copies {'some' if originals else 'none'}")
        assert self.saver.copy_thread(source, target) == len(originals)
        listed = list(reversed([c.checkpoint_id for c in self.saver.list(target)]))
        assert len(listed) == len(originals)
        copies: dict[int, MCheckpoint] = {}
        for cp, new_id in zip(originals, listed):
            if generated(cp.id):
                assert generated(new_id) and new_id > m.max_id, (new_id, m.max_id)
                m.max_id = new_id
            else:
                assert new_id == cp.id
            m.order += 1
            parent = copies.get(cp.parent_order)
            copies[cp.order] = copy_ = MCheckpoint(
                target, cp.ns, new_id, cp.parent if parent is None else parent.id,
                copy.deepcopy(cp.state), copy.deepcopy(cp.metadata), cp.created_at, m.order,
                copy.deepcopy(cp.writes),
                cp.parent_order if parent is None else parent.order)
            m.add(copy_)
        new_refs = [(target, cp.ns, cp.id) for cp in copies.values()]
        self.seen_refs.extend(new_refs)
        return new_refs

    def _delete_matching(self, m: Model, filters: list[dict], thread: str | None) -> None:
        """Any filter matching deletes; children of what is deleted lose their parent."""
        gone = [cp for cp in m.checkpoints.values()
                if (thread is None or cp.thread == thread)
                and any(all(k in cp.metadata and cp.metadata[k] == v for k, v in f.items())
                        for f in filters)]
        event(f"delete_matching: deletes {'some' if gone else 'none'}")
        assert self.saver.delete_matching(*filters, thread_id=thread) == len(gone)
        m.remove(gone)
        orders = {cp.order for cp in gone}
        for cp in m.checkpoints.values():
            if cp.parent_order in orders:
                event("delete_matching: detaches a child")
                cp.parent = cp.parent_order = None

    def _missing_target(self, m: Model, data: st.DataObject) -> tuple[str, str, str]:
        """A (thread, namespace, id) that names no checkpoint: deleted, rolled back, of
        another thread or namespace, or never issued."""
        thread, ns, checkpoint_id = data.draw(
            st.sampled_from(self.seen_refs + [("t1", "", BOGUS_ID)]), label="target")
        thread = data.draw(st.sampled_from([thread, *THREADS]), label="thread")
        if data.draw(st.booleans(), label="alias"):
            return thread, ns, data.draw(st.sampled_from(aliases(checkpoint_id)), label="id")
        if m.find(thread, ns, checkpoint_id) is not None:
            ns = "sub" if ns == "" else ""
        if m.find(thread, ns, checkpoint_id) is not None:  # a caller-supplied id in both
            return thread, ns, BOGUS_ID
        return thread, ns, checkpoint_id

    def _compare_all(self, m: Model) -> None:
        """Everything the API shows equals the model (inside a transaction: as that
        transaction sees it)."""
        for thread in THREADS:
            got = list(self.saver.list(thread))
            want = m.newest_first(thread)
            assert [c.checkpoint_id for c in got] == [cp.id for cp in want]
            for g, w in zip(got, want):
                check_checkpoint(g, w)
            events = list(self.saver.read_log(thread))
            wanted = [e for e in m.log if e.thread == thread]
            assert [e.seq for e in events] == [e.seq for e in wanted]
            for g, w in zip(events, wanted):
                assert g.thread_id == thread and same(g.event, w.event), (g, w)
                if w.created_at is None:
                    w.created_at = g.created_at
                assert g.created_at == w.created_at
        observed = [e.created_at for e in m.log if e.created_at is not None]
        assert observed == sorted(observed), "log created_at goes backwards in seq order"
        assert self.saver.threads() == m.threads()

    # --- rules -----------------------------------------------------------------------------------

    # Rules are picked uniformly, so puts get three rules of their own to keep the store
    # populated against delete_thread and prune.
    @rule(target=refs, thread=thread_ids, ns=namespaces, state=states, metadata=metadatas)
    def put(self, thread, ns, state, metadata):
        return self._put(self.model, thread, ns, state, metadata, "latest", None)

    @rule(target=refs, thread=thread_ids, ns=namespaces,
          metas=st.lists(metadatas, min_size=2, max_size=4))
    def put_several(self, thread, ns, metas):
        """A run of checkpoints, each the child of the previous one (small states: the
        metadata is what list() filters on)."""
        return multiple(*(self._put(self.model, thread, ns, {"i": i}, metadata, "latest", None)
                          for i, metadata in enumerate(metas)))

    @rule(target=refs, thread=thread_ids, ns=namespaces, state=states, metadata=metadatas,
          parent_mode=st.sampled_from(("none", "any")), data=st.data())
    def put_with_other_parent(self, thread, ns, state, metadata, parent_mode, data):
        """parent_id None, or any id seen so far: the model decides whether it is a live
        checkpoint of the same thread and namespace, else CheckpointNotFoundError."""
        triple = self._put(self.model, thread, ns, state, metadata, parent_mode, data)
        return multiple() if triple is None else triple

    @rule(target=refs, thread=thread_ids, ns=namespaces, state=states, metadata=metadatas,
          key=st.sampled_from(KEYS), parent_mode=st.sampled_from(("latest", "none", "any")),
          data=st.data())
    def put_with_own_id(self, thread, ns, state, metadata, key, parent_mode, data):
        """A caller-supplied id: a new checkpoint, or (the id exists in this thread and
        namespace) a replacement, refused if its parent is not older than it."""
        triple = self._put(self.model, thread, ns, state, metadata, parent_mode, data, key)
        return multiple() if triple is None else triple

    @rule(ref=refs, task=task_ids, writes=write_lists, task_path=task_paths,
          indexed=st.booleans(), replace=st.booleans(), data=st.data())
    def put_writes(self, ref, task, writes, task_path, indexed, replace, data):
        # ref may have been deleted or pruned since: the model then expects
        # CheckpointNotFoundError
        thread, ns, checkpoint_id = ref
        indexes = data.draw(st.lists(st.integers(-3, 3), min_size=len(writes),
                                     max_size=len(writes), unique=True),
                            label="indexes") if indexed else None
        self._put_writes(self.model, thread, ns, checkpoint_id, task, writes, task_path,
                         indexes, replace)

    @rule(data=st.data(), task=task_ids, writes=write_lists)
    def put_writes_to_missing_checkpoint(self, data, task, writes):
        thread, ns, checkpoint_id = self._missing_target(self.model, data)
        with pytest.raises(CheckpointNotFoundError):
            self.saver.put_writes(thread, checkpoint_id, task, writes, namespace=ns)
        # model unchanged: the invariant compares everything with it

    @rule(thread=thread_ids, ns=namespaces)
    def get_latest(self, thread, ns):
        check_checkpoint(self.saver.get(thread, namespace=ns), self.model.latest(thread, ns))

    @rule(data=st.data())
    def get_by_id(self, data):
        thread, ns, checkpoint_id = data.draw(
            st.sampled_from(self.seen_refs + [("t1", "", BOGUS_ID)]), label="ref")
        if data.draw(st.booleans(), label="perturb"):
            thread = data.draw(thread_ids, label="thread")
            ns = data.draw(namespaces, label="namespace")
        if data.draw(st.integers(0, 3), label="alias") == 3:
            checkpoint_id = data.draw(st.sampled_from(aliases(checkpoint_id)), label="id")
        check_checkpoint(self.saver.get(thread, checkpoint_id, namespace=ns),
                         self.model.find(thread, ns, checkpoint_id))

    @rule(data=st.data(), n_queries=st.integers(1, 3))
    def list_checkpoints(self, data, n_queries):
        for _ in range(n_queries):
            self._list_query(data)

    def _list_query(self, data: st.DataObject) -> None:
        m = self.model
        busy = sorted({cp.thread for cp in m.checkpoints.values()})
        thread = data.draw(st.sampled_from(busy) | thread_ids if busy else thread_ids,
                           label="thread")
        ns = data.draw(st.sampled_from((None, "", "sub")), label="namespace")
        candidates = m.newest_first(thread, ns)
        # limits below the number of candidates are the interesting ones
        limit = data.draw(st.none() | st.integers(0, 5)
                          | st.integers(1, max(1, len(candidates) - 1)), label="limit")
        # before: one of these candidates (so something older may remain), or any id seen
        # (deleted, rolled back, another thread or namespace), one never issued, or an alias
        before = data.draw(st.none()
                           | st.sampled_from([cp.id for cp in candidates] or [BOGUS_ID])
                           | st.sampled_from([r[2] for r in self.seen_refs] + [BOGUS_ID])
                           | st.sampled_from([cp.id for cp in candidates] or [BOGUS_ID]).flatmap(
                               lambda real: st.sampled_from(aliases(real))),
                           label="before")
        flt_strategy = st.none() | metadatas
        if candidates:
            # a sub-dict of a real checkpoint's metadata, so the filter does match it; plus,
            # sometimes, a key it lacks mapped to None (must not match: the key is missing)
            lacking = st.sampled_from(META_KEYS).map(lambda k: {k: None})
            flt_strategy |= st.sampled_from(candidates).flatmap(
                lambda cp: st.tuples(
                    st.sets(st.sampled_from(sorted(cp.metadata) or ["?"])).map(
                        lambda keys: {k: cp.metadata[k] for k in keys if k in cp.metadata}),
                    st.just({}) | lacking.filter(lambda d: not d.keys() & cp.metadata.keys())
                ).map(lambda parts: {**parts[0], **parts[1]}))
        flt = data.draw(flt_strategy, label="metadata filter")

        it = self.saver.list(thread, namespace=ns, before=before, limit=limit, metadata=flt)
        assert iter(it) is it  # an iterator, not a list
        anchor = None
        if before is not None:
            # with every namespace listed, a caller-supplied id both have means the newest
            anchor = max((cp for cp in m.checkpoints.values()
                          if cp.thread == thread and cp.id == before
                          and (ns is None or cp.ns == ns)),
                         key=lambda cp: cp.order, default=None)
            if anchor is None:
                if limit == 0:
                    # limit=0 returns at once without opening a snapshot, so an unknown
                    # `before` is not looked up; raising would be fine too
                    try:
                        assert list(it) == []
                    except CheckpointNotFoundError:
                        pass
                    return
                event("list: unknown before")
                with pytest.raises(CheckpointNotFoundError):
                    list(it)
                return
        want = [cp for cp in candidates if anchor is None or cp.order < anchor.order]
        if flt is not None:  # "has all the given key/value pairs" (Python ==, as dict items)
            want = [cp for cp in want
                    if all(k in cp.metadata and cp.metadata[k] == v for k, v in flt.items())]
        if limit is not None:
            event("list: limit cuts" if len(want) > limit else "list: limit does not cut")
            want = want[:limit]
        got = list(it)
        event(f"list: {'filtered, ' if flt else ''}{'before, ' if before else ''}"
              f"{'empty' if not want else 'non-empty'}")
        assert [c.checkpoint_id for c in got] == [cp.id for cp in want]
        for g, w in zip(got, want):
            check_checkpoint(g, w)

    @rule(thread=thread_ids, event=values)
    def append_log(self, thread, event):
        self._append_log(self.model, thread, event)

    @rule(data=st.data())
    def read_log(self, data):
        busy = sorted({e.thread for e in self.model.log})
        thread = data.draw(st.sampled_from(busy) | thread_ids if busy else thread_ids,
                           label="thread")
        own = [e.seq for e in self.model.log if e.thread == thread]
        # only int64 values: larger ones are test_read_log_accepts_any_int_after's business
        after = data.draw(st.one_of(
            st.none(), st.sampled_from(own or [0]), st.sampled_from([-1, 0, *self.seen_seqs]),
            st.integers(-2**63, INT64_MAX)), label="after")
        got = list(self.saver.read_log(thread, after=after))
        want = [e for e in self.model.log
                if e.thread == thread and (after is None or e.seq > after)]
        assert [e.seq for e in got] == [e.seq for e in want]
        for g, w in zip(got, want):
            assert same(g.event, w.event) and g.thread_id == thread

    @rule(thread=thread_ids)
    def delete_thread(self, thread):
        self._delete_thread(self.model, thread)

    @rule(thread=thread_ids, keep_last=st.integers(0, 3))
    def prune(self, thread, keep_last):
        self._prune(self.model, thread, keep_last)

    @rule(target=refs, source=thread_ids, target_thread=thread_ids)
    def copy_thread(self, source, target_thread):
        return multiple(*self._copy_thread(self.model, source, target_thread))

    @rule(filters=st.lists(metadatas.filter(bool), max_size=2),
          thread=st.none() | thread_ids)
    def delete_matching(self, filters, thread):
        self._delete_matching(self.model, filters, thread)

    # --- transactions ----------------------------------------------------------------------------

    def _block(self, m: Model, data: st.DataObject, n_ops: int, raise_at: int | None,
               boom: Boom, new_refs: list, label: str) -> None:
        """Run n_ops random operations on the Saver and on m, raising `boom` before
        operation `raise_at` (== n_ops: after the last one). After each operation, reads
        inside the transaction must already show it."""
        for i in range(n_ops + 1):
            if raise_at == i:
                raise boom
            if i == n_ops:
                return
            kind = data.draw(st.sampled_from(
                ("put", "put", "put_writes", "put_writes", "append_log", "missing", "prune",
                 "delete_thread", "copy_thread", "delete_matching")), label=f"{label} op {i}")
            live = sorted(m.checkpoints)
            if kind == "put_writes" and not live:
                kind = "put"
            thread = data.draw(thread_ids, label="thread") if kind in (
                "put", "append_log", "prune", "delete_thread", "copy_thread") else None
            if kind == "put":
                ns = data.draw(namespaces, label="namespace")
                triple = self._put(m, thread, ns, data.draw(states, label="state"),
                                   data.draw(metadatas, label="metadata"),
                                   data.draw(st.sampled_from(("latest", "none", "any")),
                                             label="parent"), data,
                                   data.draw(st.none() | st.sampled_from(KEYS), label="key"))
                if triple is not None:
                    new_refs.append(triple)
                    check_checkpoint(self.saver.get(thread, triple[2], namespace=ns),
                                     m.find(*triple))
            elif kind == "copy_thread":
                new_refs.extend(self._copy_thread(m, thread, data.draw(thread_ids,
                                                                       label="target")))
            elif kind == "delete_matching":
                self._delete_matching(m, data.draw(st.lists(metadatas.filter(bool), max_size=2),
                                                   label="filters"),
                                      data.draw(st.none() | thread_ids, label="thread"))
            elif kind == "put_writes":
                cp = m.checkpoints[data.draw(st.sampled_from(live), label="target id")]
                self._put_writes(m, cp.thread, cp.ns, cp.id, data.draw(task_ids, label="task"),
                                 data.draw(write_lists, label="writes"),
                                 data.draw(task_paths, label="task_path"))
                check_checkpoint(self.saver.get(cp.thread, cp.id, namespace=cp.ns), cp)
            elif kind == "append_log":
                self._append_log(m, thread, data.draw(values, label="event"))
                assert list(self.saver.read_log(thread, after=m.max_seq - 1))[-1].seq \
                    == m.max_seq
            elif kind == "missing":
                # a call that fails inside a transaction undoes only itself; the block goes on
                target_thread, ns, checkpoint_id = self._missing_target(m, data)
                with pytest.raises(CheckpointNotFoundError):
                    self.saver.put_writes(target_thread, checkpoint_id, "task-a", [("x", 1)],
                                          namespace=ns)
            elif kind == "prune":
                self._prune(m, thread, data.draw(st.integers(0, 2), label="keep_last"))
            else:
                self._delete_thread(m, thread)

    @rule(target=refs, data=st.data(), n_ops=st.integers(1, 4),
          raise_choice=st.none() | st.integers(0, 4))
    def transaction(self, data, n_ops, raise_choice):
        raise_at = None if raise_choice is None else min(raise_choice, n_ops)
        m = copy.deepcopy(self.model)
        boom, new_refs = Boom("flat"), []
        try:
            with self.saver.transaction():
                self._block(m, data, n_ops, raise_at, boom, new_refs, "txn")
        except Boom as exc:
            assert exc is boom and raise_at is not None  # propagated unchanged
            event(f"transaction: rolled back, {len(new_refs)} puts undone")
        else:
            event(f"transaction: committed, {len(new_refs)} puts")
            assert raise_at is None
            self.model = m  # committed; on Boom the model stays as it was
        no_open_transaction(self.saver)
        return multiple(*new_refs)  # rolled-back refs too: they must now be missing

    @rule(target=refs, data=st.data(), n_outer=st.integers(0, 3), n_inner=st.integers(1, 3),
          n_after=st.integers(0, 3), inner_raise=st.none() | st.integers(0, 3),
          outer_raise=st.none() | st.integers(0, 6))
    def nested_transaction(self, data, n_outer, n_inner, n_after, inner_raise, outer_raise):
        """outer ops; inner transaction (completes, or raises and the outer block catches
        it); more outer ops; then the outer block commits, or raises at some point."""
        inner_raise = None if inner_raise is None else min(inner_raise, n_inner)
        if outer_raise is not None:
            outer_raise = min(outer_raise, n_outer + n_after)
        m_outer = copy.deepcopy(self.model)
        outer_boom, inner_boom, new_refs = Boom("outer"), Boom("inner"), []
        try:
            with self.saver.transaction():
                self._block(m_outer, data, n_outer,
                            outer_raise if outer_raise is not None and outer_raise < n_outer
                            else None, outer_boom, new_refs, "outer")
                m_inner = copy.deepcopy(m_outer)
                try:
                    with self.saver.transaction():
                        self._block(m_inner, data, n_inner, inner_raise, inner_boom, new_refs,
                                    "inner")
                except Boom as exc:
                    assert exc is inner_boom and inner_raise is not None
                    event("nested: inner rolled back")
                    # only the inner block is undone; the outer block's writes are still seen
                else:
                    assert inner_raise is None
                    m_outer = m_inner
                assert self.saver._depth == 1  # back in the outer block
                self._compare_all(m_outer)
                self._block(m_outer, data, n_after,
                            outer_raise - n_outer if outer_raise is not None
                            and outer_raise >= n_outer else None, outer_boom, new_refs,
                            "after inner")
        except Boom as exc:
            assert exc is outer_boom and outer_raise is not None
            event("nested: outer rolled back")
        else:
            event("nested: outer committed")
            assert outer_raise is None
            self.model = m_outer
        no_open_transaction(self.saver)
        return multiple(*new_refs)

    # --- reopen ----------------------------------------------------------------------------------

    @rule(durability=durabilities, integrity=st.sampled_from(("quick", "full")))
    def reopen(self, durability, integrity):
        old = self.saver
        old.close()
        with pytest.raises(SaverClosedError):
            old.get("t1")
        self._check_raw_file()
        self.saver = Saver(self.path, durability=durability, integrity_check=integrity)
        report = self.saver.recovery
        assert report.created is False
        assert report.path == self.path and report.integrity_check == integrity
        assert report.schema_version_found == report.schema_version
        assert report.migrations_applied == () and report.stale_files_removed == ()
        assert report.checkpoint_busy is False  # close() closed every connection
        # everything in the model is still there: the invariant runs right after this rule

    def _check_raw_file(self) -> None:
        """With the Saver closed, count the rows of the tables themselves:
        nothing the API no longer shows is left behind, e.g. pending writes of a deleted
        checkpoint."""
        m = self.model
        conn = apsw.Connection(self.path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            def one(sql: str) -> Any:
                return conn.execute(sql).fetchone()[0]
            assert one("SELECT count(*) FROM checkpoints") == len(m.checkpoints)
            assert one("SELECT count(*) FROM writes") == m.n_writes()
            assert one("SELECT count(*) FROM log") == len(m.log)
            assert one("SELECT count(*) FROM writes WHERE checkpoint_seq NOT IN "
                       "(SELECT seq FROM checkpoints)") == 0
        finally:
            conn.close()
        # and the validator finds every invariant kept (e.g. no parent vanished from the
        # middle of a history: delete_matching detaches, prune only cuts the oldest)
        report = check.check_database(self.path)
        assert report.ok, check.format_report(report)

    # --- after every step ------------------------------------------------------------------------

    @invariant()
    def matches_model(self):
        if self.saver is not None:
            self._compare_all(self.model)


# About 25 s here (2 cores). No explain phase: it re-runs the shrunk failure under a tracer and
# took minutes on top of a ~15 s shrink; the failing steps and the reproduce_failure blob are
# printed without it.
SaverMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None, print_blob=True,
    phases=[phase for phase in Phase if phase is not Phase.explain])
TestSaverMachine = SaverMachine.TestCase


# --- the semantics the machine relies on ---------------------------------------------------------

def test_nested_transaction_is_a_savepoint(db_path, open_saver):
    saver = open_saver(db_path, durability="normal")
    with saver.transaction():
        a = saver.put("t", "outer-1")
        with pytest.raises(Boom):
            with saver.transaction():
                b = saver.put("t", "inner", parent_id=a.checkpoint_id)
                saver.put_writes("t", a.checkpoint_id, "task", [("ch", "inner")])
                saver.append_log("t", "inner")
                raise Boom()
        # inside the outer block: the inner block is gone, the outer one is not
        assert saver.get("t", b.checkpoint_id) is None
        assert saver.get("t").checkpoint_id == a.checkpoint_id
        assert saver.get("t").pending_writes == ()
        assert list(saver.read_log("t")) == []
        c = saver.put("t", "outer-2", parent_id=a.checkpoint_id)
    assert [cp.state for cp in saver.list("t")] == ["outer-2", "outer-1"]
    assert saver.get("t").parent_id == a.checkpoint_id
    assert saver.get("t", c.checkpoint_id).state == "outer-2"

    # an inner block that completed is still undone when the outer block raises
    with pytest.raises(Boom):
        with saver.transaction():
            with saver.transaction():
                saver.put("t", "inner-ok")
                saver.append_log("t", "inner-ok")
            assert saver.get("t").state == "inner-ok"
            raise Boom()
    assert [cp.state for cp in saver.list("t")] == ["outer-2", "outer-1"]
    assert list(saver.read_log("t")) == []

    # an inner exception the outer block does not catch undoes both, and is not wrapped
    boom = Boom()
    with pytest.raises(Boom) as info:
        with saver.transaction():
            saver.put("t", "outer-3")
            with saver.transaction():
                saver.put("t", "inner-3")
                raise boom
    assert info.value is boom
    assert [cp.state for cp in saver.list("t")] == ["outer-2", "outer-1"]

    # a library error inside a transaction undoes only the failed call
    with saver.transaction():
        saver.append_log("t", "kept")
        with pytest.raises(CheckpointNotFoundError):
            saver.put_writes("t", BOGUS_ID, "task", [("ch", 1)])
        with pytest.raises(CheckpointNotFoundError):
            saver.put("t", "orphan", parent_id=BOGUS_ID)
    assert [e.event for e in saver.read_log("t")] == ["kept"]
    assert len(list(saver.list("t"))) == 2


def test_reads_in_a_transaction_see_its_writes_other_threads_do_not(db_path, open_saver):
    saver = open_saver(db_path, durability="normal")
    base = saver.put("t", "base")
    written, looked, committed = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            assert written.wait(30)
            seen["latest"] = saver.get("t").checkpoint_id
            seen["list"] = [cp.checkpoint_id for cp in saver.list("t")]
            seen["log"] = [e.event for e in saver.read_log("t")]
            seen["threads"] = saver.threads()
            looked.set()
            assert committed.wait(30)
            seen["after"] = saver.get("t").checkpoint_id
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            looked.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    try:
        with saver.transaction():
            new = saver.put("t", "new", parent_id=base.checkpoint_id)
            saver.append_log("t", "event")
            saver.put("u", "other thread id")
            # this thread's reads see the uncommitted writes
            assert saver.get("t").checkpoint_id == new.checkpoint_id
            assert saver.get("t", new.checkpoint_id).state == "new"
            assert [cp.checkpoint_id for cp in saver.list("t")] == [new.checkpoint_id,
                                                                    base.checkpoint_id]
            assert [e.event for e in saver.read_log("t")] == ["event"]
            assert saver.threads() == ["t", "u"]
            written.set()
            assert looked.wait(30)
        committed.set()
    finally:
        written.set()
        committed.set()
        worker.join(30)
    assert not worker.is_alive()
    if errors:
        raise errors[0]
    # the other thread read while the transaction was open, and saw none of it
    assert seen["latest"] == base.checkpoint_id
    assert seen["list"] == [base.checkpoint_id]
    assert seen["log"] == []
    assert seen["threads"] == ["t"]
    assert seen["after"] == new.checkpoint_id  # and all of it once committed


def test_list_is_lazy_and_its_snapshot_starts_at_first_next(db_path, open_saver):
    saver = open_saver(db_path, durability="normal")
    first = saver.put("t", 1)

    # argument errors are raised at the call, before any next()
    with pytest.raises(InvalidArgumentError):
        saver.list("t", limit=-1)
    with pytest.raises(InvalidArgumentError):
        saver.list("t", metadata=[("k", "v")])

    # a checkpoint put after list() was called but before the first next() IS listed
    it = saver.list("t")
    second = saver.put("t", 2, parent_id=first.checkpoint_id)
    assert [cp.checkpoint_id for cp in it] == [second.checkpoint_id, first.checkpoint_id]

    # one put after the first next() is NOT: the iterator reads one snapshot to the end
    it = saver.list("t")
    assert next(it).checkpoint_id == second.checkpoint_id
    third = saver.put("t", 3, parent_id=second.checkpoint_id)  # not blocked by the reader
    saver.put_writes("t", first.checkpoint_id, "task", [("ch", "late")])
    rest = list(it)
    assert [cp.checkpoint_id for cp in rest] == [first.checkpoint_id]
    assert rest[0].pending_writes == ()
    assert [cp.checkpoint_id for cp in saver.list("t")] == [
        third.checkpoint_id, second.checkpoint_id, first.checkpoint_id]

    # an unknown `before` is reported by the time the iterator is consumed
    with pytest.raises(CheckpointNotFoundError):
        list(saver.list("t", before=BOGUS_ID))


# --- ints beyond SQLite's int64 ------------------------------------------------------------------
# Any int is a meaningful `after` / `keep_last`, but APSW cannot bind one outside int64 and
# raised a bare OverflowError (not a SaverError, against the promise in sqlitesaver.errors).
# The machine draws only int64 values; these pin the edge. Either the right answer or
# InvalidArgumentError passes.

def _fresh_saver(directory: str) -> Saver:
    return Saver(os.path.join(directory, "state.db"), durability="normal")


@settings(max_examples=30, deadline=None)
@example(after=2**63)
@example(after=-2**63 - 1)
@given(after=st.integers())
def test_read_log_accepts_any_int_after(after):
    with tempfile.TemporaryDirectory() as directory, _fresh_saver(directory) as saver:
        seqs = [saver.append_log("t", i) for i in range(3)]
        try:
            got = [e.seq for e in saver.read_log("t", after=after)]
        except InvalidArgumentError:
            return
        assert got == [seq for seq in seqs if seq > after]


@settings(max_examples=30, deadline=None)
@example(keep_last=2**63)
@given(keep_last=st.integers(min_value=0))
def test_prune_accepts_any_keep_last(keep_last):
    with tempfile.TemporaryDirectory() as directory, _fresh_saver(directory) as saver:
        for i in range(3):
            saver.put("t", i)
        try:
            deleted = saver.prune("t", keep_last=keep_last)
        except InvalidArgumentError:
            return
        assert deleted == max(0, 3 - keep_last)
        assert len(list(saver.list("t"))) == min(3, keep_last)


# --- the same machine on PostgreSQL (issue #16) -----------------------------------------------------
# Parametrized by subclassing, not copied: every rule and the model are SaverMachine's, the
# transaction blocks included; opening and reopening take a clean database instead of a new
# file; the raw-row count reads the server's tables.

class PostgresSaverMachine(SaverMachine):
    url = ""  # set by test_the_model_on_postgresql from its fixture

    def _new_store(self, durability: str) -> Saver:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute("DROP SCHEMA IF EXISTS sqlitesaver CASCADE")
        return Saver(self.url, durability=durability)

    @rule(durability=durabilities)
    def reopen(self, durability):
        old = self.saver
        old.close()
        with pytest.raises(SaverClosedError):
            old.get("t1")
        self._check_raw_file()
        self.saver = Saver(self.url, durability=durability)

    def _check_raw_file(self) -> None:
        import psycopg

        m = self.model
        with psycopg.connect(self.url, autocommit=True) as conn:
            def one(sql: str) -> Any:
                return conn.execute(sql).fetchone()[0]
            assert one("SELECT count(*) FROM sqlitesaver.checkpoints") == len(m.checkpoints)
            assert one("SELECT count(*) FROM sqlitesaver.writes") == m.n_writes()
            assert one("SELECT count(*) FROM sqlitesaver.log") == len(m.log)


def test_the_model_on_postgresql(pg_url):
    """SaverMachine's rules and model on a server: 20 runs of up to 40 steps (40 runs took
    40 s of CI's time; the SQLite machine runs 150)."""
    from hypothesis.stateful import run_state_machine_as_test

    PostgresSaverMachine.url = pg_url
    run_state_machine_as_test(PostgresSaverMachine, settings=settings(
        max_examples=20, stateful_step_count=40, deadline=None, print_blob=True,
        phases=[phase for phase in Phase if phase is not Phase.explain]))
