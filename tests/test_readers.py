"""Bounded readers (issue #13, class 5): at most ``max_readers`` read connections are open at
once, reads past that wait (in order, never failing), idle ones are closed once reads stop, an
exception anywhere in a read or its wait gives its slot back, and running out of file
descriptors says "too many open files" with the limit.

Reads are held open deterministically, without sleeps: a hook installed on every new APSW
connection (``apsw.connection_hooks``, after the Saver's write connection exists, so only its
read connections get it) blocks each SELECT on a gate the test opens. Every threaded test runs
under a hang detector (``faulthandler.dump_traceback_later(..., exit=True)``): a deadlock dumps
every thread's stack and ends the run instead of hanging it.

SQLite by nature: its read connections and file descriptors (a server's pool:
tests/test_postgres_engine.py).
"""

from __future__ import annotations

import faulthandler
import json
import os
import subprocess
import sys
import textwrap
import threading

import apsw
import pytest

import sqlitesaver
import sqlitesaver.sqlite.reads as reads_module
import sqlitesaver.sqlite.wal as wal
from sqlitesaver import InvalidArgumentError, Saver, SaverClosedError, opening

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sqlitesaver.__file__)))
HANG_SECONDS = 120
DEFAULT_MAX_READERS = 32
MAX_IDLE_READERS = 4


