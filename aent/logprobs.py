"""Label log-probabilities and the restricted entropy of the same logits, with one gradient buffer.

A policy-gradient trainer that adds the AEnt bonus needs two things from each position's logits: the log-probability
of the sampled token (for the policy loss) and the clamped entropy (for the bonus). Computing them with two separate
autograd ops costs two ``[tokens x V]`` gradient buffers and a third pass to add them. Worse, trainers that compute
the log-probabilities with an in-place backward (flash-attn's cross-entropy with ``inplace_backward=True``, verl's
default) overwrite the logits with their gradient, so a second op that reads the logits in its own backward reads
garbage. :func:`logprobs_and_clamped_entropy` is one autograd op: it owns the only read of the logits in the backward
and returns one gradient, ``g_logp * (onehot(label) - softmax(z)) + g_ent * dH~/dz``.

Rows outside ``row_mask`` (prompt positions, padding) are neither computed nor read, for either output.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from aent.entropy import (
    _chunks,
    _default_chunk_size,
    check_logits,
    check_row_mask,
    compute_dtype,
    restricted_entropy,
)
from aent.kept import KeptSet, as_kept
from aent.validate import check_chunk_size

__all__ = ["logprobs_and_clamped_entropy"]


class _LogprobsAndClampedEntropy(torch.autograd.Function):
    """Forward: label log-probs (float32) and restricted entropy (float32) of the selected rows, 0 elsewhere.

    The entropy part is :func:`aent.restricted_entropy` (any rule, any implementation) run as an inner autograd graph; the backward
    takes its gradient (one buffer, zero on unselected rows) and adds the log-probability gradient into it in place,
    chunk by chunk, so the op hands autograd exactly one ``[rows x V]`` gradient.
    """

    @staticmethod
    def forward(ctx, logits2d, labels, row_mask, rows, kept, chunk_size, impl):
        needs_grad = logits2d.requires_grad
        with torch.enable_grad() if needs_grad else torch.no_grad():
            leaf = logits2d.detach().requires_grad_(needs_grad)
            ent = restricted_entropy(
                leaf, kept, row_mask=row_mask, chunk_size=chunk_size, impl=impl, check_finite=False
            )
        compute = compute_dtype(logits2d.dtype)
        n, vocab = logits2d.shape
        lse = torch.zeros(n, dtype=compute, device=logits2d.device)
        logp = torch.zeros(n, dtype=compute, device=logits2d.device)
        size = chunk_size or _default_chunk_size(n, vocab, logits2d.device)  # the entropy part's chunks
        for part in _chunks(rows, n, size):
            z = logits2d[part].to(compute)  # a view for a run of rows (float32 logits), a gathered copy otherwise
            lse[part], logp[part] = _chunk_logprobs(z, labels[part])
            del z
        ctx.save_for_backward(logits2d, labels, rows, lse)
        ctx.entropy_graph = (leaf, ent) if needs_grad else None
        ctx.chunk_size = size
        return logp, ent.detach()

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        logits2d, labels, rows, lse = ctx.saved_tensors
        leaf, ent = ctx.entropy_graph
        ctx.entropy_graph = None
        if grad_ent is None:
            grad_ent = torch.zeros_like(ent)
        # grad_ent may hold NaN on rows whose entropy is NaN (non-finite logits): the entropy op gives those rows a
        # zero gradient by itself.
        if ent.requires_grad:
            (grad,) = torch.autograd.grad(ent, leaf, grad_ent)
        else:  # no row computed: the entropy is a constant
            grad = torch.zeros_like(logits2d, memory_format=torch.contiguous_format)
        if grad_logp is not None:
            compute = lse.dtype
            for part in _chunks(rows, logits2d.shape[0], ctx.chunk_size):
                z = logits2d[part].to(compute)
                _add_logprob_grad(grad, part, z, labels[part], lse[part], grad_logp[part].to(compute))
                del z
        return grad, None, None, None, None, None, None


def _chunk_logprobs(z: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logsumexp, log-probability of the label)`` of each row of the 2-D chunk ``z`` (in the compute dtype)."""
    lse = torch.logsumexp(z, dim=-1)
    return lse, z.gather(1, labels.unsqueeze(1)).squeeze(1) - lse


