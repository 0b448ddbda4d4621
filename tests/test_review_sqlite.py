"""Defects found by the adversarial review of the SQLite write path and the LangGraph adapter
(branch review-sqlite): each test failed on the code it was written against."""

from __future__ import annotations

import dis
import os
import signal
import sys
import threading
import time

import pytest
from conftest import settled
from langgraph.checkpoint.base import empty_checkpoint

import sqlitesaver
from sqlitesaver import CheckpointNotFoundError, Saver
from sqlitesaver.langgraph import SqliteSaver

PACKAGE = os.path.dirname(os.path.abspath(sqlitesaver.__file__))
READ_PATH = tuple(os.path.join(PACKAGE, *parts) for parts in
                  (("saver.py",), ("sqlite", "saver.py"), ("sqlite", "reads.py"),
                   ("interrupts.py",)))
# transaction.py with the modules split out of it (its failure path, the WAL's bound).
TRANSACTION_PATH = tuple(os.path.join(PACKAGE, *parts) for parts in
                         (("sqlite", "transaction.py"), ("sqlite", "failure.py"),
                          ("sqlite", "wal.py"), ("interrupts.py",)))


def _cfg(checkpoint_id: str | None = None) -> dict:
    configurable = {"thread_id": "t", "checkpoint_ns": ""}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def test_put_writes_inside_a_transaction_never_parks_for_another_threads_put(
        db_path, hang_detector):
    """``put_writes`` inside ``saver.transaction()`` for a checkpoint not yet stored parked its
    writes while holding the write lock: no other thread could commit that checkpoint meanwhile,
    so every writer stood still for twice ``pending_writes_wait``, and a put from another thread
    took the parked job and, once the caller had been told ``CheckpointNotFoundError: nothing
    was written`` (and its transaction rolled back), committed those writes anyway."""
    hang_detector(60)
    with Saver(db_path) as saver:
        checkpointer = SqliteSaver(saver)
        checkpointer.pending_writes_wait = 5.0  # room for the put to take the job meanwhile
        checkpoint = empty_checkpoint()
        checkpoint["id"] = "1ef4f797-8335-6428-8001-000000000002"
        decided = threading.Event()  # the writes parked, or the call ended
        parked: list[bool] = []
        park = checkpointer._rendezvous.park

        def observed_park(job, **kwargs):
            accepted = park(job, **kwargs)
            parked.append(accepted)
            decided.set()
            return accepted

        checkpointer._rendezvous.park = observed_park  # type: ignore[method-assign]
        outcome: list[BaseException | None] = []

        def write_inside_a_transaction() -> None:
            try:
                with saver.transaction():
                    checkpointer.put_writes(_cfg(checkpoint["id"]), [("c", "v")], "task")
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertions
                outcome.append(exc)
            decided.set()

        writer = threading.Thread(target=write_inside_a_transaction)
        started = time.monotonic()
        writer.start()
        assert decided.wait(30)
        putter = None
        if parked:  # (the bug) a put from elsewhere now takes the parked writes
            putter = threading.Thread(target=checkpointer.put,
                                      args=(_cfg(), checkpoint, {}, {}))
            putter.start()
        writer.join(30)
        assert not writer.is_alive()
        elapsed = time.monotonic() - started
        if putter is None:
            checkpointer.put(_cfg(), checkpoint, {}, {})
        else:
            putter.join(30)
            assert not putter.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], CheckpointNotFoundError), outcome
        stored = saver.get("t", checkpoint["id"])
        assert stored is not None
        # Told that nothing was written: nothing of it may be committed, then or later.
        assert stored.pending_writes == (), stored.pending_writes
        assert not parked, "parked while holding the write lock"
        assert elapsed < checkpointer.pending_writes_wait, elapsed


# --- a signal at any instant of a read ----------------------------------------------------------

# SignalAt reads CPython 3.11's opcodes and exception tables (co_exceptiontable): the tests
# that send a signal at every place run there (CI's first run); 3.10 runs the others.
_CALL = dis.opmap.get("CALL")
_JUMP_BACKWARD = dis.opmap.get("JUMP_BACKWARD")
every_place = pytest.mark.skipif(sys.version_info < (3, 11),
                                 reason="SignalAt reads CPython 3.11's bytecode")
