"""Unusual paths and files (issue #13, class 4): each gets a typed error that names the path,
says what it is and what to do, and changes nothing on disk; a symbolic link to a database is
followed; a long but valid name can be created.

Opening a FIFO blocks in open(), so every open of one runs in a child process with a timeout:
a regression fails the test instead of hanging the suite.

SQLite by nature: file paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap

import pytest

import sqlitesaver
from sqlitesaver import CannotOpenError, InvalidArgumentError, Saver, SaverError, opening

# Run once per CI, in the main pass (pyproject.toml, the "once" marker).
pytestmark = pytest.mark.once

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sqlitesaver.__file__)))
#: NAME_MAX on the test filesystems (ext4, tmpfs, btrfs, xfs); a -wal adds 4 bytes.
NAME_MAX = 255


def child_env() -> dict[str, str]:
    return dict(os.environ,
                PYTHONPATH=SOURCE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def tree(directory: str) -> dict[str, object]:
    """Every entry of ``directory`` (recursively) with what it is: a regular file's digest, a
    link's target, a directory's or special file's type. Reads only regular files: opening a
    FIFO would block."""
    found: dict[str, object] = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    found[full] = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                found[full] = ("link", os.readlink(full))
            else:
                found[full] = ("mode", stat.S_IFMT(st.st_mode))
    return found


_OPEN_IN_CHILD = textwrap.dedent("""
    import json, sys
    from sqlitesaver import Saver, SaverError
    try:
        Saver(sys.argv[1], readonly=sys.argv[2] == "1").close()
        print(json.dumps({"error": None}))
    except SaverError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc), "path": exc.path}))
