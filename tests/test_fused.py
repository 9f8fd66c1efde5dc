"""aent.linear_logprobs_and_clamped_entropy: the op on hidden states and the output weight, against the same op on
explicit logits (aent.logprobs_and_clamped_entropy) and the float64 reference."""

from __future__ import annotations

import pytest
import torch
from rules import IMPLS, KEPT, KEPT_IDS
from torch.utils._python_dispatch import TorchDispatchMode

import aent

CPU_IMPLS = IMPLS + ["reference"]  # the CUDA path (fused kernels) is the GPU test at the end


def test_every_kept_rule_is_tested():
    assert {kept.rule for kept in KEPT} == set(aent.KEPT_RULES)


def _inputs(lead, hidden_size, vocab, dtype, seed=0, ties=True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, hidden_size, generator=gen).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen) * 0.7).to(dtype)
    if ties and vocab > 6:
        weight[3] = weight[5]  # equal logits in every row: ties wherever the boundary falls on them
        weight[4] = weight[5]
    labels = torch.randint(0, vocab, lead, generator=gen)
    mask = torch.rand(lead, generator=gen) < 0.7
    mask.view(-1)[0] = True
    return hidden, weight, labels, mask


def _explicit(hidden, weight, labels, kept, temperature, mask, impl):
    """The same quantities through the logits, built whole, and autograd."""
    logits = torch.matmul(hidden, weight.t()) / temperature
    return aent.logprobs_and_clamped_entropy(logits, labels, kept, row_mask=mask, impl=impl)


