"""The harness's verdict after each kill: open the database as the library does and judge
what the killed worker's threads hold, lane by lane, against what it was told.

:class:`_Verification` is the part of the harness (:class:`~sqlitesaver.torture.harness._Run`)
that reopens the database (startup recovery included, with ``integrity_check="full"``; on a
server a new Saver reads what the server holds), reads each lane's threads through the public
API, restores its newest acknowledged checkpoint with files, and asks
:mod:`~sqlitesaver.torture.oracle` for each lane's verdict; :class:`_LanesVerdict` is the
worker's, the lanes' together. The lanes are the writers' (:mod:`~sqlitesaver.torture.writers`);
the run's state it works on (``o``, ``on_server``, ``server_settings``, ``restores_checked``, ``big_restores``,
``stopped``, ``id_problems``) is set up by ``_Run.__init__``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .. import Saver
from ..attachments import CHUNK_SIZE
from ..errors import SaverError
from .oracle import Model, Observation, Verdict, apply, compare, file_digest, observe
from .writers import _Lane, _Worker


@dataclass
class _LanesVerdict(Verdict):
    """A worker's verdict: the lanes' findings together, and each lane's in-flight verdict."""

    lanes: list[str] = field(default_factory=list)


class _Verification:
    """The verification after each kill (a part of :class:`~sqlitesaver.torture.harness._Run`)."""

    # --- verdicts ----------------------------------------------------------------------

    def verify(self, w: _Worker) -> tuple[_LanesVerdict, float | None]:
        """Open the database as the library does and judge the worker's threads, lane by
        lane. On a server: a new Saver (a new connection pool) reads what the server holds;
        there is no file to check or recover, and no files stored with checkpoints."""
        try:
            if self.on_server:
                with Saver(self.o.db, durability=self.o.durability) as saver:
                    if self.server_settings is None:
                        self.server_settings = saver.settings()
                    recovery = None
                    seen = [observe(saver, lane.prefix, files=False) for lane in w.lanes]
                    restored = [[] for _ in w.lanes]
            else:
                with Saver(self.o.db, durability=self.o.durability,
                           integrity_check="full") as saver:
                    recovery = saver.recovery.seconds
                    seen = [observe(saver, lane.prefix) for lane in w.lanes]
                    restored = [self.check_restore(saver, lane, found)
                                for lane, found in zip(w.lanes, seen)]
        except SaverError as exc:
            self.stopped = True
            return _LanesVerdict(
                "none", problems=[f"reopening failed: {type(exc).__name__}: {exc}"],
                lanes=["none"] * len(w.lanes)), None
        verdicts = [self.verify_lane(lane, found) for lane, found in zip(w.lanes, seen)]
        # One lane: its verdict as it is. Several: "partial" if any lane's is, the rest is
        # told per lane.
        if len(verdicts) == 1:
            inflight = verdicts[0].inflight
        else:
            inflight = "partial" if any(v.partial for v in verdicts) else "none"
        combined = _LanesVerdict(inflight, lanes=[v.inflight for v in verdicts])
        for problems in restored:
            combined.problems += problems
        for v in verdicts:
            combined.lost |= v.lost
            combined.leaked |= v.leaked
            combined.problems += v.problems
        return combined, recovery

    def check_restore(self, saver: Saver, lane: _Lane, seen: Observation) -> list[str]:
        """Restore the lane's newest acknowledged checkpoint with files (if it is still there:
        not pruned or deleted) into a directory kept per lane, so each restore also replaces
        the previous one's files, and require exactly the files that checkpoint was put
        with, by digest of the bytes on disk."""
        if lane.last_files is None:
            return []
        thread, namespace, tag, files = lane.last_files
        ck_id = seen.ids.get(tag)
        if ck_id is None:
            return []  # pruned or deleted since (the verdict says whether rightly)
        directory = os.path.join(self.o.db + ".restored", lane.prefix.rstrip("-"))
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        try:
            saver.restore_workspace(thread, directory, checkpoint_id=ck_id, namespace=namespace)
        except SaverError as exc:
            return [f"restoring checkpoint {tag} ({ck_id}) failed: {type(exc).__name__}: {exc}"]
        self.restores_checked += 1
        found = {}
        largest = 0
        for current, _, names in os.walk(directory):
            for name in names:
                full = os.path.join(current, name)
                with open(full, "rb") as f:
                    data = f.read()
                found[os.path.relpath(full, directory).replace(os.sep, "/")] = file_digest(data)
                largest = max(largest, len(data))
        if found == files:
            self.big_restores += largest > CHUNK_SIZE  # stored in several chunks
            return []
        wrong = sorted(set(found) ^ set(files)) + sorted(
            n for n in set(found) & set(files) if found[n] != files[n])
        return [f"restoring checkpoint {tag} ({ck_id}) of thread {thread!r} gave other files "
                f"than it was put with: {wrong[:5]}"]

    def verify_lane(self, lane: _Lane, seen: Observation) -> Verdict:
        """One lane: its acknowledged transitions, and its one in flight, against what the
        database holds of its threads."""
        acked = lane.model.clone()
        for tid, ops in lane.acked:
            apply(acked, tid, ops, lane.deleted_by)
        with_inflight = None
        rolled_back = set(lane.rolled_back)
        if lane.inflight is not None:
            with_inflight = acked.clone()
            apply(with_inflight, lane.inflight[0], lane.inflight[2], {})
            if lane.inflight[1] == "abort":
                rolled_back.add(lane.inflight[0])  # it raises whenever killed: never there
        verdict = compare(acked, with_inflight, seen.model, lane.deleted_by,
                          frozenset(rolled_back))
        # Partial too: an acknowledged transition lost (durability normal, a server crash) may
        # be one the in-flight transition would have undone (a delete of its thread), which
        # then looks half done; a prefix of what was acknowledged, in-flight absent, is the
        # truth (found by the normal-durability server-crash test).
        if (verdict.lost or verdict.partial) and not verdict.problems and not seen.problems:
            verdict = _prefix_verdict(lane, seen.model) or verdict
        verdict.problems[:0] = seen.problems
        for tag, found in seen.ids.items():
            if tag in lane.ids and lane.ids[tag] != found:
                verdict.problems.append(f"checkpoint {tag} was acknowledged as "
                                        f"{lane.ids[tag]} but is stored as {found}")
        known = {**lane.ids, **seen.ids}
        stored = _checkpoints_by_tag(seen.model)
        for tag, parent_id in seen.parents.items():
            if tag not in stored:  # read before a SaverError cut the observation short
                continue
            parent_tag = stored[tag][1]
            if parent_tag is not None and parent_tag in known and known[parent_tag] != parent_id:
                verdict.problems.append(f"checkpoint {tag} has parent id {parent_id}, "
                                        f"expected {known[parent_tag]}")
        if verdict.lost:
            # Lost transitions' ids were never durable, so they may be handed out again
            # (durability normal after a power loss): go on from what survived.
            lane.max_id, lane.last_log_seq = {}, seen.max_log_seq
        for tag, found in seen.ids.items():
            if tag not in stored:
                continue
            thread = stored[tag][0]
            lane.max_id[thread] = max(found, lane.max_id.get(thread, found))
        # Carry on from what is there, so a violation is reported once, not at every kill.
        lane.model, lane.acked, lane.inflight = seen.model, [], None
        lane.rolled_back.clear()
        return verdict


def _prefix_verdict(lane: _Lane, found: Model) -> Verdict | None:
    """When acknowledged transitions are missing (what a power loss does to NORMAL): is the
    database exactly the state after the first k of them, newer ones lost whole? Then it is
    consistent and only those are lost, none partial; None if no prefix matches."""
    items, order = found.items(), found.order()
    state = lane.model.clone()
    for k in range(len(lane.acked)):
        if state.items() == items and state.order() == order:
            return Verdict("absent" if lane.inflight else "none",
                           lost={tid for tid, _ in lane.acked[k:]})
        apply(state, *lane.acked[k], {})
    return None


def _checkpoints_by_tag(model: Model) -> dict[str, tuple[str, str | None]]:
    """tag -> (thread, parent tag from the checkpoint's metadata) for every checkpoint."""
    found: dict[str, tuple[str, str | None]] = {}
    for name, t in model.threads.items():
        for ck in t.cks:
            try:
                meta = json.loads(ck[6])
            except ValueError:
                meta = None
            parent = meta.get("parent") if isinstance(meta, dict) else None
            found[ck[4]] = (name, parent if isinstance(parent, str) else None)
    return found