def _add_logprob_grad(grad, part, z, labels, lse, grad_logp) -> None:
    """Add ``grad_logp * (onehot(label) - softmax(z))`` of the chunk ``z`` (compute dtype, ``lse`` its
    :func:`_chunk_logprobs`) into the rows ``part`` of ``grad`` (any float dtype), in place."""
    compute = z.dtype
    g = grad_logp.unsqueeze(1)
    update = torch.exp(z - lse.unsqueeze(1)).mul_(-g)
    update.scatter_add_(1, labels.unsqueeze(1), g)
    if isinstance(part, slice) and grad.dtype == compute:
        grad[part] += update
    elif grad.dtype == compute:
        grad.index_add_(0, part, update)
    else:  # add in float32, round once
        grad[part] = (grad[part].to(compute) + update).to(grad.dtype)


def logprobs_and_clamped_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kept: Union[KeptSet, float, int],
    *,
    row_mask: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
    check_finite: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(log_softmax(logits)[label], restricted_entropy(logits, kept))`` per row, with one gradient buffer.

    Args:
        logits: ``(..., V)`` temperature-scaled logits (float32, bfloat16, float16 or float64).
        labels: ``logits.shape[:-1]`` integer tensor: the token whose log-probability each row gives.
        kept: the entropy's kept set, an :class:`aent.KeptSet` (``bottom_p``, ``top_k`` or ``top_p``; see
            :func:`aent.restricted_entropy`), or a number: the removed fraction ``clamp_p`` of ``bottom_p``.
        row_mask: optional bool tensor of shape ``logits.shape[:-1]``: rows where it is False are neither computed nor
            read; both outputs are 0 there and their gradient is 0. Use it to skip prompt and padding positions.
            Same rule as :func:`aent.restricted_entropy`'s.
        chunk_size: rows per chunk (``None``: automatic), for the entropy and the log-probability parts.
        impl: implementation of the entropy part (see :func:`aent.clamped_entropy`).
        check_finite: raise ``ValueError`` when a computed row holds NaN or ``+inf``; with ``False`` such rows give
            NaN, for training loops that count them.

    Returns:
        ``(log_probs, entropy)``, both float32 (float64 for float64 logits) of shape ``logits.shape[:-1]``. The
        gradient that reaches ``logits`` is the sum of both terms' gradients, written once, in the logits' dtype.
    """
    kept = as_kept(kept)
    check_logits(logits)
    check_chunk_size("chunk_size", chunk_size)
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of token ids, got {getattr(labels, 'dtype', labels)!r}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels shape {tuple(labels.shape)} must equal logits.shape[:-1] = {tuple(logits.shape[:-1])}"
        )
    if labels.device != logits.device:
        raise ValueError(f"labels are on {labels.device} but logits are on {logits.device}")
    vocab = logits.shape[-1]
    lead = logits.shape[:-1]
    rows2d = logits.reshape(-1, vocab)
    labels1d = labels.reshape(-1).to(torch.int64)
    check_row_mask(row_mask, logits)
    if row_mask is not None:
        mask1d = row_mask.reshape(-1)
        rows = mask1d.nonzero().squeeze(1)
    else:
        mask1d = None
        rows = torch.arange(rows2d.shape[0], device=logits.device)
    if rows.numel():
        picked = labels1d.index_select(0, rows)
        low, high = int(picked.min()), int(picked.max())
        if low < 0 or high >= vocab:
            raise ValueError(
                f"labels must lie in [0, {vocab}) (the logits' last dimension), got values in [{low}, {high}]"
            )
    logp, ent = _LogprobsAndClampedEntropy.apply(rows2d, labels1d, mask1d, rows, kept, chunk_size, impl)
    if check_finite and rows.numel():
        bad = int((~torch.isfinite(ent.index_select(0, rows))).sum())
        if bad:
            raise ValueError(
                f"logits contain NaN or +inf in {bad} of {rows.numel()} computed rows; their entropy and log-probability "
                "are undefined. Check the model's outputs (or pass check_finite=False to get NaN and count them)."
            )
    return logp.reshape(lead), ent.reshape(lead)
