"""Files stored with a checkpoint (issue #18): in its transaction, content-addressed, chunked,
checksummed on every read, collected when no checkpoint names them any more.

Bad input is checked as tests/test_bad_input.py does: the database and its -wal hashed while no
connection is open (on a server: every row of our tables), before and after the refused call,
must be identical. Most tests run on both engines (conftest's ``db_target``,
tests/stored_files.py); the PostgreSQL-only ones at the end race writers against collectors.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import tracemalloc

import apsw
import pytest

from sqlitesaver import (CheckpointNotFoundError, ChecksumError, CorruptDatabaseError,
                         FileAccessError, FileChangedError, FileNotInCheckpointError,
                         InvalidArgumentError, Saver, UnsafePathError, attachments)
from sqlitesaver.attachments import CHUNK_SIZE
from stored_files import counts, is_server, raw, stored, stored_digest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- storing and reading ------------------------------------------------------------------------

def test_files_are_stored_with_the_checkpoint_and_read_back_by_name(db_target, tmp_path):
    rng = random.Random(1801)
    big = rng.randbytes(2 * CHUNK_SIZE + 12345)
    on_disk = tmp_path / "notes.txt"
    on_disk.write_bytes(b"from a path\n")
    os.chmod(on_disk, 0o600)
    with Saver(db_target) as saver:
        ref = saver.put("t", {"step": 7}, files={"out/report.md": b"# step 7\n",
                                                 "data/big.bin": big, "notes.txt": on_disk})
        listed = saver.list_files("t")
        assert [(f.name, f.size, f.mode) for f in listed] == [
            ("data/big.bin", len(big), 0o644), ("notes.txt", 12, 0o600),
            ("out/report.md", 9, 0o644)]
        assert {f.name: f.digest for f in listed}["data/big.bin"] == sha(big)
        assert saver.read_file("t", "out/report.md") == b"# step 7\n"
        assert saver.read_file("t", "notes.txt", checkpoint_id=ref.checkpoint_id) == \
            b"from a path\n"
        with saver.open_file("t", "data/big.bin") as stream:
            assert stream.size == len(big) and stream.digest == sha(big)
            pieces = []
            while True:
                piece = stream.read(700_001)  # across chunk boundaries
                if not piece:
                    break
                pieces.append(piece)
        assert b"".join(pieces) == big
        # A later checkpoint without files has none; the earlier one keeps its own.
        saver.put("t", {"step": 8}, parent_id=ref.checkpoint_id)
        assert saver.list_files("t") == []
        assert len(saver.list_files("t", ref.checkpoint_id)) == 3
        assert stored(saver, db_target) == (3, len(big) + 12 + 9)


def test_identical_content_is_stored_once(db_target):
    content = random.Random(1802).randbytes(CHUNK_SIZE + 1)
    with Saver(db_target) as saver:
        a = saver.put("t", 1, files={"a.bin": content, "copy/a.bin": content})
        saver.put("u", 2, files={"elsewhere.bin": content})
        saver.attach_files("t", a.checkpoint_id, {"again.bin": bytearray(content)})
        assert stored(saver, db_target) == (1, len(content))
    assert counts(db_target) == (4, 1, 2)


def test_empty_files_and_exact_chunk_multiples(db_target):
    with Saver(db_target) as saver:
        exact = bytes(range(256)) * (CHUNK_SIZE // 256)
        saver.put("t", 1, files={"empty": b"", "exact": exact})
        assert saver.read_file("t", "empty") == b""
        assert saver.read_file("t", "exact") == exact
    assert counts(db_target) == (2, 2, 2)


def test_a_file_larger_than_sqlites_value_limit_is_stored_in_chunks(db_path):
    # SQLite refuses any value over SQLITE_LIMIT_LENGTH (1 GB by default): lowered here to
    # 1.5 chunks, a 5-chunk file still goes in, and a single value that large is refused.
    content = random.Random(1803).randbytes(5 * CHUNK_SIZE)
    with Saver(db_path) as saver:
        saver._writer.limit(apsw.SQLITE_LIMIT_LENGTH, CHUNK_SIZE * 3 // 2)
        saver.put("t", 1, files={"big": content})
        with pytest.raises(Exception, match="limit"):
            saver.put("t", content)
        assert saver.read_file("t", "big") == content


def test_storing_and_reading_a_large_file_holds_one_chunk_in_memory(db_target, tmp_path):
    source = tmp_path / "large.bin"
    size = 48 * CHUNK_SIZE
    block = random.Random(1804).randbytes(CHUNK_SIZE)
    with open(source, "wb") as f:
        for i in range(48):
            f.write(block[i:] + block[:i])
    with Saver(db_target) as saver:
        tracemalloc.start()
        try:
            saver.put("t", 1, files={"large.bin": source})
            _, stored_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            hasher, total = hashlib.sha256(), 0
            with saver.open_file("t", "large.bin") as stream:
                while piece := stream.read(CHUNK_SIZE // 3):
                    hasher.update(piece)
                    total += len(piece)
            _, read_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert total == size and hasher.hexdigest() == saver_digest(source)
    # A few chunks at most (the chunk, its copy for the statement, the read buffer).
    assert stored_peak < 6 * CHUNK_SIZE, stored_peak
    assert read_peak < 6 * CHUNK_SIZE, read_peak


def saver_digest(path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


def test_files_with_a_caller_supplied_id_and_a_replacing_put(db_target):
    with Saver(db_target) as saver:
        saver.put("t", 1, checkpoint_id="step-7", files={"a": b"one", "b": b"two"})
        assert saver.read_file("t", "a", checkpoint_id="step-7") == b"one"
        # Putting the same id again without files keeps them, like its pending writes.
        saver.put("t", 2, checkpoint_id="step-7")
        assert [f.name for f in saver.list_files("t", "step-7")] == ["a", "b"]
        # With files: exactly these, and content nothing names any more is collected.
        saver.put("t", 3, checkpoint_id="step-7", files={"c": b"three"})
        assert [f.name for f in saver.list_files("t", "step-7")] == ["c"]
        assert stored(saver, db_target)[0] == 1


# --- one transaction ----------------------------------------------------------------------------

def test_a_transaction_stores_the_checkpoint_and_its_files_or_nothing(db_target):
    with Saver(db_target) as saver:
        with pytest.raises(RuntimeError):
            with saver.transaction():
                ref = saver.put("t", {"step": 7})
                saver.attach_files("t", ref.checkpoint_id, {"out.txt": b"x" * (CHUNK_SIZE + 1)})
                # Reads inside the block see its files.
                assert saver.read_file("t", "out.txt") == b"x" * (CHUNK_SIZE + 1)
                raise RuntimeError("the node failed")
        assert saver.get("t") is None and stored(saver, db_target)[0] == 0
        with saver.transaction():
            ref = saver.put("t", {"step": 7})
            saver.attach_files("t", ref.checkpoint_id, {"out.txt": b"step 7"})
        assert saver.read_file("t", "out.txt") == b"step 7"
    assert counts(db_target) == (1, 1, 1)


def test_an_exception_while_the_chunks_are_written_leaves_nothing(db_target, monkeypatch):
    content = random.Random(1805).randbytes(3 * CHUNK_SIZE)
    real = attachments.chunk_checksum
    for fail_at in (1, 2, 3):
        calls = []

        def failing(digest, index, data):
            calls.append(index)
            if len(calls) == fail_at:
                raise KeyboardInterrupt(f"at chunk {index}")
            return real(digest, index, data)

        monkeypatch.setattr(attachments, "chunk_checksum", failing)
        with Saver(db_target) as saver:
            with pytest.raises(KeyboardInterrupt):
                saver.put("t", 1, files={"big": content})
            monkeypatch.setattr(attachments, "chunk_checksum", real)
            assert saver.get("t") is None
            assert stored(saver, db_target)[0] == 0
            saver.put("u", 2)  # the Saver is still usable
            saver.delete_thread("u")
        assert counts(db_target) == (0, 0, 0), fail_at


def test_a_file_that_changes_while_it_is_stored_is_refused(db_target, tmp_path, monkeypatch):
    source = tmp_path / "moving.txt"
    source.write_bytes(b"before" * 1000)
    real = attachments.source_from_path

    def hashed_then_changed(*args, **kwargs):
        prepared = real(*args, **kwargs)
        source.write_bytes(b"after!" * 1000)  # same size, other bytes
        return prepared

    Saver(db_target).close()
    before = stored_digest(db_target)
    monkeypatch.setattr(attachments, "source_from_path", hashed_then_changed)
    with Saver(db_target) as saver:
        with pytest.raises(FileChangedError) as info:
            saver.put("t", 1, files={"m.txt": str(source)})
        assert str(source) in str(info.value) and "Nothing" in str(info.value)
        assert saver.get("t") is None
    assert stored_digest(db_target) == before


# --- bad input changes nothing --------------------------------------------------------------------

UNSAFE = ["/etc/passwd", "../up", "a/../b", "./a", "a/./b", "a//b", "a/", "", "nul\0",
          "bad\udcff", "x" * 256, "a/" * 2100 + "b"]


@pytest.mark.parametrize("name", UNSAFE, ids=range(len(UNSAFE)))
def test_unsafe_names_are_refused_and_nothing_is_written(db_target, name):
    Saver(db_target).close()
    before = stored_digest(db_target)
    with Saver(db_target) as saver:
        with pytest.raises(UnsafePathError) as info:
            saver.put("t", 1, files={name: b"x"})
        assert info.value.name == name and "nothing was written" in str(info.value)
        with pytest.raises(UnsafePathError):
            saver.attach_files("t", "0000000000000001", {name: b"x"})
    assert stored_digest(db_target) == before


def test_other_bad_files_arguments_are_refused_and_nothing_is_written(db_target, tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    Saver(db_target).close()
    before = stored_digest(db_target)
    with Saver(db_target) as saver:
        for files, error, phrase in [
                ({"a": "hello"}, InvalidArgumentError, "does not exist"),
                ({"a": 3}, InvalidArgumentError, "must be bytes"),
                ({3: b"x"}, InvalidArgumentError, "must be a str"),
                (["a"], InvalidArgumentError, "mapping"),
                ({"a": fifo}, UnsafePathError, "FIFO"),
                ({"a": str(tmp_path)}, UnsafePathError, "directory"),
                ({"a": b"1", "a/b": b"2"}, UnsafePathError, "file and a directory")]:
            with pytest.raises(error, match=phrase):
                saver.put("t", 1, files=files)
        with pytest.raises(CheckpointNotFoundError):
            saver.attach_files("t", "0000000000000001", {"a": b"x"})
        with pytest.raises(CheckpointNotFoundError):
            saver.list_files("t")
        with pytest.raises(InvalidArgumentError):
            saver.put("t", 1, workspace=str(tmp_path / "missing"))
    assert stored_digest(db_target) == before


def test_a_name_that_is_not_there(db_target):
    with Saver(db_target) as saver:
        ref = saver.put("t", 1, files={"a": b"x"})
        with pytest.raises(FileNotInCheckpointError, match="'b'"):
            saver.read_file("t", "b")
        with pytest.raises(CheckpointNotFoundError):
            saver.read_file("t", "a", checkpoint_id="0000000000000999")
        # attaching a to a checkpoint with a file 'a/b' conflict is refused
        with pytest.raises(UnsafePathError):
            saver.attach_files("t", ref.checkpoint_id, {"a/b": b"y"})
        assert [f.name for f in saver.list_files("t")] == ["a"]


# --- damage is never returned ---------------------------------------------------------------------

def _one_file(db_path: str, content: bytes) -> None:
    with Saver(db_path) as saver:
        saver.put("t", 1, files={"f.bin": content})


@pytest.mark.parametrize("damage, error", [
    ("UPDATE file_chunks SET data = CAST(zeroblob(length(data)) AS BLOB) WHERE idx = 1",
     ChecksumError),
    ("UPDATE file_chunks SET idx = 7 WHERE idx = 1", CorruptDatabaseError),
    ("DELETE FROM file_chunks WHERE idx = 2", CorruptDatabaseError),
    ("UPDATE file_contents SET size = size - 1", ChecksumError),
    ("UPDATE files SET mode = 511", ChecksumError),
    ("UPDATE files SET name = 'g.bin'", ChecksumError),
], ids=["chunk bytes", "chunk moved", "chunk missing", "size", "mode", "name"])
def test_damage_raises_instead_of_returning_changed_bytes(db_target, damage, error):
    content = random.Random(1806).randbytes(3 * CHUNK_SIZE - 5)
    _one_file(db_target, content)
    raw(db_target, damage)
    with Saver(db_target) as saver:
        with pytest.raises(error) as info:
            saver.read_file("t", "g.bin" if "name =" in damage else "f.bin")
        assert saver.path in str(info.value)


# --- garbage ------------------------------------------------------------------------------------

def test_content_is_collected_when_no_checkpoint_names_it(db_target):
    rng = random.Random(1807)
    shared, a, b = (rng.randbytes(CHUNK_SIZE + 7) for _ in range(3))
    with Saver(db_target) as saver:
        first = saver.put("t", 1, files={"shared": shared, "a": a})
        saver.put("t", 2, files={"shared": shared, "b": b})
        copy = saver.put("keep", 3, files={"shared": shared})
        assert stored(saver, db_target)[0] == 3
        saver.prune("t", keep_last=1)  # drops the checkpoint holding 'a'
        assert stored(saver, db_target)[0] == 2
        with pytest.raises(CheckpointNotFoundError):
            saver.list_files("t", first.checkpoint_id)
        saver.delete_thread("t")  # 'b' goes, 'shared' is still held by thread keep
        assert stored(saver, db_target)[0] == 1
        assert saver.read_file("keep", "shared") == shared
        saver.attach_files("keep", copy.checkpoint_id, {"shared": b"replaced"})
        assert stored(saver, db_target)[1] == len(b"replaced")
        saver.put("m", 4, metadata={"run": "x"}, files={"m": b"mine"})
        assert saver.delete_matching({"run": "x"}) == 1
        assert stored(saver, db_target)[0] == 1
        assert saver.collect_garbage() == {"contents": 0, "bytes": 0}
    assert counts(db_target) == (1, 1, 1)


def test_copy_thread_copies_files_sharing_their_content(db_target):
    with Saver(db_target) as saver:
        first = saver.put("src", 1, files={"a": b"alpha", "b/c": b"gamma"})
        saver.put("src", 2, parent_id=first.checkpoint_id)  # no files
        saver.put("src", 3, checkpoint_id="mine", files={"a": b"alpha 3"})
        assert saver.copy_thread("src", "dst") == 3
        saver.delete_thread("src")
        copies = [ck.checkpoint_id for ck in saver.list("dst")]
        assert [[(f.name, f.size) for f in saver.list_files("dst", ck)] for ck in copies] == \
            [[("a", 7)], [], [("a", 5), ("b/c", 5)]]
        assert saver.read_file("dst", "b/c", checkpoint_id=copies[2]) == b"gamma"
        assert saver.read_file("dst", "a") == b"alpha 3"
        assert stored(saver, db_target)[0] == 3


def test_copy_thread_refuses_a_damaged_manifest_entry_and_copies_nothing(db_target):
    _one_file(db_target, b"x")
    raw(db_target, "UPDATE files SET mode = 511")
    before = stored_digest(db_target)
    with Saver(db_target) as saver:
        with pytest.raises(ChecksumError, match="manifest entry 'f.bin' of a checkpoint being"):
            saver.copy_thread("t", "copy")
        assert saver.get("copy") is None
    assert stored_digest(db_target) == before


def test_collect_garbage_finds_content_orphaned_outside_the_saver(db_target):
    _one_file(db_target, b"orphan" * 100)
    raw(db_target, "DELETE FROM files")
    with Saver(db_target) as saver:
        assert saver.collect_garbage() == {"contents": 1, "bytes": 600}
        assert stored(saver, db_target)[0] == 0


def test_a_stream_whose_checkpoint_is_deleted_meanwhile_raises(db_target):
    content = random.Random(1808).randbytes(3 * CHUNK_SIZE)
    with Saver(db_target) as saver:
        saver.put("t", 1, files={"f": content})
        with saver.open_file("t", "f") as stream:
            first = stream.read(CHUNK_SIZE)
            saver.delete_thread("t")
            with pytest.raises(FileNotInCheckpointError, match="deleted while it was being"):
                stream.read()
        assert first == content[:CHUNK_SIZE]


# --- many threads -------------------------------------------------------------------------------

def test_threads_attach_files_at_once_through_one_saver(db_target, hang_detector):
    hang_detector(120)
    seed = 1809
    threads, rounds = 8, 6
    shared = random.Random(seed).randbytes(CHUNK_SIZE + 3)
    errors: list[BaseException] = []
    made: dict[str, dict[str, bytes]] = {}
    barrier = threading.Barrier(threads)

    def work(n: int) -> None:
        rng = random.Random(f"{seed}/{n}")
        try:
            barrier.wait()
            for i in range(rounds):
                mine = rng.randbytes(rng.choice((10, 5000, CHUNK_SIZE + 11)))
                files = {"shared.bin": shared, f"own/{n}-{i}.bin": mine}
                if i % 2:
                    ref = saver.put(f"t{n}", {"i": i}, files=files)
                else:
                    with saver.transaction():
                        ref = saver.put(f"t{n}", {"i": i})
                        saver.attach_files(f"t{n}", ref.checkpoint_id, files)
                made[ref.checkpoint_id] = files
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with Saver(db_target) as saver:
        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors, (seed, errors)
        assert len(made) == threads * rounds
        for n in range(threads):
            for ck in saver.list(f"t{n}"):
                files = made[ck.checkpoint_id]
                assert {f.name: f.digest for f in saver.list_files(f"t{n}", ck.checkpoint_id)} \
                    == {name: sha(data) for name, data in files.items()}, seed
                for name, data in files.items():
                    assert saver.read_file(f"t{n}", name, checkpoint_id=ck.checkpoint_id) \
                        == data, seed
        distinct = {sha(d) for files in made.values() for d in files.values()}
        assert stored(saver, db_target)[0] == len(distinct)


# --- the validator ------------------------------------------------------------------------------

def _check(db_target: str):
    from sqlitesaver import check
    before = stored_digest(db_target)
    report = check.check_database(db_target)
    if is_server(db_target):
        assert stored_digest(db_target) == before
    else:
        from test_check import assert_unchanged
        assert_unchanged(db_target, before)
    return report, {step.name: step for step in report.steps}


def test_the_validator_verifies_every_file_and_reports_unreferenced_content(db_target):
    content = random.Random(1810).randbytes(2 * CHUNK_SIZE + 3)
    with Saver(db_target) as saver:
        saver.put("t", 1, files={"a": content, "b": b"small", "c": content})
    report, steps = _check(db_target)
    assert report.ok and steps["files"].status == "ok", steps["files"]
    assert "3 file(s) in manifests, 2 distinct content(s)" in steps["files"].detail
    raw(db_target, "DELETE FROM files WHERE name = 'b'")  # behind the Saver's back
    report, steps = _check(db_target)
    assert report.ok and steps["files"].status == "note", steps["files"]
    assert "1 content(s) (5 bytes) that no checkpoint's files name" in steps["files"].detail


@pytest.mark.parametrize("damage, phrase", [
    ("UPDATE file_chunks SET data = CAST(zeroblob(length(data)) AS BLOB) WHERE idx = 1",
     "chunk 1 (expected chunk 1)"),
    ("DELETE FROM file_chunks WHERE idx = 2", "its 2 chunk(s) hold"),
    ("UPDATE file_contents SET size = 1", "its record does not match its checksum"),
    ("UPDATE files SET name = '../x'", "manifest entry does not match its checksum"),
    ("DELETE FROM file_contents", "that is not stored"),
], ids=["chunk bytes", "chunk missing", "size", "name", "content missing"])
def test_the_validator_fails_damaged_files(db_target, damage, phrase):
    _one_file(db_target, random.Random(1811).randbytes(3 * CHUNK_SIZE - 5))
    raw(db_target, damage)
    report, steps = _check(db_target)
    assert not report.ok and steps["files"].status == "FAILED", steps["files"]
    assert phrase in steps["files"].detail, steps["files"].detail


# --- the README's example runs ------------------------------------------------------------------

def test_the_readme_files_example_runs(tmp_path, capsys):
    import re
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "README.md")
    with open(readme, encoding="utf-8") as f:
        section = f.read().split("\n## Files\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    import tempfile
    old = tempfile.tempdir
    tempfile.tempdir = str(tmp_path)
    try:
        exec(compile(code, "README.md (Files)", "exec"), {})
    finally:
        tempfile.tempdir = old
    assert capsys.readouterr().out == "[('src/main.py', 16)]\n"


def test_the_langgraph_files_example_runs(tmp_path):
    pytest.importorskip("langgraph")
    import subprocess
    import sys
    from test_bad_input import child_env
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "examples", "langgraph_files.py"),
                           str(tmp_path)], capture_output=True, text=True, env=child_env(),
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "files of the last checkpoint: ['plan.md', 'report.md']" in done.stdout
    assert "report.md after restore: '# Report\\nAll done.\\n'" in done.stdout


def test_a_path_that_becomes_a_fifo_before_the_transaction_is_refused_without_blocking(
        db_target, tmp_path, monkeypatch, hang_detector):
    """A file given by path is hashed before the write lock and read again inside the
    transaction; swapped for a FIFO in between (found in review), opening it must not block
    while the lock is held: FileAccessError, nothing written, other writers unaffected."""
    hang_detector(60)
    path = tmp_path / "in.txt"
    path.write_bytes(b"hello")
    store = attachments.store

    def swapped_first(*args, **kwargs):
        os.unlink(path)
        os.mkfifo(path)  # another process replaced the file after it was hashed
        return store(*args, **kwargs)

    with Saver(db_target) as saver:
        saver.put("t", {"n": 0})
        before = stored_digest(db_target)
        monkeypatch.setattr(attachments, "store", swapped_first)
        with pytest.raises(FileAccessError, match="not a regular file"):
            saver.put("t", {"n": 1}, files={"f": str(path)})
        assert stored_digest(db_target) == before
        monkeypatch.setattr(attachments, "store", store)
        saver.put("u", {"n": 2})  # the write lock was released
        assert saver.get("t").state == {"n": 0}


# --- PostgreSQL: many writers and collectors at once ----------------------------------------------

def test_puts_with_files_race_collectors_and_nothing_is_lost_or_left(pg_url, hang_detector):
    """On a server, writers and collectors run at once (no write lock for the whole store):
    threads put checkpoints whose files share a small pool of contents while others delete
    and prune those threads and collect garbage, so a content is often left unreferenced at
    the instant a writer claims it. Every call succeeds (no foreign key violation from a
    content deleted under a committing put, no deadlock past the engine's retries), every
    remaining checkpoint has every file it was put with, whole, and no content is left that
    nothing names."""
    hang_detector(180)
    seed = 1820
    writers, collectors, rounds = 4, 3, 30
    pool = [random.Random(f"{seed}/pool/{i}").randbytes(size)
            for i, size in enumerate((100, 5000, CHUNK_SIZE + 5))]
    made: dict[tuple[str, str], dict[str, bytes]] = {}
    errors: list[tuple[str, BaseException]] = []
    barrier = threading.Barrier(writers + collectors)

    def write(n: int) -> None:
        rng = random.Random(f"{seed}/w/{n}")
        try:
            barrier.wait()
            for i in range(rounds):
                thread = f"w{rng.randrange(writers)}"
                files = {"shared": rng.choice(pool), f"own/{n}-{i}": rng.randbytes(64)}
                if i % 3 == 2:  # a replacing attach: a writer that also collects
                    files["shared"] = rng.choice(pool)
                    try:
                        ref = saver.put(thread, {"n": n, "i": i})
                        saver.attach_files(thread, ref.checkpoint_id, files)
                    except CheckpointNotFoundError:
                        continue  # deleted by a collector between the two calls
                else:
                    ref = saver.put(thread, {"n": n, "i": i}, files=files)
                made[(thread, ref.checkpoint_id)] = files
        except BaseException as exc:  # reported by the main thread
            errors.append((f"writer {n}", exc))

    def collect(n: int) -> None:
        rng = random.Random(f"{seed}/c/{n}")
        try:
            barrier.wait()
            for _ in range(rounds):
                thread = f"w{rng.randrange(writers)}"
                action = rng.randrange(3)
                if action == 0:
                    saver.prune(thread, keep_last=rng.choice((0, 1)))
                elif action == 1:
                    saver.delete_thread(thread)
                else:
                    saver.collect_garbage()
        except BaseException as exc:
            errors.append((f"collector {n}", exc))

    with Saver(pg_url) as saver:
        workers = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        workers += [threading.Thread(target=collect, args=(n,)) for n in range(collectors)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors, (seed, errors)
        remaining = 0
        for thread in saver.threads():
            for ck in saver.list(thread):
                # Every checkpoint left was put with its files (an attach a collector beat
                # left none: its checkpoint was gone).
                assert (thread, ck.checkpoint_id) in made, (seed, thread, ck.checkpoint_id)
                remaining += 1
                files = made[(thread, ck.checkpoint_id)]
                assert {f.name: f.digest for f in saver.list_files(thread, ck.checkpoint_id)} \
                    == {name: sha(data) for name, data in files.items()}, seed
                for name, data in files.items():
                    assert saver.read_file(thread, name, checkpoint_id=ck.checkpoint_id) \
                        == data, seed
        assert saver.collect_garbage() == {"contents": 0, "bytes": 0}, seed
    report, steps = _check(pg_url)
    assert report.ok and steps["files"].status == "ok", steps["files"]
    print(f"seed {seed}: {len(made)} puts with files, {remaining} left at the end")


def test_nul_in_an_id_is_refused_on_a_server_and_nothing_is_written(pg_url, tmp_path):
    """PostgreSQL's text cannot hold NUL: a write naming one is refused before anything is
    written (InvalidArgumentError saying so), a read finds no such checkpoint, as get() does."""
    with Saver(pg_url) as saver:
        ref = saver.put("t", 1, files={"a": b"x"})
        before = stored_digest(pg_url)
        for call in (lambda: saver.put("t\0", 1, files={"a": b"x"}),
                     lambda: saver.put("t", 1, namespace="\0", workspace=str(tmp_path)),
                     lambda: saver.attach_files("t", "k\0", {"a": b"y"})):
            with pytest.raises(InvalidArgumentError, match="NUL"):
                call()
        for call in (lambda: saver.list_files("t\0"),
                     lambda: saver.read_file("t", "a", checkpoint_id="k\0")):
            with pytest.raises(CheckpointNotFoundError):
                call()
        assert stored_digest(pg_url) == before
        assert saver.read_file("t", "a", checkpoint_id=ref.checkpoint_id) == b"x"


_FILE_WRITER = """
import hashlib, sys
from sqlitesaver import Saver
sys.path.insert(0, sys.argv[2])
from test_files import killed_writer_files
with Saver(sys.argv[1]) as saver:
    n = 0
    while True:
        n += 1
        ref = saver.put("t", {"n": n}, files=killed_writer_files(n))
        print(ref.checkpoint_id, n, flush=True)  # acknowledged: COMMIT returned
"""


def killed_writer_files(n: int) -> dict[str, bytes]:
    """What the killed writer puts with checkpoint ``n``: a file of 1 to 4 chunks (so the kill
    often lands while its chunks are being sent) and a small one."""
    big = random.Random(f"1821/{n}").randbytes((n % 4) * CHUNK_SIZE + 100 + n)
    return {"big.bin": big, "n.txt": str(n).encode()}


@pytest.mark.parametrize("seed", [1, 2])
def test_a_client_killed_while_it_puts_files_leaves_whole_checkpoints_or_none(pg_url, seed):
    """SIGKILL of a client in a loop of puts with files, right after one was acknowledged (so
    the next is in flight, its chunks going to the server): the server rolls the open
    transaction back. Every acknowledged checkpoint is there with all its files, whole; at
    most the one in flight is newer (committed, its acknowledgement lost); no content of the
    killed transaction is left behind."""
    import signal
    import subprocess
    import sys

    from test_bad_input import child_env
    kill_after = random.Random(seed).randrange(1, 6)
    Saver(pg_url).close()  # migrated before the child starts
    tests = os.path.dirname(os.path.abspath(__file__))
    child = subprocess.Popen([sys.executable, "-c", _FILE_WRITER, pg_url, tests],
                             stdout=subprocess.PIPE, text=True, env=child_env())
    acked = []
    try:
        for line in child.stdout:
            acked.append(line.split())
            if len(acked) >= kill_after:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL and len(acked) == kill_after, seed
    with Saver(pg_url) as saver:
        found = {ck.checkpoint_id: ck.state["n"] for ck in saver.list("t")}
        assert all(found.get(ck) == int(n) for ck, n in acked), (seed, acked, found)
        assert max(found.values()) <= kill_after + 1, seed
        for checkpoint_id, n in found.items():
            files = killed_writer_files(n)
            assert {f.name: f.digest for f in saver.list_files("t", checkpoint_id)} == \
                {name: sha(data) for name, data in files.items()}, seed
            for name, data in files.items():
                assert saver.read_file("t", name, checkpoint_id=checkpoint_id) == data, seed
        # No content of the killed transaction was committed: two per checkpoint found.
        assert counts(pg_url)[1] == 2 * len(found), seed
    report, steps = _check(pg_url)
    assert report.ok and steps["files"].status == "ok", steps["files"]


def test_a_put_whose_files_meet_a_deadlock_is_run_again_whole(pg_url, tmp_path, monkeypatch):
    """On a server a deadlock (or a serialization failure) re-runs the put's whole
    transaction: the chunks the failed try sent are rolled back with it, and the files
    (a path among them, read again) are stored once, by the try that commits."""
    import psycopg

    from sqlitesaver.postgres import files as pg_files
    on_disk = tmp_path / "c.txt"
    on_disk.write_bytes(b"from a path")
    files = {"a": random.Random(1822).randbytes(CHUNK_SIZE + 1), "b": b"bee", "c": on_disk}
    real = pg_files.ServerFileDb.claim
    claims = []

    def deadlocked_once(self, digest, size, count):
        claims.append(digest)
        if len(claims) == 2:  # the first try has claimed (and maybe written) one content
            raise psycopg.errors.DeadlockDetected("injected")
        return real(self, digest, size, count)

    monkeypatch.setattr(pg_files.ServerFileDb, "claim", deadlocked_once)
    with Saver(pg_url) as saver:
        ref = saver.put("t", 1, files=files)
        assert len(claims) == 2 + 3, claims  # two on the try that failed, three on the retry
        assert [ck.checkpoint_id for ck in saver.list("t")] == [ref.checkpoint_id]
        assert saver.read_file("t", "a") == files["a"]
        assert saver.read_file("t", "c") == b"from a path"
    assert counts(pg_url) == (3, 3, 4)
