"""What one indexed lookup costs through APSW, with and without the query planner's stability
guarantee (SQLITE_DBCONFIG_ENABLE_QPSG), against the stdlib ``sqlite3`` on the same file.

    python bench/statements.py [--rounds 5] [--calls 10000]

Why it exists: a Saver's queries bind the thread and namespace; without QPSG, SQLite prepares
such a statement again at every execution because the partial index ``checkpoints_by_key``
makes its plan depend on the bound values (sqlitesaver/pragmas.py). Prints CPU microseconds per
call, the best of the rounds (the least disturbed by other load), for the same statements on
one connection each, all inside one read transaction so that only the statement is timed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time

import apsw

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from sqlitesaver import Saver  # noqa: E402

QUERIES = {
    "latest seq of a thread (bound thread, namespace)":
        ("SELECT seq FROM checkpoints WHERE thread_id = ? AND namespace = ? "
         "ORDER BY seq DESC LIMIT 1", ("t", "")),
    "the same with literals": ("SELECT seq FROM checkpoints WHERE thread_id = 't' AND "
                               "namespace = '' ORDER BY seq DESC LIMIT 1", ()),
    "a row by seq (rowid)": ("SELECT thread_id FROM checkpoints WHERE seq = ?", (5,)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10000)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="sqlitesaver-statements-")
    path = os.path.join(directory, "s.db")
    with Saver(path) as saver:
        for _ in range(200):
            saver.put("t", {"n": 1})
    # The stdlib sqlite3 reads its own copy: one process must never hold both libraries on
    # one file (closing either one's descriptor drops the other's POSIX locks).
    copy = os.path.join(directory, "s-copy.db")
    shutil.copyfile(path, copy)  # the Saver closed: the file holds everything, no -wal
    conns = {"APSW, QPSG off": apsw.Connection(path), "APSW, QPSG on": apsw.Connection(path),
             "stdlib sqlite3": sqlite3.connect(copy, isolation_level=None)}
    conns["APSW, QPSG on"].config(apsw.SQLITE_DBCONFIG_ENABLE_QPSG, 1)
    print(f"$ python {' '.join(sys.argv)}")
    print(f"APSW {apsw.apsw_version()} (SQLite {apsw.sqlite_lib_version()}); stdlib sqlite3 on "
          f"SQLite {sqlite3.sqlite_version}; CPU us per call, best of {args.rounds} rounds of "
          f"{args.calls:,}")
    for conn in conns.values():
        conn.execute("BEGIN")
    for label, (query, params) in QUERIES.items():
        cells = []
        for name, conn in conns.items():
            best = float("inf")
            for _ in range(args.rounds):
                start = time.process_time()
                for _ in range(args.calls):
                    conn.execute(query, params).fetchone()
                best = min(best, (time.process_time() - start) / args.calls * 1e6)
            cells.append(f"{name} {best:.2f}")
        print(f"  {label}: " + "; ".join(cells))
    for conn in conns.values():
        conn.execute("COMMIT")
        conn.close()
    shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
