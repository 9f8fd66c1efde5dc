"""The paper's data sets (arXiv 2509.03493, Section 5) and how each becomes verl rows.

Every output row has ``data_source`` (a stable name per data set, read by :func:`aent.reward.compute_score` to pick
the gold normalisation), ``prompt`` (one user turn: the problem followed by :data:`INSTRUCTION`), ``ability`` "math",
``reward_model`` ``{"style": "rule", "ground_truth": answer}`` and ``extra_info`` ``{"split", "index", "question",
"answer", ...}`` where ``index`` is the row's position in the source file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

from aent.reward.extract import strip_thousands_separators

# verl's MATH preprocessing, as used by the paper's setup (Section 5).
INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


@dataclass(frozen=True)
class Source:
    """How to turn one source table into verl rows."""

    name: str
    data_source: str
    split: str
    problem_columns: Tuple[str, ...]
    answer_columns: Tuple[str, ...] = ()  # a column holding the final answer itself
    solution_columns: Tuple[str, ...] = ()  # else a worked solution whose last \boxed{} is the answer
    extra_columns: Tuple[str, ...] = ()  # copied into extra_info when present
    where: str = ""  # where users get the source file (also in docs/DATA.md)
    gsm8k_answer: bool = False
    row_filter: Optional[Callable] = field(default=None, compare=False)  # (df) -> (bool mask, description)


def _level_is_5(df) -> Tuple[object, str]:
    if "level" not in df.columns:
        return None, "column 'level' (MATH-Hard is the level-5 subset of MATH test)"
    levels = df["level"].astype(str).str.strip().str.lower()
    return levels.isin(["level 5", "5"]), "level 5"


def _olympiad_text_math_english(df) -> Tuple[object, str]:
    import pandas as pd

    mask = pd.Series(True, index=df.index)
    kept = []
    if "language" in df.columns:
        mask &= df["language"].astype(str).str.lower().str.startswith("english")
        kept.append("English")
    if "subject" in df.columns:
        mask &= df["subject"].astype(str).str.lower().str.startswith("math")
        kept.append("maths")
    if "modality" in df.columns:
        mask &= df["modality"].astype(str).str.lower().str.startswith("text")
        kept.append("text-only")
    return mask, ", ".join(kept) or "all rows"


SOURCES: Dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "math_train",
            "lighteval/MATH",
            "train",
            ("problem",),
            answer_columns=("answer",),
            solution_columns=("solution",),
            extra_columns=("level", "type"),
            where="MATH train, lighteval layout (DigitalLearningGmbH/MATH-lighteval, train split; 7,500 rows)",
        ),
        Source(
            "gsm8k_train",
            "openai/gsm8k",
            "train",
            ("question",),
            answer_columns=("answer",),
            where="openai/gsm8k, config main, train split (7,473 rows)",
            gsm8k_answer=True,
        ),
        Source(
            "gsm8k_test",
            "openai/gsm8k",
            "test",
            ("question",),
            answer_columns=("answer",),
            where="openai/gsm8k, config main, test split (1,319 rows)",
            gsm8k_answer=True,
        ),
        Source(
            "openr1_40k",
            "open-r1/OpenR1-Math-220k",
            "train",
            ("problem",),
            answer_columns=("answer",),
            extra_columns=("uuid", "source", "problem_type", "question_type"),
            where="open-r1/OpenR1-Math-220k, config default, train split (93,733 rows; or config all)",
        ),
        Source(
            "math_hard",
            "lighteval/MATH-Hard",
            "test",
            ("problem",),
            answer_columns=("answer",),
            solution_columns=("solution",),
            extra_columns=("level", "type"),
            where="MATH test, lighteval layout (DigitalLearningGmbH/MATH-lighteval test split, or lighteval/MATH-Hard "
            "test split); level-5 rows are kept (1,324 of 5,000)",
            row_filter=_level_is_5,
        ),
        Source(
            "math500",
            "HuggingFaceH4/MATH-500",
            "test",
            ("problem",),
            answer_columns=("answer",),
            solution_columns=("solution",),
            extra_columns=("level", "subject", "unique_id"),
            where="HuggingFaceH4/MATH-500, test split (500 rows)",
        ),
        Source(
            "aime24",
            "aime24",
            "test",
            ("problem", "Problem", "question"),
            answer_columns=("answer", "Answer"),
            solution_columns=("solution", "Solution"),
            extra_columns=("id", "ID", "url"),
            where="HuggingFaceH4/aime_2024 (train split) or Maxwell-Jia/AIME_2024 (30 rows)",
        ),
        Source(
            "amc23",
            "amc23",
            "test",
            ("question", "problem"),
            answer_columns=("answer",),
            extra_columns=("id", "url"),
            where="math-ai/amc23 (test split, 40 rows) or Qwen2.5-Math evaluation/data/amc23/test.jsonl",
        ),
        Source(
            "minerva",
            "minerva_math",
            "test",
            ("problem", "question"),
            answer_columns=("answer",),
            solution_columns=("solution",),
            extra_columns=("idx", "type"),
            where="Qwen2.5-Math evaluation/data/minerva_math/test.jsonl (272 rows) or math-ai/minervamath",
        ),
        Source(
            "olympiadbench",
            "olympiadbench",
            "test",
            ("question", "problem"),
            answer_columns=("final_answer", "answer"),
            extra_columns=("id", "subfield", "answer_type", "is_multiple_answer", "unit"),
            where="Qwen2.5-Math evaluation/data/olympiadbench/test.jsonl (675 rows) or Hothan/OlympiadBench config "
            "OE_TO_maths_en_COMP; English text-only maths rows are kept",
            row_filter=_olympiad_text_math_english,
        ),
    ]
}


# ---------------------------------------------------------------------------------------------------------------------
# Answers


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    return s


def answer_to_text(value) -> Optional[str]:
    """A ground-truth string from a cell: lists are joined with ", ", integral floats lose ``.0``, ``$`` removed.

    Returns None for a missing or empty answer.
    """
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        parts = [answer_to_text(v) for v in value]
        parts = [p for p in parts if p]
        return ", ".join(parts) or None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
        return repr(value)
    text = _strip_dollars(str(value))
    if re.fullmatch(r"-?\d+\.0+", text):
        text = text.split(".")[0]
    return text or None


def gsm8k_answer(value) -> Optional[str]:
    """The number after ``####`` in a GSM8K solution, without thousands separators."""
    text = "" if value is None else str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    text = strip_thousands_separators(text.strip().rstrip(".")).replace("$", "").strip()
    return text or None


