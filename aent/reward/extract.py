"""Answer extraction and string normalisation for the math reward (pure Python, no sympy).

Everything here runs in the calling process, so it must be cheap and linear in the input length: model responses
can be megabytes of junk, and nothing here may hang on them.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Deque, Dict, List, NamedTuple, Optional, Tuple

# Extraction methods, in the order they are tried. ``boxed`` is the format the paper's prompt asks for
# ("... output the final answer within \boxed{}"); the others are fallbacks.
BOXED = "boxed"
GSM8K_MARKER = "gsm8k_marker"
ANSWER_PHRASE = "answer_phrase"

# A box command not followed by a letter (``\boxedfoo`` is another command); inside a box, an escaped character
# (``\{``, ``\\``) or a brace. A box scan visits each character once: time linear in the input.
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)
#: How many of the last top-level boxes are kept for the several-boxes rule (a longer list is not one answer).
MAX_BOXES = 16
# Only the tail of a response is searched for an "answer is" phrase: the final answer is at the end, and this bounds
# the cost on very long responses.
_PHRASE_TAIL_CHARS = 4000
_ANSWER_PHRASE = re.compile(r"\banswer\s*(?:is|:)\s*:?\s*", re.IGNORECASE)


class Boxes(NamedTuple):
    """The top-level boxes of a text: the last ``MAX_BOXES`` contents (unwrapped, stripped) and how many there were.

    ``complete`` is False when the last box is never closed (a response cut off at the length limit).
    """

    contents: List[str]
    count: int
    complete: bool


def find_boxes(text: str) -> Boxes:
    """Every top-level ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed 5`` in ``text``, in one linear scan.

    Braces nest inside a box (``\\boxed{\\frac{1}{2}}``); escaped braces do not count (``\\boxed{\\{1, 2\\}}`` is
    one box); a box inside a box belongs to the outer one. Empty boxes are skipped.
    """
    contents: Deque[str] = deque(maxlen=MAX_BOXES)
    count = 0
    n = len(text)
    pos = 0
    while True:
        m = _BOX_COMMAND.search(text, pos)  # outside a box only box commands matter
        if m is None:
            return Boxes(list(contents), count, True)
        j = m.end()
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "{":
            depth, close = 0, -1
            if text.find("}", j) == -1:
                return Boxes(list(contents), count, False)
            for token in _BRACE_OR_ESCAPE.finditer(text, j):
                if token.group() == "{":
                    depth += 1
                elif token.group() == "}":
                    depth -= 1
                    if depth == 0:
                        close = token.start()
                        break
            if close == -1:
                return Boxes(list(contents), count, False)  # never closed: cut off at the length limit
            box = _unwrap_boxes(text[j + 1 : close])
            if box:
                contents.append(box)
                count += 1
            pos = close + 1
        elif j > m.end() and j < n:  # ``\boxed 5``: the argument is the next token
            k = j
            while k < n and not text[k].isspace() and text[k] not in "$.,;{}\\":
                k += 1
            if k > j:
                contents.append(text[j:k])
                count += 1
            pos = max(k, j)
        else:
            pos = j


def _brace_partners(s: str) -> Dict[int, int]:
    """Position of each ``{`` -> position of its ``}`` (escaped braces skipped), in one pass."""
    partners: Dict[int, int] = {}
    stack: List[int] = []
    for m in _BRACE_OR_ESCAPE.finditer(s):
        token = m.group()
        if token == "{":
            stack.append(m.start())
        elif token == "}" and stack:
            partners[stack.pop()] = m.start()
    return partners


def _unwrap_boxes(content: str) -> str:
    """``\\boxed{\\boxed{5}}`` -> ``5``: strip boxes that span the whole string, at any depth, in linear time."""
    lo, hi = 0, len(content)
    partners: Optional[Dict[int, int]] = None
    while True:
        while lo < hi and content[lo].isspace():
            lo += 1
        while hi > lo and content[hi - 1].isspace():
            hi -= 1
        m = _BOX_COMMAND.match(content, lo)
        if m is None:
            break
        j = m.end()
        while j < hi and content[j] in " \t":
            j += 1
        if j >= hi or content[j] != "{":
            break
        if partners is None:
            partners = _brace_partners(content)
        if partners.get(j) != hi - 1:
            break
        lo, hi = j + 1, hi - 1
    return content[lo:hi]


def last_boxed(text: str) -> Optional[str]:
    """Content of the last top-level ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in ``text``.

    A box wrapping a box is unwrapped (``\\boxed{\\boxed{5}}`` gives ``5``). If the last box is never closed (a
    response cut off at the length limit) there is no answer: the earlier boxes were not the model's final word.
    Returns None when there is no complete box.
    """
    boxes = find_boxes(text)
    if not boxes.complete or not boxes.contents:
        return None
    return boxes.contents[-1]


# Where a fallback answer ends: a sentence end (a period, ``;``, ``!`` or ``?`` followed by a space or the end of the
# text; a decimal point is not one), a line break, or the first English word of two letters or more (``13 because
# 3*4=12`` gives ``13``). LaTeX commands (``\frac``, ``\text{...}``) are not words.
_SENTENCE_END = re.compile(r"[.;!?](?=\s|$)|\n")
_WORD = re.compile(r"(?<![\\A-Za-z{])[A-Za-z]{2,}(?![A-Za-z}(])")
# A fallback answer is searched for in this many characters after its marker (bounds the work on junk).
_FALLBACK_CHARS = 2000
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


def _answer_after(text: str, start: int) -> Optional[str]:
    """The answer that begins at ``text[start]`` in a fallback: the first math span if the answer starts with one
    (``$\\frac{1}{2}$``), else the text up to the sentence end or the first word. Never the rest of the line."""
    stop = min(len(text), start + _FALLBACK_CHARS)
    end = text.find("\n", start, stop)
    line = text[start : stop if end == -1 else end].lstrip(" \t:")
    span = _MATH_SPAN.match(line)
    if span is not None:
        answer = next(g for g in span.groups() if g is not None)
        return answer.strip() or None
    stop = len(line)
    for pattern in (_SENTENCE_END, _WORD):
        m = pattern.search(line)
        if m is not None:
            stop = min(stop, m.start())
    answer = line[:stop].strip().rstrip(",").strip()
    return answer or None


def gsm8k_marker(text: str) -> Optional[str]:
    """The answer after the last ``####`` (GSM8K's format), up to the end of the answer (see :func:`answer_phrase`)."""
    pos = text.rfind("####")
    if pos == -1:
        return None
    return _answer_after(text, pos + 4)


