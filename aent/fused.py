"""Label log-probabilities and the restricted entropy straight from the output layer, without the logits.

The logits ``hidden @ weight.T`` of an RL update are its largest tensor: at 16,384 tokens and V = 151,936 one float32
copy is 10 GB. :func:`linear_logprobs_and_clamped_entropy` takes the last hidden states and the output layer's weight
instead, and works through the rows in chunks: each chunk's logits are built, reduced to the two per-row results by
:func:`aent.logprobs_and_clamped_entropy` and dropped. The backward builds each chunk's logits again, takes their
gradient from the same op (one buffer, both terms) and turns it into the chunk's share of the hidden states' and the
weight's gradients. No ``[rows x V]`` tensor outlives a chunk: the extra memory is ``O(chunk_size x V)`` whatever the
number of rows, plus the weight's gradient itself.

On CUDA each chunk's entropy goes through the fused Triton kernel (``impl="auto"``), elsewhere through the chunked
torch path; the semantics are :func:`aent.restricted_entropy`'s (every kept-set rule, ties, float32 compute).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from aent.entropy import (
    _chunk_backward,
    _chunk_forward,
    _chunks,
    _default_chunk_size,
    _keeps_all,
    _resolve_impl,
    compute_dtype,
)
from aent.kept import KeptSet, as_kept
from aent.logprobs import _add_logprob_grad, _chunk_logprobs, logprobs_and_clamped_entropy
from aent.validate import check_chunk_size

__all__ = ["linear_logprobs_and_clamped_entropy"]


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    # the same two operations, in the same order, as the logits a trainer would build: hidden @ W.T, then / T
    logits = torch.matmul(hidden, weight.t())
    return logits if temperature == 1.0 else logits.div_(temperature)


def _store(dest: Optional[torch.Tensor], part, value: Optional[torch.Tensor]) -> None:
    if dest is not None:
        dest[part] = value


class _LinearLogprobsAndEntropy(torch.autograd.Function):
    """The torch path keeps the per-row statistics of the forward (the entropy's threshold, row maximum, log of the
    kept set's total, entropy and careful-row flags; the log-sum-exp of the log-probabilities) and the backward turns
    each rebuilt chunk of logits into its gradient straight from them: the kept set is selected once, in the forward.
    Other implementations (the fused Triton kernels, the reference) have no statistics interface: their backward runs
    :func:`aent.logprobs_and_clamped_entropy` on the rebuilt chunk again, under autograd.

    Within a chunk both ways work through the rows in the sub-chunks :func:`aent.logprobs_and_clamped_entropy` would
    take, with the same operations in the same order, so the results are those of the op on the whole logits.
    """

    @staticmethod
    def forward(ctx, hidden2d, weight, labels, rows, kept, temperature, chunk_size, impl):
        n, vocab = hidden2d.shape[0], weight.shape[0]
        device = hidden2d.device
        compute = compute_dtype(hidden2d.dtype)
        logp = torch.zeros(n, dtype=compute, device=device)
        ent = torch.zeros(n, dtype=compute, device=device)
        stats = _resolve_impl(impl, device, hidden2d.dtype, kept.rule) == "torch"
        if stats:
            restricted = not _keeps_all(kept, vocab)
            lse = torch.zeros(n, dtype=compute, device=device)
            careful = torch.zeros(n, dtype=torch.bool, device=device)
            threshold, row_max, log_total = (
                (torch.zeros(n, dtype=compute, device=device) for _ in range(3)) if restricted else (None,) * 3
            )
        with torch.no_grad():
            for part in _chunks(rows, n, chunk_size):
                z = _chunk_logits(hidden2d[part], weight, temperature)
                if not stats:
                    lp, e = logprobs_and_clamped_entropy(z, labels[part], kept, impl=impl, check_finite=False)
                    logp[part], ent[part] = lp, e
                    del z, lp, e
                    continue
                m = z.shape[0]
                here = labels[part]
                chunk = [torch.empty(m, dtype=compute, device=device) for _ in range(6)]
                flags = torch.empty(m, dtype=torch.bool, device=device)
                for sub in _chunks(None, m, _default_chunk_size(m, vocab, device)):
                    zc = z[sub].to(compute)
                    e, t, mx, lt, c = _chunk_forward(zc, kept)
                    chunk[0][sub], flags[sub] = e, c
                    if restricted:
                        chunk[1][sub], chunk[2][sub], chunk[3][sub] = t, mx, lt
                    chunk[4][sub], chunk[5][sub] = _chunk_logprobs(zc, here[sub])
                    del zc, e, t, mx, lt, c
                del z
                ent[part], careful[part], lse[part], logp[part] = chunk[0], flags, chunk[4], chunk[5]
                for dest, value in zip((threshold, row_max, log_total), chunk[1:4]):
                    _store(dest, part, value)
                del chunk, flags
        if stats:
            ctx.save_for_backward(hidden2d, weight, labels, rows, ent, careful, lse, threshold, row_max, log_total)
        else:
            ctx.save_for_backward(hidden2d, weight, labels, rows)
        ctx.args = (kept, temperature, chunk_size, impl, stats)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_ent):
        kept, temperature, chunk_size, impl, stats = ctx.args
        if stats:
            hidden2d, weight, labels, rows, ent, careful, lse, threshold, row_max, log_total = ctx.saved_tensors
        else:
            hidden2d, weight, labels, rows = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden2d) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        n = hidden2d.shape[0]
        if grad_logp is None:
            grad_logp = torch.zeros(n, dtype=torch.float32, device=hidden2d.device)
        if grad_ent is None:
            grad_ent = torch.zeros(n, dtype=torch.float32, device=hidden2d.device)
        for part in _chunks(rows, n, chunk_size):
            h = hidden2d[part]
            with torch.no_grad():
                z = _chunk_logits(h, weight, temperature)
            if stats:
                grad_z = _chunk_grad(
                    z, labels[part], part, grad_logp, grad_ent, ent, careful, lse, threshold, row_max, log_total
                )
            else:
                leaf = z.requires_grad_(True)
                with torch.enable_grad():
                    lp, e = logprobs_and_clamped_entropy(leaf, labels[part], kept, impl=impl, check_finite=False)
                    (grad_z,) = torch.autograd.grad(
                        (lp, e), leaf, (grad_logp[part].to(lp.dtype), grad_ent[part].to(e.dtype))
                    )
                del leaf, lp, e
            del z
            if temperature != 1.0:
                grad_z = grad_z.div_(temperature)
            if want_h:
                gh = torch.matmul(grad_z, weight)
                if isinstance(part, slice):
                    grad_h[part] = gh
                else:
                    grad_h.index_copy_(0, part, gh)
                del gh
            if want_w:
                grad_w.addmm_(grad_z.t(), h)
            del grad_z, h
        return grad_h, grad_w, None, None, None, None, None, None


def _chunk_grad(z, labels, part, grad_logp, grad_ent, ent, careful, lse, threshold, row_max, log_total):
    """Gradient of the logits chunk ``z`` (rows ``part``) from the forward's statistics: the entropy's and then the
    log-probabilities' share, each sub-chunk as :func:`aent.logprobs_and_clamped_entropy`'s backward computes it."""
    compute = ent.dtype
    m, vocab = z.shape
    e, c, g_e = ent[part], careful[part], grad_ent[part].to(compute)
    t, mx, lt = (None,) * 3 if threshold is None else (threshold[part], row_max[part], log_total[part])
    subs = list(_chunks(None, m, _default_chunk_size(m, vocab, z.device)))
    if len(subs) == 1:  # the entropy's last scratch tensor becomes the gradient: one chunk-sized buffer fewer
        grad = _chunk_backward(z.to(compute), t, mx, lt, e, c, g_e).to(z.dtype)
    else:
        grad = torch.empty_like(z, memory_format=torch.contiguous_format)
        for sub in subs:
            stats = (None,) * 3 if t is None else (t[sub], mx[sub], lt[sub])
            _chunk_backward(z[sub].to(compute), *stats, e[sub], c[sub], g_e[sub], out=grad[sub])
    part_lse, g_l = lse[part], grad_logp[part].to(compute)
    for sub in subs:
        _add_logprob_grad(grad, sub, z[sub].to(compute), labels[sub], part_lse[sub], g_l[sub])
    return grad


def linear_logprobs_and_clamped_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    kept: Union[KeptSet, float],
    *,
    temperature: float = 1.0,
    row_mask: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    impl: Optional[str] = None,
    check_finite: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`aent.logprobs_and_clamped_entropy` of the logits ``hidden @ weight.T / temperature``, never built whole.

    Args:
        hidden: ``(..., H)`` last hidden states (float32, bfloat16, float16 or float64).
        weight: ``(V, H)`` output layer weight (``lm_head.weight``), same dtype and device as ``hidden``.
        labels: ``hidden.shape[:-1]`` integer tensor: the token whose log-probability each row gives.
        kept: which tokens the entropy keeps: an :class:`aent.KeptSet` (any rule of :data:`aent.KEPT_RULES`), or a
            number = the removed fraction ``clamp_p`` of the paper's rule (``KeptSet.bottom_p``).
        temperature: the logits are divided by it (a positive number), as the rollout sampled them.
        row_mask: optional bool tensor of shape ``hidden.shape[:-1]``: rows where it is False are neither computed nor
            read; both outputs and both gradients are 0 there. Use it to skip prompt and padding positions.
        chunk_size: rows whose logits exist at once (``None``: the entropy's own chunk, about 16 MiB of float32
            logits on a CPU, 128 MiB on a GPU). The extra memory of forward and backward is a few times
            ``chunk_size x V`` floats.
        impl: implementation of the entropy part (see :func:`aent.restricted_entropy`).
        check_finite: raise ``ValueError`` when a computed row's logits hold NaN or ``+inf`` (a NaN/``+inf`` hidden
            state gives such logits); with ``False`` those rows give NaN, for training loops that count them.

    Returns:
        ``(log_probs, entropy)``, both float32 (float64 for float64 input) of shape ``hidden.shape[:-1]``. The backward
        returns the gradients of ``hidden`` and ``weight`` in their dtypes, each chunk's logits computed again.
    """
    kept = as_kept(kept, "kept")
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if hidden.dim() == 0 or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be (V, H) with H = hidden.shape[-1]; got hidden {tuple(hidden.shape)}, weight "
            f"{tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise ValueError(
            f"hidden ({hidden.dtype}, {hidden.device}) and weight ({weight.dtype}, {weight.device}) must share dtype "
            "and device"
        )
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of token ids, got {getattr(labels, 'dtype', labels)!r}")
    lead = hidden.shape[:-1]
    if tuple(labels.shape) != tuple(lead):
        raise ValueError(f"labels shape {tuple(labels.shape)} must equal hidden.shape[:-1] = {tuple(lead)}")
    if labels.device != hidden.device:
        raise ValueError(f"labels are on {labels.device} but hidden is on {hidden.device}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (0 < temperature < 1e30):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    chunk_size = check_chunk_size("chunk_size", chunk_size)
    vocab = weight.shape[0]
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    labels1d = labels.reshape(-1).to(torch.int64)
    if row_mask is not None:
        if (
            not isinstance(row_mask, torch.Tensor)
            or row_mask.dtype != torch.bool
            or tuple(row_mask.shape) != tuple(lead)
            or row_mask.device != hidden.device
        ):
            raise ValueError(
                f"row_mask must be a bool tensor of shape {tuple(lead)} (hidden.shape[:-1]) on {hidden.device}, "
                f"got {row_mask!r}"
            )
        rows = row_mask.reshape(-1).nonzero().squeeze(1)
    else:
        rows = None
    n_rows = hidden2d.shape[0] if rows is None else rows.numel()
    if n_rows:
        picked = labels1d if rows is None else labels1d.index_select(0, rows)
        low, high = int(picked.min()), int(picked.max())
        if low < 0 or high >= vocab:
            raise ValueError(f"labels must lie in [0, {vocab}) (weight.shape[0]), got values in [{low}, {high}]")
    size = chunk_size or _default_chunk_size(max(n_rows, 1), vocab, hidden.device)
    if n_rows == 0:  # nothing computed: zeros that take part in the graph without reading any value
        compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        zero = hidden2d.new_zeros(hidden2d.shape[0], dtype=compute) + (hidden2d[:0].sum() + weight[:0].sum())
        return zero.reshape(lead), zero.clone().reshape(lead)
    logp, ent = _LinearLogprobsAndEntropy.apply(hidden2d, weight, labels1d, rows, kept, float(temperature), size, impl)
    if check_finite:
        sel = ent if rows is None else ent.index_select(0, rows)
        bad = int((~torch.isfinite(sel)).sum())
        if bad:
            raise ValueError(
                f"the logits of {bad} of {n_rows} computed rows hold NaN or +inf (check the hidden states and the "
                "output layer's weight); their entropy and log-probability are undefined. Pass check_finite=False to "
                "get NaN for those rows and count them."
            )
    return logp.reshape(lead), ent.reshape(lead)
