"""LangGraph checkpointers on a :class:`~sqlitesaver.Saver`: a drop-in for LangGraph's own.

Switching from ``langgraph-checkpoint-sqlite`` is the import line::

    from sqlitesaver.langgraph import SqliteSaver            # was langgraph.checkpoint.sqlite
    from sqlitesaver.langgraph.aio import AsyncSqliteSaver   # was langgraph.checkpoint.sqlite.aio

    with SqliteSaver.from_conn_string("checkpoints.db") as checkpointer:
        graph = builder.compile(checkpointer=checkpointer)

and from ``langgraph-checkpoint-postgres`` (the same Saver on a PostgreSQL server)::

    from sqlitesaver.langgraph import PostgresSaver          # was langgraph.checkpoint.postgres
    from sqlitesaver.langgraph.aio import AsyncPostgresSaver # was ...checkpoint.postgres.aio

    with PostgresSaver.from_conn_string("postgresql://app@db/agents") as checkpointer:
        checkpointer.setup()  # does nothing (the Saver migrated as it opened); allowed

Every class implements every method of ``BaseCheckpointSaver``, sync and async, including
``copy_thread``, ``delete_for_runs`` and ``prune``; they differ only in ``from_conn_string``
(a context manager here, an async one in :mod:`sqlitesaver.langgraph.aio`; a file path for the
SQLite ones, a server for the PostgreSQL ones). Install with
``pip install 'sqlitesaver[langgraph]'``; the core ``sqlitesaver`` package never imports
LangGraph.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .. import Saver
from ._checkpointer import SaverCheckpointer, connection_refused, file_path, server_target
from .aio import AsyncPostgresSaver, AsyncSqliteSaver

__all__ = ["SqliteSaver", "AsyncSqliteSaver", "PostgresSaver", "AsyncPostgresSaver",
           "SaverCheckpointer"]


class SqliteSaver(SaverCheckpointer):
    """LangGraph checkpointer on a :class:`~sqlitesaver.Saver`; see
    :class:`~sqlitesaver.langgraph.SaverCheckpointer` for what every method guarantees.
    ``SqliteSaver(saver, serde=None)`` wraps a Saver you open and close yourself."""

    @classmethod
    @contextmanager
    def from_conn_string(cls, conn_string: str | os.PathLike[str], *, serde: Any = None,
                         **options: Any) -> Iterator["SqliteSaver"]:
        """Open (creating it if needed, recovering it after a crash) the database file
        ``conn_string`` and yield a checkpointer on it; close it on exit. ``options`` go to
        :class:`~sqlitesaver.Saver` (``durability``, ``busy_timeout``, ``integrity_check``).
        In-memory (``":memory:"``) and URI paths are refused, saying what to use instead: they
        cannot be durable."""
        with Saver(file_path(cls, conn_string), **options) as saver:
            yield cls(saver, serde=serde)


class PostgresSaver(SaverCheckpointer):
    """LangGraph checkpointer on a :class:`~sqlitesaver.Saver` on a PostgreSQL server (needs
    the ``postgres`` extra); the same methods and guarantees as :class:`SqliteSaver`, with the
    server engine's differences (README, "PostgreSQL"). ``PostgresSaver(saver, serde=None)``
    wraps a Saver you open and close yourself; a psycopg connection or pool is refused, saying
    so: the Saver manages its own pool, durability settings and transactions."""

    @classmethod
    @contextmanager
    def from_conn_string(cls, conn_string: str, *, pipeline: bool = False, serde: Any = None,
                         **options: Any) -> Iterator["PostgresSaver"]:
        """Connect to the server ``conn_string`` (a ``postgresql://`` URL or a libpq key=value
        DSN), creating or migrating the tables (schema ``sqlitesaver``) if needed, and yield a
        checkpointer on it; close its connections on exit. ``options`` go to the Saver
        (``durability``, ``busy_timeout``, ``connect_timeout``, ``statement_timeout``,
        ``prepare_threshold``, ``max_connections``). ``pipeline`` is accepted for LangGraph's
        signature and changes nothing: each call is already one transaction of a few
        statements, acknowledged only after its COMMIT."""
        from ..postgres.saver import PostgresServerSaver  # the extra's import, only when asked

        del pipeline  # see the docstring
        with PostgresServerSaver(server_target(cls, conn_string), **options) as saver:
            yield cls(saver, serde=serde)

    @classmethod
    def _not_a_saver(cls, given: object) -> str:
        return connection_refused(cls, given)