def answer_phrase(text: str) -> Optional[str]:
    """The answer after the last "answer is" / "answer:" phrase (as in "The final answer is 5.").

    Only the answer itself: the first math span (``$...$``, ``\\(...\\)``) if it starts with one, else the text up to
    the sentence end or the first English word, so ``The answer is 13 because 3*4=12.`` gives ``13``.
    """
    tail = text[-_PHRASE_TAIL_CHARS:]
    last = None
    for match in _ANSWER_PHRASE.finditer(tail):
        last = match
    if last is None:
        return None
    return _answer_after(tail, last.end())


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


class Extraction(NamedTuple):
    """What :func:`extract` found: the answer (None if none), how, and the earlier top-level boxes.

    ``boxes`` holds every top-level box (last one included) when there are between 2 and ``MAX_BOXES`` of them,
    for the several-boxes rule (``\\boxed{1}, \\boxed{2}`` for the answer ``1, 2``); otherwise it is empty.
    """

    answer: Optional[str]
    method: Optional[str]
    boxes: List[str]


def extract(solution_str: str) -> Extraction:
    """Answer, method and boxes of a model response (see :func:`extract_answer` for the order)."""
    boxes = find_boxes(solution_str)
    if boxes.complete and boxes.contents:
        several = list(boxes.contents) if 2 <= boxes.count <= MAX_BOXES else []
        return Extraction(boxes.contents[-1], BOXED, several)
    marker = gsm8k_marker(solution_str)
    if marker is not None:
        return Extraction(marker, GSM8K_MARKER, [])
    phrase = answer_phrase(solution_str)
    if phrase is not None:
        return Extraction(phrase, ANSWER_PHRASE, [])
    return Extraction(None, None, [])


def extract_answer(solution_str: str) -> Tuple[Optional[str], Optional[str]]:
    """(answer, method) from a model response; (None, None) when no answer can be found.

    Order: last ``\\boxed{}`` (the format the prompt asks for; a later box corrects an earlier one), then GSM8K's
    ``#### answer``, then a final "the answer is ..." phrase. A response whose last box is unclosed (cut off) falls
    through to the fallbacks. Fallbacks take the answer only, never the rest of the line.
    """
    found = extract(solution_str)
    return found.answer, found.method


# ---------------------------------------------------------------------------------------------------------------------
# Answer text: percent signs, unicode fractions and minus signs

