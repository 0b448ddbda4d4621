"""Connecting to PostgreSQL (sqlitesaver/postgres/target.py, connect.py, errors.py) against a
real throwaway server: what names a server, how errors show it (never its password), bounded
waits, the durability settings read back and a server that cannot keep them refused, and each
way a connection goes wrong as a typed error that says what to do."""

from __future__ import annotations

import os
import re
import time

import pytest

from sqlitesaver import pgcluster
from sqlitesaver.errors import (BusyTimeoutError, CannotOpenError, DatabaseIOError,
                                InvalidArgumentError, ReadOnlyDatabaseError, SaverError,
                                UnsafeServerError)
from sqlitesaver.postgres import connect, target
from sqlitesaver.postgres import errors as pg_errors

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")

SECRET = "s3cr3t-Pa55"


def options(**changes: object) -> connect.Options:
    return connect.Options(**{"connect_timeout": 5.0, **changes})


def open_url(url: str, **changes: object):
    params = target.parse(url)
    return connect.open_connection(params, target.describe(params), options(**changes))


# --- which psycopg ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["3.2.13", "3.2.0", "3.1.20", "3.0", "", "dev"])
def test_a_psycopg_older_than_3_3_is_refused_before_anything_opens(monkeypatch, version):
    # 3.2 waits for good for a cancelled statement on a server that does not answer
    # (connect.PSYCOPG_MIN): refused with what is installed and the command that upgrades it,
    # before any connection is tried (the host below does not exist: no CannotOpenError).
    from sqlitesaver import Saver
    from sqlitesaver.errors import UsageError
    monkeypatch.setattr(psycopg, "__version__", version)
    with pytest.raises(UsageError) as caught:
        connect.require_psycopg()
    message = str(caught.value)
    assert "psycopg 3.3 or later" in message and "pip install 'sqlitesaver[postgres]'" in message
    assert (version or "(of unknown version)") in message
    with pytest.raises(UsageError, match="psycopg 3.3 or later"):
        Saver("postgresql://nobody@sqlitesaver-no-such-host.invalid/db")


@pytest.mark.parametrize("version", ["3.3.0", "3.3.9", "3.10.1", "4.0.0.dev1"])
def test_psycopg_from_3_3_on_is_accepted(monkeypatch, version):
    monkeypatch.setattr(psycopg, "__version__", version)
    assert connect.require_psycopg() is psycopg


# --- what names a server ----------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("postgresql://u@h/db", True), ("postgres://h", True), ("host=h dbname=d", False),
    ("/var/db/state.db", False), ("postgresql.db", False), (b"postgresql://h", False),
    (None, False)])
def test_only_postgres_urls_are_taken_for_a_server(value, expected):
    """A key=value DSN is never guessed from a str: it is also a legal file name."""
    assert target.is_url(value) is expected


@pytest.mark.parametrize("given, shown", [
    (f"postgresql://app:{SECRET}@db.example:5433/state", "postgresql://app@db.example:5433/state"),
    (f"postgresql://app@db.example/state?password={SECRET}", "postgresql://app@db.example/state"),
    (f"host=db.example dbname=state user=app password={SECRET}",
     "postgresql://app@db.example/state"),
    ("postgresql://postgres@/postgres?host=/tmp/s%20d",
     "postgresql://postgres@/postgres?host=/tmp/s d"),
    ("postgresql://[::1]:5432/x", "postgresql://[::1]:5432/x"),
])
def test_describe_names_the_server_without_its_password(given, shown):
    assert target.describe(target.parse(given)) == shown


@pytest.mark.parametrize("bad", ["", "   ", f"postgresql://app:{SECRET}@[oops/db",
                                 f"host=h password={SECRET} dbname", 42, None,
                                 # libpq quotes a bad percent-encoding back: here, the password
                                 f"postgresql://app:{SECRET}%zz@h/db",
                                 f"postgresql://app@h/db?password={SECRET}%zz",
                                 f"host=h password='{SECRET}%zz' port=x y"])
def test_a_malformed_target_is_a_typed_error_without_the_password(bad):
    with pytest.raises(InvalidArgumentError) as caught:
        target.parse(bad)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None or SECRET not in str(caught.value.__cause__)


