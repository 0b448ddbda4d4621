"""The PostgreSQL storage engine (issue #16), built in steps.

* ``target.py``: what names a server (``postgresql://`` URLs, libpq key=value DSNs) and how
  errors show it (never with its password);
* ``errors.py``: psycopg's exceptions and SQLSTATEs turned into sqlitesaver's, at one boundary;
* ``connect.py``: connections with bounded waits, and the server's durability settings read
  back and enforced;
* ``schema.py``: the tables (in a PostgreSQL schema of their own) and their migrations, each in
  one transaction under an advisory lock.

Not yet reachable from :class:`sqlitesaver.Saver`: the engine seam comes first
(research/postgres_engine_plan.md, step 2). Needs the ``postgres`` extra (psycopg 3).
"""
