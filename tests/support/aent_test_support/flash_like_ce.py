"""Test-only bridge: an emulation of flash-attn's in-place cross-entropy backward, as verl 0.9.1 calls it.

verl 0.9.1's ``FSDPEngineWithLMHead.prepare_model_outputs`` gets its log-probs from
``verl.utils.torch_functional.logprobs_from_logits``, which on a GPU calls flash-attn's Triton cross-entropy
(``flash_attn.ops.triton.cross_entropy.cross_entropy_loss``, flash-attn 2.x) with ``inplace_backward=True`` unless
``calculate_entropy`` is set. That backward computes ``(softmax(z) - onehot(label)) * grad`` and writes it INTO the
logits' storage, without bumping autograd's version counter (a raw kernel write), and returns that storage as the
gradient. :func:`install_inplace_cross_entropy` replaces the engine module's ``logprobs_from_logits`` with the same
arithmetic and the same raw in-place write (through ``.data``, which autograd does not track), so that an op which
re-reads the logits in its backward after it sees the gradient instead, as on a GPU. Without CUDA there is no
flash-attn; on a CPU verl would use its out-of-place torch path and the hazard would never show.
"""

from __future__ import annotations

from typing import Dict

import torch

_ROWS = 64  # rows per chunk: like the kernel, no temporary the size of the logits


class FlashAttnLikeCrossEntropy(torch.autograd.Function):
    """Per-row ``logsumexp(z) - z[label]`` whose backward overwrites ``z`` with its gradient when asked to.

    Row-chunked, so that it allocates nothing the size of the logits, as the kernel does not either.
    """

    @staticmethod
    def forward(ctx, logits, labels, inplace_backward):
        lse = torch.cat([torch.logsumexp(c.float(), dim=-1) for c in logits.split(_ROWS)])
        loss = lse - logits.float().gather(1, labels.unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(logits, lse, labels)
        ctx.inplace_backward = inplace_backward
        return loss

    @staticmethod
    def backward(ctx, grad):
        logits, lse, labels = ctx.saved_tensors
        out = logits.data if ctx.inplace_backward else torch.empty_like(logits)  # .data: the kernel's raw write
        for start in range(0, logits.shape[0], _ROWS):
            rows = slice(start, start + _ROWS)
            d = torch.exp(logits[rows].float() - lse[rows].unsqueeze(1))
            d[torch.arange(d.shape[0]), labels[rows]] -= 1.0
            out[rows] = d.mul_(grad[rows].unsqueeze(1))
        return (logits if ctx.inplace_backward else out), None, None


def install_inplace_cross_entropy(counts: Dict[str, int]) -> None:
    """Route verl's engine log-prob call through :class:`FlashAttnLikeCrossEntropy`; count calls by mode.

    Calls under ``torch.no_grad()`` (no backward can follow) count as ``"forward_only"``, the others as
    ``"inplace"`` or ``"out_of_place"``.
    """
    import verl.workers.engine.fsdp.transformer_impl as impl

    def logprobs_from_logits(logits, labels, inplace_backward=True):
        if not torch.is_grad_enabled():
            counts["forward_only"] = counts.get("forward_only", 0) + 1
        else:
            counts["inplace" if inplace_backward else "out_of_place"] += 1
        vocab = logits.shape[-1]
        loss = FlashAttnLikeCrossEntropy.apply(logits.reshape(-1, vocab), labels.reshape(-1), inplace_backward)
        return -loss.view(logits.shape[:-1])

    impl.logprobs_from_logits = logprobs_from_logits
