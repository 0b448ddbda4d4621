"""The PostgreSQL engine's one-thread statements (sqlitesaver/postgres/sql.py, above
_GET_LATEST) find a thread or namespace with a range that admits one value, ``a >= x AND
a <= x``, not ``a = x``: the same rows only if text compares equal exactly when it is
byte-identical, which holds for every deterministic collation (a database's default is one:
PostgreSQL breaks ties of the collation by the bytes). Checked here on databases whose default
collation is ICU's, or a libc locale other than C, with strings those collations rank equal
but which are not identical: canonically equivalent sequences (precomposed and combining),
decomposed Hangul, characters ICU ignores, case and trailing spaces, prefixes."""

from __future__ import annotations

import os
import unicodedata
from collections import defaultdict

import pytest

from sqlitesaver.ids import parse_id
from sqlitesaver.postgres import engine as pg_engine

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")

_HANGUL = "\ud55c\uae00"
#: Distinct strings, several of which collate equal (or almost) under ICU or glibc.
STRINGS = ["", " ", "a", "A", "a ", "ab", "a b", "\u00e9", "e\u0301", "caf\u00e9", "cafe\u0301",
           _HANGUL, unicodedata.normalize("NFD", _HANGUL), "\u00c5", "A\u030a", "\u212b",
           "\u00df", "ss", "a\u200bb", "a\u00adb", "\ufb01", "fi", "\u00e9" * 200,
           "e\u0301" * 200]
assert len(set(STRINGS)) == len(STRINGS)

DATABASES = {
    "icu en-US": "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.utf8'",
    "icu und, level 1": "LOCALE_PROVIDER icu ICU_LOCALE 'und-u-ks-level1' LOCALE 'C.utf8'",
    "libc en_US.utf8": "LC_COLLATE 'en_US.utf8' LC_CTYPE 'en_US.utf8'",
}


@pytest.fixture(params=list(DATABASES))
def collated_url(pg_cluster, request):
    name = "collated_" + str(list(DATABASES).index(request.param))
    with psycopg.connect(pg_cluster.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        try:
            admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING UTF8 "
                          f"{DATABASES[request.param]}")
        except psycopg.Error as exc:
            pytest.skip(f"cannot create a database with {request.param}: {exc}")
    yield pg_cluster.url.replace("/postgres?", f"/{name}?", 1)
    with psycopg.connect(pg_cluster.url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_one_thread_statements_match_identical_strings_only(collated_url):
    with psycopg.connect(collated_url) as conn:  # "=" tells every one apart here too
        (pairs,) = conn.execute("SELECT count(*) FROM unnest(%s::text[]) AS a, "
                                "unnest(%s::text[]) AS b WHERE a = b",
                                (STRINGS, STRINGS)).fetchone()
        assert pairs == len(STRINGS)
    engine = pg_engine.Engine(collated_url, busy_timeout=5.0)
    try:
        seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
        logged: dict[str, list[int]] = defaultdict(list)
        threads = STRINGS + ["many"]
        for round_ in range(2):
            for thread in threads:
                for namespace in STRINGS if thread != "many" or round_ else STRINGS[:3]:
                    checkpoint_id, _ = engine.put_checkpoint(thread, namespace, None, None,
                                                             b"\x80", b"\x80")
                    seqs[thread, namespace].append(parse_id(checkpoint_id))
                logged[thread].append(engine.append_log(thread, b"\x80"))
        # threads() walks the index (collated) but lists by code point, as SQLite does
        assert engine.threads() == sorted(threads)
        for thread in threads + ["nobody", "\u00e9 "]:
            mine = sorted((seq for (t, _), found in seqs.items() if t == thread
                           for seq in found), reverse=True)
            for _ in range(2):  # past psycopg's prepare threshold too
                _, rows, _, _ = engine.page(thread, None, None, None, 1000, 1 << 30)
                assert [row[0] for row in rows] == mine, thread
                _, rows, _, _ = engine.page(thread, None, None, None, 3, 1 << 30)
                assert [row[0] for row in rows] == mine[:3], thread
                assert [row[0] for row in engine.log_page(thread, 0, None, 1000)[1]] == \
                    logged.get(thread, [])
            for namespace in STRINGS:
                expected = seqs.get((thread, namespace), [])[::-1]
                latest = engine.get_rows(thread, namespace, None)
                assert [row[0] for row in latest[:1]] == expected[:1], (thread, namespace)
                _, rows, _, _ = engine.page(thread, namespace, None, None, 1000, 1 << 30)
                assert [row[0] for row in rows] == expected, (thread, namespace)
        # writes: each of a pair of look-alike threads alone
        for thread in ("\u00e9", "e\u0301", "a", "a ", _HANGUL):
            own = sum(len(found) for (t, _), found in seqs.items() if t == thread)
            assert engine.prune(thread, 1) == own - len(STRINGS), thread
            assert engine.copy_thread(thread, thread + "-copy", lambda row: None,
                                      lambda checkpoint, writes: None) == len(STRINGS)
            assert engine.delete_matching(thread, lambda row: False) == 0
            assert engine.delete_thread(thread) == len(STRINGS), thread
        assert engine.delete_thread("A") == 2 * len(STRINGS)  # not pruned with "a"
    finally:
        engine.close()
