"""``Saver.list(..., skip_damaged=True)``: one damaged checkpoint no longer hides its thread.
On both engines: a file's byte flipped, or a server's row changed by an UPDATE."""

from __future__ import annotations

import logging

import pytest

from conftest import flip_in_marker
from sqlitesaver import ChecksumError, InvalidArgumentError, Saver
from test_bad_input import MARKER


def flip_marker_byte(path: str, seed: int) -> None:
    """Flip a byte inside the one stored copy of MARKER (a file, or a server's row)."""
    flip_in_marker(path, MARKER, seed)


@pytest.fixture(params=["state", "pending write"])
def damaged_db(request, any_empty_target) -> tuple[str, list[str], str]:
    """Six checkpoints of thread t; the fourth is damaged (its state, or one of its pending
    writes). Returns (path or URL, ids newest first, the damaged id)."""
    db_path = any_empty_target
    ids = []
    with Saver(db_path) as saver:
        parent = None
        for i in range(6):
            damaged = i == 3
            state = {"i": i, "m": MARKER if damaged and request.param == "state" else b""}
            ref = saver.put("t", state, metadata={"even": i % 2 == 0}, parent_id=parent)
            saver.put_writes("t", ref.checkpoint_id, "task", [
                ("ch", MARKER if damaged and request.param == "pending write" else i)])
            parent = ref.checkpoint_id
            ids.append(parent)
    flip_marker_byte(db_path, seed=81)
    return db_path, ids[::-1], ids[3]


def test_list_skips_the_damaged_checkpoint_and_reports_it(damaged_db, caplog):
    path, ids, bad = damaged_db
    caplog.set_level(logging.WARNING, logger="sqlitesaver")
    with Saver(path) as saver:
        with pytest.raises(ChecksumError):
            list(saver.list("t"))  # unchanged without the option
        reported: list[tuple[str, ChecksumError]] = []
        listed = list(saver.list("t", skip_damaged=True,
                                 on_damaged=lambda i, e: reported.append((i, e))))
        assert [c.checkpoint_id for c in listed] == [i for i in ids if i != bad]
        assert all(c.pending_writes[0].value == c.state["i"] for c in listed)
        assert [i for i, _ in reported] == [bad]
        assert isinstance(reported[0][1], ChecksumError)
        assert saver.path in str(reported[0][1]) and reported[0][1].path == saver.path
        # skip_damaged alone: reported on the logger only
        assert len(list(saver.list("t", skip_damaged=True))) == 5
        # limit counts what is returned; the metadata filter path skips the same way
        assert [c.checkpoint_id for c in saver.list("t", limit=4, skip_damaged=True)] == \
            [i for i in ids if i != bad][:4]
        odd = list(saver.list("t", metadata={"even": False}, skip_damaged=True))
        assert [c.state["i"] for c in odd] == [5, 1]
    warnings = [r.getMessage() for r in caplog.records if r.name == "sqlitesaver"]
    assert len(warnings) == 4
    assert all(f"skipped damaged checkpoint {bad!r} of thread 't'" in w for w in warnings)


def test_on_damaged_needs_skip_damaged(any_empty_target):
    with Saver(any_empty_target) as saver:
        with pytest.raises(InvalidArgumentError, match="skip_damaged=True"):
            saver.list("t", on_damaged=print)
        with pytest.raises(InvalidArgumentError, match="skip_damaged"):
            saver.list("t", skip_damaged=1)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="callable"):
            saver.list("t", skip_damaged=True, on_damaged="print")  # type: ignore[arg-type]
