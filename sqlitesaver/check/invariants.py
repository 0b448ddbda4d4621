"""The structural invariants the Saver keeps, each its own check: every pending write belongs
to an existing checkpoint; ids are monotonic; parents exist unless pruned
(:func:`parent_links`, for both engines' validators)."""

from __future__ import annotations

from collections.abc import Iterable

import apsw

from ..errors import describe
from .report import FAILED, OK, Report, _checkpoint, _checkpoint_id, _listed, _stopped
from .sqlite_checks import _known_schema


# --- structural invariants -------------------------------------------------------------------
# Each can be violated only by damage (or by writing around the Saver): put() takes the next
# seq above every seq present and the high-water mark, and accepts only a parent_id of the same
# thread and namespace that exists at that moment; prune() keeps the newest checkpoints of each
# (thread, namespace) and delete_thread() deletes all of a thread's, both after raising
# high_water to the largest seq present; delete_matching() raises it too and detaches the
# children of what it deletes; copy_thread() inserts copies with new seqs, in the same order.

def _check_invariants(report: Report, conn: apsw.Connection) -> None:
    for name, check in (("writes_point_at_checkpoints", _dangling_writes),
                        ("ids_monotonic", _ids_monotonic),
                        ("parents_exist_unless_pruned",
                         lambda conn: _parents(conn, report.schema_version))):
        if not _known_schema(report, name):
            continue
        try:
            problems, summary = check(conn)
        except apsw.Error as exc:
            report.add(name, FAILED, f"could not be checked ({describe(exc)})")
            continue
        except Exception as exc:  # e.g. a text that is not UTF-8 in a row it reads
            report.add(name, FAILED, _stopped(exc))
            continue
        if problems:
            report.add(name, FAILED, f"{len(problems)} violation(s): {_listed(problems)}")
        else:
            report.add(name, OK, summary)


def _dangling_writes(conn: apsw.Connection) -> tuple[list[str], str]:
    """Every pending write belongs to an existing checkpoint (foreign_key_check says the same
    when the foreign key is intact; this asks the tables directly)."""
    problems = [f"pending write ({task_id!r}, {index!r}) of checkpoint {_checkpoint_id(seq)!r}, "
                "which does not exist"
                for seq, task_id, index in conn.execute(
                    "SELECT checkpoint_seq, task_id, idx FROM writes AS w WHERE NOT EXISTS "
                    "(SELECT 1 FROM checkpoints AS c WHERE c.seq = w.checkpoint_seq) "
                    "ORDER BY checkpoint_seq, task_id, idx")]
    (count,) = conn.execute("SELECT count(*) FROM writes").fetchone()
    return problems, f"all {count} pending write(s) belong to an existing checkpoint"


def _ids_monotonic(conn: apsw.Connection) -> tuple[list[str], str]:
    """The Saver hands out seq = max(largest seq present, high_water) + 1, and raises
    high_water to the largest seq present before it deletes anything. So: both high_water rows
    exist and hold integers (else the next seq is NULL and SQLite picks one, which may be a
    deleted row's); every seq is >= 1; a parent is older than its child; and a parent that is
    gone is not above high_water (its deletion would have raised it), else its id could be
    handed out again."""
    problems = []
    marks: dict[str, int] = {}
    for table in ("checkpoints", "log"):
        row = conn.execute("SELECT value, typeof(value) FROM high_water WHERE name = ?",
                           (table,)).fetchone()
        if row is None:
            problems.append(f"high_water has no {table!r} row: the next {table} seq would be "
                            "chosen by SQLite and could be a deleted one's")
        elif row[1] != "integer":
            problems.append(f"high_water {table!r} is {row[0]!r} ({row[1]}), not an integer")
        else:
            marks[table] = row[0]
        for (seq,) in conn.execute(f"SELECT seq FROM {table} WHERE seq < 1 ORDER BY seq"):
            problems.append(f"{table} seq {seq} is below 1, which no Saver hands out")
    for seq, thread_id, namespace, parent_seq in conn.execute(
            "SELECT seq, thread_id, namespace, parent_seq FROM checkpoints "
            "WHERE parent_seq IS NOT NULL AND (typeof(parent_seq) != 'integer' "
            "OR parent_seq >= seq) ORDER BY seq"):
        problems.append(f"{_checkpoint(seq, thread_id, namespace)} has parent "
                        f"{_checkpoint_id(parent_seq)!r}, which is not older than it")
    if "checkpoints" in marks:
        for seq, thread_id, namespace, parent_seq in conn.execute(
                "SELECT seq, thread_id, namespace, parent_seq FROM checkpoints AS c "
                "WHERE typeof(parent_seq) = 'integer' AND parent_seq > ? AND NOT EXISTS "
                "(SELECT 1 FROM checkpoints AS p WHERE p.seq = c.parent_seq) ORDER BY seq",
                (marks["checkpoints"],)):
            problems.append(f"{_checkpoint(seq, thread_id, namespace)} has parent "
                            f"{_checkpoint_id(parent_seq)!r}, which is gone but above "
                            f"high_water ({marks['checkpoints']}): that id could be handed "
                            "out again")
    if problems:
        return problems, ""
    nexts = {table: conn.execute(f"SELECT max(coalesce((SELECT max(seq) FROM {table}), 0), ?)"
                                 " + 1", (marks[table],)).fetchone()[0]
             for table in ("checkpoints", "log")}
    return [], (f"next checkpoint id {_checkpoint_id(nexts['checkpoints'])!r}, next log seq "
                f"{nexts['log']}: above every seq present and the high-water mark of deleted "
                "ones; every parent is older than its child")


