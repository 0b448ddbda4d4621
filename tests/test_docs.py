"""The README's commands are the ones CI runs, and the documented API exists."""

from __future__ import annotations

import ast
import importlib.util
import argparse
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
import tarfile

import pytest

import sqlitesaver
from sqlitesaver import Saver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        return f.read()


def _commands() -> list[str]:
    return re.findall(r"```\n(python3 -m venv [^\n]+)\n```", _readme())


def test_ci_runs_exactly_the_readme_test_command():
    commands = [c for c in _commands() if "pytest" in c]
    assert len(commands) == 1, commands
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci_lines = f.read().splitlines()
    assert commands[0] in ci_lines


def test_readme_main_command_runs(tmp_path):
    (main,) = [c for c in _commands() if "pytest" not in c]
    module_call = main.split(".venv/bin/python ", 1)[1]
    assert module_call.split()[:3] == ["-m", "sqlitesaver.torture", "--iterations"]
    args = module_call.split()[2:]
    assert args == ["--iterations", "50"]
    args[1] = "3"  # the same command, shorter: the full run is in research/
    result = subprocess.run([sys.executable, "-m", "sqlitesaver.torture", *args, "--seed", "9"],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO),
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS (seed 9)" in result.stdout


def test_readme_torture_options_are_the_ones_the_cli_accepts():
    section = _section("Crash torture")
    usage = subprocess.run([sys.executable, "-m", "sqlitesaver.torture", "--help"],
                           capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONPATH=REPO)).stdout
    accepted = set(re.findall(r"--[a-z][a-z-]*", usage)) - {"--help", "--writer"}
    (synopsis,) = re.findall(r"```\n(python -m sqlitesaver.torture .+?)\n```", section, re.S)
    assert set(re.findall(r"--[a-z][a-z-]*", synopsis)) == accepted


def test_demo_still_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sqlitesaver", "demo", str(tmp_path / "d.db"),
                             "--transitions", "20"], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 0, result.stderr
    assert "present and whole" in result.stdout


def test_every_documented_method_exists():
    documented = set(re.findall(r"^\| `(\w+)\(", _readme(), flags=re.M))
    assert documented >= {"put", "put_writes", "get", "list", "append_log", "read_log",
                          "delete_thread", "prune", "threads", "transaction", "settings"}
    for name in documented:
        assert callable(getattr(Saver, name)), name


def test_every_exception_in_the_error_table_is_exported_and_vice_versa():
    table = set(re.findall(r"^\| `(\w+Error)`", _readme(), flags=re.M))
    exported = {n for n in sqlitesaver.__all__ if n.endswith("Error")}
    # the base and the group classes are documented in the text above the table
    assert table == exported - {"SaverError", "DatabaseFileError", "UsageError"}
    for name in table:
        assert issubclass(getattr(sqlitesaver, name), sqlitesaver.SaverError)