""")


def open_in_child(path: str, readonly: bool = False) -> dict:
    """Open ``path`` with a Saver in a child process (a FIFO would block this one)."""
    try:
        done = subprocess.run([sys.executable, "-c", _OPEN_IN_CHILD, path,
                               "1" if readonly else "0"],
                              capture_output=True, text=True, env=child_env(), timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Saver({path!r}) blocked for 30 s")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def refused(path: str, exc_class: type, *phrases: str, readonly: bool = False) -> str:
    """Open ``path`` twice: exactly ``exc_class``, naming the path and saying ``phrases``,
    the same message both times. Returns it."""
    messages = []
    for _ in range(2):
        with pytest.raises(SaverError) as info:
            Saver(path, readonly=readonly).close()
        assert type(info.value) is exc_class, f"{type(info.value).__name__}: {info.value}"
        assert info.value.path == path
        assert repr(path) in str(info.value), str(info.value)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    for phrase in phrases:
        assert phrase in messages[0], messages[0]
    return messages[0]


def run_check(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "sqlitesaver", "check", *args],
                              capture_output=True, text=True, env=child_env(), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"check {args} blocked for 60 s")


# --- things that are not a regular file -------------------------------------------------------

def _fifo(path: str) -> None:
    os.mkfifo(path)


def _socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    return sock


SPECIAL = {
    "fifo": (_fifo, "is a FIFO (named pipe), not a database file"),
    "socket": (_socket, "is a socket, not a database file"),
    "directory": (os.mkdir, "is a directory, not a database file"),
}


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
@pytest.mark.parametrize("kind", list(SPECIAL))
def test_a_special_file_is_named_for_what_it_is_and_left_alone(tmp_path, kind, readonly):
    path = str(tmp_path / "state.db")
    make, phrase = SPECIAL[kind]
    keep = make(path)
    before = tree(str(tmp_path))
    for _ in range(2):
        found = open_in_child(path, readonly)
        assert found["error"] == "CannotOpenError", found
        assert found["path"] == path
        assert f"{path!r} {phrase}" in found["message"], found["message"]
        assert "pass the path of" in found["message"].lower(), found["message"]
    assert tree(str(tmp_path)) == before
    # The validator says the same, in the same words, without opening it either.
    done = run_check(path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"UNUSABLE file  {path!r} {phrase}" in done.stdout, done.stdout
    assert tree(str(tmp_path)) == before
    if keep is not None:
        keep.close()


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_dev_null_is_a_character_device_not_an_empty_file(readonly):
    before = sorted(os.listdir("/dev"))
    message = refused("/dev/null", CannotOpenError, "'/dev/null' is a character device, not a "
                      "database file", "regular file", readonly=readonly)
    assert "empty" not in message
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert [n for n in os.listdir("/dev") if n not in before and "null" in n] == []
    done = run_check("/dev/null")
    assert done.returncode == 2 and "is a character device" in done.stdout, done.stdout


def test_a_link_to_a_fifo_names_both(tmp_path):
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    link = str(tmp_path / "state.db")
    os.symlink(fifo, link)
    before = tree(str(tmp_path))
    found = open_in_child(link)
    assert found["error"] == "CannotOpenError" and found["path"] == link, found
    assert f"{link!r} is a symbolic link to {fifo!r}, which is a FIFO (named pipe)" in \
        found["message"], found["message"]
    assert tree(str(tmp_path)) == before


# --- symbolic links ---------------------------------------------------------------------------

def test_a_symlink_to_a_database_is_followed_and_shares_its_wal(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = str(real_dir / "state.db")
    link = str(tmp_path / "link.db")
    os.symlink(os.path.relpath(real, tmp_path), link)  # a relative link, as ln -s makes
    with Saver(real) as saver:
        saver.put("t", {"n": 0})
    with Saver(link) as via_link, Saver(real) as direct:
        assert via_link.path == direct.path == real
        assert via_link.recovery.path == real
        ref = via_link.put("t", {"n": 1})
        assert direct.get("t").checkpoint_id == ref.checkpoint_id  # one WAL: seen at once
        ref = direct.put("t", {"n": 2})
        assert via_link.get("t").state == {"n": 2}
        assert os.path.exists(real + "-wal") and os.path.exists(real + "-shm")
        assert not os.path.lexists(link + "-wal") and not os.path.lexists(link + "-shm")
        assert via_link.stats()["wal_bytes"] == os.path.getsize(real + "-wal") > 0
    with Saver(link, readonly=True) as reader:
        assert reader.path == real
        assert [c.state["n"] for c in reader.list("t")] == [2, 1, 0]
    assert os.readlink(link) == os.path.relpath(real, tmp_path)  # the link is left as it was
    done = run_check(link)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"through the symbolic link to {real!r}" in done.stdout


def test_a_symlinked_database_seen_from_another_process(tmp_path):
    real = str(tmp_path / "real.db")
    link = str(tmp_path / "link.db")
    with Saver(real) as saver:
        saver.put("t", {"n": 1})
        os.symlink(real, link)
        code = ("import sys\nfrom sqlitesaver import Saver\n"
                "with Saver(sys.argv[1]) as s:\n"
                "    assert s.get('t').state == {'n': 1}\n"
                "    s.put('t', {'n': 2})\n")
        subprocess.run([sys.executable, "-c", code, link], check=True, env=child_env(),
                       timeout=60)
        assert saver.get("t").state == {"n": 2}


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_a_dangling_symlink_is_refused_and_nothing_is_created(tmp_path, readonly):
    link = str(tmp_path / "state.db")
    target = str(tmp_path / "elsewhere" / "gone.db")
    os.symlink(target, link)
    before = tree(str(tmp_path))
    refused(link, CannotOpenError, f"symbolic link to {target!r}, which does not exist",
            "dangling", "no database is created through a link", readonly=readonly)
    assert tree(str(tmp_path)) == before
    done = run_check(link)
    assert done.returncode == 2 and "dangling" in done.stdout, done.stdout


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_a_symlink_loop_is_refused(tmp_path, readonly):
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    os.symlink(b, a)
    os.symlink(a, b)
    before = tree(str(tmp_path))
    refused(a, CannotOpenError, "loop of symbolic links", "Fix or remove the link",
            readonly=readonly)
    inside = str(tmp_path / "a.db" / "state.db")  # the loop in a directory of the path
    refused(inside, CannotOpenError, "loop of symbolic links", readonly=readonly)
    assert tree(str(tmp_path)) == before
    done = run_check(a)
    assert done.returncode == 2 and "loop of symbolic links" in done.stdout, done.stdout


# --- paths no database can have ---------------------------------------------------------------

@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_a_path_whose_parent_is_a_file_says_so(tmp_path, readonly):
    parent = str(tmp_path / "notes.txt")
    with open(parent, "w") as f:
        f.write("not a directory")
    before = tree(str(tmp_path))
    for path in (os.path.join(parent, "state.db"), os.path.join(parent, "sub", "state.db")):
        refused(path, CannotOpenError, f"{parent!r} is a regular file, not a directory",
                readonly=readonly)
    assert tree(str(tmp_path)) == before
    done = run_check(os.path.join(parent, "state.db"))
    assert done.returncode == 2 and "is a regular file, not a directory" in done.stdout


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
@pytest.mark.parametrize("name, phrase", [
    ("st\0ate.db", "contains a NUL character"),
    ("st\udcffate.db", "is not valid UTF-8"),   # os.fsdecode(b"st\xffate.db")
])
def test_a_path_no_file_name_can_be_given_to_sqlite_is_an_invalid_argument(
        tmp_path, name, phrase, readonly):
    path = str(tmp_path / name)
    for _ in range(2):
        with pytest.raises(InvalidArgumentError) as info:
            Saver(path, readonly=readonly)
        assert isinstance(info.value, ValueError)
        assert info.value.path == path and repr(path) in str(info.value)
        assert phrase in str(info.value), str(info.value)
    assert os.listdir(tmp_path) == []


def test_an_existing_file_whose_name_is_not_utf8_is_refused_by_the_validator_too(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/st\xffate.db"
    with open(raw, "wb") as f:
        f.write(b"x")
    done = subprocess.run([sys.executable, "-m", "sqlitesaver", "check", raw],
                          capture_output=True, env=child_env(), timeout=60)
    out = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 2, out + done.stderr.decode("utf-8", "replace")
    assert "is not valid UTF-8" in out and "Traceback" not in done.stderr.decode()
    assert os.listdir(os.fsencode(str(tmp_path))) == [b"st\xffate.db"]


# --- long names -------------------------------------------------------------------------------

def test_the_longest_name_with_room_for_its_wal_is_created_and_reopened(tmp_path):
    name = "n" * (NAME_MAX - len("-wal") - 3) + ".db"  # 251 bytes: the temporary once was 278
    assert len(name) == 251
    path = str(tmp_path / name)
    with Saver(path) as saver:
        assert saver.recovery.created
        ref = saver.put("t", {"long": True})
        assert os.path.exists(path + "-wal")
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary left
    with Saver(path) as saver:
        assert saver.get("t").checkpoint_id == ref.checkpoint_id
    done = run_check(path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("length", [252, 255, 256, 300])
def test_a_name_too_long_for_its_wal_is_refused_with_the_limit(tmp_path, length):
    path = str(tmp_path / ("n" * (length - 3) + ".db"))
    phrase = ("Use a name of at most 251 bytes" if length <= NAME_MAX else
              f"longer than this filesystem's limit of {NAME_MAX} bytes per name")
    message = refused(path, InvalidArgumentError, f"the file name is {length} bytes", phrase)
    if length <= NAME_MAX:
        assert "'-wal' and '-shm'" in message
    assert os.listdir(tmp_path) == []


def _deep_directory(base: str, length: int) -> str:
    """A directory under ``base`` whose path is exactly ``length`` bytes."""
    path = base
    while len(path) < length:
        path = os.path.join(path, "d" * min(100, length - len(path) - 1))
    assert len(path) == length, (path, length)
    os.makedirs(path)
    return path


def test_a_path_longer_than_sqlite_opens_is_refused_with_the_limit(tmp_path):
    from sqlitesaver import paths
    most = paths.sqlite_max_path()
    assert most == 504  # the unix VFS's 512, less the 8 SQLite keeps for "-journal"
    directory = _deep_directory(str(tmp_path), most - 10)
    path = os.path.join(directory, "state.db.x")  # most + 1 bytes
    before = tree(str(tmp_path))
    refused(path, InvalidArgumentError, f"is {most + 1} bytes long",
            f"at most {most} bytes")
    assert tree(str(tmp_path)) == before


def test_a_new_database_whose_temporary_would_not_fit_is_refused_before_writing(tmp_path):
    from sqlitesaver import paths
    most = paths.sqlite_max_path()
    directory = _deep_directory(str(tmp_path), most - opening._TEMP_NAME_BYTES)
    path = os.path.join(directory, "s.db")  # fits; its temporary name does not
    before = tree(str(tmp_path))
    refused(path, InvalidArgumentError, "temporary name", f"{most} bytes")
    assert tree(str(tmp_path)) == before
    fits = os.path.join(os.path.dirname(directory), "s.db")
    with Saver(fits) as saver:
        saver.put("t", 1)


def test_stale_temporaries_are_recognised_per_database(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = str(tmp_path / ("n" * 248 + ".db"))
    other = str(tmp_path / "other.db")
    mine = str(tmp_path / f"{opening._new_prefix(path)}{dead.pid}-deadbeef")
    theirs = str(tmp_path / f"{opening._new_prefix(other)}{dead.pid}-deadbeef")
    for leftover in (mine, theirs, mine + "-journal"):
        with open(leftover, "wb") as f:
            f.write(b"half-written")
    with Saver(path) as saver:
        assert saver.recovery.stale_files_removed == (mine,)
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(path),
                                                   os.path.basename(theirs)])


# --- the other entry points -------------------------------------------------------------------

def test_demo_refuses_a_fifo_instead_of_blocking(tmp_path):
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    try:
        done = subprocess.run([sys.executable, "-m", "sqlitesaver", "demo", fifo,
                               "--transitions", "5"], capture_output=True, text=True,
                              env=child_env(), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("demo blocked on a FIFO")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is a FIFO (named pipe)" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["n" * 252, "f/x.db"])
def test_torture_refuses_a_path_the_library_refuses(tmp_path, name):
    (tmp_path / "f").write_text("a file")
    db = str(tmp_path / name)
    done = subprocess.run([sys.executable, "-m", "sqlitesaver.torture", "--iterations", "1",
                           "--db", db], capture_output=True, text=True, env=child_env(),
                          timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "usage:" in done.stderr
    assert ("at most 251 bytes" if name.startswith("n") else "not a directory") in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["f"]

