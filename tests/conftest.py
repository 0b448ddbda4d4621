"""Shared fixtures.

Never ``open()`` a database file in the test process while a Saver or APSW connection on it is
open: closing that file descriptor would cancel the POSIX locks SQLite holds (one process, one
inode). :func:`file_digest` is for closed databases only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from sqlitesaver import Saver

# CI explores a fixed set of examples (reproducible: a failure there fails the same way on any
# machine); local runs keep drawing new ones. Either way a failure prints its reproduce blob.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def file_digest(path: str | os.PathLike[str]) -> str | None:
    """SHA-256 of a file's bytes, or None if it does not exist."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def family_digest(path: str | os.PathLike[str]) -> dict[str, str | None]:
    """Digests of the database and its -wal/-journal (the files that hold data; -shm is a
    rebuildable index that SQLite may create on open)."""
    base = os.fspath(path)
    return {suffix: file_digest(base + suffix) for suffix in ("", "-wal", "-journal")}


@pytest.fixture(scope="session", autouse=True)
def private_tmpdir(tmp_path_factory) -> Iterator[str]:
    """One fresh directory is ``$TMPDIR`` for the whole session, for the tests and every child
    process they start, and it must be empty at the end: a test that leaves files there (the
    torture harness keeps a failing run's directory for post-mortem; issue #19 found
    ``sqlitesaver-torture-*`` directories after every run) fails the session, naming them.
    Tests that want to keep evidence put it in pytest's ``tmp_path``, which pytest rotates
    (resolved here before the switch, so it stays in the real temporary directory). A private
    directory rather than a before/after listing of the shared ``/tmp``: other test runs on the
    same machine would come and go in that listing."""
    tmp_path_factory.getbasetemp()
    private = tempfile.mkdtemp(prefix="sqlitesaver-tests-")
    os.chmod(private, 0o755)  # shared_dir below must stay traversable by 'nobody'
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = private
    tempfile.tempdir = private
    try:
        yield private
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        left = sorted(os.listdir(private))
        shutil.rmtree(private, ignore_errors=True)
        if left:
            pytest.fail(f"tests left these in $TMPDIR ({private}, now removed): {left}",
                        pytrace=False)


@pytest.fixture
def db_path(tmp_path) -> str:
    """A path in a fresh temporary directory where no database exists yet."""
    return str(tmp_path / "state.db")


@pytest.fixture
def open_saver() -> Iterator[Callable[..., Saver]]:
    """Factory ``open_saver(path, **options)``; every Saver it made is closed at teardown."""
    made: list[Saver] = []

    def factory(path: str, **options: object) -> Saver:
        saver = Saver(path, **options)
        made.append(saver)
        return saver

    yield factory
    for saver in made:
        saver.close()


@pytest.fixture
def shared_dir():
    """A directory 'nobody' can traverse (pytest's tmp_path parents are 0700)."""
    base = tempfile.mkdtemp(prefix="sqlitesaver-perm-")
    os.chmod(base, 0o755)
    yield base
    for root, dirs, _ in os.walk(base):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    shutil.rmtree(base)


_REAL_STDERR: list[int] = []


def pytest_configure(config) -> None:
    # pytest redirects fd 2 to its capture file while a test runs, and a process that exits
    # from faulthandler's watchdog never gets that file printed: keep the real stderr (still
    # fd 2 at this point) for the hang detector's stack dump.
    _REAL_STDERR.append(os.dup(2))


#: Modules whose every test is about PostgreSQL (the engine, its server, its tooling): skipped
#: as a whole under ``SQLITESAVER_TEST_POSTGRES=skip`` (see ``pg_cluster``), including their
#: tests that need no server (fake sockets, a missing binary).
_POSTGRES_MODULES = re.compile(r"test_(postgres_|pgcluster|langgraph_postgres|bench_postgres|"
                               r"torture_postgres|review_pg_)")


