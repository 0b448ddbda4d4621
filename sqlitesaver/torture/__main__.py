"""``python -m sqlitesaver.torture``: SIGKILL writers at random moments and prove that every
acknowledged transition survives whole.

Exit status: 0 when nothing was lost, partial, leaked or corrupt (and no writer failed); 1 when
something was; 2 for bad usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import sys
import tempfile

from ..errors import SaverError
from .. import paths
from ..postgres import target as pg_target
from .harness import Options, run
from .iofaults import run_io_faults
from .server import (ServerCrashRun, Terminated, check_target, describe, handle_termination,
                     is_server, owned_server)

_EPILOG = """\
exit status: 0 nothing lost, partial, leaked or corrupt; 1 something was (the run stops there
unless --keep-going, and the database is kept as found, its path printed); 2 bad usage.
A run is reproduced by its --seed: the same kill delays, transitions and contents (how far a
writer gets within a delay still depends on the machine)."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, not {text}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sqlitesaver.torture", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Crash torture: writers are killed with SIGKILL at random moments; after "
                    "each kill the database is reopened (recovery included) and every "
                    "acknowledged transition must be intact, with no partial one visible.")
    parser.add_argument("--mode", choices=("sigkill", "power-loss", "io-faults", "interrupts",
                                           "server-crash"),
                        default="sigkill",
                        help="sigkill (default): kill the writer at a random moment; "
                             "power-loss: the writer's VFS loses power at a random write or "
                             "sync, dropping or tearing what was not synced (one worker); "
                             "io-faults: fail the 1st, 2nd, 3rd ... read, write, sync or "
                             "truncate of a fixed step, once and persistently, with EIO or a "
                             "full disk (one worker, no kills); "
                             "interrupts: no kills; in this process, SIGINT at random moments "
                             "to the main thread, which catches KeyboardInterrupt and goes on "
                             "writing beside --threads other threads; each iteration is a "
                             "round of 0.1 s, after which another connection must see every "
                             "acknowledged write (the gap between two SIGINTs is drawn from "
                             "--min-interval to --max-interval, default 0 to 0.005 s here); "
                             "server-crash: on a throwaway PostgreSQL cluster it starts "
                             "(--backend postgres, never --db), SIGKILL every server process "
                             "while --workers writers (default 4) commit, restart it (crash "
                             "recovery) and require every acknowledged transition; a COMMIT "
                             "cut off by the crash may be there or not (counted both ways); "
                             "with --backend postgres, power-loss is server-crash with the "
                             "cluster's data directory on LossyFS (FUSE): after the SIGKILL "
                             "every write not fsync'd is dropped before the restart, and a "
                             "server that cannot start is a failure (needs fusepy, fuse3, "
                             "libfuse2, /dev/fuse; refused with how to get them otherwise)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default=None,
                        help="sqlite (default): a database file; postgres: a PostgreSQL "
                             "server, the one of --db postgresql://... (sigkill only: writers "
                             "are killed, the server is not) or, without --db, a throwaway "
                             "cluster started here and removed at the end (also on Ctrl-C, "
                             "SIGTERM, SIGHUP). A URL's password goes to the writers through "
                             "their environment, never their command line or the output. On "
                             "a server, file transitions are left out (named in the output)")
    parser.add_argument("--iterations", type=_positive_int, default=None,
                        help="kills to perform (default 50); with io-faults, the largest k "
                             "per fault kind (default: until the step runs out of operations)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for every random choice (default: a new one, printed)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="writer processes on the one database, killed and restarted "
                             "independently (default 1; server-crash: 4)")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="writer threads per worker process, sharing one Saver so that "
                             "its group commit batches their transitions; each thread writes "
                             "its own lane and is verified on its own (default 1; sigkill "
                             "and power-loss)")
    parser.add_argument("--langgraph", action="store_true",
                        help="the writers run real LangGraph graphs (a parallel fan-out, "
                             "durability sync or async) through sqlitesaver.langgraph's "
                             "SqliteSaver, --threads of them per process on one checkpointer; "
                             "after each kill every acknowledged put and put_writes must be "
                             "there through LangGraph's API, and resuming each graph thread "
                             "must run no finished node again and end in the uninterrupted "
                             "run's state (sigkill only; needs langgraph installed)")
    parser.add_argument("--durability", choices=("full", "normal"), default="full",
                        help="the Saver's durability setting (default full)")
    parser.add_argument("--min-interval", type=_seconds, default=None,
                        help="shortest delay from a writer's start to its kill, seconds "
                             "(default 0)")
    parser.add_argument("--max-interval", type=_seconds, default=None,
                        help="longest such delay, seconds (default 0.5)")
    parser.add_argument("--db", help="database to create and torture (must not exist; default: "
                                     "one in a temporary directory, removed on success)")
    parser.add_argument("--keep-going", action="store_true",
                        help="carry on after a violation to count them all (default: stop at "
                             "the first and keep the database as it was found)")
    parser.add_argument("--report", metavar="FILE.json",
                        help="also write the per-iteration results and summary as JSON")
    parser.add_argument("--server-setting", metavar="NAME=VALUE", action="append",
                        default=[], dest="server_settings",
                        help="a setting of the throwaway PostgreSQL cluster (postgres -c "
                             "NAME=VALUE; repeatable; server-crash and power-loss on "
                             "--backend postgres only). For the teeth: fsync=off or "
                             "full_page_writes=off, which the engine otherwise refuses, are "
                             "then accepted by the harness and its writers")
    parser.add_argument("--writer", metavar="FILE.py:CLASS",
                        help="run this Writer subclass instead of the library's writer (with "
                             "--langgraph: this subclass of graph_workload's "
                             "ReportingCheckpointer instead of the adapter), for testing the "
                             "harness itself with deliberately broken writers")
    args = parser.parse_args(argv)
    _check_backend(parser, args)
    on_owned_server = args.backend == "postgres" and args.mode in ("server-crash",
                                                                    "power-loss")
    if args.workers is None:
        args.workers = 4 if on_owned_server else 1
    settings = {}
    for item in args.server_settings:
        name, eq, value = item.partition("=")
        if not eq or not name.strip() or not value.strip():
            parser.error(f"--server-setting takes NAME=VALUE, not {item!r}")
        settings[name.strip()] = value.strip()
    if settings and not on_owned_server:
        parser.error("--server-setting sets up the throwaway cluster of --backend postgres "
                     "--mode server-crash or power-loss; it has no other use")
    args.server_settings = settings
    if args.min_interval is None:
        args.min_interval = 0.0
    if args.max_interval is None:
        args.max_interval = 0.005 if args.mode == "interrupts" else 0.5
    if args.mode == "interrupts" and (args.workers != 1 or args.writer or args.langgraph):
        parser.error("--mode interrupts runs in this process (signals go to its main thread): "
                     "no --workers, --writer or --langgraph; --threads are the other writers")
    if args.min_interval > args.max_interval:
        parser.error(f"--min-interval ({args.min_interval:g}) is above --max-interval "
                     f"({args.max_interval:g})")
    if args.max_interval <= 0:
        parser.error("--max-interval must be above 0")
    if args.mode == "io-faults" and args.workers != 1:
        parser.error("--mode io-faults runs one worker, in this process")
    if args.mode == "io-faults" and args.threads != 1:
        parser.error("--mode io-faults runs one thread: its step is a fixed sequence of "
                     "operations, failed one by one; --threads is for sigkill and power-loss")
    if args.iterations is None and args.mode != "io-faults":
        args.iterations = 50
    if args.mode == "power-loss" and args.backend == "sqlite" and args.workers != 1:
        parser.error("--mode power-loss runs one worker: a power loss stops every process, "
                     "and the simulation models only the crashing writer's unsynced writes")
    if args.langgraph and args.mode != "sigkill":
        parser.error(f"--langgraph runs with --mode sigkill, not {args.mode}")
    if args.langgraph and importlib.util.find_spec("langgraph") is None:
        parser.error("--langgraph needs LangGraph: pip install langgraph (or the 'test' "
                     "extra, pip install 'sqlitesaver[test]')")
    if args.workers > 64:
        parser.error(f"--workers is at most 64, not {args.workers}")
    if args.threads > 64:
        parser.error(f"--threads is at most 64, not {args.threads}")
    if args.db is not None and args.backend == "sqlite":
        if os.path.lexists(args.db) or os.path.lexists(args.db + "-wal"):
            parser.error(f"--db {args.db!r} exists; the harness creates its own database and "
                         "never touches an existing one (give a new path or remove it)")
        try:
            # The library's own checks (a missing directory or one that is a file, a name too
            # long for its -wal, not UTF-8...): refused here rather than by every writer.
            paths.resolve(os.path.abspath(args.db))
        except SaverError as exc:
            parser.error(f"--db: {exc}")
    if args.writer is not None:
        filename, _, name = args.writer.rpartition(":")
        if not filename or not name or not os.path.isfile(filename):
            parser.error(f"--writer must be FILE.py:CLASS with an existing file, "
                         f"not {args.writer!r}")
        args.writer = f"{os.path.abspath(filename)}:{name}"
    if args.report is not None:
        parent = os.path.dirname(os.path.abspath(args.report))
        if not os.path.isdir(parent):
            parser.error(f"--report {args.report!r}: directory {parent!r} does not exist")
    return args


