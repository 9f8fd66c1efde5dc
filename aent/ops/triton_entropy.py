"""Fused Triton kernels for the clamped entropy (SPEC section 1; AEnt, arXiv 2509.03493, section 3).

Two launches per forward + backward, and only four float32 numbers per row kept in between:

Forward (one program per row)
    Exact per-row threshold by radix select on an order-preserving integer key of the logits' bits, with 8-bit
    digits: ``KEY_BITS / 8`` passes over the row (4 for float32, 2 for bfloat16/float16), each one a 256-bin
    histogram of the next digit among the elements whose higher digits match the threshold found so far. The last
    pass also accumulates the softmax statistics (running max, sum of exponentials, sum of ``q * (z - max)``) of
    every element strictly above the threshold's bucket; the elements inside that bucket differ only in the last
    digit, so their values are known from the bin index and their contribution is added from the histogram counts
    once the last digit of the threshold is known. A row with ``k = 0`` skips the selection: one pass.
Backward (a 2-D grid of row x column blocks)
    Reads the logits once and writes the gradient ``-q_a (log q_a + H) * grad_out`` once (0 off the kept set).

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

import torch
import triton
import triton.language as tl

__all__ = ["clamped_entropy_rows", "SUPPORTED_DTYPES", "FORWARD_BLOCK", "BACKWARD_BLOCK", "INTERPRETED"]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Elements per block (powers of two) and warps per program. The forward block is what one histogram call sees; for
# sm_90 the forward kernel needs ~80 registers per thread at 2048 x 8 warps (3 programs per multiprocessor) and
# ~180 at 4096 x 8 (1 program). Overridable for tuning without code changes (scripts/bench_entropy.py --fused-configs).
FORWARD_BLOCK = int(os.environ.get("AENT_TRITON_FORWARD_BLOCK", "2048"))
FORWARD_WARPS = int(os.environ.get("AENT_TRITON_FORWARD_WARPS", "8"))
BACKWARD_BLOCK = int(os.environ.get("AENT_TRITON_BACKWARD_BLOCK", "4096"))
BACKWARD_WARPS = int(os.environ.get("AENT_TRITON_BACKWARD_WARPS", "8"))


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
def _clamped_entropy_forward_kernel(
    x_ptr,
    stride_row,
    stride_col,
    vocab,
    num_removed,
    entropy_ptr,
    threshold_ptr,
    shift_ptr,
    log_total_ptr,
    KEY_BITS: tl.constexpr,
    IS_BF16: tl.constexpr,
    SELECT: tl.constexpr,
    COL_CONTIGUOUS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = x_ptr + row.to(tl.int64) * stride_row
    offsets = tl.arange(0, BLOCK)
    bins = tl.arange(0, 256)
    neg_inf = float("-inf")

    # Radix select: `target` collects the threshold's key digit by digit (lower digits still 0), `rank` is the
    # 0-based rank of the threshold among the elements that share the digits found so far.
    rank = num_removed
    target = 0
    if SELECT:
        for digit_pass in tl.static_range(KEY_BITS // 8 - 1):
            SHIFT = KEY_BITS - 8 * (digit_pass + 1)
            hist = tl.zeros([256], dtype=tl.int32)
            for start in range(0, vocab, BLOCK):
                cols = start + offsets
                in_bounds = cols < vocab
                key = _sorted_key(_load_row_block(row_ptr, cols, in_bounds, stride_col, COL_CONTIGUOUS), KEY_BITS)
                if digit_pass == 0:
                    match = in_bounds
                    digit = ((key >> SHIFT) & 255) ^ 128  # the top digit of the key read as unsigned
                else:
                    match = in_bounds & ((key >> (SHIFT + 8)) == (target >> (SHIFT + 8)))
                    digit = (key >> SHIFT) & 255
                num_match = tl.sum(match.to(tl.int32), 0)
                if num_match > 0:
                    # Unmatched elements are counted in bin 0 and taken out again: portable to Triton versions
                    # whose histogram has no mask argument.
                    hist += tl.histogram(tl.where(match, digit, 0), 256)
                    hist -= tl.where(bins == 0, BLOCK - num_match, 0)
            digit_found, rank = _select_digit(hist, rank)
            if digit_pass == 0:
                target = (digit_found - 128) << SHIFT
            else:
                target = target | (digit_found << SHIFT)

    # Last pass: softmax statistics per lane (online max), plus the histogram of the last digit inside the bucket.
    lane_max = tl.full([BLOCK], neg_inf, dtype=tl.float32)
    lane_total = tl.zeros([BLOCK], dtype=tl.float32)  # sum of exp(z - lane_max)
    lane_weighted = tl.zeros([BLOCK], dtype=tl.float32)  # sum of exp(z - lane_max) * (z - lane_max)
    lane_invalid = tl.zeros([BLOCK], dtype=tl.int32)  # NaN or +inf seen
    last_hist = tl.zeros([256], dtype=tl.int32)
    bucket = target >> 8
    for start in range(0, vocab, BLOCK):
        cols = start + offsets
        in_bounds = cols < vocab
        x = _load_row_block(row_ptr, cols, in_bounds, stride_col, COL_CONTIGUOUS)
        z = x.to(tl.float32)
        lane_invalid |= (in_bounds & ((z != z) | (z == float("inf")))).to(tl.int32)
        if SELECT:
            key = _sorted_key(x, KEY_BITS)
            key_bucket = key >> 8
            take = in_bounds & (key_bucket > bucket) & (z > neg_inf)
            in_bucket = in_bounds & (key_bucket == bucket)
            num_in_bucket = tl.sum(in_bucket.to(tl.int32), 0)
            if num_in_bucket > 0:
                last_hist += tl.histogram(tl.where(in_bucket, key & 255, 0), 256)
                last_hist -= tl.where(bins == 0, BLOCK - num_in_bucket, 0)
        else:
            take = in_bounds & (z > neg_inf)
        new_max = tl.where(take, tl.maximum(lane_max, z), lane_max)
        rescale = tl.where(lane_max == new_max, 1.0, tl.exp(lane_max - new_max))
        shifted = tl.where(take, z - new_max, 0.0)
        weight = tl.where(take, tl.exp(shifted), 0.0)
        moved = tl.where(lane_total > 0, lane_total * (lane_max - new_max), 0.0)
        lane_weighted = rescale * (lane_weighted + moved) + weight * shifted
        lane_total = rescale * lane_total + weight
        lane_max = new_max

    # Combine the lanes.
    row_max = tl.max(lane_max, 0)
    lane_scale = tl.where(lane_total > 0, tl.exp(lane_max - row_max), 0.0)
    total = tl.sum(lane_total * lane_scale, 0)
    weighted = tl.sum(
        tl.where(lane_total > 0, lane_scale * (lane_weighted + lane_total * (lane_max - row_max)), 0.0), 0
    )

    if SELECT:
        last_digit, rank = _select_digit(last_hist, rank)
        threshold = _key_to_float(target | last_digit, KEY_BITS, IS_BF16)
        # Kept elements inside the bucket: every bin from the threshold's digit up; a bin's value is its key.
        bin_values = _key_to_float(target | bins, KEY_BITS, IS_BF16)
        use = (bins >= last_digit) & (last_hist > 0) & (bin_values > neg_inf)
        bucket_max = tl.max(tl.where(use, bin_values, neg_inf), 0)
        new_row_max = tl.maximum(row_max, bucket_max)
        rescale_row = tl.where(total > 0, tl.exp(row_max - new_row_max), 0.0)
        moved_row = tl.where(total > 0, total * (row_max - new_row_max), 0.0)
        weighted = rescale_row * (weighted + moved_row)
        total = rescale_row * total
        bin_shifted = tl.where(use, bin_values - new_row_max, 0.0)
        bin_weight = tl.where(use, last_hist.to(tl.float32) * tl.exp(bin_shifted), 0.0)
        total += tl.sum(bin_weight, 0)
        weighted += tl.sum(bin_weight * bin_shifted, 0)
        row_max = new_row_max
    else:
        threshold = neg_inf

    valid = total > 0
    safe_total = tl.where(valid, total, 1.0)
    log_total = tl.log(safe_total)
    entropy = tl.where(valid, log_total - weighted / safe_total, 0.0)
    invalid = tl.max(lane_invalid, 0) > 0
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
    entropy_ptr,
    threshold_ptr,
    shift_ptr,
    log_total_ptr,
    COL_CONTIGUOUS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = cols < vocab
    row64 = row.to(tl.int64)
    z = _load_row_block(x_ptr + row64 * stride_row, cols, in_bounds, stride_col, COL_CONTIGUOUS).to(tl.float32)
    entropy = tl.load(entropy_ptr + row)
    threshold = tl.load(threshold_ptr + row)
    shift = tl.load(shift_ptr + row)
    log_total = tl.load(log_total_ptr + row)
    upstream = tl.load(grad_out_ptr + row64 * grad_out_stride).to(tl.float32)
    kept = in_bounds & (z >= threshold) & (z > float("-inf"))
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


def _row_statistics(rows2d: torch.Tensor, k: int, block: int, num_warps: int):
    rows, vocab = rows2d.shape
    stats = torch.empty((4, rows), dtype=torch.float32, device=rows2d.device)
    entropy, threshold, shift, log_total = stats.unbind(0)
    if rows > 0:
        with _on_device_of(rows2d):
            _launch_forward(rows2d, k, block, num_warps, entropy, threshold, shift, log_total)
    return entropy, threshold, shift, log_total


def _launch_forward(rows2d, k, block, num_warps, entropy, threshold, shift, log_total):
    _clamped_entropy_forward_kernel[(rows2d.shape[0],)](
        rows2d,
        rows2d.stride(0),
        rows2d.stride(1),
        rows2d.shape[1],
        k,
        entropy,
        threshold,
        shift,
        log_total,
        KEY_BITS=32 if rows2d.dtype == torch.float32 else 16,
        IS_BF16=rows2d.dtype == torch.bfloat16,
        SELECT=k > 0,
        COL_CONTIGUOUS=rows2d.stride(1) == 1,
        BLOCK=block,
        num_warps=num_warps,
    )


class _FusedClampedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows2d: torch.Tensor, k: int, config: tuple):
        forward_block, forward_warps, backward_block, backward_warps = config
        entropy, threshold, shift, log_total = _row_statistics(rows2d, k, forward_block, forward_warps)
        ctx.save_for_backward(rows2d, entropy, threshold, shift, log_total)
        ctx.backward_config = (backward_block, backward_warps)
        return entropy

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows2d, entropy, threshold, shift, log_total = ctx.saved_tensors
        rows, vocab = rows2d.shape
        grad = torch.empty((rows, vocab), dtype=rows2d.dtype, device=rows2d.device)
        if rows > 0:
            block, num_warps = ctx.backward_config
            with _on_device_of(rows2d):
                _launch_backward(rows2d, grad, grad_out, entropy, threshold, shift, log_total, block, num_warps)
        return grad, None, None


def _launch_backward(rows2d, grad, grad_out, entropy, threshold, shift, log_total, block, num_warps):
    rows, vocab = rows2d.shape
    _clamped_entropy_backward_kernel[(rows, triton.cdiv(vocab, block))](
        rows2d,
        rows2d.stride(0),
        rows2d.stride(1),
        grad,
        grad.stride(0),
        vocab,
        grad_out,
        grad_out.stride(0),
        entropy,
        threshold,
        shift,
        log_total,
        COL_CONTIGUOUS=rows2d.stride(1) == 1,
        BLOCK=block,
        num_warps=num_warps,
    )


def clamped_entropy_rows(
    rows2d: torch.Tensor,
    k: int,
    *,
    forward_block: int | None = None,
    backward_block: int | None = None,
    forward_warps: int | None = None,
    backward_warps: int | None = None,
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
            ``AENT_TRITON_FORWARD_WARPS`` / ``AENT_TRITON_BACKWARD_WARPS``, else 8.
    """
    _check_rows(rows2d, k)
    config = (
        forward_block or FORWARD_BLOCK,
        forward_warps or FORWARD_WARPS,
        backward_block or BACKWARD_BLOCK,
        backward_warps or BACKWARD_WARPS,
    )
    for name, value, low in zip(
        ("forward_block", "forward_warps", "backward_block", "backward_warps"), config, (256, 1, 256, 1)
    ):
        if value < low or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= {low}, got {value}")
    if triton.cdiv(rows2d.shape[1], config[2]) > 65535:
        raise ValueError(
            f"V = {rows2d.shape[1]} needs more than 65535 backward blocks of {config[2]}; raise backward_block"
        )
    return _FusedClampedEntropy.apply(rows2d, int(k), config)
