"""Core benchmark: single-thread durable put and get-latest, against baselines from the same run.

    python bench/core.py [--rounds 5] [--seconds 1.0] [--dir DIR] [--json FILE]

Machines here are shared and noisy, so nothing is compared with a stored number: every rate is
printed next to a baseline measured in the same run, contender and baseline alternating round by
round (ABBA order), and the table shows the median of the rounds and their ratio.

Baselines:
- fsync limit: append 4 KiB to a plain file + os.fsync, the floor for one durable commit.
- bare put: APSW ``BEGIN IMMEDIATE; INSERT; COMMIT`` of the same msgpack bytes into
  ``t(id INTEGER PRIMARY KEY, thread_id TEXT, data BLOB)`` with the Saver's own PRAGMA profile
  (applied by ``sqlitesaver.pragmas.apply`` and read back to prove it).
- bare+index put: the same with an index on ``(thread_id, id)``: the least any store needs to
  find a thread's latest checkpoint. Shows what the index costs apart from the library.
- bare+packb put: bare+index that also runs ``msgpack.packb(state)`` on every put, as code
  written by hand with APSW and msgpack would (the bare baselines insert pre-encoded bytes and
  so never walk the state; after each fsync that walk runs on a cold CPU cache).
- bare get: ``SELECT data ... ORDER BY id DESC LIMIT 1`` + ``msgpack.unpackb``.

Decomposition (where Saver's extra time goes), also measured in the same rounds:
- twin: Saver's own SQL statements (imported from sqlitesaver.sqlite.saver, not copied) on a
  database Saver created, from bare APSW: the cost of the schema and statements without Python.
- twin+codec: the same plus ``codec.encode`` and the checksum of every put.
- twin+codec get: Saver.get's query for the latest checkpoint (built from the same imported
  pieces) on Saver's own database, its checksum verified and its state and metadata decoded:
  the work issue #2 asks of every get (checksums, exact types), without the library around it.

Nothing here asserts: targets are printed with "meets" yes/no. Deterministic state, no randomness.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import apsw
import msgpack

from sqlitesaver import Saver, codec, pragmas

THREAD = "bench-thread-0001"
TARGETS = {"put_full": 0.90, "get_rate": 30_000}


def make_state() -> dict:
    """A 4 KiB agent-like state: a message list of small dicts, strings and numbers."""
    prose = ("The agent compared the quarterly figures with the forecast and flagged two "
             "regions for review. ")
    state = {"step": 17, "status": "running", "messages": [], "scores": [0.25, 0.5, 0.75]}
    i = 0
    while len(codec.encode(state)) < 3900:
        state["messages"].append({"role": "user" if i % 2 else "assistant", "id": i,
                                  "content": prose[: 60 + (i * 7) % 40], "tokens": 40 + i})
        i += 1
    return state


def open_bare(path: str, durability: str, index: bool) -> apsw.Connection:
    conn = apsw.Connection(path)
    pragmas.apply(conn, pragmas.Profile(durability=durability), path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, thread_id TEXT, data BLOB)")
    if index:
        conn.execute("CREATE INDEX t_by_thread ON t (thread_id, id)")
    return conn


def bare_put(conn: apsw.Connection, data: bytes) -> Callable[[int], None]:
    def loop(n: int) -> None:
        execute = conn.execute
        for _ in range(n):
            execute("BEGIN IMMEDIATE")
            execute("INSERT INTO t (thread_id, data) VALUES (?, ?)", (THREAD, data))
            execute("COMMIT")
    return loop


def bare_packb_put(conn: apsw.Connection, state: dict) -> Callable[[int], None]:
    """What a user writes by hand with APSW + msgpack: encode the state, insert, commit."""
    def loop(n: int) -> None:
        execute, packb = conn.execute, msgpack.packb
        for _ in range(n):
            data = packb(state)
            execute("BEGIN IMMEDIATE")
            execute("INSERT INTO t (thread_id, data) VALUES (?, ?)", (THREAD, data))
            execute("COMMIT")
    return loop


#: ``codec.encode({})``: the metadata of a put without any (the twins below store it).
EMPTY_METADATA = codec.encode({})


class BareGroupCommit:
    """The least a group commit can do in Python, for a ceiling (bench/run.py), not a store.

    Callers queue pre-encoded rows; a caller that finds no leader leads: it lets the queue
    fill (yielding the GIL until no more rows arrive, at most :attr:`GATHER` seconds), takes
    every queued row, inserts them with one ``executemany`` inside one ``BEGIN IMMEDIATE ...
    COMMIT``, releases their callers, and repeats until the queue is empty. Each caller returns
    only after the COMMIT of its row returned, as with Saver. Left out, and so not paid for:
    encoding, checksums, ids, per-transition savepoints, error isolation, lock retries and a
    fair turn for the leader (it leads while anyone is queued). Saver does all of that on top,
    with batches no larger than these (it commits once nobody is queued), so under the same
    threads it cannot be expected to be faster than this.
    """

    GATHER = 0.0005

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._queue: list[list] = []  # [item, done, error] per waiting caller
        self._leading = False
        self.commits = 0
        self.rows = 0

    def put(self, thread_id: str, data: bytes) -> None:
        self.submit((thread_id, data))

    def submit(self, item: Any) -> None:
        """Queue ``item`` (what :meth:`_run` writes) and return once its batch committed."""
        done = threading.Lock()  # held until the COMMIT of this item's batch returned
        done.acquire()
        entry = [item, done, None]
        with self._lock:
            self._queue.append(entry)
            lead = not self._leading
            self._leading = True
        if lead:
            self._lead()
        done.acquire()
        if entry[2] is not None:
            raise entry[2]

    def _lead(self) -> None:
        conn = self._conn
        while True:
            deadline, queued = time.monotonic() + self.GATHER, -1
            while queued != len(self._queue) and time.monotonic() < deadline:
                queued = len(self._queue)
                time.sleep(0)  # lets the callers released by the last COMMIT queue again
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._leading = False
                    return
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._run(conn, [entry[0] for entry in batch])
                conn.execute("COMMIT")
                self.commits += 1
                self.rows += len(batch)
            except apsw.Error as exc:  # every caller of the batch hears it
                if not conn.get_autocommit():
                    conn.execute("ROLLBACK")
                for entry in batch:
                    entry[2] = exc
            for entry in batch:
                entry[1].release()

    def _run(self, conn: apsw.Connection, items: list) -> None:
        """Inside the batch's transaction: write its items, ``(thread_id, data)`` rows here."""
        conn.executemany("INSERT INTO t (thread_id, data) VALUES (?, ?)", items)


