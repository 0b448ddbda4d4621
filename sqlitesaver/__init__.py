"""sqlitesaver: a crash-safe checkpoint store for agent frameworks and workers, on SQLite.

Start from :class:`Saver`; every exception is a :class:`SaverError` (see ``sqlitesaver.errors``).
"""

from .errors import *  # noqa: F401,F403  (the exception hierarchy is public API)
from .errors import __all__ as _errors_all
from .records import Checkpoint, CheckpointRef, LogEvent, PendingWrite, RecoveryReport
from .saver import Saver

__all__ = ["Saver", "Checkpoint", "CheckpointRef", "PendingWrite", "LogEvent",
           "RecoveryReport", *_errors_all]
__version__ = "0.1.0"
