"""Test dependencies: skipped on a partial install, a failure in CI.

The suite is *strict* in CI (``CI`` set to a true value, as ``.ci/run`` and CI services do) and under
``AENT_REQUIRE_ALL=1``: a module of an installed extra that does not import fails the tests that need it, and the only
skips allowed are those whose reason starts with :data:`CUDA_SKIP`. ``tests/conftest.py`` enforces that for every
skip, whoever raised it; :func:`require` gives the failure a message that names the extra to install.
Outside strict mode a missing module skips, as ``pytest.importorskip`` does.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Optional

import pytest

__all__ = ["CUDA_SKIP", "require", "strict"]

CUDA_SKIP = "needs a CUDA device"  # the one skip reason strict mode allows (a prefix: "... for the compiled kernels")
_TRUE = ("1", "true", "yes", "on")


def strict() -> bool:
    """True in CI (``CI=true``) or under ``AENT_REQUIRE_ALL=1``: skips other than :data:`CUDA_SKIP` are failures."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("CI", "AENT_REQUIRE_ALL"))


def require(module: str, extra: Optional[str] = None, *, find_only: bool = False) -> Optional[ModuleType]:
    """Import ``module`` (``find_only``: only check that it is installed, without importing it) for a test.

    Missing, it skips the test (or module, at module level) on a partial install and raises in strict mode, naming
    ``aent[<extra>]``. An installed module that fails to import raises in both modes: that is breakage, not absence.
    """
    hint = f"pip install 'aent[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        message = f"{module} is not installed ({hint})"
        if strict():
            raise ModuleNotFoundError(f"{message}; CI and AENT_REQUIRE_ALL=1 need every test dependency")
        pytest.skip(message, allow_module_level=True)
    return None if find_only else importlib.import_module(module)
