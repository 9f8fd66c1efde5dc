"""Validation of AEnt's settings, shared by the core (:mod:`aent.entropy`, :mod:`aent.coefficient`) and the verl
adapter (:mod:`aent.verl.loss`, :mod:`aent.verl.options`). Pure Python, no torch.

Every function takes the setting's name as the caller spells it (``"clamp_p"`` in the core, ``"aent.clamp_p"`` for
a verl run) and puts it in the message, with the allowed range; each returns the value normalised (float, int or
None) so that a caller can validate and convert in one line.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

__all__ = [
    "check_band",
    "check_bounds",
    "check_chunk_size",
    "check_clamp_p",
    "check_nonnegative",
    "check_steps",
    "check_top_k",
    "check_top_p",
    "finite_number",
]


def finite_number(name: str, value: Any) -> float:
    """``value`` as a float; a bool, a string, NaN or an infinity is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: Any, why: str = "") -> float:
    """A finite number ``>= 0``; ``why`` (e.g. "0 keeps the coefficient constant") is added to the message."""
    value = finite_number(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0{f' ({why})' if why else ''}, got {value}")
    return value


def check_clamp_p(name: str, value: Any) -> float:
    """The removed fraction of the vocabulary: a number in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(
            f"{name} must be a number in [0, 1) (the fraction of lowest-logit tokens removed; the paper uses "
            f"0.25-0.33; 0 is the plain entropy), got {value!r}"
        )
    return float(value)


def check_top_k(name: str, value: Any) -> int:
    """The number of highest logits a top-k kept set keeps: an integer ``>= 1`` (``>= V`` keeps every token)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} must be an integer >= 1 (the number of highest-logit tokens kept; TRE uses 2), got {value!r}"
        )
    return int(value)


def check_top_p(name: str, value: Any) -> float:
    """The probability mass a nucleus kept set reaches: a number in ``(0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ValueError(
            f"{name} must be a number in (0, 1] (the probability mass of the kept nucleus; TRE uses 0.99; 1 keeps "
            f"every token with non-zero probability), got {value!r}"
        )
    return float(value)


def check_chunk_size(name: str, value: Any) -> Optional[int]:
    """Rows per chunk of the clamped entropy: a positive integer, or None for an automatic size."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive number of rows or null/None (automatic), got {value!r}")
    return value


def check_steps(name: str, value: Any) -> int:
    """A non-negative integer number of steps."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer number of global steps, got {value!r}")
    return value


def check_band(low_name: str, low: Any, high_name: str, high: Any) -> Tuple[float, float]:
    """The target band of the clamped entropy in nats: ``0 <= low <= high`` (equal: a single target)."""
    low, high = finite_number(low_name, low), finite_number(high_name, high)
    if low > high:
        raise ValueError(
            f"{low_name} ({low}) must not exceed {high_name} ({high}): the entropy band is inverted; swap the two "
            "values"
        )
    if low < 0:
        raise ValueError(f"{low_name} must be >= 0 nats (an entropy is never negative), got {low}")
    return low, high


def check_bounds(
    init_name: str, init: Any, min_name: str, coef_min: Any, max_name: str, coef_max: Any
) -> Tuple[float, float, float]:
    """The coefficient's clip range and start: ``0 <= coef_min <= init <= coef_max``."""
    init, coef_min, coef_max = (
        finite_number(init_name, init),
        finite_number(min_name, coef_min),
        finite_number(max_name, coef_max),
    )
    if coef_min < 0:
        raise ValueError(f"{min_name} must be >= 0 (a negative coefficient would minimise entropy), got {coef_min}")
    if coef_min > coef_max:
        raise ValueError(f"{min_name} ({coef_min}) must not exceed {max_name} ({coef_max})")
    if not coef_min <= init <= coef_max:
        raise ValueError(f"{init_name} ({init}) must lie inside [{min_name}, {max_name}] = [{coef_min}, {coef_max}]")
    return init, coef_min, coef_max
