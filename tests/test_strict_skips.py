"""CI's rule for skips (tests/conftest.py, aent_test_support.deps): in strict mode (CI=true or AENT_REQUIRE_ALL=1)
a skip is a failure unless it needs a CUDA device, whether a test, a fixture or a whole module raised it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aent_test_support import deps

TESTS = Path(__file__).resolve().parent

PROBE = """
import pytest
from aent_test_support.deps import require

def test_passes():
    pass

def test_needs_cuda():
    pytest.skip("needs a CUDA device")

def test_missing_module():
    require("aent_no_such_module_xyz", "verl")

def test_other_skip():
    pytest.skip("Ray cannot start here")
"""

MODULE_PROBE = """
import pytest
pytest.importorskip("aent_no_such_module_xyz")

def test_never_runs():
    pass
"""


def _run_probe(tmp_path, env_extra):
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    (tmp_path / "test_module_probe.py").write_text(MODULE_PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "AENT_REQUIRE_ALL")}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS / "support"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rfEs",
            "--continue-on-collection-errors",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )


@pytest.mark.parametrize("env", [{"AENT_REQUIRE_ALL": "1"}, {"CI": "true"}], ids=["AENT_REQUIRE_ALL", "CI"])
def test_strict_mode_fails_every_skip_but_cuda(tmp_path, env):
    proc = _run_probe(tmp_path, env)
    out = proc.stdout
    assert proc.returncode != 0, out
    assert "FAILED" in out and "test_missing_module" in out and "test_other_skip" in out, out
    assert "aent_no_such_module_xyz is not installed (pip install 'aent[verl]')" in out, out
    assert "ERROR" in out and "test_module_probe.py" in out, out  # the module-level skip fails its collection
    assert "1 passed" in out and "1 skipped" in out, out
    assert "aent: 1 skipped, 1 of them 'needs a CUDA device', 0 other; strict" in out, out


def test_without_strict_mode_missing_modules_skip(tmp_path):
    proc = _run_probe(tmp_path, {})
    out = proc.stdout
    assert proc.returncode == 0, out
    assert "1 passed" in out and "4 skipped" in out, out
    assert "aent: 4 skipped, 1 of them 'needs a CUDA device', 3 other; not strict" in out, out


def test_require(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("AENT_REQUIRE_ALL", raising=False)
    assert deps.require("json").dumps([1]) == "[1]"
    assert deps.require("json", find_only=True) is None
    with pytest.raises(pytest.skip.Exception, match=r"pip install 'aent\[math\]'"):
        deps.require("aent_no_such_module_xyz", "math")
    for name, value in (("CI", "true"), ("AENT_REQUIRE_ALL", "1")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            assert deps.strict()
            with pytest.raises(ModuleNotFoundError, match=r"aent_no_such_module_xyz\.sub is not installed"):
                deps.require("aent_no_such_module_xyz.sub", "math")
    monkeypatch.setenv("CI", "false")
    assert not deps.strict()
