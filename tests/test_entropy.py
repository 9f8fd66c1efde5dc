"""Clamped entropy: the chunked torch path against the float64 reference, plus hand-checked cases and bad input."""

import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import aent
from aent.entropy import num_removed

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# value tolerance (float32 compute in both paths) and gradient tolerance (gradient returned in the input dtype)
GRAD_TOL = {torch.float32: (2e-6, 1e-4), torch.bfloat16: (1e-4, 2e-2), torch.float16: (1e-5, 2e-3)}


def _explicit(row, p):
    """A second, independent formulation for tiny rows: enumerate the kept set by the tie rule, then softmax."""
    values = sorted(row)
    k = math.floor(p * len(row))
    t = values[k]
    kept = [z for z in row if z >= t and z != float("-inf")]
    if not kept:
        return 0.0
    m = max(kept)
    w = [math.exp(z - m) for z in kept]
    s = sum(w)
    return -sum((x / s) * math.log(x / s) for x in w if x > 0)


def _logits(shape, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def _compare(x, p, chunk_size=None, impl="torch"):
    a = x.detach().clone().requires_grad_(True)
    b = x.detach().clone().requires_grad_(True)
    ea = aent.clamped_entropy(a, p, impl=impl, chunk_size=chunk_size)
    eb = aent.clamped_entropy(b, p, impl="reference")
    g = torch.randn(ea.shape, generator=torch.Generator().manual_seed(1), dtype=ea.dtype)
    (ea * g).sum().backward()
    (eb * g).sum().backward()
    return ea, eb, a.grad, b.grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.25, 0.33, 0.9])
@pytest.mark.parametrize("shape", [(3, 7, 1001), (1, 5), (4, 2), (2, 1, 1)])
def test_torch_path_matches_reference(shape, p, dtype):
    x = _logits(shape, dtype)
    if shape[-1] > 8:
        x.view(-1, shape[-1])[0, : shape[-1] // 3] = float("-inf")  # masked vocabulary in one row
    ea, eb, ga, gb = _compare(x, p, chunk_size=2)
    assert ea.dtype == torch.float32 and ea.shape == x.shape[:-1]
    assert ga.dtype == dtype
    torch.testing.assert_close(ea, eb, atol=2e-5, rtol=1e-5)
    atol, rtol = GRAD_TOL[dtype]
    torch.testing.assert_close(ga.float(), gb.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.33, 0.9])
