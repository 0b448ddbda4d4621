"""The SQLite storage engine: what ``Saver(path)`` is made of beneath the backend-neutral core
(:mod:`sqlitesaver.saver`), moved out of ``saver.py`` in issue #16's split (see
``research/postgres_engine_plan.md``).

- :mod:`~sqlitesaver.sqlite.saver`: :class:`~sqlitesaver.sqlite.saver.SqliteFileSaver`, the
  ``Saver`` for a file: opening it, the write steps, files, ``transaction()``, ``settings``,
  ``stats``, ``backup``, ``close``, ``fork()``.
- :mod:`~sqlitesaver.sqlite.read_steps`: its read steps (``get``, ``list``, ``read_log``,
  ``threads``); :mod:`~sqlitesaver.sqlite.maintenance`: its maintenance steps
  (``delete_thread``, ``prune``, ``copy_thread``, ``delete_matching``); both bases of the class.
- :mod:`~sqlitesaver.sqlite.sql`: the SQL text they send.
- :mod:`~sqlitesaver.sqlite.transaction`: the write protocol (group commit on the one write
  connection, interruption safety); :mod:`~sqlitesaver.sqlite.failure`: its path for a
  transition that does not commit or that an exception interrupts;
  :mod:`~sqlitesaver.sqlite.wal`: the bound on the ``-wal`` after each commit;
  :mod:`~sqlitesaver.sqlite.queue`: the write queue that feeds a batch's leader.
- :mod:`~sqlitesaver.sqlite.reads`: the read path (the pool of read connections, a read's
  snapshot, paging a cursor without pinning one).
"""
