"""Binary math reward for verl: last ``\\boxed{}`` answer checked by math-verify, with a hard time limit.

Use from verl 0.9::

    reward.custom_reward_function.path=pkg://aent.reward
    reward.custom_reward_function.name=compute_score_async   # or compute_score: same signature and results
    # optional: +reward.custom_reward_function.reward_kwargs.timeout=5
    #           +reward.custom_reward_function.reward_kwargs.format_penalty=0.1

:func:`compute_score_batch` scores a whole list at once (for your own trainer).

The paper (arXiv 2509.03493, Section 5) trains with a binary math-verify reward: 1 for a correct final answer,
0 otherwise. math-verify (sympy) runs in separate worker processes (:mod:`aent.reward.pool`): a check that exceeds
its time limit is killed and scores 0 with reason "timeout", and the reward keeps working. Importing this module
loads neither sympy nor math-verify; the first call starts the workers (see docs/REWARD.md for the cost). A broken
ground truth is reported as ``reason="bad_ground_truth"`` (and the numeric key ``bad_ground_truth``, which verl
turns into a validation metric), never as a wrong answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from aent.reward.extract import (
    BOXED,
    extract,
    is_gsm8k_source,
    normalize_answer_text,
    normalize_for_match,
    normalize_ground_truth,
    strip_thousands_separators,
)

logger = logging.getLogger(__name__)

__all__ = ["REASONS", "compute_score", "compute_score_async", "compute_score_batch", "shutdown", "warmup"]

#: Values of ``result["reason"]``.
REASONS = ("correct", "wrong", "no_answer", "parse_error", "timeout", "bad_ground_truth")

#: Seconds math-verify may spend on one response when neither ``timeout=`` nor ``AENT_REWARD_TIMEOUT`` says otherwise.
DEFAULT_TIMEOUT_S = 5.0
#: Keyword arguments verl's reward managers pass to every call (with a reward model); accepted and not used.
VERL_KWARGS = ("reward_router_address", "reward_model_tokenizer")
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
    if len(prediction) > MAX_ANSWER_CHARS:
        return "parse_error"
    if normalize_for_match(prediction) == normalize_for_match(gold):
        return "correct"  # same answer text; no need for sympy
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
        reason = "bad_ground_truth"
    elif verdict == "error":
        logger.warning("math-verify raised on answer %.80r (gold %.80r): %s", prediction, gold, detail)
        reason = "parse_error"
    else:
        reason = verdict
    _remember(key, reason)
    return reason


def _check_kwargs(kwargs: Dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - set(VERL_KWARGS))
    if unknown:
        raise TypeError(
            f"compute_score got unknown keyword argument(s) {unknown} (reward.custom_reward_function.reward_kwargs?); "
            f"it takes timeout and format_penalty, and accepts verl's {list(VERL_KWARGS)}"
        )


def _check_timeout(timeout: Optional[float]) -> float:
    if timeout is None:
        from aent.reward.pool import env_seconds

        return env_seconds("AENT_REWARD_TIMEOUT", DEFAULT_TIMEOUT_S)
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(
            f"timeout must be > 0 seconds, got {timeout!r} (reward.custom_reward_function.reward_kwargs.timeout or "
            "env AENT_REWARD_TIMEOUT)"
        )
    return float(timeout)


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
        ground_truth: ``reward_model.ground_truth`` of the row (str, a number, or a list of strings joined with ", ").
            None, NaN, an empty string or any other type is a data error: ``reason="bad_ground_truth"``.
        extra_info: unused; accepted for verl.
        timeout: seconds math-verify may spend on this response, all checks together (default 5, or env
            ``AENT_REWARD_TIMEOUT``). The call returns within it plus a small constant once workers are up.
        format_penalty: subtracted from the score when the response has no ``\\boxed{}`` answer (the format the
            prompt asks for), whether or not a fallback found one. Default 0: the paper's binary reward.
        **kwargs: verl's :data:`VERL_KWARGS` (accepted, unused); any other key is a ``TypeError`` listing the known
            ones, so that a misspelt ``reward_kwargs`` entry does not pass unnoticed.

    Returns:
        ``{"score", "acc", "pred", "reason", "format_ok", "bad_ground_truth"}`` with the same keys on every call (verl
        stacks them into arrays; numeric ones become validation metrics). ``score`` = 1.0 if correct else 0.0, minus
        the format penalty. ``reason`` is one of :data:`REASONS`; ``bad_ground_truth`` is ``reason ==
        "bad_ground_truth"`` as a float (0.0 or 1.0), so that its mean is the share of rows with a broken gold.
    """
    _check_kwargs(kwargs)
    timeout = _check_timeout(timeout)
    deadline = time.monotonic() + timeout
    if not isinstance(solution_str, str):
        solution_str = "" if solution_str is None else str(solution_str)
    if "\x00" in solution_str:
        solution_str = solution_str.replace("\x00", "")

    found = extract(solution_str)
    prediction = found.answer
    format_ok = found.method == BOXED
    gold = normalize_ground_truth(data_source, ground_truth)
    if gold is None:
        logger.warning("bad ground truth %.80r for data_source %r; scoring 0", ground_truth, data_source)
        reason = "bad_ground_truth"
    elif prediction is None:
        reason = "no_answer"
    else:
        prediction = _prepare(data_source, prediction)
        reason = _judge(gold, prediction, timeout)
        if reason not in ("correct", "bad_ground_truth") and found.boxes and "," in gold:
            # Several top-level boxes may be one answer: \\boxed{1}, \\boxed{2} for "1, 2". Only for a gold with
            # several parts, so that boxing every candidate never matches a single-valued answer.
            joined = ", ".join(_prepare(data_source, box) for box in found.boxes)
            remaining = deadline - time.monotonic()
            if joined != prediction and remaining > 0:
                joined_reason = _judge(gold, joined, remaining)
                if joined_reason in ("correct", "timeout"):  # a timeout leaves the verdict open: say so
                    prediction, reason = joined, joined_reason
    acc = reason == "correct"
    score = (1.0 if acc else 0.0) - (0.0 if format_ok else float(format_penalty))
    return {
        "score": score,
        "acc": acc,
        "pred": prediction,
        "reason": reason,
        "format_ok": format_ok,
        "bad_ground_truth": 1.0 if reason == "bad_ground_truth" else 0.0,
    }


