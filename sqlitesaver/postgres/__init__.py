"""The PostgreSQL storage engine (issue #16): the modules, from the wire up.

* ``target.py``: what names a server (``postgresql://`` URLs, libpq key=value DSNs) and how
  errors show it (never with its password);
* ``errors.py``: psycopg's exceptions and SQLSTATEs turned into sqlitesaver's, at one boundary;
* ``connect.py``: connections with bounded waits, and the server's durability settings read
  back and enforced;
* ``schema.py``: the tables (in a PostgreSQL schema of their own) and their migrations, each in
  one transaction under an advisory lock;
* ``sql.py``: the lock keys and the statements the engine sends, with why each is written so;
* ``pool.py``: opening the engine, and its pool of connections (dead ones replaced);
* ``transactions.py``: the write protocol (one server transaction per operation: locks,
  retries, "maybe committed") and the caller's transaction blocks;
* ``reads.py``: the reads (a get, a page, the log, the statistics);
* ``engine.py``: :class:`~.engine.Engine`, on all of these, with each write operation (its
  docstring says what an operation guarantees on a server);
* ``saver.py``: :class:`PostgresServerSaver`, what ``Saver("postgresql://...")`` returns;
* ``check.py``: the validator on a server (``python -m sqlitesaver check postgresql://...``).

Needs the ``postgres`` extra (psycopg 3); the core package imports this only for a URL.
"""