def pytest_collection_modifyitems(config, items) -> None:
    if os.environ.get("SQLITESAVER_TEST_POSTGRES") != "skip":
        return
    skip = pytest.mark.skip(reason="SQLITESAVER_TEST_POSTGRES=skip")
    for item in items:
        if _POSTGRES_MODULES.match(os.path.basename(str(item.fspath))):
            item.add_marker(skip)


@pytest.fixture
def hang_detector() -> Iterator[Callable[[float], None]]:
    """``hang_detector(seconds)``: if the test is still running that long after the call, every
    thread's stack is dumped to the real stderr and the process exits (failing the run) instead
    of hanging CI. Cancelled at teardown."""
    import faulthandler

    def arm(seconds: float) -> None:
        faulthandler.dump_traceback_later(seconds, exit=True, file=_REAL_STDERR[0])

    yield arm
    faulthandler.cancel_dump_traceback_later()


#: Seconds any one test may run before the hang detector ends the run with every thread's stack
#: (the slowest test takes about 32 s here). A test that arms ``hang_detector`` itself replaces
#: this bound with its own for its duration (faulthandler has one timer).
TEST_BOUND = float(os.environ.get("SQLITESAVER_TEST_BOUND", "300"))


@pytest.fixture(autouse=True)
def _every_test_is_bounded() -> Iterator[None]:
    """A hang anywhere (an unbounded wait in a test, a deadlock in the library) fails the run
    within TEST_BOUND seconds with every thread's stack (the test's function among them)
    instead of hanging CI."""
    import faulthandler
    faulthandler.dump_traceback_later(TEST_BOUND, exit=True, file=_REAL_STDERR[0])
    yield
    faulthandler.cancel_dump_traceback_later()


# --- PostgreSQL -------------------------------------------------------------------------------

def _postgres_unavailable(reason: str) -> None:
    """Skip, except in CI, where the PostgreSQL tests must run (.ci/run installs the server and
    the test extra brings psycopg): there a missing piece fails the run."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL cluster for the session (sqlitesaver/pgcluster.py): durable
    defaults, data checksums, a Unix socket in the private $TMPDIR.

    ``SQLITESAVER_TEST_POSTGRES=skip`` skips these tests on purpose: .ci/run's second pass
    (the oldest Python) sets it, since what that pass is for (the stdlib and C extensions of
    Python 3.10 under the SQLite engine) is not what the PostgreSQL tests test, and running
    them twice would not fit CI's 15 minutes."""
    from sqlitesaver import pgcluster

    if os.environ.get("SQLITESAVER_TEST_POSTGRES") == "skip":
        pytest.skip("SQLITESAVER_TEST_POSTGRES=skip")

    try:
        import psycopg
        del psycopg  # only whether it imports
    except ImportError as exc:
        _postgres_unavailable(f"psycopg is not installed ({exc}): pip install '.[test]'")
    try:
        cluster = pgcluster.Cluster()
    except pgcluster.ClusterError as exc:
        _postgres_unavailable(f"no PostgreSQL server binaries: {exc}")
    with cluster:
        yield cluster


