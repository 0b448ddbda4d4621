"""The async face of :mod:`sqlitesaver.langgraph`, where LangGraph keeps its own
(``langgraph.checkpoint.sqlite.aio``, ``langgraph.checkpoint.postgres.aio``): swap the import,
keep the code.

No aiosqlite, no async driver: the Saver's work runs in a worker thread (``asyncio.to_thread``),
so neither the database nor a serializer ever blocks the event loop, and reads never wait behind
writes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .. import Saver
from ._checkpointer import SaverCheckpointer, connection_refused, file_path, server_target

__all__ = ["AsyncSqliteSaver", "AsyncPostgresSaver"]


class AsyncSqliteSaver(SaverCheckpointer):
    """LangGraph checkpointer on a :class:`~sqlitesaver.Saver` for async graphs
    (``ainvoke``, ``astream``); its sync methods work too, from any thread."""

    @classmethod
    @asynccontextmanager
    async def from_conn_string(cls, conn_string: str | os.PathLike[str], *, serde: Any = None,
                               **options: Any) -> AsyncIterator["AsyncSqliteSaver"]:
        """Open the database file ``conn_string`` in a worker thread (opening runs the startup
        recovery) and yield a checkpointer on it; close it on exit, also off the loop.
        ``options`` go to :class:`~sqlitesaver.Saver`. In-memory (``":memory:"``) and URI paths
        are refused, saying what to use instead: they cannot be durable."""
        saver = await asyncio.to_thread(Saver, file_path(cls, conn_string), **options)
        try:
            yield cls(saver, serde=serde)
        finally:
            await asyncio.to_thread(saver.close)


class AsyncPostgresSaver(SaverCheckpointer):
    """LangGraph checkpointer on a :class:`~sqlitesaver.Saver` on a PostgreSQL server, for async
    graphs; its sync methods work too, from any thread. As
    :class:`~sqlitesaver.langgraph.PostgresSaver`, with ``from_conn_string`` an async context
    manager. The Saver's calls run in a worker thread, so the event loop never waits on the
    server."""

    @classmethod
    @asynccontextmanager
    async def from_conn_string(cls, conn_string: str, *, pipeline: bool = False,
                               serde: Any = None, **options: Any
                               ) -> AsyncIterator["AsyncPostgresSaver"]:
        """Connect to the server ``conn_string`` in a worker thread and yield a checkpointer on
        it; close its connections on exit, also off the loop. Otherwise as
        ``PostgresSaver.from_conn_string`` (``pipeline`` is accepted and changes nothing)."""
        from ..postgres.saver import PostgresServerSaver

        del pipeline  # as PostgresSaver's
        saver = await asyncio.to_thread(PostgresServerSaver, server_target(cls, conn_string),
                                        **options)
        try:
            yield cls(saver, serde=serde)
        finally:
            await asyncio.to_thread(saver.close)

    @classmethod
    def _not_a_saver(cls, given: object) -> str:
        return connection_refused(cls, given)
