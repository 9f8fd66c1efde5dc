"""The entropy term a trainer subtracts from its policy loss (docs/METHOD.md, "Loss"), and verl-compatible aggregation."""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

from aent.coefficient import Controller
from aent.entropy import restricted_entropy
from aent.kept import KeptSet, as_kept

__all__ = ["LOSS_AGG_MODES", "aggregate", "entropy_bonus"]

LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    *,
    num_tokens: Optional[Union[int, torch.Tensor]] = None,
    num_seqs: Optional[Union[int, torch.Tensor]] = None,
    dp_size: int = 1,
    loss_scale_factor: Optional[float] = None,
) -> torch.Tensor:
    """Aggregate a ``(batch, seq)`` per-token tensor to a scalar, with verl's ``loss_agg_mode`` names and meaning.

    ``num_tokens`` / ``num_seqs`` are the denominators of the token- and sequence-means; by default the ones of this
    batch (pass global counts to make micro-batches add up to the global mean). ``dp_size`` multiplies the result, as
    verl's ``agg_loss`` does, so that gradients averaged over data-parallel ranks are the global ones.
    ``seq-mean-token-sum-norm`` divides by ``loss_scale_factor`` (default: the padded length ``mask.shape[-1]``).
    An empty batch aggregates to 0.
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
        denom = torch.clamp_min(torch.as_tensor(denom, dtype=values.dtype, device=values.device), 1e-8)
        return masked.sum() / denom * dp_size
    if loss_agg_mode == "token-sum":
        return masked.sum() * dp_size
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
    return out * dp_size


def entropy_bonus(
    logits: torch.Tensor,
    response_mask: torch.Tensor,
    coef: Union[float, Controller],
    kept: Union[KeptSet, float, int],
    loss_agg_mode: str = "token-mean",
    *,
    num_tokens: Optional[Union[int, float, torch.Tensor]] = None,
    num_seqs: Optional[Union[int, float, torch.Tensor]] = None,
    dp_size: int = 1,
    loss_scale_factor: Optional[float] = None,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
    check_finite: bool = True,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """The AEnt entropy term of a custom trainer's loss: ``loss = policy_loss - term`` (docs/METHOD.md, "Loss").

    ``term = coef * aggregate(restricted_entropy(logits, kept), response_mask, loss_agg_mode)``. Only response
    tokens are computed (the mask is the entropy's ``row_mask``): prompt and padding positions are never read.

    Args:
        logits: ``(batch, seq, V)`` temperature-scaled logits of the same forward pass as the log-probs
            (``(seq, V)`` for one sequence).
        response_mask: ``(batch, seq)`` 1/True for response tokens, 0/False for prompt and padding.
        coef: a float, or any registered controller (:class:`aent.Controller`: ``band``, ``target``, ``constant``)
            whose ``.value`` is used; call its ``update`` once per global step with the step's token-mean entropy.
        kept: the kept set, an :class:`aent.KeptSet` (``bottom_p``, ``top_k``, ``top_p``), or a number: the
            removed fraction ``clamp_p`` of the paper's ``bottom_p`` (0 gives the plain entropy bonus).
        loss_agg_mode: verl's aggregation name (``token-mean`` default, ``seq-mean-token-sum``,
            ``seq-mean-token-mean``, ``seq-mean-token-sum-norm``, ``token-sum``).
        num_tokens, num_seqs: global denominators of the token- and sequence-means (the response tokens /
            sequences of the whole mini-batch, over micro-batches and data-parallel ranks), as verl's losses take
            them (``batch_num_tokens``, ``global_batch_size``); by default this call's own. With them the
            micro-batches' terms add up to the mini-batch's mean.
        dp_size: data-parallel ranks whose gradients are averaged (verl's ``dp_size``): the term is multiplied by
            it, so the averaged gradient is the global mean's.
        loss_scale_factor: divisor of ``seq-mean-token-sum-norm`` (default: the padded length).
        chunk_size, impl: as :func:`aent.restricted_entropy`.
        check_finite: raise ``ValueError`` when a response token's logits hold NaN or ``+inf``.

    Returns:
        ``(term, metrics)``: ``term`` is a differentiable scalar to subtract; ``metrics`` holds floats, read with one
        host synchronisation: ``clamped_entropy`` (token-mean over this call's response tokens, nats; what the
        controller consumes, whatever ``loss_agg_mode`` is), ``entropy_sum`` and ``num_tokens`` (sum them over
        micro-batches and ranks for the step's token-weighted mean), ``entropy_agg`` (the aggregated value inside
        ``term``) and ``coef``.
    """
    value = coef.value if isinstance(coef, Controller) else coef
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"coef must be a float or a registered controller (aent.Controller), got {coef!r}")
    kept = as_kept(kept)
    if not isinstance(response_mask, torch.Tensor):
        raise ValueError(f"response_mask must be a torch.Tensor, got {type(response_mask).__name__}")
    if not isinstance(logits, torch.Tensor) or tuple(response_mask.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"response_mask shape {tuple(response_mask.shape)} must equal logits.shape[:-1] = "
            f"{tuple(getattr(logits, 'shape', ())[:-1])}"
        )
    if response_mask.device != logits.device:
        raise ValueError(f"response_mask must be on the logits' device ({logits.device}), got {response_mask.device}")
    if isinstance(dp_size, bool) or not isinstance(dp_size, int) or dp_size < 1:
        raise ValueError(f"dp_size must be a positive number of data-parallel ranks, got {dp_size!r}")
    rows = response_mask.bool()
    ent = restricted_entropy(logits, kept, row_mask=rows, chunk_size=chunk_size, impl=impl, check_finite=False)
    finite = torch.isfinite(ent)
    counted = rows & finite
    # NaN rows (only with check_finite=False) must not turn the aggregate into NaN
    safe = torch.where(counted, ent, torch.zeros((), dtype=ent.dtype, device=ent.device))
    mask = response_mask.to(ent.dtype)
    agg = aggregate(
        safe,
        mask,
        loss_agg_mode,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        dp_size=dp_size,
        loss_scale_factor=loss_scale_factor,
    )
    with torch.no_grad():
        ent_sum, tokens = safe.detach().sum(), mask.sum()
        token_mean = ent_sum / torch.clamp_min(tokens, 1.0)
        stats = torch.stack([token_mean, ent_sum, tokens, agg.detach(), (rows & ~finite).sum().to(ent.dtype)])
        token_mean, ent_sum, tokens, agg_value, nonfinite = stats.tolist()  # the one host synchronisation
    if check_finite and nonfinite:
        raise ValueError(
            f"logits contain NaN or +inf in {int(nonfinite)} of {int(tokens)} response tokens; their entropy is "
            "undefined. Check the model's outputs (or pass check_finite=False to leave them out and count them)."
        )
    metrics = {
        "clamped_entropy": token_mean,
        "entropy_sum": ent_sum,
        "num_tokens": tokens,
        "entropy_agg": agg_value,
        "coef": float(value),
    }
    if not check_finite:
        metrics["nonfinite_tokens"] = nonfinite
    return float(value) * agg, metrics
