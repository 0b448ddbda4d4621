"""Why sqlitesaver.backup steps SQLite's backup API inside one read transaction.

    python bench/backup_under_writer.py [--checkpoints 20000] [--limit 20]

A writer process puts checkpoints as fast as it can (``durability="normal"``, so it commits
often) while this process copies the database four ways from a read-only connection:

* ``pages``: ``step(100)`` with no transaction around the steps. The backup API restarts from
  the first page whenever another connection commits between two steps.
* ``pages in one read transaction``: the same steps inside ``BEGIN ... COMMIT`` on the source
  connection (what sqlitesaver.backup does, with 1,024 pages per step).
* ``step(-1)``: every page in one step (one snapshot too; nothing runs between pages).
* ``VACUUM INTO``: a rebuilt copy, also one snapshot (SQLite does not fsync it).

Prints, for each: seconds, steps taken, and whether it finished within ``--limit`` seconds.
Asserts nothing; how often ``pages`` restarts depends on the machine and the writer's pace.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import apsw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sqlitesaver import Saver  # noqa: E402

WRITER = """
import sys
from sqlitesaver import Saver
saver = Saver(sys.argv[1], durability="normal")
print("ready", flush=True)
n = 0
while True:
    n += 1
    saver.put("writer", {"n": n, "pad": "y" * 400})
"""


def source(path: str) -> apsw.Connection:
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    conn.set_busy_timeout(5000)
    return conn


def pages(path: str, out: str, limit: float, in_transaction: bool) -> str:
    src, dest = source(path), apsw.Connection(out)
    started, steps = time.perf_counter(), 0
    try:
        if in_transaction:
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        with dest.backup("main", src, "main") as job:
            while not job.done:
                job.step(100)
                steps += 1
                if time.perf_counter() - started > limit:
                    return f"NOT finished after {steps} steps ({job.remaining} pages left)"
        return f"finished in {steps} steps"
    finally:
        if not src.get_autocommit():
            src.execute("COMMIT")
        dest.close()
        src.close()


def all_at_once(path: str, out: str, limit: float) -> str:
    src, dest = source(path), apsw.Connection(out)
    try:
        with dest.backup("main", src, "main") as job:
            job.step(-1)
            return f"finished: {job.done}"
    finally:
        dest.close()
        src.close()


def vacuum_into(path: str, out: str, limit: float) -> str:
    src = source(path)
    try:
        src.execute("VACUUM INTO ?", (out,))
        return "finished"
    finally:
        src.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=20_000)
    parser.add_argument("--limit", type=float, default=20.0)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="sqlitesaver-bench-backup-")
    try:
        path = os.path.join(directory, "src.db")
        with Saver(path) as saver:
            with saver.transaction():
                for i in range(args.checkpoints):
                    saver.put(f"t{i % 50}", {"i": i, "pad": "x" * 400})
        print(f"source: {args.checkpoints} checkpoints, {os.path.getsize(path):,} bytes")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        writer = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE,
                                  text=True, env=env)
        try:
            assert writer.stdout is not None
            writer.stdout.readline()
            for name, run in (
                    ("pages", lambda o: pages(path, o, args.limit, False)),
                    ("pages in one read transaction", lambda o: pages(path, o, args.limit, True)),
                    ("step(-1)", lambda o: all_at_once(path, o, args.limit)),
                    ("VACUUM INTO", lambda o: vacuum_into(path, o, args.limit))):
                out = os.path.join(directory, name.replace(" ", "_") + ".db")
                started = time.perf_counter()
                outcome = run(out)
                print(f"{name:<30} {time.perf_counter() - started:7.2f} s  {outcome}")
        finally:
            writer.kill()
            writer.wait()
            if writer.stdout:
                writer.stdout.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
