"""CPU time per ``Saver.put`` of the 4 KiB state, from the main thread and from worker threads.

    python bench/put_cpu.py [--threads 1 8] [--seconds 3] [--durability normal]

What the write path costs in CPU, apart from the fsync wait: the main thread pays for the
signal deferral around the write path's critical sections (sqlitesaver/interrupts.py), worker
threads do not; with several threads the puts share commits (group commit, the
``_Transaction`` protocol in sqlitesaver/sqlite/transaction.py), and the process's CPU per put
shows what the batching costs or saves. Run it on two checkouts (``PYTHONPATH=<checkout> python bench/put_cpu.py``) to compare
versions on the same machine; each line is the best of ``--rounds`` (the least disturbed by
other load). Durability "normal" by default, so that the fsync does not dominate the rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import core  # noqa: E402  (bench/core.py: the 4 KiB state)
import sqlitesaver  # noqa: E402
from sqlitesaver import Saver  # noqa: E402

METADATA = {"source": "loop", "step": 17}


def main_thread(saver: Saver, state: dict, calls: int) -> float:
    start = time.thread_time()
    for _ in range(calls):
        saver.put("main", state, metadata=METADATA)
    return (time.thread_time() - start) / calls


def threads(saver: Saver, state: dict, count: int, seconds: float) -> tuple[float, float, float]:
    """(puts/s, process CPU per put, puts per COMMIT) with ``count`` threads for ``seconds``."""
    go = threading.Event()
    done = [0] * count
    stop = [0.0]

    def work(i: int) -> None:
        go.wait()
        while time.monotonic() < stop[0]:
            saver.put(f"t{i}", state, metadata=METADATA)
            done[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in workers:
        t.start()
    before = saver.stats()
    cpu = time.process_time()
    began = time.monotonic()
    stop[0] = began + seconds
    go.set()
    for t in workers:
        t.join()
    elapsed, cpu = time.monotonic() - began, time.process_time() - cpu
    total = sum(done)
    after = saver.stats()
    per_commit = (after["transitions"] - before["transitions"]) / max(
        1, after["commits"] - before["commits"])
    return total / elapsed, cpu / total, per_commit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--durability", default="normal", choices=("full", "normal"))
    args = parser.parse_args()
    print(f"$ python {' '.join(sys.argv)}")
    print(f"sqlitesaver from {os.path.dirname(os.path.abspath(sqlitesaver.__file__))}; "
          f"{os.cpu_count()} cores; durability {args.durability}; best of {args.rounds}")
    state = core.make_state()
    directory = tempfile.mkdtemp(prefix="sqlitesaver-put-cpu-")
    try:
        with Saver(os.path.join(directory, "p.db"), durability=args.durability) as saver:
            main_thread(saver, state, 300)  # warm-up
            best = min(main_thread(saver, state, 2000) for _ in range(args.rounds))
            print(f"  main thread: {best * 1e6:.0f} us CPU per put")
            for count in args.threads:
                runs = [threads(saver, state, count, args.seconds) for _ in range(args.rounds)]
                rate, cpu, per_commit = max(runs)  # the fastest round
                print(f"  {count} worker thread(s): {rate:,.0f} puts/s, {cpu * 1e6:.0f} us "
                      f"process CPU per put, {per_commit:.1f} puts per COMMIT")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
