"""The operating subcommands of ``python -m sqlitesaver``, each run as a user runs it: a child
process with ``PYTHONPATH`` set to this tree. ``--json`` output must parse; errors are one line
on stderr naming the file, never a traceback; read-only subcommands never create a file.

SQLite by nature: the subcommands that work on files.
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
import subprocess
import sys
import uuid

import pytest

from sqlitesaver import Saver
from sqlitesaver.inspection import SHOWN_BYTES, jsonable
from test_bad_input import MARKER, child_env, small_db
from test_skip_damaged import flip_marker_byte

# Run once per CI, in the main pass (pyproject.toml, the "once" marker).
pytestmark = pytest.mark.once

EVERY = ["demo", "check", "inspect", "history", "show", "prune", "delete", "vacuum", "backup",
         "restore", "salvage"]


def cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqlitesaver", *args], capture_output=True,
                          text=True, env=child_env(), timeout=120, cwd=cwd)


def one_line_error(done: subprocess.CompletedProcess, command: str, *words: str) -> None:
    assert done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"python -m sqlitesaver {command}: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def test_version():
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("sqlitesaver 0.1.0 (APSW ") and "SQLite 3." in done.stdout


def test_help_lists_every_subcommand():
    done = cli("--help")
    assert done.returncode == 0
    for command in EVERY:
        assert f"    {command} " in done.stdout, command


def test_demo_refuses_zero_transitions(tmp_path):
    done = cli("demo", str(tmp_path / "d.db"), "--transitions", "0")
    assert done.returncode == 2 and "at least 1" in done.stderr
    assert os.listdir(tmp_path) == []


def test_inspect(tmp_path):
    path = str(tmp_path / "d.db")
    small_db(path)
    done = cli("inspect", path, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["schema_version"] == 3 and data["database"]["journal_mode"] == "wal"
    assert data["totals"] == {"checkpoints": 4, "pending_writes": 2, "log_events": 1,
                              "payload_bytes": data["totals"]["payload_bytes"], "threads": 2}
    t, u = data["threads"]
    assert (t["thread_id"], t["namespaces"], t["checkpoints"], t["pending_writes"],
            t["log_events"]) == ("t", 2, 3, 2, 1)
    assert (u["thread_id"], u["checkpoints"], u["newest_checkpoint_id"]) == \
        ("u", 1, "0000000000000004")
    assert data["settings"]["synchronous"] == 2 and data["files"]["database_bytes"] > 0
    done = cli("inspect", path)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0] == path and lines[3].startswith("  schema        version 3")
    assert any(line.split()[:4] == ["t", "2", "3", "2"] for line in lines), done.stdout


def test_inspect_suggests_vacuum_after_a_prune(tmp_path):
    path = str(tmp_path / "d.db")
    with Saver(path) as saver:
        with saver.transaction():
            for i in range(2000):
                saver.put("t", {"i": i, "pad": "p" * 200})
    done = cli("prune", path, "t", "--keep-last", "10")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pruned 1,990 checkpoint(s) of thread 't', keeping the newest "
                                  "10 of each namespace.")
    assert f"python -m sqlitesaver vacuum {path}" in done.stdout
    done = cli("inspect", path)
    assert "  hint          " in done.stdout and "vacuum PATH" in done.stdout
    done = cli("vacuum", path, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["bytes_after"] < result["bytes_before"] / 5 and result["check"] == "ok"
    assert result["exit_status"] == 0
    done = cli("vacuum", path)
    assert done.returncode == 0 and done.stdout.startswith(f"vacuumed {path}: ")
    assert "check: ok" in done.stdout
    done = cli("inspect", path)
    assert "hint" not in done.stdout


def test_history(tmp_path):
    path = str(tmp_path / "d.db")
    ids = small_db(path)
    done = cli("history", path, "t", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [c["checkpoint_id"] for c in data["checkpoints"]] == [ids["ns"], ids["b"], ids["a"]]
    b = data["checkpoints"][1]
    assert b["parent_id"] == ids["a"] and b["pending_writes"] == 2 and b["metadata"] == \
        {"step": 2}
    assert data["damaged"] == [] and data["exit_status"] == 0
    done = cli("history", path, "t", "--namespace", "", "--limit", "1")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["checkpoint", "namespace"]
    assert lines[1].split()[0] == ids["b"] and lines[-1] == "  1 checkpoint(s)"
    done = cli("history", path, "nobody")
    assert done.returncode == 0 and "has no checkpoints" in done.stdout


def test_history_reports_a_damaged_checkpoint_and_exits_1(tmp_path):
    path = str(tmp_path / "d.db")
    with Saver(path) as saver:
        good = saver.put("t", {"ok": True}).checkpoint_id
        bad = saver.put("t", {"m": MARKER}).checkpoint_id
    flip_marker_byte(path, seed=101)
    done = cli("history", path, "t")
    assert done.returncode == 1
    assert f"  DAMAGED checkpoint {bad}: " in done.stdout and good in done.stdout
    data = json.loads(cli("history", path, "t", "--json").stdout)
    assert [d["checkpoint_id"] for d in data["damaged"]] == [bad]
    assert data["exit_status"] == 1
    done = cli("show", path, "t", bad)
    assert done.returncode == 1
    one_line_error(done, "show", path, "checksum", "python -m sqlitesaver salvage")


def test_show_renders_every_type_safely(tmp_path):
    path = str(tmp_path / "d.db")
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    state = {"raw": b"\x00\x1b[31m\xff", "long": bytes(range(256)) * 2, "t": (1, "x"),
             "s": {3, 1}, "when": moment, "id": uuid.UUID(int=7), "d": decimal.Decimal("1.5"),
             "inf": float("inf"), 2: "int key"}
    with Saver(path) as saver:
        ref = saver.put("t", state, metadata={"step": 1})
        saver.put_writes("t", ref.checkpoint_id, "task", [("ch", b"\x01\x02")])
        saver.put("t", "newer")
    done = cli("show", path, "t", ref.checkpoint_id, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["checkpoint_id"] == ref.checkpoint_id and data["metadata"] == {"step": 1}
    assert data["state"] == jsonable(state)
    pairs = dict((json.dumps(k), v) for k, v in data["state"]["__dict__"])
    assert pairs['"raw"'] == {"__bytes__": "ABtbMzFt/w=="}
    assert pairs['"t"'] == {"__tuple__": [1, "x"]} and pairs['"s"'] == {"__set__": [1, 3]}
    assert pairs['"when"'] == {"__datetime__": "2026-01-02T03:04:05+00:00"}
    assert pairs['"inf"'] == {"__float__": "inf"} and pairs["2"] == "int key"
    assert len(pairs['"long"']["__bytes__"]) == 684  # --json: whole
    assert data["pending_writes"] == [{"task_id": "task", "index": 0, "channel": "ch",
                                       "task_path": "", "value": {"__bytes__": "AQI="}}]
    done = cli("show", path, "t", ref.checkpoint_id)  # for the terminal: long values cut
    assert done.returncode == 0
    assert "\x1b" not in done.stdout and "\x00" not in done.stdout
    text = json.loads(done.stdout)
    cut = dict((json.dumps(k), v) for k, v in text["state"]["__dict__"])['"long"']
    assert cut["length"] == 512 and cut["__bytes__"].endswith("...")
    assert len(cut["__bytes__"]) == len(jsonable(bytes(SHOWN_BYTES))["__bytes__"]) + 3
    latest = json.loads(cli("show", path, "t").stdout)
    assert latest["state"] == "newer"
    done = cli("show", path, "t", "0000000000000099")
    assert done.returncode == 2
    one_line_error(done, "show", "'0000000000000099'", path)


def test_jsonable_never_mistakes_a_stored_dict_for_a_tag():
    assert jsonable({"__bytes__": "x"}) == {"__dict__": [["__bytes__", "x"]]}
    assert jsonable({"a": [1, None, True]}) == {"a": [1, None, True]}
    assert jsonable(frozenset({"b", "a"})) == {"__frozenset__": ["a", "b"]}
    assert jsonable(bytearray(b"\xff")) == {"__bytearray__": "/w=="}
    assert jsonable(datetime.timedelta(days=1, microseconds=5)) == {"__timedelta__": [1, 0, 5]}
    assert jsonable(float("nan")) == {"__float__": "nan"}
    assert jsonable("x" * 1000, shorten=True).endswith("... (1000 characters)")


def test_prune_and_delete(tmp_path):
    path = str(tmp_path / "d.db")
    small_db(path)
    done = cli("prune", path, "t", "--keep-last", "1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["deleted"] == 1 and result["keep_last"] == 1  # one in each namespace kept
    done = cli("delete", path, "u", "--json")
    assert json.loads(done.stdout)["deleted"] == 1
    done = cli("delete", path, "t")
    assert done.returncode == 0 and done.stdout.startswith("deleted thread 't': 2 checkpoint(s)")
    with Saver(path) as saver:
        assert saver.threads() == []
    done = cli("prune", path, "t")
    assert done.returncode == 2 and "--keep-last" in done.stderr  # required


def test_salvage_cli(tmp_path):
    src, dst = str(tmp_path / "src.db"), str(tmp_path / "dst.db")
    with Saver(src) as saver:
        saver.put("t", {"ok": 1})
        bad = saver.put("t", {"m": MARKER}).checkpoint_id
    flip_marker_byte(src, seed=102)
    done = cli("salvage", src, dst)
    assert done.returncode == 1, done.stderr
    assert f"  SKIPPED checkpoint {bad} of thread 't': its bytes do not match" in done.stdout
    assert done.stdout.startswith(f"salvaged {src} into {dst}: copied 1 checkpoint(s)")
    done = cli("salvage", src, str(tmp_path / "again.db"), "--json")
    data = json.loads(done.stdout)
    assert done.returncode == 1 and data["complete"] is False and data["exit_status"] == 1
    assert [s["checkpoint_id"] for s in data["skipped"]] == [bad]
    done = cli("salvage", dst, str(tmp_path / "third.db"))
    assert done.returncode == 0 and "complete: nothing was skipped" in done.stdout


@pytest.mark.parametrize("args", [
    ["inspect", "{missing}"], ["history", "{missing}", "t"], ["show", "{missing}", "t"],
    ["prune", "{missing}", "t", "--keep-last", "1"], ["delete", "{missing}", "t"],
    ["vacuum", "{missing}"], ["backup", "{missing}", "{new}"], ["salvage", "{missing}", "{new}"],
    ["restore", "{missing}", "{new}"],
    ["inspect", "{text}"], ["vacuum", "{text}"], ["backup", "{text}", "{new}"],
])
def test_errors_are_one_line_and_nothing_is_created(tmp_path, args):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 10)
    names = {"missing": str(tmp_path / "missing.db"), "new": str(tmp_path / "new.db"),
             "text": str(text)}
    argv = [a.format(**names) for a in args]
    done = cli(*argv)
    assert done.returncode == 2, done.stdout + done.stderr
    one_line_error(done, argv[0], names["text"] if "{text}" in args else names["missing"])
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_a_closed_pipe_ends_quietly(tmp_path):
    path = str(tmp_path / "d.db")
    with Saver(path) as saver:
        with saver.transaction():
            for i in range(3000):  # well past a pipe's buffer of output
                saver.put("t", {"i": i}, metadata={"step": i, "note": "n" * 40})
    for args in (["history", path, "t"], ["check", "--json", path, path, path]):
        proc = subprocess.Popen([sys.executable, "-m", "sqlitesaver", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline()  # like `| head -1`
        proc.stdout.close()
        status = proc.wait(timeout=120)
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        if args[0] == "history":  # check's output may fit in the pipe before it closes
            assert status == 141
        assert status in (0, 141) and stderr == "", stderr


@pytest.mark.parametrize("args", [
    ["inspect", "{url}"], ["history", "{url}", "t"], ["show", "{url}", "t"],
    ["prune", "{url}", "t", "--keep", "1"], ["delete", "{url}", "t"], ["vacuum", "{url}"],
    ["backup", "{url}", "copy.db"], ["backup", "x.db", "{url}"], ["restore", "x.db", "{url}"],
    ["salvage", "{url}", "copy.db"]])
def test_file_subcommands_refuse_a_server_url_without_opening_it(tmp_path, args):
    """The subcommands are a SQLite file's tools: a URL is refused saying what to use, without
    the password, before anything is opened (nothing listens at that port: a connection
    attempt would fail differently, after its timeout), and no file is created."""
    url = "postgresql://app:s3cret@127.0.0.1:1/agents"
    done = cli(*[arg.format(url=url) for arg in args], cwd=str(tmp_path))
    one_line_error(done, args[0], "PostgreSQL server", "check")
    assert done.returncode == 2
    assert "s3cret" not in done.stderr and "postgresql://app@127.0.0.1:1/agents" in done.stderr
    assert os.listdir(tmp_path) == []
