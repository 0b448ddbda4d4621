"""list() and read_log() read in pages, each from its own snapshot (issue #5, item 3).

Pages hold 256 rows, then 512, 1,024 and 2,048: 3,000 checkpoints cross every kind of page
boundary. The listing must equal one read of the whole thread, in order, with every pending
write on its own checkpoint, whatever the namespaces, ``before``, ``limit`` and ``metadata``.
On both engines: a SQLite file and a PostgreSQL database.
"""

from __future__ import annotations

import random

import pytest

from sqlitesaver import Saver, saver as saver_module

SEED = 5150
COUNT = 3000


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def history(tmp_path_factory, request):
    """A thread of COUNT checkpoints over two namespaces (one thread of one namespace too),
    some with pending writes, and a log of COUNT events; plus the expected lists."""
    rng = random.Random(SEED)
    path = str(tmp_path_factory.mktemp("paging") / "paging.db") if request.param == "sqlite" \
        else request.getfixturevalue("pg_module_url")
    expected: list[tuple[str, str, int, tuple]] = []  # (id, namespace, n, writes)
    with Saver(path, durability="normal") as saver:
        with saver.transaction():
            for n in range(COUNT):
                namespace = rng.choice(["", "sub"])
                ref = saver.put("t", {"n": n}, namespace=namespace,
                                metadata={"even": n % 2 == 0})
                writes: tuple = ()
                if rng.random() < 0.3:
                    writes = tuple((f"c{i}", n * 10 + i) for i in range(rng.randint(1, 3)))
                    saver.put_writes("t", ref.checkpoint_id, "task", list(writes),
                                     namespace=namespace)
                expected.append((ref.checkpoint_id, namespace, n, writes))
                saver.put("one", n, namespace="only")
                saver.append_log("t", n)
    expected.reverse()  # newest first
    return path, expected


def listed(saver: Saver, **options) -> list[tuple[str, str, int, tuple]]:
    return [(c.checkpoint_id, c.namespace, c.state["n"],
             tuple((w.channel, w.value) for w in c.pending_writes))
            for c in saver.list("t", **options)]


@pytest.mark.parametrize("namespace", [None, "", "sub"])
def test_a_paged_listing_equals_the_whole_history(history, namespace):
    path, expected = history
    want = [e for e in expected if namespace is None or e[1] == namespace]
    with Saver(path) as saver:
        assert listed(saver, namespace=namespace) == want, f"seed {SEED}"
        assert listed(saver, namespace=namespace, limit=1000) == want[:1000]
        before = want[700][0]
        assert listed(saver, namespace=namespace, before=before) == want[701:]
        assert listed(saver, namespace=namespace, before=before, limit=300) == want[701:1001]
        assert listed(saver, namespace=namespace, metadata={"even": True}, limit=900) == \
            [e for e in want if e[2] % 2 == 0][:900]


@pytest.mark.parametrize("budget", [1, 200])
@pytest.mark.parametrize("namespace", [None, "", "sub"])
def test_a_byte_budget_shortens_pages_not_the_listing(history, monkeypatch, namespace, budget):
    """A page ends after the row whose payloads bring it to PAGE_BYTES (a few rows' worth, or
    less than one row: then every page holds one row): each engine's statement choosing the
    rows by a running sum, the next page going on below the last row, and the listing still
    whole and in order."""
    path, expected = history
    want = [e for e in expected if namespace is None or e[1] == namespace]
    monkeypatch.setattr(saver_module, "PAGE_BYTES", budget)
    with Saver(path) as saver:
        assert listed(saver, namespace=namespace, limit=300) == want[:300], f"seed {SEED}"
        middle = len(want) - 300
        assert listed(saver, namespace=namespace, before=want[middle][0]) == want[middle + 1:]


def test_a_single_namespace_thread_is_listed_whole(history):
    path, _ = history
    with Saver(path) as saver:
        assert [c.state for c in saver.list("one")] == list(range(COUNT - 1, -1, -1))


def test_the_log_is_read_whole_across_pages(history):
    path, _ = history
    with Saver(path) as saver:
        events = list(saver.read_log("t"))
        assert [e.event for e in events] == list(range(COUNT))
        middle = events[1234].seq
        assert [e.event for e in saver.read_log("t", after=middle)] == \
            list(range(1235, COUNT))


def test_what_is_committed_after_a_listing_began_is_never_listed(any_target, monkeypatch):
    monkeypatch.setattr(saver_module, "PAGE_ROWS", 4)  # many pages, each its own snapshot
    with Saver(any_target) as saver:
        old = [saver.put("t", n, namespace=["", "x"][n % 2]).checkpoint_id for n in range(30)]
        saver.append_log("t", "old")
        listing, log = saver.list("t"), saver.read_log("t")
        seen = [next(listing).checkpoint_id]
        assert next(log).event == "old"
        for n in range(20):  # between pages: newer checkpoints and events, in both namespaces
            saver.put("t", f"new {n}", namespace=["", "x"][n % 2])
            saver.append_log("t", "new")
            seen.append(next(listing).checkpoint_id)
        assert [*seen, *(c.checkpoint_id for c in listing)] == old[::-1]
        assert list(log) == []  # stops at the newest event when the read began