@pytest.mark.parametrize("field, value", [
    ("connect_timeout", 0), ("connect_timeout", None), ("statement_timeout", -1.0),
    ("lock_timeout", float("nan")), ("lock_timeout", "5"), ("prepare_threshold", -1),
    ("prepare_threshold", 1.5), ("prepare_threshold", True),
    # past PostgreSQL's longest (2**31 - 1 ms): every pooled connection's set-up would fail
    ("statement_timeout", 2147483.648), ("lock_timeout", 3e6), ("connect_timeout", 3e6)])
def test_options_out_of_range_are_refused(field, value):
    with pytest.raises(InvalidArgumentError, match=field):
        connect.Options(**{field: value}).check()


def test_the_longest_timeout_postgresql_takes_is_taken(pg_url):
    """connect.MAX_TIMEOUT is accepted, and the server takes it for the pooled sessions."""
    from sqlitesaver.postgres import engine as pg_engine

    connect.Options(statement_timeout=connect.MAX_TIMEOUT).check()
    e = pg_engine.Engine(pg_url, busy_timeout=1.0, options=connect.Options(
        statement_timeout=connect.MAX_TIMEOUT, lock_timeout=connect.MAX_TIMEOUT))
    try:
        e.put_checkpoint("t", "", None, None, b"\x80", b"\x80")
        assert len(e.get_rows("t", "", None)) == 1
    finally:
        e.close()


# --- a healthy server -------------------------------------------------------------------------

def test_settings_are_read_back_and_timeouts_set(pg_url):
    conn = open_url(pg_url, statement_timeout=7.5, lock_timeout=None, prepare_threshold=None)
    try:
        settings = connect.read_settings(conn, "server")
        assert (settings.fsync, settings.full_page_writes) == ("on", "on")
        assert settings.synchronous_commit == "on"
        assert settings.in_recovery is False
        assert settings.server_version.split(".")[0].isdigit()
        connect.check_settings(settings, "full", "server", writing=True)  # accepted
        row = conn.execute("SELECT current_setting('statement_timeout'), "
                           "current_setting('lock_timeout'), current_setting('application_name')"
                           ).fetchone()
        assert row == ("7500ms", "0", "sqlitesaver")
        assert conn.autocommit and conn.prepare_threshold is None
    finally:
        conn.close()


@pytest.mark.parametrize("setting", ["fsync", "full_page_writes"])
@pytest.mark.parametrize("durability", ["full", "normal"])
def test_a_server_that_can_lose_its_cluster_is_refused(setting, durability):
    settings = connect.ServerSettings("15.0", "on", "on", "on", False)
    unsafe = connect.ServerSettings(**{**settings.__dict__, setting: "off"})
    with pytest.raises(UnsafeServerError, match=f"{setting}=off") as caught:
        connect.check_settings(unsafe, durability, "postgresql://h/db", writing=False)
    assert caught.value.path == "postgresql://h/db"


def test_a_real_server_with_fsync_off_is_refused():
    """The settings are read from the server, not assumed: a cluster started with fsync and
    full_page_writes off is seen as such."""
    try:
        cluster = pgcluster.Cluster(settings={"fsync": "off", "full_page_writes": "off"})
    except pgcluster.ClusterError as exc:
        pytest.skip(str(exc))
    with cluster:
        conn = open_url(cluster.url)
        try:
            settings = connect.read_settings(conn, "s")
        finally:
            conn.close()
    assert (settings.fsync, settings.full_page_writes) == ("off", "off")
    with pytest.raises(UnsafeServerError, match="fsync=off"):
        connect.check_settings(settings, "full", "s", writing=True)


@pytest.mark.parametrize("version", ["11.22", "9.6.24 (Debian 9.6.24-1)", "10beta1"])
def test_a_server_older_than_12_is_refused(version):
    old = connect.ServerSettings(version, "on", "on", "on", False)
    with pytest.raises(UnsafeServerError, match=f"version {re.escape(version)}.*12 or newer"):
        connect.check_settings(old, "full", "postgresql://h/db", writing=False)