def _parents(conn: apsw.Connection, version: int | None) -> tuple[list[str], str]:
    """An existing parent is of the same thread and namespace (put() checks it); a missing one
    was pruned, and prune() deletes only the oldest checkpoints of a thread and namespace, so
    it is older than every checkpoint of them that remains. From schema version 2, the
    parent's caller-supplied id kept beside the link (``parent_key``) is the existing parent's
    own id, and there is none without a link."""
    problems = []
    keys = "c.parent_key, p.key" if (version or 0) >= 2 else "NULL, NULL"
    if keys != "NULL, NULL":
        for seq, thread_id, namespace, parent_key in conn.execute(
                "SELECT seq, thread_id, namespace, parent_key FROM checkpoints "
                "WHERE parent_seq IS NULL AND parent_key IS NOT NULL ORDER BY seq"):
            problems.append(f"{_checkpoint(seq, thread_id, namespace)} names parent "
                            f"{parent_key!r} but links to no parent")
    found, present, pruned, by_key = parent_links(conn.execute(
        "SELECT c.seq, c.thread_id, c.namespace, c.parent_seq, p.seq, p.thread_id, "
        "p.namespace, (SELECT min(o.seq) FROM checkpoints AS o WHERE o.thread_id = "
        f"c.thread_id AND o.namespace = c.namespace), {keys} FROM checkpoints AS c "
        "LEFT JOIN checkpoints AS p ON p.seq = c.parent_seq "
        "WHERE c.parent_seq IS NOT NULL ORDER BY c.seq"))
    problems += found
    by_key_text = f"; {by_key} name their parent by a caller-supplied id" if by_key else ""
    return problems, (f"{present + pruned} parent link(s): {present} to an existing checkpoint "
                      f"of the same thread and namespace, {pruned} to a pruned one{by_key_text}")


def parent_links(rows: Iterable[tuple]) -> tuple[list[str], int, int, int]:
    """The parent-link invariant over rows ``(seq, thread_id, namespace, parent_seq, parent's
    seq, parent's thread_id, parent's namespace, oldest seq of the child's thread and
    namespace, parent_key, parent's key)`` of every linked checkpoint (the parent's columns
    NULL when it is gone), for both engines' validators: (problems, links to an existing
    parent, links to a pruned one, links naming the parent by a caller-supplied id)."""
    problems = []
    present = pruned = by_key = 0
    for (seq, thread_id, namespace, parent_seq, p_seq, p_thread, p_namespace, oldest,
         parent_key, p_key) in rows:
        child = _checkpoint(seq, thread_id, namespace)
        by_key += parent_key is not None
        if p_seq is not None:
            present += 1
            if (p_thread, p_namespace) != (thread_id, namespace):
                problems.append(f"{child} has parent {_checkpoint(p_seq, p_thread, p_namespace)}"
                                ": another thread or namespace")
            elif parent_key != p_key:
                problems.append(f"{child} names parent {parent_key!r} but links to "
                                f"{_checkpoint(p_seq, p_thread, p_namespace)}, whose id is "
                                f"{p_key!r}")
        elif type(parent_seq) is int and parent_seq < oldest:
            pruned += 1
        else:
            problems.append(f"{child} has parent {_checkpoint_id(parent_seq)!r}, which is "
                            f"missing but not older than {_checkpoint_id(oldest)!r}, the oldest "
                            "remaining checkpoint of that thread and namespace: it was not "
                            "pruned")
    return problems, present, pruned, by_key