def child_env() -> dict[str, str]:
    return dict(os.environ,
                PYTHONPATH=SOURCE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def hang_detector(request):
    """After HANG_SECONDS, dump every thread's stack and end the process (exit status 1)."""
    try:
        # pytest captures file descriptor 2; its faulthandler plugin keeps the real one.
        from _pytest.faulthandler import fault_handler_stderr_fd_key
        stderr = request.config.stash[fault_handler_stderr_fd_key]
    except (ImportError, KeyError, AttributeError):  # another pytest: the captured one
        stderr = sys.stderr.fileno()
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


class Gate:
    """Blocks every SELECT on read connections opened from now on until :meth:`open`;
    counts how many are inside at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.peak = 0
        self.entered = 0
        self.cond = threading.Condition()
        self.opened = threading.Event()
        self.raise_in: BaseException | None = None  # raised by the next SELECT, once
        apsw.connection_hooks.append(self._hook)

    def _hook(self, conn: apsw.Connection) -> None:
        conn.set_exec_trace(self._trace)

    def _trace(self, cursor: apsw.Cursor, sql: str, bindings: object) -> bool:
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            return True
        with self.cond:
            if self.raise_in is not None:
                exc, self.raise_in = self.raise_in, None
                raise exc
            self.inside += 1
            self.entered += 1
            self.peak = max(self.peak, self.inside)
            self.cond.notify_all()
        try:
            self.opened.wait()
        finally:
            with self.cond:
                self.inside -= 1
                self.cond.notify_all()
        return True

    def wait_inside(self, n: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.inside >= n)

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        self.opened.set()
        apsw.connection_hooks.remove(self._hook)


@pytest.fixture
def gate():
    made: list[Gate] = []

    def make() -> Gate:
        g = Gate()
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


class queued_waiters:
    """Within the block, each read that starts waiting for a connection releases
    ``self.queued`` (a semaphore) and gets an event of ``event_factory()``, if given."""

    def __init__(self, event_factory=None) -> None:
        self.queued = threading.Semaphore(0)
        self.event_factory = event_factory

    def __enter__(self) -> "queued_waiters":
        self.real = reads_module._Waiter
        outer = self

        class Watched(self.real):
            __slots__ = ()

            def __init__(self) -> None:
                super().__init__()
                if outer.event_factory is not None:
                    self.event = outer.event_factory()
                outer.queued.release()  # appended to the queue in the same locked step

        reads_module._Waiter = Watched
        return self

    def __exit__(self, *exc_info: object) -> None:
        reads_module._Waiter = self.real

    def wait(self, n: int = 1) -> None:
        for _ in range(n):
            self.queued.acquire()


def _reader_threads(saver: Saver, n: int, errors: list, results: list) -> list[threading.Thread]:
    def read() -> None:
        try:
            results.append(saver.get("t").state)
        except BaseException as exc:  # reported by the test, with its type
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


# --- the bound -----------------------------------------------------------------------------

def test_200_concurrent_readers_leave_a_bounded_number_of_descriptors(db_path, gate,
                                                                     hang_detector):
    with Saver(db_path) as saver:
        saver.put("t", {"n": 1})
        baseline = open_fds()  # the write connection's db, -wal and -shm
        g = gate()
        errors: list = []
        results: list = []
        threads = _reader_threads(saver, 200, errors, results)
        g.wait_inside(DEFAULT_MAX_READERS)  # that many reads hold a connection at once
        g.open()
        for t in threads:
            t.join()
        assert errors == [] and results == [{"n": 1}] * 200
        assert g.peak == DEFAULT_MAX_READERS
        stats = saver.stats()
        assert stats["readers_open"] == stats["readers_idle"] <= MAX_IDLE_READERS, stats
        # SQLite defers closing a closed connection's database descriptor while other
        # connections of the process hold locks on the file (closing it would drop their POSIX
        # locks) and reuses it for the next connection: those stay, one per connection that
        # was open at the peak. The -wal descriptors of closed readers are gone.
        assert open_fds() <= baseline + DEFAULT_MAX_READERS + MAX_IDLE_READERS + 2, \
            (baseline, open_fds())
    assert open_fds() < baseline


def test_reads_past_max_readers_wait_in_order_and_all_succeed(db_path, gate, hang_detector):
    with Saver(db_path, max_readers=2) as saver:
        saver.put("t", {"n": 1})
        g = gate()
        errors: list = []
        results: list = []
        threads = _reader_threads(saver, 16, errors, results)
        g.wait_inside(2)
        g.open()
        for t in threads:
            t.join()
        assert errors == [] and len(results) == 16
        assert g.peak == 2
        stats = saver.stats()
        assert stats["readers_open"] <= 2 and stats["reader_waits"] >= 1, stats


def test_waiters_are_served_in_arrival_order(db_path, hang_detector):
    with Saver(db_path, max_readers=1) as saver:
        saver.put("t", {"n": 1})
        pool = saver._pool
        held = saver._reader()
        order: list[int] = []
        with queued_waiters() as watch:
            def read(k: int) -> None:
                conn = saver._reader()
                order.append(k)
                saver._release_reader(conn)

            threads = []
            for k in range(5):  # each one queued before the next starts
                threads.append(threading.Thread(target=read, args=(k,)))
                threads[-1].start()
                watch.wait()
            saver._release_reader(held)
            for t in threads:
                t.join()
        assert order == [0, 1, 2, 3, 4]
        assert pool.counts()["readers_open"] == 1


def test_max_readers_is_checked(db_path):
    for bad in (0, -1, 1025, 2.0, True, "8", None):
        with pytest.raises(InvalidArgumentError, match="max_readers must be an int"):
            Saver(db_path, max_readers=bad)
    assert not os.path.exists(db_path)


# --- no slot leaks, whatever is raised where ---------------------------------------------------

class _RaisingEvent(threading.Event):
    """An Event whose wait raises ``exc``: before waiting (an interrupt during the wait) or
    after it returned (an interrupt once the waiter was served)."""

    def __init__(self, exc: BaseException, after: bool) -> None:
        super().__init__()
        self.exc = exc
        self.after = after

    def wait(self, timeout: float | None = None) -> bool:
        if self.after:
            super().wait(timeout)
        raise self.exc


def _assert_pool_works(saver: Saver, open_at_most: int) -> None:
    """Reads still go through (a leaked slot would make them wait forever: the hang detector
    reports it), and the pool counts no more connections than are really open."""
    for _ in range(3):
        assert saver.get("t").state == {"n": 1}
    counts = saver._pool.counts()
    assert counts["readers_open"] == counts["readers_idle"] <= open_at_most, counts


@pytest.mark.parametrize("after", [False, True], ids=["while-waiting", "once-served"])
def test_an_exception_in_a_waiting_read_gives_its_place_back(db_path, gate, hang_detector,
                                                            after):
    with Saver(db_path, max_readers=1) as saver:
        saver.put("t", {"n": 1})
        g = gate()
        errors: list = []
        results: list = []
        holder = _reader_threads(saver, 1, errors, results)
        g.wait_inside(1)  # the only read connection is in use
        with queued_waiters(lambda: _RaisingEvent(KeyboardInterrupt(), after)) as watch:
            if after:
                # served with the holder's connection when it comes back, then interrupted
                interrupted: list = []

                def waiting_read() -> None:
                    try:
                        saver.get("t")
                    except KeyboardInterrupt as exc:
                        interrupted.append(exc)

                reader = threading.Thread(target=waiting_read)
                reader.start()
                watch.wait()
                g.open()
                reader.join()
                assert len(interrupted) == 1
            else:
                with pytest.raises(KeyboardInterrupt):
                    saver.get("t")
        g.open()
        holder[0].join()
        assert errors == [] and results == [{"n": 1}]
        _assert_pool_works(saver, 1)


def test_an_exception_opening_a_reader_gives_its_slot_back(db_path, monkeypatch,
                                                           hang_detector):
    with Saver(db_path, max_readers=1) as saver:
        saver.put("t", {"n": 1})
        real_open = opening.open_reader
        calls = []

        def failing_open(path, profile):
            calls.append(path)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return real_open(path, profile)

        monkeypatch.setattr(opening, "open_reader", failing_open)
        with pytest.raises(KeyboardInterrupt):
            saver.get("t")
        assert saver._pool.counts()["readers_open"] == 0
        _assert_pool_works(saver, 1)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), apsw.InterruptError("injected")],
                         ids=["KeyboardInterrupt", "apsw.InterruptError"])
def test_an_exception_inside_a_read_gives_its_connection_back(db_path, gate, hang_detector,
                                                              exc):
    with Saver(db_path, max_readers=1) as saver:
        saver.put("t", {"n": 1})
        g = gate()
        g.open()
        g.raise_in = exc
        with pytest.raises((KeyboardInterrupt, sqlitesaver.SaverError)):
            saver.get("t")
        _assert_pool_works(saver, 1)
        with pytest.raises((KeyboardInterrupt, sqlitesaver.SaverError)):
            g.raise_in = exc
            list(saver.list("t"))
        _assert_pool_works(saver, 1)


def test_a_real_sigint_while_waiting_for_a_reader_leaks_nothing(db_path):
    # The SIGINT is sent only once the main thread is queued in the pool and asleep (the
    # kernel's view, /proc), and sent again every RESEND seconds until its handler has run.
    # CPython runs a signal's Python handler only when the thread next checks for pending
    # signals; one that arrives after the last check before Event.wait() blocks in sem_wait
    # (which only an EINTR would end) waits for the next bytecode, i.e. for ever here. Sending
    # as soon as the read was queued hung up to one run in six: the main thread blocked in
    # threading.py's waiter.acquire(), the C-level handler having seen the signal (its
    # wakeup-fd byte), and a second SIGINT interrupting the wait at once. The thread can also
    # look asleep in that window (waiting for the GIL): hence the resending.
    Saver(db_path).close()
    code = textwrap.dedent("""
        import faulthandler, signal, sys, threading, time
        import apsw
        from sqlitesaver import Saver
        from sqlitesaver.sqlite.reads import _ReaderPool
        faulthandler.dump_traceback_later(60, exit=True)
        RESEND, DEADLINE = 0.2, 30.0
        # What the default handler does (raise KeyboardInterrupt), for the first SIGINT only:
        # one sent again after its handler ran must not raise a second KeyboardInterrupt in
        # the middle of handling the first. (A handler installed here also covers a process
        # started in the background, which inherits SIGINT ignored.)
        landed = []  # the frame each handled SIGINT interrupted
        handled = threading.Event()
        def on_sigint(signum, frame):
            if landed:
                return
            landed.append(frame)
            handled.set()
            raise KeyboardInterrupt
        signal.signal(signal.SIGINT, on_sigint)
        saver = Saver(sys.argv[1], max_readers=1)
        saver.put("t", 1)
        gate, inside = threading.Event(), threading.Event()
        def trace(cursor, sql, bindings):
            if sql.startswith("SELECT"):
                inside.set()
                gate.wait()
            return True
        apsw.connection_hooks.append(lambda conn: conn.set_exec_trace(trace))
        holder = threading.Thread(target=saver.get, args=("t",))
        holder.start()
        inside.wait()
        main = threading.main_thread()
        def main_waits():
            # Queued for the only connection (which nothing gives back before the interrupt)
            # and asleep, not running towards the wait.
            if saver._pool.counts()["reader_waits"] != 1:
                return False
            try:
                with open(f"/proc/self/task/{main.native_id}/stat") as f:
                    return f.read().rpartition(")")[2].split()[0] == "S"
            except OSError:  # no /proc: resending alone gets the signal through
                return True
        sent = []
        def interrupt():
            deadline = time.monotonic() + DEADLINE
            while not handled.is_set() and time.monotonic() < deadline:
                if main_waits():
                    signal.pthread_kill(main.ident, signal.SIGINT)
                    sent.append(time.monotonic())
                    handled.wait(RESEND)
                else:
                    handled.wait(0.001)  # poll again
            if not handled.is_set():
                gate.set()  # give up: the wait ends, and the run says "not interrupted"
        sender = threading.Thread(target=interrupt)
        sender.start()
        try:
            saver.get("t")  # waits for the only connection, in the main thread
            print("not interrupted")
        except KeyboardInterrupt:
            frame = landed[0]
            while frame is not None and frame.f_code is not _ReaderPool.acquire.__code__:
                frame = frame.f_back
            print("interrupted" if frame is not None else "interrupted-elsewhere")
            del frame, landed[:]
        sender.join()
        print(f"SIGINTs sent: {len(sent)}", file=sys.stderr)
        gate.set()
        holder.join()
        for _ in range(3):
            assert saver.get("t").state == 1
        print(saver.stats()["readers_open"])
        saver.close()
        faulthandler.cancel_dump_traceback_later()
    """)
    done = subprocess.run([sys.executable, "-c", code, db_path], capture_output=True,
                          text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["interrupted", "1"], done.stdout + done.stderr


# --- no deadlock with the write path, close, checkpoints -----------------------------------

def test_a_read_inside_the_callers_transaction_never_waits_for_the_pool(db_path, gate,
                                                                       hang_detector):
    with Saver(db_path, max_readers=1) as saver:
        saver.put("t", {"n": 1})
        g = gate()
        errors: list = []
        results: list = []
        holder = _reader_threads(saver, 1, errors, results)
        g.wait_inside(1)  # the pool is exhausted
        with saver.transaction():
            saver.put("t", {"n": 2})
            assert saver.get("t").state == {"n": 2}  # the write connection: no wait
            assert [c.state["n"] for c in saver.list("t")] == [2, 1]
        assert saver._pool.counts()["reader_waits"] == 0
        g.open()
        holder[0].join()
        assert errors == []


def test_close_fails_the_waiting_reads_and_closes_the_rest_as_they_end(db_path, gate,
                                                                      hang_detector):
    saver = Saver(db_path, max_readers=1)
    saver.put("t", {"n": 1})
    g = gate()
    errors: list = []
    results: list = []
    holder = _reader_threads(saver, 1, errors, results)
    g.wait_inside(1)
    with queued_waiters() as watch:
        waiting = _reader_threads(saver, 3, errors, results)
        watch.wait(3)
    saver.close()
    for t in waiting:
        t.join()
    assert [type(e) for e in errors] == [SaverClosedError] * 3
    assert "closed" in str(errors[0])
    g.open()
    holder[0].join()
    assert results == [{"n": 1}]  # the read in progress finished on its own connection
    assert saver._pool.counts()["readers_open"] == 0
    with pytest.raises(SaverClosedError):
        saver.get("t")


def test_readers_waiting_for_the_pool_do_not_stall_forced_checkpoints(db_path, monkeypatch,
                                                                      hang_detector):
    # Eight threads reading through a pool of 2 while a writer pushes the -wal past a (small)
    # limit again and again, each time forcing a checkpoint that pauses new reads: every read
    # and write finishes, reads go on meanwhile, and the WAL stays bounded.
    limit = 256 * 1024
    monkeypatch.setattr(wal, "WAL_LIMIT", limit)
    with Saver(db_path, durability="normal", max_readers=2) as saver:
        saver.put("t", {"n": 0})
        stop = threading.Event()
        errors: list = []
        reads = [0]

        def read() -> None:
            try:
                while not stop.is_set():
                    saver.get("t")
                    reads[0] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        blob = b"x" * (64 * 1024)
        for n in range(200):
            saver.put("w", {"n": n, "blob": blob})
        during = reads[0]
        stop.set()
        for t in threads:
            t.join()
        assert errors == []
        stats = saver.stats()
        assert stats["wal_checkpoints"] >= 5 and stats["readers_open"] <= 2, stats
        assert stats["wal_bytes"] <= 4 * limit, stats
        assert during > 0


# --- running out of file descriptors ---------------------------------------------------------

_LOW_LIMIT_BURST = textwrap.dedent("""
    import json, os, resource, sys, threading
    import apsw
    from sqlitesaver import Saver
    path, threads = sys.argv[1], int(sys.argv[2])
    saver = Saver(path)
    base = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Room for 32 read connections (two descriptors each) and a few more: not for 64.
    limit = base + 2 * 32 + 8
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    inside, cond, gate = [0], threading.Condition(), threading.Event()
    def trace(cursor, sql, bindings):
        if sql.startswith("SELECT"):
            with cond:
                inside[0] += 1
                cond.notify_all()
            gate.wait()
        return True
    apsw.connection_hooks.append(lambda conn: conn.set_exec_trace(trace))
    errors = []
    def read():
        try:
            assert saver.get("t").state == {"n": 1}
        except BaseException as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            with cond:
                inside[0] += 1  # a failed read counts as arrived too
                cond.notify_all()
    ts = [threading.Thread(target=read) for _ in range(threads)]
    for t in ts:
        t.start()
    with cond:
        cond.wait_for(lambda: inside[0] >= 32)
    gate.set()
    for t in ts:
        t.join()
    opened = []
    try:
        for _ in range(8):  # the process can still open files
            opened.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        errors.append(f"after the burst: {exc}")
    for fd in opened:
        os.close(fd)
    print(json.dumps({"errors": errors[:3], "failed": len(errors), "limit": limit,
                      "stats": saver.stats()}))
    saver.close()
""")


def test_a_burst_of_readers_under_a_low_descriptor_limit_waits_instead_of_failing(db_path):
    with Saver(db_path) as saver:
        saver.put("t", {"n": 1})
    done = subprocess.run([sys.executable, "-c", _LOW_LIMIT_BURST, db_path, "64"],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout)
    assert found["failed"] == 0, found
    assert found["stats"]["readers_open"] <= MAX_IDLE_READERS, found


_EXHAUSTED = textwrap.dedent("""
    import json, os, resource, sys
    from sqlitesaver import Saver, SaverError, check
    path = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    out = {}
    def exhaust(spare):
        fds = []
        try:
            while True:
                fds.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        for _ in range(spare):
            os.close(fds.pop())
        return fds
    def attempt(name, call, spare):
        fds = exhaust(spare)
        try:
            call()
            out[name] = None
        except SaverError as exc:
            out[name] = [type(exc).__name__, str(exc), exc.path,
                         getattr(exc, "limit", None)]
        finally:
            for fd in fds:
                os.close(fd)
    saver = Saver(path)
    attempt("read, no descriptor left", lambda: saver.get("t"), 0)
    attempt("read, one descriptor left", lambda: saver.get("t"), 1)
    out["read afterwards"] = saver.get("t").state
    saver.close()
    attempt("open", lambda: Saver(path).close(), 0)
    with Saver(path) as again:
        out["open afterwards"] = again.get("t").state
    for spare in (0, 1):
        fds = exhaust(spare)
        try:
            report = check.check_database(path)
        finally:
            for fd in fds:
                os.close(fd)
        out[f"check, {spare} left"] = [report.result, [s.detail for s in report.steps]]
    print(json.dumps(out))
""")


def test_running_out_of_descriptors_says_too_many_open_files_with_the_limit(db_path):
    with Saver(db_path) as saver:
        saver.put("t", {"n": 1})
    done = subprocess.run([sys.executable, "-c", _EXHAUSTED, db_path], capture_output=True,
                          text=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads(done.stdout)
    for case in ("read, no descriptor left", "read, one descriptor left", "open"):
        assert found[case] is not None, (case, found)
        name, message, path, limit = found[case]
        assert name == "TooManyOpenFilesError", (case, found[case])
        assert "too many open files" in message and "limit of 256 open file descriptors" \
            in message, (case, message)
        assert repr(db_path) in message and path == db_path and limit == 256
        assert "Nothing was written" in message
    # not an I/O error: the Saver did not shut itself down
    assert found["read afterwards"] == {"n": 1} and found["open afterwards"] == {"n": 1}
    for spare in (0, 1):  # the validator says it too
        result, details = found[f"check, {spare} left"]
        assert result == "unusable" and "too many open files" in details[-1], details