def _section(title: str) -> str:
    return _readme().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_check_command_is_the_one_the_cli_accepts(tmp_path):
    section = _section("Checking a database")
    (command,) = re.findall(r"```\n(python -m sqlitesaver check [^\n]+)\n```", section)
    env = dict(os.environ, PYTHONPATH=REPO)
    usage = subprocess.run([sys.executable, "-m", "sqlitesaver", "check", "--help"],
                           capture_output=True, text=True, env=env, check=True).stdout
    accepted = set(re.findall(r"--[a-z][a-z-]*", usage)) - {"--help"}
    assert set(re.findall(r"--[a-z][a-z-]*", command)) == accepted
    assert set(re.findall(r"--[a-z][a-z-]*", section)) == accepted
    for status in ("**0**", "**1**", "**2**"):
        assert status in section
    # the precedence between several paths, and the script's no-path mode
    assert "**1** if any database is damaged, else **2** if any path was\nunusable" in section
    assert "run with no path, the script performs one\nsimulated crash-recovery cycle" in section
    with open(os.path.join(REPO, "scripts", "README.md"), encoding="utf-8") as f:
        scripts_readme = f.read()
    assert "With no path, it performs one simulated crash-recovery cycle" in scripts_readme
    assert "--require-saver" not in section + scripts_readme
    # the documented command, every option given, on a real database
    path = str(tmp_path / "d.db")
    Saver(path).close()
    args = [path if word == "PATH" else word.strip("[]")
            for word in command.split()[4:] if word not in ("[PATH", "...]")]
    result = subprocess.run([sys.executable, "-m", "sqlitesaver", "check", *args],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"ok": true' in result.stdout


def test_every_script_is_documented_and_executable():
    scripts = os.path.join(REPO, "scripts")
    with open(os.path.join(scripts, "README.md"), encoding="utf-8") as f:
        documented = set(re.findall(r"^## `([^`]+)`", f.read(), flags=re.M))
    present = set(os.listdir(scripts)) - {"README.md"}
    assert documented == present
    for name in present:
        assert os.access(os.path.join(scripts, name), os.X_OK), name
    assert "scripts/validate_sqlite_integrity.sh" in _section("Checking a database")


def test_every_subpackage_is_installed():
    # CI and the tests run from the source tree, which would hide a subpackage that
    # `pip install .` leaves out (sqlitesaver.torture once was): compare with pyproject.toml.
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        (listed,) = re.findall(r"^packages = \[(.*)\]$", f.read(), flags=re.M)
    declared = set(re.findall(r'"([\w.]+)"', listed))
    root = os.path.join(REPO, "sqlitesaver")
    present = {os.path.relpath(d, REPO).replace(os.sep, ".")
               for d, _, files in os.walk(root) if "__init__.py" in files}
    assert declared == present


# --- pip install '.[langgraph]' ------------------------------------------------------------------

def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(source: str) -> set[str]:
    """The absolute module names a piece of Python source imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _owner(module: str) -> str:
    """The installed distribution whose files hold ``module`` (several may share a namespace
    package such as ``langgraph``: the file decides)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed: install '.[test]' to run this test"
    origin = spec.origin if spec.has_location else next(iter(spec.submodule_search_locations))
    origin = os.path.realpath(origin)
    # packages_distributions() maps a namespace package such as langgraph to nothing on
    # Python 3.10 (seen in CI): then every installed distribution is a candidate.
    candidates = metadata.packages_distributions().get(module.split(".")[0], []) or \
        sorted({dist.metadata["Name"] for dist in metadata.distributions()})
    for name in candidates:
        files = metadata.distribution(name).files or []
        if any(os.path.realpath(metadata.distribution(name).locate_file(f)) == origin
               for f in files):
            return _normalized(name)
    raise AssertionError(f"no installed distribution holds {module} ({origin}): {candidates}")


def _required(names: set[str]) -> set[str]:
    """``names`` and every distribution they require, transitively (extras not requested are
    left out; markers are evaluated for this interpreter)."""
    from packaging.requirements import Requirement  # LangGraph's own dependencies bring it

    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_normalized(requirement.name))
    return seen


def test_the_langgraph_extra_brings_every_module_the_example_and_the_readme_import():
    # `pip install 'sqlitesaver[langgraph]'`, as the README and the example say, must be all a
    # user installs: every module the example, the README's LangGraph snippets and the adapter
    # import comes from a distribution the extra or the core dependencies name, or one they
    # require.
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = f.read()
    declared = set()
    for block in (r"^dependencies = \[(.*?)^\]", r"^langgraph = \[(.*?)^\]"):
        (listed,) = re.findall(block, pyproject, flags=re.M | re.S)
        listed = re.sub(r"#[^\n]*", "", listed)
        declared |= {_normalized(re.match(r"[A-Za-z0-9_.-]+", item).group())
                     for item in re.findall(r'"([^"]+)"', listed)}
    assert "langgraph-checkpoint" in declared, declared
    sources = {"README.md": "\n".join(re.findall(r"```python\n(.*?)```", _section("LangGraph"),
                                                  flags=re.S))}
    for path in [os.path.join("examples", "langgraph_agent.py"),
                 *(os.path.join("sqlitesaver", "langgraph", name) for name in
                   sorted(os.listdir(os.path.join(REPO, "sqlitesaver", "langgraph")))
                   if name.endswith(".py"))]:
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            sources[path] = f.read()
    assert "sqlitesaver.langgraph" in _imports(sources["README.md"])
    provided = _required(declared)
    checked = set()
    for path, source in sources.items():
        for module in sorted(_imports(source)):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in ("__future__", "sqlitesaver"):
                continue
            owner = _owner(module)
            checked.add(owner)
            assert owner in provided, (
                f"{path} imports {module}, from the distribution {owner}, which "
                f"pip install '.[langgraph]' does not bring: {sorted(declared)}")
    assert {"langgraph", "langgraph-checkpoint", "langchain-core"} <= checked, checked
