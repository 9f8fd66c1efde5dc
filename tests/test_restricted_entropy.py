"""Every kept-set rule, every implementation: against the explicit definitions (tests/rules.py) and the float64
reference, on values and gradients, over fp32/bf16, odd shapes, ties at the boundary, -inf columns, rows with no
finite logit and row_mask. The rules and implementations come from tests/rules.py; a new one joins there."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from rules import KEPT, KEPT_IDS, explicit_entropy, explicit_kept, impls_for

import aent
import aent.ops
from aent.entropy import _resolve_impl

GRAD_TOL = {torch.float32: (2e-6, 1e-4), torch.bfloat16: (1e-4, 2e-2)}  # (atol, rtol) in the input dtype
DTYPES = [torch.float32, torch.bfloat16]
DTYPE_IDS = ["fp32", "bf16"]


def _logits(shape, dtype, seed=0):
    """Random logits with the hard cases in the first rows: -inf columns, integer values (ties everywhere), a row
    with no finite logit, a constant row."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 3
    flat = x.view(-1, shape[-1])
    vocab, rows = shape[-1], flat.shape[0]
    if vocab > 4 and rows > 0:
        flat[0, : vocab // 3] = float("-inf")
    if rows > 1:
        flat[1] = torch.round(flat[1])
    if rows > 2:
        flat[2] = float("-inf")
    if rows > 3:
        flat[3] = 1.5
    return x.to(dtype)


def _run(x, kept, impl, grad_out, row_mask=None):
    leaf = x.detach().clone().requires_grad_(True)
    if impl == "triton":  # the fused kernels run in Triton's interpreter on CPU tensors (tests/conftest.py)
        pytest.importorskip("triton")
    ent = aent.restricted_entropy(leaf, kept, impl=impl, row_mask=row_mask, check_finite=True)
    ent.backward(grad_out.to(ent.dtype))
    return ent.detach(), leaf.grad


def _check(x, kept, impl, row_mask=None, seed=1):
    lead = x.shape[:-1]
    grad_out = torch.randn(lead, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ent, grad = _run(x, kept, impl, grad_out, row_mask)
    ref, ref_grad = _run(x.double(), kept, "reference", grad_out, row_mask)
    assert ent.dtype == torch.float32 and ent.shape == lead
    assert grad.dtype == x.dtype and grad.shape == x.shape
    torch.testing.assert_close(ent.double(), ref, atol=2e-5, rtol=1e-5)
    atol, rtol = GRAD_TOL[x.dtype]
    torch.testing.assert_close(grad.double(), ref_grad, atol=atol, rtol=rtol)
    # no gradient outside the explicit kept set, exactly (the tie rule and -inf handling show here)
    rows = x.double().reshape(-1, x.shape[-1])
    flat_grad = grad.reshape(-1, x.shape[-1])
    flat_mask = None if row_mask is None else row_mask.reshape(-1)
    for r in range(rows.shape[0]):
        flags = torch.tensor(explicit_kept(rows[r].tolist(), kept))
        assert not flat_grad[r][~flags].any()
        if flat_mask is not None and not flat_mask[r]:
            assert ent.reshape(-1)[r] == 0 and not flat_grad[r].any()


@pytest.mark.parametrize("kept", KEPT, ids=KEPT_IDS)
def test_reference_follows_the_explicit_definition(kept):
    """The float64 reference against the rules' text, row by row, including ties at the boundary."""
    x = _logits((6, 41), torch.float64, seed=3)
    x[4] = torch.randint(-2, 3, (41,), generator=torch.Generator().manual_seed(4)).double()  # heavy ties
    x[5, :40] = float("-inf")  # one finite logit
    ent = aent.restricted_entropy(x, kept, impl="reference")
    for r in range(x.shape[0]):
        assert ent[r].item() == pytest.approx(explicit_entropy(x[r].tolist(), kept), abs=1e-12)


@pytest.mark.parametrize("kept", KEPT, ids=KEPT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(3, 7, 1001), (1, 5), (4, 2), (2, 1, 1), (5, 37)])
def test_torch_path_matches_reference(kept, dtype, shape):
    _check(_logits(shape, dtype), kept, "torch")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf - inf
@pytest.mark.parametrize("kept", KEPT, ids=KEPT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_implementation_with_row_mask(kept, dtype):
    """One tensor with every hard case and a row mask, through each implementation of the rule (the fused kernels in
    the interpreter too, where the rule has one)."""
    x = _logits((9, 37), dtype, seed=5)
    mask = torch.tensor([True, True, True, True, False, True, False, True, True])
    x[4] = float("nan")  # never read: outside the mask
    for impl in impls_for(kept):
        _check(x, kept, impl, row_mask=mask)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf - inf
@pytest.mark.parametrize("kept", KEPT, ids=KEPT_IDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "plus_inf"])
def test_nonfinite_rows_raise_or_come_back_nan(kept, bad):
    """A NaN or +inf logit: the clear error by default; with check_finite=False that row is NaN with zero gradient
    and the other rows are untouched, in every implementation of every rule."""
    x = _logits((5, 41), torch.float32, seed=7)
    x[4, 3] = bad
    for impl in impls_for(kept) + ["reference"]:
        with pytest.raises(ValueError, match=r"NaN or \+inf in 1 of 5 rows"):
            aent.restricted_entropy(x, kept, impl=impl)
        leaf = x.detach().clone().requires_grad_(True)
        ent = aent.restricted_entropy(leaf, kept, impl=impl, check_finite=False)
        assert torch.isnan(ent[4]) and torch.isfinite(ent[:4]).all(), impl
        ent.nansum().backward()
        assert not leaf.grad[4].any() and torch.isfinite(leaf.grad).all(), impl
        torch.testing.assert_close(
            ent[:4], aent.restricted_entropy(x[:4], kept, impl="reference"), atol=2e-5, rtol=1e-5
        )


@pytest.mark.parametrize("kept", KEPT, ids=KEPT_IDS)
def test_ties_at_the_boundary_are_kept_together(kept):
    # integer-valued logits: every boundary is a tie class, kept or removed as a whole
    x = torch.randint(-3, 4, (8, 301), generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
    _check(x, kept, "torch")
    ent = aent.restricted_entropy(x, kept, impl="torch")
    for r in range(x.shape[0]):
        assert ent[r].item() == pytest.approx(explicit_entropy(x[r].float().tolist(), kept), abs=2e-5)


@pytest.mark.parametrize("kept", KEPT, ids=KEPT_IDS)
def test_chunking_does_not_change_results(kept):
    x = _logits((13, 97), torch.float32, seed=9)
    whole = aent.restricted_entropy(x, kept, impl="torch", chunk_size=13)
    for size in (1, 4):
        torch.testing.assert_close(aent.restricted_entropy(x, kept, impl="torch", chunk_size=size), whole)


@pytest.mark.parametrize("kept", KEPT, ids=KEPT_IDS)
def test_logprobs_and_entropy_of_every_rule(kept):
    """logprobs_and_clamped_entropy takes every rule: both outputs and the one gradient against float64."""
    x = _logits((6, 33), torch.float32, seed=11)
    labels = torch.tensor([20, 3, 0, 7, 1, 30])
    labels[0] = 25  # on a finite logit of the row with -inf columns
    mask = torch.tensor([True, True, False, True, True, True])
    g_logp, g_ent = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    a = x.clone().requires_grad_(True)
    logp, ent = aent.logprobs_and_clamped_entropy(a, labels, kept, row_mask=mask, impl="torch")
    (logp * g_logp.float() + ent * g_ent.float()).sum().backward()
    b = x.double().requires_grad_(True)
    read = torch.where(mask[:, None], b, torch.zeros_like(b))  # unselected rows are not read (nor differentiated)
    ref_logp = torch.where(mask, torch.log_softmax(read, -1).gather(1, labels[:, None]).squeeze(1), 0.0)
    ref_ent = aent.restricted_entropy(b, kept, impl="reference", row_mask=mask)
    (ref_logp * g_logp + ref_ent * g_ent).sum().backward()
    torch.testing.assert_close(logp.double(), ref_logp.detach(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent.detach(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(a.grad.double(), b.grad, atol=2e-6, rtol=1e-4)


def test_named_entry_points_are_the_rules():
    x = _logits((4, 3, 50), torch.float32, seed=13)
    kept = aent.KeptSet
    torch.testing.assert_close(aent.clamped_entropy(x, 0.33), aent.restricted_entropy(x, kept.bottom_p(0.33)))
    torch.testing.assert_close(aent.restricted_entropy(x, 0.33), aent.restricted_entropy(x, kept.bottom_p(0.33)))
    torch.testing.assert_close(aent.topk_entropy(x, 2), aent.restricted_entropy(x, kept.top_k(2)))
    torch.testing.assert_close(aent.nucleus_entropy(x, 0.9), aent.restricted_entropy(x, kept.top_p(0.9)))
    # the full entropy three ways
    full = aent.entropy(x)
    torch.testing.assert_close(aent.topk_entropy(x, 50), full)
    torch.testing.assert_close(aent.nucleus_entropy(x, 1.0), full)
    # top-1 of a row without ties keeps one token: entropy 0
    assert torch.all(aent.topk_entropy(torch.randn(5, 50, generator=torch.Generator().manual_seed(0)), 1) == 0)


def test_hand_computed_nucleus():
    # q = (e^2, e, e, 1) / s; top_p = 0.5: e^2/s = 0.5344 >= 0.5, one token kept
    z = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    assert aent.nucleus_entropy(z, 0.5).item() == 0.0
    # top_p = 0.6: the crossing token has probability e/s, tied with the other 1.0: both kept, {2, 1, 1}
    w = torch.tensor([math.e**2, math.e, math.e])
    q = w / w.sum()
    assert aent.nucleus_entropy(z, 0.6).item() == pytest.approx(float(-(q * q.log()).sum()), abs=1e-6)
    # top_k = 2 ends in the same tie: three tokens kept
    assert aent.topk_entropy(z, 2).item() == pytest.approx(float(-(q * q.log()).sum()), abs=1e-6)


@pytest.mark.parametrize(
    "buckets, span", [(1024, 32.0), (3, 0.5), (1, 1.0)], ids=["defaults", "coarse-histogram", "one-bucket"]
)
@pytest.mark.parametrize("top_p", [0.3, 0.99])
def test_nucleus_threshold_search_is_exact_on_every_path(monkeypatch, buckets, span, top_p):
    """The crossing is found in the mass histogram and its bucket, whatever the histogram's resolution."""
    entropy_module = importlib.import_module("aent.entropy")
    monkeypatch.setattr(entropy_module, "_NUCLEUS_BUCKETS", buckets)
    monkeypatch.setattr(entropy_module, "_NUCLEUS_RANGE", span)
    x = _logits((7, 2001), torch.float32, seed=17)
    x[4] *= 0.03  # a flat row: a nucleus of about top_p * V tokens
    x[5] = torch.round(x[5])  # ties everywhere
    _check(x, aent.KeptSet.top_p(top_p), "torch")


def test_nucleus_rows_whose_crossing_rounding_hides_are_sorted_whole(monkeypatch):
    """The fallback of the threshold search: a crossing the bucket's own sums miss is found in the sorted row."""
    entropy_module = importlib.import_module("aent.entropy")
    scatter = torch.Tensor.scatter_reduce_

    def missed(self, *args, **kwargs):  # every bucket search comes back empty
        out = scatter(self, *args, **kwargs)
        return out.fill_(self.numel() + 10**9)

    x = _logits((5, 301), torch.float32, seed=19)
    direct = entropy_module._nucleus_threshold(x, 0.9)
    monkeypatch.setattr(torch.Tensor, "scatter_reduce_", missed)
    fallback = entropy_module._nucleus_threshold(x, 0.9)
    assert torch.isfinite(fallback[[0, 1, 3, 4]]).all() and fallback[2] == float("-inf")  # row 2: no finite logit
    torch.testing.assert_close(fallback, direct, atol=0, rtol=0)
    _check(x, aent.KeptSet.top_p(0.9), "torch")  # the whole op on the fallback path


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: aent.topk_entropy(x, 0), r"k must be an integer >= 1.*got 0"),
        (lambda x: aent.topk_entropy(x, 2.0), r"k must be an integer >= 1.*got 2.0"),
        (lambda x: aent.topk_entropy(x, True), r"k must be an integer"),
        (lambda x: aent.nucleus_entropy(x, 0.0), r"top_p must be a number in \(0, 1\].*got 0.0"),
        (lambda x: aent.nucleus_entropy(x, 1.01), r"top_p must be a number in \(0, 1\]"),
        (lambda x: aent.nucleus_entropy(x, float("nan")), r"top_p must be a number in \(0, 1\]"),
        (lambda x: aent.restricted_entropy(x, "top_k"), r"kept must be a KeptSet"),
        (lambda x: aent.restricted_entropy(x, 1.0), r"clamp_p must be a number in \[0, 1\)"),
        (lambda x: aent.restricted_entropy(x, aent.KeptSet.top_k(2), impl="fast"), r"impl must be one of"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 5))


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match=r"kept-set rule must be one of .*'bogus'"):
        aent.KeptSet("bogus", 1)


def test_rules_without_a_fused_kernel(monkeypatch):
    """impl='triton' refuses a rule outside aent.ops.FUSED_RULES; 'auto' takes the torch path for it on CUDA."""
    monkeypatch.setattr(aent.ops, "FUSED_RULES", ("bottom_p",))
    monkeypatch.setattr(aent.ops, "triton_available", lambda: True)
    with pytest.raises(ValueError, match=r"impl='triton' has no fused kernel for the 'top_k' kept set.*impl='torch'"):
        aent.topk_entropy(torch.zeros(2, 5), 2, impl="triton")
    cuda = torch.device("cuda")
    assert _resolve_impl("auto", cuda, torch.float32, "top_k") == "torch"
    assert _resolve_impl("auto", cuda, torch.float32, "bottom_p") == "triton"
    assert _resolve_impl("auto", cuda, torch.float64, "bottom_p") == "torch"
