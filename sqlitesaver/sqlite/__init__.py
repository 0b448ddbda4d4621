"""The SQLite storage engine: the code that talks to a :class:`~sqlitesaver.saver.Saver`'s
SQLite file, moved out of ``saver.py`` one layer at a time (issue #16's split; see
``research/postgres_engine_plan.md``).

- :mod:`~sqlitesaver.sqlite.transaction`: the write protocol (group commit on the one write
  connection, interruption safety, the bound on the ``-wal``).
- :mod:`~sqlitesaver.sqlite.reads`: the read path (the pool of read connections, a read's
  snapshot, paging a cursor without pinning one).
"""
