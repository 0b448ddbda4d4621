"""The torture child's workload: a seeded stream of state transitions, and the writer that
applies them through the public :class:`~sqlitesaver.Saver` API.

Each worker owns the threads named ``w<N>-*``, so workers never touch each other's data and
each one's content can be judged exactly. A worker that writes from several threads
(``--threads``) gives each of them a *lane* of its own, the threads named ``w<N>.<L>-*``: lanes
share one Saver, hence its group commit, but never each other's data.

A transition is described twice: ``ops`` (what the harness needs to verify it: names, tags,
content digests; small enough for one atomic pipe write) and ``values`` (what is actually
stored). Every stored value carries the id of its transition (``"tx"``), so whatever the
database holds can be traced to who wrote it.

:class:`Writer` is the seam the harness's self-tests use: ``tests/torture_writers.py``
subclasses it with deliberately broken writers (acknowledging before COMMIT, splitting a
transition into several commits, unsafe journal settings) that the harness must catch.
"""

from __future__ import annotations

import math
import os
import random
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import Saver
from ..attachments import CHUNK_SIZE
from .oracle import digest, file_digest

__all__ = ["MIX", "Abort", "Transition", "Writer", "Generator", "lane_name", "thread_prefix",
           "load_known"]

#: Relative weights of the transition kinds. "multi" is put + pending writes + log event in
#: one transaction; "put_blob" stores random bytes of 1 KiB to 1.25 MiB (overflow pages);
#: "abort" does what "multi" does and then raises inside the transaction, so all of it must be
#: rolled back (under group commit: that member alone, while the batch commits the others).
#: "files" is a checkpoint with 1 to 3 files attached in its own put (issue #18); "workspace" a
#: checkpoint with a snapshot of the thread's small working directory, one or two of whose
#: files changed since the last one. A share of both carries a file above the 1 MiB chunk size.
MIX: dict[str, float] = {"put": 26, "put_blob": 10, "writes": 20, "log": 20, "multi": 14,
                         "prune": 6, "delete": 4, "abort": 4, "files": 6, "workspace": 4}
THREADS_PER_WORKER = 4
BLOB_BYTES = (1024, 1_310_720)
#: Sizes of attached files (log-uniform), and the share of file transitions that also carry one
#: file just above the chunk size (1 MiB + up to 64 KiB), so that files span two chunks.
FILE_BYTES = (16, 65_536)
BIG_FILE_SHARE = 0.2
_CHANNELS = ("messages", "next", "route", "__error__")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;é漢字😀\n"


def lane_name(worker: int, lane: int | None = None) -> str:
    """``"3"`` for worker 3 writing from one thread; ``"3.1"`` for its lane 1 (``--threads``)."""
    return str(worker) if lane is None else f"{worker}.{lane}"


def thread_prefix(worker: int, lane: int | None = None) -> str:
    """The prefix of the thread ids a worker (or one lane of it) owns: ``w3-`` or ``w3.1-``.
    The dash ends it, so no prefix is the beginning of another."""
    return f"w{lane_name(worker, lane)}-"


class Abort(Exception):
    """Raised on purpose by an "abort" transition inside its transaction: the Saver must roll
    all of its work back, and the caller is told that nothing was written."""


@dataclass
class Transition:
    """One state transition: what to verify (``ops``) and what to store (``values``)."""

    tid: str
    kind: str
    ops: list[dict[str, Any]]
    values: list[Any] = field(repr=False)


Known = dict[str, dict[str, list[tuple[str, str]]]]  # thread -> namespace -> [(tag, id)]


def load_known(saver: Saver, prefix: str) -> Known:
    """The checkpoints (tag, id) of the worker's threads, oldest first, as stored."""
    known: Known = {}
    for name in saver.threads():
        if not name.startswith(prefix):
            continue
        for ck in reversed(list(saver.list(name))):
            tag = ck.metadata.get("ck") if isinstance(ck.metadata, dict) else None
            if isinstance(tag, str):
                known.setdefault(name, {}).setdefault(ck.namespace, []).append(
                    (tag, ck.checkpoint_id))
    return known