def _grads(fn, hidden, weight, g_lp, g_ent):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    logp, ent = fn(h, w)
    (logp * g_lp + ent * g_ent).sum().backward()
    return logp.detach(), ent.detach(), h.grad, w.grad


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead,hidden_size,vocab", [((7,), 5, 13), ((2, 5), 9, 33), ((3,), 1, 1), ((11,), 3, 257)])
@pytest.mark.parametrize("kept", KEPT, ids=KEPT_IDS)
def test_equals_the_op_on_explicit_logits(impl, dtype, lead, hidden_size, vocab, kept):
    temperature = 0.7
    hidden, weight, labels, mask = _inputs(lead, hidden_size, vocab, dtype)
    gen = torch.Generator().manual_seed(1)
    g_lp, g_ent = torch.randn(lead, generator=gen), torch.randn(lead, generator=gen)

    def fused(h, w):
        return aent.linear_logprobs_and_clamped_entropy(
            h, w, labels, kept, temperature=temperature, row_mask=mask, impl=impl, chunk_size=2
        )

    def explicit(h, w):
        return _explicit(h, w, labels, kept, temperature, mask, impl)

    lp, ent, gh, gw = _grads(fused, hidden, weight, g_lp, g_ent)
    lp_ref, ent_ref, gh_ref, gw_ref = _grads(explicit, hidden, weight, g_lp, g_ent)
    assert lp.dtype == ent.dtype == torch.float32
    assert gh.dtype == gw.dtype == dtype
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-5, atol=1e-5)
    # float32: the chunked matmuls sum in another order; bfloat16: the weight gradient is rounded once per chunk
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(gh.float(), gh_ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(gw.float(), gw_ref.float(), rtol=tol, atol=tol * max(1.0, float(gw_ref.abs().max())))
    assert torch.all(gh[~mask] == 0) and torch.all(lp[~mask] == 0) and torch.all(ent[~mask] == 0)


@pytest.mark.parametrize("kept", KEPT, ids=KEPT_IDS)
def test_float64_matches_the_reference_entropy(kept):
    hidden, weight, labels, mask = _inputs((9,), 6, 41, torch.float64)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    lp, ent = aent.linear_logprobs_and_clamped_entropy(h, w, labels, kept, temperature=0.6, row_mask=mask, chunk_size=4)
    (lp.sum() + 2 * ent.sum()).backward()
    hr = hidden.clone().requires_grad_(True)
    wr = weight.clone().requires_grad_(True)
    z = hr @ wr.t() / 0.6
    zero = torch.zeros((), dtype=torch.float64)
    lp_ref = torch.where(mask, torch.log_softmax(z, -1).gather(1, labels.unsqueeze(1)).squeeze(1), zero)
    ent_ref = torch.where(mask, aent.restricted_entropy(z, kept, impl="reference"), zero)
    (lp_ref.sum() + 2 * ent_ref.sum()).backward()
    assert lp.dtype == torch.float64
    torch.testing.assert_close(lp, lp_ref.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ent, ent_ref.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h.grad, hr.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-9, atol=1e-10)


def test_a_number_is_the_papers_clamp_and_chunking_and_temperature_one_change_nothing():
    hidden, weight, labels, mask = _inputs((10,), 4, 50, torch.float32)
    a = aent.linear_logprobs_and_clamped_entropy(hidden, weight, labels, 0.25, row_mask=mask, chunk_size=3)
    b = aent.linear_logprobs_and_clamped_entropy(hidden, weight, labels, aent.KeptSet.bottom_p(0.25), row_mask=mask)
    c = aent.linear_logprobs_and_clamped_entropy(hidden, weight, labels, 0.25, row_mask=mask, temperature=1.0)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_rows_outside_the_mask_are_not_read():
    hidden, weight, labels, _ = _inputs((6,), 4, 40, torch.float32)
    mask = torch.tensor([True, False, True, False, False, True])
    poisoned = hidden.clone()
    poisoned[~mask] = float("nan")
    labels = labels.clone()
    labels[1] = 10_000  # out of the vocabulary on a row that is not computed: no error
    h = poisoned.requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    lp, ent = aent.linear_logprobs_and_clamped_entropy(h, w, labels, 0.33, row_mask=mask)
    (lp.sum() + ent.sum()).backward()
    assert torch.all(lp[~mask] == 0) and torch.all(ent[~mask] == 0)
    assert torch.all(h.grad[~mask] == 0) and torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all()


def test_empty_mask_gives_zeros_and_zero_gradients():
    hidden, weight, labels, _ = _inputs((5,), 4, 30, torch.float32)
    hidden[1] = float("nan")  # not read
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    lp, ent = aent.linear_logprobs_and_clamped_entropy(h, w, labels, 0.3, row_mask=torch.zeros(5, dtype=torch.bool))
    (lp.sum() + ent.sum()).backward()
    assert torch.all(lp == 0) and torch.all(ent == 0) and torch.all(h.grad == 0) and torch.all(w.grad == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_only_one_output_used_still_gives_its_gradient(dtype):
    hidden, weight, labels, mask = _inputs((8,), 5, 21, dtype)
    for pick in (0, 1):
        h = hidden.clone().requires_grad_(True)
        out = aent.linear_logprobs_and_clamped_entropy(h, weight, labels, 0.3, row_mask=mask)
        out[pick].sum().backward()
        hr = hidden.clone().requires_grad_(True)
        ref = _explicit(hr, weight, labels, aent.KeptSet.bottom_p(0.3), 1.0, mask, "torch")
        ref[pick].sum().backward()
        torch.testing.assert_close(h.grad, hr.grad, rtol=1e-5, atol=1e-6)


class _LargestNewBuffer(TorchDispatchMode):
    """The largest op output (elements) in new storage, i.e. not a view of an input and not written in place."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs or {}))
            if isinstance(t, torch.Tensor)
        }
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_larger_than_a_chunk_of_logits_is_allocated():
    rows, hidden_size, vocab, chunk = 96, 4, 300, 8
    hidden, weight, labels, _ = _inputs((rows,), hidden_size, vocab, torch.float32)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    probe = _LargestNewBuffer()
    with probe:
        lp, ent = aent.linear_logprobs_and_clamped_entropy(h, w, labels, 0.33, chunk_size=chunk, impl="torch")
        (lp.sum() - 0.5 * ent.sum()).backward()
    # whatever the number of rows, nothing bigger than one chunk's logits (the explicit path needs rows x V)
    assert probe.largest <= chunk * vocab < rows * vocab


def test_nonfinite_hidden_states_raise_or_come_back_as_nan():
    hidden, weight, labels, _ = _inputs((4,), 3, 20, torch.float32)
    hidden[2, 1] = float("nan")
    hidden[3, 0] = float("inf")
    with pytest.raises(ValueError, match="2 of 4 computed rows hold NaN or \\+inf"):
        aent.linear_logprobs_and_clamped_entropy(hidden, weight, labels, 0.3)
    lp, ent = aent.linear_logprobs_and_clamped_entropy(hidden, weight, labels, 0.3, check_finite=False)
    assert torch.isnan(ent[2]) and torch.isnan(ent[3]) and torch.isfinite(ent[:2]).all()


def test_bad_arguments_are_refused_with_a_clear_error():
    hidden, weight, labels, _ = _inputs((3,), 4, 10, torch.float32)
    with pytest.raises(ValueError, match="labels must lie in"):
        aent.linear_logprobs_and_clamped_entropy(hidden, weight, torch.tensor([0, 10, 1]), 0.3)
    with pytest.raises(ValueError, match="weight must be \\(V, H\\)"):
        aent.linear_logprobs_and_clamped_entropy(hidden, weight.t(), labels, 0.3)
    with pytest.raises(ValueError, match="share dtype"):
        aent.linear_logprobs_and_clamped_entropy(hidden, weight.double(), labels, 0.3)
    with pytest.raises(ValueError, match="temperature"):
        aent.linear_logprobs_and_clamped_entropy(hidden, weight, labels, 0.3, temperature=0.0)
    with pytest.raises(ValueError, match="row_mask"):
        aent.linear_logprobs_and_clamped_entropy(hidden, weight, labels, 0.3, row_mask=torch.ones(3))
    with pytest.raises(ValueError, match="kept must be a KeptSet"):
        aent.linear_logprobs_and_clamped_entropy(hidden, weight, labels, "0.3")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_path_at_the_real_vocabulary_equals_the_op_on_explicit_logits(dtype):
    """On CUDA each chunk's entropy is the fused Triton kernel (impl="auto"): the same comparison at V = 151,936."""
    hidden, weight, labels, mask = _inputs((515,), 64, 151_936, dtype)
    hidden, weight, labels, mask = hidden.cuda(), weight.cuda(), labels.cuda(), mask.cuda()
    gen = torch.Generator().manual_seed(1)
    g_lp, g_ent = torch.randn(515, generator=gen).cuda(), torch.randn(515, generator=gen).cuda()
    kept = aent.KeptSet.bottom_p(0.33)

    def fused(h, w):
        return aent.linear_logprobs_and_clamped_entropy(
            h, w, labels, kept, temperature=0.7, row_mask=mask, chunk_size=128
        )

    def explicit(h, w):
        return _explicit(h, w, labels, kept, 0.7, mask, None)

    lp, ent, gh, gw = _grads(fused, hidden, weight, g_lp, g_ent)
    lp_ref, ent_ref, gh_ref, gw_ref = _grads(explicit, hidden, weight, g_lp, g_ent)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ent, ent_ref, rtol=1e-4, atol=1e-4)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(gh.float(), gh_ref.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(gw.float(), gw_ref.float(), rtol=tol, atol=tol * max(1.0, float(gw_ref.abs().max())))