class TwinGroupCommit(BareGroupCommit):
    """:class:`BareGroupCommit` doing what issue #15 requires of 8 threads' ``Saver.put``, for a
    ceiling (bench/run.py's "required work" row at 8 threads), on a file with Saver's schema
    (:func:`open_twin`): each caller runs ``codec.encode`` on its state before it queues; the
    leader writes each row as the Saver's write path does, in a ``SAVEPOINT`` of its own (a
    failing member is rolled back alone and its caller alone gets the error; the others
    commit), with ``created_at``, the next seq, the checksum and the Saver's INSERT. Left
    out: the Saver's write protocol around that (its lock and queue, busy retries,
    interruption safety, the WAL bound, a lone writer's path), argument checks and returned
    references. Strictly less than the Saver's puts, so a ceiling for them."""

    def put(self, thread_id: str, data: bytes) -> None:
        item = [thread_id, data, None]  # the member's own error, if its write failed
        self.submit(item)
        if item[2] is not None:
            raise item[2]

    def _run(self, conn: apsw.Connection, items: list) -> None:
        from sqlitesaver import integrity
        from sqlitesaver.sqlite.saver import _INSERT_CHECKPOINT, _NEXT_SEQ_CHECKPOINTS
        execute, checksum, now = conn.execute, integrity.checkpoint_checksum, time.time_ns
        for item in items:
            thread_id, data = item[0], item[1]
            execute("SAVEPOINT member")
            try:
                created = now() // 1000
                seq = execute(_NEXT_SEQ_CHECKPOINTS).fetchone()[0]
                execute(_INSERT_CHECKPOINT, (
                    seq, thread_id, "", None, created, data, EMPTY_METADATA,
                    checksum(seq, thread_id, "", None, created, data, EMPTY_METADATA)))
                execute("RELEASE member")
            except apsw.Error as exc:
                execute("ROLLBACK TO member")
                execute("RELEASE member")
                item[2] = exc


def saver_put(saver: Saver, state: dict) -> Callable[[int], None]:
    def loop(n: int) -> None:
        put = saver.put
        for _ in range(n):
            put(THREAD, state)
    return loop


def open_twin(path: str, durability: str) -> apsw.Connection:
    """A bare APSW connection to a file with Saver's schema (made by opening a Saver), with
    Saver's PRAGMAs: where :func:`twin_put_op` writes."""
    Saver(path).close()
    conn = apsw.Connection(path)
    pragmas.apply(conn, pragmas.Profile(durability=durability), path)
    return conn


