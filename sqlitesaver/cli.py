"""The operating subcommands of ``python -m sqlitesaver`` (``demo`` and ``check`` live in
``sqlitesaver/__main__.py``, which builds the parser and calls :func:`add_parsers` and
:func:`run`).

Conventions, the same for every subcommand:

* **Read-only subcommands** (``inspect``, ``history``, ``show``) open ``Saver(PATH,
  readonly=True)``: they never create, migrate, checkpoint or write the file. Subcommands that
  write (``prune``, ``delete``, ``vacuum``, ``restore``) refuse a path that does not exist rather
  than create an empty database there.
* ``--json`` wherever the output is data: one JSON document on stdout, nothing else there.
* **Exit status**: 0 done and nothing wrong; 1 a problem was found in the data (damage: a
  checksum or integrity failure, a damaged checkpoint skipped, a backup that fails validation,
  a salvage that had to leave rows behind); 2 bad usage, or the command could not run (a path
  that is missing, not a sqlitesaver database, in use, already exists).
* **Errors** are one line on stderr, ``python -m sqlitesaver COMMAND: error: MESSAGE``, naming
  the file; never a traceback.
* **Files only**: these subcommands operate on a SQLite file. A PostgreSQL URL is refused
  (exit 2) with what to use instead: ``check`` validates a server, and the server's own tools
  (``pg_dump``, ``VACUUM``, ``psql``) do the rest; opening one here would create our schema
  on a server a read-only command was pointed at.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

from . import inspection
from .errors import (CannotOpenError, CorruptDatabaseError, InvalidArgumentError, SaverError)

__all__ = ["COMMANDS", "add_parsers", "run"]

PROG = "python -m sqlitesaver"


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def add_parsers(commands: Any) -> None:
    """Add the operating subcommands to ``commands`` (an argparse subparsers object)."""

    def add(name: str, help: str, description: str, *, json_option: bool = True
            ) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help, description=description)
        if json_option:
            parser.add_argument("--json", action="store_true",
                                help="print the result as JSON")
        return parser

    p = add("inspect", "files, schema, settings and threads of a database (read-only)",
            "Show a database's file, -wal and free space, schema version, settings, and every "
            "thread with its namespaces, checkpoints, pending writes, log events, payload bytes "
            "and newest checkpoint. Opens it read-only: writes nothing.")
    p.add_argument("path", metavar="PATH")

    p = add("history", "a thread's checkpoints, newest first (read-only)",
            "List a thread's checkpoints, newest first: id, namespace, parent, time, number of "
            "pending writes, metadata. A damaged checkpoint is reported and skipped (exit 1).")
    p.add_argument("path", metavar="PATH")
    p.add_argument("thread", metavar="THREAD")
    p.add_argument("--namespace", metavar="NS", help="only this namespace (default: all)")
    p.add_argument("--limit", metavar="N", type=_non_negative, help="at most N checkpoints")

    p = add("show", "one checkpoint as JSON: state, metadata, pending writes (read-only)",
            "Print a checkpoint (the latest of the thread by default) as JSON, values that JSON "
            "lacks tagged by type (bytes as {\"__bytes__\": base64}). Without --json, long "
            "values are shortened for the terminal.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("thread", metavar="THREAD")
    p.add_argument("checkpoint_id", metavar="ID", nargs="?", help="default: the latest")
    p.add_argument("--namespace", metavar="NS", default="", help="default: the root ('')")

    p = add("prune", "keep only a thread's newest checkpoints",
            "Delete all but the newest N checkpoints of each namespace of a thread, with their "
            "pending writes, in one transaction (Saver.prune). The file keeps its size: run "
            "vacuum to give the space back.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("thread", metavar="THREAD")
    p.add_argument("--keep-last", metavar="N", type=_non_negative, required=True)

    p = add("delete", "delete a thread: checkpoints, pending writes and log",
            "Delete every checkpoint, pending write and log event of a thread, in one "
            "transaction (Saver.delete_thread).")
    p.add_argument("path", metavar="PATH")
    p.add_argument("thread", metavar="THREAD")

    p = add("vacuum", "give free pages back to the filesystem (refused while in use)",
            "Rebuild the database without its free pages (VACUUM), then validate it. Refused "
            "while any other connection has the database open.")
    p.add_argument("path", metavar="PATH")

    p = add("backup", "online, consistent copy to a new file, validated",
            "Copy a database to the new file DST as one consistent snapshot while writers keep "
            "writing (SQLite's backup API), sync it, validate it like check, then put it in "
            "place. DST must not exist.")
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DST")

    p = add("restore", "put a validated backup in place of a database not in use",
            "Validate BACKUP, copy it beside DST, and put it in place. An existing DST needs "
            "--force, must not be in use, and is moved aside with its -wal to "
            "DST.replaced-<time>, never deleted.")
    p.add_argument("backup", metavar="BACKUP")
    p.add_argument("destination", metavar="DST")
    p.add_argument("--force", action="store_true",
                   help="replace an existing DST (moved aside, not deleted)")

    p = add("salvage", "copy every row that verifies into a new database",
            "Copy every checkpoint, pending write and log event of SRC whose checksum verifies "
            "into the new database DST, and report what was skipped (exit 1 if anything was).")
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DST")


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the parsed subcommand; print its result on ``out``; return the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        _refuse_servers(args)
        return COMMANDS[args.command](args, out)
    except BrokenPipeError:
        raise  # the reader of our output went away: sqlitesaver.__main__.entry ends quietly
    except CorruptDatabaseError as exc:
        _error(err, args.command, exc)
        return 1
    except (SaverError, OSError) as exc:
        _error(err, args.command, exc)
        return 2


def _refuse_servers(args: argparse.Namespace) -> None:
    """InvalidArgumentError if an argument naming a database is a PostgreSQL URL (shown
    without its password)."""
    from .postgres import target

    for name in ("path", "source", "destination", "backup"):
        value = getattr(args, name, None)
        if isinstance(value, str) and target.is_url(value):
            try:
                server = target.describe(target.parse(value))
            except SaverError:
                server = "a PostgreSQL URL"
            raise InvalidArgumentError(
                f"{args.command} works on a SQLite file, and {server} is a PostgreSQL "
                f"server. Validate it with `{PROG} check URL`; back it up with pg_dump "
                "(README, PostgreSQL), vacuum and inspect it with the server's own tools. "
                "Nothing was opened.", path=server)


def _error(err: TextIO, command: str, exc: BaseException) -> None:
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, SaverError) and exc.filename:
        message = f"{exc.filename!r}: {exc.strerror or exc}"
    err.write(f"{PROG} {command}: error: {message}\n")


def _emit(out: TextIO, data: Any) -> None:
    json.dump(data, out, indent=2, ensure_ascii=False)
    out.write("\n")


def _write_lines(out: TextIO, lines: list[str]) -> None:
    # One write per line: a reader that stops early is noticed at once (BrokenPipeError; one
    # write of a long text into a closed pipe was seen to lose the error).
    for line in lines:
        out.write(line + "\n")


def _existing(path: str) -> str:
    """Refuse a missing path before a writable Saver would create a database there."""
    if not os.path.lexists(path):
        raise CannotOpenError(f"{path!r} does not exist (this command never creates a "
                              "database)", path=os.path.abspath(path))
    return path


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n:,} bytes ({n / size:.1f} {unit})"
    return f"{n:,} bytes"


# --- read-only ---------------------------------------------------------------------------------

def _readonly(path: str) -> Any:
    from .saver import Saver
    return Saver(path, readonly=True)


def _inspect(args: argparse.Namespace, out: TextIO) -> int:
    with _readonly(args.path) as saver:
        data = inspection.summary(saver)
    if args.json:
        _emit(out, data)
        return 0
    db, files, totals = data["database"], data["files"], data["totals"]
    free = db["freelist_count"]
    lines = [
        data["path"],
        f"  file          {_bytes(files['database_bytes'])}: {db['page_count']:,} pages of "
        f"{db['page_size']} bytes, {free:,} free"
        + (f" ({100 * free / db['page_count']:.1f}%)" if db["page_count"] else ""),
        f"  -wal          {_bytes(files['wal_bytes'])}",
        f"  schema        version {data['schema_version']} (application_id "
        f"0x{db['application_id']:08x}: sqlitesaver)",
        f"  file settings journal_mode={db['journal_mode']} page_size={db['page_size']} "
        f"auto_vacuum={db['auto_vacuum']} encoding={db['encoding']}",
        "  connection    " + " ".join(f"{k}={v}" for k, v in data["settings"].items())
        + " (as a Saver's read connection has them)",
        f"  contents      {totals['threads']:,} thread(s): {totals['checkpoints']:,} "
        f"checkpoint(s), {totals['pending_writes']:,} pending write(s), "
        f"{totals['log_events']:,} log event(s); payloads {_bytes(totals['payload_bytes'])}",
        f"  next ids      checkpoint {data['next_checkpoint_id']}, log seq "
        f"{data['next_log_seq']}",
    ]
    if free and free * 10 >= db["page_count"]:
        lines.append(f"  hint          {_bytes(data['free_bytes'])} are free pages: new writes "
                     f"reuse them; '{PROG} vacuum PATH' gives them back to the filesystem")
    threads = data["threads"]
    if threads:
        header = ("thread", "namespaces", "checkpoints", "writes", "log", "payload bytes",
                  "newest checkpoint", "newest at")
        rows = [(t["thread_id"], str(t["namespaces"]), f"{t['checkpoints']:,}",
                 f"{t['pending_writes']:,}", f"{t['log_events']:,}",
                 f"{t['payload_bytes']:,}", t["newest_checkpoint_id"] or "-",
                 t["newest_at"] or "-") for t in threads]
        lines += ["", *_table(header, rows)]
    _write_lines(out, lines)
    return 0


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return ["  " + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
            for row in (header, *rows)]


def _history(args: argparse.Namespace, out: TextIO) -> int:
    damaged: list[dict] = []
    with _readonly(args.path) as saver:
        rows = inspection.history(saver, args.thread, namespace=args.namespace,
                                  limit=args.limit, damaged=damaged)
        if args.json:
            listed = list(rows)
            status = 1 if damaged else 0
            _emit(out, {"path": os.path.abspath(args.path), "thread_id": args.thread,
                        "checkpoints": listed, "damaged": damaged, "exit_status": status})
            return status
        # Streamed, one line at a time: a long history starts printing at once, and a reader
        # that stops early (| head) is noticed at the next line.
        count = 0
        for row in rows:
            if not count:
                out.write(_HISTORY.format("checkpoint", "namespace", "created at", "parent",
                                          "writes", "metadata").rstrip() + "\n")
            count += 1
            out.write(_HISTORY.format(
                row["checkpoint_id"], row["namespace"] or "''", row["created_at"],
                row["parent_id"] or "-", row["pending_writes"],
                _short(json.dumps(row["metadata"], ensure_ascii=False), 60)).rstrip() + "\n")
    for d in damaged:
        out.write(f"  DAMAGED checkpoint {d['checkpoint_id']}: {d['error']}\n")
    if not count and not damaged:
        out.write(f"thread {args.thread!r} has no checkpoints in {args.path!r}\n")
        return 0
    out.write(f"  {count} checkpoint(s)" + (f", {len(damaged)} damaged and skipped"
                                            if damaged else "") + "\n")
    return 1 if damaged else 0


_HISTORY = "  {:<16}  {:<9}  {:<32}  {:<16}  {:>6}  {}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def _show(args: argparse.Namespace, out: TextIO) -> int:
    with _readonly(args.path) as saver:
        found = saver.get(args.thread, args.checkpoint_id, namespace=args.namespace)
    if found is None:
        what = (f"checkpoint {args.checkpoint_id!r}" if args.checkpoint_id else
                "no checkpoint") + f" of thread {args.thread!r}"
        where = f" in namespace {args.namespace!r}" if args.namespace else ""
        raise InvalidArgumentError(f"{what}{where} is not in {args.path!r}"
                                   if args.checkpoint_id else
                                   f"thread {args.thread!r}{where} has no checkpoints in "
                                   f"{args.path!r}", path=args.path)
    _emit(out, inspection.checkpoint_dict(found, shorten=not args.json))
    return 0


# --- writes ------------------------------------------------------------------------------------

def _free_space(saver: Any) -> tuple[int, int, int]:
    from .sqlite.reads import _Read
    with _Read(saver, "reading the free space") as read:
        return tuple(read.conn.execute(f"PRAGMA {name}").fetchone()[0]  # type: ignore
                     for name in ("freelist_count", "page_count", "page_size"))


def _space_note(path: str, free: int, pages: int, page_size: int) -> str:
    if not free:
        return f"The file keeps its size, {_bytes(pages * page_size)}; no page became free."
    return (f"The file keeps its size, {_bytes(pages * page_size)}: {free:,} of its "
            f"{pages:,} pages are free, and new writes reuse them. To give them back to the "
            f"filesystem, stop the processes using it and run '{PROG} vacuum {path}'.")


def _prune(args: argparse.Namespace, out: TextIO) -> int:
    from .saver import Saver
    with Saver(_existing(args.path)) as saver:
        deleted = saver.prune(args.thread, keep_last=args.keep_last)
        free, pages, page_size = _free_space(saver)
    if args.json:
        _emit(out, {"path": saver.path, "thread_id": args.thread, "keep_last": args.keep_last,
                    "deleted": deleted, "free_pages": free, "page_count": pages,
                    "page_size": page_size})
    else:
        out.write(f"pruned {deleted:,} checkpoint(s) of thread {args.thread!r}, keeping the "
                  f"newest {args.keep_last} of each namespace. "
                  f"{_space_note(args.path, free, pages, page_size)}\n")
    return 0


def _delete(args: argparse.Namespace, out: TextIO) -> int:
    from .saver import Saver
    with Saver(_existing(args.path)) as saver:
        deleted = saver.delete_thread(args.thread)
        free, pages, page_size = _free_space(saver)
    if args.json:
        _emit(out, {"path": saver.path, "thread_id": args.thread, "deleted": deleted,
                    "free_pages": free, "page_count": pages, "page_size": page_size})
    else:
        out.write(f"deleted thread {args.thread!r}: {deleted:,} checkpoint(s) with their "
                  f"pending writes, and its log. "
                  f"{_space_note(args.path, free, pages, page_size)}\n")
    return 0


def _vacuum(args: argparse.Namespace, out: TextIO) -> int:
    from .vacuum import vacuum
    report = vacuum(_existing(args.path))
    status = report.check.exit_status
    if args.json:
        _emit(out, dict(report.as_dict(), exit_status=status))
    else:
        smaller = 1 - report.bytes_after / report.bytes_before if report.bytes_before else 0
        out.write(f"vacuumed {args.path}: {report.bytes_before:,} -> {report.bytes_after:,} "
                  f"bytes ({100 * smaller:.1f}% smaller; {report.free_pages_before:,} of "
                  f"{report.pages_before:,} pages were free) in {report.seconds:.2f} s; "
                  f"check: {report.check.result}\n")
        if not report.check.ok:
            from .check import format_report
            out.write(format_report(report.check) + "\n")
    return status


def _backup(args: argparse.Namespace, out: TextIO) -> int:
    from .backup import backup
    report = backup(args.source, args.destination)
    if args.json:
        _emit(out, report.as_dict())
    else:
        out.write(f"backed up {args.source} to {args.destination}: {_bytes(report.bytes)}, "
                  f"{report.pages:,} pages, one consistent snapshot, in "
                  f"{report.seconds:.2f} s; validated: {report.check.result}\n")
    return 0


def _restore(args: argparse.Namespace, out: TextIO) -> int:
    from .backup import restore
    report = restore(args.backup, args.destination, force=args.force)
    if args.json:
        _emit(out, report.as_dict())
    else:
        moved = (f"; the database that was there is now {report.replaced} (with its -wal, if "
                 "any)" if report.replaced else "")
        out.write(f"restored {args.backup} to {args.destination}: {_bytes(report.bytes)}, "
                  f"validated: {report.check.result}{moved}\n")
    return 0


def _salvage(args: argparse.Namespace, out: TextIO) -> int:
    from .salvage import salvage
    report = salvage(args.source, args.destination)
    status = 0 if report.complete else 1
    if args.json:
        _emit(out, dict(report.as_dict(), exit_status=status))
        return status
    copied = report.copied
    lines = [f"salvaged {args.source} into {args.destination}: copied "
             f"{copied['checkpoints']:,} checkpoint(s), {copied['writes']:,} pending write(s), "
             f"{copied['log']:,} log "
             f"event(s); validated: {report.check.result if report.check else '-'}"]
    for s in report.skipped:
        if s["table"] == "checkpoints":
            lines.append(f"  SKIPPED checkpoint {s['checkpoint_id']} of thread "
                         f"{s['thread_id']!r}" + (f" (namespace {s['namespace']!r})"
                                                  if s["namespace"] else "")
                         + (f" with its {s['writes_skipped']} pending write(s)"
                            if s["writes_skipped"] else "") + f": {s['why']}")
        elif s["table"] == "writes":
            lines.append(f"  SKIPPED pending write ({s['task_id']!r}, {s['index']}) of "
                         f"checkpoint {s['checkpoint_id']} of thread {s['thread_id']!r}: "
                         f"{s['why']}")
        else:
            lines.append(f"  SKIPPED log event {s['seq']} of thread {s['thread_id']!r}: "
                         f"{s['why']}")
    for u in report.unreadable:
        lines.append(f"  UNREADABLE {u['table']} with seq above {u['after_seq']} and below "
                     f"{u['before_seq'] if u['before_seq'] is not None else 'the end'}: "
                     f"{u['why']}")
    for d in report.detached:
        lines.append(f"  detached checkpoint {d['checkpoint_id']} of thread "
                     f"{d['thread_id']!r} from its skipped parent {d['parent_id']}")
    lines.append("  complete: nothing was skipped" if report.complete else
                 f"  {len(report.skipped)} row(s) skipped, {len(report.unreadable)} unreadable "
                 "range(s)")
    _write_lines(out, lines)
    return status


COMMANDS = {"inspect": _inspect, "history": _history, "show": _show, "prune": _prune,
            "delete": _delete, "vacuum": _vacuum, "backup": _backup, "restore": _restore,
            "salvage": _salvage}
