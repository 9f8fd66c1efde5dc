"""Binary math reward for verl: last ``\\boxed{}`` answer checked by math-verify, with a hard time limit.

Use from verl 0.9::

    reward.custom_reward_function.path=pkg://aent.reward
    reward.custom_reward_function.name=compute_score
    # optional: +reward.custom_reward_function.reward_kwargs.timeout=5
    #           +reward.custom_reward_function.reward_kwargs.format_penalty=0.1

The paper (arXiv 2509.03493, Section 5) trains with a binary math-verify reward: 1 for a correct final answer,
0 otherwise. math-verify (sympy) runs in separate worker processes (:mod:`aent.reward.pool`): a check that exceeds
its time limit is killed and scores 0 with reason "timeout", and the reward keeps working. Importing this module
loads neither sympy nor math-verify; the first call starts the workers (see docs/REWARD.md for the cost).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

from aent.reward.extract import (
    BOXED,
    extract_answer,
    is_gsm8k_source,
    normalize_for_match,
    normalize_ground_truth,
    strip_thousands_separators,
)

logger = logging.getLogger(__name__)

__all__ = ["REASONS", "compute_score", "compute_score_async", "shutdown", "warmup"]

#: Values of ``result["reason"]``.
REASONS = ("correct", "wrong", "no_answer", "parse_error", "timeout")

DEFAULT_TIMEOUT_S = float(os.environ.get("AENT_REWARD_TIMEOUT", "5"))
#: Extracted answers longer than this are not sent to sympy (no real final answer is this long): parse_error.
MAX_ANSWER_CHARS = 2000

_CACHE_SIZE = 1 << 16
_cache: OrderedDict[Tuple[str, str], str] = OrderedDict()
_cache_lock = threading.Lock()


def _cached(key: Tuple[str, str]) -> Optional[str]:
    with _cache_lock:
        reason = _cache.get(key)
        if reason is not None:
            _cache.move_to_end(key)
        return reason


def _remember(key: Tuple[str, str], reason: str) -> None:
    with _cache_lock:
        _cache[key] = reason
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def _judge(gold: str, prediction: str, timeout: float) -> str:
    """Reason for one (gold, prediction) pair, both already normalised strings."""
    if normalize_for_match(prediction) == normalize_for_match(gold):
        return "correct"  # same answer text; no need for sympy
    if len(prediction) > MAX_ANSWER_CHARS:
        return "parse_error"
    key = (gold, prediction)
    reason = _cached(key)
    if reason is not None:
        return reason
    from aent.reward.pool import CRASHED, TIMEOUT, get_pool

    verdict, detail = get_pool().verify(gold, prediction, timeout)
    if verdict == TIMEOUT:
        logger.warning(
            "math-verify gave no verdict within %g s for answer %.80r (gold %.80r)", timeout, prediction, gold
        )
        return "timeout"  # not cached: a busy host may have caused it
    if verdict == CRASHED:
        logger.warning("math-verify crashed on answer %.80r (gold %.80r): %s", prediction, gold, detail)
        return "parse_error"
    if verdict == "gold_parse_error":
        logger.warning("math-verify cannot parse the ground truth %.120r; every answer to it scores 0", gold)
        reason = "parse_error"
    elif verdict == "error":
        logger.warning("math-verify raised on answer %.80r (gold %.80r): %s", prediction, gold, detail)
        reason = "parse_error"
    else:
        reason = verdict
    _remember(key, reason)
    return reason


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Optional[dict] = None,
    *,
    timeout: Optional[float] = None,
    format_penalty: float = 0.0,
    **kwargs: Any,
) -> Dict[str, Any]:
    """Score one response against its ground truth (verl's ``compute_score`` signature).

    Args:
        data_source: the row's ``data_source``; selects the gold normalisation (GSM8K answers lose thousands
            separators; everything else is LaTeX, possibly a full solution whose last ``\\boxed{}`` is the answer).
        solution_str: the decoded model response.
        ground_truth: ``reward_model.ground_truth`` of the row (str, or a list of strings joined with ", ").
        extra_info: unused; accepted for verl.
        timeout: seconds math-verify may spend on this answer (default 5, or env ``AENT_REWARD_TIMEOUT``).
        format_penalty: subtracted from the score when the response has no ``\\boxed{}`` answer (the format the
            prompt asks for), whether or not a fallback found one. Default 0: the paper's binary reward.
        **kwargs: ignored (verl passes e.g. ``reward_router_address``).

    Returns:
        ``{"score": float, "acc": bool, "pred": str | None, "reason": str, "format_ok": bool}`` with the same keys
        on every call (verl stacks them into arrays). ``score`` = 1.0 if correct else 0.0, minus the format penalty.
        ``reason`` is one of :data:`REASONS`.
    """
    if timeout is None:
        timeout = DEFAULT_TIMEOUT_S
    if not (timeout > 0):
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    if not isinstance(solution_str, str):
        solution_str = "" if solution_str is None else str(solution_str)
    if "\x00" in solution_str:
        solution_str = solution_str.replace("\x00", "")

    prediction, method = extract_answer(solution_str)
    format_ok = method == BOXED
    if prediction is None:
        reason = "no_answer"
    else:
        gold = normalize_ground_truth(data_source, ground_truth)
        if is_gsm8k_source(data_source):
            prediction = strip_thousands_separators(prediction)
        if not gold:
            logger.warning("empty ground truth for data_source %r; scoring 0", data_source)
            reason = "parse_error"
        else:
            reason = _judge(gold, prediction, float(timeout))
    acc = reason == "correct"
    score = (1.0 if acc else 0.0) - (0.0 if format_ok else float(format_penalty))
    return {"score": score, "acc": acc, "pred": prediction, "reason": reason, "format_ok": format_ok}


async def compute_score_async(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Optional[dict] = None, **kwargs: Any
) -> Dict[str, Any]:
    """:func:`compute_score` for an asyncio loop: runs in the default executor, so the loop never blocks on sympy.

    verl awaits a coroutine function directly (``.name=compute_score_async``); both names give the same results.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        None, lambda: compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
    )


def warmup() -> None:
    """Start the math-verify workers now and wait until they are ready (otherwise the first call pays for it)."""
    from aent.reward.pool import get_pool

    get_pool().warmup()


def shutdown() -> None:
    """Stop the math-verify workers; the next call starts new ones."""
    from aent.reward.pool import shutdown as _shutdown

    _shutdown()
