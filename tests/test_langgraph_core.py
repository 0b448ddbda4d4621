"""The core API LangGraph needed: caller-supplied checkpoint ids, pending writes by explicit
index (first one wins, or replaced), copy_thread, delete_matching, and schema version 2 (with
databases of version 1 still opening, migrating and validating).

Each test fails without the behaviour it names; bad input raises a SaverError subclass and
changes nothing (the database file's bytes, or a server's rows, are compared where it matters).
On both engines, but for schema versions 1-2 and the caller-id index's shape, which are the
SQLite file's (a server's schema starts at today's version).
"""

from __future__ import annotations

import apsw
import pytest

from conftest import execute_on, is_server, store_digest
from sqlitesaver import (ChecksumError, CheckpointNotFoundError, InvalidArgumentError, Saver,
                         check, codec, integrity, schema)


def ids(saver: Saver, thread: str, **options) -> list[str]:
    return [c.checkpoint_id for c in saver.list(thread, **options)]


def close_and_check(saver: Saver) -> check.Report:
    saver.close()
    report = check.check_database(saver.path)
    assert report.ok, check.format_report(report)
    return report


@pytest.fixture
def store(any_empty_target) -> str:
    """A new SQLite file, or the emptied server database (conftest.any_empty_target)."""
    return any_empty_target


# --- caller-supplied ids -------------------------------------------------------------------------

def test_caller_ids_name_checkpoints_everywhere(store, open_saver):
    saver = open_saver(store)
    a = saver.put("t", {"n": 1}, checkpoint_id="uuid-a")
    b = saver.put("t", {"n": 2}, checkpoint_id="uuid-b", parent_id="uuid-a")
    plain = saver.put("t", {"n": 3}, parent_id="uuid-b")  # a generated id, a caller-id parent
    c = saver.put("t", {"n": 4}, checkpoint_id="uuid-c", parent_id=plain.checkpoint_id)
    assert (a.checkpoint_id, b.checkpoint_id, c.checkpoint_id) == ("uuid-a", "uuid-b", "uuid-c")
    assert saver.get("t", "uuid-b").state == {"n": 2}
    assert saver.get("t", "uuid-b").parent_id == "uuid-a"
    assert saver.get("t", plain.checkpoint_id).parent_id == "uuid-b"
    assert saver.get("t", "uuid-c").parent_id == plain.checkpoint_id
    assert saver.get("t").checkpoint_id == "uuid-c"
    # listed in commit order, whatever the ids; `before` takes a caller id
    assert ids(saver, "t") == ["uuid-c", plain.checkpoint_id, "uuid-b", "uuid-a"]
    assert ids(saver, "t", before="uuid-b") == ["uuid-a"]
    assert ids(saver, "t", namespace="", before=plain.checkpoint_id) == ["uuid-b", "uuid-a"]
    saver.put_writes("t", "uuid-a", "task", [("ch", 1)])
    assert [w.value for w in saver.get("t", "uuid-a").pending_writes] == [1]
    close_and_check(saver)


def test_a_caller_id_is_unique_per_thread_and_namespace_only(store, open_saver):
    saver = open_saver(store)
    saver.put("t", "root", checkpoint_id="same")
    saver.put("t", "sub", checkpoint_id="same", namespace="sub")
    saver.put("u", "other thread", checkpoint_id="same")
    assert saver.get("t", "same").state == "root"
    assert saver.get("t", "same", namespace="sub").state == "sub"
    assert saver.get("u", "same").state == "other thread"
    # namespace=None: `before` an id both namespaces have means the newest of them
    saver.put("t", "later", namespace="sub")
    assert [c.state for c in saver.list("t", before="same")] == ["root"]
    close_and_check(saver)


def test_a_checkpoint_with_a_caller_id_is_not_reachable_by_its_seq(store, open_saver):
    saver = open_saver(store)
    saver.put("t", "keyed", checkpoint_id="mine")
    seq_id = "0000000000000001"  # the seq the keyed checkpoint took
    assert saver.get("t", seq_id) is None
    with pytest.raises(CheckpointNotFoundError):
        saver.put_writes("t", seq_id, "task", [("ch", 1)])
    with pytest.raises(CheckpointNotFoundError):
        list(saver.list("t", before=seq_id))
    assert saver.get("t", "mine").pending_writes == ()