def test_heavy_ties_match_reference_and_follow_the_tie_rule(p):
    # integer-valued bf16 logits: every value appears many times, including at the threshold
    x = torch.randint(-3, 4, (6, 301), generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    x[0] = 1.0  # a constant row: everything ties, nothing may be removed
    ea, eb, ga, gb = _compare(x, p)
    torch.testing.assert_close(ea, eb, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ga.float(), gb.float(), atol=1e-4, rtol=2e-2)
    assert ea[0].item() == pytest.approx(math.log(301), abs=1e-5)
    for r in range(1, 6):
        row = x[r].float().tolist()
        assert ea[r].item() == pytest.approx(_explicit(row, p), abs=2e-5)
        # gradient is non-zero exactly on kept tokens: a whole tie class is either kept or removed
        t = sorted(row)[num_removed(len(row), p)]
        kept = x[r].float() >= t
        assert kept.sum() >= len(row) - num_removed(len(row), p)
        assert torch.all(ga[r][~kept] == 0)


def test_hand_computed_cases():
    # p=0.25 of 4 removes one token: the lowest (0) goes, {1, 1, 2} remain
    z = torch.tensor([[0.0, 1.0, 1.0, 2.0]])
    w = torch.tensor([1.0, 1.0, math.e])
    q = w / w.sum()
    expected = float(-(q * q.log()).sum())
    assert aent.clamped_entropy(z, 0.25).item() == pytest.approx(expected, abs=1e-6)
    # p=0.5 of 4: the 3rd smallest is 0, which ties with the two removed candidates: all kept
    z = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    assert aent.clamped_entropy(z, 0.5).item() == pytest.approx(aent.entropy(z).item(), abs=1e-7)
    # uniform logits: log of the kept count
    z = torch.zeros(2, 1000)
    assert aent.clamped_entropy(z, 0.33).tolist() == pytest.approx([math.log(1000)] * 2, abs=1e-5)
    z = torch.arange(1000.0).unsqueeze(0) * 0 + torch.cat([torch.full((500,), -50.0), torch.zeros(500)])
    assert aent.clamped_entropy(z, 0.5).item() == pytest.approx(math.log(500), abs=1e-5)


def test_p_zero_is_the_ordinary_entropy():
    x = _logits((5, 17, 333), torch.float32, seed=5)
    ref = -(x.softmax(-1) * x.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(aent.entropy(x), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aent.clamped_entropy(x, 0.0), aent.entropy(x), atol=0, rtol=0)


def test_minus_inf_columns_and_all_minus_inf_rows():
    x = _logits((4, 50), torch.float32, seed=7)
    x[0, :45] = float("-inf")  # kept set reaches into -inf at p=0.33: only the finite tail counts
    x[1, :] = float("-inf")  # no distribution at all
    x[2, ::2] = float("-inf")
    x.requires_grad_(True)
    ent = aent.clamped_entropy(x, 0.33)
    assert torch.isfinite(ent).all()
    assert ent[1].item() == 0.0
    assert ent[0].item() == pytest.approx(_explicit(x[0].tolist(), 0.33), abs=1e-5)
    ent.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[1] == 0)
    assert torch.all(x.grad[0, :45] == 0)
    ea, eb, ga, gb = _compare(x.detach(), 0.33)
    torch.testing.assert_close(ea, eb, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ga, gb, atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_magnitudes(dtype):
    x = _logits((3, 211), torch.float32, seed=11, scale=1e4).to(dtype)
    x[1, 5] = 3e4
    ea, eb, ga, gb = _compare(x, 0.33)
    assert torch.isfinite(ea).all() and torch.isfinite(ga.float()).all()
    torch.testing.assert_close(ea, eb, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ga.float(), gb.float(), atol=1e-4, rtol=2e-2)


def test_chunking_does_not_change_results():
    x = _logits((37, 513), torch.float32, seed=13)
    outs = []
    for chunk in (1, 4, 37, None):
        a = x.clone().requires_grad_(True)
        e = aent.clamped_entropy(a, 0.3, chunk_size=chunk)
        e.sum().backward()
        outs.append((e.detach(), a.grad))
    for e, g in outs[1:]:
        torch.testing.assert_close(e, outs[0][0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(g, outs[0][1], atol=1e-7, rtol=1e-6)


def test_gradcheck_float64():
    # distinct values so that no tie sits at the threshold (the kept set is piecewise constant)
    x = torch.randperm(3 * 40, generator=torch.Generator().manual_seed(0)).double().reshape(3, 40) / 7
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: aent.clamped_entropy(t, 0.3, chunk_size=2), (x,))
    assert torch.autograd.gradcheck(lambda t: aent.clamped_entropy(t, 0.0), (x,))
    assert aent.clamped_entropy(x, 0.3).dtype == torch.float64


def test_non_contiguous_and_empty_inputs():
    base = _logits((64, 9), torch.float32, seed=17)
    x = base.t()  # (9, 64), non-contiguous
    torch.testing.assert_close(aent.clamped_entropy(x, 0.25), aent.clamped_entropy(x.contiguous(), 0.25))
    y = x.clone().requires_grad_(True)
    aent.clamped_entropy(y.t().t(), 0.25).sum().backward()
    assert y.grad.shape == y.shape
    empty = torch.zeros(0, 10, requires_grad=True)
    out = aent.clamped_entropy(empty, 0.3)
    assert out.shape == (0,)
    out.sum().backward()
    assert empty.grad.shape == (0, 10)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 4),
    vocab=st.integers(1, 60),
    p=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
    quantise=st.booleans(),
)
def test_property_torch_equals_reference(rows, vocab, p, seed, quantise):
    x = _logits((rows, vocab), torch.float32, seed=seed)
    if quantise:
        x = x.round()
    ea, eb, ga, gb = _compare(x, p)
    torch.testing.assert_close(ea, eb, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ga, gb, atol=2e-6, rtol=1e-4)
    assert torch.all(ea >= -1e-6)
    # ties can keep more than V - k tokens; without ties exactly V - k are kept
    kept_max = vocab if quantise else vocab - num_removed(vocab, p)
    assert torch.all(ea <= math.log(kept_max) + 1e-5)


def test_num_removed_is_floor_of_product():
    assert num_removed(151936, 0.33) == 50138
    assert num_removed(151936, 0.25) == 37984
    assert num_removed(10, 0.0) == 0
    assert num_removed(3, 0.99) == 2


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), True, "0.3", None])
def test_clamp_p_out_of_range(p):
    with pytest.raises(ValueError, match="clamp_p"):
        aent.clamped_entropy(torch.zeros(2, 5), p)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_nan_and_plus_inf_logits_raise(bad, impl):
    x = torch.zeros(3, 8)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or \\+inf in 1 of 3 rows"):
        aent.clamped_entropy(x, 0.25, impl=impl)