@pytest.mark.parametrize("version", ["12.0", "15.18 (Debian 15.18-0+deb12u1)", "18devel",
                                     "fork-3.1"])
def test_servers_from_12_on_are_accepted(version):
    connect.check_settings(connect.ServerSettings(version, "on", "on", "on", False), "full",
                           "postgresql://h/db", writing=True)


def test_a_hot_standby_is_refused_for_writing():
    standby = connect.ServerSettings("15.0", "on", "on", "on", True)
    connect.check_settings(standby, "full", "s", writing=False)  # reading is fine
    with pytest.raises(ReadOnlyDatabaseError, match="hot standby.*primary"):
        connect.check_settings(standby, "full", "s", writing=True)


# --- bad input: each a typed error naming the server, without the password --------------------

def _server_of(url: str) -> str:
    return target.describe(target.parse(url))


def test_an_unreachable_server_fails_fast_and_names_it(pg_cluster, tmp_path):
    url = f"postgresql://app:{SECRET}@/postgres?host={tmp_path}"  # no server on that socket
    start = time.monotonic()
    with pytest.raises(CannotOpenError) as caught:
        open_url(url)
    assert time.monotonic() - start < 10
    message = str(caught.value)
    assert SECRET not in message and _server_of(url) in message
    assert "running and reachable" in message and caught.value.path == _server_of(url)


def test_a_missing_database_says_so(pg_cluster):
    url = pg_cluster.url.replace("/postgres?", "/no_such_db?")
    with pytest.raises(CannotOpenError, match="does not exist: create it"):
        open_url(url)


def test_a_wrong_password_says_so_and_is_never_shown(pg_cluster):
    """A role with a password, which pg_hba.conf makes the server ask for (the rest of the
    cluster stays on trust)."""
    hba = os.path.join(pg_cluster.data_dir, "pg_hba.conf")
    with open(hba, encoding="utf-8") as f:
        original = f.read()
    admin = psycopg.connect(pg_cluster.url, autocommit=True)
    try:
        admin.execute("DROP ROLE IF EXISTS guarded")
        admin.execute(f"CREATE ROLE guarded LOGIN PASSWORD '{SECRET}'")
        with open(hba, "w", encoding="utf-8") as f:
            f.write("local all guarded scram-sha-256\n" + original)
        admin.execute("SELECT pg_reload_conf()")
        good = pg_cluster.url.replace("postgres@", f"guarded:{SECRET}@", 1)
        deadline = time.monotonic() + 10
        while True:  # the reload is asynchronous: wait until the server asks for a password
            bad = pg_cluster.url.replace("postgres@", "guarded:wrong-Secret9@", 1)
            try:
                open_url(bad).close()
            except CannotOpenError as exc:
                error = exc
                break
            assert time.monotonic() < deadline, "pg_hba.conf was not reloaded"
            time.sleep(0.05)
        assert "refused the credentials" in str(error) and "wrong-Secret9" not in str(error)
        assert error.sqlstate in (None, "28P01")
        open_url(good).close()  # the right one is let in
    finally:
        with open(hba, "w", encoding="utf-8") as f:
            f.write(original)
        admin.execute("SELECT pg_reload_conf()")
        admin.close()


def test_a_statement_past_its_timeout_is_busy(pg_url):
    conn = open_url(pg_url, statement_timeout=0.2)
    try:
        start = time.monotonic()
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - start < 3
        error = pg_errors.translate(caught.value, "srv", "testing")
        assert isinstance(error, BusyTimeoutError) and error.sqlstate == "57014"
    finally:
        conn.close()


def test_a_lock_held_past_lock_timeout_is_busy(pg_url):
    holder, waiter = open_url(pg_url), open_url(pg_url, lock_timeout=0.2)
    try:
        holder.execute("CREATE TABLE t (x int)")
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(psycopg.Error) as caught:
            waiter.execute("SELECT * FROM t")
        error = pg_errors.translate(caught.value, "srv", "testing")
        assert isinstance(error, BusyTimeoutError) and error.sqlstate == "55P03"
        holder.execute("ROLLBACK")
    finally:
        holder.close()
        waiter.close()


