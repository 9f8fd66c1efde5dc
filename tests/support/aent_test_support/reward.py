"""A TEST reward for end-to-end runs on a random model (not a task reward; never use it for real training).

A randomly initialised model scores 0 on a math reward, so every GRPO advantage is 0 and the actor update does
nothing. This reward has spread on any text: the fraction of the response's characters that are decimal digits,
so two rollouts of one prompt almost always differ and the advantages are not all zero. verl calls it through
``reward.custom_reward_function.path=pkg://aent_test_support.reward`` and ``.name=compute_score``.
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["compute_score"]


def compute_score(
    data_source: Optional[str] = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Any = None,
    **kwargs: Any,
) -> float:
    """Fraction of the characters of ``solution_str`` that are digits (0 for an empty response)."""
    if not solution_str:
        return 0.0
    return sum(ch.isdigit() for ch in solution_str) / len(solution_str)
