"""Which tokens a restricted entropy keeps: one spec, :class:`KeptSet`, that every entry point takes.

A restricted entropy is the entropy of the softmax renormalised over a *kept set* of each row's tokens. The rules:

``bottom_p`` (the paper's clamp, arXiv 2509.03493; the default)
    Remove the ``k = floor(p * V)`` lowest logits; with ``t`` the (k+1)-th smallest logit keep every token with
    ``z >= t`` (ties at the boundary are all kept). ``p`` in ``[0, 1)``; ``p = 0`` is the full entropy.
``top_k`` (TRE-K, arXiv 2602.03635)
    Keep every token whose logit is ``>=`` the k-th largest logit of the row (ties at the boundary are all kept, so at
    least ``k`` tokens; ``k >= V`` is the full entropy). ``k`` an integer ``>= 1``. This is the ``bottom_p`` select
    at another rank: ``V - k`` tokens removed.
``top_p`` (nucleus, TRE-P)
    With ``q = softmax(z)`` keep every token with ``q >= tau``, where ``tau`` is the probability of the token at which
    the descending cumulative sum of ``q`` first reaches ``top_p`` (the smallest top set with mass ``>= top_p``, plus
    ties). ``top_p`` in ``(0, 1]``; ``top_p = 1`` keeps every token with non-zero probability.

Shared by every rule: the kept set is a constant under autograd; ``-inf`` logits are the lowest and never carry
probability; NaN / ``+inf`` logits are invalid input; computation is in float32 (float64 for float64 input).

A new rule is one entry in :data:`KEPT_RULES` (its parameter's name and its check) and its implementations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, NamedTuple, Optional, Union

from aent.validate import check_clamp_p, check_top_k, check_top_p

__all__ = ["KEPT_RULES", "KeptSet", "as_kept"]


class _Rule(NamedTuple):
    param: str  # the name of the rule's one parameter, as the public functions and verl options spell it
    check: Callable[[str, Any], Any]  # check(name, value) -> normalised value, or ValueError naming ``name``
    summary: str


#: The kept-set rules, by name: the parameter each takes and its check.
KEPT_RULES: Dict[str, _Rule] = {
    "bottom_p": _Rule("clamp_p", check_clamp_p, "remove the floor(p * V) lowest logits (AEnt's clamp)"),
    "top_k": _Rule("top_k", check_top_k, "keep the k highest logits, ties included (TRE-K)"),
    "top_p": _Rule("top_p", check_top_p, "keep the smallest top set with probability >= top_p, ties included (TRE-P)"),
}


@dataclass(frozen=True)
class KeptSet:
    """Which tokens of each row a restricted entropy keeps: a rule name from :data:`KEPT_RULES` and its parameter.

    Build one with :meth:`bottom_p`, :meth:`top_k` or :meth:`top_p` (or ``KeptSet(rule, value)``); the value is
    checked on construction, with the parameter's public name in the message.
    """

    rule: str
    value: Union[float, int]

    def __post_init__(self) -> None:
        if self.rule not in KEPT_RULES:
            raise ValueError(f"kept-set rule must be one of {tuple(KEPT_RULES)}, got {self.rule!r}")
        object.__setattr__(self, "value", KEPT_RULES[self.rule].check(KEPT_RULES[self.rule].param, self.value))

    @classmethod
    def bottom_p(cls, clamp_p: float) -> KeptSet:
        """The paper's clamp: remove the ``floor(clamp_p * V)`` lowest logits of each row."""
        return cls("bottom_p", clamp_p)

    @classmethod
    def top_k(cls, k: int) -> KeptSet:
        """Keep the ``k`` highest logits of each row (ties at the boundary included)."""
        return cls("top_k", k)

    @classmethod
    def top_p(cls, top_p: float) -> KeptSet:
        """Keep the nucleus: the smallest top set with probability ``>= top_p`` (ties included)."""
        return cls("top_p", top_p)

    @property
    def param(self) -> str:
        """The parameter's public name: ``clamp_p``, ``top_k`` or ``top_p``."""
        return KEPT_RULES[self.rule].param

    @property
    def by_rank(self) -> bool:
        """True for the rules that keep every token at or above a logit of a fixed rank (``bottom_p``, ``top_k``)."""
        return self.rule in ("bottom_p", "top_k")

    def num_removed(self, vocab_size: int) -> Optional[int]:
        """Lowest-logit tokens removed from a row of ``vocab_size`` logits by a rank rule; None for ``top_p``.

        ``bottom_p``: ``floor(clamp_p * V)``, the product taken in float64 exactly as written (``clamp_p=0.29`` at
        ``V=100`` removes 28 tokens, the binary value of 0.29 being slightly below 0.29). ``top_k``: ``max(V - k, 0)``.
        """
        vocab_size = int(vocab_size)
        if self.rule == "bottom_p":
            return int(math.floor(float(self.value) * vocab_size))
        if self.rule == "top_k":
            return max(vocab_size - int(self.value), 0)
        return None

    def is_full(self, vocab_size: int) -> bool:
        """True when the rule keeps every token of a row of ``vocab_size`` logits by its definition (the full
        entropy): ``bottom_p`` with ``floor(p * V) = 0``, ``top_k`` with ``k >= V``. ``top_p`` never is (at
        ``top_p = 1`` it still drops zero-probability tokens, which the full entropy weighs by 0 anyway)."""
        removed = self.num_removed(vocab_size)
        return removed == 0

    def __str__(self) -> str:
        return f"{self.rule}({self.param}={self.value!r})"


def as_kept(kept: Union[KeptSet, float, int], name: str = "kept") -> KeptSet:
    """``kept`` as a :class:`KeptSet`: a KeptSet as it is, a plain number as ``bottom_p`` (the paper's ``clamp_p``).

    ``name`` is the argument's name in the caller's error message.
    """
    if isinstance(kept, KeptSet):
        return kept
    if isinstance(kept, bool) or not isinstance(kept, (int, float)):
        raise ValueError(
            f"{name} must be a KeptSet (aent.KeptSet.bottom_p(p), .top_k(k), .top_p(p)) or a number, the removed "
            f"fraction clamp_p of the paper's rule, got {kept!r}"
        )
    return KeptSet.bottom_p(kept)
