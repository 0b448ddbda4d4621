"""The torture harness shows where a writer that stalled waits: on protocol.STACK_SIGNAL a
writer (sqlitesaver/torture/child.py registers faulthandler) writes every thread's stack to its
stderr, and ``_Writers.stack_of`` reads it, even while the writer is blocked in a C call."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap

from sqlitesaver.torture.protocol import STACK_SIGNAL
from sqlitesaver.torture.writers import _Worker, _Writers

_BLOCKED = textwrap.dedent(f"""
    import faulthandler, os, signal, sys, threading
    faulthandler.register({int(STACK_SIGNAL)}, all_threads=True)
    def waiting_in_a_thread():
        threading.Event().wait()
    threading.Thread(target=waiting_in_a_thread, daemon=True).start()
    def stuck_in_a_c_call():
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        os.read(0, 1)  # blocks in C until the test closes stdin (never, before the dump)
    stuck_in_a_c_call()
""")


def test_a_stalled_writers_threads_are_reported(hang_detector):
    hang_detector(60)
    w = _Worker(index=0)
    w.stderr = tempfile.TemporaryFile()
    w.proc = subprocess.Popen([sys.executable, "-c", _BLOCKED], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=w.stderr)
    try:
        assert w.proc.stdout.readline() == b"ready\n"
        stack = _Writers.stack_of(None, w)  # type: ignore[arg-type]  # self is not used
    finally:
        w.proc.kill()
        w.proc.wait()
        w.proc.stdout.close()
        w.proc.stdin.close()
    assert "stuck_in_a_c_call" in stack, stack
    assert "waiting_in_a_thread" in stack, stack  # every thread, not only the main one


def test_a_writer_that_ended_is_said_to_have_no_stack():
    w = _Worker(index=0)
    w.stderr = tempfile.TemporaryFile()
    w.proc = subprocess.Popen([sys.executable, "-c", "pass"], stderr=w.stderr)
    w.proc.wait()
    assert _Writers.stack_of(None, w).startswith("(no stack")  # type: ignore[arg-type]
