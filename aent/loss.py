"""The entropy term a trainer subtracts from its policy loss (docs/METHOD.md, "Loss"), and verl-compatible aggregation."""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from aent.coefficient import AdaptiveCoefficient
from aent.entropy import clamped_entropy

__all__ = ["LOSS_AGG_MODES", "aggregate", "entropy_bonus"]

LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    *,
    num_tokens: Optional[Union[int, torch.Tensor]] = None,
    num_seqs: Optional[Union[int, torch.Tensor]] = None,
    loss_scale_factor: Optional[float] = None,
) -> torch.Tensor:
    """Aggregate a ``(batch, seq)`` per-token tensor to a scalar, with verl's ``loss_agg_mode`` names and meaning.

    ``num_tokens`` / ``num_seqs`` are the denominators of the token- and sequence-means; by default the ones of this
    batch (pass global counts to make micro-batches add up to the global mean). ``seq-mean-token-sum-norm`` divides
    by ``loss_scale_factor`` (default: the padded length ``mask.shape[-1]``). An empty batch aggregates to 0.
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {loss_agg_mode!r}")
    if mask.shape != values.shape:
        raise ValueError(
            f"response_mask shape {tuple(mask.shape)} does not match the per-token values' shape {tuple(values.shape)}"
        )
    mask = mask.to(values.dtype)
    masked = values * mask
    if values.dim() == 1:  # a single sequence
        masked, mask = masked.unsqueeze(0), mask.unsqueeze(0)
    if loss_agg_mode == "token-mean":
        denom = mask.sum() if num_tokens is None else num_tokens
        return masked.sum() / torch.clamp_min(torch.as_tensor(denom, dtype=values.dtype, device=values.device), 1e-8)
    if loss_agg_mode == "token-sum":
        return masked.sum()
    tokens_per_seq = mask.sum(dim=-1)
    seq_present = (tokens_per_seq > 0).to(values.dtype)
    if loss_agg_mode == "seq-mean-token-mean":
        per_seq = masked.sum(dim=-1) / (tokens_per_seq + 1e-8)
    else:
        per_seq = masked.sum(dim=-1)
    denom = seq_present.sum() if num_seqs is None else num_seqs
    out = (per_seq * seq_present).sum() / torch.clamp_min(
        torch.as_tensor(denom, dtype=values.dtype, device=values.device), 1e-8
    )
    if loss_agg_mode == "seq-mean-token-sum-norm":
        out = out / (mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    return out


def entropy_bonus(
    logits: torch.Tensor,
    response_mask: torch.Tensor,
    coef: Union[float, AdaptiveCoefficient],
    clamp_p: float,
    loss_agg_mode: str = "token-mean",
    *,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The AEnt entropy term of a custom trainer's loss: ``loss = policy_loss - term`` (docs/METHOD.md, "Loss").

    ``term = coef * aggregate(clamped_entropy(logits, clamp_p), response_mask, loss_agg_mode)``.

    Args:
        logits: ``(batch, seq, V)`` temperature-scaled logits of the same forward pass as the log-probs
            (``(seq, V)`` for one sequence).
        response_mask: ``(batch, seq)`` 1 for response tokens, 0 for prompt and padding.
        coef: a float, or an :class:`~aent.AdaptiveCoefficient` / :class:`~aent.ConstantCoefficient` whose
            ``.value`` is used (call its ``update`` once per step with ``metrics["clamped_entropy"]``).
        clamp_p: removed vocabulary fraction in ``[0, 1)``; 0 gives the plain entropy bonus.
        loss_agg_mode: verl's aggregation name (``token-mean`` default, ``seq-mean-token-sum``,
            ``seq-mean-token-mean``, ``seq-mean-token-sum-norm``, ``token-sum``).

    Returns:
        ``(term, metrics)``: ``term`` is a differentiable scalar to subtract; ``metrics`` holds floats:
        ``clamped_entropy`` (token-mean over response tokens, nats; what the controller consumes, whatever
        ``loss_agg_mode`` is), ``entropy_agg`` (the aggregated value inside ``term``), ``coef`` and ``num_tokens``.
    """
    value = coef.value if isinstance(coef, AdaptiveCoefficient) else coef
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"coef must be a float or a coefficient object, got {coef!r}")
    if not isinstance(response_mask, torch.Tensor):
        raise ValueError(f"response_mask must be a torch.Tensor, got {type(response_mask).__name__}")
    if not isinstance(logits, torch.Tensor) or tuple(response_mask.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"response_mask shape {tuple(response_mask.shape)} must equal logits.shape[:-1] = "
            f"{tuple(getattr(logits, 'shape', ())[:-1])}"
        )
    ent = clamped_entropy(logits, clamp_p, chunk_size=chunk_size, impl=impl)
    agg = aggregate(ent, response_mask, loss_agg_mode)
    with torch.no_grad():
        mask = response_mask.to(ent.dtype)
        num_tokens = float(mask.sum())
        token_mean = float((ent.detach() * mask).sum() / max(num_tokens, 1.0))
    metrics = {
        "clamped_entropy": token_mean,
        "entropy_agg": float(agg.detach()),
        "coef": float(value),
        "num_tokens": num_tokens,
    }
    return float(value) * agg, metrics