def test_unchecked_nonfinite_rows_come_back_nan_with_zero_gradient():
    x = torch.randn(3, 8)
    x[1, 2] = float("nan")
    x.requires_grad_(True)
    ent = aent.clamped_entropy(x, 0.25, check_finite=False)
    assert torch.isnan(ent[1]) and torch.isfinite(ent[[0, 2]]).all()
    ent.nansum().backward()
    assert torch.all(x.grad[1] == 0) and torch.isfinite(x.grad).all()


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="empty vocabulary"):
        aent.clamped_entropy(torch.zeros(3, 0), 0.1)
    with pytest.raises(ValueError, match="floating-point"):
        aent.clamped_entropy(torch.zeros(3, 4, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="at least one dimension"):
        aent.clamped_entropy(torch.tensor(1.0), 0.1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        aent.clamped_entropy([[1.0, 2.0]], 0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        aent.clamped_entropy(torch.zeros(3, 4), 0.1, chunk_size=0)
    with pytest.raises(ValueError, match="impl must be one of"):
        aent.clamped_entropy(torch.zeros(3, 4), 0.1, impl="fast")


@pytest.fixture
def calls(monkeypatch):
    """Count the rows each implementation really computes: the reference's row function and the torch path's
    per-chunk forward and backward are wrapped (the wrappers call the originals)."""
    entropy_module = importlib.import_module("aent.entropy")  # the attribute aent.entropy is the function

    counts = {"reference_calls": 0, "torch_forward_rows": 0, "torch_backward_rows": 0}
    reference, forward, backward = (
        entropy_module._reference_rows,
        entropy_module._chunk_forward,
        entropy_module._chunk_backward,
    )

    def counted_reference(*args, **kwargs):
        counts["reference_calls"] += 1
        return reference(*args, **kwargs)

    def counted_forward(z, *args, **kwargs):
        counts["torch_forward_rows"] += z.shape[0]
        return forward(z, *args, **kwargs)

    def counted_backward(z, *args, **kwargs):
        counts["torch_backward_rows"] += z.shape[0]
        return backward(z, *args, **kwargs)

    monkeypatch.setattr(entropy_module, "_reference_rows", counted_reference)
    monkeypatch.setattr(entropy_module, "_chunk_forward", counted_forward)
    monkeypatch.setattr(entropy_module, "_chunk_backward", counted_backward)
    return counts


def test_environment_variable_selects_implementation(monkeypatch, calls):
    x = _logits((2, 30), torch.float32)
    monkeypatch.setenv("AENT_ENTROPY_IMPL", "reference")
    aent.clamped_entropy(x, 0.3)
    assert calls == {"reference_calls": 1, "torch_forward_rows": 0, "torch_backward_rows": 0}
    aent.clamped_entropy(x, 0.3, impl="auto")  # "auto" defers to the variable too
    assert calls["reference_calls"] == 2 and calls["torch_forward_rows"] == 0
    aent.clamped_entropy(x, 0.3, impl="torch")  # an explicit impl wins over the variable
    assert calls["reference_calls"] == 2 and calls["torch_forward_rows"] == 2
    monkeypatch.setenv("AENT_ENTROPY_IMPL", "torch")
    aent.clamped_entropy(x, 0.3)
    assert calls["reference_calls"] == 2 and calls["torch_forward_rows"] == 4
    monkeypatch.delenv("AENT_ENTROPY_IMPL")
    aent.clamped_entropy(x, 0.3)  # unset on a CPU tensor: "auto" picks the torch path
    assert calls["reference_calls"] == 2 and calls["torch_forward_rows"] == 6
    monkeypatch.setenv("AENT_ENTROPY_IMPL", "bogus")
    with pytest.raises(ValueError, match="AENT_ENTROPY_IMPL must be one of .*'reference', 'torch', 'triton'.*'bogus'"):
        aent.clamped_entropy(x, 0.3)


# ---------------------------------------------------------------------------------------------------------------
# row_mask: skipped rows are neither computed nor read. Add an implementation's name here to test it too.
# ---------------------------------------------------------------------------------------------------------------

MASK_IMPLS = ["torch", "reference"]


def _mask(shape, seed=0):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask.view(-1)[:2] = torch.tensor([True, False])  # both kinds, whatever the draw
    return mask


@pytest.mark.parametrize("impl", MASK_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.0, 0.33])
def test_row_mask_skips_rows_and_leaves_the_others_unchanged(impl, dtype, p):
    x = _logits((3, 5, 257), dtype, seed=23)
    x[0, 1, :100] = float("-inf")
    mask = _mask(x.shape[:-1])
    mask[0, 1] = True  # a row with -inf columns among the computed ones
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(2))
    poisoned = x.clone()
    poisoned[~mask] = float("nan")  # a skipped row that were read would give NaN (and check_finite would raise)
    a = poisoned.requires_grad_(True)
    ent = aent.clamped_entropy(a, p, impl=impl, chunk_size=2, check_finite=True, row_mask=mask)
    (ent * weights).sum().backward()
    b = x.clone().requires_grad_(True)
    full = aent.clamped_entropy(b, p, impl=impl, chunk_size=2)
    (full * weights).sum().backward()
    assert ent.shape == mask.shape and ent.dtype == full.dtype
    assert torch.all(ent[~mask] == 0) and torch.all(a.grad[~mask] == 0)
    torch.testing.assert_close(ent[mask], full[mask], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.grad[mask], b.grad[mask], atol=1e-7, rtol=1e-6)
    assert torch.isfinite(a.grad.float()).all()


@pytest.mark.parametrize("impl", MASK_IMPLS)
def test_row_mask_all_false_and_all_true(impl):
    x = _logits((4, 3, 65), torch.float32, seed=29)
    nan = torch.full_like(x, float("nan")).requires_grad_(True)
    none = torch.zeros(x.shape[:-1], dtype=torch.bool)
    ent = aent.clamped_entropy(nan, 0.25, impl=impl, row_mask=none)
    assert torch.all(ent == 0)
    ent.sum().backward()
    assert torch.all(nan.grad == 0)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    every = aent.clamped_entropy(a, 0.25, impl=impl, row_mask=torch.ones_like(none))
    plain = aent.clamped_entropy(b, 0.25, impl=impl)
    every.sum().backward()
    plain.sum().backward()
    assert torch.equal(every, plain) and torch.equal(a.grad, b.grad)
    # the full-vocabulary entropy takes the mask too
    assert torch.all(aent.entropy(nan.detach(), impl=impl, row_mask=none) == 0)


@pytest.mark.parametrize("chunk_size", [1, 3, None])
def test_torch_path_computes_only_the_selected_rows(calls, chunk_size):
    x = _logits((40, 97), torch.float32, seed=31).requires_grad_(True)
    mask = _mask((40,), seed=5)
    mask[10:20] = True  # a run of consecutive rows (sliced) next to scattered ones (gathered)
    aent.clamped_entropy(x, 0.3, impl="torch", row_mask=mask, chunk_size=chunk_size).sum().backward()
    selected = int(mask.sum())
    assert 0 < selected < 40
    assert calls["torch_forward_rows"] == selected and calls["torch_backward_rows"] == selected
    aent.clamped_entropy(x, 0.3, impl="torch", row_mask=torch.zeros(40, dtype=torch.bool)).sum().backward()
    assert calls["torch_forward_rows"] == selected and calls["torch_backward_rows"] == selected


def test_bad_row_mask_is_named():
    x = torch.zeros(2, 3, 5)
    for bad, what in [
        (torch.ones(2, 3), "bool tensor"),
        (torch.ones(2, 3, dtype=torch.long), "bool tensor"),
        ([[True] * 3] * 2, "bool tensor"),
        (torch.ones(6, dtype=torch.bool), r"shape of logits.*\(2, 3\), got \(6,\)"),
        (torch.ones(2, 3, 5, dtype=torch.bool), "shape of logits"),
        (torch.ones(2, 3, dtype=torch.bool, device="meta"), "row_mask must be on the logits' device"),
    ]:
        with pytest.raises(ValueError, match="row_mask") as error:
            aent.clamped_entropy(x, 0.3, row_mask=bad)
        assert error.match(what)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_torch_path_matches_cpu(dtype):
    x = _logits((5, 4097), dtype, seed=19)
    cpu = aent.clamped_entropy(x, 0.33, impl="torch")
    gpu = aent.clamped_entropy(x.cuda(), 0.33, impl="torch").cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-5, rtol=1e-5)
