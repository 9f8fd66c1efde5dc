"""aent.logprobs_and_clamped_entropy: label log-probs and clamped entropy with one gradient, against float64."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import aent

IMPLS = ["torch", "reference", "triton"]  # a new implementation is tested by adding its name (triton: interpreted)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter


def _inputs(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, generator=gen) * 3).to(dtype)
    flat = logits.view(-1, shape[-1])
    if flat.shape[0] > 1:
        flat[1] = torch.round(flat[1])  # a tie-heavy row
    if shape[-1] > 4:
        flat[:, 2] = float("-inf")  # a masked vocabulary column
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    if shape[-1] > 4:
        labels = torch.where(labels == 2, torch.full_like(labels, 3), labels)  # labels on finite logits
    mask = torch.rand(shape[:-1], generator=gen) < 0.7
    mask.view(-1)[0] = True
    return logits, labels, mask


def _reference(logits, labels, clamp_p, mask):
    z = logits.double()
    logp = torch.log_softmax(z, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    ent = aent.clamped_entropy(z, clamp_p, impl="reference")
    zero = torch.zeros((), dtype=torch.float64)
    return torch.where(mask, logp, zero), torch.where(mask, ent, zero)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, 13), (2, 5, 33), (3, 1), (4, 257)])
@pytest.mark.parametrize("clamp_p", [0.0, 0.33])
def test_values_and_gradient_match_float64(impl, dtype, shape, clamp_p):
    logits, labels, mask = _inputs(shape, dtype)
    gen = torch.Generator().manual_seed(1)
    g_lp, g_ent = torch.randn(shape[:-1], generator=gen), torch.randn(shape[:-1], generator=gen)

    x = logits.clone().requires_grad_(True)
    logp, ent = aent.logprobs_and_clamped_entropy(x, labels, clamp_p, row_mask=mask, impl=impl, chunk_size=2)
    (logp * g_lp + ent * g_ent).sum().backward()

    xr = logits.double().requires_grad_(True)
    logp_ref, ent_ref = _reference(xr, labels, clamp_p, mask)
    (logp_ref * g_lp.double() + ent_ref * g_ent.double()).sum().backward()

    assert logp.dtype == ent.dtype == torch.float32
    assert x.grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(logp.double(), logp_ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(ent.double(), ent_ref.detach(), rtol=tol, atol=tol)
    grad_tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=grad_tol, atol=grad_tol)
    assert torch.all(x.grad[~mask] == 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_rows_outside_the_mask_are_not_read(impl):
    logits, labels, mask = _inputs((6, 40), torch.float32)
    mask = torch.tensor([True, False, True, False, False, True])
    poisoned = logits.clone()
    poisoned[~mask] = float("nan")  # would make any computed row NaN (and raise with check_finite=True)
    x = poisoned.requires_grad_(True)
    logp, ent = aent.logprobs_and_clamped_entropy(x, labels, 0.33, row_mask=mask, impl=impl)
    (logp.sum() + ent.sum()).backward()
    assert torch.all(logp[~mask] == 0) and torch.all(ent[~mask] == 0)
    assert torch.all(x.grad[~mask] == 0)
    assert torch.isfinite(x.grad).all()
    clean_logp, clean_ent = aent.logprobs_and_clamped_entropy(logits, labels, 0.33, row_mask=mask, impl=impl)
    torch.testing.assert_close(logp.detach(), clean_logp)
    torch.testing.assert_close(ent.detach(), clean_ent)


def test_full_mask_equals_no_mask_and_empty_mask_gives_zeros():
    logits, labels, _ = _inputs((5, 30), torch.float32)
    a = aent.logprobs_and_clamped_entropy(logits, labels, 0.25)
    b = aent.logprobs_and_clamped_entropy(logits, labels, 0.25, row_mask=torch.ones(5, dtype=torch.bool))
    torch.testing.assert_close(a, b)
    x = logits.clone().requires_grad_(True)
    logp, ent = aent.logprobs_and_clamped_entropy(x, labels, 0.25, row_mask=torch.zeros(5, dtype=torch.bool))
    (logp.sum() + ent.sum()).backward()
    assert torch.all(logp == 0) and torch.all(ent == 0) and torch.all(x.grad == 0)


class _CountNewLogitsSizedBuffers(TorchDispatchMode):
    """Counts op outputs of at least ``numel`` elements in NEW storage (not a view, not written in place)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs or {}))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.numel and t.untyped_storage().data_ptr() not in inputs:
                self.count += 1
        return out


@pytest.mark.parametrize("masked", [False, True])
def test_backward_allocates_one_logits_sized_buffer(masked):
    rows, vocab = 32, 64
    logits, labels, mask = _inputs((rows, vocab), torch.float32)
    x = logits.clone().requires_grad_(True)
    logp, ent = aent.logprobs_and_clamped_entropy(
        x, labels, 0.33, row_mask=mask if masked else None, impl="torch", chunk_size=4
    )
    loss = (logp * 0.3 - ent * 0.7).sum()
    counter = _CountNewLogitsSizedBuffers(rows * vocab)
    with counter:
        loss.backward()
    # the gradient itself; two separate ops (log-prob + entropy) would allocate two and a third for their sum
    assert counter.count == 1


def test_bad_labels_are_refused_with_a_clear_error():
    logits = torch.randn(3, 10)
    with pytest.raises(ValueError, match="labels must lie in"):
        aent.logprobs_and_clamped_entropy(logits, torch.tensor([0, 10, 1]), 0.3)
    with pytest.raises(ValueError, match="labels shape"):
        aent.logprobs_and_clamped_entropy(logits, torch.tensor([0, 1]), 0.3)
    with pytest.raises(ValueError, match="integer tensor"):
        aent.logprobs_and_clamped_entropy(logits, torch.zeros(3), 0.3)
    with pytest.raises(ValueError, match="row_mask"):
        aent.logprobs_and_clamped_entropy(
            logits, torch.tensor([0, 1, 2]), 0.3, row_mask=torch.ones(4, dtype=torch.bool)
        )
    # a label outside the vocabulary on a row that is not computed is no error
    out = aent.logprobs_and_clamped_entropy(
        logits, torch.tensor([0, 99, 1]), 0.3, row_mask=torch.tensor([True, False, True])
    )
    assert out[0][1] == 0


def test_nonfinite_logits_raise_or_come_back_as_nan():
    logits = torch.randn(3, 10)
    logits[1, 4] = float("nan")
    labels = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="NaN or \\+inf in 1 of 3"):
        aent.logprobs_and_clamped_entropy(logits, labels, 0.3)
    _, ent = aent.logprobs_and_clamped_entropy(logits, labels, 0.3, check_finite=False)
    assert torch.isnan(ent[1]) and torch.isfinite(ent[[0, 2]]).all()
