"""The one translation boundary: each SQLite condition maps to the error that says what
happened, names the file and says what to do.
SQLite by nature: APSW's result codes (a server's SQLSTATEs: tests/test_postgres_engine.py)."""

from __future__ import annotations

import apsw

from sqlitesaver import BusyTimeoutError
from sqlitesaver.errors import translate


def test_a_lock_inside_this_process_is_not_blamed_on_another_process():
    error = translate(apsw.LockedError("database table is locked"), "/data/x.db",
                      "putting a checkpoint")
    assert type(error) is BusyTimeoutError and error.path == "/data/x.db"
    text = str(error)
    assert "'/data/x.db'" in text and "inside this process" in text
    assert "busy timeout" not in text and "another connection" not in text


def test_a_lock_held_past_the_busy_timeout_says_so():
    error = translate(apsw.BusyError("database is locked"), "/data/x.db", "putting a checkpoint")
    assert type(error) is BusyTimeoutError
    assert "'/data/x.db'" in str(error) and "busy timeout" in str(error)


def _names_the_commands(text: str, path: str) -> None:
    assert "restore from a backup" in text, text
    for command in (f"python -m sqlitesaver restore BACKUP {path}",
                    f"python -m sqlitesaver backup {path} BACKUP",
                    f"python -m sqlitesaver salvage {path} NEW"):
        assert command in text, text


def test_damage_advice_names_the_commands_that_make_restore_and_salvage(db_path):
    # Issue #19: "restore from a backup" with no command to make one.
    _names_the_commands(str(translate(apsw.CorruptError("malformed"), "/data/x.db",
                                      "reading")), "/data/x.db")
    from sqlitesaver import ChecksumError, Saver
    with Saver(db_path) as saver:
        error = saver._checksum_error("checkpoint '0000000000000001' of thread 't'")
    assert isinstance(error, ChecksumError)
    _names_the_commands(str(error), db_path)
    assert "skip_damaged=True" in str(error)
