"""The optional C extensions setup.py builds (``_sqlitesaver_scan``, ``_sqlitesaver_shallow``),
found the one way both callers (codec/scan.py, _fastpack.py) need: the module, or None where
it was not built (no C compiler when pip installed sqlitesaver) or is a build of another
VERSION (a stale one), in which case the caller runs its Python version, which gives the same
answers. Top-level modules, not inside the package: see setup.py.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def load(name: str, version: int) -> ModuleType | None:
    """The extension module ``name`` if it is built and of ``version``, else None."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return module if getattr(module, "VERSION", None) == version else None
