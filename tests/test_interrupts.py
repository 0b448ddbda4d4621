"""Asynchronous exceptions inside a write (issue #13, class 1).

Python raises ``KeyboardInterrupt`` (and whatever a signal handler or
``PyThreadState_SetAsyncExc`` raises) between any two bytecodes. Whatever instant it lands at:
(a) no write returns unless its COMMIT returned, (b) no thread hangs, (c) the Saver stays
usable, or shuts itself down with a clear error, and (d) the interrupted caller gets the
exception (or an InterruptedTransitionError saying whether it may be committed).

Two ways in:

* Line by line: a trace function raises an exception at the N-th line the write path executes
  (in ``saver.py``, ``saver_arguments.py``, ``saver_reads.py``, ``storage_steps.py``,
  ``sqlite/saver.py``, ``sqlite/transaction.py``, ``sqlite/failure.py``, ``sqlite/wal.py``,
  ``sqlite/queue.py``, ``sqlite/reads.py``, ``sqlite/read_steps.py``, ``sqlite/maintenance.py``,
  ``interrupts.py`` and ``contention.py``), for every N in turn, in a lone
  writer, in a writer inside ``transaction()``, and in the leader or a member of a two-thread
  batch (a member queued for the leader to run, and one taking the write lock itself). The signal deferral
  does not stop these (they are not signals): this proves the protocol recovers from one
  exception at any line.
  The lone writer's cases run on both engines (on PostgreSQL the lines of ``saver.py`` and
  the core modules split out of it, ``postgres/saver.py`` and ``postgres/engine.py`` with the
  modules split out of it, and no pooled connection may stay out after the call); the batch
  and the WAL are SQLite's.
* SIGINT at random moments for seconds in the main thread while other threads write through
  the same Saver (``sqlitesaver.torture.interrupts``), with a second connection checking after
  every round that each acknowledged write is there.
"""

from __future__ import annotations

import contextlib
import dis
import gc
import linecache
import os
import signal
import sys
import threading

import apsw
import pytest

import sqlitesaver
from conftest import every_connection_back, is_server, queued_writes
from sqlitesaver import InterruptedTransitionError, interrupts, Saver, SaverClosedError, SaverError
from sqlitesaver.torture import interrupts as interrupt_torture

PACKAGE = os.path.dirname(os.path.abspath(sqlitesaver.__file__))
# The injector raises at every line of the write path, _Transaction.__del__'s own lines
# included; Python reports an exception leaving a finalizer as "unraisable", which pytest turns
# into a warning (33 per CI run). Those are this module's own injections, expected: ignored
# here, and only they (their text names the Injected exception), so any other exception
# escaping __del__ still shows.
UNRAISABLE_INJECTIONS = pytest.mark.filterwarnings(
    r"ignore:(?s)Exception ignored in.*_Transaction.__del__.*Injected"
    ":pytest.PytestUnraisableExceptionWarning")
pytestmark = UNRAISABLE_INJECTIONS
# saver.py and the modules split out of it (issue #16), so every line it held is still covered.
WRITE_PATH = tuple(os.path.join(PACKAGE, name) for name in
                   ("saver.py", "saver_arguments.py", "saver_reads.py", "storage_steps.py",
                    os.path.join("sqlite", "saver.py"),
                    os.path.join("sqlite", "transaction.py"),
                    # split out of transaction.py: its failure path and the WAL's bound
                    os.path.join("sqlite", "failure.py"), os.path.join("sqlite", "wal.py"),
                    os.path.join("sqlite", "queue.py"),
                    os.path.join("sqlite", "reads.py"), os.path.join("sqlite", "read_steps.py"),
                    os.path.join("sqlite", "maintenance.py"), "interrupts.py", "contention.py"))
# The same for the PostgreSQL engine: the core, its saver and its engine, with the modules
# split out of engine.py (every line it held is still covered).
PG_WRITE_PATH = tuple(os.path.join(PACKAGE, name) for name in
                      ("saver.py", "saver_arguments.py", "saver_reads.py", "storage_steps.py",
                       os.path.join("postgres", "saver.py"),
                       *(os.path.join("postgres", module) for module in
                         ("engine.py", "sql.py", "pool.py", "pooled.py", "transactions.py",
                          "reads.py"))))


