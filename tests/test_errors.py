"""The one translation boundary: each SQLite condition maps to the error that says what
happened, names the file and says what to do."""

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
