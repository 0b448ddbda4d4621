"""The harness's model of what a database must hold, and the verdict on what it does hold.

Every transition a child writes is described to the harness as a list of operations that carry
content digests instead of values (see :mod:`sqlitesaver.torture.workload`). The oracle applies
those operations to a plain in-memory model. After a kill, the database's content for the
killed worker must equal the model with every acknowledged transition applied (``A``), or ``A``
plus the one transition that was in flight (``B``): nothing else. Anything else is classified:

* **lost**: an acknowledged transition whose effect is missing (an item it wrote is gone, or an
  item it deleted is back);
* **partial**: the in-flight transition is visible in part;
* **leaked**: work of a transition whose call raised (an "abort" transition, which raises inside
  its transaction on purpose) is visible: a call that raised must leave nothing behind;
* **corrupt**: the database does not open, fails ``integrity_check``, fails a payload
  checksum, holds data nobody wrote, or holds it in the wrong order or under the wrong id.

Items are tuples whose second field is the id of the transition that wrote them, so every
violation names the transitions involved.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import msgpack

from ..errors import SaverError

__all__ = ["digest", "Model", "Verdict", "apply", "observe", "compare"]

Item = tuple  # ("ck", tid, thread, ns, tag, digest, meta) | ("w", tid, thread, ck_tag, task,
#               idx, channel, digest) | ("log", tid, thread, digest)
#               | ("f", tid, thread, ck_tag, name, file_digest): a file of a checkpoint


def digest(value: Any) -> str:
    """A content digest of a JSON-like value (or bytes), independent of the library's codec."""
    return hashlib.blake2b(msgpack.packb(value, use_bin_type=True), digest_size=12).hexdigest()


def file_digest(data: bytes) -> str:
    """A file's digest as the torture records it (SHA-256, shortened): computed by the writer
    from the bytes it stores and by the harness from the bytes it reads back."""
    return hashlib.sha256(data).hexdigest()[:24]


def _meta_text(meta: Any) -> str:
    try:
        return json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError):
        return repr(meta)


@dataclass
class _Thread:
    cks: list[Item] = field(default_factory=list)               # in commit (seq) order
    writes: dict[str, dict[tuple[str, int], Item]] = field(default_factory=dict)  # by ck tag
    log: list[Item] = field(default_factory=list)               # in append order
    files: dict[str, dict[str, Item]] = field(default_factory=dict)  # by ck tag, then name


@dataclass
class Model:
    """The content of one worker's threads: checkpoints, their pending writes, and logs."""

    threads: dict[str, _Thread] = field(default_factory=dict)

    def clone(self) -> "Model":
        return copy.deepcopy(self)

    def items(self) -> set[Item]:
        found: set[Item] = set()
        for t in self.threads.values():
            found.update(t.cks)
            found.update(t.log)
            for by_key in t.writes.values():
                found.update(by_key.values())
            for by_name in t.files.values():
                found.update(by_name.values())
        return found

    def order(self) -> dict[tuple, tuple]:
        """Checkpoint tags per (thread, namespace) and log digests per thread, in order."""
        result: dict[tuple, tuple] = {}
        for name, t in self.threads.items():
            per_ns: dict[str, list[str]] = {}
            for ck in t.cks:
                per_ns.setdefault(ck[3], []).append(ck[4])
            for ns, tags in per_ns.items():
                result[("ck", name, ns)] = tuple(tags)
            if t.log:
                result[("log", name)] = tuple(item[3] for item in t.log)
        return result