def _prepare(data_source: str, answer: str) -> str:
    answer = normalize_answer_text(answer)
    if is_gsm8k_source(data_source):
        answer = strip_thousands_separators(answer)
    return answer


_executor = None
_executor_pid = -1
_executor_lock = threading.Lock()


def _get_executor():
    """Threads that wait on the worker processes (they only block on pipes): a few per worker, never the caller's
    default executor, which verl also uses to decode tokens."""
    global _executor, _executor_pid
    with _executor_lock:
        if _executor is None or _executor_pid != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            from aent.reward.pool import default_num_workers

            _executor = ThreadPoolExecutor(max_workers=4 * default_num_workers(), thread_name_prefix="aent-reward")
            _executor_pid = os.getpid()
        return _executor


async def compute_score_async(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Optional[dict] = None, **kwargs: Any
) -> Dict[str, Any]:
    """:func:`compute_score` for an asyncio loop (verl's reward loop awaits it when ``.name=compute_score_async``).

    Runs on this module's own thread pool (sized to the worker processes), so the loop never blocks on sympy and
    verl's default executor stays free for decoding. Same results as :func:`compute_score`.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _get_executor(), lambda: compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
    )


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Optional[Sequence[Optional[dict]]] = None,
    **kwargs: Any,
) -> List[Dict[str, Any]]:
    """Score a whole batch on all worker processes at once; results in input order, equal to calling
    :func:`compute_score` on each row (``kwargs``: ``timeout``, ``format_penalty``).

    The signature of verl's batch reward functions (``data_sources=``, ``solution_strs=``, ...): for your own
    trainer, or a reward manager that hands over a whole step.
    """
    n = len(solution_strs)
    if not (len(data_sources) == n and len(ground_truths) == n and (extra_infos is None or len(extra_infos) == n)):
        raise ValueError(
            f"compute_score_batch needs one data_source, ground_truth (and extra_info) per response: got "
            f"{len(data_sources)} data_sources, {n} solution_strs, {len(ground_truths)} ground_truths"
            + ("" if extra_infos is None else f", {len(extra_infos)} extra_infos")
        )
    _check_kwargs({k: v for k, v in kwargs.items() if k not in ("timeout", "format_penalty")})
    _check_timeout(kwargs.get("timeout"))
    infos = extra_infos if extra_infos is not None else [None] * n
    rows = zip(data_sources, solution_strs, ground_truths, infos)
    return list(_get_executor().map(lambda row: compute_score(*row, **kwargs), rows))


def warmup() -> None:
    """Start the math-verify workers now and wait until they are ready (otherwise the first call pays for it)."""
    from aent.reward.pool import get_pool

    get_pool().warmup()


def shutdown() -> None:
    """Stop the math-verify workers; the next call starts new ones."""
    from aent.reward.pool import shutdown as _shutdown

    _shutdown()
