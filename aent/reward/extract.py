"""Answer extraction and string normalisation for the math reward (pure Python, no sympy).

Everything here runs in the calling process, so it must be cheap and linear in the input length: model responses
can be megabytes of junk, and nothing here may hang on them.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

# Extraction methods, in the order they are tried. ``boxed`` is the format the paper's prompt asks for
# ("... output the final answer within \boxed{}"); the others are fallbacks.
BOXED = "boxed"
GSM8K_MARKER = "gsm8k_marker"
ANSWER_PHRASE = "answer_phrase"

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# Only the tail of a response is searched for an "answer is" phrase: the final answer is at the end, and this bounds
# the regex cost on very long responses.
_PHRASE_TAIL_CHARS = 4000
_ANSWER_PHRASE = re.compile(r"\banswer\s*(?:is|:)\s*:?\s*", re.IGNORECASE)


def _match_braces(text: str, open_pos: int) -> int:
    """Index just past the ``}`` matching the ``{`` at ``open_pos``, or -1 if it is never closed.

    Escaped braces (``\\{``, ``\\}``) do not count, so ``\\boxed{\\{1, 2\\}}`` is one box.
    """
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _find_box(text: str, start: int) -> Tuple[int, int]:
    """Position and command length of the first ``\\boxed`` / ``\\fbox`` at or after ``start``; (-1, 0) if none."""
    best, best_len = -1, 0
    for cmd in _BOX_COMMANDS:
        pos = text.find(cmd, start)
        while pos != -1 and pos + len(cmd) < len(text) and text[pos + len(cmd)].isalpha():
            pos = text.find(cmd, pos + 1)  # e.g. ``\boxedfoo`` is another command
        if pos != -1 and (best == -1 or pos < best):
            best, best_len = pos, len(cmd)
    return best, best_len


def last_boxed(text: str) -> Optional[str]:
    """Content of the last top-level ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in ``text``.

    Braces nest (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``). A box inside a box belongs to the outer one
    (``\\boxed{\\boxed{5}}`` gives ``5`` after unwrapping). If the last box is never closed (a response cut off at
    the length limit) there is no answer: the earlier boxes were not the model's final word.
    Returns None when there is no complete box or the last box is empty.
    """
    last: Optional[str] = None
    pos = 0
    while True:
        pos, cmd_len = _find_box(text, pos)
        if pos == -1:
            break
        after = pos + cmd_len
        # skip spaces between the command and its argument
        j = after
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            end = _match_braces(text, j)
            if end == -1:
                return None
            last = text[j + 1 : end - 1]
            pos = end
        elif j > after and j < len(text):
            # ``\boxed 5``: the argument is the next token
            k = j
            while k < len(text) and not text[k].isspace() and text[k] not in "$.,;":
                k += 1
            last = text[j:k]
            pos = max(k, j + 1)
        else:
            pos = after
    if last is None:
        return None
    last = _unwrap_boxes(last.strip())
    return last or None


def _unwrap_boxes(content: str) -> str:
    """``\\boxed{5}`` -> ``5`` when a box spans the whole string (repeatedly)."""
    while True:
        pos, cmd_len = _find_box(content, 0)
        if pos != 0:
            return content
        j = cmd_len
        while j < len(content) and content[j] in " \t":
            j += 1
        if j >= len(content) or content[j] != "{":
            return content
        end = _match_braces(content, j)
        if end != len(content):
            return content
        content = content[j + 1 : end - 1].strip()


def gsm8k_marker(text: str) -> Optional[str]:
    """The answer after the last ``####`` (GSM8K's format), up to the end of that line."""
    pos = text.rfind("####")
    if pos == -1:
        return None
    line = text[pos + 4 :].split("\n", 1)[0]
    answer = _strip_sentence(line)
    return answer or None


def answer_phrase(text: str) -> Optional[str]:
    """The answer after the last "answer is" / "answer:" phrase (as in "The final answer is 5."), up to the end of the line."""
    tail = text[-_PHRASE_TAIL_CHARS:]
    last = None
    for match in _ANSWER_PHRASE.finditer(tail):
        last = match
    if last is None:
        return None
    line = tail[last.end() :].split("\n", 1)[0]
    answer = _strip_sentence(line)
    return answer or None


def _strip_sentence(s: str) -> str:
    s = s.strip()
    s = _strip_math_delimiters(s)
    s = s.rstrip(".").strip()
    return _strip_math_delimiters(s)


def _strip_math_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left) : len(s) - len(right)].strip()
    return s


