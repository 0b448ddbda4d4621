"""Instructions per call of the write and read paths, counted by valgrind (deterministic).

    python bench/instructions.py [--worker] [OP ...]   # default: every OP; needs valgrind

Time on a shared 2-core machine moves by 10-20% between runs; instructions counted by
``valgrind --tool=callgrind`` do not (the same total twice, whatever else the machine does), so
a change to the code's CPU cost is measured here, and its effect on rates in bench/run.py. Each
OP runs in a fresh process under callgrind twice, with N = 0 and N = 1000 calls (50 for
``core-list``) after 20 warm-up calls, and the difference is divided by N (start-up, imports and
set-up cancel out). Main thread (so signal deferral is counted: it costs nothing in other threads), or with
``--worker`` a thread of its own (where LangGraph's runtime calls a checkpointer: its executor's
threads), a 4 KiB state (bench/core.py's), ``durability="normal"`` and no WAL checkpoint, so
that only the CPU work of a call is counted, not the disk's. Operations:

- ``core-put``: ``Saver.put`` of the state;
- ``empty-transaction``: an empty write transition (the group-commit protocol: BEGIN
  IMMEDIATE ... COMMIT of nothing);
- ``adapter-put``: ``sqlitesaver.langgraph.SqliteSaver.put`` of a LangGraph checkpoint holding
  the state (bench/_checkpoint.py);
- ``adapter-put-parent``: the same, each put's parent the one before it (a graph's steps);
- ``adapter-put-writes``: its ``put_writes`` of bench/_checkpoint.py's 2 writes, a new task
  each call, against one checkpoint;
- ``adapter-get`` / ``adapter-get-writes``: its ``get_tuple`` of the latest checkpoint,
  without and with 2 pending writes;
- ``core-get`` / ``core-get-writes``: ``Saver.get`` of the latest checkpoint of a thread of
  the state, without and with 2 pending writes (bench/run.py's core get rows);
- ``core-list``: ``list(Saver.list(thread, namespace="", limit=100))`` of a thread of 200
  checkpoints of the state (bench/run.py's list row; one call lists 100).

The adapter rows need LangGraph (``pip install '.[bench]'``). ormsgpack's share is overstated:
under valgrind it runs without the CPU features it detects natively.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OPS = ("core-put", "empty-transaction", "adapter-put", "adapter-put-parent", "adapter-put-writes",
       "adapter-get", "adapter-get-writes", "core-get", "core-get-writes", "core-list")
CALLS = 1000
LIST_CALLS = 50  # core-list: each call lists 100 checkpoints (~20M instructions)


def child(op: str, calls: int, worker: bool) -> None:
    """The measured process: set up, 20 warm-up calls, then ``calls`` calls of ``op`` (in a
    thread of their own if ``worker``)."""
    sys.path[:0] = [HERE, ROOT]
    import core
    from sqlitesaver import Saver
    from sqlitesaver.sqlite import transaction as write_path
    from sqlitesaver.sqlite import wal

    state = core.make_state()
    directory = tempfile.mkdtemp(prefix="sqlitesaver-instructions-")
    try:
        saver = Saver(os.path.join(directory, "s.db"), durability="normal")
        wal.AUTOCHECKPOINT_PAGES = 10**9  # no WAL checkpoint inside the count
        if op == "core-put":  # (before the other core- ops)
            def call() -> object:
                return saver.put("t", state)
        elif op.startswith("core-"):
            from _checkpoint import WRITES
            name = op.removeprefix("core-")  # the thread's id
            with saver.transaction():
                for _ in range(200 if name == "list" else 5):
                    latest = saver.put(name, state)
            if name == "get-writes":
                saver.put_writes(name, latest.checkpoint_id, "task-1", WRITES)
            if name == "list":
                def call() -> object:
                    return list(saver.list(name, namespace="", limit=100))
            else:
                def call() -> object:
                    return saver.get(name)
        elif op == "empty-transaction":
            def call() -> object:
                with write_path._Transaction(saver, "measuring"):
                    return None
        else:
            from _checkpoint import TASK_ID, WRITES, Checkpoints, config, fill

            from sqlitesaver.langgraph import SqliteSaver
            adapter = SqliteSaver(saver)
            metadata = {"source": "loop", "step": 17}
            if op == "adapter-put":
                checkpoints, thread = Checkpoints(state), config("t")

                def call() -> object:
                    return adapter.put(thread, checkpoints.next(), metadata, {})
            elif op == "adapter-put-parent":
                checkpoints, chain = Checkpoints(state), [config("t")]

                def call() -> object:
                    chain[0] = adapter.put(chain[0], checkpoints.next(), metadata, {})
                    return chain[0]
            elif op == "adapter-put-writes":
                target = adapter.put(config("t"), Checkpoints(state).next(), metadata, {})
                tasks = iter(range(10**9))

                def call() -> object:
                    return adapter.put_writes(target, WRITES, f"{TASK_ID}-{next(tasks)}")
            else:
                latest = fill(adapter, "r", state, metadata, 5, op == "adapter-get-writes")

                def call() -> object:
                    return adapter.get_tuple(latest)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                for _ in range(20 + calls):
                    call()
            except BaseException as exc:  # a thread's exception would end only the thread
                failed.append(exc)

        if worker:
            worker_thread = threading.Thread(target=run)
            worker_thread.start()
            worker_thread.join()
        else:
            run()
        saver.close()
        if failed:  # the count would be the set-up's alone
            raise failed[0]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def count(op: str, calls: int, worker: bool) -> int:
    """Instructions callgrind counted for a whole child process."""
    with tempfile.TemporaryDirectory(prefix="sqlitesaver-callgrind-") as out:
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out",
             sys.executable, os.path.abspath(__file__), "--child", op, str(calls),
             "worker" if worker else "main"],
            capture_output=True, text=True, check=False)
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or found is None:
        raise SystemExit(f"{op}: valgrind failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "worker")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ops", nargs="*", metavar="OP", help="any of: " + ", ".join(OPS))
    parser.add_argument("--worker", action="store_true",
                        help="call from a thread of its own instead of the main thread")
    args = parser.parse_args()
    unknown = set(args.ops) - set(OPS)
    if unknown:
        parser.error(f"unknown OP {sorted(unknown)}: choose from {', '.join(OPS)}")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    print("$ python " + " ".join(sys.argv))
    for op in args.ops or OPS:
        calls = LIST_CALLS if op == "core-list" else CALLS
        per_call = (count(op, calls, args.worker) - count(op, 0, args.worker)) / calls
        print(f"{op:>20}: {per_call:,.0f} instructions per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
