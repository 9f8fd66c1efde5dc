"""Fused Triton clamped entropy (aent.ops.triton_entropy) against the float64 reference and the torch path.

On a machine without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors at small
sizes. Triton fixes interpreter mode when a kernel is decorated, so the tests load a private copy of the kernel
module with the variable set; the process-wide ``aent.ops.triton_entropy`` (compiled kernels on a GPU machine) is
left alone. Full-size checks at the real vocabulary size run only where CUDA is available.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

import aent
import aent.ops

VOCAB_FULL = 151_936
# (rtol, atol) for gradients in the input dtype; entropies are float32 in every case. The atol covers float32
# cancellation in log q + H where one token holds almost all the probability (both terms ~1e-7).
TOLERANCES = {
    torch.float32: (1e-4, 2e-6),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float16: (2e-3, 2e-6),
}
BLOCK = 256  # small blocks so that V = 1001 spans several of them in the interpreter


@contextlib.contextmanager
def interpreter_mode():
    """``TRITON_INTERPRET=1`` for the duration (Triton reads it when decorating and again when launching), then the
    previous value, so that compiled kernels elsewhere in the process stay compiled."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        with warnings.catch_warnings():
            # numpy warns about inf - inf in branches that tl.where then discards
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


@pytest.fixture(scope="module")
def kernels():
    """The kernel module decorated in interpreter mode (a private copy, so the real module is not touched). Skipped
    only when Triton is not installed: a Triton that is installed but cannot load the kernels is a failure."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed (pip install triton); the fused kernels cannot be tested")
    path = Path(aent.ops.__file__).with_name("triton_entropy.py")
    with interpreter_mode():
        spec = importlib.util.spec_from_file_location("aent_ops_triton_entropy_interpreted", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    assert module.INTERPRETED, "this Triton ignores TRITON_INTERPRET=1: the kernels cannot run on the CPU"
    return module


def _fused(kernels, logits: torch.Tensor, clamp_p: float, grad_out: torch.Tensor):
    """Entropy and gradient from the interpreted kernels, on the logits as laid out (strides, offset)."""
    x = logits.detach().requires_grad_()
    with interpreter_mode():
        ent = kernels.clamped_entropy_rows(
            x, aent.num_removed(x.shape[-1], clamp_p), forward_block=BLOCK, backward_block=BLOCK
        )
        ent.backward(grad_out)
    return ent.detach(), x.grad


def _reference(logits: torch.Tensor, clamp_p: float, grad_out: torch.Tensor):
    """Float64 reference entropy and gradient (the input values are exactly representable in float64)."""
    x = logits.detach().to(torch.float64).requires_grad_()
    ent = aent.clamped_entropy(x, clamp_p, impl="reference", check_finite=False)
    ent.backward(grad_out.to(torch.float64))
    return ent.detach(), x.grad


def _torch_path(logits: torch.Tensor, clamp_p: float, grad_out: torch.Tensor):
    x = logits.detach().clone().requires_grad_()
    ent = aent.clamped_entropy(x, clamp_p, impl="torch", check_finite=False)
    ent.backward(grad_out)
    return ent.detach(), x.grad


def _kept_mask(logits: torch.Tensor, clamp_p: float) -> torch.Tensor:
    """The clamp's kept set (docs/METHOD.md), written out: z >= (k+1)-th smallest, finite."""
    z = logits.detach().to(torch.float64)
    k = aent.num_removed(z.shape[-1], clamp_p)
    threshold = torch.sort(z, dim=-1).values[..., k : k + 1]
    return (z >= threshold) & torch.isfinite(z)


def _assert_matches(kernels, logits: torch.Tensor, clamp_p: float, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(logits.shape[0], generator=gen)
    ent, grad = _fused(kernels, logits, clamp_p, grad_out)
    ref_ent, ref_grad = _reference(logits, clamp_p, grad_out)
    assert ent.dtype == torch.float32 and ent.shape == logits.shape[:-1]
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    torch.testing.assert_close(ent.double(), ref_ent, rtol=2e-5, atol=2e-5)
    rtol, atol = TOLERANCES[logits.dtype]
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=atol)
    # Nothing outside the kept set gets a gradient, exactly (the tie rule and -inf handling show here).
    assert not grad[~_kept_mask(logits, clamp_p)].any()
    tor_ent, tor_grad = _torch_path(logits, clamp_p, grad_out)
    torch.testing.assert_close(ent, tor_ent, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(grad.double(), tor_grad.double(), rtol=rtol, atol=atol)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("vocab", [1, 2, 7, 1001, BLOCK + 3])
@pytest.mark.parametrize("clamp_p", [0.0, 0.25, 0.33, 0.9])
def test_random_logits_match_reference(kernels, dtype, vocab, clamp_p):
    rows = (1, 3, 5)[(vocab + int(clamp_p * 100)) % 3]
    gen = torch.Generator().manual_seed(vocab * 100 + int(clamp_p * 100))
    logits = (torch.randn(rows, vocab, generator=gen) * 3).to(dtype)
    _assert_matches(kernels, logits, clamp_p)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("clamp_p", [0.25, 0.33, 0.9])
def test_heavy_ties(kernels, dtype, clamp_p):
    gen = torch.Generator().manual_seed(1)
    # Few distinct values: bf16-quantised small integers/quarters, so the threshold falls inside a run of ties.
    quantised = (torch.randint(-6, 6, (4, 1001), generator=gen).float() / 4).to(torch.bfloat16).to(dtype)
    constant = torch.full((1, 1001), 0.75, dtype=dtype)
    _assert_matches(kernels, torch.cat([quantised, constant]), clamp_p)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kept_set_ends_in_a_tie(kernels, dtype):
    # k = 3 of V = 10: the 4th smallest is 0.5, shared by five tokens; all five stay, so eight tokens are kept.
    row = torch.tensor([[-1.0, 0.5, 0.5, 0.5, 0.5, 2.0, 1.0, 3.0, -2.0, 0.5]], dtype=dtype)
    # -0.0 and +0.0 compare equal, so both are kept when zero is the threshold (k = 2 of V = 4).
    zeros = torch.tensor([[-1.0, -0.0, 0.0, 1.0]], dtype=dtype)
    _assert_matches(kernels, row, 0.3)
    _assert_matches(kernels, zeros, 0.5)
    ent, _ = _fused(kernels, row, 0.3, torch.ones(1))
    kept = torch.tensor([0.5] * 5 + [1.0, 2.0, 3.0], dtype=torch.float64)
    expected = -(torch.softmax(kept, 0) * torch.log_softmax(kept, 0)).sum()
    assert ent.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("clamp_p", [0.0, 0.25, 0.9])
def test_negative_infinity(kernels, dtype, clamp_p):
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(5, 300, generator=gen) * 2).to(dtype)
    logits[:, ::7] = float("-inf")  # masked vocabulary columns
    logits[1, :200] = float("-inf")  # more -inf than removed tokens: the threshold is -inf
    logits[2] = float("-inf")  # no valid distribution: entropy 0, gradient 0
    logits[3, 1:] = float("-inf")  # a single finite token: entropy 0
    _assert_matches(kernels, logits, clamp_p)
    ent, grad = _fused(kernels, logits, clamp_p, torch.ones(5))
    assert ent[2].item() == 0.0 and not grad[2].any()
    assert ent[3].item() == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_extreme_magnitudes(kernels, dtype):
    gen = torch.Generator().manual_seed(3)
    spread = (torch.randn(2, 1001, generator=gen) * 1e4).clamp(-6e4, 6e4).to(dtype)  # one token dominates
    offset = (1e4 + torch.randn(2, 1001, generator=gen) * 3).to(dtype)  # large shift, ordinary spread
    negative = (-1e4 + torch.randn(2, 1001, generator=gen) * 3).to(dtype)
    for clamp_p in (0.0, 0.33):
        _assert_matches(kernels, torch.cat([spread, offset, negative]), clamp_p)


