"""What the harness prints and reports: one line per kill, the summary, the JSON report.

:class:`_Summary` is the part of the harness (:class:`~sqlitesaver.torture.harness._Run`) that
records each verdict as an iteration's entry (and prints its line), sums the entries up in the
summary and its printed rows (which a mode extends: :meth:`_Summary.extra_summary`,
:meth:`_Summary.extra_rows`), and builds the report ``--report`` writes; the run's state it
reads (``o``, ``iterations``, ``final``, the counters, ``server_settings``) is set up by
``_Run.__init__`` and filled in by the loop, the writers and the verification.
"""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import apsw
import msgpack

from .verification import _LanesVerdict
from .writers import _Worker


class _Summary:
    """The run's output (a part of :class:`~sqlitesaver.torture.harness._Run`)."""

    def record(self, w: _Worker, phase: str, verdict: _LanesVerdict, recovery: float | None, *,
               final: bool = False) -> dict[str, Any]:
        entry = {
            "iteration": None if final else len(self.iterations) + 1,
            "worker": w.index, "incarnation": w.incarnation,
            "kill_delay": None if self.o.mode == "power-loss" else round(w.delay, 6),
            "crash_after_ops": w.crash_after,
            "killed_after": None if w.killed_after is None else round(w.killed_after, 6),
            "phase": phase,
            "in_wal_checkpoint": w.in_checkpoint,
            "acked_total": self.acked_total,
            "recovery_seconds": recovery,
            "writer_startup_seconds": w.startup_seconds,
            # with --threads: one per lane, in lane order
            "inflight": verdict.inflight if self.o.threads == 1 else verdict.lanes,
            "lost": sorted(verdict.lost), "partial": verdict.partial,
            "leaked": sorted(verdict.leaked),
            "problems": verdict.problems[:20],
            "ok": verdict.ok,
        }
        label = "end" if final else f"{entry['iteration']:>4}/{self.o.iterations}"
        if verdict.ok and self.o.threads == 1:
            shown = "ok" + ("" if verdict.inflight == "none"
                            else f" (in-flight {verdict.inflight})")
        elif verdict.ok:
            told = _counts(state for state in verdict.lanes if state != "none")
            shown = "ok" + (f" (in flight: {told})" if told else "")
        else:
            parts = []
            if verdict.lost:
                parts.append(f"LOST {len(verdict.lost)}: {', '.join(sorted(verdict.lost)[:5])}")
            if verdict.partial and self.o.threads == 1:
                parts.append("PARTIAL in-flight transition")
            elif verdict.partial:
                lanes = [str(i) for i, state in enumerate(verdict.lanes) if state == "partial"]
                parts.append(f"PARTIAL in-flight transition of lane {', '.join(lanes)}")
            if verdict.leaked:
                parts.append(f"LEAKED {len(verdict.leaked)} (raised, yet visible): "
                             f"{', '.join(sorted(verdict.leaked)[:5])}")
            if verdict.problems:
                first = " ".join(verdict.problems[0].split())
                parts.append(f"CORRUPT: {first[:300]}{'...' if len(first) > 300 else ''}")
            shown = "; ".join(parts)
        recovered = "-" if recovery is None else f"{recovery * 1000:.1f} ms"
        after = "   -    " if w.killed_after is None else f"{w.killed_after * 1000:6.1f} ms"
        shown_phase = phase + ("+ckpt" if w.in_checkpoint else "")
        width = 14 if self.o.threads == 1 else 18  # "4/4 in flight+ckpt"
        verb = "lost power" if self.o.mode == "power-loss" and not final else "killed at"
        self.print(f"{label}  w{w.index}  {verb} +{after} in {shown_phase:<{width}} "
                   f"acked {self.acked_total:>6}  recovery {recovered:>9}  {shown}")
        return entry

    def summarise(self) -> int:
        entries = self.iterations + self.final
        lost = sorted({tid for e in entries for tid in e["lost"]})
        partial = sum(e["partial"] for e in entries)
        leaked = sorted({tid for e in entries for tid in e["leaked"]})
        corrupt = sum(bool(e["problems"]) for e in entries) + bool(self.id_problems)
        recoveries = [e["recovery_seconds"] for e in entries if e["recovery_seconds"] is not None]
        startups = [e["writer_startup_seconds"] for e in entries
                    if e["writer_startup_seconds"] is not None]
        phases: dict[str, int] = {}
        for e in self.iterations:
            phases[e["phase"]] = phases.get(e["phase"], 0) + 1
        in_checkpoint = sum(bool(e["in_wal_checkpoint"]) for e in self.iterations)
        inflight: dict[str, int] = {}
        for e in entries:  # with --threads, per lane
            for state in (e["inflight"] if isinstance(e["inflight"], list) else [e["inflight"]]):
                inflight[state] = inflight.get(state, 0) + 1
        failed = bool(lost or partial or leaked or corrupt or self.errors)
        self.summary = {
            "iterations": len(self.iterations),
            "transitions_acknowledged": self.acked_total,
            "lost": len(lost), "lost_transitions": lost[:100],
            "partial": partial,
            "leaked": len(leaked), "leaked_transitions": leaked[:100],
            "corrupt": corrupt,
            "writer_errors": len(self.errors),
            "recovery_p50_ms": _ms(statistics.median(recoveries)) if recoveries else None,
            "recovery_max_ms": _ms(max(recoveries)) if recoveries else None,
            "writer_startup_p50_ms": _ms(statistics.median(startups)) if startups else None,
            "writer_transitions_per_second": (round(self.acked_total / self.writer_seconds)
                                              if self.writer_seconds else None),
            "threads": self.o.threads,
            "commits": self.commits,
            "committed_transitions": self.committed,
            "transitions_per_commit": (round(self.committed / self.commits, 2)
                                       if self.commits else None),
            "restores_checked": self.restores_checked,
            "big_restores": self.big_restores,
            "kills_by_phase": dict(sorted(phases.items())),
            "kills_in_wal_checkpoint": in_checkpoint if len(self.workers) == 1 else None,
            "inflight_at_kill": dict(sorted(inflight.items())),
            "seconds": round(self.seconds, 2),
            "verdict": "FAIL" if failed else "PASS",
        }
        self.summary.update(self.extra_summary())
        s = self.summary
        rows = [
            ("iterations (kills)", s["iterations"]),
            ("kills by phase", ", ".join(f"{k} {v}" for k, v in s["kills_by_phase"].items())),
            ("kills in a WAL checkpoint", s["kills_in_wal_checkpoint"]
             if s["kills_in_wal_checkpoint"] is not None else "not told with several workers"),
            ("in-flight at kill" + ("" if self.o.threads == 1 else " (per lane)"),
             ", ".join(f"{k} {v}" for k, v in s["inflight_at_kill"].items())),
            ("transitions acknowledged", s["transitions_acknowledged"]),
            ("workspace restores checked", f"{s['restores_checked']} (the newest acknowledged "
                                           "checkpoint with files, after a kill; "
                                           f"{s['big_restores']} with a file of several chunks)"),
            ("lost", s["lost"]),
            ("partial", s["partial"]),
            ("leaked (raised, yet visible)", s["leaked"]),
            ("corrupt", s["corrupt"]),
            ("writer errors", s["writer_errors"]),
            ("recovery p50 / max", f"{s['recovery_p50_ms']} ms / {s['recovery_max_ms']} ms"),
            ("writer start-up p50", f"{s['writer_startup_p50_ms']} ms (open, recovery, "
                                    "reading its threads back)"),
            ("writer throughput", f"{s['writer_transitions_per_second']} transitions/s"),
            ("threads per worker", f"{s['threads']} (one Saver per worker process)"),
            ("group commit", f"{s['committed_transitions']} transitions in {s['commits']} "
                             f"COMMITs, {s['transitions_per_commit']} per COMMIT"),
            ("wall time", f"{s['seconds']} s"),
            ("verdict", s["verdict"]),
        ]
        if self.on_server:  # no file to checkpoint or restore, no group-commit counters
            skip = ("kills in a WAL checkpoint", "workspace restores checked", "group commit",
                    # a killed writer leaves nothing to recover (server-crash: its restarts)
                    "recovery p50 / max" if s["recovery_p50_ms"] is None else "")
            rows = [row for row in rows if row[0] not in skip]
            rows.insert(0, ("server settings read back", _server_line(self.server_settings)))
        rows[-2:-2] = self.extra_rows()
        return self.print_summary(rows, failed)

    def extra_summary(self) -> dict[str, Any]:
        """What a mode adds to the summary (sqlitesaver.torture.server's server-crash)."""
        return {}

    def extra_rows(self) -> list[tuple[str, Any]]:
        """Rows a mode adds to the printed summary, before the wall time."""
        return []

    @property
    def shown_db(self) -> str:
        """The database as printed and reported: a server's URL without its password."""
        if not self.on_server:
            return self.o.db
        from .server import describe
        return describe(self.o.db)

    def print_summary(self, rows: list[tuple[str, Any]], failed: bool) -> int:
        """Print the summary's rows (aligned) and the first problems; the exit status."""
        width = max(len(k) for k, _ in rows)
        self.print("")
        for key, value in rows:
            self.print(f"  {key:<{width}}  {value}")
        for problem in self.id_problems[:10] + self.errors[:10]:
            self.print(f"  ! {problem}")
        return 1 if failed else 0

    def report(self) -> dict[str, Any]:
        o = self.o
        return {
            "command": "python -m sqlitesaver.torture",
            "options": {"mode": o.mode, "iterations": o.iterations, "seed": o.seed,
                        "workers": o.workers, "threads": o.threads,
                        "durability": o.durability, "min_interval": o.min_interval,
                        "max_interval": o.max_interval, "writer": o.writer,
                        "db": self.shown_db},
            "server": self.server_settings,
            "environment": {"python": platform.python_version(),
                            "apsw": apsw.apsw_version(),
                            "sqlite": apsw.sqlite_lib_version(),
                            "msgpack": ".".join(map(str, msgpack.version)),
                            "platform": platform.platform(), "cpus": os.cpu_count(),
                            **({"psycopg": _psycopg_version()} if self.on_server else {})},
            "summary": self.summary,
            "id_problems": self.id_problems[:100],
            "writer_errors": self.errors[:100],
            "iterations": self.iterations,
            "final": self.final,
        }

    def print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _counts(values: Any) -> str:
    """``"absent 2, present 1"``: how often each value occurs, sorted by value."""
    counted: dict[str, int] = {}
    for value in values:
        counted[value] = counted.get(value, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counted.items()))


def _psycopg_version() -> str:
    import psycopg  # only for a server run, which has it
    return psycopg.__version__


def _server_line(settings: dict[str, Any] | None) -> str:
    """A server's durability settings as the engine read them back (SHOW)."""
    if settings is None:
        return "(never read: no verdict was reached)"
    return (f"PostgreSQL {settings.get('server_version')}, fsync {settings.get('fsync')}, "
            f"full_page_writes {settings.get('full_page_writes')}, synchronous_commit "
            f"{settings.get('server_synchronous_commit')} (server), "
            f"{settings.get('synchronous_commit')} (the Saver's, per transaction)")


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)

