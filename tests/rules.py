"""The kept-set rules and entropy implementations every rule test runs over, in one place.

A new rule joins every test by adding its name and an explicit definition to :data:`DEFINITIONS` and its cases to
:data:`CASES`; a new implementation by adding its name to :data:`IMPLS` (or, for a fused kernel, its rule to
``aent.ops.FUSED_RULES``: :func:`impls_for` then includes ``"triton"`` for it).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List

import aent
import aent.ops

# ---------------------------------------------------------------------------------------------------------------
# Explicit definitions, in plain Python floats, written from the rules' text (aent/kept.py) and nothing else.
# Each returns the kept flags of one row; -inf is never kept with probability.
# ---------------------------------------------------------------------------------------------------------------


def _softmax(row: List[float]) -> List[float]:
    finite = [z for z in row if z != -math.inf]
    if not finite:
        return [0.0] * len(row)
    m = max(finite)
    w = [math.exp(z - m) if z != -math.inf else 0.0 for z in row]
    s = math.fsum(w)
    return [x / s for x in w]


def _bottom_p(row: List[float], p: float) -> List[bool]:
    k = math.floor(p * len(row))
    t = sorted(row)[k]  # the (k+1)-th smallest
    return [z >= t and z != -math.inf for z in row]


def _top_k(row: List[float], k: int) -> List[bool]:
    if k >= len(row):
        return [z != -math.inf for z in row]
    t = sorted(row, reverse=True)[k - 1]  # the k-th largest
    return [z >= t and z != -math.inf for z in row]


def _top_p(row: List[float], top_p: float) -> List[bool]:
    q = _softmax(row)
    if top_p >= 1.0:
        return [x > 0 for x in q]
    descending = sorted(q, reverse=True)
    total, tau = 0.0, None
    for x in descending:
        total += x
        if total >= top_p:
            tau = x
            break
    if tau is None:  # rounding short of top_p: the last token with probability crosses
        tau = min(x for x in q if x > 0) if any(x > 0 for x in q) else 1.0
    return [x >= tau and x > 0 for x in q]


#: rule name -> explicit kept-set definition ``(row, value) -> flags``
DEFINITIONS: Dict[str, Callable[[List[float], float], List[bool]]] = {
    "bottom_p": _bottom_p,
    "top_k": _top_k,
    "top_p": _top_p,
}

#: the kept sets every rule test runs over: full and near-full, small, and typical values of each rule
CASES = {
    "bottom_p": [0.0, 0.33, 0.9],
    "top_k": [1, 2, 7, 10**6],
    "top_p": [0.3, 0.9, 0.99, 1.0],
}

KEPT = [aent.KeptSet(rule, value) for rule, values in CASES.items() for value in values]
KEPT_IDS = [f"{kept.rule}={kept.value}" for kept in KEPT]

#: implementations compared with the float64 reference on every rule (``"triton"`` joins via :func:`impls_for`)
IMPLS = ["torch"]


def impls_for(kept: aent.KeptSet) -> List[str]:
    """The implementations to test on ``kept``: :data:`IMPLS`, plus ``"triton"`` for rules with a fused kernel."""
    return IMPLS + (["triton"] if kept.rule in aent.ops.FUSED_RULES else [])


def explicit_kept(row: List[float], kept: aent.KeptSet) -> List[bool]:
    """The kept flags of one row (plain floats) by the rule's explicit definition."""
    assert set(DEFINITIONS) == set(aent.KEPT_RULES), "every rule in aent.KEPT_RULES needs a definition here"
    return DEFINITIONS[kept.rule](row, kept.value)


def explicit_entropy(row: List[float], kept: aent.KeptSet) -> float:
    """Entropy of the softmax renormalised on the explicit kept set (0 when it holds no finite logit)."""
    flags = explicit_kept(row, kept)
    values = [z for z, keep in zip(row, flags) if keep]
    if not values:
        return 0.0
    m = max(values)
    w = [math.exp(z - m) for z in values]
    s = math.fsum(w)
    return -math.fsum((x / s) * math.log(x / s) for x in w if x > 0)
