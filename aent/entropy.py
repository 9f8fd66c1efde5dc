"""Full-vocabulary and clamped entropy of softmax policies (SPEC section 1).

One public entry point, :func:`clamped_entropy`, with interchangeable implementations:

``"reference"``
    Plain float64 code that builds the kept set of every row explicitly and lets autograd differentiate it.
    Slow (a Python loop over rows); it exists so that every other path can be compared with something obviously
    correct.
``"torch"``
    Chunked PyTorch with a hand-written backward. Only per-row statistics are kept between forward and backward,
    so the peak extra memory is ``O(chunk_size x V)`` plus the gradient itself, instead of the ~6x logits that
    eager autograd keeps. Runs on any device.
``"triton"``
    Fused GPU kernels (:mod:`aent.ops`), chosen by ``"auto"`` on CUDA when Triton is importable.

The choice is made by the ``impl`` keyword, or by the ``AENT_ENTROPY_IMPL`` environment variable when ``impl`` is
``None``/``"auto"``.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch

from aent.validate import check_chunk_size, check_clamp_p

__all__ = ["entropy", "clamped_entropy", "num_removed", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("auto", "reference", "torch", "triton")

# Elements of float32 scratch per chunk. The torch path holds about five tensors of this size at once.
_CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}


def num_removed(vocab_size: int, clamp_p: float) -> int:
    """Number of lowest-logit tokens removed from a row: ``floor(clamp_p * vocab_size)`` (SPEC section 1).

    The product is taken in float64, exactly as written: ``clamp_p=0.29, vocab_size=100`` removes 28 tokens because
    the binary value of 0.29 is slightly below 0.29. At real vocabulary sizes this is at most one token.
    """
    return int(math.floor(float(clamp_p) * int(vocab_size)))


def _check_args(logits: torch.Tensor, clamp_p: float, chunk_size: Optional[int]) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(
            f"logits must be a floating-point tensor (float32, bfloat16, float16 or float64), got {logits.dtype}"
        )
    if logits.dim() == 0:
        raise ValueError("logits must have at least one dimension (the vocabulary is the last one), got a scalar")
    if logits.shape[-1] == 0:
        raise ValueError(f"logits has an empty vocabulary (last dimension is 0, shape {tuple(logits.shape)})")
    check_clamp_p("clamp_p", clamp_p)
    check_chunk_size("chunk_size", chunk_size)


def _check_row_mask(row_mask: Optional[torch.Tensor], logits: torch.Tensor) -> None:
    if row_mask is None:
        return
    if not isinstance(row_mask, torch.Tensor) or row_mask.dtype != torch.bool:
        what = f"a {row_mask.dtype} tensor" if isinstance(row_mask, torch.Tensor) else type(row_mask).__name__
        raise ValueError(
            f"row_mask must be a bool tensor (True = compute this row), got {what}; "
            "pass mask.bool() or mask > 0, or None to compute every row"
        )
    if tuple(row_mask.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"row_mask must have the shape of logits without its last (vocabulary) dimension, "
            f"{tuple(logits.shape[:-1])}, got {tuple(row_mask.shape)}"
        )
    if row_mask.device != logits.device:
        raise ValueError(f"row_mask must be on the logits' device ({logits.device}), got {row_mask.device}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _resolve_impl(impl: Optional[str], device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    if impl is None or impl == "auto":
        impl = os.environ.get("AENT_ENTROPY_IMPL", "auto") or "auto"
        source = "AENT_ENTROPY_IMPL"
    else:
        source = "impl"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"{source} must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if impl == "auto":
        if device.type == "cuda":
            from aent import ops

            # float64 has no fused kernel; "auto" keeps it on the torch path rather than failing (as it does when the
            # kernels do not load or failed their self-check on this device: aent.ops warns once).
            return "triton" if ops.auto_uses_triton(dtype) else "torch"
        return "torch"
    return impl


def _raise_nonfinite(bad_rows: int, total_rows: int) -> None:
    raise ValueError(
        f"logits contain NaN or +inf in {bad_rows} of {total_rows} rows; the entropy of such a row is undefined. "
        "Check the model's outputs (or pass check_finite=False to get NaN for those rows and count them yourself)."
    )


# --------------------------------------------------------------------------------------------------------------
# Reference: float64, explicit kept set, autograd.
# --------------------------------------------------------------------------------------------------------------


def _reference_rows(rows: torch.Tensor, clamp_p: float, row_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    z = rows.to(torch.float64)
    vocab = z.shape[-1]
    k = num_removed(vocab, clamp_p)
    # 0 that is part of the graph without reading any logit: the result of a skipped row (entropy 0, gradient 0)
    skipped = z[:0].sum()
    selected = [True] * z.shape[0] if row_mask is None else row_mask.tolist()
    out = []
    for row, use in zip(z, selected):
        if not use:
            out.append(skipped)
            continue
        if torch.isnan(row).any() or torch.isposinf(row).any():
            out.append(torch.full((), float("nan"), dtype=torch.float64, device=z.device) + 0 * row.sum())
            continue
        threshold = torch.sort(row.detach()).values[k]  # the (k+1)-th smallest logit
        kept = (row.detach() >= threshold) & torch.isfinite(row.detach())
        if not kept.any():  # every kept logit is -inf: no distribution, defined as 0 with 0 gradient
            out.append(torch.where(torch.isfinite(row), row, torch.zeros_like(row)).sum() * 0)
            continue
        logq = torch.log_softmax(row[kept], dim=-1)
        out.append(-(logq.exp() * logq).sum())
    if not out:
        return z.new_zeros((0,)) + skipped
    return torch.stack(out)


# --------------------------------------------------------------------------------------------------------------
# Chunked torch path.
#
# Every row is first computed the fast way, with no special cases: at p = 0 by ``log_softmax``, ``exp`` and a row
# sum; at p > 0 on the logits clamped from below at the threshold t (``clamp`` is one cheap pass; the removed tokens
# then hold the finite value t, so ``exp`` stays on its fast vectorised path, which it leaves for arguments below
# about -87) with the removed tokens' weights multiplied by exactly 0 afterwards. A row whose fast result is not finite
# (-inf logits left in the kept set, NaN or +inf, no finite logit at all) is computed again the careful way, with
# explicit masks; backward repeats that split. Both ways keep exactly the tokens with z >= t.
# --------------------------------------------------------------------------------------------------------------


def _row_threshold(z: torch.Tensor, k: int) -> torch.Tensor:
    """(k+1)-th smallest value of each row of a 2-D ``z``, or -inf when nothing is removed.

    ``torch.topk`` on the smaller side: the k+1 smallest values hold it as their maximum (or the V-k largest as their
    minimum). It is exact, like ``torch.kthvalue``, and faster on the CPU, which selects with a full copy of the row
    and its indices.
    """
    if k == 0:
        return z.new_full(z.shape[:-1], float("-inf"))
    vocab = z.shape[-1]
    if k + 1 <= vocab - k:
        return torch.topk(z, k + 1, dim=-1, largest=False, sorted=False).values.amax(dim=-1)
    return torch.topk(z, vocab - k, dim=-1, largest=True, sorted=False).values.amin(dim=-1)


def _careful_shifted(z: torch.Tensor, threshold: Optional[torch.Tensor], row_max: torch.Tensor) -> torch.Tensor:
    """``z - max`` on the kept set, ``-inf`` elsewhere (and everywhere on rows with no finite logit)."""
    shift = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    shifted = z - shift.unsqueeze(-1)
    if threshold is not None:
        shifted.masked_fill_(z < threshold.unsqueeze(-1), float("-inf"))
    return shifted


def _careful_forward(z: torch.Tensor, threshold: Optional[torch.Tensor]) -> torch.Tensor:
    row_max = z.amax(dim=-1)
    shifted = _careful_shifted(z, threshold, row_max)
    weights = torch.exp(shifted)
    total = weights.sum(dim=-1)
    # weights * shifted, with 0 where the weight is 0 (shifted may be -inf there)
    weighted = torch.where(weights > 0, weights * shifted, torch.zeros_like(weights)).sum(dim=-1)
    valid = total > 0
    safe_total = torch.where(valid, total, torch.ones_like(total))
    ent = torch.log(safe_total) - weighted / safe_total
    ent = torch.where(valid, ent, torch.zeros_like(ent))
    # NaN/+inf rows: the maximum is NaN or +inf; make the entropy NaN so that the caller sees it.
    bad = torch.isnan(row_max) | torch.isposinf(row_max)
    return torch.where(bad, torch.full_like(ent, float("nan")), ent)


def _careful_backward(z: torch.Tensor, threshold: Optional[torch.Tensor], ent: torch.Tensor) -> torch.Tensor:
    """dH/dz of rows computed the careful way (the caller multiplies by the incoming gradient)."""
    row_max = z.amax(dim=-1)
    shifted = _careful_shifted(z, threshold, row_max)
    log_total = torch.logsumexp(shifted, dim=-1, keepdim=True)
    log_total = torch.where(torch.isfinite(log_total), log_total, torch.zeros_like(log_total))
    q = torch.exp(shifted - log_total)
    # dH/dz_a = -q_a (log q_a + H) on the kept set, log q_a = shifted_a - log_total
    inner = torch.where(q > 0, shifted - log_total + ent.unsqueeze(-1), torch.zeros_like(q))
    grad = -q * inner
    # rows with NaN/+inf input (only reachable with check_finite=False) get no gradient
    return torch.where(torch.isfinite(ent).unsqueeze(-1), grad, torch.zeros_like(grad))


def _chunk_forward(z: torch.Tensor, k: int):
    """Entropy of each row of the 2-D chunk ``z``, its threshold, row maximum and log of the kept set's sum of
    ``exp(z - max)`` (those three None when ``k == 0``) and the flags of the rows computed the careful way.

    The backward needs ``log q = (z - max) - log_total`` in this order: ``z - max`` is exact in floating point for the
    kept tokens, while the single number ``max + log_total`` rounded to float32 would be off by up to half a unit in
    the last place of the logits' magnitude (5e-4 at |z| = 1e4)."""
    row_max = z.amax(dim=-1)
    if k == 0:
        threshold = log_total = None
        logq = torch.log_softmax(z, dim=-1)
        ent = torch.exp(logq).mul_(logq).sum(dim=-1).neg_()
        del logq
    else:
        threshold = _row_threshold(z, k)
        shifted = torch.clamp(z, min=threshold.unsqueeze(-1)).sub_(row_max.unsqueeze(-1))
        # removed tokens: weight exactly 0 (a product with the bool mask is cheaper on the CPU than masked_fill_)
        weights = torch.exp(shifted).mul_(z >= threshold.unsqueeze(-1))
        total = weights.sum(dim=-1)
        weighted = weights.mul_(shifted).sum(dim=-1)  # sum of q * (z - max) times total
        del shifted, weights
        log_total = torch.log(total)
        ent = log_total - weighted / total
    careful = ~torch.isfinite(ent) | ~torch.isfinite(row_max)
    if careful.any():
        ent[careful] = _careful_forward(z[careful], None if threshold is None else threshold[careful])
    return ent, threshold, (None if k == 0 else row_max), log_total, careful