class Injected(BaseException):
    """Stands for KeyboardInterrupt: a BaseException the library must not swallow."""


class Injector:
    """A trace function raising :class:`Injected` at the ``at``-th line event of the write
    path (counting from 1) in the thread it is installed in; ``at=None`` only counts."""

    def __init__(self, at: int | None, files: tuple[str, ...] = WRITE_PATH) -> None:
        self.at = at
        self.files = files
        self.lines = 0
        self.fired = False
        self._seen: dict = {}

    def __call__(self, frame, event, arg):
        if frame.f_code.co_filename not in self.files:
            return None  # not this frame's lines (callees are asked again)
        if frame.f_lineno == frame.f_code.co_firstlineno:
            # A frame starting (a generator's resumption starts at its yield): forget what a
            # dead frame at the same address saw (_seen is keyed by id(frame)). Kept, a later
            # frame took its lines for seen and its `with` line was not counted: a run counted
            # a line fewer than the count run now and then ("line N of N was not reached").
            self._seen.pop(id(frame), None)
        return self._local

    def _local(self, frame, event, arg):
        if event == "line" and not _never_delivered(frame, self._seen):
            self.lines += 1
            if self.lines == self.at:
                self.fired = True
                raise Injected(f"injected at line event {self.at}: "
                               f"{frame.f_code.co_name}:{frame.f_lineno}")
        return self._local

    def run(self, call):
        # The cyclic collector off while traced: a collection runs finalizers wherever an
        # allocation crosses its threshold, which depends on what ran before in this process
        # (xdist's order), and a finalizer of the write path (_Transaction.__del__ of an earlier
        # run's transition, freed from a traceback's cycle) adds its lines to one run and not
        # to another; the counting run and an injected one then disagree ("line 314 of 319 was
        # not reached", once in a CI dry run, session 20). Suspected, not proven: not seen
        # again in local runs. Reference counting, which frees every transition of this run,
        # still runs.
        collecting = gc.isenabled()
        gc.disable()
        sys.settrace(self)
        try:
            return call()
        finally:
            sys.settrace(None)
            if collecting:
                gc.enable()


def _never_delivered(frame, seen: dict) -> bool:
    """Whether this line event is a place where CPython never raises an asynchronous
    exception. CPython delivers those (signal handlers, ``PyThreadState_SetAsyncExc``) only
    where it checks its eval breaker: after a call has returned, at backward jumps and at
    function entry. A trace function, though, raises at the first instruction of a line, and
    two such places have no counterpart in reality and break Python's own guarantees:

    * a line that starts with a ``NOP`` (``try:`` compiles to one; CPython 3.11 leaves it
      outside every exception-table range, so an exception raised there skips the handlers
      of the enclosing ``try``, which nothing real can do);
    * a ``with`` line reported again just before its ``__exit__`` is called (raising there
      skips ``__exit__``, so ``with lock:`` would stay locked; a real interruption comes
      only after ``__exit__`` returned).

    Injecting there would test CPython's tracing, not this library: those events are neither
    counted nor used. Every other line is."""
    if frame.f_code.co_code[frame.f_lasti] == dis.opmap["NOP"]:
        return True
    lines = seen.setdefault(id(frame), set())
    first = frame.f_lineno not in lines
    lines.add(frame.f_lineno)
    if first:
        return False
    source = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return source.startswith("with ")


#: url -> one autocommit connection of the test's own, to look at what is committed on a server
#: (a connection per look cost more than the injections; closed after the module).
_LOOKERS: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _close_lookers():
    yield
    while _LOOKERS:
        _LOOKERS.popitem()[1].close()


