"""Full-vocabulary and restricted entropies of softmax policies: the paper's clamp and its top-k / nucleus relatives.

One general entry point, :func:`restricted_entropy`, takes the kept set as an :class:`aent.KeptSet` (rules in
:mod:`aent.kept`); :func:`clamped_entropy` (``bottom_p``), :func:`topk_entropy` (``top_k``) and
:func:`nucleus_entropy` (``top_p``) name one rule each, and :func:`entropy` is the full entropy. Every rule has the
same interchangeable implementations:

``"reference"``
    Plain float64 code that builds the kept set of every row explicitly from its rule's definition and lets autograd
    differentiate it. Slow (a Python loop over rows); it exists so that every other path can be compared with something obviously
    correct.
``"torch"``
    Chunked PyTorch with a hand-written backward. Only per-row statistics are kept between forward and backward,
    so the peak extra memory is ``O(chunk_size x V)`` plus the gradient itself, instead of the ~6x logits that
    eager autograd keeps. Runs on any device.
``"triton"``
    Fused GPU kernels (:mod:`aent.ops`), chosen by ``"auto"`` on CUDA when Triton is importable and the rule is in
    :data:`aent.ops.FUSED_RULES` (other rules take the ``"torch"`` path under ``"auto"``).

Every rule keeps the tokens whose logit is at or above a per-row threshold ``t`` (the rank rules' threshold is a
logit of fixed rank, the nucleus's the logit at which the descending probability mass reaches ``top_p``; the
probability is monotone in the logit, so ``q >= tau`` is ``z >= t``). The torch path finds ``t`` per rule and shares
everything after it.

The choice is made by the ``impl`` keyword, or by the ``AENT_ENTROPY_IMPL`` environment variable when ``impl`` is
``None``/``"auto"``.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

from aent.kept import KeptSet, as_kept
from aent.validate import check_chunk_size, check_top_k

__all__ = [
    "IMPLEMENTATIONS",
    "check_row_mask",
    "clamped_entropy",
    "compute_dtype",
    "entropy",
    "nucleus_entropy",
    "num_removed",
    "restricted_entropy",
    "topk_entropy",
]

IMPLEMENTATIONS = ("auto", "reference", "torch", "triton")

# Elements of float32 scratch per chunk. The torch path holds about five tensors of this size at once.
_CHUNK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 25}


def num_removed(vocab_size: int, clamp_p: float) -> int:
    """Number of lowest-logit tokens removed from a row: ``floor(clamp_p * vocab_size)`` (docs/METHOD.md, "Clamped entropy").

    The product is taken in float64, exactly as written: ``clamp_p=0.29, vocab_size=100`` removes 28 tokens because
    the binary value of 0.29 is slightly below 0.29. At real vocabulary sizes this is at most one token.
    """
    return KeptSet.bottom_p(clamp_p).num_removed(vocab_size)


def check_logits(logits: torch.Tensor) -> None:
    """The logits every entry point takes: a floating-point tensor with a non-empty last (vocabulary) dimension."""
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


def check_row_mask(row_mask: Optional[torch.Tensor], logits: torch.Tensor) -> None:
    """``row_mask`` as every entry point takes it: None, or a bool tensor of shape ``logits.shape[:-1]`` on the
    logits' device (True = compute this row)."""
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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every entropy and log-probability is computed in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


_compute_dtype = compute_dtype


def _resolve_impl(
    impl: Optional[str], device: torch.device, dtype: torch.dtype = torch.float32, rule: str = "bottom_p"
) -> str:
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

            # float64 and rules without a fused kernel stay on the torch path under "auto" rather than failing (as do
            # all calls when the kernels do not load or failed their self-check on this device: aent.ops warns once).
            return "triton" if ops.auto_uses_triton(dtype, rule) else "torch"
        return "torch"
    if impl == "triton":
        from aent import ops

        if rule not in ops.FUSED_RULES:
            raise ValueError(
                f"{source}='triton' has no fused kernel for the {rule!r} kept set (fused rules: {ops.FUSED_RULES}); "
                "use impl='torch', or 'auto', which takes the torch path for it"
            )
    return impl


def _raise_nonfinite(bad_rows: int, total_rows: int) -> None:
    raise ValueError(
        f"logits contain NaN or +inf in {bad_rows} of {total_rows} rows; the entropy of such a row is undefined. "
        "Check the model's outputs (or pass check_finite=False to get NaN for those rows and count them yourself)."
    )


