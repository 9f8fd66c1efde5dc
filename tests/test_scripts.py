"""Every script in scripts/ answers -h and --help with its usage, exits 0, and does no work while doing so.

The scripts are found by a glob, so a script added later is covered without touching this file. Shell scripts run
with stand-ins for python, python3 and nvidia-smi first on PATH that leave a mark when called: help must not start
any of them. Python scripts run under a small runner that reports which heavy modules were imported: help must not
load torch (seconds on a busy machine) or anything else heavy.
"""

import ast
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
HEAVY = ("torch", "verl", "transformers", "triton", "ray", "vllm", "math_verify", "aent")
_RUNNER = """
import runpy, sys
path = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, str(__import__("pathlib").Path(path).parent))
code = 0
try:
    runpy.run_path(path, run_name="__main__")
except SystemExit as stop:
    code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY_NAMES))
print("HEAVY-MODULES:" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
""".replace("HEAVY_NAMES", repr(HEAVY))


def _kind(path: Path):
    """'sh', 'py' or None (not a script)."""
    if path.suffix == ".sh":
        return "sh"
    if path.suffix == ".py":
        return "py"
    if path.is_file():
        first = path.read_bytes()[:100].split(b"\n", 1)[0]
        if first.startswith(b"#!"):
            return "py" if b"python" in first else "sh" if b"sh" in first else None
    return None


def _has_main_guard(path: Path) -> bool:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test):
            return True
    return False


def _imported_by_a_script(module: str) -> bool:
    for other in SCRIPTS.glob("*.py"):
        if other.stem != module and any(
            (isinstance(n, ast.ImportFrom) and n.module == module)
            or (isinstance(n, ast.Import) and any(a.name == module for a in n.names))
            for n in ast.walk(ast.parse(other.read_text()))
        ):
            return True
    return False


ALL = sorted(p for p in SCRIPTS.iterdir() if _kind(p))
SCRIPT_FILES = [p for p in ALL if _kind(p) == "sh" or _has_main_guard(p)]


def test_the_glob_finds_the_scripts():
    names = {p.name for p in SCRIPT_FILES}
    assert {"launch_recipe.sh", "gpu_checks.sh", "run_grpo_math.sh", "bench_entropy.py"} <= names


@pytest.mark.parametrize("path", [p for p in ALL if p not in SCRIPT_FILES], ids=lambda p: p.name)
def test_python_files_without_a_main_guard_are_modules_the_scripts_import(path):
    # A Python file that runs code at the top level would not be covered by the help test: it must either be a
    # script with `if __name__ == "__main__":` or a helper module that other scripts import.
    assert _imported_by_a_script(path.stem), (
        f"scripts/{path.name} has no `if __name__ == '__main__':` guard and no script imports it; "
        "give it a main guard and an -h/--help answer"
    )


@pytest.fixture(scope="module")
def trap(tmp_path_factory):
    """A folder of stand-ins for the programs a script does its work with; each leaves a mark file when called."""
    folder = tmp_path_factory.mktemp("trap")
    marks = folder / "marks"
    marks.mkdir()
    for name in ("python", "python3", "nvidia-smi"):
        stub = folder / name
        stub.write_text(f'#!/bin/sh\necho "$0 $*" > "{marks}/{name}"\nexit 1\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return folder, marks


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("path", SCRIPT_FILES, ids=lambda p: p.name)
def test_script_answers_help_without_doing_work(path, flag, trap, tmp_path):
    folder, marks = trap
    for mark in marks.iterdir():
        mark.unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = dict(os.environ, OUT=str(out_dir), PYTHONPATH=str(REPO))
    if _kind(path) == "sh":
        env.update(PATH=f"{folder}{os.pathsep}{env['PATH']}", PYTHON=str(folder / "python"))
        cmd = ["bash", str(path), flag]
    else:
        cmd = [sys.executable, "-c", _RUNNER, str(path), flag]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, f"{path.name} {flag}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    usage = proc.stdout
    # a usage text: several lines that name the script, and no shell code leaking from the file
    assert path.name in usage or path.stem in usage, f"{path.name} {flag} does not name itself:\n{usage}"
    assert len(usage.strip().splitlines()) >= 2, usage
    assert not any(line.lstrip().startswith(("set -", "#!")) for line in usage.splitlines()), usage
    # no work: nothing started, nothing written
    assert not list(marks.iterdir()), f"{path.name} {flag} ran {[m.name for m in marks.iterdir()]}"
    assert not list(out_dir.iterdir()), f"{path.name} {flag} wrote {list(out_dir.iterdir())}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], f"{path.name} {flag} wrote into its cwd"
    if _kind(path) == "py":
        heavy = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY-MODULES:")]
        assert heavy == ["HEAVY-MODULES:"], f"{path.name} {flag} imported heavy modules: {heavy}"


def test_gpu_checks_counts_a_stage_that_did_not_run_as_failed(tmp_path):
    """With every stage passing but verl missing, gpu_checks.sh says that bench_verl_update did not run and exits
    non-zero: on the one day a GPU is lent, a skipped stage must not read as a pass."""
    folder = tmp_path / "bin"
    folder.mkdir()
    stub = folder / "python"
    # a python on which every stage succeeds, but `import verl` fails
    stub.write_text('#!/bin/sh\ncase "$*" in *"import verl"*) exit 1;; esac\nexit 0\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    out_dir = tmp_path / "out"
    env = dict(os.environ, OUT=str(out_dir), PYTHON=str(stub), PATH=f"{folder}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_checks.sh")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert proc.returncode != 0, proc.stdout
    assert "bench_verl_update did NOT run" in proc.stdout, proc.stdout
    assert "1 stage(s) failed or did not run" in proc.stdout, proc.stdout
    assert "bench_verl_update (did not run: verl, tensordict or transformers not importable)" in proc.stdout
    assert "all stages passed" not in proc.stdout