def test_non_contiguous_inputs(kernels):
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(6, 2 * 501, generator=gen)
    _assert_matches(kernels, base[:, ::2], 0.33)  # column stride 2
    _assert_matches(kernels, base[::2, 3:900], 0.25)  # row stride 12 x 501 and an offset
    _assert_matches(kernels, torch.randn(777, 3, generator=gen).to(torch.bfloat16).t(), 0.33)  # transposed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rows_at_every_offset_from_a_16_byte_boundary(kernels, dtype):
    """Rows that start anywhere inside a 16-byte run, lengths that are no multiple of one, row strides that are no
    multiple of one: each pass reads the edge runs and the body between them, and must cover each row exactly once.
    The gradient's rows lie at the logits' offsets (the compiled backward vectorises its stores on that)."""
    lane = 16 // dtype.itemsize
    gen = torch.Generator().manual_seed(11)
    storage = (torch.randn(4 * (2 * BLOCK + 16), generator=gen) * 3).to(dtype)
    for vocab, stride in ((3, 3), (lane + 1, lane + 1), (BLOCK - 1, BLOCK + 2), (2 * BLOCK + 5, 2 * BLOCK + 5)):
        for offset in sorted({0, 1, lane // 2 + 1, lane - 1}):
            logits = storage[offset : offset + 3 * stride].view(3, stride)[:, :vocab]
            for clamp_p in (0.0, 0.33) if vocab == lane + 1 else (0.33,):
                _assert_matches(kernels, logits, clamp_p, seed=offset)
            grad = kernels._empty_gradient(logits)
            assert (grad.data_ptr() - logits.data_ptr()) % 16 == 0
            assert (grad.stride(0) - logits.stride(0)) % lane == 0 and grad.shape == logits.shape
            assert vocab <= grad.stride(0) < vocab + lane


def test_no_rows(kernels):
    for dtype in DTYPES:
        x = torch.randn(0, 50).to(dtype).requires_grad_()
        with interpreter_mode():
            ent = kernels.clamped_entropy_rows(x, 5, forward_block=BLOCK, backward_block=BLOCK)
            ent.sum().backward()
        assert ent.shape == (0,) and ent.dtype == torch.float32
        assert x.grad.shape == (0, 50) and x.grad.dtype == dtype


def test_nan_and_inf_rows_are_nan_with_zero_gradient(kernels):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 300, generator=gen)
    logits[1, 17] = float("nan")
    logits[2, 3] = float("inf")
    ent, grad = _fused(kernels, logits, 0.33, torch.ones(4))
    assert torch.isnan(ent[1]) and torch.isnan(ent[2])
    assert not grad[1].any() and not grad[2].any()
    ref_ent, _ = _reference(logits[[0, 3]], 0.33, torch.ones(2))
    torch.testing.assert_close(ent[[0, 3]].double(), ref_ent, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("clamp_p", [0.0, 0.33])
def test_row_mask_skips_rows_without_reading_them(kernels, dtype, clamp_p):
    """Masked rows are filled with NaN: entropy 0 and a zero gradient row show that no pass read them. Unmasked rows
    match the float64 reference, values and gradients."""
    gen = torch.Generator().manual_seed(8)
    logits = (torch.randn(6, 1001, generator=gen) * 3).to(dtype)
    logits[4, ::5] = float("-inf")
    row_mask = torch.tensor([True, False, True, False, True, False])
    logits[~row_mask] = float("nan")
    grad_out = torch.randn(6, generator=gen)
    x = logits.clone().requires_grad_()
    k = aent.num_removed(1001, clamp_p)
    with interpreter_mode():
        ent = kernels.clamped_entropy_rows(x, k, forward_block=BLOCK, backward_block=BLOCK, row_mask=row_mask)
        ent.backward(grad_out)
    assert torch.equal(ent[~row_mask], torch.zeros(3))
    assert torch.equal(x.grad[~row_mask], torch.zeros(3, 1001, dtype=dtype))
    ref_ent, ref_grad = _reference(logits[row_mask], clamp_p, grad_out[row_mask])
    torch.testing.assert_close(ent[row_mask].double(), ref_ent, rtol=2e-5, atol=2e-5)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(x.grad[row_mask].double(), ref_grad, rtol=rtol, atol=atol)
    # The same rows without a mask give the same results, bit for bit. (They stay where they are: a row's sums are
    # split at its 16-byte boundaries, so a row moved to another offset may differ in the last bit.)
    filled = logits.masked_fill(~row_mask[:, None], 0.0)
    unmasked, unmasked_grad = _fused(kernels, filled, clamp_p, grad_out)
    assert torch.equal(ent[row_mask], unmasked[row_mask]) and torch.equal(x.grad[row_mask], unmasked_grad[row_mask])


def test_row_mask_all_false_and_errors(kernels):
    x = torch.full((3, 300), float("nan")).requires_grad_()
    with interpreter_mode():
        ent = kernels.clamped_entropy_rows(x, 99, forward_block=BLOCK, row_mask=torch.zeros(3, dtype=torch.bool))
        ent.sum().backward()
    assert torch.equal(ent, torch.zeros(3)) and torch.equal(x.grad, torch.zeros(3, 300))
    with pytest.raises(ValueError, match=r"row_mask must be a bool tensor of shape \(rows,\) = \(3,\)"):
        kernels.clamped_entropy_rows(x, 9, row_mask=torch.ones(3))
    with pytest.raises(ValueError, match="row_mask must be a bool tensor"):
        kernels.clamped_entropy_rows(x, 9, row_mask=torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("dtype", [torch.float32], ids=["fp32"])
@pytest.mark.parametrize("clamp_p", [0.25, 0.33, 0.9])
@pytest.mark.parametrize("candidates, depth", [(16, 4), (2048, 1)], ids=["bucket-over-16", "lane-over-1-slot"])
def test_candidate_buffer_fallback(kernels, dtype, clamp_p, candidates, depth):
    """Rows whose threshold interval does not fit the candidate buffer take the fallback passes: decided after pass 1
    when the interval holds more than ``candidates`` elements, after pass 2 when one lane of the block met more than
    ``depth`` runs holding candidates. Small limits force both for the tie-heavy and dense rows and keep the buffer path for the others, in
    one launch."""
    gen = torch.Generator().manual_seed(9)
    quantised = (torch.randint(-6, 6, (2, 1001), generator=gen).float() / 4).to(dtype)  # ~80 ties per value
    # 600 values in [1, 1 + 2^-7), i.e. one 16-bit bucket, that differ (with repeats) in both lower key digits.
    low_bits = torch.randint(0, 300, (1, 600), generator=gen) * 211
    dense = torch.cat(
        [1.0 + low_bits.double() * 2.0**-23, -torch.rand(1, 200, generator=gen), 2 + torch.rand(1, 201)], 1
    )
    spread = torch.randn(3, 1001, generator=gen) * 3
    logits = torch.cat([quantised, dense[:, torch.randperm(1001, generator=gen)].float(), spread]).to(dtype)
    grad_out = torch.randn(6, generator=gen)
    k = aent.num_removed(1001, clamp_p)
    x = logits.clone().requires_grad_()
    with interpreter_mode():
        ent = kernels.clamped_entropy_rows(
            x, k, forward_block=BLOCK, backward_block=BLOCK, candidates=candidates, candidate_depth=depth
        )
        ent.backward(grad_out)
    ref_ent, ref_grad = _reference(logits, clamp_p, grad_out)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=1e-4, atol=2e-6)
    assert torch.equal(x.grad != 0, _kept_mask(logits, clamp_p))
    with interpreter_mode():
        passes = kernels.forward_passes(logits, k, forward_block=BLOCK, candidates=candidates, candidate_depth=depth)
    # The quantised rows fall back: decided after pass 1 (too many ties in the interval: 1 + 4 passes) or after
    # pass 2 (a lane met two runs holding candidates: 2 + 4); some spread rows finish on the buffer in both cases.
    assert (passes[:2] == (5 if candidates == 16 else 6)).all()
    assert (passes == 2).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_select_paths(kernels, dtype):
    """Which path each row takes, and that both give the exact result: an ordinary row finishes on the candidate
    buffer in two passes; a row whose sampled positions are unrepresentative (the sample misses the threshold) and a
    constant row (every element in one interval) take the fallback."""
    # Rows start at 16-byte boundaries (V x element size is a multiple of 16), so the sample's positions are those
    # of _sample_pivots: from the first run past the row's start, runs of 32 bytes every 64 (body // groups).
    vocab = 4096 + 8
    lane = 16 // dtype.itemsize
    gen = torch.Generator().manual_seed(11)
    ordinary = torch.randn(vocab, generator=gen) * 3
    skewed = torch.randn(vocab, generator=gen)
    sampled = (torch.arange(vocab) - lane) % (4 * lane) < 2 * lane
    skewed[sampled] += 50.0  # the sample sees only these; the threshold lies among the others
    constant = torch.full((vocab,), 0.5)
    logits = torch.stack([ordinary, skewed, constant]).to(dtype)
    clamp_p = 0.33
    k = aent.num_removed(vocab, clamp_p)
    with interpreter_mode():
        passes = kernels.forward_passes(logits, k, forward_block=1024)
        ent = kernels.clamped_entropy_rows(logits, k, forward_block=1024)
    full = 1 + (4 if dtype == torch.float32 else 2)  # pass 1, then the fallback's digit and last passes
    assert passes.tolist() == [2.0, full, full]
    ref_ent, _ = _reference(logits, clamp_p, torch.ones(3))
    torch.testing.assert_close(ent.double(), ref_ent, rtol=2e-5, atol=2e-5)


def test_p_zero_equals_full_entropy(kernels):
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 1001, generator=gen) * 4
    ent, _ = _fused(kernels, logits, 0.0, torch.ones(3))
    full = -(torch.softmax(logits.double(), -1) * torch.log_softmax(logits.double(), -1)).sum(-1)
    torch.testing.assert_close(ent.double(), full, rtol=1e-6, atol=1e-6)


def test_argument_errors(kernels):
    with pytest.raises(ValueError, match="float32, bfloat16 and float16"):
        kernels.clamped_entropy_rows(torch.randn(2, 8, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="2-D"):
        kernels.clamped_entropy_rows(torch.randn(2, 3, 8), 2)
    with pytest.raises(ValueError, match=r"k must be in \[0, V\)"):
        kernels.clamped_entropy_rows(torch.randn(2, 8), 8)
    with pytest.raises(ValueError, match="power of two"):
        kernels.clamped_entropy_rows(torch.randn(2, 8), 2, forward_block=300)


def test_rows_of_any_length_compile_to_vector_loads():
    """Compiled for sm_90 (no GPU needed: Triton's NVIDIA backend and its bundled ptxas), the kernels at V = 151,937,
    whose rows start anywhere in a 16-byte run, compile to the same code as at V = 151,936: per pass over the row the
    same instructions per element, with 128-bit loads, and the same registers. (The cost model's own compile step,
    scripts/kernel_cost.py, in a process without TRITON_INTERPRET, with the launcher's specialisation.)"""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    spec = importlib.util.spec_from_file_location("aent_kernel_cost", scripts / "kernel_cost.py")
    kernel_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_cost)
    source = Path(aent.ops.__file__).with_name("triton_entropy.py")
    job = dict(generation="v3", source=str(source), block=None, warps=kernel_cost._default_warps(source), arch=90)
    aligned, odd = (kernel_cost.run_worker("default", dict(job, vocab=v)) for v in (VOCAB_FULL, VOCAB_FULL + 1))
    assert not any("compile failed" in row.get("note", "") for row in aligned + odd)
    same = ("kernel", "dtype", "registers", "spill_bytes", "pass", "loop_instructions", "load_width_bits")
    assert [[row.get(key) for key in same] for row in odd] == [[row.get(key) for key in same] for row in aligned]
    passes = [row for row in aligned if row["pass"] in ("max + counts", "softmax + candidates", "read + write")]
    assert len(passes) == 6 and all(row["load_width_bits"] == 128 for row in passes)


@pytest.mark.parametrize(
    "dtype, vocab",
    [(torch.float32, VOCAB_FULL), (torch.bfloat16, VOCAB_FULL), (torch.float32, 262_144)],
    ids=["fp32-V151936", "bf16-V151936", "fp32-V262144"],
)
def test_full_vocabulary_default_blocks(kernels, dtype, vocab):
    """Real vocabulary sizes with the default block shapes (the ones a GPU runs), in the interpreter: many blocks
    per row, a partial last block at V = 151,936, padded -inf columns and a tie-heavy row. The first row finishes
    its select on the candidate buffer in two passes; the tie-heavy row (thousands of equal logits at the threshold)
    takes the fallback passes."""
    gen = torch.Generator().manual_seed(vocab)
    # A narrow spread keeps every kept token's probability (and gradient) far from underflow, so that the exact
    # kept set can be read off the gradient's non-zero pattern.
    logits = torch.randn(2, vocab, generator=gen).to(dtype)
    logits[1] = (logits[1].float() * 4).round().to(dtype)  # a few dozen distinct values: ties at the threshold
    logits[:, -100:] = float("-inf")  # padded vocabulary
    grad_out = torch.randn(2, generator=gen)
    clamp_p = 0.33
    x = logits.clone().requires_grad_()
    with interpreter_mode():
        ent = kernels.clamped_entropy_rows(x, aent.num_removed(vocab, clamp_p))
        ent.backward(grad_out)
    ref_ent, ref_grad = _reference(logits, clamp_p, grad_out)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=2e-5, atol=2e-5)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=rtol, atol=atol)
    kept = _kept_mask(logits, clamp_p)
    assert torch.equal(x.grad != 0, kept)  # exactly the clamp's kept set gets a gradient, ties included
    assert kept[0].sum() >= vocab - aent.num_removed(vocab, clamp_p)
    with interpreter_mode():
        passes = kernels.forward_passes(logits, aent.num_removed(vocab, clamp_p))
    assert passes[0] == 2 and passes[1] > 2  # the candidate buffer, and the fallback for the tie-heavy row


