"""Review 19: the __exit__ half of 55b8cf0's sqlite/transaction.py fix (``_release_signals`` in
a finally after ``failure.abandon``) had no test: with it reverted, test_block_signals.py and
test_review_sqlite.py (the storm aside) all passed. This one fails without it."""

from __future__ import annotations

import os
import signal
import sys


from sqlitesaver import Saver
from sqlitesaver.sqlite import failure
from test_review_sqlite import assert_no_deferral_active


class Injected(BaseException):
    """Stands for an asynchronous exception at the COMMIT (the library must not swallow it)."""


def test_an_interrupted_recovery_on_exit_ends_the_blocks_deferral(db_path, hang_detector,
                                                                   python_sigint_handler):
    """An exception at a ``transaction()`` block's COMMIT (inside its ``__exit__``), then a
    Ctrl-C while ``failure.abandon`` recovers, deep enough below ``__exit__`` (4 calls) that
    the block's recorder, narrowed to the exit's frames, lets it through: abandon raises it.
    The block's deferral must end there, not only when the _Transaction is collected (a
    caller keeping the exception keeps it, through the traceback's frames)."""
    hang_detector(60)
    abandon = failure.abandon.__code__

    def below_abandon(frame) -> int | None:
        n = 0
        while frame is not None:
            if frame.f_code is abandon:
                return n
            frame, n = frame.f_back, n + 1
        return None

    fired: list = []

    def tracer(frame, event, arg):
        if event == "call" and not fired:
            n = below_abandon(frame)
            if n is not None and n >= 3:
                name = os.path.basename(frame.f_code.co_filename)
                fired.append(f"{frame.f_code.co_name} ({name})")
                signal.raise_signal(signal.SIGINT)
        return None

    saver = Saver(db_path)
    try:
        real = saver._commit_step

        def failing():
            saver._commit_step = real
            raise Injected("at the COMMIT")

        saver._commit_step = failing
        kept = None
        try:
            sys.settrace(tracer)
            with saver.transaction():
                pass
        except KeyboardInterrupt as exc:
            kept = exc  # its traceback keeps the block's _Transaction alive
        finally:
            sys.settrace(None)
        assert fired, "no Ctrl-C was sent inside failure.abandon"
        assert kept is not None and isinstance(kept.__context__, Injected), (fired, kept)
        assert_no_deferral_active(f"after a Ctrl-C in abandon at {fired[0]}, the "
                                  "exception kept")
        del kept
    finally:
        saver.close()
