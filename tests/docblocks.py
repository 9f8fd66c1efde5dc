"""The fenced code blocks of the README and docs/*.md, for the tests that run or check them (test_docs.py: shell,
test_doc_examples.py: Python)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def fenced_blocks(*languages: str) -> List:
    """One ``pytest.param(path, line, text)`` per block fenced as one of ``languages``, with id ``file:line``."""
    fence = re.compile(rf"^```(?:{'|'.join(map(re.escape, languages))})[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for match in fence.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append(pytest.param(path, line, match.group(1), id=f"{path.relative_to(REPO)}:{line}"))
    return blocks