def apply(model: Model, tid: str, ops: Iterable[dict], deleted_by: dict[Item, str]) -> None:
    """Apply one transition's operations to ``model``, as the Saver's semantics say.

    Items the transition deletes are recorded in ``deleted_by`` (item -> tid), so that a deleted
    item that comes back can be blamed on the deletion that was lost. A transition with an
    ``abort`` operation raised inside its transaction: it has no effect at all.
    """
    ops = list(ops)
    if any(op["op"] == "abort" for op in ops):
        return
    for op in ops:
        kind, name = op["op"], op["thread"]
        if kind == "put":
            t = model.threads.setdefault(name, _Thread())
            t.cks.append(("ck", tid, name, op["ns"], op["tag"], op["digest"],
                          _meta_text(op["meta"])))
            if op.get("files"):
                t.files[op["tag"]] = {fname: ("f", tid, name, op["tag"], fname, fdigest)
                                      for fname, fdigest in op["files"].items()}
        elif kind == "writes":
            t = model.threads.get(name)
            if t is None or not any(ck[4] == op["ck"] for ck in t.cks):
                continue  # the Saver refuses writes to a missing checkpoint
            by_key = t.writes.setdefault(op["ck"], {})
            for index, (channel, value_digest) in enumerate(op["writes"]):
                # idempotent per (task, index): the first value stays
                by_key.setdefault((op["task"], index), ("w", tid, name, op["ck"], op["task"],
                                                        index, channel, value_digest))
        elif kind == "log":
            model.threads.setdefault(name, _Thread()).log.append(("log", tid, name,
                                                                  op["digest"]))
        elif kind == "prune":
            t = model.threads.get(name)
            if t is None:
                continue
            seen: dict[str, int] = {}
            kept = []
            for ck in reversed(t.cks):  # newest first, per namespace
                seen[ck[3]] = seen.get(ck[3], 0) + 1
                if seen[ck[3]] <= op["keep"]:
                    kept.append(ck)
                else:
                    _drop_ck(t, ck, tid, deleted_by)
            t.cks = kept[::-1]
            _forget_if_empty(model, name)
        elif kind == "delete":
            t = model.threads.pop(name, None)
            if t is not None:
                for ck in t.cks:
                    _drop_ck(t, ck, tid, deleted_by)
                for item in t.log:
                    deleted_by[item] = tid
        else:
            raise ValueError(f"unknown operation {kind!r}")


def _drop_ck(t: _Thread, ck: Item, tid: str, deleted_by: dict[Item, str]) -> None:
    deleted_by[ck] = tid
    for item in t.writes.pop(ck[4], {}).values():
        deleted_by[item] = tid
    for item in t.files.pop(ck[4], {}).values():
        deleted_by[item] = tid


def _forget_if_empty(model: Model, name: str) -> None:
    t = model.threads[name]
    if not t.cks and not t.log:
        del model.threads[name]


@dataclass
class Observation:
    """What the database holds for one worker, read through the public Saver API."""

    model: Model
    ids: dict[str, str]        # checkpoint tag -> checkpoint id, as stored
    parents: dict[str, str | None]  # checkpoint tag -> stored parent id
    problems: list[str]        # what could not be read or made no sense (checksums, tags)
    max_log_seq: int = -1      # the highest log seq stored for these threads


def observe(saver: Any, prefix: str, *, files: bool = True) -> Observation:
    """Read every checkpoint, pending write, file and log event of the threads named
    ``prefix*``. ``files=False`` reads no files (a PostgreSQL server stores none yet, and
    refuses to list them).

    Reading goes through :class:`~sqlitesaver.Saver`, so every payload checksum is verified;
    a :class:`~sqlitesaver.errors.SaverError` while reading becomes a problem, not a crash.
    A file's digest is computed here from the bytes read back (each distinct content read
    once per observation), never taken from the database.
    """
    model, ids, parents, problems = Model(), {}, {}, []
    contents: dict[str, str] = {}  # stored digest -> digest of the bytes read back
    max_log_seq = -1
    try:
        names = [name for name in saver.threads() if name.startswith(prefix)]
        for name in names:
            t = _Thread()
            for ck in reversed(list(saver.list(name))):  # list() is newest first
                meta = ck.metadata if isinstance(ck.metadata, dict) else {}
                tag = meta.get("ck")
                if not isinstance(tag, str):
                    problems.append(f"checkpoint {ck.checkpoint_id} of {name!r} has no tag in "
                                    f"its metadata: {ck.metadata!r:.120}")
                    continue
                t.cks.append(("ck", meta.get("tx"), name, ck.namespace, tag, digest(ck.state),
                              _meta_text(ck.metadata)))
                ids[tag] = ck.checkpoint_id
                parents[tag] = ck.parent_id
                for stored in (saver.list_files(name, ck.checkpoint_id, namespace=ck.namespace)
                               if files else ()):
                    if stored.digest not in contents:
                        contents[stored.digest] = file_digest(saver.read_file(
                            name, stored.name, checkpoint_id=ck.checkpoint_id,
                            namespace=ck.namespace))
                    t.files.setdefault(tag, {})[stored.name] = (
                        "f", meta.get("tx"), name, tag, stored.name, contents[stored.digest])
                for w in ck.pending_writes:
                    owner = w.value.get("tx") if isinstance(w.value, dict) else None
                    t.writes.setdefault(tag, {})[(w.task_id, w.index)] = (
                        "w", owner, name, tag, w.task_id, w.index, w.channel, digest(w.value))
            for event in saver.read_log(name):
                owner = event.event.get("tx") if isinstance(event.event, dict) else None
                t.log.append(("log", owner, name, digest(event.event)))
                max_log_seq = max(max_log_seq, event.seq)
            if t.cks or t.log:
                model.threads[name] = t
    except SaverError as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    return Observation(model, ids, parents, problems, max_log_seq)


