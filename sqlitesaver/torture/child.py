"""A torture writer process; started by the harness, not by people.

``python -m sqlitesaver.torture.child [--db PATH] --fd N --worker W --incarnation I --seed S
--durability D [--threads T] [--writer FILE:CLASS] [--power-loss-after OPS]``

Without ``--db``, the target is the environment's ``SQLITESAVER_TORTURE_DB`` (how the harness
passes a PostgreSQL URL: never on the command line, which every user can read). On a server,
the transition kinds of ``server.NOT_ON_A_SERVER`` are left out of the writer's mix.

It reports on pipe ``N``: ``hello`` once imported (the harness starts its kill clock here, so a
kill can land in start-up and recovery), ``ready`` once the Saver is open (recovery done) and
the worker has read back its threads, and then for every
transition an ``intent`` before the Saver call and an ``ack`` only after it returned. A Saver
error ends the process with exit status 3 after an ``error`` message.

With ``--threads T`` above 1, T threads share the one Saver, so that its group commit gathers
their transitions into shared COMMITs. Each thread drives a lane of its own (its own thread ids
and seeded stream, see :mod:`~sqlitesaver.torture.workload`), one transition at a time, and
its messages carry the lane: per lane, the protocol is exactly the single-thread one. Messages
of different threads interleave whole (each is one atomic pipe write), and each ``ack`` takes
its database stamp under the same lock as its write, so stamps reach the harness in order.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import os
import random
import sys
import threading
import time
import traceback
from typing import Any

from .. import Saver, faults
from ..errors import SaverError
from ..postgres.target import is_url
from .protocol import STACK_SIGNAL, send
from .workload import Generator, Writer, lane_name, load_known, thread_prefix

__all__ = ["main", "load_writer"]

_power_loss: faults.PowerLossVFS | None = None  # installed by --power-loss-after


def load_named(spec: str, module_name: str) -> Any:
    """The object ``CLASS`` of ``FILE.py:CLASS`` (a ``--writer`` argument), loaded from that
    file as module ``module_name``."""
    filename, _, name = spec.rpartition(":")
    module_spec = importlib.util.spec_from_file_location(module_name, filename)
    if not filename or not name or module_spec is None or module_spec.loader is None:
        raise ValueError(f"--writer must be FILE.py:CLASS, not {spec!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def load_writer(spec: str | None) -> Writer:
    """``None`` for the library's writer, or ``FILE.py:CLASS`` for a Writer subclass (the
    harness's self-tests use this to run deliberately broken writers)."""
    if spec is None:
        return Writer()
    writer = load_named(spec, "_torture_writer")()
    if not isinstance(writer, Writer):
        raise ValueError(f"{spec}: {spec.rpartition(':')[2]} is not a "
                         "sqlitesaver.torture.workload.Writer")
    return writer


