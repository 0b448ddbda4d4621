"""Waiting for locks (issue #5, item 1): deadline, jittered backoff, which errors are retried.

The unit tests drive :func:`sqlitesaver.contention.retry` with a fake clock (its sleeps advance
the clock), so deadlines are exact and nothing here waits on wall time. The integration tests
hold a real lock from a second APSW connection in this process (the same SQLite library, so no
POSIX-lock hazard) and release it once the Saver has been seen waiting: the Saver's first
backoff sleep sets an Event; nothing synchronises by sleeping.

SQLite by nature: SQLITE_BUSY and its busy handler (a server's retries:
tests/test_postgres_engine.py).
"""

from __future__ import annotations

import threading
import time

import apsw
import pytest

from sqlitesaver import BusyTimeoutError, DatabaseIOError, Saver, contention, faults
from sqlitesaver.sqlite.transaction import _commit


class FakeClock:
    """``contention``'s clock and sleep: sleeping advances the clock by exactly that much."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_clock(monkeypatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(contention, "_clock", clock.clock)
    monkeypatch.setattr(contention, "_sleep", clock.sleep)
    return clock


def failing(times: int, error: type[apsw.Error], result: object = "done"):
    """A step that raises ``error`` on its first ``times`` calls, then returns ``result``."""
    calls = []

    def step() -> object:
        calls.append(1)
        if len(calls) <= times:
            raise error("database is locked")
        return result
    return step, calls


@pytest.mark.parametrize("error", [apsw.BusyError, apsw.LockedError])
def test_busy_and_locked_are_retried_until_the_step_succeeds(fake_clock, error):
    step, calls = failing(5, error)
    waiter = contention.Waiter(30.0)
    assert contention.retry(waiter, step, path="/x.db", doing="testing") == "done"
    assert len(calls) == 6 and len(fake_clock.sleeps) == 5 and waiter.waits == 5


def test_the_backoff_grows_exponentially_with_jitter_and_is_capped(fake_clock):
    step, _ = failing(10**6, apsw.BusyError)
    waiter = contention.Waiter(5.0)
    with pytest.raises(BusyTimeoutError):
        contention.retry(waiter, step, path="/x.db", doing="testing")
    sleeps = fake_clock.sleeps
    for n, slept in enumerate(sleeps[:-1]):  # the last one is cut short by the deadline
        assert 0 <= slept <= min(contention.MAX_DELAY, contention.FIRST_DELAY * 2 ** n), n
    assert len(set(sleeps)) > len(sleeps) // 2, "no jitter: waiters would retry in lockstep"
    # Capped: after the range stops doubling, the mean wait is about MAX_DELAY / 2.
    late = sleeps[20:-1]
    assert contention.MAX_DELAY / 4 < sum(late) / len(late) < contention.MAX_DELAY * 3 / 4


def test_past_the_deadline_busy_timeout_names_the_file_and_the_time_waited(fake_clock):
    step, calls = failing(10**6, apsw.BusyError)
    waiter = contention.Waiter(2.5)
    with pytest.raises(BusyTimeoutError) as info:
        contention.retry(waiter, step, path="/data/x.db", doing="putting a checkpoint")
    error = info.value
    assert sum(fake_clock.sleeps) == pytest.approx(2.5)  # waited exactly up to the deadline
    assert error.waited == pytest.approx(2.5) and error.path == "/data/x.db"
    text = str(error)
    assert "'/data/x.db' stayed locked for 2.50 s while putting a checkpoint" in text
    assert "nothing was written" in text and "busy_timeout" in text
    assert isinstance(error.__cause__, apsw.BusyError)
    assert len(calls) == len(fake_clock.sleeps) + 1


def test_the_deadline_counts_from_the_first_wait_not_from_the_work_before_it(fake_clock):
    waiter = contention.Waiter(1.0)
    calls = []

    def slow_then_busy() -> str:
        calls.append(1)
        if len(calls) == 1:
            fake_clock.now += 10.0  # ten seconds of work, then the lock is taken
            raise apsw.BusyError("database is locked")
        return "done"
    assert contention.retry(waiter, slow_then_busy, path="/x.db", doing="testing") == "done"


@pytest.mark.parametrize("error", [apsw.IOError, apsw.FullError, apsw.CorruptError,
                                   apsw.ReadOnlyError])
def test_other_errors_are_never_retried(fake_clock, error):
    step, calls = failing(1, error)
    with pytest.raises(error):
        contention.retry(contention.Waiter(30.0), step, path="/x.db", doing="testing")
    assert len(calls) == 1 and fake_clock.sleeps == []


def test_waits_inside_the_step_share_its_deadline(fake_clock):
    """SQLite's calls to the busy handler during a step count against the step's deadline,
    so a step never waits longer than busy_timeout in all."""
    waiter = contention.Waiter(1.0)

    def step() -> None:
        while waiter(0):  # SQLite asking the handler, as long as it says to keep trying
            pass
        raise apsw.BusyError("database is locked")  # what SQLite returns once it gives up
    with pytest.raises(BusyTimeoutError) as info:
        contention.retry(waiter, step, path="/x.db", doing="testing")
    assert sum(fake_clock.sleeps) == pytest.approx(1.0)
    assert info.value.waited == pytest.approx(1.0)


def test_outside_a_step_each_locking_event_gets_its_own_deadline(fake_clock):
    waiter = contention.Waiter(0.5)
    for _ in range(2):
        count = 0
        while waiter(count):
            count += 1
        assert sum(fake_clock.sleeps) == pytest.approx(0.5)
        fake_clock.sleeps.clear()


class FakeConnection:
    """What ``transaction._commit`` needs of a connection: COMMIT busy ``busy`` times."""

    def __init__(self, busy: int, rolled_back: bool = False) -> None:
        self.busy = busy
        self.rolled_back = rolled_back
        self.committed = False

    def get_autocommit(self) -> bool:
        return self.committed or self.rolled_back

    def execute(self, sql: str) -> None:
        assert sql == "COMMIT" and not self.get_autocommit()
        if self.busy:
            self.busy -= 1
            raise apsw.BusyError("cannot commit: a reader is in the way")
        self.committed = True


def test_a_busy_commit_is_retried_and_commits_the_same_transaction(fake_clock):
    conn = FakeConnection(busy=3)
    contention.retry(contention.Waiter(30.0), _commit(conn), path="/x.db", doing="testing")
    assert conn.committed and len(fake_clock.sleeps) == 3


def test_a_commit_is_never_retried_once_its_transaction_is_gone(fake_clock):
    conn = FakeConnection(busy=1)
    step = _commit(conn)

    def commit_then_lose_it() -> None:
        try:
            step()
        finally:
            conn.rolled_back = True  # as if SQLite had rolled the transaction back
    with pytest.raises(apsw.AbortError, match="ended before its COMMIT"):
        contention.retry(contention.Waiter(30.0), commit_then_lose_it, path="/x.db",
                         doing="testing")
    assert not conn.committed


# --- integration: a real lock held by a second connection --------------------------------------

@pytest.fixture
def first_wait(monkeypatch) -> threading.Event:
    """Set when a busy handler or a retry of this process first backs off."""
    waited = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        waited.set()
        real_sleep(seconds)
    monkeypatch.setattr(contention, "_sleep", sleep)
    return waited


def in_thread(call) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_put_waits_out_another_connections_write_lock(db_path, first_wait):
    with Saver(db_path) as saver:
        saver.put("t", "before")
        blocker = apsw.Connection(db_path)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            thread, outcome = in_thread(lambda: saver.put("t", "after"))
            assert first_wait.wait(30), "the put never waited for the lock"
            assert thread.is_alive()  # still waiting: the lock is held
            blocker.execute("ROLLBACK")
            thread.join(30)
        finally:
            blocker.close()
        assert not thread.is_alive()
        (ref,) = outcome
        assert not isinstance(ref, BaseException), ref
        assert saver.get("t").checkpoint_id == ref.checkpoint_id
        assert saver.stats()["lock_waits"] >= 1


def test_a_put_past_busy_timeout_raises_naming_the_file_and_the_wait(db_path):
    with Saver(db_path, busy_timeout=0.3) as saver:
        saver.put("t", "before")
        blocker = apsw.Connection(db_path)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            with pytest.raises(BusyTimeoutError) as info:
                saver.put("t", "blocked")
            elapsed = time.monotonic() - started
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()
        error = info.value
        assert 0.3 <= error.waited <= elapsed
        assert error.sqlite_result == apsw.SQLITE_BUSY  # SQLite's own code, carried over
        assert repr(db_path) in str(error) and f"{error.waited:.2f} s" in str(error)
        assert [c.state for c in saver.list("t")] == ["before"]
        saver.put("t", "after")  # the same Saver writes once the lock is gone


def test_opening_waits_out_a_connection_that_holds_the_file_exclusively(db_path, first_wait):
    with Saver(db_path) as saver:
        saver.put("t", "before")
    blocker = apsw.Connection(db_path)
    try:
        # EXCLUSIVE locking mode: after its first write this connection keeps the file locked
        # against every other connection, readers included, until it closes.
        blocker.execute("PRAGMA locking_mode=EXCLUSIVE")
        blocker.execute("BEGIN IMMEDIATE")
        blocker.execute("UPDATE high_water SET value = value")
        blocker.execute("COMMIT")
        thread, outcome = in_thread(lambda: Saver(db_path))
        assert first_wait.wait(30), "opening never waited for the lock"
        assert thread.is_alive()
    finally:
        blocker.close()
    thread.join(30)
    assert not thread.is_alive()
    (opened,) = outcome
    assert isinstance(opened, Saver), opened
    with opened:
        assert opened.get("t").state == "before"
        opened.put("t", "after")


def test_opening_past_busy_timeout_raises_and_changes_nothing(db_path):
    from conftest import family_digest

    with Saver(db_path) as saver:
        saver.put("t", "before")
    before = family_digest(db_path)
    blocker = apsw.Connection(db_path)
    try:
        blocker.execute("PRAGMA locking_mode=EXCLUSIVE")
        blocker.execute("BEGIN EXCLUSIVE")  # takes the lock, writes nothing
        with pytest.raises(BusyTimeoutError) as info:
            Saver(db_path, busy_timeout=0.2)
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    assert repr(db_path) in str(info.value)
    assert family_digest(db_path) == before


def test_an_io_error_at_commit_is_not_retried(db_path, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(contention, "_sleep", slept.append)
    io = faults.install_io_faults()
    try:
        with Saver(db_path) as saver:
            saver.put("t", "before")
            io.arm(1, kinds=("sync",), persistent=True)  # every fsync fails from now on
            with pytest.raises(DatabaseIOError):
                saver.put("t", "after")
            io.clear()
    finally:
        io.clear()
        io.uninstall()
    assert slept == []  # no backoff: the failed COMMIT was not tried again


# --- contention.attempt: a first run that never waits, then retry() -------------------------

class LockedConnection:
    """What SQLite does with a statement while another connection holds the lock: ask the busy
    handler (``waiter``) until it gives up, then raise SQLITE_BUSY. The lock is released once
    ``held_for`` pauses have been slept, in whatever attempts."""

    def __init__(self, waiter: contention.Waiter, clock: FakeClock, held_for: float) -> None:
        self.waiter = waiter
        self.clock = clock
        self.held_for = held_for
        self.attempts: list[int] = []  # the pauses slept so far, at each attempt's start
        self.ran: list[str] = []

    def locked(self) -> bool:
        return len(self.clock.sleeps) < self.held_for

    def execute(self, sql: str) -> None:
        self.attempts.append(len(self.clock.sleeps))
        count = 0
        while self.locked():
            if not self.waiter(count):
                raise apsw.BusyError("database is locked")
            count += 1
        self.ran.append(sql)


def begin(conn: LockedConnection):
    return lambda: conn.execute("BEGIN IMMEDIATE")


def test_attempt_runs_once_and_never_waits_when_nothing_is_in_the_way(fake_clock):
    waiter = contention.Waiter(30.0)
    conn = LockedConnection(waiter, fake_clock, held_for=0)
    contention.attempt(waiter, begin(conn), path="/x.db", doing="testing")
    assert conn.ran == ["BEGIN IMMEDIATE"] and conn.attempts == [0]
    assert fake_clock.sleeps == [] and waiter.waits == 0 and waiter._step is None


def test_attempt_gives_up_its_first_attempt_at_once_then_waits_the_lock_out(fake_clock):
    waiter = contention.Waiter(30.0)
    conn = LockedConnection(waiter, fake_clock, held_for=3)
    contention.attempt(waiter, begin(conn), path="/x.db", doing="testing")
    # The first attempt slept nothing; the retry waited three pauses and then ran it.
    assert conn.attempts[:2] == [0, 0] and conn.ran == ["BEGIN IMMEDIATE"]
    assert len(fake_clock.sleeps) == 3 and waiter.waits == 3 and waiter._step is None


def test_attempt_waits_one_busy_timeout_not_two(fake_clock):
    waiter = contention.Waiter(0.5)
    conn = LockedConnection(waiter, fake_clock, held_for=float("inf"))
    with pytest.raises(BusyTimeoutError) as info:
        contention.attempt(waiter, begin(conn), path="/x.db", doing="testing")
    assert sum(fake_clock.sleeps) == pytest.approx(0.5)
    assert info.value.waited == pytest.approx(0.5) and "'/x.db'" in str(info.value)
    assert conn.ran == [] and waiter._step is None


def test_attempt_never_commits_a_transaction_that_is_gone(fake_clock):
    """A busy COMMIT is retried through transaction._commit, which refuses to commit a transaction
    that is gone instead of reporting success for work SQLite rolled back."""
    conn = FakeConnection(busy=1)
    step = _commit(conn)
    attempts: list = []

    def commit_then_lose_it() -> None:
        attempts.append(1)
        try:
            step()
        finally:
            conn.rolled_back = True  # as if SQLite had rolled the transaction back
    with pytest.raises(apsw.AbortError, match="ended before its COMMIT"):
        contention.attempt(contention.Waiter(30.0), commit_then_lose_it, path="/x.db",
                           doing="testing")
    assert not conn.committed and len(attempts) == 2
