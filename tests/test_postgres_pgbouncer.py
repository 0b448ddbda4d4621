"""The engine behind a real PgBouncer in transaction mode: it finds the pooler
(connect.ServerSettings.direct: PgBouncer hands its clients a cancel key of its own) and leaves
nothing on the server connections other clients get next, whatever ``prepare_threshold`` says
(PgBouncer 1.21+ takes prepared statements in transaction mode, so a user may keep psycopg's
default). Skipped where PgBouncer is not installed (.ci/run installs Debian's)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from sqlitesaver.postgres import connect, engine as pg_engine

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")

_BINARY = shutil.which("pgbouncer") or next(
    (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)),
    None)
pytestmark = pytest.mark.skipif(_BINARY is None, reason="PgBouncer is not installed here "
                                "(apt-get install pgbouncer)")

PORT = 6432  # a Unix socket in a directory of its own: no TCP port is taken


@pytest.fixture
def pgbouncer_url(pg_url, hang_detector) -> Iterator[str]:
    """``pg_url``'s database behind a PgBouncer in transaction mode with ONE server connection,
    so every client's transactions run on the same server session: what one leaves there,
    the next one sees."""
    hang_detector(60)
    host = pg_url.split("host=", 1)[1]
    database = pg_url.split("@/", 1)[1].split("?", 1)[0]
    run = tempfile.mkdtemp(prefix="sqlitesaver-pgbouncer-")
    as_user: dict = {}
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(run, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    with open(os.path.join(run, "users.txt"), "w") as users:
        users.write('"postgres" ""\n')
    with open(os.path.join(run, "pgbouncer.ini"), "w") as ini:
        ini.write(f"[databases]\n{database} = host={host} dbname={database}\n"
                  f"[pgbouncer]\nlisten_addr =\nlisten_port = {PORT}\n"
                  f"unix_socket_dir = {run}\nauth_type = trust\n"
                  f"auth_file = {run}/users.txt\npool_mode = transaction\n"
                  "default_pool_size = 1\nmax_client_conn = 50\n"
                  f"logfile = {run}/pgbouncer.log\n")
    proc = subprocess.Popen([_BINARY, os.path.join(run, "pgbouncer.ini")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True, **as_user)
    url = f"postgresql://postgres@/{database}?host={quote(run, safe='/')}&port={PORT}"
    try:
        deadline = time.monotonic() + 20
        while True:  # until it answers (a condition waited for, with a deadline)
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = open(os.path.join(run, "pgbouncer.log")).read() \
                        if os.path.exists(os.path.join(run, "pgbouncer.log")) else ""
                    pytest.fail(f"PgBouncer did not start (exit {proc.poll()}):\n{log[-2000:]}")
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(run, ignore_errors=True)


def _seen_by_another_client(url: str) -> tuple:
    with psycopg.connect(url, autocommit=True) as other:
        return other.execute("SELECT current_setting('statement_timeout'), "
                             "current_setting('lock_timeout'), "
                             "current_setting('plan_cache_mode')").fetchone()


def test_behind_pgbouncer_the_engine_leaves_nothing_on_the_session(pgbouncer_url):
    assert _seen_by_another_client(pgbouncer_url) == ("0", "0", "auto")  # the server's own
    e = pg_engine.Engine(pgbouncer_url, busy_timeout=5.0, max_connections=2,
                         options=connect.Options(statement_timeout=7.0, lock_timeout=3.0))
    try:
        assert e.server_settings.direct is False  # the pooler was found
        assert e.settings()["session_settings"] is False
        assert e.settings()["prepare_threshold"] == 5  # psycopg's default, kept
        first, _ = e.put_checkpoint("t", "", None, None, b"\x80", b"\x80")
        e.put_writes("t", "", first, "task", "", [(0, "c", b"\x80")], False)
        assert len(e.get_rows("t", "", None)) == 1
        assert len(e.page("t", "", None, None, 10, 1 << 20)[1]) == 1
        assert _seen_by_another_client(pgbouncer_url) == ("0", "0", "auto")
    finally:
        e.close()