def test_py_typed_and_license_are_shipped_in_the_wheel_and_the_sdist(tmp_path):
    # Issue #19: no py.typed, so mypy ignored the annotations. A wheel holds what build_py
    # puts in build/lib (building the wheel itself needs the `wheel` package, not always
    # installed); the sdist is built by setuptools' own backend. Both from a copy of the tree.
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "sqlitesaver"), src / "sqlitesaver",
                    ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q",
                            "build_py", "--build-lib", str(tmp_path / "lib")],
                           cwd=src, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "lib" / "sqlitesaver" / "py.typed").is_file()
    built = subprocess.run([sys.executable, "-c", "import sys; from setuptools import "
                            "build_meta; print(build_meta.build_sdist(sys.argv[1]))",
                            str(tmp_path / "dist")], cwd=src, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    root = f"sqlitesaver-{sqlitesaver.__version__}"
    with tarfile.open(tmp_path / "dist" / built.stdout.split()[-1]) as sdist:
        names = set(sdist.getnames())
        pkg_info = sdist.extractfile(f"{root}/PKG-INFO").read().decode()
    # The license as PEP 639 metadata, which pip and PyPI show.
    assert "License-Expression: MIT" in pkg_info.splitlines(), pkg_info
    assert {f"{root}/sqlitesaver/py.typed", f"{root}/LICENSE"} <= names
    # The optional C extensions (setup.py): their sources, so that pip can build them from
    # the sdist.
    assert {f"{root}/setup.py", f"{root}/sqlitesaver/codec/_scan.c",
            f"{root}/sqlitesaver/_shallow.c"} <= names


def test_license_and_changelog():
    with open(os.path.join(REPO, "LICENSE"), encoding="utf-8") as f:
        license_text = f.read()
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 the sqlitesaver authors\n")
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
        pyproject = f.read()
    # PEP 639's SPDX string (the `{ text = ... }` table is deprecated: setuptools refuses it
    # after 2027-02-18).
    assert 'license = "MIT"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    assert f'version = "{sqlitesaver.__version__}"' in pyproject
    with open(os.path.join(REPO, "CHANGELOG.md"), encoding="utf-8") as f:
        changelog = f.read()
    versions = re.findall(r"^## (.+)$", changelog, flags=re.M)
    assert versions[0] == "Unreleased" and sqlitesaver.__version__ in versions


def test_every_subcommand_and_its_options_are_documented():
    # Issue #19: the command line had subcommands the README did not know. Each subcommand
    # the parser has needs a synopsis line in a README code block, naming every option and
    # positional argument it takes; --version too.
    from sqlitesaver.__main__ import build_parser
    parser = build_parser()
    (subcommands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    blocks, inside = [], False
    for line in _readme().splitlines():  # the lines of every fenced code block
        if line.startswith("```"):
            inside = not inside
        elif inside:
            blocks.append(line)
    assert "python -m sqlitesaver --version" in blocks
    assert set(subcommands.choices) >= {"demo", "check", "inspect", "history", "show", "prune",
                                        "delete", "vacuum", "backup", "restore", "salvage"}
    for name, sub in subcommands.choices.items():
        lines = [b for b in blocks if b.startswith(f"python -m sqlitesaver {name} ")]
        assert len(lines) == 1, f"{name}: {len(lines)} synopsis lines in README code blocks"
        (synopsis,) = lines
        options = {o for a in sub._actions for o in a.option_strings
                   if o.startswith("--") and o != "--help"}
        assert set(re.findall(r"--[a-z][a-z-]*", synopsis)) == options, name
        for action in sub._actions:
            if not action.option_strings:
                word = action.metavar or action.dest.upper()
                assert re.search(rf"\b{re.escape(word)}\b", synopsis.split(" ", 3)[3]), \
                    f"{name}: {word} is not in its synopsis {synopsis!r}"


def test_the_readme_names_the_commands_wherever_it_says_restore_from_a_backup():
    lines = [line for line in _readme().splitlines() if "restore from a backup" in line]
    assert len(lines) >= 2
    for line in lines:
        for command in ("python -m sqlitesaver restore", "python -m sqlitesaver backup",
                        "python -m sqlitesaver salvage"):
            assert command in line, line
