"""What bench/run.py shares with its worker processes: the timed thread loop and the line
protocol over stdin/stdout.

Standard library only, on purpose: the LangGraph peer imports this module, and that process must
never load APSW (it uses the stdlib ``sqlite3``), just as the APSW processes must never load
``sqlite3``. Two SQLite libraries in one process drop each other's POSIX locks.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

#: Exception type names after which a worker thread stops for the rest of the round: the store
#: refuses all further work (a Saver shut down after an I/O error, or closed), so retrying would
#: only inflate the error count with copies of the same failure.
FATAL = frozenset({"SaverClosedError", "DatabaseIOError", "ForkedProcessError"})


@dataclass
class Outcome:
    """What one round of one configuration did: completed operations, failed ones by exception
    type, the first failure's text, and (for in-process runs) the elapsed wall time."""

    ops: int = 0
    errors: Counter = field(default_factory=Counter)
    first_error: str | None = None
    elapsed: float = 0.0

    def add(self, other: "Outcome") -> None:
        self.ops += other.ops
        self.errors.update(other.errors)
        self.first_error = self.first_error or other.first_error

    def to_json(self) -> dict[str, Any]:
        return {"ops": self.ops, "errors": dict(self.errors), "first_error": self.first_error,
                "elapsed": self.elapsed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Outcome":
        return cls(data["ops"], Counter(data["errors"]), data.get("first_error"),
                   data.get("elapsed", 0.0))


def run_threads(ops: Sequence[Callable[[], object]], *, until: float | None = None,
                seconds: float | None = None) -> Outcome:
    """Run ``ops[i]`` repeatedly in thread i until a deadline; count completions and errors.

    Every thread is started and parked first; then the clock starts and all are released at
    once by one Event (no sleeps), and ``elapsed`` runs from that release to the last thread's
    finish. The deadline is ``until`` (a ``time.monotonic()`` value, which on Linux and macOS is
    one clock for all processes, so a parent can stop many processes at the same instant) or
    ``seconds`` after the release. An operation under way at the deadline completes and counts.
    """
    if (until is None) == (seconds is None):
        raise ValueError("give exactly one of until and seconds")
    ready = threading.Barrier(len(ops) + 1)
    go = threading.Event()
    deadline = [0.0]
    results = [Outcome() for _ in ops]

    def worker(index: int) -> None:
        op, result = ops[index], results[index]
        ready.wait()
        go.wait()
        stop = deadline[0]
        monotonic = time.monotonic
        count = 0
        while monotonic() < stop:
            try:
                op()
            except Exception as exc:  # counted by type: the figure the issue asks for
                name = type(exc).__name__
                result.errors[name] += 1
                if result.first_error is None:
                    result.first_error = f"{name}: {exc}"[:400]
                if name in FATAL:
                    break
                continue
            count += 1
        result.ops = count

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(ops))]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.monotonic()
    deadline[0] = until if until is not None else start + seconds  # type: ignore[operator]
    go.set()
    for thread in threads:
        thread.join()
    total = Outcome(elapsed=time.monotonic() - start)
    for result in results:
        total.add(result)
    return total


class Channel:
    """One JSON object per line, both ways. In a worker, :meth:`for_worker` takes over the real
    stdout for the protocol and points ``sys.stdout`` at stderr, so a stray print from a
    library cannot corrupt a message."""

    def __init__(self, reader: IO[str], writer: IO[str]) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    def for_worker(cls) -> "Channel":
        protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        return cls(sys.stdin, protocol_out)

    def send(self, message: dict[str, Any]) -> None:
        self._writer.write(json.dumps(message) + "\n")
        self._writer.flush()

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None when the other side has gone (end of file)."""
        line = self._reader.readline()
        return json.loads(line) if line else None


def serve(channel: Channel, handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]],
          close: Callable[[], None]) -> None:
    """A worker's main loop: answer each command with its handler's reply until ``quit`` or
    end of input; ``close`` runs at the end either way."""
    try:
        while True:
            message = channel.receive()
            if message is None or message["cmd"] == "quit":
                break
            channel.send(handlers[message["cmd"]](message))
    finally:
        close()
