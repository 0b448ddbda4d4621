"""The ceilings bench/run.py prints the put targets against (bench/core.py): BareGroupCommit and
the required-work twins built on it and on bare APSW (twin_put_op, TwinGroupCommit). A ceiling
that acknowledged rows before their COMMIT, lost some, or skipped the work it stands for
(checksums a Saver verifies, a failing member that fails alone) would overstate what a correct
store can reach, so each is held to what it claims; and bench/run.py's rows and targets.
SQLite by nature: the SQLite ceilings of bench/core.py."""

from __future__ import annotations

import os
import sys
import threading

import apsw
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import core  # noqa: E402  (bench/core.py)

THREADS, PUTS = 6, 40


def test_every_acknowledged_row_is_committed_when_put_returns(tmp_path):
    path = str(tmp_path / "group.db")
    group = core.BareGroupCommit(core.open_bare(path, "full", True))
    ready = threading.Barrier(THREADS)
    missing: list[str] = []

    def writer(index: int) -> None:
        reader = apsw.Connection(path)  # another connection sees only committed rows
        try:
            ready.wait()
            for n in range(PUTS):
                thread_id = f"w{index}-{n}"
                group.put(thread_id, b"x" * 100)
                if reader.execute("SELECT count(*) FROM t WHERE thread_id = ?",
                                  (thread_id,)).fetchone()[0] != 1:
                    missing.append(thread_id)
        finally:
            reader.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert missing == []
    assert group.rows == THREADS * PUTS
    assert group.commits < group.rows, "no batch ever held two rows: nothing was grouped"


def test_a_failed_commit_reaches_every_caller_of_its_batch(tmp_path):
    conn = core.open_bare(str(tmp_path / "group.db"), "full", True)
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON t WHEN NEW.thread_id = 'bad' "
                 "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    group = core.BareGroupCommit(conn)
    group.put("good", b"x")
    try:
        group.put("bad", b"x")
    except apsw.ConstraintError as exc:
        assert "refused" in str(exc)
    else:
        raise AssertionError("a row whose INSERT failed was acknowledged")
    assert conn.execute("SELECT thread_id FROM t").fetchall() == [("good",)]



# --- bench/core.py's twin_put_op, the ceiling of the 1-thread and 1 MiB put targets ----------

def test_the_required_work_ceiling_writes_checkpoints_the_saver_reads_back_verified(tmp_path):
    """The ceiling is only honest if it does the work it stands for: its rows are real
    checkpoints, whose checksums the Saver verifies on read and whose states decode exactly."""
    from sqlitesaver import Saver
    from sqlitesaver.errors import ChecksumError

    path = str(tmp_path / "twin.db")
    conn = core.open_twin(path, "full")
    state = core.make_state()
    op = core.twin_put_op(conn, state)
    for _ in range(3):
        op()
    conn.close()
    saver = Saver(path)
    try:
        listed = list(saver.list(core.THREAD))
        assert len(listed) == 3
        assert all(checkpoint.state == state and checkpoint.metadata == {}
                   for checkpoint in listed)
        assert sorted(c.checkpoint_id for c in listed) == [c.checkpoint_id for c in
                                                             reversed(listed)]
    finally:
        saver.close()
    # A row the twin wrote with a wrong checksum would be caught: damage one and read it.
    damaged = apsw.Connection(path)
    damaged.execute("UPDATE checkpoints SET checksum = checksum + 1 WHERE seq = "
                    "(SELECT max(seq) FROM checkpoints)")
    damaged.close()
    saver = Saver(path)
    try:
        with pytest.raises(ChecksumError):
            saver.get(core.THREAD)
    finally:
        saver.close()


