"""sqlitesaver: a crash-safe checkpoint store for agent frameworks and workers, on SQLite.

Start from :class:`Saver`; every exception is a :class:`SaverError` (see ``sqlitesaver.errors``).
"""

from .errors import *  # noqa: F401,F403  (the exception hierarchy is public API)
from .errors import __all__ as _errors_all
from .records import Checkpoint, CheckpointRef, LogEvent, PendingWrite, RecoveryReport
from .saver import Saver
# The SQLite engine, loaded with the package as before the split (a program may drop privileges
# or chroot after `import sqlitesaver`, then open a file: tests/test_bad_input.py does so).
from .sqlite import saver as _sqlite_engine
del _sqlite_engine  # loaded, not exported

__all__ = ["Saver", "Checkpoint", "CheckpointRef", "PendingWrite", "LogEvent",
           "RecoveryReport", *_errors_all]
__version__ = "0.1.0"