def _look(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    if url not in _LOOKERS:
        import psycopg
        _LOOKERS[url] = psycopg.connect(url, autocommit=True)
    return _LOOKERS[url].execute(statement, params).fetchall()


def committed_ids(path: str) -> set[str]:
    """Checkpoint ids visible to another connection: what is committed."""
    if is_server(path):
        return {row[0] for row in _look(path, "SELECT coalesce(key, lpad(to_hex(seq), 16, '0')) "
                                              "FROM sqlitesaver.checkpoints")}
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {row[0] for row in conn.execute(
            "SELECT coalesce(key, printf('%016x', seq)) FROM checkpoints")}
    finally:
        conn.close()


def assert_usable_or_shut(saver: Saver, path: str) -> None:
    """(c): a fresh write commits (with no lock or transaction left behind), or the Saver
    says it shut down and to reopen."""
    outcome: list = []

    def probe() -> None:
        try:
            outcome.append(saver.put("probe", {"ok": True}))
        except BaseException as exc:  # judged below
            outcome.append(exc)

    # Another thread, so a lock left held shows here; a daemon, so a hung one cannot keep the
    # test process from exiting once the test has failed.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "a write after the interruption hung"
    (result,) = outcome
    # Ctrl-C still reaches the program: no signal handler was left swallowing it (one left
    # behind by an exception that skipped a deferred section's end delivers it within
    # interrupts.STALE_AFTER).
    try:
        signal.raise_signal(signal.SIGINT)
        delivered = threading.Event()
        delivered.wait(interrupts.STALE_AFTER + 5)  # returns early once KeyboardInterrupt
    except KeyboardInterrupt:                      # is raised into this wait
        pass
    else:
        pytest.fail("SIGINT no longer raises KeyboardInterrupt after the interruption: "
                    f"handler {signal.getsignal(signal.SIGINT)!r}")
    if isinstance(result, SaverClosedError):
        assert "reopen" in str(result).lower()
        return
    assert not isinstance(result, BaseException), repr(result)
    assert result.checkpoint_id in committed_ids(path)
    if is_server(path):  # every pooled connection is back: none leaked by the interruption
        # (one closed on its way back is replaced by the pool in the background: waited for)
        stats = every_connection_back(saver._engine._pool)  # type: ignore[attr-defined]
        assert stats["pool_available"] == stats["pool_size"] >= 1, stats
        assert not saver.in_transaction
        return
    # Nobody waits for the lock now: a count left behind would make every later leader
    # gather for the full GATHER_WAIT (a lone writer's 50 ms per write). Nor is anything
    # queued, and the queue is closed with no batch open: an open one would make every later
    # writer of another thread queue for a leader that never comes (QUEUE_POLL each).
    assert saver._waiting == 0, saver._waiting
    assert saver._jobs == [] and not saver._jobs_open, (saver._jobs, saver._jobs_open)


def _put(saver: Saver):
    return saver.put("t", {"n": 1}, metadata={"m": 1})


def _in_transaction(saver: Saver):
    with saver.transaction():
        first = saver.put("t", {"n": 1})
        second = saver.put("t", {"n": 2}, parent_id=first.checkpoint_id)
    return second


def _put_writes(saver: Saver):
    saver.put_writes("t", saver._base_id, "task", [("c", 1), ("d", 2)])  # type: ignore[attr-defined]
    return "writes"


def _append_log(saver: Saver):
    return saver.append_log("t", {"e": 1})


SCENARIOS = {"put": _put, "transaction": _in_transaction, "put_writes": _put_writes,
             "append_log": _append_log}


def acknowledged_is_committed(path: str, result: object, base_id: str = "") -> bool:
    """(a) for whatever the scenario returned (``base_id``: the checkpoint put_writes wrote
    to)."""
    if is_server(path):  # one database for every injection: the writes of base_id
        if result == "writes":
            return _look(path, "SELECT count(*) FROM sqlitesaver.writes "
                         "WHERE checkpoint_seq = %s", (int(base_id, 16),))[0][0] == 2
        if isinstance(result, int):
            return bool(_look(path, "SELECT 1 FROM sqlitesaver.log WHERE seq = %s", (result,)))
        return result.checkpoint_id in committed_ids(path)
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        if result == "writes":
            return conn.execute("SELECT count(*) FROM writes").fetchone()[0] == 2
        if isinstance(result, int):  # a log seq
            return conn.execute("SELECT 1 FROM log WHERE seq = ?", (result,)).fetchone() \
                is not None
    finally:
        conn.close()
    return result.checkpoint_id in committed_ids(path)


def _counted_lines(db_path: str, scenario, files: tuple[str, ...] = WRITE_PATH) -> int:
    with Saver(db_path if is_server(db_path) else db_path + ".count",
               durability="normal") as saver:
        saver._base_id = saver.put("t", "base").checkpoint_id  # type: ignore[attr-defined]
        counter = Injector(None, files)
        counter.run(lambda: scenario(saver))
    return counter.lines


@pytest.fixture(autouse=True)
def _sigint_raises(python_sigint_handler):
    """These tests send SIGINT and expect KeyboardInterrupt (conftest's python_sigint_handler,
    for every test here: a CI dry run started as a background job failed without it)."""


@pytest.fixture(autouse=True)
def quick_heal(monkeypatch):
    """A deferred section left active by an injection delivers its signal after
    STALE_AFTER seconds: shorter here, so that the line-by-line runs stay fast."""
    monkeypatch.setattr(interrupts, "STALE_AFTER", 0.2)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_one_exception_at_every_line_of_a_lone_write(any_empty_target, tmp_path, hang_detector,
                                                     name):
    hang_detector(300)
    scenario = SCENARIOS[name]
    server = is_server(any_empty_target)
    files = PG_WRITE_PATH if server else WRITE_PATH
    total = _counted_lines(any_empty_target if server else str(tmp_path / "count.db"),
                           scenario, files)
    assert total > 20, total  # the trace sees the write path
    # On a server one Saver takes every injection (it must stay usable after each: that is
    # (c)); on SQLite a fresh file and Saver for each.
    with contextlib.ExitStack() as stack:
        shared = stack.enter_context(Saver(any_empty_target, durability="normal")) \
            if server else None
        for at in range(1, total + 1):
            path = any_empty_target if server else str(tmp_path / f"{name}-{at}.db")
            with contextlib.nullcontext(shared) if server else \
                    Saver(path, durability="normal") as saver:
                saver._base_id = \
                    saver.put("t", "base").checkpoint_id  # type: ignore[attr-defined]
                before = committed_ids(path)
                injector = Injector(at, files)
                try:
                    result = injector.run(lambda: scenario(saver))
                except Injected:
                    result = None
                except InterruptedTransitionError:
                    result = None
                assert injector.fired, f"line {at} of {total} was not reached"
                _judge(name, at, saver, path, before, result)


def _judge(name: str, at: int, saver: Saver, path: str, before: set, result: object) -> None:
    """After scenario ``name`` met an exception at line event ``at``: (a) a write that
    returned (``result`` not None) is committed; a transaction block's two checkpoints are
    committed both or neither; (c) the Saver is usable, or shut saying why."""
    after = committed_ids(path)
    if result is not None:  # (a): it returned, so its COMMIT returned
        assert acknowledged_is_committed(path, result, saver._base_id), \
            f"{name}: acknowledged, not committed (exception at line event {at})"
    if name == "transaction":
        # all or nothing: both checkpoints, or neither
        assert len(after - before) in (0, 2), (at, after - before)
    assert_usable_or_shut(saver, path)


def _in_worker(call):
    """``call()`` in a thread of its own (not the main one): what it returned, or
    :class:`Raised`. Never the exception object: kept beyond the thread's call, its traceback
    would keep the interrupted transition alive past the thread that must end it (see
    Raised)."""
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # judged by the test, from what Raised keeps
            outcome.append(Raised(exc))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the write hung"
    (result,) = outcome
    return result


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_one_exception_at_every_line_of_a_lone_write_in_a_worker_thread(tmp_path, hang_detector,
                                                                         name):
    """As above, the write made from a thread other than the main one (where LangGraph's
    runtime calls a checkpointer): the write path runs its deferred sections bare there
    (sqlite/transaction.py, _MAIN_THREAD), and must recover from an exception at any of their
    lines just the same."""
    hang_detector(300)
    scenario = SCENARIOS[name]
    with Saver(str(tmp_path / "count.db"), durability="normal") as saver:
        saver._base_id = saver.put("t", "base").checkpoint_id  # type: ignore[attr-defined]
        counter = Injector(None)
        assert not isinstance(_in_worker(lambda: counter.run(lambda: scenario(saver))), Raised)
    total = counter.lines
    assert total > 20, total
    for at in range(1, total + 1):
        path = str(tmp_path / f"{name}-{at}.db")
        with Saver(path, durability="normal") as saver:
            saver._base_id = saver.put("t", "base").checkpoint_id  # type: ignore[attr-defined]
            before = committed_ids(path)
            injector = Injector(at)
            result = _in_worker(lambda: injector.run(lambda: scenario(saver)))
            if isinstance(result, Raised):
                assert issubclass(result.kind, (Injected, InterruptedTransitionError)), result
                result = None
            assert injector.fired, f"line {at} of {total} was not reached"
            _judge(name, at, saver, path, before, result)


class Raised:
    """What a thread's call raised, without the exception object: a caller that catches an
    interruption and carries on drops it (see the README on asynchronous exceptions for why
    that matters at one instruction of the write path)."""

    def __init__(self, exc: BaseException) -> None:
        self.kind = type(exc)
        self.text = str(exc)

    def __repr__(self) -> str:
        return f"Raised({self.kind.__name__}: {self.text})"


def _member_put(saver: Saver, kind: str, thread_id: str = "member"):
    """The member's write: a put, which a batch's leader runs for it (sqlite/queue.py), or
    ("locking") a put inside its own transaction(), which takes the write lock and joins the
    batch in a savepoint of its own thread."""
    if kind == "queued":
        return saver.put(thread_id, {"n": 2})
    with saver.transaction():
        return saver.put(thread_id, {"n": 2})


def _two_thread_batch(saver: Saver, trace_leader: Injector | None,
                      trace_member: Injector | None, kind: str = "queued",
                      prefix: str = "") -> dict:
    """A leader holds a transaction open until a member queues for the connection, so the
    member joins its batch; the chosen thread runs under its injector. They put to
    ``prefix`` + BATCH_THREADS' threads."""
    results: dict = {}
    inside = threading.Event()
    member_ended = threading.Event()

    def leader() -> None:
        def body():
            with saver.transaction():
                ref = saver.put(prefix + "lead", {"n": 1})
                inside.set()
                with saver._waiting_cond:  # the member queued (it will join this batch),
                    saver._waiting_cond.wait_for(  # or its call ended before it could
                        lambda: queued_writes(saver) >= 1 or member_ended.is_set(),
                        timeout=30)
            return ref
        try:
            results["leader"] = trace_leader.run(body) if trace_leader else body()
        except BaseException as exc:
            results["leader"] = Raised(exc)
        finally:
            inside.set()

    def member() -> None:
        inside.wait(30)
        try:
            call = lambda: _member_put(saver, kind, prefix + "member")  # noqa: E731
            results["member"] = trace_member.run(call) if trace_member else call()
        except BaseException as exc:
            results["member"] = Raised(exc)
        finally:
            with saver._waiting_cond:
                member_ended.set()
                saver._waiting_cond.notify_all()

    threads = [threading.Thread(target=leader, daemon=True),
               threading.Thread(target=member, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a thread of the batch hung"
    return results


#: The thread each caller of _two_thread_batch puts to.
BATCH_THREADS = {"leader": "lead", "member": "member"}


def committed_in(path: str, thread_id: str) -> bool:
    """Whether a checkpoint of ``thread_id`` is committed in the SQLite file ``path``."""
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT 1 FROM checkpoints WHERE thread_id = ?",
                            (thread_id,)).fetchone() is not None
    finally:
        conn.close()


def assert_batch_verdicts(results: dict, role: str, at: int, path: str) -> None:
    """A batch's calls after an exception injected at line ``at`` of ``role``: each raised the
    injected exception or a SaverError (InterruptedTransitionError unless it was the one
    interrupted), or returned an id that is committed in ``path``. One told "nothing of it was
    written" has nothing in its thread (``BATCH_THREADS``): checked again after later writes
    (assert_usable_or_shut's), which must not commit it either."""
    after = committed_ids(path)
    for who, result in results.items():
        if isinstance(result, Raised):
            assert issubclass(result.kind, (Injected, SaverError)), (at, who, result)
            if issubclass(result.kind, SaverError):
                assert issubclass(result.kind, InterruptedTransitionError) or \
                    who == role, (at, who, result)
            if "nothing of it was written" in result.text:
                assert not committed_in(path, BATCH_THREADS[who]), \
                    f"{who} told nothing was written, yet committed (exception at {role} " \
                    f"line {at}): {result}"
        else:
            assert result.checkpoint_id in after, \
                f"{who} acknowledged, not committed (exception at {role} line {at})"


def _shared_before(saver: Saver, primed: bool) -> None:
    """With ``primed``, a first batch of two members (untraced, to threads of its own), so that
    the traced batch's leader yields the GIL once before its COMMIT
    (sqlite/transaction.py, _Transaction._finish): its lines are injected into too."""
    if primed:
        _two_thread_batch(saver, None, None, "queued", prefix="primer-")
        assert saver._concurrent


@pytest.mark.parametrize("kind, primed", [("queued", False), ("locking", False),
                                          ("queued", True), ("locking", True)])
@pytest.mark.parametrize("role", ["leader", "member"])
def test_one_exception_at_every_line_of_a_batch(tmp_path, hang_detector, monkeypatch, role,
                                                kind, primed):
    from sqlitesaver.sqlite import transaction as write_path
    hang_detector(300)
    yields: list = []
    real_yield = write_path._yield
    monkeypatch.setattr(write_path, "_yield", lambda: yields.append(1) or real_yield())
    with Saver(str(tmp_path / "count.db"), durability="normal") as saver:
        _shared_before(saver, primed)
        counter = Injector(None)
        before = dict(saver._stats)
        _two_thread_batch(saver, counter if role == "leader" else None,
                          counter if role == "member" else None, kind)
        # The member did join the leader's batch: one COMMIT for both.
        assert saver._stats["commits"] - before["commits"] == 1, saver._stats
        assert saver._stats["transitions"] - before["transitions"] == 2, saver._stats
        # ... and, primed, its leader yielded once before it (a line the injector reaches)
        assert len(yields) == (1 if primed else 0), yields
    total = counter.lines
    assert total > 20, total
    for at in range(1, total + 1):
        path = str(tmp_path / f"{role}-{at}.db")
        with Saver(path, durability="normal") as saver:
            _shared_before(saver, primed)
            injector = Injector(at)
            results = _two_thread_batch(saver, injector if role == "leader" else None,
                                        injector if role == "member" else None, kind)
            assert_batch_verdicts(results, role, at, path)
            assert_usable_or_shut(saver, path)
            assert_batch_verdicts(results, role, at, path)  # the probe committed none of it


def _joined_during_the_yield(path: str, injector: Injector, joining: dict) -> dict:
    """A primed Saver (see _shared_before) whose next leader, a lone put in a worker thread
    under ``injector``, yields before its COMMIT; during that yield (``joining["hook"]``, the
    patched _yield) another thread's put queues, so the leader runs it in its batch."""
    results: dict = {}
    joiners: list = []
    yields: list = []
    with Saver(path, durability="normal") as saver:
        _shared_before(saver, True)
        before = dict(saver._stats)

        def join() -> None:
            try:
                results["member"] = saver.put("member", {"n": 2})
            except BaseException as exc:
                results["member"] = Raised(exc)

        def on_yield() -> None:
            # The first yield lets the other thread's put in; a later one (the batch after an
            # interrupted one, led by that put's own caller) passes. A leader stuck yielding
            # would call this without end: failed at once instead.
            yields.append(threading.get_ident())
            assert len(yields) <= 3, "a leader yields again and again"
            if joiners:
                return
            joiners.append(threading.Thread(target=join, daemon=True))
            joiners[0].start()
            with saver._waiting_cond:  # its put is queued for this batch (or it ended)
                saver._waiting_cond.wait_for(
                    lambda: queued_writes(saver) >= 1 or "member" in results, timeout=30)
        joining["hook"] = on_yield

        def lead() -> None:
            try:
                results["leader"] = injector.run(lambda: saver.put("lead", {"n": 1}))
            except BaseException as exc:
                results["leader"] = Raised(exc)
        leader = threading.Thread(target=lead, daemon=True)
        leader.start()
        leader.join(60)
        assert not leader.is_alive(), "the leader hung"
        for joiner in joiners:
            joiner.join(60)
            assert not joiner.is_alive(), "the write queued during the yield hung"
        if injector.at is None:  # uninterrupted: the queued put joined the leader's batch
            assert len(yields) == 1, yields
            assert saver._stats["commits"] - before["commits"] == 1, saver._stats
            assert saver._stats["transitions"] - before["transitions"] == 2, saver._stats
        else:
            assert_batch_verdicts(results, "leader", injector.at, path)
            assert_usable_or_shut(saver, path)
            assert_batch_verdicts(results, "leader", injector.at, path)
    return results


def test_one_exception_at_every_line_of_a_batch_joined_during_its_leaders_yield(
        tmp_path, hang_detector, monkeypatch):
    """What the yield before a shared batch's COMMIT is for (sqlite/transaction.py,
    _Transaction._finish): a write queued during it joins the batch. An exception at every
    line of that leader (a worker thread, as LangGraph's executor's)."""
    from sqlitesaver.sqlite import transaction as write_path
    hang_detector(600)
    joining: dict = {}
    monkeypatch.setattr(write_path, "_yield", lambda: joining["hook"]())
    counter = Injector(None)
    results = _joined_during_the_yield(str(tmp_path / "count.db"), counter, joining)
    assert "member" in results and not isinstance(results["member"], Raised), results
    total = counter.lines
    assert total > 20, total
    for at in range(1, total + 1):
        _joined_during_the_yield(str(tmp_path / f"joined-{at}.db"), Injector(at), joining)


def test_sigint_storm_loses_no_acknowledged_write(tmp_path, hang_detector):
    """Seconds of SIGINT at random moments in the main thread while it and three other
    threads write; every round, another connection must see every acknowledged write."""
    hang_detector(240)
    # A SIGINT can land in a finalizer or weakref callback the main thread runs (threading's
    # WeakSet of threads, say): Python reports that KeyboardInterrupt as "unraisable", and
    # pytest's hook, formatting it, can itself be hit by the next SIGINT, which pytest then
    # reports as a failure of the test (seen once in CI, in weakref.py). Recorded here instead,
    # without formatting, for the storm's duration; each must be a KeyboardInterrupt.
    unraisable: list = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda args: unraisable.append(args.exc_type)
    try:
        report = interrupt_torture.run(str(tmp_path / "storm.db"), rounds=40, threads=3,
                                       seed=20261203)
    finally:
        sys.unraisablehook = hook
    assert set(unraisable) <= {KeyboardInterrupt}, unraisable
    assert report["interrupts_delivered"] > 50, report
    assert report["interrupted_calls"] > 0, report
    assert report["lost"] == [], report
    assert report["acknowledged"] > 100, report
    # What made it fail first (a dict this long is cut short by pytest's assertion message).
    assert report["ok"], (report["errors"], report["partial"], report["validator"], report)


def test_a_wrong_waiting_count_costs_batching_never_liveness(db_path, hang_detector):
    """The count of transitions queued for the connection is a hint (an interruption may leave
    it off): with a count that no thread will ever bring down, every write still commits, its
    leader giving up gathering after GATHER_WAIT."""
    hang_detector(60)
    with Saver(db_path, durability="normal") as saver:
        with saver._waiting_cond:
            saver._waiting = 5  # five writers that will never come
        refs = [saver.put("t", {"n": n}) for n in range(3)]
        assert {ref.checkpoint_id for ref in refs} <= committed_ids(db_path)