def _chunk_backward(z, threshold, row_max, log_total, ent, careful, grad_out, out=None):
    """``grad_out * dH/dz`` of the 2-D chunk ``z``, written into ``out`` when given (any float dtype)."""
    if threshold is None:
        logq = torch.log_softmax(z, dim=-1)
    else:
        logq = torch.clamp(z, min=threshold.unsqueeze(-1)).sub_(row_max.unsqueeze(-1)).sub_(log_total.unsqueeze(-1))
    q = torch.exp(logq)
    if threshold is not None:
        q.mul_(z >= threshold.unsqueeze(-1))  # removed tokens: q = 0, so no gradient
    # dH/dz_a = -q_a (log q_a + H) on the kept set
    logq.add_(ent.unsqueeze(-1)).mul_(q)
    del q
    scale = grad_out.neg().unsqueeze(-1)
    grad = torch.mul(logq, scale, out=out) if out is not None else logq.mul_(scale)
    if careful.any():
        rows = careful.nonzero().squeeze(1)
        th = None if threshold is None else threshold[rows]
        fixed = _careful_backward(z[rows], th, ent[rows]) * grad_out[rows].unsqueeze(-1)
        grad.index_copy_(0, rows, fixed.to(grad.dtype))
    return grad


def _chunks(selected: Optional[torch.Tensor], rows: int, chunk_size: int):
    """Row selections of at most ``chunk_size`` rows: slices where the rows are consecutive, else index tensors."""
    if selected is None:
        for start in range(0, rows, chunk_size):
            yield slice(start, min(start + chunk_size, rows))
        return
    for start in range(0, selected.numel(), chunk_size):
        idx = selected[start : start + chunk_size]
        first, last = int(idx[0]), int(idx[-1])
        yield slice(first, last + 1) if last - first + 1 == idx.numel() else idx