_TABLES: dict = {}


def _handler(code, offset: int):
    """Where an exception raised at ``offset`` goes (its exception-table entry)."""
    table = _TABLES.get(code)
    if table is None:
        table = _TABLES[code] = dis._parse_exception_table(code)
    for entry in table:
        if entry.start <= offset < entry.end:
            return entry.target
    return None


class SignalAt:
    """Sends SIGINT to this (the main) thread at the ``at``-th place of the read path where
    CPython runs signal handlers: a function's first instruction, the instruction after a
    call has returned, a backward jump. Instruction by instruction (``f_trace_opcodes``),
    finer than tests/test_interrupts.py's line by line: a handler runs between a call's
    return and the store of its result, where no line starts. Whatever handler is installed
    then runs (a deferred section's recorder included), as for a real Ctrl-C. Where the
    instruction after a call has another exception handler than the call (the end of a
    ``try`` or ``with`` body), the signal would be raised by the call, inside: not counted.
    ``__del__`` is left out: an exception in a finalizer is Python's to swallow."""

    def __init__(self, at: int, path: tuple[str, ...] = READ_PATH) -> None:
        self.at = at
        self.path = path
        self.count = 0
        self.where = None

    def __call__(self, frame, event, arg):
        code = frame.f_code
        if event != "call" or code.co_filename not in self.path or code.co_name == "__del__":
            return None
        frame.f_trace_lines = False
        frame.f_trace_opcodes = True
        previous = [None]

        def local(frame, event, arg):
            if event != "opcode":
                return local
            before, previous[0] = previous[0], frame.f_lasti
            if before is None or (code.co_code[before] in (_CALL, _JUMP_BACKWARD) and
                                  _handler(code, before) == _handler(code, frame.f_lasti)):
                self.count += 1
                if self.count == self.at:
                    self.where = f"{code.co_name}:{frame.f_lineno}"
                    sys.settrace(None)
                    signal.raise_signal(signal.SIGINT)
            return local
        return local


def assert_no_deferral_active(where: str) -> None:
    """No signal deferral still active in the main thread: it would hold Ctrl-C back and
    deliver it later, anywhere. A recorder left installed but ended is allowed: it forwards
    each signal at once (interrupts.py; a signal between two of its section's handler
    restores ends the restoring there)."""
    from sqlitesaver import interrupts
    handler = signal.getsignal(signal.SIGINT)
    for _ in range(100):
        if getattr(handler, "__code__", None) is not interrupts._RECORDER:
            return  # Python's handler, or one the program installed: not a deferral's
        cells = dict(zip(handler.__code__.co_freevars,
                         (cell.cell_contents for cell in handler.__closure__)))
        assert not cells["self"]._active, f"{where}: a signal deferral is still active"
        handler = cells["originals"][signal.SIGINT]
    raise AssertionError(f"{where}: SIGINT's handler chain does not end")


def _settled(pool) -> dict[str, int]:
    """``pool.counts()`` once every open connection is idle (conftest's ``settled``, 10 s at
    most): a read whose ``__exit__`` a signal skipped gives its connection back from its
    finalizer, in a thread of its own (reads.py, ``_MainThreadRead``), which a look taken at
    once may beat (seen once under load, a signal at the entry of the exit's deferral). A
    connection lost for good is never idle: the wait ends at the timeout."""
    return settled(pool.counts,
                   lambda counts: counts["readers_open"] == counts["readers_idle"])


