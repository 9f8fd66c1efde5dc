"""Every command shown in a ```bash block of README.md and docs/*.md parses as bash, one command where one is meant.

``bash -n`` catches unbalanced quotes and brackets. It cannot see a line continuation that a comment or trailing
blank breaks (``cmd \\  # note`` escapes a blank and ends the command, so the next line runs as a command of its
own), so that is checked separately.
"""

import re
import subprocess

import pytest
from docblocks import REPO, fenced_blocks

# a backslash followed by blanks (and maybe a comment) at the end of a line: meant as a continuation, it is not one
_BROKEN_CONTINUATION = re.compile(r"\\[ \t]+(#.*)?$")

BLOCKS = fenced_blocks("bash", "sh", "shell")


def test_blocks_are_found():
    files = {param.values[0].name for param in BLOCKS}
    assert "README.md" in files and len(BLOCKS) >= 5


@pytest.mark.parametrize("path, line, code", BLOCKS)
def test_bash_block_parses(path, line, code):
    proc = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{path.relative_to(REPO)}, block at line {line}: bash -n says\n{proc.stderr}"
    broken = [
        f"line {line + 1 + i}: {text.strip()}"
        for i, text in enumerate(code.splitlines())
        if _BROKEN_CONTINUATION.search(text)
    ]
    assert not broken, (
        f"{path.relative_to(REPO)}: a backslash followed by blanks or a comment ends the command instead of "
        f"continuing it; move the comment out of the command: {broken}"
    )