# ---------------------------------------------------------------------------------------------------------------------
# OpenR1-Math: which answers are verifiable

_MULTI_ANSWER_MARKERS = (
    ";",
    " or ",
    "\\text{or}",
    "\\text{ or }",
    " and ",
    "\\text{and}",
    "\\text{ and }",
    "\\quad",
    "\\\\",
)
_NON_ANSWERS = {"proof", "notfound", "not found", "none", "n/a", "yes", "no", "true", "false"}
_CONTROL_WORD = re.compile(r"\\[a-zA-Z]+")
_WORD = re.compile(r"[a-zA-Z]{3,}")
MAX_OPENR1_ANSWER_CHARS = 64


def openr1_answer_rejection(answer: Optional[str], question_type=None, correctness_math_verify=None) -> Optional[str]:
    """Why an OpenR1-Math row is not a verifiable single answer, or None if it is (before the sympy parse check).

    The rule (docs/DATA.md): question_type is "math-word-problem" (no proofs, no multiple choice); the answer is
    non-empty, at most 64 characters, not a word like "proof"; it names one answer (no ";", "or", "and", "\\quad",
    line breaks, and at most one "="); it has no English words (no run of 3+ letters outside LaTeX commands); and
    at least one of the R1 generations was judged correct by math-verify (so math-verify can check it).
    """
    if question_type is not None and str(question_type) != "math-word-problem":
        return "question_type"
    if not answer:
        return "empty"
    if len(answer) > MAX_OPENR1_ANSWER_CHARS:
        return "too_long"
    if answer.strip().lower() in _NON_ANSWERS:
        return "not_an_answer"
    if any(marker in answer for marker in _MULTI_ANSWER_MARKERS) or answer.count("=") > 1:
        return "multiple_answers"
    if _WORD.search(_CONTROL_WORD.sub(" ", answer)):
        return "words"
    if correctness_math_verify is not None:
        flags = (
            correctness_math_verify.tolist() if hasattr(correctness_math_verify, "tolist") else correctness_math_verify
        )
        if isinstance(flags, (list, tuple)) and not any(bool(f) for f in flags):
            return "no_verified_generation"
    return None