# ----------------------------------------------------------------------------------------------------------------
# top_k: the rank kernel at the ranks top_k gives it (V - k removed, almost every token).
# ----------------------------------------------------------------------------------------------------------------


def _clamp_p_removing(removed: int, vocab: int) -> float:
    """The clamp p whose floor(p * V) is exactly ``removed``: top_k's rank in the rank kernel's terms."""
    clamp_p = (removed + 0.5) / vocab
    assert aent.num_removed(vocab, clamp_p) == removed
    return clamp_p


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("top_k", [1, 2, 64, 1001, 5000])
def test_top_k_ranks_match_reference(kernels, dtype, top_k):
    """k = 1, 2, 64 and k >= V (nothing removed) at V = 1001: ordinary rows, a row whose k-th largest is tied, a row
    with fewer than k finite logits (the threshold is -inf: every finite token kept) and -inf columns."""
    vocab = 1001
    gen = torch.Generator().manual_seed(top_k)
    logits = torch.randn(5, vocab, generator=gen) * 3
    logits[1] = torch.round(logits[1])  # ties at every rank, the k-th largest among them
    logits[1, :3] = logits[1].max() + 1  # the largest value three times: k = 1 and 2 keep all three
    logits[2, ::3] = float("-inf")
    logits[3, 40:] = float("-inf")  # 40 finite logits: fewer than k = 64
    logits[4, 1:] = float("-inf")  # one finite logit
    logits = logits.to(dtype)
    clamp_p = _clamp_p_removing(max(vocab - top_k, 0), vocab)
    _assert_matches(kernels, logits, clamp_p, seed=top_k)
    kept = _kept_mask(logits, clamp_p)
    assert (kept.sum(-1) >= torch.clamp(torch.isfinite(logits).sum(-1), max=top_k)).all()
    if top_k <= 2:
        assert kept[1].sum() == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_top_k_ranks_finish_in_two_passes(kernels, dtype):
    """At top_k's ranks (V - 1, V - 2, V - 64 removed) the sample's upper pivot is +inf and the threshold's interval
    is the sample's top: the select still finishes on the candidate buffer in two passes, exactly."""
    vocab = 4096 + 8
    gen = torch.Generator().manual_seed(12)
    logits = torch.stack([torch.randn(vocab, generator=gen) * 3, torch.randn(vocab, generator=gen).exp()])
    logits = logits.to(dtype)
    for top_k in (1, 2, 64):
        removed = vocab - top_k
        with interpreter_mode():
            passes = kernels.forward_passes(logits, removed, forward_block=1024)
            ent = kernels.clamped_entropy_rows(logits, removed, forward_block=1024)
        assert passes.tolist() == [2.0, 2.0], top_k
        ref, _ = _reference(logits, _clamp_p_removing(removed, vocab), torch.ones(2))
        torch.testing.assert_close(ent.double(), ref, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------------------------------------------
# top_p: the nucleus kernel.
# ----------------------------------------------------------------------------------------------------------------


def _nucleus_kept(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """KeptSet.top_p written out in float64: sort descending, the first token whose cumulative probability reaches
    top_p gives tau; keep q >= tau (ties included), never -inf; top_p = 1 keeps q > 0. Rows with NaN/+inf or no
    finite logit keep nothing."""
    z = logits.detach().to(torch.float64)
    kept = torch.zeros_like(z, dtype=torch.bool)
    for i, row in enumerate(z):
        finite = torch.isfinite(row)
        if not finite.any() or torch.isnan(row).any() or torch.isposinf(row).any():
            continue
        q = torch.softmax(row, 0)
        if top_p >= 1:
            kept[i] = q > 0
            continue
        ordered = torch.sort(q, descending=True).values
        reached = (ordered.cumsum(0) >= top_p).nonzero()
        tau = ordered[reached[0, 0]] if len(reached) else ordered[finite.sum() - 1]
        kept[i] = (q >= tau) & finite
    return kept


def _nucleus_reference(logits: torch.Tensor, top_p: float, grad_out: torch.Tensor):
    """Float64 entropy and gradient on the kept set of :func:`_nucleus_kept` (NaN/+inf rows: NaN, no gradient)."""
    x = logits.detach().to(torch.float64).requires_grad_()
    kept = _nucleus_kept(logits, top_p)
    out = []
    for i, row in enumerate(x):
        if torch.isnan(row.detach()).any() or torch.isposinf(row.detach()).any():
            out.append(row.sum() * 0 + float("nan"))
        elif not kept[i].any():
            out.append(torch.where(kept[i], row, 0.0).sum() * 0)
        else:
            logq = torch.log_softmax(row[kept[i]], 0)
            out.append(-(logq.exp() * logq).sum())
    ent = torch.stack(out)
    finite = torch.isfinite(ent.detach())
    (ent[finite] * grad_out.to(torch.float64)[finite]).sum().backward()
    return ent.detach(), x.grad


def _nucleus_fused(kernels, logits, top_p, grad_out, row_mask=None, **config):
    x = logits.detach().requires_grad_()
    with interpreter_mode():
        ent = kernels.nucleus_entropy_rows(
            x, top_p, forward_block=BLOCK, backward_block=BLOCK, row_mask=row_mask, **config
        )
        ent.backward(grad_out)
    return ent.detach(), x.grad


def _assert_nucleus_matches(kernels, logits, top_p, seed=0, **config):
    gen = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(logits.shape[0], generator=gen)
    ent, grad = _nucleus_fused(kernels, logits, top_p, grad_out, **config)
    ref_ent, ref_grad = _nucleus_reference(logits, top_p, grad_out)
    assert ent.dtype == torch.float32 and grad.dtype == logits.dtype and grad.shape == logits.shape
    torch.testing.assert_close(ent.double(), ref_ent, rtol=2e-5, atol=2e-5, equal_nan=True)
    rtol, atol = TOLERANCES[logits.dtype]
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=atol)
    assert not grad[~_nucleus_kept(logits, top_p)].any()  # exactly the kept set gets a gradient
    # The torch path of the same rule, on the rows without NaN/+inf (those are the reference's business above).
    valid = ~(torch.isnan(logits) | torch.isposinf(logits)).any(-1)
    y = logits[valid].detach().clone().requires_grad_()
    tor = aent.nucleus_entropy(y, top_p, impl="torch")
    tor.backward(grad_out[valid])
    torch.testing.assert_close(ent[valid], tor.detach(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(grad[valid].double(), y.grad.double(), rtol=rtol, atol=atol)
    return ent, grad


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("vocab", [7, 1001])
@pytest.mark.parametrize("top_p", [0.5, 0.99])
def test_nucleus_random_logits_match_reference(kernels, dtype, vocab, top_p):
    """Short rows (V <= the candidate buffer) finish in the pass after the softmax; with a 16-slot buffer the same
    rows refine their interval first (value and key rounds). Odd V, a large offset, a peaked and a flat row."""
    gen = torch.Generator().manual_seed(vocab + int(top_p * 100))
    logits = torch.randn(4, vocab, generator=gen) * 3
    logits[1] += 1e4  # the bound below the threshold at a large magnitude
    logits[2] *= 4  # peaked: a nucleus of a few tokens
    logits[3] *= 0.1  # flat: most of the row in the nucleus
    logits = logits.to(dtype)
    _assert_nucleus_matches(kernels, logits, top_p, seed=vocab)
    _assert_nucleus_matches(kernels, logits, top_p, seed=vocab, candidates=16)
    with interpreter_mode():
        passes = kernels.nucleus_forward_passes(logits, top_p, forward_block=BLOCK, candidates=16)
    assert (passes == 2).all() if vocab <= 16 else (passes > 2).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nucleus_ties_at_tau(kernels, dtype):
    """The token that crosses top_p is tied: every tie is kept. Four tokens at 2.0 after one at 3.0, top_p reached at
    the second of them; and 500 ties at the crossing (more than the 16-slot buffer: the interval is refined down to
    that single value, t = the value, no candidates)."""
    row = torch.tensor([[3.0, 2.0, 2.0, 2.0, 2.0, 0.0, -1.0, -1.0, -3.0, 0.5]])
    weights = [math.exp(v) for v in row[0].tolist()]
    top_p = (weights[0] + 1.5 * weights[1]) / sum(weights)
    ent, grad = _assert_nucleus_matches(kernels, row.to(dtype), top_p)
    assert torch.equal(grad[0] != 0, torch.tensor([True] * 5 + [False] * 5))
    kept = torch.tensor([3.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    assert ent.item() == pytest.approx(-(torch.softmax(kept, 0) * torch.log_softmax(kept, 0)).sum().item(), rel=1e-6)
    gen = torch.Generator().manual_seed(13)
    crowded = torch.cat([torch.full((3,), 4.0), torch.full((500,), 1.0), torch.randn(498, generator=gen) - 3])
    crowded = crowded[torch.randperm(1001, generator=gen)][None].to(dtype)
    _assert_nucleus_matches(kernels, crowded, 0.6, candidates=16)
    _assert_nucleus_matches(kernels, crowded, 0.6, candidates=16, candidate_depth=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nucleus_negative_infinity_and_invalid_rows(kernels, dtype):
    gen = torch.Generator().manual_seed(14)
    logits = torch.randn(6, 300, generator=gen) * 2
    logits[:, ::7] = float("-inf")  # masked vocabulary columns
    logits[1, :290] = float("-inf")  # ten finite logits
    logits[2] = float("-inf")  # no valid distribution: entropy 0, gradient 0
    logits[3, 1:] = float("-inf")  # a single finite token: entropy 0
    logits = logits.to(dtype)
    for top_p in (0.9, 1.0):
        ent, grad = _assert_nucleus_matches(kernels, logits, top_p, candidates=16)
        assert ent[2].item() == 0.0 and not grad[2].any() and ent[3].item() == 0.0
    bad = logits.clone()
    bad[4, 17] = float("nan")
    bad[5, 3] = float("inf")
    ent, grad = _assert_nucleus_matches(kernels, bad, 0.9)
    assert torch.isnan(ent[4:]).all() and not grad[4:].any()


def test_nucleus_top_p_one_and_tiny(kernels):
    """top_p = 1 keeps every token with non-zero probability: the full entropy; a tiny top_p keeps the argmax and its
    ties."""
    gen = torch.Generator().manual_seed(15)
    logits = torch.randn(3, 1001, generator=gen) * 4
    logits[0, 5:10] = logits[0].max() + 1  # five tied maxima
    logits[2, ::5] = float("-inf")
    full, _ = _fused(kernels, logits, 0.0, torch.ones(3))
    ent, _ = _assert_nucleus_matches(kernels, logits, 1.0)
    torch.testing.assert_close(ent, full, rtol=0, atol=0)
    ent, grad = _assert_nucleus_matches(kernels, logits, 1e-7)
    assert ent[0].item() == pytest.approx(math.log(5), rel=1e-6) and ent[1:].abs().max() == 0
    assert (grad[0] != 0).sum() <= 5 and not grad[1:].any()


def test_nucleus_row_mask_non_contiguous_and_errors(kernels):
    gen = torch.Generator().manual_seed(16)
    logits = torch.randn(6, 1001, generator=gen) * 3
    row_mask = torch.tensor([True, False, True, False, True, False])
    logits[~row_mask] = float("nan")  # never read
    grad_out = torch.randn(6, generator=gen)
    ent, grad = _nucleus_fused(kernels, logits, 0.9, grad_out, row_mask=row_mask, candidates=16)
    assert torch.equal(ent[~row_mask], torch.zeros(3)) and not grad[~row_mask].any()
    ref_ent, ref_grad = _nucleus_reference(logits[row_mask], 0.9, grad_out[row_mask])
    torch.testing.assert_close(ent[row_mask].double(), ref_ent, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(grad[row_mask].double(), ref_grad, rtol=1e-4, atol=2e-6)
    none, none_grad = _nucleus_fused(kernels, logits, 0.9, grad_out, row_mask=torch.zeros(6, dtype=torch.bool))
    assert torch.equal(none, torch.zeros(6)) and torch.equal(none_grad, torch.zeros(6, 1001))
    base = torch.randn(4, 2 * 501, generator=gen) * 3
    _assert_nucleus_matches(kernels, base[:, ::2], 0.9, candidates=16)  # column stride 2
    _assert_nucleus_matches(kernels, base[::2, 3:900].to(torch.bfloat16), 0.9)  # row stride and an offset
    for bad in (0.0, 1.5, True, float("nan")):
        with pytest.raises(ValueError, match="top_p must be a number in"):
            kernels.nucleus_entropy_rows(logits, bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nucleus_full_vocabulary_default_blocks(kernels, dtype):
    """V = 151,936 with the default blocks and buffer (the ones a GPU runs), top_p = 0.99, in the interpreter: an
    ordinary row refines its interval in one to three passes, then finishes on the buffer; padded -inf columns."""
    gen = torch.Generator().manual_seed(17)
    # Scale 4: no token's cumulative mass meets 0.99 within float32 rounding (at scale 2 one does: a float32 mass may
    # then keep or drop it, where the float64 reference does the other), so the kept set can be compared exactly.
    logits = (torch.randn(1, VOCAB_FULL, generator=gen) * 4).to(dtype)
    logits[:, -100:] = float("-inf")
    grad_out = torch.randn(1, generator=gen)
    x = logits.clone().requires_grad_()
    with interpreter_mode():
        ent = kernels.nucleus_entropy_rows(x, 0.99)
        ent.backward(grad_out)
        passes = kernels.nucleus_forward_passes(logits, 0.99)
    ref_ent, ref_grad = _nucleus_reference(logits, 0.99, grad_out)
    torch.testing.assert_close(ent.double(), ref_ent, rtol=2e-5, atol=2e-5)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=rtol, atol=atol)
    assert torch.equal(x.grad != 0, _nucleus_kept(logits, 0.99))
    assert 3 <= passes.item() <= 5


@pytest.fixture
def interpreted_dispatch(kernels, monkeypatch):
    """Route ``clamped_entropy(impl="triton")`` to the interpreted kernels, as it would reach the compiled ones."""
    monkeypatch.setitem(sys.modules, "aent.ops.triton_entropy", kernels)
    monkeypatch.setattr(aent.ops, "triton_entropy", kernels, raising=False)
    return kernels


def test_public_api_dispatch(interpreted_dispatch):
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 1001, generator=gen).to(torch.bfloat16).requires_grad_()
    with interpreter_mode():
        ent = aent.clamped_entropy(logits, 0.33, impl="triton")
        ent.sum().backward()
    assert ent.shape == (2, 3) and ent.dtype == torch.float32
    ref = aent.clamped_entropy(logits.detach(), 0.33, impl="reference")
    torch.testing.assert_close(ent.detach(), ref, rtol=2e-5, atol=2e-5)
    assert logits.grad.dtype == torch.bfloat16
    bad = torch.randn(3, 100)
    bad[1, 5] = float("nan")
    with interpreter_mode():
        with pytest.raises(ValueError, match="NaN or \\+inf in 1 of 3 rows"):
            aent.clamped_entropy(bad, 0.25, impl="triton")
    with pytest.raises(ValueError, match="float32, bfloat16 and float16"):
        aent.clamped_entropy(torch.randn(2, 10, dtype=torch.float64), 0.25, impl="triton")


# ----------------------------------------------------------------------------------------------------------------
# Breakage is loud: load errors kept, settings checked where used, the first-use self-check.
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_ops_state(monkeypatch):
    """aent.ops as in a new process: no self-check run yet, nothing warned, auto not disabled."""
    monkeypatch.setattr(aent.ops, "_SELF_CHECKS", {})
    monkeypatch.setattr(aent.ops, "_WARNED", set())
    monkeypatch.setattr(aent.ops, "_AUTO_DISABLED", None)
    monkeypatch.delenv("AENT_ENTROPY_IMPL", raising=False)
    monkeypatch.delenv(aent.ops.SELF_CHECK_ENV, raising=False)


def test_a_kernel_load_error_is_kept_raised_and_warned(monkeypatch, fresh_ops_state):
    from aent.entropy import _resolve_impl

    cause = NameError("name 'tl_missing' is not defined")
    monkeypatch.setattr(aent.ops, "_load_error", lambda: cause)
    assert not aent.ops.triton_available() and aent.ops.triton_load_error() is cause
    with pytest.raises(RuntimeError, match="NameError: name 'tl_missing'") as raised:
        aent.ops.clamped_entropy_triton(torch.randn(2, 8), 2)
    assert raised.value.__cause__ is cause
    with pytest.warns(aent.ops.FusedKernelWarning, match="tl_missing"):
        assert _resolve_impl("auto", torch.device("cuda"), torch.float32) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second call is silent
        assert _resolve_impl("auto", torch.device("cuda"), torch.float32) == "torch"
    # Triton genuinely not installed: the torch path without a warning, and impl="triton" says what to install.
    monkeypatch.setattr(aent.ops, "_load_error", lambda: ModuleNotFoundError("no triton", name="triton"))
    monkeypatch.setattr(aent.ops, "_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not aent.ops.auto_uses_triton(torch.float32)
    with pytest.raises(RuntimeError, match="Triton is not installed.*pip install 'aent\\[gpu\\]'"):
        aent.ops.clamped_entropy_triton(torch.randn(2, 8), 2)


def test_environment_settings_are_checked_where_used(kernels, monkeypatch):
    x = torch.randn(2, 300)
    monkeypatch.setenv("AENT_TRITON_FORWARD_BLOCK", "2k")
    with pytest.raises(ValueError, match="environment variable AENT_TRITON_FORWARD_BLOCK must be an integer.*'2k'"):
        kernels.clamped_entropy_rows(x, 5)
    monkeypatch.setenv("AENT_TRITON_FORWARD_BLOCK", "300")
    with pytest.raises(ValueError, match="environment variable AENT_TRITON_FORWARD_BLOCK must be a power of two"):
        kernels.nucleus_entropy_rows(x, 0.9)
    monkeypatch.setenv("AENT_TRITON_FORWARD_BLOCK", "256")
    monkeypatch.setenv("AENT_TRITON_CANDIDATES", "16")
    with interpreter_mode():
        passes = kernels.nucleus_forward_passes(x, 0.9)  # read at the call: the 16-slot buffer refines first
    assert (passes > 2).all()
    monkeypatch.setenv(aent.ops.SELF_CHECK_ENV, "maybe")
    with pytest.raises(ValueError, match="AENT_TRITON_SELF_CHECK must be 0 or 1"):
        aent.ops._self_check_enabled()


def _faulty(kernels, monkeypatch, kind):
    """Make the interpreted rank kernel wrong on purpose: its entropy (``value``), its gradient (``gradient``) or its
    row mask (``mask``: rows outside it are computed). Returns the list of calls it received."""
    real = kernels.clamped_entropy_rows
    calls = []

    def wrong(rows, k, row_mask=None, **config):
        calls.append(rows.shape)
        ent = real(rows, k, row_mask=None if kind == "mask" else row_mask, **config)
        if kind == "value":
            return ent * 1.01
        if kind == "gradient":
            return ent + (ent - ent.detach()) * 0.5
        return ent

    monkeypatch.setattr(kernels, "clamped_entropy_rows", wrong)
    return calls


def _logits_for_check():
    gen = torch.Generator().manual_seed(21)
    return torch.randn(4, 300, generator=gen) * 3


def test_self_check_passes_once_per_key(interpreted_dispatch, monkeypatch, fresh_ops_state):
    calls = _faulty(interpreted_dispatch, monkeypatch, "none")
    logits = _logits_for_check()
    with interpreter_mode():
        with torch.inference_mode():  # as verl's log-prob pass may call it: the check still runs with autograd
            first = aent.clamped_entropy(logits, 0.33, impl="triton")
        again = aent.clamped_entropy(logits, 0.33, impl="triton")
    assert list(aent.ops._SELF_CHECKS.values()) == [None]
    assert len(calls) == 3  # the check (5 rows), then each call: only the first call pays
    assert calls[0] == (5, 300)  # three real rows, a tie-heavy copy, a row-masked one
    torch.testing.assert_close(first, again)


@pytest.mark.parametrize("kind", ["value", "gradient", "mask"])
def test_self_check_catches_a_faulty_kernel(interpreted_dispatch, monkeypatch, fresh_ops_state, kind):
    from aent.entropy import _resolve_impl

    _faulty(interpreted_dispatch, monkeypatch, kind)
    logits = _logits_for_check()
    expected = {"value": "entropy difference", "gradient": "gradient difference", "mask": "outside row_mask"}[kind]
    with interpreter_mode():
        with pytest.raises(RuntimeError, match=f"disagrees with the torch path on cpu.*{expected}.*impl='torch'"):
            aent.clamped_entropy(logits, 0.33, impl="triton")
    assert aent.ops.auto_uses_triton(torch.float32)  # impl="triton" raised; auto is still free to try
    aent.ops._SELF_CHECKS.clear()
    x = logits.clone().requires_grad_()
    with interpreter_mode(), pytest.warns(aent.ops.FusedKernelWarning, match=f"{expected}.*torch path in this"):
        ent = aent.ops.clamped_entropy_triton(x, 99, auto=True)  # as the dispatch calls it under impl="auto"
    ref = aent.clamped_entropy(logits, 99.5 / 300, impl="torch")
    torch.testing.assert_close(ent, ref, rtol=0, atol=0)  # the torch path's result, for this call too
    ent.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert not aent.ops.auto_uses_triton(torch.float32)  # ... and for the rest of the process
    assert _resolve_impl("auto", torch.device("cuda"), torch.bfloat16) == "torch"


def test_self_check_can_be_switched_off(interpreted_dispatch, monkeypatch, fresh_ops_state):
    calls = _faulty(interpreted_dispatch, monkeypatch, "value")
    monkeypatch.setenv(aent.ops.SELF_CHECK_ENV, "0")
    logits = _logits_for_check()
    with interpreter_mode():
        ent = aent.clamped_entropy(logits, 0.33, impl="triton")
    assert len(calls) == 1 and not aent.ops._SELF_CHECKS  # no check ran: the faulty result goes through
    ref = aent.clamped_entropy(logits, 0.33, impl="torch")
    torch.testing.assert_close(ent, ref * 1.01)


def test_auto_stays_on_torch_without_cuda(monkeypatch):
    monkeypatch.delenv("AENT_ENTROPY_IMPL", raising=False)
    from aent.entropy import _resolve_impl

    assert _resolve_impl("auto", torch.device("cpu"), torch.float32) == "torch"
    assert _resolve_impl(None, torch.device("cuda"), torch.float64) == "torch"
    monkeypatch.setenv("AENT_ENTROPY_IMPL", "torch")
    assert _resolve_impl(None, torch.device("cuda"), torch.float32) == "torch"


# ----------------------------------------------------------------------------------------------------------------
# Full size, compiled kernels: only with CUDA.
# ----------------------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for the compiled kernels")


def _require_compiled_kernels():
    """Skip only when Triton is not installed; a Triton that is installed but cannot load the kernels fails."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed on this CUDA machine")
    assert aent.ops.triton_available(), f"the fused kernels do not load: {aent.ops.triton_load_error()!r}"


@pytest.mark.gpu
@needs_cuda
def test_auto_picks_triton_on_cuda(monkeypatch):
    from aent.entropy import _resolve_impl

    monkeypatch.delenv("AENT_ENTROPY_IMPL", raising=False)
    _require_compiled_kernels()
    assert _resolve_impl("auto", torch.device("cuda"), torch.bfloat16) == "triton"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows", [1, 3, 4097])
def test_full_vocabulary_matches_torch_path_on_cuda(dtype, rows):
    _require_compiled_kernels()
    gen = torch.Generator(device="cuda").manual_seed(rows)
    logits = (torch.randn(rows, VOCAB_FULL, device="cuda", generator=gen) * 4).to(dtype)
    logits[:, -100:] = float("-inf")  # padded vocabulary
    grad_out = torch.randn(rows, device="cuda", generator=gen)
    for clamp_p in (0.0, 0.33, aent.KeptSet.top_k(2), aent.KeptSet.top_p(0.99)):
        x = logits.clone().requires_grad_()
        ent = aent.restricted_entropy(x, clamp_p, impl="triton")
        ent.backward(grad_out)
        y = logits.clone().requires_grad_()
        ref = aent.restricted_entropy(y, clamp_p, impl="torch")
        ref.backward(grad_out)
        torch.testing.assert_close(ent, ref, rtol=1e-4, atol=1e-4)
        rtol, atol = TOLERANCES[dtype]
        torch.testing.assert_close(x.grad.float(), y.grad.float(), rtol=rtol, atol=atol)
        if rows <= 3:
            x64 = logits.cpu().double().requires_grad_()
            ref64 = aent.restricted_entropy(x64, clamp_p, impl="reference", check_finite=False)
            ref64.backward(grad_out.cpu().double())
            ref64, ref64_grad = ref64.detach(), x64.grad
            torch.testing.assert_close(ent.cpu().double(), ref64, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(x.grad.cpu().double(), ref64_grad, rtol=rtol, atol=atol)