@pytest.mark.parametrize("bad", ["0123456789abcdef", "0000000000000000", "ffffffffffffffff"])
def test_a_caller_id_of_the_generated_form_is_refused(store, open_saver, bad):
    saver = open_saver(store)
    saver.put("t", "before")
    saver.close()
    before = store_digest(store)
    saver = open_saver(store)
    with pytest.raises(InvalidArgumentError, match="16 lowercase hex digits"):
        saver.put("t", "x", checkpoint_id=bad)
    with pytest.raises(InvalidArgumentError):
        saver.put("t", "x", checkpoint_id="")
    with pytest.raises(InvalidArgumentError):
        saver.put("t", "x", checkpoint_id=7)  # type: ignore[arg-type]
    saver.close()
    assert store_digest(store) == before


def test_putting_a_caller_id_again_replaces_it_in_place(store, open_saver):
    saver = open_saver(store)
    first = saver.put("t", "v1", checkpoint_id="a", metadata={"v": 1})
    saver.put_writes("t", "a", "task", [("ch", "kept")])
    saver.put("t", "other", checkpoint_id="b", parent_id="a")
    again = saver.put("t", "v2", checkpoint_id="a", metadata={"v": 2})
    got = saver.get("t", "a")
    assert (got.state, got.metadata, got.parent_id) == ("v2", {"v": 2}, None)
    assert again.created_at == first.created_at == got.created_at
    assert [w.value for w in got.pending_writes] == ["kept"]
    assert ids(saver, "t") == ["b", "a"]  # its place in the order is kept
    close_and_check(saver)


def test_a_replacement_whose_parent_is_not_older_is_refused(store, open_saver):
    saver = open_saver(store)
    saver.put("t", "a", checkpoint_id="a")
    saver.put("t", "b", checkpoint_id="b", parent_id="a")
    for parent in ("b", "a"):  # newer than "a", and "a" itself
        with pytest.raises(InvalidArgumentError, match="not older"):
            saver.put("t", "cycle", checkpoint_id="a", parent_id=parent)
    assert saver.get("t", "a").state == "a" and saver.get("t", "a").parent_id is None
    close_and_check(saver)


def test_a_pruned_parent_keeps_its_caller_id(store, open_saver):
    saver = open_saver(store)
    saver.put("t", 1, checkpoint_id="old")
    saver.put("t", 2, checkpoint_id="new", parent_id="old")
    assert saver.prune("t", keep_last=1) == 1
    assert saver.get("t", "new").parent_id == "old"
    assert saver.get("t", "old") is None
    close_and_check(saver)


# --- pending writes by index ------------------------------------------------------------------

def test_writes_by_explicit_index_keep_the_first_or_replace(store, open_saver):
    saver = open_saver(store)
    cp = saver.put("t", "s").checkpoint_id
    saver.put_writes("t", cp, "task", [("ch", "first"), ("__error__", "e1")], indexes=[0, -1])
    saver.put_writes("t", cp, "task", [("ch", "second")], indexes=[0])          # kept: first
    saver.put_writes("t", cp, "task", [("__error__", "e2")], indexes=[-1], replace=True)
    saver.put_writes("t", cp, "task", [("__error__", "e3"), ("ch", "third")], indexes=[-1, 0],
                     replace=True)
    got = [(w.index, w.channel, w.value) for w in saver.get("t", cp).pending_writes]
    assert got == [(-1, "__error__", "e3"), (0, "ch", "third")]
    saver.put_writes("t", cp, "task", [("ch", "fourth")], indexes=[0])          # first wins again
    assert saver.get("t", cp).pending_writes[1].value == "third"
    close_and_check(saver)