class Generator:
    """Seeded transitions for one incarnation of one worker, given what it knows is stored."""

    def __init__(self, rng: random.Random, worker: int, incarnation: int, known: Known,
                 mix: dict[str, float] | None = None,
                 blob_bytes: tuple[int, int] = BLOB_BYTES, lane: int | None = None,
                 file_bytes: tuple[int, int] = FILE_BYTES,
                 big_file_share: float = BIG_FILE_SHARE) -> None:
        self.rng = rng
        self.blob_bytes = blob_bytes
        self.file_bytes = file_bytes
        self.big_file_share = big_file_share
        self._workspaces: dict[str, dict[str, bytes]] = {}  # thread -> its directory's files
        self.worker = worker
        self.lane = lane_name(worker, lane)
        self.incarnation = incarnation
        self.known = known
        mix = MIX if mix is None else mix
        self._kinds = list(mix)
        self._weights = [mix[k] for k in self._kinds]
        self._threads = [f"{thread_prefix(worker, lane)}t{i}"
                         for i in range(THREADS_PER_WORKER)]
        self.count = 0
        # Text is cut from one random pool: drawing every character costs more than the
        # Saver call it feeds, and the kills should land in Saver calls, not in here.
        self._pool = "".join(rng.choices(_ALPHABET, k=1 << 16))

    # --- the stream --------------------------------------------------------------------

    def next(self) -> Transition:
        self.count += 1
        tid = f"{self.lane}.{self.incarnation}.{self.count}"
        rng = self.rng
        kind = rng.choices(self._kinds, self._weights)[0]
        stored = [(name, ns) for name, by_ns in self.known.items()
                  for ns, cks in by_ns.items() if cks]
        if kind in ("writes", "prune") and not stored:
            kind = "put"
        if kind == "delete" and not self.known:
            kind = "log"
        ops: list[dict[str, Any]] = []
        values: list[Any] = []
        if kind in ("files", "workspace"):
            name = rng.choice(self._threads)
            self._put(tid, ops, values, name, "", blob=False)
            files = self._files(name, workspace=kind == "workspace")
            ops[0]["files"] = {n: file_digest(data) for n, data in files.items()}
            if kind == "workspace":
                ops[0]["workspace"] = True
            values[0] = (values[0], files)
        elif kind in ("put", "put_blob", "multi", "abort"):
            name, ns = rng.choice(self._threads), "" if rng.random() < 0.8 else "sub"
            self._put(tid, ops, values, name, ns, blob=kind == "put_blob")
            if kind in ("multi", "abort"):
                for _ in range(rng.randint(1, 2)):
                    self._writes(tid, ops, values, name, ns, ops[0]["tag"], None)
                self._log(tid, ops, values, name)
            if kind == "abort":
                ops.append({"op": "abort", "thread": name})
                values.append(None)
        elif kind == "writes":
            name, ns = rng.choice(sorted(stored))
            cks = self.known[name][ns]
            tag, ck_id = cks[-1] if rng.random() < 0.7 else rng.choice(cks)
            self._writes(tid, ops, values, name, ns, tag, ck_id)
        elif kind == "log":
            self._log(tid, ops, values, rng.choice(self._threads))
        elif kind == "prune":
            name = rng.choice(sorted({name for name, _ in stored}))
            ops.append({"op": "prune", "thread": name, "keep": rng.randint(1, 4)})
            values.append(None)
        else:
            ops.append({"op": "delete", "thread": rng.choice(sorted(self.known))})
            values.append(None)
        return Transition(tid, kind, ops, values)

    def commit(self, tx: Transition, result: dict[str, Any]) -> None:
        """Record the effect of a transition whose COMMIT returned (ids from ``result``)."""
        if tx.kind == "abort":
            return  # rolled back: nothing to build on
        for op in tx.ops:
            kind = op["op"]
            if kind == "put":
                ck_id = result.get("ck", {}).get(op["tag"])
                if ck_id is None:  # a broken writer reported no id: nothing to build on
                    continue
                self.known.setdefault(op["thread"], {}).setdefault(op["ns"], []).append(
                    (op["tag"], ck_id))
            elif kind == "prune":
                for cks in self.known.get(op["thread"], {}).values():
                    del cks[:-op["keep"]]
            elif kind == "delete":
                self.known.pop(op["thread"], None)

    # --- operations --------------------------------------------------------------------

    def _put(self, tid: str, ops: list, values: list, name: str, ns: str, *,
             blob: bool) -> None:
        tag = f"{tid}/{len(ops)}"
        cks = self.known.get(name, {}).get(ns, [])
        parent_tag, parent_id = cks[-1] if cks else (None, None)
        if blob:
            low, high = self.blob_bytes
            state: Any = self.rng.randbytes(int(2 ** self.rng.uniform(math.log2(low),
                                                                      math.log2(high))))
        else:
            state = self._json_state(tid)
        meta = {"tx": tid, "ck": tag, "parent": parent_tag}
        ops.append({"op": "put", "thread": name, "ns": ns, "tag": tag, "parent": parent_tag,
                    "parent_id": parent_id, "meta": meta, "digest": digest(state)})
        values.append(state)

    def _file(self) -> bytes:
        low, high = self.file_bytes
        return self.rng.randbytes(int(2 ** self.rng.uniform(math.log2(low), math.log2(high))))

    def _files(self, name: str, *, workspace: bool) -> dict[str, bytes]:
        """Files for a checkpoint of thread ``name``: 1 to 3 new ones, or the thread's
        workspace with one or two files changed, added or removed."""
        rng = self.rng
        big = rng.random() < self.big_file_share
        if not workspace:
            files = {f"out/{i}.txt": self._file() for i in range(rng.randint(1, 3))}
        else:
            files = dict(self._workspaces.get(name) or
                         {"README.md": self._file(), "src/main.py": self._file(),
                          "src/lib/util.py": self._file()})
            for _ in range(rng.randint(1, 2)):
                change = rng.choice(sorted(files) + ["src/new.py", "docs/a.md"])
                if change in files and len(files) > 2 and rng.random() < 0.25:
                    del files[change]
                else:
                    files[change] = self._file()
            self._workspaces[name] = files
        if big:
            files["data/big.bin"] = rng.randbytes(CHUNK_SIZE + rng.randint(1, 65_536))
        return files

    def _writes(self, tid: str, ops: list, values: list, name: str, ns: str, tag: str,
                ck_id: str | None) -> None:
        rng = self.rng
        task = f"task-{rng.randrange(6)}"
        writes = [(rng.choice(_CHANNELS), {"tx": tid, "task": task, "i": i,
                                           "v": self._small(3)})
                  for i in range(rng.randint(1, 3))]
        ops.append({"op": "writes", "thread": name, "ns": ns, "ck": tag, "ck_id": ck_id,
                    "task": task, "writes": [[ch, digest(v)] for ch, v in writes]})
        values.append(writes)

    def _log(self, tid: str, ops: list, values: list, name: str) -> None:
        event = {"tx": tid, "n": len(ops), "v": self._small(2)}
        ops.append({"op": "log", "thread": name, "digest": digest(event)})
        values.append(event)

    # --- values ------------------------------------------------------------------------

    def _text(self, low: int, high: int) -> str:
        size = self.rng.randint(low, high)
        start = self.rng.randrange(len(self._pool) - size)
        return self._pool[start:start + size]

    def _small(self, depth: int) -> Any:
        rng = self.rng
        pick = rng.randrange(8 if depth else 6)
        if pick == 0:
            return None
        if pick == 1:
            return rng.random() < 0.5
        if pick == 2:
            return rng.randint(-2**63, 2**64 - 1)
        if pick == 3:
            return rng.uniform(-1e9, 1e9)
        if pick in (4, 5):
            return self._text(0, 40)
        if pick == 6:
            return [self._small(depth - 1) for _ in range(rng.randint(0, 4))]
        return {self._text(1, 8): self._small(depth - 1) for _ in range(rng.randint(0, 4))}

    def _json_state(self, tid: str) -> dict[str, Any]:
        rng = self.rng
        return {
            "tx": tid,
            "step": self.count,
            "messages": [{"role": rng.choice(("user", "assistant", "tool")),
                          "content": self._text(10, 300),
                          "tokens": rng.randint(0, 2**40),
                          "score": rng.random(),
                          "meta": self._small(2)}
                         for _ in range(rng.randint(1, 16))],
            "config": {"temperature": rng.random(), "nested": self._small(3)},
        }


