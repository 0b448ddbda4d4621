"""``sqlitesaver.salvage`` (``python -m sqlitesaver salvage``): everything that verifies is
copied, with its ids; everything else is reported by table, thread and id; SRC is never written.

SQLite by nature: reading a damaged database file row by row.
"""

from __future__ import annotations

import os

import pytest

from conftest import family_digest
from sqlitesaver import InvalidArgumentError, NotASaverDatabaseError, Saver
from sqlitesaver.check import check_database
from sqlitesaver.salvage import salvage
from test_bad_input import MARKER, big_db, damage_middle_page, foreign_db, small_db, snapshot
from test_check import assert_unchanged
from test_skip_damaged import flip_marker_byte


def build(path: str, damaged: str) -> dict:
    """Two threads: t has 8 checkpoints in a chain, each with two pending writes, and a log;
    u has 2 checkpoints left of 3 in its root namespace and 1 in namespace "ns". MARKER (to be
    damaged) sits in t's 4th checkpoint's state, or in one pending write of t's 6th
    checkpoint, or in t's 2nd log event."""
    ids: dict[str, list[str]] = {"t": [], "u": []}
    with Saver(path) as saver:
        parent = None
        for i in range(8):
            ref = saver.put("t", {"i": i, "m": MARKER if (damaged, i) == ("state", 3) else b""},
                            metadata={"i": i}, parent_id=parent)
            parent = ref.checkpoint_id
            ids["t"].append(parent)
            saver.put_writes("t", parent, "task", [
                ("a", i), ("b", MARKER if (damaged, i) == ("write", 5) else i)])
            saver.append_log("t", {"n": i, "m": MARKER if (damaged, i) == ("log", 1) else b""})
        for i in range(3):
            ids["u"].append(saver.put("u", {"u": i}).checkpoint_id)
        saver.put("u", {"u": "ns"}, namespace="ns")
        saver.prune("u", keep_last=2)  # the oldest of the root namespace goes: high-water up
    return ids


def test_a_flipped_state_byte_skips_that_checkpoint_and_its_writes_only(tmp_path):
    src, dst = str(tmp_path / "src.db"), str(tmp_path / "dst.db")
    ids = build(src, "state")
    flip_marker_byte(src, seed=91)
    before = family_digest(src)
    report = salvage(src, dst)
    assert_unchanged(src, before)  # never written (an empty -wal, as for any reader, aside)
    bad = ids["t"][3]
    assert report.skipped == [{
        "table": "checkpoints", "thread_id": "t", "namespace": "", "checkpoint_id": bad,
        "writes_skipped": 2, "why": "its bytes do not match their checksum (changed on disk "
                                    "after they were written)"}]
    assert report.unreadable == [] and not report.complete
    # the child of the skipped checkpoint is kept, detached from it
    assert report.detached == [{"thread_id": "t", "namespace": "", "checkpoint_id": ids["t"][4],
                                "parent_id": bad}]
    assert report.copied == {"checkpoints": 7 + 3, "writes": 7 * 2, "log": 8}
    assert report.check is not None and report.check.ok and check_database(dst).ok
    with Saver(dst) as saver:
        listed = list(saver.list("t"))
        assert [c.checkpoint_id for c in listed] == [i for i in ids["t"][::-1] if i != bad]
        by_id = {c.checkpoint_id: c for c in listed}
        assert by_id[ids["t"][4]].parent_id is None and by_id[ids["t"][5]].parent_id == \
            ids["t"][4]
        assert all([w.value for w in c.pending_writes] == [c.state["i"]] * 2 for c in listed)
        assert [e.event["n"] for e in saver.read_log("t")] == list(range(8))
        assert [c.checkpoint_id for c in saver.list("u", namespace="")] == ids["u"][:0:-1]
        # the skipped id, and every id ever handed out, is never handed out again
        assert saver.put("t", "new").checkpoint_id > max(ids["t"] + ids["u"])


def test_a_damaged_pending_write_or_log_event_is_skipped_alone(tmp_path):
    for damaged, seed in (("write", 92), ("log", 93)):
        src, dst = str(tmp_path / f"{damaged}.db"), str(tmp_path / f"{damaged}-salvaged.db")
        ids = build(src, damaged)
        flip_marker_byte(src, seed=seed)
        report = salvage(src, dst)
        (skipped,) = report.skipped
        if damaged == "write":
            assert skipped == {"table": "writes", "thread_id": "t",
                               "checkpoint_id": ids["t"][5], "task_id": "task", "index": 1,
                               "why": skipped["why"]} and "checksum" in skipped["why"]
            assert report.copied == {"checkpoints": 11, "writes": 15, "log": 8}
        else:
            assert skipped["table"] == "log" and skipped["thread_id"] == "t"
            assert skipped["seq"] == 2 and "checksum" in skipped["why"]
            assert report.copied == {"checkpoints": 11, "writes": 16, "log": 7}
        assert report.detached == [] and check_database(dst).ok


def test_a_healthy_database_is_copied_whole(tmp_path):
    src, dst = str(tmp_path / "src.db"), str(tmp_path / "dst.db")
    small_db(src)
    report = salvage(src, dst)
    assert report.complete and report.skipped == report.unreadable == report.detached == []
    with Saver(src, readonly=True) as a, Saver(dst, readonly=True) as b:
        assert snapshot(a) == snapshot(b)


def test_a_damaged_page_hides_a_range_and_salvage_walks_past_it(tmp_path):
    src, dst = str(tmp_path / "src.db"), str(tmp_path / "dst.db")
    states = big_db(src, seed=94)  # 200 checkpoints of ~3 KiB: about one per page
    damage_middle_page(src, 94)
    before = family_digest(src)
    report = salvage(src, dst)
    assert_unchanged(src, before)
    assert report.unreadable and all(u["table"] == "checkpoints" for u in report.unreadable)
    hidden = sum(u["before_seq"] - u["after_seq"] - 1 for u in report.unreadable)
    assert report.copied["checkpoints"] + hidden + len(report.skipped) == len(states)
    assert report.copied["checkpoints"] >= len(states) - 3
    assert check_database(dst).ok
    with Saver(dst) as saver:
        for c in saver.list("t"):
            assert c.state == states[c.checkpoint_id]  # nothing changed on the way


def test_salvage_refuses_what_it_cannot_do(tmp_path):
    src = str(tmp_path / "src.db")
    small_db(src)
    with pytest.raises(InvalidArgumentError, match="already exists"):
        salvage(src, src)
    other = str(tmp_path / "other.db")
    foreign_db(other, application_id=0, wal=False)
    with pytest.raises(NotASaverDatabaseError):
        salvage(other, str(tmp_path / "x.db"))
    assert not os.path.exists(tmp_path / "x.db")
    assert not [n for n in os.listdir(tmp_path) if "sqlitesaver-new" in n]