def extract_answer(solution_str: str) -> Tuple[Optional[str], Optional[str]]:
    """(answer, method) from a model response; (None, None) when no answer can be found.

    Order: last ``\\boxed{}`` (the format the prompt asks for), then GSM8K's ``#### answer``, then a final
    "the answer is ..." phrase. A response whose last box is unclosed (cut off) falls through to the fallbacks.
    """
    boxed = last_boxed(solution_str)
    if boxed is not None:
        return boxed, BOXED
    marker = gsm8k_marker(solution_str)
    if marker is not None:
        return marker, GSM8K_MARKER
    phrase = answer_phrase(solution_str)
    if phrase is not None:
        return phrase, ANSWER_PHRASE
    return None, None


# ---------------------------------------------------------------------------------------------------------------------
# Ground truths


def is_gsm8k_source(data_source: str) -> bool:
    return "gsm8k" in (data_source or "").lower()


_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def strip_thousands_separators(s: str) -> str:
    """``1,000,000`` -> ``1000000``. Only used for GSM8K, whose answers are single numbers: in MATH, ``1,000``
    could be a tuple."""
    return _THOUSANDS_SEPARATOR.sub("", s)


def normalize_ground_truth(data_source: str, ground_truth) -> str:
    """The gold answer as a LaTeX string, from whatever the data set stores.

    - GSM8K: a full solution ending in ``#### 72`` or just ``72``; thousands separators and ``$`` removed.
    - MATH (lighteval layout): the answer, or a full solution whose last ``\\boxed{}`` holds it.
    - OpenR1-Math and the evaluation sets: the answer string, possibly wrapped in ``$...$``.
    A list (OlympiadBench's ``final_answer``) is joined with ", ".
    """
    if isinstance(ground_truth, (list, tuple)):
        ground_truth = ", ".join(_strip_math_delimiters(str(g)) for g in ground_truth)
    gold = str(ground_truth).strip()
    if is_gsm8k_source(data_source):
        if "####" in gold:
            gold = gold.rsplit("####", 1)[1]
        gold = strip_thousands_separators(_strip_sentence(gold)).replace("\\$", "").replace("$", "").strip()
        return gold
    if "\\boxed" in gold or "\\fbox" in gold:
        boxed = last_boxed(gold)
        if boxed is not None:
            gold = boxed
    return _strip_math_delimiters(gold)


# ---------------------------------------------------------------------------------------------------------------------
# Exact-match shortcut

_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_SPACING = re.compile(r"\\[,;:!](?![a-zA-Z])|\\displaystyle(?![a-zA-Z])|\\(?:q?quad)(?![a-zA-Z])")
_FRAC_VARIANT = re.compile(r"\\[dt]frac(?![a-zA-Z])")
# A space matters between a control word and a letter (``\pi r`` is not ``\pir``), and a reader may take ``1 2`` for
# two numbers: keep whitespace between two letters or digits, drop every other run of it.
_INSIGNIFICANT_SPACE = re.compile(r"(?<![a-zA-Z0-9])\s+|\s+(?![a-zA-Z0-9])")


def normalize_for_match(answer: str) -> str:
    """A canonical spelling used only to decide that two answers are *the same text*.

    Every rewrite here maps a LaTeX string to one that renders the same (``\\dfrac`` -> ``\\frac``, ``\\left(`` ->
    ``(``, thin spaces and insignificant whitespace dropped, outer ``$`` removed, a trailing period dropped), so
    equal normal forms mean equal answers: the shortcut never accepts a wrong answer. Anything else (``0.5`` vs
    ``\\frac12``) goes to math-verify.
    """
    s = _strip_math_delimiters(answer.strip())
    s = _LEFT_RIGHT.sub("", s)
    s = _SPACING.sub(" ", s)
    s = _FRAC_VARIANT.sub(r"\\frac", s)
    s = _INSIGNIFICANT_SPACE.sub("", s)
    s = s.strip()
    if s.endswith(".") and not s.endswith("..."):
        s = s[:-1]
    return s