def child_arguments(prog: str) -> argparse.ArgumentParser:
    """The options every writer process takes from the harness."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--db", help="the database; default: $SQLITESAVER_TORTURE_DB")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--incarnation", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--durability", default="full")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--writer")
    return parser


def target(args: argparse.Namespace) -> str:
    """The database to open: ``--db``, else ``$SQLITESAVER_TORTURE_DB`` (a server's URL)."""
    from .server import TARGET_ENV

    db = args.db or os.environ.get(TARGET_ENV)
    if not db:
        raise SystemExit(f"no database: give --db or set {TARGET_ENV}")
    return db


def _stamp(path: str) -> list[int] | None:
    """The database file's (mtime, size). In WAL mode only a checkpoint writes that file, so a
    change between two acks shows the harness that a WAL checkpoint ran in between. None for a
    server (no file)."""
    if is_url(path):
        return None
    st = os.stat(path)
    return [st.st_mtime_ns, st.st_size]


def main(argv: list[str] | None = None) -> int:
    parser = child_arguments("python -m sqlitesaver.torture.child")
    parser.add_argument("--power-loss-after", type=int)
    args = parser.parse_args(argv)
    args.db = target(args)
    fd = args.fd
    # On STACK_SIGNAL, every thread's stack to stderr, which the harness reads: how it shows
    # where a writer that stalled waits (torture/writers.py, stack_of).
    faulthandler.register(STACK_SIGNAL, all_threads=True)
    from .server import UNSAFE_ENV, allow_unsafe_server
    if os.environ.get(UNSAFE_ENV) == "1":  # the teeth: a server with fsync=off on purpose
        allow_unsafe_server()
    if args.power_loss_after is not None:
        # Every connection opened from here on goes through the power-loss VFS, which ends
        # this process itself (exit status faults.CRASH_EXIT_STATUS) at that write or sync.
        # A module global keeps it alive: APSW unregisters a VFS object that is collected.
        global _power_loss
        _power_loss = faults.install_power_loss(seed=args.seed * 1000003 + args.incarnation,
                                                crash_on="any",
                                                crash_after=args.power_loss_after,
                                                tear_modes=faults.TEAR_MODES)
    send(fd, {"m": "hello", "pid": os.getpid()})
    writer = load_writer(args.writer)
    started = time.perf_counter()
    try:
        saver = writer.open(args.db, args.durability)
    except SaverError as exc:
        send(fd, {"m": "error", "tid": None, "error": f"{type(exc).__name__}: {exc}"[:3000]})
        return 3
    # One thread: the lane is the worker itself (w<N>-*), as before lanes existed.
    mix = writer.mix
    if is_url(args.db):
        from .server import server_mix
        mix = server_mix(mix)
    lanes = [None] if args.threads == 1 else list(range(args.threads))
    generators = []
    for lane in lanes:
        rng = random.Random(f"{args.seed}/{lane_name(args.worker, lane)}/{args.incarnation}")
        generators.append(Generator(rng, args.worker, args.incarnation,
                                    load_known(saver, thread_prefix(args.worker, lane)),
                                    mix, lane=lane, big_file_share=writer.big_file_share))
    report = _Reporter(fd, args.db, saver)
    report.send({"m": "ready", "seconds": time.perf_counter() - started}, stamp=True)
    if len(lanes) == 1:
        return _drive(saver, writer, generators[0], 0, report)
    threads = [threading.Thread(target=_lane_thread, name=f"lane-{lane}", daemon=True,
                                args=(saver, writer, generator, lane, report))
               for lane, generator in zip(lanes, generators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # lanes never end: a kill, or a lane's error (os._exit), ends the process
    return 1


class _Reporter:
    """Sends the child's messages; one lock orders each ``ack``'s database stamp with its
    write, so that with several threads the harness still gets stamps in time order."""

    def __init__(self, fd: int, db: str, saver: Saver) -> None:
        self.fd, self.db, self.saver = fd, db, saver
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any], *, stamp: bool = False) -> None:
        with self.lock:
            if stamp:
                message["db"] = _stamp(self.db)
                # The Saver's group-commit counters (internal, read for the report only):
                # COMMITs and the transitions they carried, so far in this process.
                stats = getattr(self.saver, "_stats", None)
                if stats is not None:
                    message["st"] = [stats["commits"], stats["transitions"]]
            send(self.fd, message)


def _drive(saver: Saver, writer: Writer, generator: Generator, lane: int,
           report: _Reporter) -> int:
    """One lane: announce each transition, run it, acknowledge it only after it returned."""
    while True:
        tx = generator.next()
        # "t": when it began, on the machine's monotonic clock (the harness's too): server-crash
        # mode tells transitions begun after the server's restart from ones it read late.
        report.send({"m": "intent", "lane": lane, "tid": tx.tid, "kind": tx.kind,
                     "ops": tx.ops, "t": time.monotonic()})

        def ack(result: dict[str, Any], tid: str = tx.tid) -> None:
            report.send({"m": "ack", "lane": lane, "tid": tid, "ck": result.get("ck", {}),
                         "log": result.get("log", [])}, stamp=True)

        try:
            result = writer.apply(saver, tx, ack)
        except SaverError as exc:
            report.send({"m": "error", "lane": lane, "tid": tx.tid,
                         "error": f"{type(exc).__name__}: {exc}"[:3000]})
            return 3
        generator.commit(tx, result)


def _lane_thread(saver: Saver, writer: Writer, generator: Generator, lane: int,
                 report: _Reporter) -> None:
    """A lane in its own thread: whatever ends it ends the process, with the same exit status
    as a single-threaded child (3 after a Saver error, 1 after anything else)."""
    try:
        status = _drive(saver, writer, generator, lane, report)
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        status = 1
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