class _ChunkedClampedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits2d: torch.Tensor, k: int, chunk_size: int, selected: Optional[torch.Tensor]):
        compute = _compute_dtype(logits2d.dtype)
        rows = logits2d.shape[0]
        alloc = torch.empty if selected is None else torch.zeros  # skipped rows: entropy 0
        ent = alloc(rows, dtype=compute, device=logits2d.device)
        threshold = alloc(rows, dtype=compute, device=logits2d.device) if k else None
        row_max = alloc(rows, dtype=compute, device=logits2d.device) if k else None
        log_total = alloc(rows, dtype=compute, device=logits2d.device) if k else None
        careful = torch.zeros(rows, dtype=torch.bool, device=logits2d.device)
        for part in _chunks(selected, rows, chunk_size):
            z = logits2d[part].to(compute)
            e, t, m, n, c = _chunk_forward(z, k)
            ent[part], careful[part] = e, c
            if k:
                threshold[part], row_max[part], log_total[part] = t, m, n
            del z, e, t, m, n, c
        ctx.save_for_backward(logits2d, ent, threshold, row_max, log_total, careful, selected)
        ctx.chunk_size = chunk_size
        return ent

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits2d, ent, threshold, row_max, log_total, careful, selected = ctx.saved_tensors
        compute = ent.dtype
        rows = logits2d.shape[0]
        grad = torch.empty_like(logits2d, memory_format=torch.contiguous_format)
        if selected is not None and selected.numel() < rows:
            # zeros only into the rows that were not computed; the others are overwritten below
            skipped = torch.ones(rows, dtype=torch.bool, device=grad.device)
            skipped[selected] = False
            grad.index_fill_(0, skipped.nonzero().squeeze(1), 0)
        for part in _chunks(selected, rows, ctx.chunk_size):
            z = logits2d[part].to(compute)
            stats = (None, None, None) if threshold is None else (threshold[part], row_max[part], log_total[part])
            args = (z, *stats, ent[part], careful[part], grad_out[part].to(compute))
            if isinstance(part, slice):
                _chunk_backward(*args, out=grad[part])
            else:
                grad.index_copy_(0, part, _chunk_backward(*args).to(grad.dtype))
            del z
        return grad, None, None, None