@every_place
@pytest.mark.parametrize("contended", [False, True], ids=["free", "contended"])
@pytest.mark.parametrize("read", ["get", "list", "threads"])
def test_a_ctrl_c_at_any_instant_of_a_read_gives_its_connection_back(
        db_path, hang_detector, python_sigint_handler, monkeypatch, read, contended):
    """A KeyboardInterrupt between a call's return and the next line of the reader pool's
    hand-overs (the connection popped from the idle list, returned by ``_reader``, given
    back by ``_release_reader``), or at the entry of ``_Read.__exit__``, lost the connection
    and its slot for good: ``max_readers`` such Ctrl-Cs (one with ``max_readers=1``) and every
    later read waited forever. Another, just after a read's ``BEGIN``, pooled a connection
    still inside that BEGIN: the next snapshot read failed ("cannot start a transaction
    within a transaction"). ``contended``: the read first waits for the only connection."""
    hang_detector(240)
    from sqlitesaver import interrupts
    monkeypatch.setattr(interrupts, "STALE_AFTER", 0.2)
    with Saver(db_path, max_readers=1) as saver:
        saver.put("t", {"a": 1})
        reads = {"get": lambda: saver.get("t"), "list": lambda: list(saver.list("t")),
                 "threads": saver.threads}
        pool = saver._pool
        at = 1
        while True:
            holder = None
            if contended:  # another thread holds the only connection until this read waits
                held = pool.acquire(saver._open_reader, saver._closed_while_waiting)
                over = threading.Event()

                def give_back(held=held, over=over):
                    while not pool._waiters and not over.wait(0.001):
                        pass
                    saver._release_reader(held)

                holder = threading.Thread(target=give_back)
                holder.start()
            signal_at = SignalAt(at)
            try:
                sys.settrace(signal_at)
                try:
                    reads[read]()
                finally:
                    sys.settrace(None)
            except KeyboardInterrupt:
                pass
            if holder is not None:
                over.set()
                holder.join(30)
                assert not holder.is_alive()
            counts = _settled(pool)
            assert counts["readers_open"] == counts["readers_idle"], \
                f"a connection was lost by a signal at {signal_at.where} ({at}): {counts}"
            # get's read defers signals from taking its connection to giving it back (one
            # deferral: reads.py, brief): ended on every way out
            assert_no_deferral_active(f"a signal at {signal_at.where} ({at})")
            reads[read]()  # the pool's connection serves the next read
            if signal_at.count < at:
                break
            at += 1
        assert at > 10


# --- bad input at the adapter -------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    "list_before_not_a_dict", "list_before_configurable_not_a_dict", "list_before_id_not_a_str",
    "list_every_thread_before_id_not_a_str", "prune_strategy_unhashable"])
def test_bad_input_at_the_adapter_raises_invalid_argument_and_changes_nothing(db_path, call):
    """``list(before=...)`` with a ``before`` that is not a config raised a raw
    AttributeError, one whose checkpoint_id is not a str (listing every thread) a raw
    TypeError, and ``prune(strategy=[])`` a raw TypeError (unhashable), instead of
    InvalidArgumentError."""
    from conftest import family_digest
    from sqlitesaver import InvalidArgumentError
    with Saver(db_path) as saver:
        checkpointer = SqliteSaver(saver)
        checkpoint = empty_checkpoint()
        checkpoint["id"] = "1ef4f797-8335-6428-8001-000000000002"
        config = checkpointer.put(_cfg(), checkpoint, {}, {})
        calls = {
            "list_before_not_a_dict": lambda: list(checkpointer.list(config, before=[1])),
            "list_before_configurable_not_a_dict":
                lambda: list(checkpointer.list(config, before={"configurable": [1]})),
            "list_before_id_not_a_str": lambda: list(checkpointer.list(
                config, before={"configurable": {"checkpoint_id": b"1ef"}})),
            "list_every_thread_before_id_not_a_str": lambda: list(checkpointer.list(
                None, before={"configurable": {"checkpoint_id": 5}})),
            "prune_strategy_unhashable": lambda: checkpointer.prune(["t"], strategy=[]),
        }
        before = family_digest(db_path)
        with pytest.raises(InvalidArgumentError):
            calls[call]()
        assert family_digest(db_path) == before


def test_a_list_limit_past_sys_maxsize_lists_everything(db_path):
    """``list(config_with_id, limit=2**70)`` raised islice()'s raw ValueError; the core's
    list takes such a limit (it is an int >= 0, as documented)."""
    with Saver(db_path) as saver:
        checkpointer = SqliteSaver(saver)
        checkpoint = empty_checkpoint()
        checkpoint["id"] = "1ef4f797-8335-6428-8001-000000000002"
        config = checkpointer.put(_cfg(), checkpoint, {}, {})
        assert len(list(checkpointer.list(config, limit=2 ** 70))) == 1
        assert len(list(checkpointer.list(_cfg(), limit=2 ** 70))) == 1
        assert len(list(checkpointer.list(None, limit=2 ** 70))) == 1


# --- found in review, fixed later ----------------------------------------------------------------