# --------------------------------------------------------------------------------------------------------------
# Reference: float64, explicit kept set, autograd.
# --------------------------------------------------------------------------------------------------------------


def _reference_kept(row: torch.Tensor, kept: KeptSet) -> torch.Tensor:
    """The kept set of one float64 row (no NaN/+inf), built from the rule's definition in :mod:`aent.kept`."""
    finite = torch.isfinite(row)
    if kept.by_rank:
        threshold = torch.sort(row).values[kept.num_removed(row.numel())]  # the (k+1)-th smallest logit
        return (row >= threshold) & finite
    # top_p: q = softmax(z); tau = the probability at which the descending cumulative sum first reaches top_p
    if not finite.any():
        return finite
    q = torch.softmax(row, dim=-1)
    if kept.value >= 1.0:
        return q > 0
    descending = torch.sort(q, descending=True).values
    reached = (torch.cumsum(descending, dim=-1) >= kept.value).nonzero()
    # rounding can leave the sum short of top_p just below 1: the last token with probability then crosses
    at = int(reached[0]) if reached.numel() else int((descending > 0).sum()) - 1
    return (q >= descending[at]) & finite


def _reference_rows(rows: torch.Tensor, kept: KeptSet, row_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    z = rows.to(torch.float64)
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
        keep = _reference_kept(row.detach(), kept)
        if not keep.any():  # every kept logit is -inf: no distribution, defined as 0 with 0 gradient
            out.append(torch.where(torch.isfinite(row), row, torch.zeros_like(row)).sum() * 0)
            continue
        logq = torch.log_softmax(row[keep], dim=-1)
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


#: The nucleus threshold finds the crossing in a histogram of the probability mass over this many buckets of the
#: logit's distance from the row maximum, the last bucket holding everything at or beyond ``_NUCLEUS_RANGE`` nats.
_NUCLEUS_BUCKETS = 1024
_NUCLEUS_RANGE = 32.0


def _nucleus_threshold(z: torch.Tensor, top_p: float, row_max: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per row of a 2-D ``z`` the logit ``t`` at which the descending cumulative probability first reaches ``top_p``
    (the kept set is ``z >= t``), or -inf where every token is kept. See :func:`_nucleus_search`."""
    return _nucleus_search(z, top_p, z.amax(dim=-1) if row_max is None else row_max)[0]


def _workspace(workspace: Optional[dict], name: str, like: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """An uninitialised contiguous tensor of ``like``'s shape and device, a view of the buffer ``workspace[name]``
    (made or grown here) that the chunks of one call share, for the ``out=`` of a full-size operation; None, a fresh
    result, when there is no workspace or ``like`` is not contiguous (whose results then keep its layout). A fresh CPU
    tensor of a chunk's size is mapped and written from scratch by the system at most allocations, which can cost more
    than the operation that fills it."""
    if workspace is None or not like.is_contiguous():
        return None
    size = like.numel()
    buffer = workspace.get(name)
    if buffer is None or buffer.numel() < size or buffer.dtype != dtype or buffer.device != like.device:
        buffer = workspace[name] = torch.empty(size, dtype=dtype, device=like.device)
    return buffer[:size].view(like.shape)


def _nucleus_search(z: torch.Tensor, top_p: float, row_max: torch.Tensor, workspace: Optional[dict] = None):
    """The nucleus threshold of each row of a 2-D ``z`` (as :func:`_nucleus_threshold`), with the ``z - max`` and
    ``exp(z - max)`` it was found from (``max`` taken as 0 on rows without a finite maximum), for the forward to reuse.
    ``workspace``: a dict that holds scratch buffers between the chunks of one call (see :func:`_workspace`).

    Exact, with no cap on the nucleus. One pass bins the weights ``exp(z - max)`` into a histogram by logit; the
    bucket where the cumulative mass reaches ``top_p`` of the row's total is the only one sorted, its tokens taken
    out of the row first (a few per row for any realistic distribution). Cumulative masses are float64 sums of the
    float32 weights. Rows with NaN/+inf or no finite logit get -inf (the careful path gives them NaN or 0); a row
    whose crossing rounding leaves out of its bucket is sorted whole. The per-token work is a handful of full-width
    operations; everything after the histogram is per row or per token of the crossing buckets, in 1-D gathers.
    """
    rows = z.shape[0]
    good = torch.isfinite(row_max)
    shift = torch.where(good, row_max, torch.zeros_like(row_max)).unsqueeze(-1)
    shifted = torch.sub(z, shift, out=_workspace(workspace, "shifted", z, z.dtype))
    weights = torch.exp(shifted, out=_workspace(workspace, "weights", z, z.dtype))
    # the bucket of a token: its distance below the maximum in units of _NUCLEUS_RANGE / _NUCLEUS_BUCKETS (a power
    # of two at the defaults, so the product is exact), -inf logits in the last bucket with weight 0
    scaled = torch.mul(shifted, -_NUCLEUS_BUCKETS / _NUCLEUS_RANGE, out=_workspace(workspace, "scaled", z, z.dtype))
    scaled.clamp_(0, _NUCLEUS_BUCKETS - 1)
    if not bool(good.all()):  # NaN (rows without a finite maximum, never searched) is no bucket at all
        scaled.nan_to_num_(nan=_NUCLEUS_BUCKETS - 1)
    bucket = _workspace(workspace, "bucket", z, torch.int64)
    bucket = scaled.to(torch.int64) if bucket is None else bucket.copy_(scaled)  # truncated either way
    del scaled
    hist = torch.zeros(rows, _NUCLEUS_BUCKETS, dtype=weights.dtype, device=z.device).scatter_add_(1, bucket, weights)
    cum = hist.cumsum(dim=-1, dtype=torch.float64)
    del hist
    target = cum[:, -1] * top_p
    # the first bucket whose cumulative mass reaches the target (the rows of cum are non-decreasing where searched)
    crossing = torch.searchsorted(cum, target.unsqueeze(-1)).squeeze(-1).clamp_(max=_NUCLEUS_BUCKETS - 1)
    above = torch.where(crossing > 0, cum.gather(1, (crossing - 1).clamp_(min=0).unsqueeze(1)).squeeze(1), 0.0)
    crossing = torch.where(good, crossing, -1)  # rows without a finite maximum: no bucket is searched
    inside = bucket == crossing.unsqueeze(-1)
    del bucket
    # the crossing bucket's tokens, sorted by row and then by descending logit, their mass accumulated per row
    row, col = inside.nonzero(as_tuple=True)
    del inside
    count = row.numel()
    values = z[row, col]
    order = torch.sort(values, descending=True, stable=True).indices
    order = order.index_select(0, torch.sort(row.index_select(0, order), stable=True).indices)
    row, values = row.index_select(0, order), values.index_select(0, order)
    flat = col.index_select(0, order).add_(row, alpha=z.shape[-1])
    mass = weights.view(-1).index_select(0, flat) if weights.is_contiguous() else weights.reshape(-1)[flat]
    mass = mass.to(torch.float64)
    cumulative = mass.cumsum(dim=0)
    counts = torch.bincount(row, minlength=rows)
    before = torch.cumsum(counts, dim=0) - counts  # position of each row's first token
    if count:
        offset = torch.where(before > 0, cumulative.index_select(0, (before - 1).clamp_(min=0)), 0.0)
    else:
        offset = before
    reached = (cumulative - offset.index_select(0, row) + above.index_select(0, row)) >= target.index_select(0, row)
    position = torch.arange(count, device=z.device)
    first = torch.full((rows,), count, dtype=torch.int64, device=z.device)
    first.scatter_reduce_(0, row, torch.where(reached, position, count), reduce="amin")
    found = first < count
    threshold = z.new_full((rows,), float("-inf"))
    if count:
        threshold = torch.where(found, values.index_select(0, first.clamp(max=count - 1)), threshold)
    rest = (~found & good).nonzero().squeeze(1)
    if rest.numel():  # rounding kept the crossing out of its bucket: the whole row, sorted
        values, index = torch.sort(z.index_select(0, rest), dim=-1, descending=True)
        sums = weights.index_select(0, rest).gather(1, index).to(torch.float64).cumsum_(dim=-1)
        reached = sums >= target[rest].unsqueeze(-1)
        done = reached.any(dim=-1)  # not reached in the whole row (rounding just below 1): every token is kept
        at = reached.to(torch.int8).argmax(dim=-1, keepdim=True)
        threshold[rest[done]] = values.gather(1, at).squeeze(1)[done]
    return threshold, shifted, weights


def _keeps_all(kept: KeptSet, vocab: int) -> bool:
    """True when ``kept`` keeps every finite token of every row of ``vocab`` logits (then no threshold is needed)."""
    return kept.is_full(vocab) if kept.by_rank else kept.value >= 1.0


def _chunk_threshold(z: torch.Tensor, kept: KeptSet, row_max: torch.Tensor, workspace: Optional[dict] = None):
    """Per-row threshold of the 2-D chunk ``z`` under ``kept`` (keep ``z >= t``), or None when every token is kept,
    with the ``z - max`` and ``exp(z - max)`` the search computed on the way (None when it did not: the rank rules)."""
    if _keeps_all(kept, z.shape[-1]):
        return None, None, None
    if kept.by_rank:
        return _row_threshold(z, kept.num_removed(z.shape[-1])), None, None
    return _nucleus_search(z, float(kept.value), row_max, workspace)


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


def _chunk_forward(z: torch.Tensor, kept: KeptSet, workspace: Optional[dict] = None):
    """Entropy of each row of the 2-D chunk ``z``, its threshold, row maximum and log of the kept set's sum of
    ``exp(z - max)`` (those three None when ``kept`` keeps every token) and the flags of the rows computed the
    careful way.

    The backward needs ``log q = (z - max) - log_total`` in this order: ``z - max`` is exact in floating point for the
    kept tokens, while the single number ``max + log_total`` rounded to float32 would be off by up to half a unit in
    the last place of the logits' magnitude (5e-4 at |z| = 1e4)."""
    row_max = z.amax(dim=-1)
    threshold, shifted, weights = _chunk_threshold(z, kept, row_max, workspace)
    if threshold is None:
        log_total = None
        logq = torch.log_softmax(z, dim=-1)
        ent = torch.exp(logq).mul_(logq).sum(dim=-1).neg_()
        del logq
    else:
        if shifted is None:
            shifted = torch.clamp(z, min=threshold.unsqueeze(-1)).sub_(row_max.unsqueeze(-1))
            weights = torch.exp(shifted)
        else:
            # the search's z - max clamped at t - max is the same number (rounding is monotone), its exp the same
            # weight on the kept tokens; rows without a finite maximum are computed again the careful way below
            shifted.clamp_(min=(threshold - row_max).unsqueeze(-1))
        # removed tokens: weight exactly 0 (a product with the bool mask is cheaper on the CPU than masked_fill_)
        weights.mul_(z >= threshold.unsqueeze(-1))
        total = weights.sum(dim=-1)
        weighted = weights.mul_(shifted).sum(dim=-1)  # sum of q * (z - max) times total
        del shifted, weights
        log_total = torch.log(total)
        ent = log_total - weighted / total
    careful = ~torch.isfinite(ent) | ~torch.isfinite(row_max)
    if careful.any():
        ent[careful] = _careful_forward(z[careful], None if threshold is None else threshold[careful])
    return ent, threshold, (None if threshold is None else row_max), log_total, careful


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


class _ChunkedRestrictedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits2d: torch.Tensor, kept: KeptSet, chunk_size: int, selected: Optional[torch.Tensor]):
        compute = _compute_dtype(logits2d.dtype)
        restricted = not _keeps_all(kept, logits2d.shape[-1])  # then per-row statistics are kept for backward
        rows = logits2d.shape[0]
        alloc = torch.empty if selected is None else torch.zeros  # skipped rows: entropy 0
        ent = alloc(rows, dtype=compute, device=logits2d.device)
        threshold = alloc(rows, dtype=compute, device=logits2d.device) if restricted else None
        row_max = alloc(rows, dtype=compute, device=logits2d.device) if restricted else None
        log_total = alloc(rows, dtype=compute, device=logits2d.device) if restricted else None
        careful = torch.zeros(rows, dtype=torch.bool, device=logits2d.device)
        workspace = {}  # scratch shared by the chunks
        for part in _chunks(selected, rows, chunk_size):
            z = logits2d[part].to(compute)
            e, t, m, n, c = _chunk_forward(z, kept, workspace)
            ent[part], careful[part] = e, c
            if restricted:
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


_IMPL_DOC = """
        chunk_size: rows processed at once by the ``"torch"`` path; peak extra memory is about
            ``5 * chunk_size * V * 4`` bytes plus the gradient. ``None`` picks ~16 MiB of float32 per scratch tensor
            on CPU and ~128 MiB on GPU.
        impl: ``"auto"`` (default; fused Triton kernels for float32/bfloat16/float16 CUDA tensors when Triton
            imports and the rule has a fused kernel (:data:`aent.ops.FUSED_RULES`), else ``"torch"``), ``"torch"``,
            ``"triton"`` (CUDA tensors, float32/bfloat16/float16 only, fused rules only; errors otherwise) or
            ``"reference"``. When ``None``/``"auto"``, the ``AENT_ENTROPY_IMPL`` environment variable may force one.
        check_finite: raise ``ValueError`` when a row contains NaN or ``+inf`` (checked on the per-row results,
            which costs one small reduction). With ``False`` such rows come back as NaN, for loops that count them.
        row_mask: optional bool tensor of shape ``logits.shape[:-1]`` on the logits' device. Rows where it is
            ``False`` are neither computed nor read (padding, prompt tokens): their entropy is 0 and their gradient 0,
            whatever they hold. ``None`` computes every row.

    Returns:
        ``logits.shape[:-1]`` tensor of float32 (float64 for float64 input). Its gradient has the input's dtype.
"""


def _with_args(doc: str) -> str:
    return doc.rstrip() + "\n" + _IMPL_DOC


def restricted_entropy(
    logits: torch.Tensor,
    kept: Union[KeptSet, float, int],
    *,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
    check_finite: bool = True,
    row_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    kept = as_kept(kept)
    check_logits(logits)
    check_chunk_size("chunk_size", chunk_size)
    check_row_mask(row_mask, logits)
    lead = logits.shape[:-1]
    vocab = logits.shape[-1]
    rows2d = logits.reshape(-1, vocab)
    mask1d = None if row_mask is None else row_mask.reshape(-1)
    which = _resolve_impl(impl, logits.device, logits.dtype, kept.rule)
    if which == "reference":
        ent = _reference_rows(rows2d, kept, mask1d)
        ent = ent if logits.dtype == torch.float64 else ent.float()
    elif which == "triton":
        from aent import ops

        auto = ops.chosen_by_auto(impl)  # a failed self-check then falls back to the torch path, with a warning
        if kept.by_rank:
            ent = ops.clamped_entropy_triton(rows2d, kept.num_removed(vocab), row_mask=mask1d, auto=auto)
        else:
            ent = ops.nucleus_entropy_triton(rows2d, float(kept.value), row_mask=mask1d, auto=auto)
    else:
        size = chunk_size or _default_chunk_size(rows2d.shape[0], vocab, logits.device)
        if rows2d.shape[0] == 0:
            ent = rows2d.new_zeros((0,), dtype=_compute_dtype(logits.dtype)) + 0 * rows2d.sum()
        else:
            selected = None if mask1d is None else mask1d.nonzero().squeeze(1)
            ent = _ChunkedRestrictedEntropy.apply(rows2d, kept, size, selected)
    if check_finite and ent.numel() > 0:
        bad = int((~torch.isfinite(ent.detach())).sum())
        if bad:
            _raise_nonfinite(bad, ent.numel())
    return ent.reshape(lead)


restricted_entropy.__doc__ = _with_args(
    """Per-row entropy in nats of the softmax renormalised over a kept set of each row's tokens.

    For each row of temperature-scaled ``logits`` (vocabulary = last dimension, ``V`` entries), ``kept`` says which
    tokens stay (:class:`aent.KeptSet`; a plain number is the paper's removed fraction ``clamp_p``):

      * ``KeptSet.bottom_p(p)`` (AEnt, arXiv 2509.03493): the ``floor(p * V)`` lowest logits are removed.
      * ``KeptSet.top_k(k)`` (TRE-K, arXiv 2602.03635): the ``k`` highest logits are kept.
      * ``KeptSet.top_p(p)`` (TRE-P): the smallest top set with probability ``>= p`` is kept.

    Semantics shared by every rule:
      * Ties: every token tied with the last kept one is kept too, so the result does not depend on token order.
      * ``-inf`` logits (masked vocabulary) count as the lowest and carry no probability. A row with no finite kept
        logit has entropy 0 and gradient 0.
      * The kept set is a constant for autograd; the gradient ``-q_a (log q_a + H)`` reaches kept logits only.

    Args:
        logits: ``(..., V)`` float32, bfloat16, float16 or float64 tensor, on any device; need not be contiguous.
        kept: a :class:`aent.KeptSet`, or a number: the removed fraction of ``bottom_p``."""
)


def clamped_entropy(
    logits: torch.Tensor,
    clamp_p: float,
    *,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
    check_finite: bool = True,
    row_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return restricted_entropy(
        logits,
        KeptSet.bottom_p(clamp_p),
        chunk_size=chunk_size,
        impl=impl,
        check_finite=check_finite,
        row_mask=row_mask,
    )


clamped_entropy.__doc__ = _with_args(
    """Per-row clamped entropy in nats (AEnt, arXiv 2509.03493, section 3; docs/METHOD.md): the ``bottom_p`` rule.

    For each row the ``k = floor(clamp_p * V)`` lowest logits are removed and the entropy of the softmax renormalised
    over the kept tokens is returned. ``clamp_p=0`` is the ordinary full-vocabulary entropy. Ties: with ``t`` the
    (k+1)-th smallest logit of a row, every token with ``z >= t`` is kept (at least ``V - k`` tokens). Otherwise as
    :func:`restricted_entropy`.

    Args:
        logits: ``(..., V)`` float32, bfloat16, float16 or float64 tensor, on any device; need not be contiguous.
        clamp_p: removed fraction of the vocabulary, in ``[0, 1)``. Paper settings: 0.33 (a) and 0.25 (b)."""
)


def topk_entropy(
    logits: torch.Tensor,
    k: int,
    *,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
    check_finite: bool = True,
    row_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    kept = KeptSet.top_k(check_top_k("k", k))
    return restricted_entropy(
        logits, kept, chunk_size=chunk_size, impl=impl, check_finite=check_finite, row_mask=row_mask
    )


topk_entropy.__doc__ = _with_args(
    """Per-row top-k restricted entropy in nats (TRE-K, arXiv 2602.03635): the ``top_k`` rule.

    Every token whose logit is ``>=`` the k-th largest logit of its row is kept (ties at the boundary are all kept, so
    at least ``k`` tokens; ``k >= V`` is the full entropy). TRE's scripts use ``k = 2`` with a coefficient 0.001
    (their code also multiplies the bonus by ``log V / log k``, a rescale of the coefficient, not done here).
    Otherwise as :func:`restricted_entropy`.

    Args:
        logits: ``(..., V)`` float32, bfloat16, float16 or float64 tensor, on any device; need not be contiguous.
        k: number of highest-logit tokens kept, an integer ``>= 1``."""
)


def nucleus_entropy(
    logits: torch.Tensor,
    top_p: float,
    *,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
    check_finite: bool = True,
    row_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return restricted_entropy(
        logits, KeptSet.top_p(top_p), chunk_size=chunk_size, impl=impl, check_finite=check_finite, row_mask=row_mask
    )


nucleus_entropy.__doc__ = _with_args(
    """Per-row nucleus restricted entropy in nats (TRE-P, arXiv 2602.03635): the ``top_p`` rule.

    With ``q = softmax(z)``, every token with ``q >= tau`` is kept, ``tau`` being the probability of the token at
    which the descending cumulative sum of ``q`` first reaches ``top_p``: the smallest top set with mass ``>= top_p``,
    plus every token tied with its last one. ``top_p = 1`` keeps every token with non-zero probability (the full
    entropy). Exact: the nucleus is not capped (TRE's code caps it at 256 candidates). TRE's scripts use 0.99.
    Otherwise as :func:`restricted_entropy`.

    Args:
        logits: ``(..., V)`` float32, bfloat16, float16 or float64 tensor, on any device; need not be contiguous.
        top_p: probability mass of the nucleus, in ``(0, 1]``."""
)


def entropy(
    logits: torch.Tensor,
    *,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
    check_finite: bool = True,
    row_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-row full-vocabulary entropy in nats: ``clamped_entropy(logits, 0.0)``. See :func:`restricted_entropy`."""
    return clamped_entropy(logits, 0.0, chunk_size=chunk_size, impl=impl, check_finite=check_finite, row_mask=row_mask)