class Writer:
    """Applies transitions through the public Saver API, one transaction each, and
    acknowledges a transition only after its COMMIT returned.

    Subclasses in ``tests/torture_writers.py`` break these rules on purpose.
    """

    #: The transition mix this writer runs (a subclass may focus on the kinds it breaks).
    mix: dict[str, float] = MIX
    #: The share of its file transitions that carry a file above the chunk size.
    big_file_share: float = BIG_FILE_SHARE

    def open(self, path: str, durability: str) -> Saver:
        return Saver(path, durability=durability)

    def apply(self, saver: Saver, tx: Transition,
              ack: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Run ``tx``, then acknowledge it; return the ids it was given."""
        result = self.run(saver, tx)
        ack(result)
        return result

    def run(self, saver: Saver, tx: Transition) -> dict[str, Any]:
        result: dict[str, Any] = {"ck": {}, "log": []}
        if len(tx.ops) == 1:
            self.run_op(saver, tx.ops[0], tx.values[0], result)
        else:
            try:
                with saver.transaction():
                    for op, value in zip(tx.ops, tx.values):
                        self.run_op(saver, op, value, result)
            except Abort:
                # Rolled back: the ids it was given name nothing and may be handed out again.
                return {"ck": {}, "log": [], "aborted": True}
        return result

    def run_op(self, saver: Saver, op: dict[str, Any], value: Any,
               result: dict[str, Any]) -> None:
        kind = op["op"]
        if kind == "put" and "files" in op:
            self.run_put_files(saver, op, value, result)
        elif kind == "put":
            ref = saver.put(op["thread"], value, metadata=op["meta"],
                            parent_id=op["parent_id"], namespace=op["ns"])
            result["ck"][op["tag"]] = ref.checkpoint_id
        elif kind == "writes":
            ck_id = op["ck_id"] or result["ck"][op["ck"]]
            saver.put_writes(op["thread"], ck_id, op["task"], value, namespace=op["ns"])
        elif kind == "log":
            result["log"].append(saver.append_log(op["thread"], value))
        elif kind == "prune":
            saver.prune(op["thread"], keep_last=op["keep"])
        elif kind == "delete":
            saver.delete_thread(op["thread"])
        elif kind == "abort":
            raise Abort("an abort transition rolls back on purpose")
        else:
            raise ValueError(f"unknown operation {kind!r}")

    @staticmethod
    def run_put_files(saver: Saver, op: dict[str, Any], value: Any,
                      result: dict[str, Any]) -> None:
        """A checkpoint with its files, in one put: given as bytes, or (``workspace``) as the
        thread's working directory, written first, then snapshotted."""
        state, files = value
        if op.get("workspace"):
            directory = workspace_dir(saver.path, op["thread"])
            write_tree(directory, files)
            ref = saver.put(op["thread"], state, metadata=op["meta"],
                            parent_id=op["parent_id"], namespace=op["ns"], workspace=directory)
        else:
            ref = saver.put(op["thread"], state, metadata=op["meta"],
                            parent_id=op["parent_id"], namespace=op["ns"], files=files)
        result["ck"][op["tag"]] = ref.checkpoint_id


def workspace_dir(db: str, thread: str) -> str:
    """The working directory a writer snapshots for ``thread``: beside the database."""
    return os.path.join(db + ".workspaces", thread)


def write_tree(directory: str, files: dict[str, bytes]) -> None:
    """Make ``directory`` hold exactly ``files`` (the writer's side; not crash-safe, and it
    need not be: a kill here is before the put, and the next put rewrites it)."""
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    for name, data in files.items():
        full = os.path.join(directory, *name.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