def test_a_ctrl_c_at_the_entry_of_a_transaction_blocks_exit_acknowledges_nothing_later(
        db_path, hang_detector, python_sigint_handler):
    """CPython checks for signals at every function's entry, and a ``transaction()`` block
    (its body being the caller's code) does not hold them back: a Ctrl-C at the first
    instruction of its ``__exit__`` leaves the transaction open and the write lock held.
    ``_Transaction.__del__`` ends it only once the object dies, but the exception's traceback
    holds ``__exit__``'s frame, whose ``self`` is that object: while the exception is kept
    (the interactive interpreter keeps it as ``sys.last_value``; a log record, a future or a
    test report may too), this thread's next write joins the stale transaction as a nested
    one and returns, acknowledged yet never committed, and every other thread's write waits
    for the lock forever."""
    from sqlitesaver.sqlite import transaction as write_path
    hang_detector(60)
    exit_code = write_path._Transaction.__exit__.__code__

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code is exit_code and \
                type(frame.f_locals["self"]) is write_path._UserTransaction:
            frame.f_trace_opcodes = True

            def first_instruction(frame, event, arg):
                if event == "opcode":
                    sys.settrace(None)
                    signal.raise_signal(signal.SIGINT)
                return first_instruction
            return first_instruction
        return None

    with Saver(db_path) as saver:
        kept = []
        try:
            sys.settrace(tracer)
            with saver.transaction():
                saver.put("t", {"inside": 1})
        except KeyboardInterrupt as exc:
            kept.append(exc)  # as sys.last_value keeps it
        finally:
            sys.settrace(None)
        assert kept
        ref = saver.put("t", {"after": 1})  # returned: acknowledged
        seen = []
        reader = threading.Thread(target=lambda: seen.append(saver.get("t", ref.checkpoint_id)))
        reader.start()
        reader.join(30)
        del kept[:]  # the stale transaction ends (rolled back by __del__): the Saver closes
        assert seen and seen[0] is not None, "acknowledged, not committed"


@every_place
@pytest.mark.parametrize("shape", ["outermost", "nested"])
def test_a_ctrl_c_anywhere_in_a_transaction_blocks_protocol_leaves_nothing_open(
        db_path, hang_detector, python_sigint_handler, shape):
    """The test above at every place of a ``transaction()`` block's protocol (its
    ``__enter__``, the signal deferrals and the ``__exit__``, outermost or nested, instruction
    by instruction) where CPython runs signal handlers, each KeyboardInterrupt kept as an
    interactive session keeps the last: nothing may be left open. After each, a write of this
    thread is committed (another thread reads it) and nobody holds the write lock."""
    hang_detector(240)
    with Saver(db_path) as saver:
        def check(where: str) -> None:
            assert saver._owner is None and saver._batch is None, where
            assert_no_deferral_active(where)
            ref = saver.put("after", {"where": where})
            seen: list = []
            reader = threading.Thread(target=lambda: seen.append(saver.get("after",
                                                                           ref.checkpoint_id)))
            reader.start()
            reader.join(30)
            assert seen and seen[0] is not None, f"{where}: a put acknowledged, not committed"

        places, kept = signal_every_place_of_a_block(saver, TRANSACTION_PATH, shape, check)
        assert places > 20 and kept  # many places visited; the signals came out of the blocks


def signal_every_place_of_a_block(saver: Saver, path: tuple[str, ...], shape: str,
                                  check) -> tuple[int, list[BaseException]]:
    """Run an empty ``transaction()`` block (``shape`` "nested": one inside another) once per
    place of ``path`` where CPython runs signal handlers, with SIGINT sent there, keeping each
    KeyboardInterrupt (as an interactive session keeps the last: its traceback keeps every
    frame it passed through); ``check(where)`` after each. Returns the places and what was
    kept."""
    kept: list[BaseException] = []
    at = 1
    while True:
        signal_at = SignalAt(at, path)
        try:
            sys.settrace(signal_at)
            try:
                with saver.transaction():
                    if shape == "nested":
                        with saver.transaction():
                            pass
            finally:
                sys.settrace(None)
        except KeyboardInterrupt as exc:
            kept.append(exc)
        check(f"a signal at {signal_at.where} ({at})")
        if signal_at.count < at:
            return at, kept
        at += 1

