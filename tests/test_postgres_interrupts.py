"""Ctrl-C at the exit of a ``transaction()`` block on PostgreSQL (the SQLite engine's are in
tests/test_review_sqlite.py).

CPython handles a signal at every function's entry. A KeyboardInterrupt at the first
instruction of the block's exit (its ``__exit__``, or contextlib's before the engine's
generator resumes) skipped the whole exit; while the exception was kept (an interactive session
keeps the last one as ``sys.last_value``), the block's connection stayed checked out with its
transaction open, and the thread's next write ran inside it: acknowledged, never committed.
Each test keeps every KeyboardInterrupt and requires that nothing is left open: the next write
is seen by another thread and every pooled connection is back."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

import pytest

import sqlitesaver
from sqlitesaver import Saver
from sqlitesaver.postgres import saver as pg_saver
from test_review_sqlite import (assert_no_deferral_active, every_place,
                                 signal_every_place_of_a_block)

BLOCK_PATH = (os.path.join(os.path.dirname(os.path.abspath(sqlitesaver.__file__)), "postgres",
                           "saver.py"),
              os.path.join(os.path.dirname(os.path.abspath(sqlitesaver.__file__)),
                           "interrupts.py"))


def _nothing_left_open(saver: Saver, where: str) -> None:
    assert not saver.in_transaction, f"{where}: this thread is still in the block"
    assert_no_deferral_active(where)
    ref = saver.put("after", {"where": where})
    seen: list = []
    reader = threading.Thread(target=lambda: seen.append(saver.get("after", ref.checkpoint_id)))
    reader.start()
    reader.join(60)
    assert seen and seen[0] is not None, f"{where}: a put acknowledged, not committed"
    assert saver.stats()["connections_open"] == saver.stats()["connections_idle"], \
        f"{where}: a connection is still checked out"


@pytest.mark.parametrize("shape", ["outermost", "nested"])
@pytest.mark.parametrize("entry", ["the block's __exit__", "contextlib's __exit__"])
def test_a_ctrl_c_at_the_first_instruction_of_the_exit_leaves_nothing_open(
        pg_url, hang_detector, python_sigint_handler, shape, entry):
    hang_detector(120)
    code = (pg_saver._Block.__exit__ if entry == "the block's __exit__"
            else contextlib._GeneratorContextManager.__exit__).__code__
    kept: list[BaseException] = []
    with Saver(pg_url) as saver:
        armed = [True]

        def tracer(frame, event, arg):
            if not (armed[0] and event == "call" and frame.f_code is code):
                return None
            frame.f_trace_opcodes = True

            def first_instruction(frame, event, arg):
                if event == "opcode":
                    armed[0] = False
                    sys.settrace(None)
                    signal.raise_signal(signal.SIGINT)
                return first_instruction
            return first_instruction

        try:
            with saver.transaction():
                saver.put("t", {"inside": 1})
                if shape == "nested":
                    with saver.transaction():
                        saver.put("t", {"nested": 1})
                        sys.settrace(tracer)  # the next exit called is this block's
                else:
                    sys.settrace(tracer)
        except KeyboardInterrupt as exc:
            kept.append(exc)  # its traceback keeps the exit's frame, as sys.last_value would
        finally:
            sys.settrace(None)
        assert not armed[0], "the exit was never reached"
        assert kept, "the KeyboardInterrupt was lost"
        _nothing_left_open(saver, entry)


@every_place
@pytest.mark.parametrize("shape", ["outermost", "nested"])
def test_a_ctrl_c_anywhere_in_the_blocks_own_code_leaves_nothing_open(
        pg_url, hang_detector, python_sigint_handler, shape):
    """Instruction by instruction, every place of postgres/saver.py's block and of the signal
    deferrals where CPython runs handlers (the engine's own code is not traced here)."""
    hang_detector(240)
    with Saver(pg_url) as saver:
        places, kept = signal_every_place_of_a_block(
            saver, BLOCK_PATH, shape, lambda where: _nothing_left_open(saver, where))
        assert places > 10 and kept
