"""Crash torture: ``python -m sqlitesaver.torture``.

Writer processes drive the public Saver API at full speed and are killed with SIGKILL at seeded
random moments; after each kill the database is reopened as the library does and every
acknowledged transition must be there, whole, with nothing half-written visible. See
:mod:`sqlitesaver.torture.harness` for the loop, :mod:`~sqlitesaver.torture.workload` for what
the writers do and :mod:`~sqlitesaver.torture.oracle` for how a database is judged.
"""

from .harness import Options, run

__all__ = ["Options", "run"]