def _default_chunk_size(rows: int, vocab: int, device: torch.device) -> int:
    budget = _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS["cuda"])
    return max(1, min(rows, budget // max(vocab, 1)))


# --------------------------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------------------------


def clamped_entropy(
    logits: torch.Tensor,
    clamp_p: float,
    *,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
    check_finite: bool = True,
    row_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-row clamped entropy in nats (SPEC section 1; AEnt, arXiv 2509.03493, section 3).

    For each row of temperature-scaled ``logits`` (vocabulary = last dimension, ``V`` entries), the
    ``k = floor(clamp_p * V)`` lowest logits are removed and the entropy of the softmax renormalised over the kept
    tokens is returned. ``clamp_p=0`` is the ordinary full-vocabulary entropy.

    Semantics:
      * Ties: with ``t`` the (k+1)-th smallest logit of a row, every token with ``z >= t`` is kept, so at least
        ``V - k`` tokens are kept and the result does not depend on token order.
      * ``-inf`` logits (masked vocabulary) count as the lowest and carry no probability. A row with no finite kept
        logit has entropy 0 and gradient 0.
      * The kept set is a constant for autograd; the gradient ``-q_a (log q_a + H)`` reaches kept logits only.

    Args:
        logits: ``(..., V)`` float32, bfloat16, float16 or float64 tensor, on any device; need not be contiguous.
        clamp_p: removed fraction of the vocabulary, in ``[0, 1)``. Paper settings: 0.33 (a) and 0.25 (b).
        chunk_size: rows processed at once by the ``"torch"`` path; peak extra memory is about
            ``5 * chunk_size * V * 4`` bytes plus the gradient. ``None`` picks ~16 MiB of float32 per scratch tensor
            on CPU and ~128 MiB on GPU.
        impl: ``"auto"`` (default; fused Triton kernels for float32/bfloat16/float16 CUDA tensors when Triton
            imports, else ``"torch"``), ``"torch"``, ``"triton"`` (CUDA tensors, float32/bfloat16/float16 only;
            errors otherwise) or ``"reference"``. When ``None``/``"auto"``, the ``AENT_ENTROPY_IMPL`` environment
            variable may force one.
        check_finite: raise ``ValueError`` when a row contains NaN or ``+inf`` (checked on the per-row results,
            which costs one small reduction). With ``False`` such rows come back as NaN, for loops that count them.
        row_mask: optional bool tensor of shape ``logits.shape[:-1]`` on the logits' device. Rows where it is
            ``False`` are neither computed nor read (padding, prompt tokens): their entropy is 0 and their gradient 0,
            whatever they hold. ``None`` computes every row.

    Returns:
        ``logits.shape[:-1]`` tensor of float32 (float64 for float64 input). Its gradient has the input's dtype.
    """
    _check_args(logits, clamp_p, chunk_size)
    _check_row_mask(row_mask, logits)
    lead = logits.shape[:-1]
    vocab = logits.shape[-1]
    rows2d = logits.reshape(-1, vocab)
    k = num_removed(vocab, clamp_p)
    mask1d = None if row_mask is None else row_mask.reshape(-1)
    which = _resolve_impl(impl, logits.device, logits.dtype)
    if which == "reference":
        ent = _reference_rows(rows2d, clamp_p, mask1d)
        ent = ent if logits.dtype == torch.float64 else ent.float()
    elif which == "triton":
        from aent import ops

        ent = ops.clamped_entropy_triton(rows2d, k, row_mask=mask1d, auto=ops.chosen_by_auto(impl))
    else:
        size = chunk_size or _default_chunk_size(rows2d.shape[0], vocab, logits.device)
        if rows2d.shape[0] == 0:
            ent = rows2d.new_zeros((0,), dtype=_compute_dtype(logits.dtype)) + 0 * rows2d.sum()
        else:
            selected = None if mask1d is None else mask1d.nonzero().squeeze(1)
            ent = _ChunkedClampedEntropy.apply(rows2d, k, size, selected)
    if check_finite and ent.numel() > 0:
        bad = int((~torch.isfinite(ent.detach())).sum())
        if bad:
            _raise_nonfinite(bad, ent.numel())
    return ent.reshape(lead)


def entropy(
    logits: torch.Tensor,
    *,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
    check_finite: bool = True,
    row_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-row full-vocabulary entropy in nats: ``clamped_entropy(logits, 0.0)``. See :func:`clamped_entropy`."""
    return clamped_entropy(logits, 0.0, chunk_size=chunk_size, impl=impl, check_finite=check_finite, row_mask=row_mask)
