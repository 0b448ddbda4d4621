"""What a database path names, found out before anything opens it (issue #13, class 4).

SQLite opens whatever a path names, and some paths go wrong in ways that say nothing about the
cause: opening a FIFO blocks forever; ``/dev/null`` reads as an empty file; a symbolic link
cannot be read through SQLite's VFS handle; a file name of 252 to 255 bytes has no room for its
``-wal``; a NUL or a name that is not UTF-8 fails inside the encoder. :func:`resolve` looks at
the path with ``stat()`` / ``lstat()`` only (never ``open()``: that is what blocks on a FIFO)
and raises a :class:`~sqlitesaver.errors.SaverError` subclass that names the path, says what it
is and what to do, having changed nothing on disk.

Symbolic links are followed, once: a path whose last component is a link is replaced by the
file it leads to (``os.path.realpath``). SQLite resolves links itself and keeps the ``-wal`` and
``-shm`` beside the real file, which is how two processes that open one database through
different names share its WAL index; resolving it here too makes every name sqlitesaver derives
(``-wal``, ``-shm``, the temporary file of a creation) the one SQLite uses. A link that leads
nowhere, or into a loop, is refused: a database is never created through a dangling link.

What is left to SQLite: the path can change between this check and the open (a FIFO put in
place meanwhile still blocks); nothing short of a custom VFS avoids that.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import apsw

from .errors import CannotOpenError, InvalidArgumentError, SaverError

__all__ = ["resolve", "kind", "sqlite_max_path", "name_max"]

#: Bytes that WAL mode appends to the database's file name: "-wal" and "-shm".
WAL_SUFFIX_BYTES = len("-wal")
#: Bytes SQLite reserves after a database's full path for its journal names ("-journal";
#: sqlite3PagerOpen refuses a path without that room with SQLITE_CANTOPEN).
_JOURNAL_SUFFIX_BYTES = len("-journal")


def kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words: "a FIFO (named pipe)", ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def sqlite_max_path() -> int:
    """The longest full path, in bytes, that SQLite's default VFS opens as a database (its
    ``mxPathname``, 512 for ``unix``, less the 8 bytes it keeps for ``-journal``)."""
    default = apsw.vfs_names()[0]
    for details in apsw.vfs_details():
        if details.get("zName") == default:
            return int(details["mxPathname"]) - _JOURNAL_SUFFIX_BYTES
    return 512 - _JOURNAL_SUFFIX_BYTES  # pragma: no cover - the unix VFS's


def name_max(directory: str) -> int:
    """The longest file name, in bytes, that the filesystem of ``directory`` allows."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_text(path: str) -> None:
    """Refuse a path SQLite cannot be given as it is: a NUL, bytes that are not UTF-8.

    SQLite takes file names as UTF-8 and passes those bytes to the OS unchanged, while Python
    encodes names with the filesystem encoding and represents undecodable bytes as lone
    surrogates (PEP 383). A name whose bytes are not UTF-8 therefore cannot be handed to SQLite
    at all, and with a filesystem encoding other than UTF-8 a non-ASCII name would be a
    different file for SQLite than for Python: both are refused.
    """
    if "\0" in path:
        raise InvalidArgumentError(
            f"path {path!r} contains a NUL character, which no file name can hold; pass the "
            "path of a file, without NUL.", path=path)
    if path.isascii():
        return
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"path {path!r} is not valid UTF-8: it holds bytes that do not decode (shown as "
            "'\\udcXX'), and SQLite takes file names as UTF-8, so it cannot open that file. "
            "Rename the file or directory to a UTF-8 name.", path=path) from None
    encoding = sys.getfilesystemencoding()
    if encoding.lower().replace("-", "").replace("_", "") != "utf8":
        raise InvalidArgumentError(
            f"path {path!r} is not ASCII and this Python encodes file names as {encoding!r}, "
            "while SQLite encodes them as UTF-8: the two would name different files. Use an "
            "ASCII path, or run Python in UTF-8 mode (PYTHONUTF8=1).", path=path)


def resolve(path: str, *, advice: bool = True) -> str:
    """Check ``path`` (absolute) without opening it and return the path to open: ``path``
    itself, or, if it is a symbolic link, the file it leads to.

    A path that does not exist is returned as it is, once its directory is known to be one
    (the Saver creates the database there). Raises :class:`InvalidArgumentError` for a path
    no file can have (a NUL, not UTF-8, too long for the filesystem or for SQLite, or for the
    ``-wal`` beside it), :class:`CannotOpenError` for a path that names something else than a
    regular file (a directory, a FIFO, a device, a socket, a link that leads nowhere or into a
    loop, a directory along it that is a file). ``advice=False`` leaves out what to do (the
    validator words that itself) and does not require a missing file's directory to exist.
    """
    check_text(path)
    name = os.fsencode(os.path.basename(path))
    limit = name_max(os.path.dirname(path))
    if len(name) > limit:  # before lstat(), which would only say ENAMETOOLONG
        raise InvalidArgumentError(
            f"path {path!r}: the file name is {len(name)} bytes, longer than this filesystem's "
            f"limit of {limit} bytes per name. Use a shorter name.", path=path)
    try:
        link = os.lstat(path)
    except FileNotFoundError:
        link = None
    except OSError as exc:
        raise _lookup_error(path, exc, advice) from None
    if link is None:
        if advice:
            _check_directory(path)
            _check_lengths(path, path, wal=True)
        return path
    real = path
    if stat.S_ISLNK(link.st_mode):
        try:
            os.stat(path)
        except OSError as exc:
            raise _link_error(path, exc, advice) from None
        real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:  # replaced meanwhile
        raise _lookup_error(path, exc, advice) from None
    if not stat.S_ISREG(st.st_mode):
        what = kind(st.st_mode)
        via = "" if real == path else f" a symbolic link to {real!r}, which is"
        if stat.S_ISDIR(st.st_mode):
            todo = "Pass the path of a database file (it may be inside that directory)"
        else:
            todo = ("A sqlitesaver database is a regular file, with its '-wal' and '-shm' "
                    "beside it: pass the path of a sqlitesaver database, or of a file "
                    "that does not exist yet to create one")
        raise CannotOpenError(_say(f"{path!r} is{via} {what}, not a database file", todo,
                                   advice), path=path)
    _check_lengths(path, real, wal=advice)
    return real


