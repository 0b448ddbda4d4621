"""Shared fixtures.

Never ``open()`` a database file in the test process while a Saver or APSW connection on it is
open: closing that file descriptor would cancel the POSIX locks SQLite holds (one process, one
inode). :func:`file_digest` is for closed databases only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
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