@pytest.mark.parametrize("indexes, replace", [
    ([0], False),                 # one index for two writes
    ([1, 1], False),              # not distinct
    ([0, True], False),           # a bool is not an index
    ([0, "1"], False),
    ([0, 2**63], False),          # beyond SQLite's integers
    ("01", False),
    (None, "yes"),                # replace must be a bool
])
def test_bad_indexes_or_replace_write_nothing(store, open_saver, indexes, replace):
    saver = open_saver(store)
    cp = saver.put("t", "s").checkpoint_id
    saver.close()
    before = store_digest(store)
    saver = open_saver(store)
    with pytest.raises(InvalidArgumentError):
        saver.put_writes("t", cp, "task", [("a", 1), ("b", 2)], indexes=indexes,
                         replace=replace)
    saver.close()
    assert store_digest(store) == before


# --- copy_thread ---------------------------------------------------------------------------------

def test_copy_thread_copies_every_namespace_with_writes_ids_and_links(store, open_saver):
    saver = open_saver(store)
    saver.put("src", "a", checkpoint_id="a", metadata={"step": 0})
    gen = saver.put("src", "g", parent_id="a").checkpoint_id
    saver.put("src", "b", checkpoint_id="b", parent_id=gen, metadata={"step": 2})
    saver.put("src", "sub", checkpoint_id="s", namespace="child:1")
    saver.put_writes("src", "b", "task", [("ch", "w"), ("__error__", "e")], indexes=[0, -1],
                     task_path="p")
    saver.append_log("src", "not copied")
    assert saver.copy_thread("src", "dst") == 4
    copies = list(saver.list("dst"))
    originals = list(saver.list("src"))
    assert [c.checkpoint_id for c in copies][0:1] == ["s"]
    assert len(copies) == len(originals)
    for c, o in zip(copies, originals):
        assert (c.namespace, c.state, c.metadata, c.created_at, c.pending_writes) == \
            (o.namespace, o.state, o.metadata, o.created_at, o.pending_writes)
    new_gen = saver.get("dst", "b").parent_id
    assert new_gen not in (None, gen) and saver.get("dst", new_gen).parent_id == "a"
    assert list(saver.read_log("dst")) == []
    assert ids(saver, "src") == ["s", "b", gen, "a"]  # the source is unchanged
    close_and_check(saver)


def test_copy_thread_keeps_a_pruned_parent_and_an_empty_source_copies_nothing(store,
                                                                               open_saver):
    saver = open_saver(store)
    saver.put("src", 1, checkpoint_id="old")
    saver.put("src", 2, checkpoint_id="new", parent_id="old")
    saver.prune("src", keep_last=1)
    assert saver.copy_thread("src", "dst") == 1
    assert saver.get("dst", "new").parent_id == "old"
    assert saver.copy_thread("nobody", "dst2") == 0
    assert list(saver.list("dst2")) == []
    close_and_check(saver)


def test_copy_thread_refuses_a_busy_target_or_itself_and_writes_nothing(store, open_saver):
    saver = open_saver(store)
    saver.put("src", 1, checkpoint_id="x")
    saver.put("dst", 2)
    saver.close()
    before = store_digest(store)
    saver = open_saver(store)
    with pytest.raises(InvalidArgumentError, match="already has checkpoints"):
        saver.copy_thread("src", "dst")
    with pytest.raises(InvalidArgumentError, match="onto itself"):
        saver.copy_thread("src", "src")
    with pytest.raises(InvalidArgumentError):
        saver.copy_thread("src", "")
    saver.close()
    assert store_digest(store) == before


def test_copy_thread_of_a_damaged_source_raises_and_copies_nothing(store, open_saver):
    saver = open_saver(store)
    saver.put("src", "fine", checkpoint_id="a")
    saver.put("src", "damaged", checkpoint_id="b", parent_id="a")
    saver.close()
    execute_on(store, "UPDATE checkpoints SET state = ? WHERE key = 'b'", (b"\xa7",))
    saver = open_saver(store)
    with pytest.raises(ChecksumError):
        saver.copy_thread("src", "dst")
    assert saver.threads() == ["src"]


# --- delete_matching ---------------------------------------------------------------------------