def _say(what: str, todo: str, advice: bool) -> str:
    return f"{what}. {todo}." if advice else what


def _lookup_error(path: str, exc: OSError, advice: bool) -> SaverError:
    """The error for a path that ``lstat()`` could not look at."""
    if exc.errno == errno.ENOTDIR:
        return _not_a_directory(path, advice)
    if exc.errno == errno.ELOOP:
        return CannotOpenError(_say(
            f"cannot open {path!r}: a directory along it is a symbolic link that leads into a "
            "loop of symbolic links", "Fix or remove that link", advice), path=path)
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidArgumentError(_say(
            f"path {path!r} is too long for the filesystem ({exc.strerror})",
            "Use a shorter path", advice), path=path)
    if exc.errno == errno.EACCES:
        return CannotOpenError(_say(
            f"cannot look at {path!r}: permission denied on a directory along it (it needs "
            "search, 'x', permission)", "Fix the directory's permissions", advice), path=path)
    return CannotOpenError(_say(f"cannot look at {path!r} ({exc.strerror or exc})",
                                "Check the path", advice), path=path)


def _link_error(path: str, exc: OSError, advice: bool) -> SaverError:
    """The error for a symbolic link that ``stat()`` cannot follow."""
    try:
        target = repr(os.readlink(path))
    except OSError:
        target = "(unreadable)"
    if exc.errno == errno.ELOOP:
        return CannotOpenError(_say(
            f"cannot open {path!r}: it is a symbolic link (to {target}) that leads into a loop "
            "of symbolic links, so it names no file", "Fix or remove the link", advice),
            path=path)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return CannotOpenError(_say(
            f"cannot open {path!r}: it is a symbolic link to {target}, which does not exist "
            "(a dangling link)", "A link to an existing database is followed, but no database is "
            "created through a link: point the link at a database, remove it, or pass the "
            "path of the file to create", advice), path=path)
    return _lookup_error(path, exc, advice)


def _check_directory(path: str) -> None:
    """The directory of a missing ``path`` must exist and be a directory."""
    directory = os.path.dirname(path)
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        dangling = ""
        if os.path.islink(directory):
            dangling = (f": it is a symbolic link to {os.readlink(directory)!r}, which does "
                        "not exist")
        raise CannotOpenError(
            f"cannot open {path!r}: the directory {directory!r} does not exist{dangling} "
            "(sqlitesaver does not create directories; create it first).", path=path) from None
    except OSError as exc:
        raise _lookup_error(path, exc, True) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _not_a_directory(path, True)


def _not_a_directory(path: str, advice: bool) -> CannotOpenError:
    """``path`` has a component that is not a directory: name the first one."""
    parts = path.split(os.sep)
    for n in range(2, len(parts)):
        prefix = os.sep.join(parts[:n]) or os.sep
        try:
            st = os.stat(prefix)
        except OSError:
            break
        if not stat.S_ISDIR(st.st_mode):
            return CannotOpenError(_say(
                f"cannot open {path!r}: {prefix!r} is {kind(st.st_mode)}, not a directory, so "
                "nothing can be inside it", "Pass a path whose directories are directories",
                advice), path=path)
    return CannotOpenError(_say(f"cannot open {path!r}: a directory along it is not a "
                                "directory", "Check the path", advice), path=path)


def _check_lengths(path: str, real: str, *, wal: bool) -> None:
    """Refuse a name that SQLite cannot open, or that leaves no room for its ``-wal``."""
    name = os.fsencode(os.path.basename(real))
    limit = name_max(os.path.dirname(real))
    if wal and len(name) + WAL_SUFFIX_BYTES > limit:
        raise InvalidArgumentError(
            f"path {path!r}: the file name is {len(name)} bytes, too long for a database: WAL "
            f"mode keeps '-wal' and '-shm' files beside it, whose names add "
            f"{WAL_SUFFIX_BYTES} bytes, and this filesystem allows {limit} bytes per name. "
            f"Use a name of at most {limit - WAL_SUFFIX_BYTES} bytes.", path=path)
    full = len(os.fsencode(os.path.realpath(real)))
    most = sqlite_max_path()
    if full > most:
        raise InvalidArgumentError(
            f"path {path!r} is {full} bytes long (symbolic links resolved), and SQLite opens "
            f"databases whose full path is at most {most} bytes. Use a shorter path.",
            path=path)
