"""A torture writer process; started by the harness, not by people.

``python -m sqlitesaver.torture.child --db PATH --fd N --worker W --incarnation I --seed S
--durability D [--writer FILE:CLASS] [--power-loss-after OPS]``

It reports on pipe ``N``: ``hello`` once imported (the harness starts its kill clock here, so a
kill can land in start-up and recovery), ``ready`` once the Saver is open (recovery done) and
the worker has read back its threads, and then for every
transition an ``intent`` before the Saver call and an ``ack`` only after it returned. A Saver
error ends the process with exit status 3 after an ``error`` message.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import time
from typing import Any

from .. import faults
from ..errors import SaverError
from .protocol import send
from .workload import Generator, Writer, load_known, thread_prefix

__all__ = ["main", "load_writer"]

_power_loss: faults.PowerLossVFS | None = None  # installed by --power-loss-after


def load_writer(spec: str | None) -> Writer:
    """``None`` for the library's writer, or ``FILE.py:CLASS`` for a Writer subclass (the
    harness's self-tests use this to run deliberately broken writers)."""
    if spec is None:
        return Writer()
    filename, _, name = spec.rpartition(":")
    module_spec = importlib.util.spec_from_file_location("_torture_writer", filename)
    if not filename or not name or module_spec is None or module_spec.loader is None:
        raise ValueError(f"--writer must be FILE.py:CLASS, not {spec!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    writer = getattr(module, name)()
    if not isinstance(writer, Writer):
        raise ValueError(f"{spec}: {name} is not a sqlitesaver.torture.workload.Writer")
    return writer


def _stamp(path: str) -> list[int]:
    """The database file's (mtime, size). In WAL mode only a checkpoint writes that file, so a
    change between two acks shows the harness that a WAL checkpoint ran in between."""
    st = os.stat(path)
    return [st.st_mtime_ns, st.st_size]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqlitesaver.torture.child")
    parser.add_argument("--db", required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--incarnation", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--durability", default="full")
    parser.add_argument("--writer")
    parser.add_argument("--power-loss-after", type=int)
    args = parser.parse_args(argv)
    fd = args.fd
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
    rng = random.Random(f"{args.seed}/{args.worker}/{args.incarnation}")
    generator = Generator(rng, args.worker, args.incarnation,
                          load_known(saver, thread_prefix(args.worker)), writer.mix)
    send(fd, {"m": "ready", "seconds": time.perf_counter() - started, "db": _stamp(args.db)})
    while True:
        tx = generator.next()
        send(fd, {"m": "intent", "tid": tx.tid, "kind": tx.kind, "ops": tx.ops})

        def ack(result: dict[str, Any], tid: str = tx.tid) -> None:
            send(fd, {"m": "ack", "tid": tid, "ck": result.get("ck", {}),
                      "log": result.get("log", []), "db": _stamp(args.db)})

        try:
            result = writer.apply(saver, tx, ack)
        except SaverError as exc:
            send(fd, {"m": "error", "tid": tx.tid,
                      "error": f"{type(exc).__name__}: {exc}"[:3000]})
            return 3
        generator.commit(tx, result)


if __name__ == "__main__":
    sys.exit(main())
