"""A garbled first sector in the database file, with and without a WAL that holds page 1.

A power loss while a checkpoint rewrites page 1 can leave its first sector as garbage in the
file, while the WAL (synced before any checkpoint starts) still holds the whole page. SQLite reads
page 1 from the WAL, so the database is intact and the recovery checkpoint repairs the file.
sqlitesaver used to refuse such a file from its raw header (found by the power-loss torture with
garbage-filled sectors). Without a WAL page 1, the file is still refused and left unchanged.

SQLite by nature: the database file's first sector and its -wal.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import family_digest
from sqlitesaver import NotASaverDatabaseError, Saver
from sqlitesaver.check import check_database

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 4242

# Leaves its last transaction in the -wal only: the process ends without close(), so nothing
# is checkpointed into the file.
_WRITE_AND_DIE = textwrap.dedent("""
    import os, sys
    from sqlitesaver import Saver
    saver = Saver(sys.argv[1])
    saver.put("t", bytes(int(sys.argv[2])), metadata={"last": True})
    os._exit(0)
""")


def write_in_wal_only(path: str, size: int) -> None:
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", _WRITE_AND_DIE, path, str(size)], check=True, env=env)


def wal_pages(path: str) -> set[int]:
    """The page numbers of every frame in ``path``'s -wal (sqlite.org/fileformat2.html#walformat)."""
    with open(path + "-wal", "rb") as f:
        data = f.read()
    page_size = struct.unpack(">I", data[8:12])[0]
    pages, offset = set(), 32
    while offset + 24 + page_size <= len(data):
        pages.add(struct.unpack(">I", data[offset:offset + 4])[0])
        offset += 24 + page_size
    return pages


def garble_first_sector(path: str, seed: int) -> None:
    rng = random.Random(seed)
    garbage = bytes(rng.randrange(256) for _ in range(512))
    assert not garbage.startswith(b"SQLite format 3"), f"seed {seed}"
    with open(path, "r+b") as f:
        f.write(garbage)


def database(path: str, last_state_size: int) -> None:
    with Saver(path) as saver:
        saver.put("t", {"n": 1})
        saver.append_log("t", "started")
    write_in_wal_only(path, last_state_size)


def test_page_one_in_the_wal_restores_a_garbled_header(db_path):
    database(db_path, 200_000)  # the file grows, so page 1 (its size field) is in the WAL
    assert 1 in wal_pages(db_path)
    garble_first_sector(db_path, SEED)

    before = family_digest(db_path)
    report = check_database(db_path)
    assert report.ok, f"seed {SEED}: {report.as_dict()}"
    assert family_digest(db_path) == before, "the validator wrote to the database"

    with Saver(db_path, integrity_check="full") as saver:
        assert saver.recovery.wal_frames > 0
        latest = saver.get("t")
        assert latest is not None and latest.state == bytes(200_000)
        assert latest.metadata == {"last": True}
        assert [e.event for e in saver.read_log("t")] == ["started"]
    with open(db_path, "rb") as f:
        assert f.read(16) == b"SQLite format 3\x00", "the recovery checkpoint did not repair page 1"
    assert check_database(db_path).ok


def test_garbled_header_without_page_one_in_the_wal_is_refused_unchanged(db_path):
    database(db_path, 10)  # a small row: the file does not grow and page 1 is not rewritten
    assert wal_pages(db_path) and 1 not in wal_pages(db_path)
    garble_first_sector(db_path, SEED)

    before = family_digest(db_path)
    for _ in range(2):
        with pytest.raises(NotASaverDatabaseError) as info:
            Saver(db_path)
        assert repr(db_path) in str(info.value) and "not an SQLite database" in str(info.value)
    report = check_database(db_path)
    assert report.exit_status == 1, report.as_dict()  # damage: the file may well be ours
    assert family_digest(db_path) == before