def test_the_8_thread_required_work_ceiling_commits_verified_rows_and_fails_a_member_alone(
        tmp_path, hang_detector):
    from sqlitesaver import Saver, codec

    path = str(tmp_path / "twin-group.db")
    conn = core.open_twin(path, "full")
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON checkpoints WHEN NEW.thread_id = "
                 "'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END")
    group = core.TwinGroupCommit(conn)
    state = core.make_state()
    ready = threading.Barrier(THREADS)
    refused: list[str] = []

    def writer(index: int) -> None:
        ready.wait()
        for n in range(PUTS):
            thread_id = "bad" if index == 0 and n % 5 == 0 else f"w{index}"
            try:
                group.put(thread_id, codec.encode(state))
            except apsw.ConstraintError:
                refused.append(thread_id)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refused == ["bad"] * (PUTS // 5)
    assert group.commits < group.rows, "no batch ever held two rows: nothing was grouped"
    conn.execute("DROP TRIGGER refuse")
    conn.close()
    saver = Saver(path)
    try:
        for index in range(THREADS):
            stored = list(saver.list(f"w{index}"))  # every checksum verified on the way
            assert len(stored) == (PUTS - PUTS // 5 if index == 0 else PUTS)
            assert all(checkpoint.state == state for checkpoint in stored)
        assert list(saver.list("bad")) == []
    finally:
        saver.close()

# --- bench/run.py: rows with several targets, and the docstring that lists them --------------

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402

import run  # noqa: E402  (bench/run.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(key: str, rates: list[float], errors: int = 0) -> run.Config:
    config = run.Config(key, lambda seconds: None)  # never run: the rates are given
    config.rates = rates
    if errors:
        config.errors["DatabaseBusyError"] = errors
        config.first_error = "DatabaseBusyError: busy"
    return config


def _report(capsys, rows, configs):
    table = run.Bench.report(rows, configs)
    return {entry["key"]: entry for entry in table}, capsys.readouterr().out


def test_each_target_of_a_row_is_judged_against_its_own_base_with_its_own_ceiling(capsys):
    configs = {key: _config(key, rates) for key, rates in {
        "lg": [100.0, 100.0, 100.0], "ceil": [300.0, 200.0, 250.0],
        "ours": [120.0, 90.0, 110.0]}.items()}
    rows = [run.Row("ceiling row", "ceil", langgraph="lg"), run.Row("their row", "lg"),
            run.Row("our row", "ours", langgraph="lg", targets=(
                run.Target.ratio(1.0, "lg", "LangGraph", "ceil"),
                run.Target.ratio(0.6, "ceil", "ceil itself", "ceil")))]
    entries, out = _report(capsys, rows, configs)
    first, second = entries["ours"]["targets"]
    assert first["ratio_rounds"] == [1.2, 0.9, 1.1] and first["ratio"] == 1.1
    assert first["result"] == "PASS" and first["ceiling"] == 2.5
    assert first["ceiling_rounds"] == [3.0, 2.0, 2.5]
    assert first["ceiling_of"] == "ceiling row" and first["target_above_ceiling"] is False
    assert second["ratio_rounds"] == [0.4, 0.45, 0.44] and second["result"] == "FAIL"
    assert second["ceiling"] == 1.0 and second["base_of"] == "ceiling row"
    assert entries["ours"]["result"] == "FAIL"  # one target failed
    assert entries["ours"]["target"] == ">= 1x LangGraph; >= 0.6x ceil itself"
    # The table: the row's line carries its first target, a line of its own the second.
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    ours = next(i for i, line in enumerate(lines) if line.startswith("| our row "))
    cells = [cell.strip() for cell in lines[ours].split("|")[1:-1]]
    assert cells[-4:] == [">= 1x LangGraph", "1.10x", "2.50x", "PASS"]
    cells = [cell.strip() for cell in lines[ours + 1].split("|")[1:-1]]
    assert cells[:6] == [""] * 6
    assert cells[-4:] == [">= 0.6x ceil itself", "0.44x", "1.00x", "FAIL"]
    # The ceilings section: one line per target, each with its own ceiling.
    assert "  our row: target >= 1x LangGraph: 1.10x, PASS; ceiling 2.50x (ceiling row)\n" \
        in out
    assert ("  our row: target >= 0.6x ceil itself: 0.44x, FAIL; ceiling 1.00x (ceiling row, "
            "the target's own base)\n") in out
    # The per-round figures show the ratio to a base that is not one of the two columns.
    assert "  our row: 120 90 110; vs LangGraph 1.20 0.90 1.10; vs ceil itself 0.40 0.45 0.44" \
        in out


def test_a_target_above_its_ceiling_an_unmeasured_base_and_an_errors_target(capsys):
    configs = {"ours": _config("ours", [50.0, 60.0]), "ceil": _config("ceil", [80.0, 80.0]),
               "base": _config("base", [100.0, 100.0]),
               "procs": _config("procs", [10.0, 10.0], errors=3)}
    rows = [run.Row("base row", "base"), run.Row("ceiling row", "ceil"),
            run.Row("our row", "ours", targets=(
                run.Target.ratio(0.9, "base", "base", "ceil"),
                run.Target.ratio(1.0, "absent", "LangGraph", "ceil"))),
            run.Row("processes", "procs", targets=(run.Target.errors(0),)),
            run.Row("not here", "absent", targets=(run.Target.ratio(1.0, "base", "b", "ceil"),))]
    entries, out = _report(capsys, rows, configs)
    above, skipped = entries["ours"]["targets"]
    assert above["result"] == "FAIL" and above["ceiling"] == 0.8
    assert above["target_above_ceiling"] is True
    assert skipped["result"] == "SKIP" and "ratio" not in skipped and "ceiling" not in skipped
    assert entries["ours"]["result"] == "FAIL"
    (errors,) = entries["procs"]["targets"]
    assert errors == {"target": "0 errors", "kind": "errors", "value": 0, "errors": 3,
                      "result": "FAIL"}
    assert entries["absent"]["result"] == run.NOT_INSTALLED
    assert entries["absent"]["targets"][0]["result"] == "SKIP"
    assert "; the target is above it" in out
    assert "target >= 1x LangGraph: not measured, SKIP; ceiling not measured" in out
    json.dumps(list(entries.values()))  # the --json output


def test_rows_naming_a_configuration_never_measured_stop_the_run():
    rows = [run.Row("theirs", "lg"),
            run.Row("ours", "ours", targets=(run.Target.ratio(1.0, "lg", "LangGraph",
                                                              "typo"),))]
    configs = {"ours": _config("ours", [1.0]), "lg": _config("lg", [1.0])}
    run.Bench.check_rows(rows, configs, {"typo"})  # not installed: allowed
    try:
        run.Bench.check_rows(rows, configs, set())
    except SystemExit as exc:
        assert "typo" in str(exc)
    else:
        raise AssertionError("a row named a configuration that was never measured")
    try:
        run.Bench.check_rows(rows, {**configs, "extra": _config("extra", [1.0])}, {"typo"})
    except SystemExit as exc:
        assert "extra" in str(exc)
    else:
        raise AssertionError("a configuration was measured that no row shows")


def _documented_targets() -> list[str]:
    """The docstring's list of targets, one item per row, whitespace collapsed."""
    section = run.__doc__.split("Per row, each target (ceiling):", 1)[1].split("\n\n")[1]
    return [" ".join(item.split()) for item in re.split(r"^- ", section, flags=re.M) if item]


def test_the_docstring_lists_every_target_and_ceiling_the_table_prints():
    rows = run.Bench.rows()
    labels = {row.key: row.label for row in rows}
    expected = []
    for row in rows:
        if row.targets:
            expected.append(f"{row.label}: " + "; ".join(
                target.text() + (f" (ceiling: {labels[target.ceiling]})" if target.ceiling
                                 else "") for target in row.targets))
    assert _documented_targets() == expected


def test_issue_15_targets():
    targets = {row.key: [(t.kind, t.value, t.base, t.ceiling) for t in row.targets]
               for row in run.Bench.rows() if row.targets}
    ratio = "ratio"
    assert targets == {
        "saver1": [(ratio, 1.0, "lg1", "twin1"), (ratio, 0.85, "bare_packb", "twin1")],
        "saver8": [(ratio, 2.2, "lg8", "twin_group8"),
                   (ratio, 0.6, "bare_group8_packb", "twin_group8")],
        "p20x1": [("errors", 0, None, None)],
        "saver_get": [(ratio, 0.9, "lg_get", "bare_get")],
        "ad_get": [(ratio, 0.9, "lg_get", "bare_get")],
        "saver_get_w": [(ratio, 0.9, "lg_get_w", "bare_get_w")],
        "ad_get_w": [(ratio, 0.9, "lg_get_w", "bare_get_w")],
        "saver_list": [(ratio, 1.2, "lg_list", "bare_list")],
        "saver_big": [(ratio, 1.0, "lg_big", "twin_big")],
        "saver_steps_sync": [(ratio, 1.0, "lg_steps_sync", "barecp_steps_sync")],
        "saver_steps_async": [(ratio, 1.0, "lg_steps_async", "barecp_steps_async")],
        "saver_steps8_sync": [(ratio, 1.2, "lg_steps8_sync", "barecp_steps8_sync")],
        "saver_steps8_async": [(ratio, 1.2, "lg_steps8_async", "barecp_steps8_async")]}


@pytest.mark.tooling
def test_a_short_run_measures_every_row_and_judges_every_target(tmp_path):
    """The whole bench, short (one round of --quick's 0.15 s runs: much shorter and a worker
    woken late on a busy machine may find the deadline passed and complete nothing): every
    row is measured (LangGraph is installed with the test extra) and every target judged
    against a measured ceiling."""
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run.py"), "--quick",
                           "--rounds", "1", "--list-size", "100",
                           "--dir", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["key"] for row in rows] == [row.key for row in run.Bench.rows()]
    for row in rows:
        assert row["rate"] is not None and row["rate"] > 0, row
        for verdict in row.get("targets", ()):
            assert verdict["result"] in ("PASS", "FAIL"), (row["key"], verdict)
            if verdict["kind"] == "ratio":
                assert verdict["ceiling"] > 0, (row["key"], verdict)
    assert os.listdir(tmp_path) == ["bench.json"]  # the run's databases are gone


def test_a_base_that_does_less_is_a_ceiling_too(capsys):
    """A ceiling baseline slower than LangGraph's saver does not make a 1x-LangGraph target
    'above the ceiling': LangGraph's saver itself does less than the row, at 1.00x."""
    configs = {"lg": _config("lg", [100.0, 100.0]), "ceil": _config("ceil", [90.0, 95.0]),
               "ours": _config("ours", [80.0, 85.0])}
    rows = [run.Row("their row", "lg"), run.Row("ceiling row", "ceil", langgraph="lg"),
            run.Row("our row", "ours", langgraph="lg", targets=(
                run.Target.ratio(1.0, "lg", "LangGraph", "ceil", base_does_less=True),
                run.Target.ratio(0.9, "lg", "LangGraph", "ceil"),
                run.Target.ratio(1.1, "lg", "LangGraph", "ceil", base_does_less=True)))]
    entries, out = _report(capsys, rows, configs)
    at_one, plain, above = entries["ours"]["targets"]
    assert at_one["ceiling"] == 0.925 and at_one["target_above_ceiling"] is False
    assert plain["target_above_ceiling"] is False  # 0.9 < 0.925 either way
    assert above["target_above_ceiling"] is True  # above 1.00x and above 0.925x
    assert ("our row: target >= 1x LangGraph: 0.82x, FAIL; ceiling 0.93x (ceiling row); "
            "above it, but LangGraph's saver itself (1.00x) does less work than the row: the "
            "target is not above every ceiling\n") in out
    assert "target >= 1.1x LangGraph: 0.82x, FAIL; ceiling 0.93x (ceiling row); the target " \
        "is above it\n" in out
