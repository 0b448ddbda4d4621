"""What names a PostgreSQL server, and how messages name it.

A target is PostgreSQL if it is a ``str`` that starts with ``postgresql://`` or ``postgres://``
(libpq's URL forms). A libpq key=value DSN (``"host=db dbname=app"``) is accepted where the
caller asks for PostgreSQL explicitly (:func:`parse`), never guessed from a string: a file may
be called ``host=db dbname=app``, and a path must keep meaning the SQLite file of that name.

:func:`describe` is what every message and ``SaverError.path`` shows for a server: user, host,
port and database, never the password (from the URL, a ``password=`` parameter or a DSN).
"""

from __future__ import annotations

import re

from ..errors import InvalidArgumentError

__all__ = ["SCHEMES", "is_url", "parse", "describe"]

SCHEMES = ("postgresql://", "postgres://")


def is_url(target: object) -> bool:
    """Whether ``target`` is a PostgreSQL URL (and so not a SQLite path)."""
    return isinstance(target, str) and target.startswith(SCHEMES)


def parse(target: object) -> dict[str, str]:
    """libpq's connection parameters of a URL or key=value DSN; :class:`InvalidArgumentError`
    (without the password) if it is not one. Parameters libpq takes from its environment
    (``PGHOST``...) or defaults are not filled in: the server fills them at connect."""
    from psycopg.conninfo import conninfo_to_dict  # the extra's import, only when asked for

    if not isinstance(target, str):
        raise InvalidArgumentError(
            "a PostgreSQL target must be a str (a postgresql:// URL or a libpq key=value DSN), "
            f"not {type(target).__name__}")
    if not target.strip():
        raise InvalidArgumentError("a PostgreSQL target must not be empty: give a "
                                   "postgresql:// URL or a libpq key=value DSN")
    try:
        params = conninfo_to_dict(target)
    except Exception as exc:  # psycopg.ProgrammingError; its text may quote the password
        raise InvalidArgumentError(
            "the PostgreSQL target is not a valid libpq URL or key=value DSN (see "
            "https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNSTRING); "
            f"parser said: {_parse_error_without_secrets(target, exc)}") from None
    return {key: str(value) for key, value in params.items()}


def describe(params: dict[str, str]) -> str:
    """``postgresql://user@host:port/dbname`` from :func:`parse`'s parameters, with the parts
    not given left out (libpq's defaults then apply) and no password; a Unix socket directory
    as ``?host=``."""
    user = params.get("user", "")
    host = params.get("host", "")
    port = params.get("port", "")
    dbname = params.get("dbname", "")
    socket = host.startswith("/")
    netloc = f"{user}@" if user else ""
    if host and not socket:
        netloc += f"[{host}]" if ":" in host else host
    if port:
        netloc += f":{port}"
    text = f"postgresql://{netloc}/{dbname}"
    return text + (f"?host={host}" if socket else "")


# The password of a URL (userinfo after the first ':', up to the first '@': libpq's reading),
# of a URL's password= parameter, and of a DSN's password= (quoted or not).
_SECRETS = (re.compile(r"^postgres(?:ql)?://[^@/?#:]*:([^@/?#]*)@"),
            re.compile(r"[?&]password=([^&#]*)"),
            re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S*)"))


def _parse_error_without_secrets(target: str, exc: Exception) -> str:
    """The parser's complaint about ``target``, never quoting its password: libpq quotes the
    offending token, and that token may be the password itself (a bad percent-encoding in
    ``postgresql://u:pa%zz@h/db``). The target is parsed again with every password replaced;
    if that parses, the password was the problem, and only that is said."""
    from psycopg.conninfo import conninfo_to_dict

    def blank(match: re.Match[str]) -> str:
        start, end = match.span(1)
        whole = match.group(0)
        return whole[:start - match.start()] + "***" + whole[end - match.start():]

    redacted = target
    for pattern in _SECRETS:
        redacted = pattern.sub(blank, redacted)
    if redacted == target:
        return _without_secrets(str(exc), target).strip()
    try:
        conninfo_to_dict(redacted)
    except Exception as again:
        return _without_secrets(str(again), redacted).strip()
    return ("the password is not valid there (in a URL, percent-encode its special "
            "characters: '%' as %25, '@' as %40, '/' as %2F)")


def _without_secrets(text: str, target: str) -> str:
    """``text`` with every password-like part of ``target`` blanked (a parser's message may
    quote the whole string back)."""
    if target and target in text:
        text = text.replace(target, "<the target>")
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text)