def twin_put_op(conn: apsw.Connection, state: dict, with_codec: bool = True
                ) -> Callable[[], None]:
    """One ``Saver.put(THREAD, state)`` of a lone writer reduced to the work the issue requires
    of it, without the library around it: ``codec.encode`` of the state (exact types), the
    Saver's own statements on its schema (the next seq, the INSERT), the row's checksum and
    its ``created_at``, in ``BEGIN IMMEDIATE ... COMMIT``. Left out: the write protocol (the
    lock, group commit, busy retries, interruption safety, the WAL bound), the argument
    checks and the returned reference. It does strictly less than ``Saver.put``, so it is a
    ceiling for it (bench/run.py's "required work" row). ``with_codec=False``: the state's
    bytes encoded once, no checksum (bench/core.py's "twin")."""
    from sqlitesaver import integrity
    from sqlitesaver.sqlite.saver import _INSERT_CHECKPOINT, _NEXT_SEQ_CHECKPOINTS
    execute, encode, checksum, now = (conn.execute, codec.encode,
                                      integrity.checkpoint_checksum, time.time_ns)
    fixed = encode(state)
    empty = EMPTY_METADATA

    def op() -> None:
        data = encode(state) if with_codec else fixed
        execute("BEGIN IMMEDIATE")
        created = now() // 1000
        seq = execute(_NEXT_SEQ_CHECKPOINTS).fetchone()[0]
        crc = checksum(seq, THREAD, "", None, created, data, empty) if with_codec else 0
        execute(_INSERT_CHECKPOINT, (seq, THREAD, "", None, created, data, empty, crc))
        execute("COMMIT")
    return op


def twin_put(directory: str, durability: str, state: dict,
             with_codec: bool) -> Callable[[int], None]:
    """Saver.put's statements on Saver's schema, without the library around them
    (:func:`twin_put_op`, ``n`` times)."""
    op = twin_put_op(open_twin(os.path.join(directory, f"twin-{durability}-{with_codec}.db"),
                               durability), state, with_codec)

    def loop(n: int) -> None:
        for _ in range(n):
            op()
    return loop


def twin_get(path: str) -> Callable[[int], None]:
    """Saver.get(THREAD)'s query, checksum and decoding, from bare APSW on Saver's file."""
    from sqlitesaver import integrity
    from sqlitesaver.sqlite.saver import _CHECKPOINT_COLUMNS
    conn = apsw.Connection(path)
    pragmas.apply(conn, pragmas.Profile(), path)
    query = (f"SELECT {_CHECKPOINT_COLUMNS}, EXISTS (SELECT 1 FROM writes WHERE "
             "checkpoint_seq = c.seq) FROM checkpoints AS c WHERE thread_id = ? AND "
             "namespace = ? ORDER BY seq DESC LIMIT 1")

    def loop(n: int) -> None:
        execute, decode, checksum = conn.execute, codec.decode, integrity.checkpoint_checksum
        for _ in range(n):
            seq, thread_id, namespace, parent_seq, created, state, meta, stored, key, \
                parent_key, _ = execute(query, (THREAD, "")).fetchone()
            if checksum(seq, thread_id, namespace, parent_seq, created, state, meta, key,
                        parent_key) != stored:
                raise SystemExit("twin get: checksum mismatch")
            decode(state), decode(meta)
    return loop