def test_delete_matching_deletes_any_match_with_writes_and_detaches_children(store,
                                                                             open_saver):
    saver = open_saver(store)
    saver.put("t", 1, checkpoint_id="a", metadata={"run_id": "r1"})
    saver.put("t", 2, checkpoint_id="b", parent_id="a", metadata={"run_id": "r2"})
    saver.put("t", 3, checkpoint_id="c", parent_id="b", metadata={"run_id": "r3"})
    saver.put("t", 4, checkpoint_id="x", namespace="sub", metadata={"run_id": "r2"})
    saver.put("u", 5, checkpoint_id="b", metadata={"run_id": "r2", "more": 1})
    saver.put_writes("t", "b", "task", [("ch", 1)])
    assert saver.delete_matching({"run_id": "r2"}, {"run_id": "nope"}) == 3
    assert ids(saver, "t") == ["c", "a"] and ids(saver, "u") == []
    assert saver.get("t", "c").parent_id is None  # its parent vanished from the middle
    assert saver.get("t", "a").parent_id is None
    # its pending writes went with it, and its seq is never handed out again
    assert saver.put("t", "next").checkpoint_id == "0000000000000006"
    # scoped to one thread
    saver.put("u", 6, metadata={"run_id": "r1"})
    assert saver.delete_matching({"run_id": "r1"}, thread_id="u") == 1
    assert ids(saver, "t")[-1] == "a"
    assert saver.delete_matching() == 0
    report = close_and_check(saver)  # without the detaching, parents_exist_unless_pruned fails
    assert report.payloads_checked["writes"] == 0


@pytest.mark.parametrize("filters", [({},), ({"run_id": "r"}, []), ("run_id",)])
def test_delete_matching_refuses_bad_filters_and_deletes_nothing(store, open_saver, filters):
    saver = open_saver(store)
    saver.put("t", 1, metadata={"run_id": "r"})
    saver.close()
    before = store_digest(store)
    saver = open_saver(store)
    with pytest.raises(InvalidArgumentError):
        saver.delete_matching(*filters)
    with pytest.raises(InvalidArgumentError):
        saver.delete_matching({"run_id": "r"}, thread_id="")
    saver.close()
    assert store_digest(store) == before


def test_delete_matching_verifies_checksums_before_trusting_metadata(store, open_saver):
    saver = open_saver(store)
    saver.put("t", 1, metadata={"run_id": "keep"})
    saver.put("t", 2, metadata={"run_id": "drop"})
    saver.close()
    execute_on(store, "UPDATE checkpoints SET metadata = (SELECT metadata FROM checkpoints "
               "WHERE seq = 2) WHERE seq = 1")  # damage: "keep" now reads "drop"
    saver = open_saver(store)
    with pytest.raises(ChecksumError):
        saver.delete_matching({"run_id": "drop"})
    saver.close()
    assert execute_on(store, "SELECT count(*) FROM checkpoints") == [(2,)]


# --- schema version 2 --------------------------------------------------------------------------

def v1_database(path: str, monkeypatch) -> None:
    """A database as sqlitesaver wrote it before schema version 2: the version 1 schema
    (created by the Saver with only migration 1), rows inserted with version 1's statements
    and checksums (today's Saver would name the new columns)."""
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
    Saver(path).close()
    monkeypatch.undo()
    meta, event = codec.encode({"step": 1}), codec.encode("event")
    rows = [(seq, "t", "", parent, 1000 * seq, codec.encode({"n": seq}), meta)
            for seq, parent in ((1, None), (2, 1))]
    write = (1, "task", 0, "ch", codec.encode("w"), "")
    conn = apsw.Connection(path)
    with conn:
        conn.executemany("INSERT INTO checkpoints (seq, thread_id, namespace, parent_seq, "
                         "created_at, state, metadata, checksum) VALUES (?,?,?,?,?,?,?,?)",
                         [(*row, integrity.checkpoint_checksum(*row)) for row in rows])
        conn.execute("INSERT INTO writes (checkpoint_seq, task_id, idx, channel, value, "
                     "task_path, checksum) VALUES (?,?,?,?,?,?,?)",
                     (*write, integrity.write_checksum(*write[:4], write[5], write[4])))
        conn.execute("INSERT INTO log (seq, thread_id, created_at, event, checksum) "
                     "VALUES (1, 't', 5, ?, ?)", (event, integrity.log_checksum(1, "t", 5, event)))
    conn.close()


