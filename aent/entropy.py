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

            # float64 has no fused kernel; "auto" keeps it on the torch path rather than failing.
            return "triton" if dtype in ops.FUSED_DTYPES and ops.triton_available() else "torch"
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


def _reference_rows(rows: torch.Tensor, clamp_p: float) -> torch.Tensor:
    z = rows.to(torch.float64)
    vocab = z.shape[-1]
    k = num_removed(vocab, clamp_p)
    out = []
    for row in z:
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
        return z.new_zeros((0,))
    return torch.stack(out)


# --------------------------------------------------------------------------------------------------------------
# Chunked torch path.
# --------------------------------------------------------------------------------------------------------------


def _row_threshold(z: torch.Tensor, k: int) -> torch.Tensor:
    """(k+1)-th smallest value of each row, or -inf when nothing is removed."""
    if k == 0:
        return z.new_full(z.shape[:-1], float("-inf"))
    return torch.kthvalue(z, k + 1, dim=-1).values


def _shifted_kept(z: torch.Tensor, threshold: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
    """``z - max`` on the kept set, ``-inf`` elsewhere (and everywhere on rows with no finite logit)."""
    shift = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    shifted = z - shift.unsqueeze(-1)
    return shifted.masked_fill_(z < threshold.unsqueeze(-1), float("-inf"))


def _chunk_forward(z: torch.Tensor, k: int):
    threshold = _row_threshold(z, k)
    row_max = z.amax(dim=-1)
    shifted = _shifted_kept(z, threshold, row_max)
    weights = torch.exp(shifted)
    total = weights.sum(dim=-1)
    # weights * shifted, with 0 where the weight is 0 (shifted may be -inf there)
    weighted = torch.where(weights > 0, weights * shifted, torch.zeros_like(weights)).sum(dim=-1)
    valid = total > 0
    safe_total = torch.where(valid, total, torch.ones_like(total))
    log_total = torch.log(safe_total)
    ent = log_total - weighted / safe_total
    ent = torch.where(valid, ent, torch.zeros_like(ent))
    # NaN/+inf rows: the maximum is NaN or +inf; make the entropy NaN so that the caller sees it.
    bad = torch.isnan(row_max) | torch.isposinf(row_max)
    ent = torch.where(bad, torch.full_like(ent, float("nan")), ent)
    return ent, threshold, row_max, log_total


class _ChunkedClampedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits2d: torch.Tensor, k: int, chunk_size: int):
        compute = _compute_dtype(logits2d.dtype)
        rows = logits2d.shape[0]
        ent = torch.empty(rows, dtype=compute, device=logits2d.device)
        threshold = torch.empty_like(ent)
        row_max = torch.empty_like(ent)
        log_total = torch.empty_like(ent)
        for start in range(0, rows, chunk_size):
            sl = slice(start, min(start + chunk_size, rows))
            z = logits2d[sl].to(compute)
            ent[sl], threshold[sl], row_max[sl], log_total[sl] = _chunk_forward(z, k)
            del z
        ctx.save_for_backward(logits2d, ent, threshold, row_max, log_total)
        ctx.chunk_size = chunk_size
        return ent

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits2d, ent, threshold, row_max, log_total = ctx.saved_tensors
        compute = ent.dtype
        grad = torch.empty_like(logits2d, memory_format=torch.contiguous_format)
        chunk_size = ctx.chunk_size
        for start in range(0, logits2d.shape[0], chunk_size):
            sl = slice(start, min(start + chunk_size, logits2d.shape[0]))
            z = logits2d[sl].to(compute)
            shifted = _shifted_kept(z, threshold[sl], row_max[sl])
            del z
            lt = log_total[sl].unsqueeze(-1)
            q = torch.exp(shifted - lt)
            # dH/dz_a = -q_a (log q_a + H) on the kept set, log q_a = shifted_a - log_total
            inner = torch.where(q > 0, shifted - lt + ent[sl].unsqueeze(-1), torch.zeros_like(q))
            g = q.mul_(inner).mul_(-grad_out[sl].to(compute).unsqueeze(-1))
            # rows with NaN/+inf input (only reachable with check_finite=False) get no gradient
            grad[sl] = torch.where(torch.isfinite(ent[sl]).unsqueeze(-1), g, torch.zeros_like(g))
            del shifted, q, inner, g
        return grad, None, None


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

    Returns:
        ``logits.shape[:-1]`` tensor of float32 (float64 for float64 input). Its gradient has the input's dtype.
    """
    _check_args(logits, clamp_p, chunk_size)
    lead = logits.shape[:-1]
    vocab = logits.shape[-1]
    rows2d = logits.reshape(-1, vocab)
    k = num_removed(vocab, clamp_p)
    which = _resolve_impl(impl, logits.device, logits.dtype)
    if which == "reference":
        ent = _reference_rows(rows2d, clamp_p)
        ent = ent if logits.dtype == torch.float64 else ent.float()
    elif which == "triton":
        from aent import ops

        ent = ops.clamped_entropy_triton(rows2d, k)
    else:
        size = chunk_size or _default_chunk_size(rows2d.shape[0], vocab, logits.device)
        if rows2d.shape[0] == 0:
            ent = rows2d.new_zeros((0,), dtype=_compute_dtype(logits.dtype)) + 0 * rows2d.sum()
        else:
            ent = _ChunkedClampedEntropy.apply(rows2d, k, size)
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
) -> torch.Tensor:
    """Per-row full-vocabulary entropy in nats: ``clamped_entropy(logits, 0.0)``. See :func:`clamped_entropy`."""
    return clamped_entropy(logits, 0.0, chunk_size=chunk_size, impl=impl, check_finite=check_finite)