@dataclass
class Verdict:
    """The oracle's finding for one worker after one kill."""

    inflight: str                      # "none" | "absent" | "present" | "partial"
    lost: set[str] = field(default_factory=set)   # acknowledged transition ids
    problems: list[str] = field(default_factory=list)  # corruption findings
    leaked: set[str] = field(default_factory=set)  # ids of transitions that raised, yet show

    @property
    def partial(self) -> bool:
        return self.inflight == "partial"

    @property
    def ok(self) -> bool:
        return not self.lost and not self.problems and not self.partial and not self.leaked


def compare(acked: Model, with_inflight: Model | None, found: Model,
            deleted_by: dict[Item, str], rolled_back: frozenset[str] = frozenset()) -> Verdict:
    """Judge ``found`` against ``acked`` (every acknowledged transition applied) and
    ``with_inflight`` (that plus the transition in flight at the kill, or None).

    ``rolled_back`` names transitions whose call raised, so must have left nothing: content
    of theirs is reported as leaked rather than as content nobody wrote."""
    a, o = acked.items(), found.items()
    if o == a and found.order() == acked.order():
        return Verdict("absent" if with_inflight is not None else "none")
    b = with_inflight.items() if with_inflight is not None else a
    if with_inflight is not None and o == b and found.order() == with_inflight.order():
        return Verdict("present")

    verdict = Verdict("none" if with_inflight is None else "absent")
    added, removed = b - a, a - b          # what the in-flight transition would change
    for item in (a - o) - removed:
        verdict.lost.add(item[1])
    for item in (o - a) - added:
        if item in deleted_by:
            verdict.lost.add(deleted_by[item])  # deleted by an acknowledged transition: back
        elif item[1] in rolled_back:
            verdict.leaked.add(item[1])
        else:
            verdict.problems.append(f"unexpected content (nobody wrote it): {_describe(item)}")
    changed = added | removed
    done = (o & added) | (removed - o)
    if changed:
        verdict.inflight = ("present" if done == changed else "absent" if not done
                            else "partial")
    if verdict.ok:
        # Same items as A or B but not in the same order: ids or log order went wrong.
        expected = with_inflight.order() if verdict.inflight == "present" and with_inflight \
            else acked.order()
        for key in sorted(set(expected) | set(found.order()), key=repr):
            if expected.get(key) != found.order().get(key):
                verdict.problems.append(f"order of {key} is {found.order().get(key)}, "
                                        f"expected {expected.get(key)}")
    return verdict


def _describe(item: Item) -> str:
    kind = item[0]
    if kind == "ck":
        return f"checkpoint {item[4]} of thread {item[2]!r} (transition {item[1]})"
    if kind == "w":
        return (f"pending write ({item[4]!r}, {item[5]}) of checkpoint {item[3]} "
                f"(transition {item[1]})")
    if kind == "f":
        return f"file {item[4]!r} of checkpoint {item[3]} (transition {item[1]})"
    return f"log event of thread {item[2]!r} (transition {item[1]})"