def test_a_version_1_database_validates_and_migrates(db_path, monkeypatch):
    v1_database(db_path, monkeypatch)
    report = check.check_database(db_path)  # read-only: it does not migrate
    assert report.ok and report.schema_version == 1, check.format_report(report)
    with Saver(db_path) as saver:
        assert saver.recovery.schema_version_found == 1
        assert saver.recovery.migrations_applied == (2, 3)
        assert [c.state for c in saver.list("t")] == [{"n": 2}, {"n": 1}]  # checksums hold
        assert saver.get("t").parent_id == "0000000000000001"
        assert [w.value for w in saver.get("t", "0000000000000001").pending_writes] == ["w"]
        saver.put("t", {"n": 3}, checkpoint_id="uuid", parent_id="0000000000000002")
        assert saver.get("t", "uuid").parent_id == "0000000000000002"
    report = check.check_database(db_path)
    assert report.ok and report.schema_version == 3, check.format_report(report)


def test_the_checksum_covers_caller_ids(store, open_saver):
    saver = open_saver(store)
    saver.put("t", 1, checkpoint_id="a")
    saver.put("t", 2, checkpoint_id="b", parent_id="a")
    saver.close()
    state, meta = b"\x01", b"\x80"
    plain = integrity.checkpoint_checksum(1, "t", "", None, 0, state, meta)
    assert integrity.checkpoint_checksum(1, "t", "", None, 0, state, meta, None, None) == plain
    assert integrity.checkpoint_checksum(1, "t", "", None, 0, state, meta, "a") != plain
    assert integrity.checkpoint_checksum(1, "t", "", None, 0, state, meta, None, "a") != plain
    execute_on(store, "UPDATE checkpoints SET key = 'z' WHERE key = 'b'")  # moved to another id
    report = check.check_database(store)
    assert not report.ok and report.payload_failures[0]["checkpoint_id"] == "z"
    saver = open_saver(store)
    with pytest.raises(ChecksumError):
        saver.get("t", "z")


def test_the_validator_checks_a_parents_caller_id(store, open_saver):
    saver = open_saver(store)
    saver.put("t", 1, checkpoint_id="a")
    saver.put("t", 2, checkpoint_id="b", parent_id="a")
    saver.close()
    # "b" names another parent than the one it links to
    rows = execute_on(store, "SELECT seq, thread_id, namespace, parent_seq, created_at, state, "
                      "metadata, key FROM checkpoints WHERE key = 'b'")
    for *columns, key in rows:
        columns[5:7] = map(bytes, columns[5:7])  # a server's bytea may come as memoryview
        execute_on(store, "UPDATE checkpoints SET parent_key = 'elsewhere', checksum = ? "
                   "WHERE seq = ?",
                   (integrity.checkpoint_checksum(*columns, key, "elsewhere"), columns[0]))
    steps = check.check_database(store).steps
    assert {step.name: step for step in steps}["checksums"].status == check.OK
    (failed,) = [step for step in steps if step.status == check.FAILED]
    # the server's validator reports its invariants as one step
    assert failed.name == ("invariants" if is_server(store) else "parents_exist_unless_pruned")
    assert "names parent 'elsewhere'" in failed.detail


def test_a_plain_put_writes_nothing_into_the_caller_id_index(db_path, open_saver):
    saver = open_saver(db_path)
    for n in range(3):
        saver.put("t", n)
    saver.put("t", "keyed", checkpoint_id="k")
    saver.close()
    conn = apsw.Connection(db_path)
    # the index is partial: only keyed rows are in it
    assert conn.execute("SELECT count(*) FROM checkpoints INDEXED BY checkpoints_by_key "
                        "WHERE key IS NOT NULL").fetchone()[0] == 1
    assert "WHERE key IS NOT NULL" in conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'checkpoints_by_key'").fetchone()[0]
    conn.close()