@contextlib.contextmanager
def _fresh_database(cluster, key: str) -> Iterator[str]:
    """A new, empty database on ``cluster`` (named from ``key``), dropped afterwards."""
    import psycopg

    name = "t_" + hashlib.sha256(key.encode()).hexdigest()[:20]
    with psycopg.connect(cluster.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    yield cluster.url.replace("/postgres?", f"/{name}?", 1)
    with psycopg.connect(cluster.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_cluster, request) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's cluster, dropped after the test."""
    with _fresh_database(pg_cluster, request.node.nodeid) as url:
        yield url


@pytest.fixture(scope="module")
def pg_module_url(pg_cluster, request) -> Iterator[str]:
    """As pg_url, for a whole module (a history several tests read)."""
    with _fresh_database(pg_cluster, request.module.__name__) as url:
        yield url


@pytest.fixture(scope="session")
def pg_shared_url(pg_cluster) -> Iterator[str]:
    """One database for the whole session, emptied before each test that asks for it
    (``any_empty_target``, ``pg_empty_url``)."""
    with _fresh_database(pg_cluster, "shared, emptied per test") as url:
        yield url


def _our_relations(conn) -> tuple[list[str], list[str]]:
    """The tables and the sequences in the sqlitesaver schema, by name (whatever migrations
    made them: a table a later migration adds is included without a change here)."""
    rows = conn.execute(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = 'sqlitesaver' AND c.relkind IN ('r', 'S') "
        "ORDER BY c.relname").fetchall()
    return ([name for name, kind in rows if kind == "r"],
            [name for name, kind in rows if kind == "S"])


#: Past this many bytes in our tables, emptying them TRUNCATEs (new files, no dead rows left
#: for the next tests to scan) instead of DELETE: a TRUNCATE costs ~130 ms here (its COMMIT
#: syncs the new files), a DELETE of a test's few rows ~5 ms.
_TRUNCATE_PAST = 8 * 1024 * 1024


def empty_our_tables(url: str) -> None:
    """Empty every sqlitesaver table but ``schema_version`` and restart its sequences: the
    database is then what a fresh one holds after its first Saver opened it (the schema
    migrated, nothing stored). Fails, rather than waits, if a connection some earlier test left
    open still holds a lock on our tables."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables, sequences = _our_relations(conn)
        tables = [name for name in tables if name != "schema_version"]
        # Referencing tables first (a DELETE must not meet a foreign key still pointing in).
        refs = conn.execute(
            "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c "
            "JOIN pg_namespace n ON n.oid = c.connamespace "
            "WHERE n.nspname = 'sqlitesaver' AND c.contype = 'f'").fetchall()
        referenced_by = {t: {f.split(".")[-1] for f, p in refs if p.split(".")[-1] == t}
                         for t in tables}
        ordered: list[str] = []
        while len(ordered) < len(tables):
            ready = [t for t in tables if t not in ordered
                     and referenced_by[t] <= set(ordered) | {t}]
            ordered += ready or [t for t in tables if t not in ordered]  # a cycle: as listed
        size = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'sqlitesaver' AND c.relkind = 'r'").fetchone()[0]
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '10s'")
            if tables and size > _TRUNCATE_PAST:
                conn.execute("TRUNCATE " + ", ".join(f"sqlitesaver.{t}" for t in tables))
            else:
                for name in ordered:
                    conn.execute(f"DELETE FROM sqlitesaver.{name}")
            for name in sequences:
                conn.execute(f"SELECT setval('sqlitesaver.{name}', 1, false)")


@pytest.fixture
def pg_empty_url(pg_shared_url) -> str:
    """The session's shared database, emptied of our rows (``empty_our_tables``): for a test on
    PostgreSQL that needs an empty store, not a database of its own (~0.7 s cheaper). A test that
    changes the schema itself (drops, alters, a foreign or newer version) takes ``pg_url``."""
    empty_our_tables(pg_shared_url)
    return pg_shared_url


def store_digest(target: str) -> object:
    """What a refused call must leave unchanged: a file's bytes (with its -wal/-journal), or,
    for a PostgreSQL URL, every row of every sqlitesaver table (a digest per table)."""
    if not is_server(target):
        return family_digest(target)
    import psycopg

    with psycopg.connect(target, autocommit=True) as conn:
        tables, _ = _our_relations(conn)
        digest = {}
        for table in tables:
            rows = conn.execute(f"SELECT * FROM sqlitesaver.{table}").fetchall()
            digest[table] = hashlib.sha256(repr(sorted(map(repr, rows))).encode()).hexdigest()
        return digest


def queued_writes(saver) -> int:
    """Transitions of other threads waiting for a SQLite Saver's open batch: queued for its
    leader (sqlitesaver/sqlite/queue.py) or waiting for the write lock. Read under
    ``saver._waiting_cond``, which both notify."""
    return saver._waiting + len(saver._jobs)


def settled(look, done, timeout: float = 10.0):
    """``look()`` once ``done`` of it is true, looking every 10 ms for up to ``timeout``
    seconds; the last look when the time is up (the caller's assert then shows it). For a
    state a background thread completes (a pool replacing a closed connection, a finalizer
    giving one back), which a look taken at once may beat; a state that never comes still
    fails, at ``timeout``."""
    import threading
    import time

    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: a bounded pause between two looks
    while True:
        found = look()
        if done(found) or time.monotonic() >= deadline:
            return found
        pause.wait(0.01)


def every_connection_back(pool, timeout: float = 10.0) -> dict[str, int]:
    """``pool.get_stats()`` (a psycopg_pool pool: a PostgreSQL Saver's ``_engine._pool``) once
    every connection it counts is idle in it (``pool_available == pool_size``), waiting for
    that up to ``timeout`` seconds (:func:`settled`): a connection the engine closed on its way
    back (given back inside a transaction after an interruption, or broken) is replaced by the
    pool in a background thread, which a look taken at once sees in flight. A connection
    leaked (never given back) is counted and never idle: the wait then ends at ``timeout``
    with the last stats, which the caller's assert shows."""
    return settled(pool.get_stats,
                   lambda stats: stats["pool_available"] == stats["pool_size"], timeout)


def is_server(target: str) -> bool:
    """Whether ``target`` (``any_target``, ``any_empty_target``) names a PostgreSQL server."""
    return target.startswith(("postgresql://", "postgres://"))


def execute_on(target: str, statement: str, params: tuple = ()) -> list[tuple]:
    """Run one statement on the store behind ``target`` from outside any Saver (damage, or
    a look at the rows) and return its rows: on a file through APSW (never while a Saver of
    this process is inside a transaction on it), on a server with the sqlitesaver schema on
    the search path. Write parameters as ``?``: the same statement runs on both."""
    if not is_server(target):
        import apsw

        conn = apsw.Connection(target)
        try:
            return conn.execute(statement, params).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("SET search_path TO sqlitesaver")
        cursor = conn.execute(statement.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description else []


#: Where a payload can hold a marker, per table (``flip_in_marker``).
_PAYLOADS = {"checkpoints": ("state", "metadata"), "writes": ("value",), "log": ("event",)}


def flip_in_marker(target: str, marker: bytes, seed: int) -> None:
    """Flip one byte (chosen by ``seed``) inside the one stored copy of ``marker``: in the
    file's bytes on SQLite, in the row's bytea on a server (an UPDATE behind the Saver's back,
    its checksum left as it was)."""
    import random

    rng = random.Random(seed)
    if not is_server(target):
        with open(target, "rb") as f:
            data = f.read()
        assert data.count(marker) == 1
        offset = data.index(marker) + rng.randrange(len(marker))
        with open(target, "r+b") as f:
            f.seek(offset)
            f.write(bytes([data[offset] ^ rng.randrange(1, 256)]))
        return
    found = []
    for table, columns in _PAYLOADS.items():
        for column in columns:
            for ctid, value in execute_on(target, f"SELECT ctid::text, {column} FROM {table} "
                                          f"WHERE position(? IN {column}) > 0", (marker,)):
                found.append((table, column, ctid, bytes(value)))
    assert len(found) == 1 and found[0][3].count(marker) == 1, found
    table, column, ctid, value = found[0]
    offset = value.index(marker) + rng.randrange(len(marker))
    damaged = value[:offset] + bytes([value[offset] ^ rng.randrange(1, 256)]) + value[offset + 1:]
    execute_on(target, f"UPDATE {table} SET {column} = ? WHERE ctid = ?::tid", (damaged, ctid))


def empty_target(engine: str, request, tmp_path) -> str:
    """What ``any_empty_target`` gives for ``engine`` ("sqlite" or "postgres"), for a test
    that parametrizes the engine itself (e.g. fewer cases on a server, for CI's time)."""
    if engine == "sqlite":
        return str(tmp_path / "state.db")
    return request.getfixturevalue("pg_empty_url")


@pytest.fixture(params=["sqlite", "postgres"])
def any_empty_target(request, tmp_path) -> str:
    """As ``any_target``, but on PostgreSQL the session's shared database emptied of our rows
    (``pg_empty_url``) instead of a database of its own: use it wherever a test needs only an
    empty store (CI time: each parametrized test adds its PostgreSQL run)."""
    return empty_target(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def any_target(request, tmp_path) -> str:
    """What a test parametrized over both engines opens: a new SQLite file's path, or the URL
    of a fresh database on the session's PostgreSQL cluster (started only when asked for)."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture(params=["sqlite", "postgres"])
def db_target(request, tmp_path) -> Iterator[str]:
    """As any_target, but on PostgreSQL the module's database (one ``CREATE DATABASE`` per
    module, not per test) with every sqlitesaver table emptied first: for tests that need an
    empty store, not a fresh schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "state.db")
        return
    import psycopg

    url = request.getfixturevalue("pg_module_url")
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('sqlitesaver.checkpoints')").fetchone()[0]:
            conn.execute("TRUNCATE sqlitesaver.checkpoints, sqlitesaver.writes, "
                         "sqlitesaver.log, sqlitesaver.files, sqlitesaver.file_contents, "
                         "sqlitesaver.file_chunks")
    yield url


def inject_retryable_failures(monkeypatch, count: int) -> dict[str, int]:
    """Make the next ``count`` PostgreSQL write transactions fail inside their try, on their
    connection (at the BEGIN string, or at the locks of a one-round-trip put's pipeline), with
    a serialization failure or a deadlock in turn: the errors the engine retries. Returns the
    counter (``["left"]``), which a test may raise."""
    import psycopg

    from sqlitesaver.postgres import engine as pg_engine

    failures = {"left": count}

    def flaky(real):
        def call(self, conn, *args):
            if failures["left"]:
                failures["left"] -= 1
                raise (psycopg.errors.SerializationFailure if failures["left"] % 2
                       else psycopg.errors.DeadlockDetected)("injected")
            return real(self, conn, *args)
        return call

    for name in ("_begin_locking", "_send"):
        monkeypatch.setattr(pg_engine.Engine, name, flaky(getattr(pg_engine.Engine, name)))
    return failures


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, whatever this process
    inherited: a background job of a non-interactive shell starts with SIGINT ignored, and
    Python then installs no handler. The previous one is put back after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def check_c_extension(module, source: str) -> None:
    """For the optional C extensions (setup.py): ``module`` (None if not built) must be built
    under CI where a C compiler and Python's headers exist (``pip install .`` builds it; else
    the suite would test only the Python fallback), and, where it is, from ``source`` as it is
    now (an in-place build at the checkout's root, ``pip install -e .`` or ``python setup.py
    build_ext --inplace``, shadows pip's and may be stale). Skips when neither applies."""
    import hashlib
    import shutil
    import sysconfig

    # What building it needs: a C compiler and this Python's headers (Debian's python3-dev)
    buildable = bool(shutil.which("cc") or shutil.which("gcc")) and os.path.exists(
        os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    if module is None:
        if os.environ.get("CI") and buildable:
            pytest.fail(f"the C extension for {source} is not in use: not built (pip installs "
                        "it as an optional extension: look for its compiler error in pip's "
                        "output with -v), or a build of another VERSION shadows it")
        pytest.skip(f"the C extension for {source} is not built here (pip install . or "
                    "pip install -e . builds it)")
    if not os.path.exists(source):
        pytest.skip("no source next to the package (installed without it)")
    with open(source, "rb") as f:
        assert module.SOURCE_SHA256 == hashlib.sha256(f.read()).hexdigest(), (
            f"{module.__file__} was built from other source than {source}: rebuild it "
            "(python setup.py build_ext --inplace)")
