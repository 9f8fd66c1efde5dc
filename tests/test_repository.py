"""The repository stands on its own: what the code and docs cite is in the repository, and each fact of the paper's
settings has one source (aent/settings.py) that the options, the recipes' tests and the docs' tables agree with."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import aent.settings as settings

REPO = Path(__file__).resolve().parents[1]
# files whose outside references are edited with the fused kernels (tracked so that this list only shrinks)
_KERNEL_FILES = {"aent/ops/triton_entropy.py", "tests/test_triton_entropy.py"}


def _tracked_text_files():
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in out:
        if name.endswith((".py", ".md", ".yaml", ".sh", ".toml", ".txt", "Makefile")) or name == ".ci/run":
            yield name


def test_nothing_cites_documents_outside_the_repository():
    """The method is written down in docs/METHOD.md; nothing points at the project's planning notes."""
    pattern = re.compile(r"\bSPEC\b|\bPERF\.md\b")
    hits = []
    for name in _tracked_text_files():
        if name in _KERNEL_FILES or name == "tests/test_repository.py":
            continue
        for i, line in enumerate((REPO / name).read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{name}:{i}: {line.strip()[:100]}")
    assert not hits, "cite docs/METHOD.md (or docs/PERFORMANCE.md) instead:\n" + "\n".join(hits)
    assert (REPO / "docs" / "METHOD.md").is_file()


def test_the_option_defaults_are_the_paper_setting_a():
    from aent.verl.options import AEntOptions, options_help

    defaults = {f.name: f.default for f in dataclasses.fields(AEntOptions)}
    assert {name: defaults[name] for name in settings.OPTION_NAMES} == dict(settings.SETTING_A)
    # the help strings leave the default to options_help(), which prints it once per option
    for f in dataclasses.fields(AEntOptions):
        assert "Default" not in f.metadata["help"], f.name
    assert "aent.clamp_p (default 0.33)" in options_help()


def _numbers(text):
    return [float(x) for x in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.])", text)]


def _table_rows(path, first_cell):
    for line in (REPO / path).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and cells[0] == first_cell:
            yield cells


def test_the_readme_options_table_gives_the_paper_settings():
    """README "Options": the last column reads "a / b" for each option of aent.settings."""
    checked = set()
    for line in (REPO / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 4:
            continue
        names = re.findall(r"`(\w+)`", cells[0])
        if not names or not set(names) <= set(settings.OPTION_NAMES):
            continue
        a_text, b_text = cells[-1].split(" / ")
        assert _numbers(a_text) == [settings.SETTING_A[n] for n in names], line
        assert _numbers(b_text) == [settings.SETTING_B[n] for n in names], line
        checked |= set(names)
    assert checked == set(settings.OPTION_NAMES)


def test_the_method_table_gives_the_paper_settings():
    """docs/METHOD.md "Paper settings": p, lambda_0, band, lr, clip range, warm-up for (a) and (b)."""
    order = ["clamp_p", "coef_init", "entropy_low", "entropy_high", "lr", "coef_min", "coef_max", "warmup_steps"]
    for label, setting in (("(a)", settings.SETTING_A), ("(b)", settings.SETTING_B)):
        (row,) = list(_table_rows("docs/METHOD.md", label))
        assert _numbers(" ".join(row[2:])) == [setting[n] for n in order], row


def test_docs_verl_options_table_gives_the_paper_settings():
    """docs/VERL.md "Options": the default column is setting (a); the paper column's "a ..." / "b ..." values are
    the settings' (b's alone where a equals the default)."""
    checked = set()
    for line in (REPO / "docs" / "VERL.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) != 4:
            continue
        names = re.findall(r"`(\w+)`", cells[0])
        if not set(names) <= set(settings.OPTION_NAMES):
            continue
        assert _numbers(cells[1]) == [settings.SETTING_A[n] for n in names], line
        for label, setting in settings.PAPER_SETTINGS.items():
            found = re.search(rf"\b{label} ([^;|]*?)(?:, [ab] |$)", cells[3])
            if found:
                assert _numbers(found.group(1)) == [setting[n] for n in names], (label, line)
        assert re.search(r"\bb \S", cells[3]), line  # setting b is always named
        checked |= set(names)
    assert checked == set(settings.OPTION_NAMES)


def test_make_lint_runs_what_ci_runs():
    makefile = (REPO / "Makefile").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    for command in ("ruff check .", "ruff format --check ."):
        assert command in lint, command
    assert re.search(r"^make lint\b", ci, re.MULTILINE), "CI lints with make lint"
    assert "ruff" not in ci.replace("= ruff check . && ruff format --check .", ""), "one lint command, in the Makefile"
