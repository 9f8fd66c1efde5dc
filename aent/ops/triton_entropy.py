"""Fused Triton kernels for the clamped entropy (SPEC section 1; AEnt, arXiv 2509.03493, section 3).

Two launches per forward + backward, and only four float32 numbers per row kept in between:

Forward (one program per row)
    Exact per-row threshold by radix select on an order-preserving integer key of the logits' bits, with 8-bit
    digits, each a 256-bin ``tl.histogram`` (with its ``mask``) of the next digit among the elements whose higher
    digits match the threshold found so far.

    * Pass 1 reads the row once for its maximum (the softmax shift: the maximum is always kept), the NaN/+inf flag
      and the top digit's histogram.
    * float32, pass 2: the second digit. The threshold's 16-bit bucket then holds ~0.1-0.3% of a typical row.
      Pass 3 sums ``exp(z - max)`` and ``exp(z - max) (z - max)`` over the elements above that bucket (one
      exponential each) and copies the bucket's elements to a per-row candidate buffer, each lane of the block to
      its own slots (no communication between threads); the last two digits are selected on the copy. Three passes.
      Fallback, decided per row: when the bucket holds more than ``CANDIDATES`` elements (known from pass 2's
      histogram: heavy ties, quantised logits) or one lane met more than ``CANDIDATE_DEPTH``, a third digit pass
      and then the last pass below (four or five passes, exact either way).
    * bfloat16/float16 (16-bit keys), and float32 after the fallback: the last pass sums the softmax terms of the
      elements above the threshold's 8-bit-wide bucket and histograms the last digit inside it; those elements'
      values are known from the bin index, so their contribution is added from the counts. Two passes for 16-bit
      keys.
    * A row with ``k = 0`` skips the selection: one pass (online max for the softmax sums).
Backward (a 2-D grid of row x column blocks)
    Reads the logits once and writes the gradient ``-q_a (log q_a + H) * grad_out`` once (0 off the kept set).

Rows where the optional ``row_mask`` is False are not read by either kernel: entropy 0, gradient row 0.

Key mapping: the float's bits ``b`` read as a signed integer, and ``b ^ 0x7FF..F`` for negative ``b`` (flip the
magnitude bits), orders exactly like the floats, with ``-inf`` below every finite value. ``-0.0`` is mapped to
``+0.0`` first so that keys are equal exactly when the floats compare equal: the SPEC tie rule (keep every token
with ``z >= t``) then follows from selecting the key of rank ``k``. The kept set is applied as ``z >= t`` on the
float values, in the same way in both kernels.

Rows containing NaN or ``+inf`` get a NaN entropy (``clamped_entropy(check_finite=True)`` turns that into an error)
and a zero gradient; rows whose kept set has no finite logit get entropy 0 and gradient 0. Both are marked by
storing a NaN threshold, which no ``z >= t`` comparison passes.

Importing this module imports Triton. The kernels are decorated at import time, so Triton's interpreter
(``TRITON_INTERPRET=1``, CPU tensors) must be switched on before the import; the tests load a private copy of this
module for that reason.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

__all__ = ["clamped_entropy_rows", "SUPPORTED_DTYPES", "FORWARD_BLOCK", "BACKWARD_BLOCK", "INTERPRETED"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Elements per block (powers of two) and warps per program. The forward block is what one histogram call sees.
# Registers, spills and programs per multiprocessor depend on the Triton version and the target: scripts/kernel_cost.py
# compiles the kernels and writes them to benchmarks/kernel_cost.csv (docs/PERFORMANCE.md has the table). Overridable
# for tuning without code changes (scripts/bench_entropy.py --fused-configs).
FORWARD_BLOCK = int(os.environ.get("AENT_TRITON_FORWARD_BLOCK", "2048"))
FORWARD_WARPS = int(os.environ.get("AENT_TRITON_FORWARD_WARPS", "8"))
BACKWARD_BLOCK = int(os.environ.get("AENT_TRITON_BACKWARD_BLOCK", "4096"))
BACKWARD_WARPS = int(os.environ.get("AENT_TRITON_BACKWARD_WARPS", "8"))
# float32 select: rows whose threshold bucket (top 16 key bits) holds at most CANDIDATES elements finish the select on
# a per-row buffer of CANDIDATE_DEPTH x FORWARD_BLOCK float32 slots (32 KB per row at the defaults: 5% of the fp32
# logits at V = 151,936, freed before the backward allocates the gradient).
CANDIDATES = int(os.environ.get("AENT_TRITON_CANDIDATES", "2048"))
CANDIDATE_DEPTH = int(os.environ.get("AENT_TRITON_CANDIDATE_DEPTH", "4"))


@triton.jit
def _sorted_key(x, KEY_BITS: tl.constexpr):
    """Signed int32 key that orders like the float values of ``x`` (-0.0 first mapped to +0.0)."""
    if KEY_BITS == 32:
        bits = x.to(tl.int32, bitcast=True)
        bits = tl.where(bits == -2147483648, 0, bits)
        key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    else:
        bits = x.to(tl.int16, bitcast=True).to(tl.int32)  # sign-extends the 16-bit pattern
        bits = tl.where(bits == -32768, 0, bits)
        key = bits ^ ((bits >> 31) & 0x7FFF)
    return key


@triton.jit
def _key_to_float(key, KEY_BITS: tl.constexpr, IS_BF16: tl.constexpr):
    """Inverse of :func:`_sorted_key` (the mapping is an involution on the bits), returned as float32."""
    if KEY_BITS == 32:
        bits = key ^ ((key >> 31) & 0x7FFFFFFF)
        value = bits.to(tl.float32, bitcast=True)
    else:
        bits = key ^ ((key >> 31) & 0x7FFF)
        if IS_BF16:
            value = (bits << 16).to(tl.float32, bitcast=True)
        else:
            value = bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return value


@triton.jit
def _select_digit(hist, rank):
    """Bin holding the element of 0-based ``rank`` (counting from the lowest bin), and its rank inside that bin."""
    bins = tl.arange(0, 256)
    cumulative = tl.cumsum(hist, 0)
    digit = tl.min(tl.where(cumulative > rank, bins, 256), 0)
    below = tl.sum(tl.where(bins < digit, hist, 0), 0)
    return digit, rank - below


@triton.jit
def _load_row_block(row_ptr, cols, in_bounds, stride_col, COL_CONTIGUOUS: tl.constexpr):
    if COL_CONTIGUOUS:
        x = tl.load(row_ptr + cols, mask=in_bounds, other=0.0)
    else:
        x = tl.load(row_ptr + cols.to(tl.int64) * stride_col, mask=in_bounds, other=0.0)
    return x


@triton.jit
def _digit_histogram(
    row_ptr,
    n,
    stride_col,
    target,
    SHIFT: tl.constexpr,
    KEY_BITS: tl.constexpr,
    COL_CONTIGUOUS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One pass over the row: 256-bin histogram of key digit ``(key >> SHIFT) & 255`` among the elements whose
    higher digits equal those of ``target``."""
    offsets = tl.arange(0, BLOCK)
    hist = tl.zeros([256], dtype=tl.int32)
    prefix = target >> (SHIFT + 8)
    for start in range(0, n, BLOCK):
        cols = start + offsets
        in_bounds = cols < n
        key = _sorted_key(_load_row_block(row_ptr, cols, in_bounds, stride_col, COL_CONTIGUOUS), KEY_BITS)
        match = in_bounds & ((key >> (SHIFT + 8)) == prefix)
        hist += tl.histogram((key >> SHIFT) & 255, 256, mask=match)
    return hist


