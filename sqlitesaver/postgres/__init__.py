"""The PostgreSQL storage engine (issue #16): the modules, from the wire up.

* ``target.py``: what names a server (``postgresql://`` URLs, libpq key=value DSNs) and how
  errors show it (never with its password);
* ``errors.py``: psycopg's exceptions and SQLSTATEs turned into sqlitesaver's, at one boundary;
* ``connect.py``: connections with bounded waits, and the server's durability settings read
  back and enforced;
* ``schema.py``: the tables (in a PostgreSQL schema of their own) and their migrations, each in
  one transaction under an advisory lock;
* ``engine.py``: each operation as one server transaction (locks, retries, the pool);
* ``saver.py``: :class:`PostgresServerSaver`, what ``Saver("postgresql://...")`` returns;
* ``check.py``: the validator on a server (``python -m sqlitesaver check postgresql://...``).

Needs the ``postgres`` extra (psycopg 3); the core package imports this only for a URL.
"""
