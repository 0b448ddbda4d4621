"""LangGraph checkpointers on a :class:`~sqlitesaver.Saver`: a drop-in for LangGraph's own.

Switching from ``langgraph-checkpoint-sqlite`` is the import line::

    from sqlitesaver.langgraph import SqliteSaver            # was langgraph.checkpoint.sqlite
    from sqlitesaver.langgraph.aio import AsyncSqliteSaver   # was langgraph.checkpoint.sqlite.aio

    with SqliteSaver.from_conn_string("checkpoints.db") as checkpointer:
        graph = builder.compile(checkpointer=checkpointer)

Both classes implement every method of ``BaseCheckpointSaver``, sync and async, including
``copy_thread``, ``delete_for_runs`` and ``prune``; they differ only in ``from_conn_string``
(a context manager here, an async one in :mod:`sqlitesaver.langgraph.aio`). Install with
``pip install 'sqlitesaver[langgraph]'``; the core ``sqlitesaver`` package never imports
LangGraph.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .. import Saver
from ._checkpointer import SaverCheckpointer, file_path
from .aio import AsyncSqliteSaver

__all__ = ["SqliteSaver", "AsyncSqliteSaver", "SaverCheckpointer"]


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
