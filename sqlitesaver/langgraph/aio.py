"""The async face of :mod:`sqlitesaver.langgraph`, where LangGraph keeps its own
(``langgraph.checkpoint.sqlite.aio``): swap the import, keep the code.

No aiosqlite: the Saver's work runs in a worker thread (``asyncio.to_thread``), so neither SQLite
nor a serializer ever blocks the event loop, and reads never wait behind writes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .. import Saver
from ._checkpointer import SaverCheckpointer, file_path

__all__ = ["AsyncSqliteSaver"]


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