def test_a_read_only_session_is_read_only(pg_url):
    conn = open_url(pg_url)
    try:
        conn.execute("SET default_transaction_read_only = on")
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("CREATE TABLE t (x int)")
        error = pg_errors.translate(caught.value, "srv", "testing")
        assert isinstance(error, ReadOnlyDatabaseError) and "primary" in str(error)
    finally:
        conn.close()


def test_a_server_restarted_mid_session_is_a_lost_connection(pg_cluster, pg_url):
    """Every server process killed (a crash), then restarted: the old connection's next
    statement is "lost, not committed", or "maybe committed" if a COMMIT was in flight; a new
    connection works once recovery is done."""
    conn = open_url(pg_url)
    try:
        pg_cluster.kill_all()
        pg_cluster.start()
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT 1")
        plain = pg_errors.translate(caught.value, "srv", "testing")
        during_commit = pg_errors.translate(caught.value, "srv", "testing", committing=True)
        assert isinstance(plain, DatabaseIOError) and "was not committed" in str(plain)
        assert isinstance(during_commit, DatabaseIOError)
        assert "maybe committed" in str(during_commit)
    finally:
        conn.close()
    open_url(pg_url).close()


def test_translate_passes_our_errors_through_and_wraps_the_unknown():
    ours = CannotOpenError("x")
    assert pg_errors.translate(ours, "s", "d") is ours
    other = pg_errors.translate(RuntimeError("boom"), "s", "doing it")
    assert type(other) is SaverError and "doing it" in str(other)


def test_a_server_that_never_answers_fails_within_the_connect_timeout():
    """A listening socket that accepts and then says nothing (a hung server, a black-holing
    proxy): the connection attempt ends within connect_timeout, as CannotOpenError."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel completes the TCP handshake; nobody ever answers
    try:
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(CannotOpenError) as caught:
            open_url(f"postgresql://app:{SECRET}@127.0.0.1:{port}/db", connect_timeout=2)
        waited = time.monotonic() - start
        assert 1.5 <= waited < 10, waited
        assert "timeout" in str(caught.value).lower() and SECRET not in str(caught.value)
    finally:
        listener.close()


def test_tcp_defaults_bound_a_vanished_peer_unless_the_url_says_otherwise():
    params = target.parse("postgresql://h/db?keepalives_idle=5&application_name=mine")
    got = connect.libpq_params(params, connect.Options(connect_timeout=0.5))
    assert got["keepalives_idle"] == "5" and got["application_name"] == "mine"
    assert got["tcp_user_timeout"] == "60000" and got["keepalives"] == "1"
    assert got["connect_timeout"] == "2"  # libpq's minimum: 1 would mean 2 anyway


# --- text is UTF-8 end to end -----------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
def test_a_database_not_in_utf8_is_refused_and_nothing_written(pg_cluster, encoding):
    """LATIN1 cannot store most thread ids SQLite takes; SQL_ASCII hands text back as bytes
    (before the fix its settings read back as bytes and it was refused as 'fsync=off', and
    what was written could never be read: every checksum failed)."""
    from sqlitesaver import Saver

    name = f"enc_{encoding.lower()}"
    with psycopg.connect(pg_cluster.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' "
                      "LC_CTYPE 'C' TEMPLATE template0")
    url = pg_cluster.url.replace("/postgres?", f"/{name}?", 1)
    try:
        with pytest.raises(UnsafeServerError, match=f"encoded in '{encoding}', not UTF8"):
            Saver(url)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pg_namespace "
                                "WHERE nspname = 'sqlitesaver'").fetchone()[0] == 0
    finally:
        with psycopg.connect(pg_cluster.url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize("client_encoding", ["LATIN1", "SQL_ASCII"])
def test_the_client_encoding_is_utf8_whatever_the_environment_says(pg_url, monkeypatch,
                                                                   client_encoding):
    from sqlitesaver import Saver

    monkeypatch.setenv("PGCLIENTENCODING", client_encoding)
    with Saver(pg_url) as saver:
        saver.put("日本-é", {"v": "Ω"}, namespace="ß")
        assert saver.get("日本-é", namespace="ß").state == {"v": "Ω"}
        assert saver.threads() == ["日本-é"]
