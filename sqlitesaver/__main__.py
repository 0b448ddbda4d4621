"""``python -m sqlitesaver COMMAND``: the command line.

``python -m sqlitesaver demo [PATH]``: write, crash, recover and show what survived.
``python -m sqlitesaver check PATH [PATH ...]``: verify sqlitesaver databases without writing to
them (see :mod:`sqlitesaver.check`); exit 0 if all are healthy, 1 if damage was found in any, else
2 for bad usage or a path that is not a sqlitesaver database this version can validate.
``inspect``, ``history``, ``show``, ``prune``, ``delete``, ``vacuum``, ``backup``, ``restore``,
``salvage``: operating a database; see :mod:`sqlitesaver.cli` (their conventions: exit status,
``--json``, errors). ``--version`` prints the versions of sqlitesaver, APSW and SQLite.

The demo runs a writer in a child process, kills it with SIGKILL after a number of acknowledged
transitions, reopens the database as the library does (recovery included) and checks that
every acknowledged transition is there, whole.

Output into a closed pipe (``python -m sqlitesaver history ... | head``) ends the command
quietly with exit status 141 (128 + SIGPIPE), what a Unix tool killed by SIGPIPE reports: the
reader stopped reading, and the status says the output was cut, not that the data is healthy.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import textwrap

import apsw

from . import Saver, SaverError, __version__, check, cli

_CHILD = textwrap.dedent("""
    import sys
    from sqlitesaver import Saver
    with Saver(sys.argv[1]) as saver:
        n = 0
        while True:
            n += 1
            with saver.transaction():
                ref = saver.put("demo", {"step": n, "note": "x" * 200})
                saver.put_writes("demo", ref.checkpoint_id, "task", [("step", n)])
                saver.append_log("demo", {"step": n})
            print(ref.checkpoint_id, n, flush=True)
""")


def demo(path: str | None, transitions: int) -> int:
    directory = None
    if path is None:
        directory = tempfile.mkdtemp(prefix="sqlitesaver-demo-")
        path = os.path.join(directory, "demo.db")
    # Opened (and created) here first: a path that cannot be a database (a FIFO, a dangling
    # link, a name too long for its -wal...) is refused with its SaverError (exit 2) instead
    # of as a traceback of the writer, or a writer blocked forever opening a FIFO.
    Saver(path).close()
    print(f"database: {path}")
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, path], stdout=subprocess.PIPE,
                             text=True, env=env)
    acked = []
    assert child.stdout is not None
    for line in child.stdout:
        acked.append(line.split())
        if len(acked) >= transitions:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    print(f"writer acknowledged {len(acked)} transitions, then was killed with SIGKILL")
    if not acked:
        print("the writer acknowledged nothing; see its error above")
        return 1
    with Saver(path) as saver:
        r = saver.recovery
        print(f"recovery: integrity {r.integrity_check} ok, WAL frames {r.wal_frames} "
              f"checkpointed {r.wal_frames_checkpointed}, schema v{r.schema_version}, "
              f"{r.seconds * 1000:.1f} ms")
        last_id, last_step = acked[-1][0], int(acked[-1][1])
        got = saver.get("demo", last_id)
        whole = got is not None and got.state["step"] == last_step and \
            [w.value for w in got.pending_writes] == [last_step]
        latest = saver.get("demo")
        print(f"last acknowledged checkpoint {last_id} (step {last_step}): "
              f"{'present and whole' if whole else 'MISSING OR PARTIAL'}; "
              f"latest in the database: step {latest.state['step'] if latest else None}")
    if directory and whole:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
    return 0 if whole else 1


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        # The writer acknowledges its first transition before it can be stopped: 0 would
        # still write one, so it is refused rather than misreported.
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sqlitesaver")
    parser.add_argument("--version", action="version",
                        version=f"sqlitesaver {__version__} (APSW {apsw.apsw_version()}, SQLite "
                                f"{apsw.sqlite_lib_version()})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_demo = commands.add_parser("demo", help="write, SIGKILL, recover, verify")
    p_demo.add_argument("path", nargs="?", help="database (default: a temporary one)")
    p_demo.add_argument("--transitions", type=_at_least_one, default=200,
                        help="acknowledged transitions before the kill (default 200, at least 1)")
    p_check = commands.add_parser(
        "check", help="verify databases; never writes to them",
        description="Verify sqlitesaver databases without writing to them: the file, its "
                    "identity and schema version, PRAGMA integrity_check, foreign_key_check, "
                    "the journal mode, every payload's checksum, and the structural "
                    "invariants (pending writes belong to checkpoints, ids are monotonic, "
                    "parents exist unless pruned). Exit status: 0 all healthy; 1 damage found "
                    "in any; else 2 bad usage, or a path that is missing, unreadable, not a "
                    "sqlitesaver database, or of a newer schema version.")
    p_check.add_argument("paths", nargs="+", metavar="PATH", help="database file(s)")
    p_check.add_argument("--json", action="store_true", help="print the result as JSON")
    cli.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return check.run(args.paths, as_json=args.json, out=sys.stdout)
    if args.command in cli.COMMANDS:
        return cli.run(args)
    try:
        return demo(args.path, args.transitions)
    except SaverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


#: Exit status after the reader of our output went away (128 + SIGPIPE, as a shell reports).
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def entry() -> int:
    """:func:`main`, ending quietly when stdout is a pipe whose reader has gone."""
    try:
        status = main()
        sys.stdout.flush()  # inside the try: a closed pipe may only show at this flush
        return status
    except BrokenPipeError:
        # Python's recipe (docs.python.org/3/library/signal.html, "Note on SIGPIPE"): point
        # stdout at devnull so that the interpreter's final flush does not fail once more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(entry())
