"""Build of the one optional C extension, ``_sqlitesaver_scan`` (sqlitesaver/codec/_scan.c):
the codec's scan before packing, in C. Everything else is in pyproject.toml.

Optional: where it cannot be built (no C compiler), pip installs sqlitesaver without it and the
codec runs its Python scan, which gives the same answers (tests/test_scan_c.py). A top-level
module, not one inside the package, so that tests run from a source checkout (the README's test
command) use the one pip built into the virtualenv.
"""

import hashlib

from setuptools import Extension, setup

SOURCE = "sqlitesaver/codec/_scan.c"
with open(SOURCE, "rb") as source:  # so that tests can tell a build of other source (stale)
    digest = hashlib.sha256(source.read()).hexdigest()

setup(ext_modules=[Extension("_sqlitesaver_scan", [SOURCE], optional=True,
                             define_macros=[("SOURCE_SHA256", f'"{digest}"')])])