_UNICODE_MINUS = {"\u2212": "-", "\ufe63": "-", "\uff0d": "-"}
_VULGAR = {
    "½": (1, 2), "⅓": (1, 3), "⅔": (2, 3), "¼": (1, 4), "¾": (3, 4), "⅕": (1, 5), "⅖": (2, 5), "⅗": (3, 5),
    "⅘": (4, 5), "⅙": (1, 6), "⅚": (5, 6), "⅐": (1, 7), "⅛": (1, 8), "⅜": (3, 8), "⅝": (5, 8), "⅞": (7, 8),
    "⅑": (1, 9), "⅒": (1, 10),
}  # fmt: skip
_VULGAR_RE = re.compile(r"(\d+)?\s*([" + "".join(_VULGAR) + "])")
_PERCENT = re.compile(r"\s*\\?%")


def _vulgar(m: re.Match[str]) -> str:
    num, den = _VULGAR[m.group(2)]
    frac = f"\\frac{{{num}}}{{{den}}}"
    return f"({m.group(1)}+{frac})" if m.group(1) else frac


def normalize_answer_text(s: str) -> str:
    """Spellings math-verify does not read, rewritten to LaTeX it does: unicode minus signs -> ``-``, ``½`` ->
    ``\\frac{1}{2}`` (``2½`` -> ``(2+\\frac{1}{2})``), ``28 %`` / ``100%`` -> ``28\\%`` / ``100\\%`` (a bare ``%``
    starts a LaTeX comment). Linear time."""
    if any(ch in s for ch in _UNICODE_MINUS):
        s = s.translate(str.maketrans(_UNICODE_MINUS))
    if any(ch in s for ch in _VULGAR):
        s = _VULGAR_RE.sub(_vulgar, s)
    if "%" in s:
        s = _PERCENT.sub(r"\\%", s)
    return s


# ---------------------------------------------------------------------------------------------------------------------
# Ground truths


def is_gsm8k_source(data_source: str) -> bool:
    return "gsm8k" in (data_source or "").lower()


_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def strip_thousands_separators(s: str) -> str:
    """``1,000,000`` -> ``1000000``. Only used for GSM8K, whose answers are single numbers: in MATH, ``1,000``
    could be a tuple."""
    return _THOUSANDS_SEPARATOR.sub("", s)


def _ground_truth_text(ground_truth) -> Optional[str]:
    """The ground truth as one string, or None when it is missing, empty or of a type no data set stores."""
    if hasattr(ground_truth, "tolist") and not isinstance(ground_truth, (str, bytes)):
        ground_truth = ground_truth.tolist()  # numpy arrays and scalars, as parquet columns arrive in verl
    if isinstance(ground_truth, bytes):
        try:
            ground_truth = ground_truth.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(ground_truth, (list, tuple)):
        parts = [_ground_truth_text(g) for g in ground_truth]
        if not parts or any(p is None for p in parts):
            return None
        return ", ".join(_strip_math_delimiters(p) for p in parts)
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, (str, int, float)):
        return None  # None, dicts, booleans: a data error, not an answer
    if isinstance(ground_truth, float):
        if ground_truth != ground_truth or ground_truth in (float("inf"), float("-inf")):
            return None  # NaN: pandas' spelling of a missing value
        ground_truth = repr(ground_truth)
    text = str(ground_truth).strip()
    return text or None


def normalize_ground_truth(data_source: str, ground_truth) -> Optional[str]:
    """The gold answer as a LaTeX string, from whatever the data set stores; None for a bad ground truth.

    - GSM8K: a full solution ending in ``#### 72`` or just ``72``; thousands separators and ``$`` removed.
    - MATH (lighteval layout): the answer, or a full solution whose last ``\\boxed{}`` holds it (several top-level
      boxes, as in ``\\boxed{2}, \\boxed{3}``, are one answer: ``2, 3``).
    - OpenR1-Math and the evaluation sets: the answer string, possibly wrapped in ``$...$``.
    A list (OlympiadBench's ``final_answer``) is joined with ", "; an int or float is its decimal text. None, NaN,
    an empty string, a bool or any other type is a bad ground truth: None.
    """
    gold = _ground_truth_text(ground_truth)
    if gold is None:
        return None
    gold = normalize_answer_text(gold)
    if is_gsm8k_source(data_source):
        if "####" in gold:
            gold = gold.rsplit("####", 1)[1]
        gold = strip_thousands_separators(_strip_sentence(gold)).replace("\\$", "").replace("$", "").strip()
        return gold or None
    if "\\boxed" in gold or "\\fbox" in gold:
        boxes = find_boxes(gold)
        if boxes.complete and boxes.contents:
            several = 2 <= boxes.count <= MAX_BOXES
            gold = ", ".join(boxes.contents) if several else boxes.contents[-1]
    return _strip_math_delimiters(gold) or None


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