def fsync_limit(directory: str) -> Callable[[int], None]:
    path = os.path.join(directory, "fsync-probe")
    block = b"\0" * 4096

    def loop(n: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for _ in range(n):
                os.write(fd, block)
                os.fsync(fd)
        finally:
            os.close(fd)
    return loop


def bare_get(conn: apsw.Connection) -> Callable[[int], None]:
    def loop(n: int) -> None:
        execute, unpackb = conn.execute, msgpack.unpackb
        for _ in range(n):
            unpackb(execute("SELECT data FROM t WHERE thread_id = ? ORDER BY id DESC LIMIT 1",
                            (THREAD,)).fetchone()[0])
    return loop


def saver_get(saver: Saver) -> Callable[[int], None]:
    def loop(n: int) -> None:
        get = saver.get
        for _ in range(n):
            get(THREAD)
    return loop


def interleave(contenders: dict[str, Callable[[int], None]], rounds: int,
               seconds: float) -> dict[str, list[float]]:
    """Rates (ops/s) per round; order reversed every other round; ops sized by a warm-up so a
    round of the slowest contender takes about ``seconds``."""
    slowest = 0.0
    for loop in contenders.values():
        start = time.perf_counter()
        loop(20)
        slowest = max(slowest, (time.perf_counter() - start) / 20)
    n = max(20, int(seconds / slowest))
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            contenders[name](n)
            rates[name].append(n / (time.perf_counter() - start))
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per contender per round")
    parser.add_argument("--dir", help="where to put the databases (default: a temp dir)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="sqlitesaver-bench-", dir=args.dir)
    try:
        return run(args, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(args: argparse.Namespace, directory: str) -> int:
    print("$ python " + " ".join(sys.argv))
    print(f"python {platform.python_version()}, apsw {apsw.apsw_version()}, SQLite "
          f"{apsw.sqlite_lib_version()}, msgpack {'.'.join(map(str, msgpack.version))}, "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}, dir {directory}")
    state = make_state()
    data = codec.encode(state)
    print(f"state: {len(data)} bytes encoded, {len(state['messages'])} messages")
    results: dict[str, dict] = {}
    rows = []

    for durability in ("full", "normal"):
        saver = Saver(os.path.join(directory, f"saver-{durability}.db"), durability=durability)
        bare = open_bare(os.path.join(directory, f"bare-{durability}.db"), durability, False)
        bare_ix = open_bare(os.path.join(directory, f"barex-{durability}.db"), durability, True)
        live = saver.settings()["writer"]
        if pragmas.read_back(bare) != live or pragmas.read_back(bare_ix) != live:
            raise SystemExit(f"settings differ: saver {live} bare {pragmas.read_back(bare)}")
        contenders = {"saver": saver_put(saver, state), "bare": bare_put(bare, data),
                      "bare+index": bare_put(bare_ix, data),
                      "bare+packb": bare_packb_put(bare_ix, state),
                      "twin": twin_put(directory, durability, state, False),
                      "twin+codec": twin_put(directory, durability, state, True)}
        if durability == "full":
            contenders["fsync"] = fsync_limit(directory)
        rates = interleave(contenders, args.rounds, args.seconds)
        results[f"put_{durability}"] = rates
        base = median(rates["bare"])
        for name in contenders:
            rows.append((f"put 4 KiB, durability={durability}: {name}", median(rates[name]),
                         median(rates[name]) / base,
                         TARGETS["put_full"] if (durability, name) == ("full", "saver")
                         else None))
        print(f"put {durability}: per-round saver/bare "
              + " ".join(f"{s / b:.3f}" for s, b in zip(rates["saver"], rates["bare"]))
              + "; saver/bare+packb "
              + " ".join(f"{s / b:.3f}" for s, b in zip(rates["saver"], rates["bare+packb"])))
        if durability == "full":
            rates = interleave({"saver": saver_get(saver), "bare": bare_get(bare),
                                "twin+codec": twin_get(saver.path)},
                               args.rounds, args.seconds)
            results["get"] = rates
            for name in ("saver", "bare", "twin+codec"):
                rows.append((f"get latest 4 KiB: {name}", median(rates[name]),
                             median(rates[name]) / median(rates["bare"]),
                             TARGETS["get_rate"] if name == "saver" else None))
            print("get: per-round saver/bare "
                  + " ".join(f"{s / b:.3f}" for s, b in zip(rates["saver"], rates["bare"]))
                  + "; twin+codec/s " + " ".join(f"{r:,.0f}" for r in rates["twin+codec"]))
        saver.close()
        bare.close()
        bare_ix.close()

    print()
    print(f"| {'measurement':42} | {'ops/s':>8} | {'vs bare':>7} | target       | meets |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 9}|--------------|-------|")
    for label, rate, ratio, target in rows:
        if target is None:
            goal, meets = "", ""
        elif target < 10:
            goal, meets = f">= {target:.2f}x bare", "yes" if ratio >= target else "no"
        else:
            goal, meets = f">= {target:,}/s", "yes" if rate >= target else "no"
        print(f"| {label:42} | {rate:8,.0f} | {ratio:7.3f} | {goal:12} | {meets:5} |")
    for durability in ("full", "normal"):
        rates = results[f"put_{durability}"]
        us = {name: 1e6 / median(values) for name, values in rates.items()}
        print(f"put {durability}, µs per put (medians): bare {us['bare']:.0f}; +index "
              f"{us['bare+index'] - us['bare']:+.0f}; Saver's schema+SQL (twin) "
              f"{us['twin'] - us['bare']:+.0f}; +encode+checksum "
              f"{us['twin+codec'] - us['twin']:+.0f}; +rest of Saver.put "
              f"{us['saver'] - us['twin+codec']:+.0f}; Saver {us['saver']:.0f}; "
              f"saver/bare+packb {median(rates['saver']) / median(rates['bare+packb']):.3f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": sys.argv, "rates": results,
                       "table": [dict(zip(("measurement", "ops_per_s", "vs_bare", "target"), r))
                                 for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