@triton.jit
def _softmax_and_candidates(
    row_ptr,
    n,
    stride_col,
    buffer_ptr,
    target,
    rank,
    row_max,
    COL_CONTIGUOUS: tl.constexpr,
    BLOCK: tl.constexpr,
    DEPTH: tl.constexpr,
):
    """float32 keys whose top 16 bits (``target >> 16``) are known. One pass over the row: softmax sums of the
    elements above that bucket, and the bucket's elements copied to ``buffer_ptr`` (lane ``j`` of the block writes
    its ``i``-th one to slot ``i * BLOCK + j``). Then the last two digits are selected on the copy and its kept
    elements added. Returns (sum of weights, sum of weight x shifted value, threshold, whether it all fit)."""
    offsets = tl.arange(0, BLOCK)
    neg_inf = float("-inf")
    bucket = target >> 16
    lane_total = tl.zeros([BLOCK], dtype=tl.float32)
    lane_weighted = tl.zeros([BLOCK], dtype=tl.float32)
    lane_count = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, n, BLOCK):
        cols = start + offsets
        in_bounds = cols < n
        x = _load_row_block(row_ptr, cols, in_bounds, stride_col, COL_CONTIGUOUS)
        z = x.to(tl.float32)
        key_bucket = _sorted_key(x, 32) >> 16
        take = in_bounds & (key_bucket > bucket) & (z > neg_inf)
        in_bucket = in_bounds & (key_bucket == bucket)
        tl.store(buffer_ptr + lane_count * BLOCK + offsets, z, mask=in_bucket & (lane_count < DEPTH))
        lane_count += in_bucket.to(tl.int32)
        shifted = tl.where(take, z - row_max, 0.0)
        weight = tl.where(take, tl.exp(shifted), 0.0)
        lane_total += weight
        lane_weighted += weight * shifted
    fits = tl.max(lane_count, 0) <= DEPTH
    tl.debug_barrier()  # the buffer was written by every thread of the program; read it back after all did
    slots = tl.arange(0, DEPTH * BLOCK)
    lane_filled = lane_count * fits.to(tl.int32)  # nothing is read back when a lane overflowed
    filled = (slots // BLOCK) < tl.reshape(tl.broadcast_to(lane_filled[None, :], (DEPTH, BLOCK)), (DEPTH * BLOCK,))
    cz = tl.load(buffer_ptr + slots, mask=filled, other=0.0, cache_modifier=".cg")
    ckey = _sorted_key(cz, 32)
    digit, rank = _select_digit(tl.histogram((ckey >> 8) & 255, 256, mask=filled), rank)
    target = target | (digit << 8)
    same = filled & (((ckey >> 8) & 255) == digit)
    digit, rank = _select_digit(tl.histogram(ckey & 255, 256, mask=same), rank)
    target = target | digit
    kept = filled & (ckey >= target) & (cz > neg_inf)
    shifted = tl.where(kept, cz - row_max, 0.0)
    weight = tl.where(kept, tl.exp(shifted), 0.0)
    total = tl.sum(lane_total, 0) + tl.sum(weight, 0)
    weighted = tl.sum(lane_weighted, 0) + tl.sum(weight * shifted, 0)
    return total, weighted, _key_to_float(target, 32, False), fits


@triton.jit
def _clamped_entropy_forward_kernel(
    x_ptr,
    stride_row,
    stride_col,
    vocab,
    num_removed,
    row_mask_ptr,
    candidates_ptr,
    entropy_ptr,
    threshold_ptr,
    shift_ptr,
    log_total_ptr,
    KEY_BITS: tl.constexpr,
    IS_BF16: tl.constexpr,
    SELECT: tl.constexpr,
    COL_CONTIGUOUS: tl.constexpr,
    HAS_ROW_MASK: tl.constexpr,
    BLOCK: tl.constexpr,
    CANDIDATES: tl.constexpr,
    CANDIDATE_DEPTH: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = x_ptr + row.to(tl.int64) * stride_row
    offsets = tl.arange(0, BLOCK)
    bins = tl.arange(0, 256)
    neg_inf = float("-inf")
    n = vocab
    if HAS_ROW_MASK:
        n = tl.where(tl.load(row_mask_ptr + row) != 0, vocab, 0)  # a skipped row: no pass reads it

    # Pass 1: row max, NaN/+inf flag and (with selection) the histogram of the key's top digit, read as unsigned.
    # Without selection (k = 0) it is the only pass: the softmax sums are kept per lane with an online max.
    lane_max = tl.full([BLOCK], neg_inf, dtype=tl.float32)
    lane_invalid = tl.zeros([BLOCK], dtype=tl.int32)
    lane_total = tl.zeros([BLOCK], dtype=tl.float32)  # k = 0: sum of exp(z - lane_max)
    lane_weighted = tl.zeros([BLOCK], dtype=tl.float32)  # k = 0: sum of exp(z - lane_max) (z - lane_max)
    hist = tl.zeros([256], dtype=tl.int32)
    for start in range(0, n, BLOCK):
        cols = start + offsets
        in_bounds = cols < n
        x = _load_row_block(row_ptr, cols, in_bounds, stride_col, COL_CONTIGUOUS)
        z = x.to(tl.float32)
        lane_invalid |= (in_bounds & ((z != z) | (z == float("inf")))).to(tl.int32)
        new_max = tl.maximum(lane_max, tl.where(in_bounds, z, neg_inf))
        if SELECT:
            key = _sorted_key(x, KEY_BITS)
            hist += tl.histogram(((key >> (KEY_BITS - 8)) & 255) ^ 128, 256, mask=in_bounds)
        else:
            take = in_bounds & (z > neg_inf)
            rescale = tl.where(lane_max == new_max, 1.0, tl.exp(lane_max - new_max))
            shifted = tl.where(take, z - new_max, 0.0)
            weight = tl.where(take, tl.exp(shifted), 0.0)
            moved = tl.where(lane_total > 0, lane_total * (lane_max - new_max), 0.0)
            lane_weighted = rescale * (lane_weighted + moved) + weight * shifted
            lane_total = rescale * lane_total + weight
        lane_max = new_max
    # The maximum is always kept (it is >= the threshold), so it is the softmax shift of the kept set.
    row_max = tl.max(lane_max, 0)
    invalid = tl.max(lane_invalid, 0) > 0
    n = tl.where(invalid, 0, n)  # NaN/+inf: the entropy is NaN whatever the other passes find

    # Radix select: `target` collects the threshold's key digit by digit (lower digits still 0), `rank` is the
    # 0-based rank of the threshold among the elements that share the digits found so far.
    rank = num_removed
    target = 0
    done = num_removed < 0  # a False scalar: set once the float32 select finished on the candidate buffer
    total = tl.zeros([BLOCK], dtype=tl.float32).sum(0)
    weighted = total
    threshold = total
    if SELECT:
        digit, rank = _select_digit(hist, rank)
        target = (digit - 128) << (KEY_BITS - 8)
        if KEY_BITS == 32:
            hist = _digit_histogram(row_ptr, n, stride_col, target, 16, KEY_BITS, COL_CONTIGUOUS, BLOCK)
            digit, rank = _select_digit(hist, rank)
            target = target | (digit << 16)
            # The elements that share the threshold's top 16 bits are usually ~0.1-0.3% of a row. When they are
            # few, the next pass copies them to a per-row buffer (each lane of the block to its own column of
            # CANDIDATE_DEPTH slots: no communication between threads) and the select finishes there. Otherwise
            # (heavy ties, quantised logits, or one lane with too many), one more digit pass over the row, then the
            # last pass as for 16-bit keys.
            if tl.sum(tl.where(bins == digit, hist, 0), 0) <= CANDIDATES:
                total, weighted, threshold, done = _softmax_and_candidates(
                    row_ptr,
                    n,
                    stride_col,
                    candidates_ptr + row.to(tl.int64) * (CANDIDATE_DEPTH * BLOCK),
                    target,
                    rank,
                    row_max,
                    COL_CONTIGUOUS,
                    BLOCK,
                    CANDIDATE_DEPTH,
                )
            if not done:
                hist = _digit_histogram(row_ptr, n, stride_col, target, 8, KEY_BITS, COL_CONTIGUOUS, BLOCK)
                digit, rank = _select_digit(hist, rank)
                target = target | (digit << 8)

    # Last pass (unless the candidate buffer finished the select): sums of exp(z - max) and exp(z - max) (z - max)
    # over the elements certainly kept (above the threshold's 8-bit-wide bucket), one exponential each, and the
    # histogram of the last digit inside the bucket, whose elements' values are known from their bin.
    if not SELECT:
        lane_scale = tl.where(lane_total > 0, tl.exp(lane_max - row_max), 0.0)
        total = tl.sum(lane_total * lane_scale, 0)
        weighted = tl.sum(
            tl.where(lane_total > 0, lane_scale * (lane_weighted + lane_total * (lane_max - row_max)), 0.0), 0
        )
        threshold = total * 0.0 + neg_inf
    elif not done:
        lane_total = tl.zeros([BLOCK], dtype=tl.float32)
        lane_weighted = tl.zeros([BLOCK], dtype=tl.float32)
        last_hist = tl.zeros([256], dtype=tl.int32)
        bucket = target >> 8
        for start in range(0, n, BLOCK):
            cols = start + offsets
            in_bounds = cols < n
            x = _load_row_block(row_ptr, cols, in_bounds, stride_col, COL_CONTIGUOUS)
            z = x.to(tl.float32)
            key = _sorted_key(x, KEY_BITS)
            take = in_bounds & ((key >> 8) > bucket) & (z > neg_inf)
            last_hist += tl.histogram(key & 255, 256, mask=in_bounds & ((key >> 8) == bucket))
            shifted = tl.where(take, z - row_max, 0.0)
            weight = tl.where(take, tl.exp(shifted), 0.0)
            lane_total += weight
            lane_weighted += weight * shifted
        total = tl.sum(lane_total, 0)
        weighted = tl.sum(lane_weighted, 0)
        # Kept elements inside the bucket: every bin from the threshold's digit up; a bin's value is its key.
        last_digit, rank = _select_digit(last_hist, rank)
        threshold = _key_to_float(target | last_digit, KEY_BITS, IS_BF16)
        bin_values = _key_to_float(target | bins, KEY_BITS, IS_BF16)
        use = (bins >= last_digit) & (last_hist > 0) & (bin_values > neg_inf)
        bin_shifted = tl.where(use, bin_values - row_max, 0.0)
        bin_weight = tl.where(use, last_hist.to(tl.float32) * tl.exp(bin_shifted), 0.0)
        total += tl.sum(bin_weight, 0)
        weighted += tl.sum(bin_weight * bin_shifted, 0)

    valid = total > 0
    safe_total = tl.where(valid, total, 1.0)
    log_total = tl.log(safe_total)
    entropy = tl.where(valid, log_total - weighted / safe_total, 0.0)
    entropy = tl.where(invalid, float("nan"), entropy)
    # NaN threshold: no element passes `z >= threshold`, so the backward writes zeros for this row.
    threshold = tl.where(invalid | (~valid), float("nan"), threshold)
    tl.store(entropy_ptr + row, entropy)
    tl.store(threshold_ptr + row, threshold)
    tl.store(shift_ptr + row, tl.where(valid, row_max, 0.0))
    tl.store(log_total_ptr + row, log_total)


@triton.jit
def _clamped_entropy_backward_kernel(
    x_ptr,
    stride_row,
    stride_col,
    grad_ptr,
    grad_stride_row,
    vocab,
    grad_out_ptr,
    grad_out_stride,
    row_mask_ptr,
    entropy_ptr,
    threshold_ptr,
    shift_ptr,
    log_total_ptr,
    COL_CONTIGUOUS: tl.constexpr,
    HAS_ROW_MASK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = cols < vocab
    read = in_bounds
    if HAS_ROW_MASK:
        # A skipped row: no column is read, zeros are written.
        read = cols < tl.where(tl.load(row_mask_ptr + row) != 0, vocab, 0)
    row64 = row.to(tl.int64)
    z = _load_row_block(x_ptr + row64 * stride_row, cols, read, stride_col, COL_CONTIGUOUS).to(tl.float32)
    entropy = tl.load(entropy_ptr + row)
    threshold = tl.load(threshold_ptr + row)
    shift = tl.load(shift_ptr + row)
    log_total = tl.load(log_total_ptr + row)
    upstream = tl.load(grad_out_ptr + row64 * grad_out_stride).to(tl.float32)
    kept = read & (z >= threshold) & (z > float("-inf"))
    # (z - max) first: exact for nearby values, whereas max + log_total would round at the logits' magnitude.
    log_q = tl.where(kept, (z - shift) - log_total, 0.0)
    grad = tl.where(kept, -tl.exp(log_q) * (log_q + entropy) * upstream, 0.0)
    tl.store(grad_ptr + row64 * grad_stride_row + cols, grad.to(grad_ptr.dtype.element_ty), mask=in_bounds)


#: Whether the kernels were decorated in Triton's interpreter mode (``TRITON_INTERPRET=1`` at import): they then
#: run on CPU tensors, slowly.
INTERPRETED = not isinstance(_clamped_entropy_forward_kernel, triton.runtime.JITFunction)


def _check_rows(rows2d: torch.Tensor, k: int) -> None:
    if rows2d.dim() != 2:
        raise ValueError(f"clamped_entropy_rows expects a 2-D (rows, V) tensor, got shape {tuple(rows2d.shape)}")
    if rows2d.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"the fused kernels support float32, bfloat16 and float16 logits, got {rows2d.dtype}; "
            "use impl='torch' for other dtypes"
        )
    vocab = rows2d.shape[1]
    if vocab == 0:
        raise ValueError("logits has an empty vocabulary (last dimension is 0)")
    if not (0 <= k < vocab):
        raise ValueError(f"the number of removed tokens k must be in [0, V) = [0, {vocab}), got {k}")
    if rows2d.shape[0] >= 2**31:
        raise ValueError(f"at most 2**31 - 1 rows are supported, got {rows2d.shape[0]}")


def _on_device_of(tensor: torch.Tensor):
    """Launch on the tensor's GPU, not the current one (multi-GPU processes)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _row_statistics(rows2d: torch.Tensor, k: int, row_mask, config: _Config):
    rows, vocab = rows2d.shape
    stats = torch.empty((4, rows), dtype=torch.float32, device=rows2d.device)
    entropy, threshold, shift, log_total = stats.unbind(0)
    if rows > 0:
        key_bits = 32 if rows2d.dtype == torch.float32 else 16
        # Per-row candidate buffer of the float32 select; unused otherwise.
        if key_bits == 32 and k > 0:
            candidates = torch.empty(
                (rows, config.candidate_depth * config.forward_block), dtype=torch.float32, device=rows2d.device
            )
        else:
            candidates = entropy
        with _on_device_of(rows2d):
            _clamped_entropy_forward_kernel[(rows,)](
                rows2d,
                rows2d.stride(0),
                rows2d.stride(1),
                vocab,
                k,
                entropy if row_mask is None else row_mask.view(torch.uint8),
                candidates,
                entropy,
                threshold,
                shift,
                log_total,
                KEY_BITS=key_bits,
                IS_BF16=rows2d.dtype == torch.bfloat16,
                SELECT=k > 0,
                COL_CONTIGUOUS=rows2d.stride(1) == 1,
                HAS_ROW_MASK=row_mask is not None,
                BLOCK=config.forward_block,
                CANDIDATES=config.candidates,
                CANDIDATE_DEPTH=config.candidate_depth,
                num_warps=config.forward_warps,
            )
    return entropy, threshold, shift, log_total


class _Config(NamedTuple):
    forward_block: int
    forward_warps: int
    backward_block: int
    backward_warps: int
    candidates: int
    candidate_depth: int


class _FusedClampedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows2d: torch.Tensor, k: int, row_mask, config: _Config):
        entropy, threshold, shift, log_total = _row_statistics(rows2d, k, row_mask, config)
        ctx.save_for_backward(rows2d, row_mask, entropy, threshold, shift, log_total)
        ctx.config = config
        return entropy

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows2d, row_mask, entropy, threshold, shift, log_total = ctx.saved_tensors
        rows, vocab = rows2d.shape
        grad = torch.empty((rows, vocab), dtype=rows2d.dtype, device=rows2d.device)
        if rows > 0:
            block = ctx.config.backward_block
            with _on_device_of(rows2d):
                _clamped_entropy_backward_kernel[(rows, triton.cdiv(vocab, block))](
                    rows2d,
                    rows2d.stride(0),
                    rows2d.stride(1),
                    grad,
                    grad.stride(0),
                    vocab,
                    grad_out,
                    grad_out.stride(0),
                    entropy if row_mask is None else row_mask.view(torch.uint8),
                    entropy,
                    threshold,
                    shift,
                    log_total,
                    COL_CONTIGUOUS=rows2d.stride(1) == 1,
                    HAS_ROW_MASK=row_mask is not None,
                    BLOCK=block,
                    num_warps=ctx.config.backward_warps,
                )
        return grad, None, None, None


def clamped_entropy_rows(
    rows2d: torch.Tensor,
    k: int,
    *,
    forward_block: int | None = None,
    backward_block: int | None = None,
    forward_warps: int | None = None,
    backward_warps: int | None = None,
    candidates: int | None = None,
    candidate_depth: int | None = None,
    row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Clamped entropy in nats of each row of a ``(rows, V)`` tensor with the ``k`` lowest logits removed.

    Differentiable (gradients in ``rows2d.dtype``); float32 result; between forward and backward only four float32
    numbers per row are kept. ``rows2d`` may be non-contiguous. The tensors must be on a device Triton can launch
    on (CUDA, or the CPU under ``TRITON_INTERPRET=1``).

    Args:
        rows2d: float32, bfloat16 or float16 logits, shape ``(rows, V)``.
        k: number of removed tokens per row, ``floor(clamp_p * V)`` (:func:`aent.num_removed`), in ``[0, V)``.
        forward_block, backward_block: elements per block (powers of two, at least 256); defaults
            :data:`FORWARD_BLOCK` and :data:`BACKWARD_BLOCK` (environment ``AENT_TRITON_FORWARD_BLOCK`` /
            ``AENT_TRITON_BACKWARD_BLOCK``).
        forward_warps, backward_warps: warps per program (powers of two); defaults from
            ``AENT_TRITON_FORWARD_WARPS`` / ``AENT_TRITON_BACKWARD_WARPS``, else :data:`FORWARD_WARPS` /
            :data:`BACKWARD_WARPS`.
        candidates: size of the float32 select's per-row candidate buffer (power of two >= 16); default
            :data:`CANDIDATES` (``AENT_TRITON_CANDIDATES``). Rows whose threshold bucket holds more elements take
            one more pass over the row instead.
        candidate_depth: slots per lane of the candidate buffer (power of two); default :data:`CANDIDATE_DEPTH`
            (``AENT_TRITON_CANDIDATE_DEPTH``). A row where one lane of the block meets more candidates than that
            takes the extra pass as well.
        row_mask: optional bool tensor of shape ``(rows,)`` on the logits' device; rows where it is False are never
            read: their entropy is 0 and their gradient row is written as zeros.
    """
    _check_rows(rows2d, k)
    config = _Config(
        forward_block or FORWARD_BLOCK,
        forward_warps or FORWARD_WARPS,
        backward_block or BACKWARD_BLOCK,
        backward_warps or BACKWARD_WARPS,
        candidates or CANDIDATES,
        candidate_depth or CANDIDATE_DEPTH,
    )
    for name, value, low in zip(config._fields, config, (256, 1, 256, 1, 16, 1)):
        if value < low or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= {low}, got {value}")
    if triton.cdiv(rows2d.shape[1], config.backward_block) > 65535:
        raise ValueError(
            f"V = {rows2d.shape[1]} needs more than 65535 backward blocks of {config.backward_block}; "
            "raise backward_block"
        )
    if row_mask is not None:
        _check_row_mask(row_mask, rows2d)
    return _FusedClampedEntropy.apply(rows2d, int(k), row_mask, config)


def _check_row_mask(row_mask: torch.Tensor, rows2d: torch.Tensor) -> None:
    if row_mask.dtype != torch.bool or row_mask.shape != (rows2d.shape[0],):
        raise ValueError(
            f"row_mask must be a bool tensor of shape (rows,) = ({rows2d.shape[0]},), got {row_mask.dtype} of shape "
            f"{tuple(row_mask.shape)}; pass e.g. mask.reshape(-1).bool()"
        )
    if row_mask.device != rows2d.device:
        raise ValueError(
            f"row_mask is on {row_mask.device} but the logits are on {rows2d.device}; move it with "
            "row_mask.to(logits.device)"
        )
