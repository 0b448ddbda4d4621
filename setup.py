"""Build of the two optional C extensions; everything else is in pyproject.toml:

* ``_sqlitesaver_scan`` (sqlitesaver/codec/_scan.c): the codec's scan of a value before
  packing (tests/test_scan_c.py);
* ``_sqlitesaver_shallow`` (sqlitesaver/_shallow.c): the check that a payload is one whole,
  shallow msgpack object before ormsgpack may decode it, and the read of the LangGraph
  adapter's ``[type, bytes]`` payloads (tests/test_shallow_c.py).

Optional: where they cannot be built (no C compiler), pip installs sqlitesaver without them and
the codec runs their Python versions, which give the same answers (the tests named compare
them). Top-level modules, not ones inside the package, so that tests run from a source
checkout (the README's test command) use the ones pip built into the virtualenv.
"""

import hashlib

from setuptools import Extension, setup



def extension(name: str, source: str) -> Extension:
    with open(source, "rb") as f:  # so that tests can tell a build of other source (stale)
        digest = hashlib.sha256(f.read()).hexdigest()
    return Extension(name, [source], optional=True,
                     define_macros=[("SOURCE_SHA256", f'"{digest}"')])


setup(ext_modules=[extension("_sqlitesaver_scan", "sqlitesaver/codec/_scan.c"),
                   extension("_sqlitesaver_shallow", "sqlitesaver/_shallow.c")])