def _check_backend(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Which engine (``args.backend``), and the refusals of what it cannot run."""
    url = args.db is not None and is_server(args.db)
    if args.backend is None:
        args.backend = "postgres" if url or args.mode == "server-crash" else "sqlite"
    if args.backend == "sqlite" and url:
        parser.error("--db is a PostgreSQL URL: that is --backend postgres, not sqlite")
    if args.backend == "sqlite" and args.mode == "server-crash":
        parser.error("--mode server-crash crashes a PostgreSQL server: it runs with "
                     "--backend postgres (a throwaway cluster it starts), not on SQLite")
    if args.backend != "postgres":
        return
    if args.db is not None and not url:
        parser.error(f"--backend postgres takes --db as a postgresql:// URL, not "
                     f"{describe(args.db)!r} (leave --db out for a throwaway cluster)")
    if args.mode in ("server-crash", "power-loss") and args.db is not None:
        parser.error(f"--mode {args.mode} SIGKILLs every process of the server and restarts "
                     "it: it runs only on a throwaway cluster it starts itself, never on the "
                     f"server of --db ({describe(args.db)}). Leave --db out (--backend postgres)")
    if args.mode not in ("sigkill", "server-crash", "power-loss"):
        parser.error(f"--mode {args.mode} runs on SQLite only (it simulates or interrupts what "
                     "a SQLite file does); on PostgreSQL: --mode sigkill, server-crash or "
                     "power-loss")
    if args.langgraph:
        parser.error("--langgraph runs on SQLite only for now; on PostgreSQL the writers use "
                     "the Saver API")
    if importlib.util.find_spec("psycopg") is None:
        parser.error("--backend postgres needs psycopg: pip install 'sqlitesaver[postgres]'")
    if url:
        try:
            pg_target.parse(args.db)
        except SaverError as exc:  # InvalidArgumentError, never quoting the password
            parser.error(f"--db: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    if args.backend == "postgres":
        return _main_postgres(args, seed)
    directory = None
    db = args.db
    if db is None:
        directory = tempfile.mkdtemp(prefix="sqlitesaver-torture-")
        db = os.path.join(directory, "torture.db")
    options = Options(db=db, iterations=args.iterations, seed=seed, workers=args.workers,
                      threads=args.threads,
                      durability=args.durability, min_interval=args.min_interval,
                      max_interval=args.max_interval, writer=args.writer, mode=args.mode,
                      keep_going=args.keep_going, langgraph=args.langgraph)
    try:
        if args.mode == "interrupts":
            status, report = _run_interrupts(args, db, seed)
        else:
            status, report = run_io_faults(options) if args.mode == "io-faults" \
                else run(options)
    except KeyboardInterrupt:
        print(f"\ninterrupted; seed {seed}; database kept at {db}", file=sys.stderr)
        return 130
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    if status == 0:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        print(f"PASS (seed {seed})")
    else:
        again = ["python", "-m", "sqlitesaver.torture", "--mode", args.mode]
        if args.langgraph:
            again.append("--langgraph")
        if args.iterations is not None:
            again += ["--iterations", str(args.iterations)]
        again += ["--workers", str(args.workers)]
        if args.threads != 1:
            again += ["--threads", str(args.threads)]
        again += ["--durability", args.durability]
        if args.mode != "io-faults":
            again += ["--min-interval", f"{args.min_interval:g}",
                      "--max-interval", f"{args.max_interval:g}"]
        again += ["--seed", str(seed)]
        if args.writer:
            again += ["--writer", args.writer]
        if args.keep_going:
            again.append("--keep-going")
        print(f"FAIL (seed {seed}); run it again with: {shlex.join(again)}")
        print(f"database kept for inspection: {db}")
    return status


def _lossy_unavailable(exc: BaseException) -> bool:
    from .power_loss import LossyFSUnavailable

    return isinstance(exc, LossyFSUnavailable)


def _main_postgres(args: argparse.Namespace, seed: int) -> int:
    """sigkill on the server of ``--db`` or on an owned cluster; server-crash on an owned one
    (sqlitesaver.torture.server). Exit status as :func:`main`'s; 2 if the server of ``--db``
    cannot be used; 128 + the signal's number on SIGTERM or SIGHUP, 130 on Ctrl-C."""
    from .. import pgcluster

    def options(db: str, mode: str = args.mode) -> Options:
        return Options(db=db, iterations=args.iterations, seed=seed, workers=args.workers,
                       threads=args.threads, durability=args.durability,
                       min_interval=args.min_interval, max_interval=args.max_interval,
                       writer=args.writer, mode=mode, keep_going=args.keep_going)

    if {args.server_settings.get("fsync"), args.server_settings.get(
            "full_page_writes")} & {"off", "false", "0", "no"}:
        from .server import UNSAFE_ENV, allow_unsafe_server

        print("warning: the throwaway cluster runs with "
              + ", ".join(f"{k}={v}" for k, v in args.server_settings.items())
              + ", which the engine refuses otherwise: accepted for this run only (the teeth)",
              flush=True)
        allow_unsafe_server()
        os.environ[UNSAFE_ENV] = "1"  # the writers inherit it

    try:
        if args.db is not None:
            problem = check_target(args.db)
            if problem is not None:
                print(f"python -m sqlitesaver.torture: error: --db {describe(args.db)}: "
                      f"{problem}", file=sys.stderr)
                return 2
            with handle_termination():  # SIGTERM/SIGHUP unwind: the writers are killed
                status, report = run(options(args.db))
        elif args.mode == "power-loss":
            from .power_loss import HOW_TO_GET_IT, PowerLossRun, power_loss_server, unavailable

            why = unavailable()
            if why is not None:
                print(f"python -m sqlitesaver.torture: error: --mode power-loss on PostgreSQL "
                      f"keeps the data directory on LossyFS (a FUSE file system), which cannot "
                      f"run here: {why}; {HOW_TO_GET_IT}", file=sys.stderr)
                return 2
            with power_loss_server(sys.stdout, args.server_settings) as server:
                harness = PowerLossRun(options(server.url, "server-crash"), sys.stdout, server)
                status = harness.run()
                report = harness.report()
        else:
            with owned_server(sys.stdout, args.server_settings) as server:
                if args.mode == "server-crash":
                    harness = ServerCrashRun(options(server.url), sys.stdout, server)
                    status = harness.run()
                    report = harness.report()
                else:
                    status, report = run(options(server.url))
    except pgcluster.ClusterError as exc:
        if args.mode == "power-loss" and _lossy_unavailable(exc):
            from .power_loss import HOW_TO_GET_IT

            print(f"python -m sqlitesaver.torture: error: --mode power-loss on PostgreSQL "
                  f"keeps the data directory on LossyFS, which cannot run here: {exc}; "
                  f"{HOW_TO_GET_IT}", file=sys.stderr)
            return 2
        print(f"python -m sqlitesaver.torture: error: the throwaway PostgreSQL cluster: {exc}",
              file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"\n{exc}: stopped; seed {seed}" + ("" if args.db else
              "; the throwaway cluster was removed"), file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"\ninterrupted; seed {seed}" + ("" if args.db else
              "; the throwaway cluster was removed"), file=sys.stderr)
        return 130
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    if status == 0:
        print(f"PASS (seed {seed})")
        return 0
    again = ["python", "-m", "sqlitesaver.torture", "--mode", args.mode]
    again += ["--backend", "postgres"] if args.db is None else ["--db", "URL"]
    for name, value in args.server_settings.items():
        again += ["--server-setting", f"{name}={value}"]
    again += ["--iterations", str(args.iterations), "--workers", str(args.workers)]
    if args.threads != 1:
        again += ["--threads", str(args.threads)]
    again += ["--durability", args.durability, "--min-interval", f"{args.min_interval:g}",
              "--max-interval", f"{args.max_interval:g}", "--seed", str(seed)]
    if args.writer:
        again += ["--writer", args.writer]
    if args.keep_going:
        again.append("--keep-going")
    print(f"FAIL (seed {seed}); run it again with: {shlex.join(again)}")
    if args.db is None:
        print("the throwaway cluster was removed (the seed reproduces the run)")
    else:
        print(f"the database was left as found: {describe(args.db)}")
    return status


def _run_interrupts(args: argparse.Namespace, db: str, seed: int) -> tuple[int, dict]:
    """``--mode interrupts`` (see sqlitesaver.torture.interrupts), under a hang detector: all
    thread stacks are printed and the process exits 1 if it has not finished in time."""
    import faulthandler

    from . import interrupts

    faulthandler.dump_traceback_later(120 + 2 * args.iterations, exit=True)
    try:
        report = interrupts.run(db, rounds=args.iterations, threads=args.threads, seed=seed,
                                min_gap=args.min_interval, max_gap=args.max_interval,
                                durability=args.durability)
    finally:
        faulthandler.cancel_dump_traceback_later()
    print(interrupts.format_report(report))
    for problem in report["lost"] + report["partial"] + report["errors"]:
        print(f"  {problem}")
    return (0 if report["ok"] else 1), report


if __name__ == "__main__":
    sys.exit(main())
