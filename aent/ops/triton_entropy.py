"""Fused Triton kernels for the restricted entropies: the rank rules (the clamp of docs/METHOD.md, "Clamped entropy";
AEnt, arXiv 2509.03493, section 3; top_k) and the nucleus.

Two launches per forward + backward, and only four float32 numbers per row kept in between:

Forward (one program per row)
    The threshold (the element of rank ``k``, docs/METHOD.md's ``t``) is found without a histogram of the whole row: counting
    against a few values is a compare and an add per element, whereas ``tl.histogram`` under Triton 3.7.1 (the
    version torch 2.13 pins) costs ~75 instructions per element, far more than streaming the element.

    * Sample: 2048 elements (runs of one 32-byte sector spread over the row). Bisection on their keys' top 16 bits
      gives two values ``lo`` and ``hi`` that hold the sample's rank ``k/V x 2048 -/+ (3 sigma + 2)``; ``PIVOTS``
      values (8 for float32, 6 for 16-bit types) run evenly from ``lo`` to ``hi``.
    * Pass 1 reads the row once for its maximum (the softmax shift: the maximum is always kept), the NaN/+inf flag
      and, per pivot, the number of elements below it. The threshold then lies in ``[pivot j, pivot j + 1)`` for the
      last ``j`` with ``below[j] <= k``, which holds ~0.9% of a typical row.
    * Pass 2 sums ``exp(z - max)`` and ``exp(z - max) (z - max)`` over the elements ``>= pivot j + 1`` (all kept, one
      exponential each) and lists the 16-byte runs of the row that hold an element of the interval: each lane of the
      block writes the first column of such a run to its own slots (one store per run, no communication between
      threads). The listed runs are gathered again and their interval elements packed, the threshold is found on
      them by bisection of the keys (one block-wide count per bit), and the kept ones added. Two passes over the row
      in every dtype.
    * Fallback, decided per row and exact either way: when the sample missed (``k`` outside the pivots' counts),
      the interval holds more than ``CANDIDATES`` elements (heavy ties, quantised logits) or one lane met more than
      ``CANDIDATE_DEPTH`` runs holding one, a radix select with 8-bit digits (a 256-bin ``tl.histogram`` of the next digit among the
      elements whose higher digits match, one pass per digit), then a last pass that sums the softmax terms above
      the threshold's 8-bit-wide bucket and histograms the last digit inside it (those elements' values are known
      from their bin). Three or four passes more for float32, one or two for 16-bit keys.
    * A row with ``k = 0`` skips the selection: one pass (online max for the softmax sums).
Backward (a 2-D grid of row x column blocks)
    Reads the logits once and writes the gradient ``-q_a (log q_a + H) * grad_out`` once (0 off the kept set).

Nucleus (``top_p``, :func:`nucleus_entropy_rows`): the same statistics from :func:`_nucleus_entropy_forward_kernel`,
which selects the threshold by probability mass (a max-and-sum pass, refinement passes that sum ``exp(z - max)`` and
count elements per pivot, then pass 2 above choosing by mass); the backward above is shared.

Rows where the optional ``row_mask`` is False are not read by either kernel: entropy 0, gradient row 0.

Row layout: every pass reads a row's elements from its first 16-byte boundary on in whole 16-byte runs (one vector
load each), and the elements before that boundary and after the last one as two masked edge runs (``_row_split``).
So ``V``, the row stride and the tensor's offset need not be multiples of 16 bytes for the loads (and the backward's
stores) to be vectorised. A row's sums are therefore split at its 16-byte boundaries: the same row at another offset
in memory may give results that differ in the last bit.

Key mapping: the float's bits ``b`` read as a signed integer, and ``b ^ 0x7FF..F`` for negative ``b`` (flip the
magnitude bits), orders exactly like the floats, with ``-inf`` below every finite value. ``-0.0`` is mapped to
``+0.0`` first so that keys are equal exactly when the floats compare equal: the tie rule of docs/METHOD.md (keep every token
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
import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

__all__ = [
    "clamped_entropy_rows",
    "forward_passes",
    "nucleus_entropy_rows",
    "nucleus_forward_passes",
    "SUPPORTED_DTYPES",
    "FORWARD_BLOCK",
    "BACKWARD_BLOCK",
    "INTERPRETED",
]

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Elements per block (powers of two) and warps per program. Registers, spills and programs per multiprocessor depend
# on the Triton version and the target: scripts/kernel_cost.py compiles the kernels and writes them to
# benchmarks/kernel_cost.csv (docs/PERFORMANCE.md has the table). Overridable for tuning without code changes
# (scripts/bench_entropy.py --fused-configs). The forward block defaults to FORWARD_BLOCK_BYTES of logits (2048
# float32 or 4096 bfloat16/float16 elements), so that a program has the same bytes in flight in every dtype.
FORWARD_BLOCK_BYTES = 8192
FORWARD_BLOCK = None  # None: FORWARD_BLOCK_BYTES of logits
FORWARD_WARPS = 8
BACKWARD_BLOCK = 4096
BACKWARD_WARPS = 8
# The select: PIVOTS values from a sample of SAMPLE elements split the row in pass 1; the interval that holds the
# threshold is finished in pass 2 on a per-row buffer when it holds at most CANDIDATES elements and no lane of the
# block (a 16-byte run per iteration) meets more than CANDIDATE_DEPTH runs with one. The buffer is CANDIDATE_DEPTH x
# lanes int32 slots (the runs) plus CANDIDATES float32 slots (the candidates) per row: 48 KB at the defaults in every
# dtype (8% of the float32 logits at V = 151,936, 16% of bfloat16), freed before the backward allocates the gradient.
SAMPLE = 2048
PIVOTS = {4: 8, 2: 6}  # by element size: fewer in 16-bit types, whose pass 1 has half the time per element
CANDIDATES = 4096
CANDIDATE_DEPTH = 16
# The nucleus select: values that split the threshold's interval per refinement pass, by element size.
NUCLEUS_PIVOTS = {4: 8, 2: 4}
#: Environment variables that override the defaults above (read at each call, not at import), by config field.
ENVIRONMENT = {
    "forward_block": "AENT_TRITON_FORWARD_BLOCK",
    "forward_warps": "AENT_TRITON_FORWARD_WARPS",
    "backward_block": "AENT_TRITON_BACKWARD_BLOCK",
    "backward_warps": "AENT_TRITON_BACKWARD_WARPS",
    "candidates": "AENT_TRITON_CANDIDATES",
    "candidate_depth": "AENT_TRITON_CANDIDATE_DEPTH",
}


def _from_environment(field: str, default):
    """The integer in the environment variable of config ``field`` (:data:`ENVIRONMENT`), else ``default``."""
    name = ENVIRONMENT[field]
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"environment variable {name} must be an integer (a power of two), got {text!r}; unset it to use the "
            "default"
        ) from None


LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x log2(e)); exp2 is one instruction


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
def _load_row_block(row_ptr, cols, in_bounds, stride_col, COL_CONTIGUOUS: tl.constexpr, other=0.0):
    if COL_CONTIGUOUS:
        x = tl.load(row_ptr + cols, mask=in_bounds, other=other)
    else:
        x = tl.load(row_ptr + cols.to(tl.int64) * stride_col, mask=in_bounds, other=other)
    return x


@triton.jit
def _row_split(row_ptr, n, COL_CONTIGUOUS: tl.constexpr, LANE_WIDTH: tl.constexpr):
    """How every pass walks a row of ``n`` elements, whatever ``V``, the row stride and the tensor's offset: returns
    ``(base, head, end, tail)``.

    Columns are counted from ``base = row_ptr - head``, which is 16-byte aligned for contiguous columns (``head <
    LANE_WIDTH`` elements lie before the row's first 16-byte boundary), so the row is ``[head, head + n)``. The body
    ``[LANE_WIDTH, end)``, with ``end`` = ``head + n`` rounded down to ``LANE_WIDTH``, holds whole 16-byte runs: a
    pass reads it with one vector load per run (its masks are constant over runs). The two edge runs ``[0,
    LANE_WIDTH)`` and ``[tail, tail + LANE_WIDTH)``, ``tail = max(end, LANE_WIDTH)``, hold the rest of the row and
    are read once per pass with element masks (:func:`_edge_columns`)."""
    if COL_CONTIGUOUS:
        head = ((row_ptr.to(tl.int64) % 16) // (16 // LANE_WIDTH)).to(tl.int32)
        base = tl.multiple_of(row_ptr - head, 16)
    else:
        head = n * 0  # strided columns: no vector loads to align
        base = row_ptr
    end = (head + n) // LANE_WIDTH * LANE_WIDTH
    return base, head, end, tl.maximum(end, LANE_WIDTH)


@triton.jit
def _edge_columns(position, head, n, tail, LANE_WIDTH: tl.constexpr):
    """Columns (from ``base``) and mask of the two edge runs of :func:`_row_split`, laid on a block's positions:
    positions ``[0, LANE_WIDTH)`` the first run, ``[LANE_WIDTH, 2 LANE_WIDTH)`` the second, the others masked."""
    cols = tl.where(position < LANE_WIDTH, position, tail - LANE_WIDTH + position)
    return cols, (position < 2 * LANE_WIDTH) & (cols >= head) & (cols < head + n)


@triton.jit
def _edge_tile(base, head, n, tail, stride_col, other, COL_CONTIGUOUS: tl.constexpr, LANE_WIDTH: tl.constexpr):
    """The two edge runs as a ``(2, LANE_WIDTH)`` float32 tile, out-of-row elements read as ``other``: the first
    block of passes 1 and 2."""
    tile = tl.arange(0, 2)[:, None] * LANE_WIDTH + tl.arange(0, LANE_WIDTH)[None, :]
    cols, in_row = _edge_columns(tile, head, n, tail, LANE_WIDTH)
    return _load_row_block(base, cols, in_row, stride_col, COL_CONTIGUOUS, other).to(tl.float32)


@triton.jit
def _digit_counts(
    base,
    cols,
    in_bounds,
    stride_col,
    target,
    SHIFT: tl.constexpr,
    KEY_BITS: tl.constexpr,
    TOP: tl.constexpr,
    COL_CONTIGUOUS: tl.constexpr,
):
    key = _sorted_key(_load_row_block(base, cols, in_bounds, stride_col, COL_CONTIGUOUS), KEY_BITS)
    if TOP:
        hist = tl.histogram(((key >> SHIFT) & 255) ^ 128, 256, mask=in_bounds)
    else:
        match = in_bounds & ((key >> (SHIFT + 8)) == (target >> (SHIFT + 8)))
        hist = tl.histogram((key >> SHIFT) & 255, 256, mask=match)
    return hist


@triton.jit
def _digit_histogram(
    base,
    head,
    n,
    end,
    tail,
    stride_col,
    target,
    SHIFT: tl.constexpr,
    KEY_BITS: tl.constexpr,
    TOP: tl.constexpr,
    COL_CONTIGUOUS: tl.constexpr,
    BLOCK: tl.constexpr,
    LANE_WIDTH: tl.constexpr,
):
    """One pass over the row: 256-bin histogram of key digit ``(key >> SHIFT) & 255`` among the elements whose
    higher digits equal those of ``target``; with ``TOP`` the top digit of every element, read as unsigned."""
    edge_cols, edge = _edge_columns(tl.arange(0, 2 * LANE_WIDTH), head, n, tail, LANE_WIDTH)
    hist = _digit_counts(base, edge_cols, edge, stride_col, target, SHIFT, KEY_BITS, TOP, COL_CONTIGUOUS)
    offsets = tl.arange(0, BLOCK)
    for start in range(LANE_WIDTH, end, BLOCK):
        cols = start + offsets
        hist += _digit_counts(base, cols, cols < end, stride_col, target, SHIFT, KEY_BITS, TOP, COL_CONTIGUOUS)
    return hist


@triton.jit
def _nan_max(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _max_with_nan(z):
    """Maximum over axis 1 that returns NaN when any element is NaN (``tl.max`` drops NaNs)."""
    return tl.reduce(z, 1, _nan_max)


@triton.jit
def _count_below(u, valid, trial):
    """Number of valid elements of ``u`` below ``trial`` (one block-wide reduction)."""
    return tl.sum((valid & (u < trial)).to(tl.int32))


@triton.jit
def _sample_pivots(
    base,
    n,
    end,
    stride_col,
    num_removed,
    COL_CONTIGUOUS: tl.constexpr,
    LANE_WIDTH: tl.constexpr,
    SAMPLE_GROUPS: tl.constexpr,
    SAMPLE_GROUP: tl.constexpr,
    PIVOTS: tl.constexpr,
):
    """``PIVOTS`` non-decreasing float32 values that bracket the threshold with high probability, from a sample of
    ``SAMPLE_GROUPS`` runs of ``SAMPLE_GROUP`` contiguous elements (32 bytes each) spread over the body of the row
    (:func:`_row_split`; a row too short for a body gets an empty sample, and pivots that leave every element to
    the candidate buffer).

    The outer two are the sample's elements of rank ``k/n x S -/+ (3 sigma + 2)`` (binomial sigma), rounded down /
    up to a 16-bit key prefix, found by bisection on the sample (16 counting steps); the inner ones are spaced evenly
    in value between them. Only the counts of pass 1 decide anything, so any values here are correct; good ones
    make the threshold's interval small."""
    groups = tl.arange(0, SAMPLE_GROUPS)
    body = tl.maximum(end - LANE_WIDTH, 0)
    first = LANE_WIDTH + groups * (body // SAMPLE_GROUPS) // LANE_WIDTH * LANE_WIDTH  # whole 16-byte runs
    cols = first[:, None] + tl.arange(0, SAMPLE_GROUP)[None, :]
    valid = cols < end
    z = _load_row_block(base, cols, valid, stride_col, COL_CONTIGUOUS).to(tl.float32)
    prefix = (_sorted_key(z, 32) >> 16) + 32768  # the key's top 16 bits, read as unsigned: [0, 65536)
    count = tl.sum(tl.sum(valid.to(tl.int32), 1), 0)
    fraction = num_removed / tl.maximum(n, 1).to(tl.float32)
    expected = fraction * count.to(tl.float32)
    margin = 3.0 * tl.sqrt(expected * (1.0 - fraction)) + 2.0
    rank_lo = tl.floor(expected - margin).to(tl.int32)
    rank_hi = tl.ceil(expected + margin).to(tl.int32)
    # Largest prefix v with (elements with prefix < v) <= rank: the prefix of the element of that rank.
    v_lo = count * 0
    v_hi = count * 0
    for i in range(16):
        bit = 1 << (15 - i)
        v_lo = tl.where(_count_below(prefix, valid, v_lo + bit) <= rank_lo, v_lo + bit, v_lo)
        v_hi = tl.where(_count_below(prefix, valid, v_hi + bit) <= rank_hi, v_hi + bit, v_hi)
    lo = _key_to_float((v_lo - 32768) << 16, 32, False)  # the smallest value with that prefix
    lo = tl.where((rank_lo >= 0) & (lo == lo), lo, float("-inf"))
    hi = _key_to_float((tl.minimum(v_hi + 1, 0x7F80 + 32768) - 32768) << 16, 32, False)  # next prefix, at most +inf
    hi = tl.where(rank_hi < count, hi, float("inf"))
    finite = valid & (z > float("-inf")) & (z < float("inf"))
    low = tl.where(lo > float("-inf"), lo, tl.min(tl.where(finite, z, float("inf")), 0).min(0))
    top = tl.where(hi < float("inf"), hi, tl.max(tl.where(finite, z, float("-inf")), 0).max(0))
    spaced = (low <= top) & (low > float("-inf")) & (top < float("inf"))
    index = tl.arange(0, 8)  # PIVOTS <= 8 used; the others +inf (never below the threshold)
    inner = tl.minimum(tl.maximum(low + (top - low) * (index.to(tl.float32) / (PIVOTS - 1)), low), top)
    inner = tl.where(spaced, inner, hi)
    pivots = tl.where(index == 0, lo, tl.where(index == PIVOTS - 1, hi, inner))
    return tl.where(index < PIVOTS, pivots, float("inf"))


@triton.jit
def _pivot_counts(z, p0, p1, p2, p3, p4, p5, p6, p7, PIVOTS: tl.constexpr):
    """Pass 1's terms of a ``(lanes, LANE_WIDTH)`` tile: per lane the NaN-propagating maximum and, per pivot, the
    number of elements below it (float32: exact, a lane sees far fewer than 2^24 elements; zeros past ``PIVOTS``)."""
    c0 = tl.sum(tl.where(z < p0, 1.0, 0.0), 1)
    c1 = tl.sum(tl.where(z < p1, 1.0, 0.0), 1)
    c2 = tl.sum(tl.where(z < p2, 1.0, 0.0), 1)
    c3 = c0 * 0.0
    c4 = c3
    c5 = c3
    c6 = c3
    c7 = c3
    if PIVOTS > 3:
        c3 = tl.sum(tl.where(z < p3, 1.0, 0.0), 1)
    if PIVOTS > 4:
        c4 = tl.sum(tl.where(z < p4, 1.0, 0.0), 1)
    if PIVOTS > 5:
        c5 = tl.sum(tl.where(z < p5, 1.0, 0.0), 1)
    if PIVOTS > 6:
        c6 = tl.sum(tl.where(z < p6, 1.0, 0.0), 1)
    if PIVOTS > 7:
        c7 = tl.sum(tl.where(z < p7, 1.0, 0.0), 1)
    return _max_with_nan(z), c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _kept_terms(z, hi, row_max):
    """Pass 2's softmax terms of a ``(lanes, LANE_WIDTH)`` tile, per lane: sums of ``w = exp(z - max)`` and of ``w (z
    - max) log2(e)`` over the elements ``>= hi`` (all kept), with one ``exp2`` each."""
    take = z >= hi
    shifted = tl.where(take, (z - row_max) * LOG2E, 0.0)
    weight = tl.where(take, tl.math.exp2(shifted), 0.0)
    return tl.sum(weight, 1), tl.sum(weight * shifted, 1)


@triton.jit
def _pack_candidates(candidates_ptr, dense, z, lo, hi):
    """Stores the elements of ``[lo, hi)`` of a ``(runs, LANE_WIDTH)`` tile at ``candidates_ptr + dense`` on, in
    order; returns ``dense`` plus their number."""
    ones = ((z >= lo) & (z < hi)).to(tl.int32)
    per_run = tl.sum(ones, 1)
    position = dense + (tl.cumsum(per_run, 0) - per_run)[:, None] + tl.cumsum(ones, 1) - ones
    tl.store(candidates_ptr + position, z, mask=ones > 0)
    return dense + tl.sum(per_run, 0)


@triton.jit
def _softmax_and_candidates(
    base,
    head,
    n,
    end,
    tail,
    stride_col,
    buffer_ptr,
    lo,
    hi,
    rank,
    target,
    row_max,
    COL_CONTIGUOUS: tl.constexpr,
    LANES: tl.constexpr,
    LANE_WIDTH: tl.constexpr,
    DEPTH: tl.constexpr,
    CANDIDATES: tl.constexpr,
    MASS: tl.constexpr,
):
    """Pass 2: softmax sums over the elements ``>= hi`` (all kept), and a list of the runs that hold elements of
    ``[lo, hi)``: the block is read as ``LANES`` runs of ``LANE_WIDTH`` contiguous elements (one vector load each),
    and lane ``r`` writes the first column of its ``i``-th such run to int32 slot ``i * LANES + r`` of ``buffer_ptr``
    (no communication between threads). Then the listed runs are gathered, their interval elements (the candidates)
    packed into the ``CANDIDATES`` float32 slots after the list (the edge runs' first, packed before the pass), the
    threshold (the candidate of 0-based ``rank``) found by bisection on their keys, and the kept candidates added.
    With ``MASS`` (the nucleus) the threshold is instead the largest candidate ``t`` whose elements ``>= t`` (the
    candidates and every element ``>= hi``) carry a sum of ``exp(z - max)`` of at least ``target``; ``rank`` unused.
    Returns (sum of weights, sum of weight x shifted value, threshold, whether the list fit)."""
    lanes = tl.arange(0, LANES)
    tile = lanes[:, None] * LANE_WIDTH + tl.arange(0, LANE_WIDTH)[None, :]
    candidates_ptr = (buffer_ptr + DEPTH * LANES).to(tl.pointer_type(tl.float32), bitcast=True)
    # hi > -inf here (below[j + 1] > k >= 0 elements lie below it), so `z >= hi` keeps -inf out; out-of-row elements
    # read as NaN, which no comparison passes.
    edge_z = _edge_tile(base, head, n, tail, stride_col, float("nan"), COL_CONTIGUOUS, LANE_WIDTH)
    edge_total, edge_weighted = _kept_terms(edge_z, hi, row_max)  # the weighted sums in log2 units
    dense = _pack_candidates(candidates_ptr, n * 0, edge_z, lo, hi)
    lane_total = tl.zeros([LANES], dtype=tl.float32)
    lane_weighted = tl.zeros([LANES], dtype=tl.float32)
    lane_count = tl.zeros([LANES], dtype=tl.int32)
    for start in range(LANE_WIDTH, end, LANES * LANE_WIDTH):
        cols = start + tile
        z = _load_row_block(base, cols, cols < end, stride_col, COL_CONTIGUOUS, float("nan")).to(tl.float32)
        # A lane that meets a candidate lists its run's first column (one store per run, not per candidate) in its
        # next depth slot; past DEPTH the slots wrap around (the row then falls back, so they are never read).
        hit = tl.max(((z >= lo) & (z < hi)).to(tl.int32), 1)
        tl.store(buffer_ptr + (lane_count & (DEPTH - 1)) * LANES + lanes, start + lanes * LANE_WIDTH, mask=hit > 0)
        lane_count += hit
        block_total, block_weighted = _kept_terms(z, hi, row_max)
        lane_total += block_total
        lane_weighted += block_weighted
    # Compact the list in place, one depth row at a time: slot (d, r) moves to the number of listed runs before it
    # in row-major order, at most d * LANES + r, so no unread slot is overwritten. Then gather the listed runs again,
    # 2048 elements at a time, and pack their candidates after the edge runs' (each interval element lies in
    # exactly one listed run or an edge run, so there are at most CANDIDATES runs and exactly `inside` candidates).
    used = tl.max(lane_count, 0)
    fits = used <= DEPTH
    used = tl.where(fits, used, 0)  # nothing is read back when a lane overflowed
    tl.debug_barrier()  # the list was written by every thread of the program; read it back after all did
    runs = used * 0
    for d in tl.static_range(DEPTH):
        if d < used:
            listed = d < lane_count
            first = tl.load(buffer_ptr + d * LANES + lanes, mask=listed, cache_modifier=".cg")
            ones = listed.to(tl.int32)
            tl.debug_barrier()  # every thread read row d before any overwrites it
            tl.store(buffer_ptr + runs + tl.cumsum(ones, 0) - ones, first, mask=listed)
            runs += tl.sum(ones, 0)
    tl.debug_barrier()
    GATHER: tl.constexpr = 2048 // LANE_WIDTH  # runs gathered at once: 2048 elements
    runs_at_once = tl.arange(0, GATHER)
    for chunk in tl.static_range(0, CANDIDATES, GATHER):
        if chunk < runs:
            listed = chunk + runs_at_once < runs
            first = tl.load(buffer_ptr + chunk + runs_at_once, mask=listed, other=0, cache_modifier=".cg")
            run_cols = tl.multiple_of(first, LANE_WIDTH)[:, None] + tl.arange(0, LANE_WIDTH)[None, :]
            gathered = _load_row_block(
                base, run_cols, listed[:, None] & (run_cols < end), stride_col, COL_CONTIGUOUS, float("nan")
            )
            dense = _pack_candidates(candidates_ptr, dense, gathered.to(tl.float32), lo, hi)
    tl.debug_barrier()
    slots = tl.arange(0, CANDIDATES)
    filled = slots < dense
    # Keys relative to lo's, as unsigned: every candidate's lies in [0, span) with span = key(hi) - key(lo).
    key_lo = _sorted_key(lo, 32).to(tl.uint32, bitcast=True)
    span = _sorted_key(hi, 32).to(tl.uint32, bitcast=True) - key_lo
    cz = tl.load(candidates_ptr + slots, mask=filled, other=0.0, cache_modifier=".cg")
    offset = _sorted_key(cz, 32).to(tl.uint32, bitcast=True) - key_lo
    bits = tl.arange(0, 32).to(tl.uint32)
    num_bits = tl.sum(((span >> bits) != 0).to(tl.int32), 0)
    found = span * 0
    if MASS:
        # Largest v with (mass of the candidates at or above v) + (mass above hi) >= target: a candidate's offset.
        cw = tl.where(filled, tl.math.exp2((cz - row_max) * LOG2E), 0.0)
        above = tl.sum(lane_total, 0) + tl.sum(edge_total, 0)
        for i in range(num_bits):
            trial = found + (span * 0 + 1 << (num_bits - 1 - i).to(tl.uint32))
            mass = above + tl.sum(tl.where(offset >= trial, cw, 0.0), 0)
            found = tl.where(mass >= target, trial, found)
    else:
        # Largest v with (candidates below v) <= rank: the offset of the candidate of that rank.
        for i in range(num_bits):
            trial = found + (span * 0 + 1 << (num_bits - 1 - i).to(tl.uint32))
            found = tl.where(_count_below(offset, filled, trial) <= rank, trial, found)
    cz = tl.load(candidates_ptr + slots, mask=filled, other=0.0, cache_modifier=".cg")  # again: fewer live registers
    kept = filled & (offset >= found) & (cz > float("-inf"))
    shifted = tl.where(kept, (cz - row_max) * LOG2E, 0.0)
    weight = tl.where(kept, tl.math.exp2(shifted), 0.0)
    total = tl.sum(lane_total, 0) + tl.sum(edge_total, 0) + tl.sum(weight, 0)
    weighted = (tl.sum(lane_weighted, 0) + tl.sum(edge_weighted, 0) + tl.sum(weight * shifted, 0)) / LOG2E
    threshold = _key_to_float((key_lo + found).to(tl.int32, bitcast=True), 32, False)
    return total, weighted, threshold, fits


@triton.jit
def _last_digit_terms(
    base, cols, in_bounds, stride_col, bucket, row_max, KEY_BITS: tl.constexpr, COL_CONTIGUOUS: tl.constexpr
):
    """The fallback's last pass on a block: ``exp(z - max)`` and ``exp(z - max) (z - max)`` of the elements above
    the threshold's bucket (0 elsewhere), and the histogram of the last key digit inside the bucket."""
    x = _load_row_block(base, cols, in_bounds, stride_col, COL_CONTIGUOUS)
    z = x.to(tl.float32)
    key = _sorted_key(x, KEY_BITS)
    take = in_bounds & ((key >> 8) > bucket) & (z > float("-inf"))
    hist = tl.histogram(key & 255, 256, mask=in_bounds & ((key >> 8) == bucket))
    shifted = tl.where(take, z - row_max, 0.0)
    weight = tl.where(take, tl.exp(shifted), 0.0)
    return weight, weight * shifted, hist


@triton.jit
def _online_softmax(
    lane_max, lane_invalid, lane_total, lane_weighted, base, cols, in_bounds, stride_col, COL_CONTIGUOUS: tl.constexpr
):
    """One block of the ``k = 0`` pass: per position the running max, NaN/+inf flag, sum of ``exp(z - max)`` and of
    ``exp(z - max) (z - max)``, rescaled when the max grows."""
    z = _load_row_block(base, cols, in_bounds, stride_col, COL_CONTIGUOUS).to(tl.float32)
    lane_invalid |= (in_bounds & ((z != z) | (z == float("inf")))).to(tl.int32)
    new_max = tl.maximum(lane_max, tl.where(in_bounds, z, float("-inf")))
    take = in_bounds & (z > float("-inf"))
    rescale = tl.where(lane_max == new_max, 1.0, tl.exp(lane_max - new_max))
    shifted = tl.where(take, z - new_max, 0.0)
    weight = tl.where(take, tl.exp(shifted), 0.0)
    moved = tl.where(lane_total > 0, lane_total * (lane_max - new_max), 0.0)
    lane_weighted = rescale * (lane_weighted + moved) + weight * shifted
    lane_total = rescale * lane_total + weight
    return new_max, lane_invalid, lane_total, lane_weighted


@triton.jit
def _full_softmax(
    base, head, n, end, tail, stride_col, COL_CONTIGUOUS: tl.constexpr, BLOCK: tl.constexpr, LANE_WIDTH: tl.constexpr
):
    """One pass over the row (the edge runs first): its maximum, NaN/+inf flag, and the sums of ``exp(z - max)`` and
    ``exp(z - max) (z - max)`` over its finite elements, kept per position with an online max."""
    neg_inf = float("-inf")
    offsets = tl.arange(0, BLOCK)
    cols, edge = _edge_columns(offsets, head, n, tail, LANE_WIDTH)
    lane_max, lane_invalid, lane_total, lane_weighted = _online_softmax(
        tl.full([BLOCK], neg_inf, dtype=tl.float32),
        tl.zeros([BLOCK], dtype=tl.int32),
        tl.zeros([BLOCK], dtype=tl.float32),
        tl.zeros([BLOCK], dtype=tl.float32),
        base,
        cols,
        edge,
        stride_col,
        COL_CONTIGUOUS,
    )
    for start in range(LANE_WIDTH, end, BLOCK):
        cols = start + offsets
        lane_max, lane_invalid, lane_total, lane_weighted = _online_softmax(
            lane_max, lane_invalid, lane_total, lane_weighted, base, cols, cols < end, stride_col, COL_CONTIGUOUS
        )
    row_max = tl.max(lane_max, 0)
    invalid = tl.max(lane_invalid, 0) > 0
    lane_scale = tl.where(lane_total > 0, tl.exp(lane_max - row_max), 0.0)
    total = tl.sum(lane_total * lane_scale, 0)
    weighted = tl.sum(
        tl.where(lane_total > 0, lane_scale * (lane_weighted + lane_total * (lane_max - row_max)), 0.0), 0
    )
    return row_max, invalid, total, weighted


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
    passes_ptr,
    KEY_BITS: tl.constexpr,
    IS_BF16: tl.constexpr,
    SELECT: tl.constexpr,
    COL_CONTIGUOUS: tl.constexpr,
    HAS_ROW_MASK: tl.constexpr,
    BLOCK: tl.constexpr,
    LANE_WIDTH: tl.constexpr,
    SAMPLE_GROUP: tl.constexpr,
    SAMPLE: tl.constexpr,
    PIVOTS: tl.constexpr,
    CANDIDATES: tl.constexpr,
    CANDIDATE_DEPTH: tl.constexpr,
):
    row = tl.program_id(0)
    bins = tl.arange(0, 256)
    neg_inf = float("-inf")
    n = vocab
    if HAS_ROW_MASK:
        n = tl.where(tl.load(row_mask_ptr + row) != 0, vocab, 0)  # a skipped row: no pass reads it
    base, head, end, tail = _row_split(x_ptr + row.to(tl.int64) * stride_row, n, COL_CONTIGUOUS, LANE_WIDTH)
    LANES: tl.constexpr = BLOCK // LANE_WIDTH
    # The fallback's passes read flat blocks of 4 elements per lane, BLOCK for float32 and BLOCK / 2 for 16-bit types:
    # their histograms and per-position sums at 8 elements per thread would need more than 128 registers.
    FALLBACK_BLOCK: tl.constexpr = LANES * 4

    total = tl.zeros([BLOCK], dtype=tl.float32).sum(0)
    weighted = total
    threshold = total
    rank = num_removed
    target = 0
    done = num_removed < 0  # a False scalar: set once the select finished on the candidate buffer
    passes = tl.where(n > 0, 1, 0)  # full passes over the row, reported for tests and benchmarks
    if SELECT:
        pivots = _sample_pivots(
            base,
            n,
            end,
            stride_col,
            num_removed,
            COL_CONTIGUOUS,
            LANE_WIDTH,
            SAMPLE // SAMPLE_GROUP,
            SAMPLE_GROUP,
            PIVOTS,
        )
        # Pass 1: row max, NaN/+inf flag and, per pivot, the number of elements below it. A block is read as
        # LANES x LANE_WIDTH (one vector load per lane, whose LANE_WIDTH elements one thread holds, so the sums
        # over them need no communication); the edge runs as a 2 x LANE_WIDTH tile before the body. Out-of-row
        # elements read as -inf and are taken off after the loop.
        tl.static_assert((PIVOTS >= 3) & (PIVOTS <= 8), "pass 1 keeps one counter per pivot, written out for 8")
        lanes = tl.arange(0, LANES)
        tile = lanes[:, None] * LANE_WIDTH + tl.arange(0, LANE_WIDTH)[None, :]
        index = tl.arange(0, 8)
        p0 = tl.max(tl.where(index == 0, pivots, neg_inf), 0)
        p1 = tl.max(tl.where(index == 1, pivots, neg_inf), 0)
        p2 = tl.max(tl.where(index == 2, pivots, neg_inf), 0)
        p3 = tl.max(tl.where(index == 3, pivots, neg_inf), 0)
        p4 = tl.max(tl.where(index == 4, pivots, neg_inf), 0)
        p5 = tl.max(tl.where(index == 5, pivots, neg_inf), 0)
        p6 = tl.max(tl.where(index == 6, pivots, neg_inf), 0)
        p7 = tl.max(tl.where(index == 7, pivots, neg_inf), 0)
        edge_z = _edge_tile(base, head, n, tail, stride_col, neg_inf, COL_CONTIGUOUS, LANE_WIDTH)
        edge_max, e0, e1, e2, e3, e4, e5, e6, e7 = _pivot_counts(edge_z, p0, p1, p2, p3, p4, p5, p6, p7, PIVOTS)
        lane_max = tl.full([LANES], neg_inf, dtype=tl.float32)
        c0 = tl.zeros([LANES], dtype=tl.float32)
        c1 = c0
        c2 = c0
        c3 = c0
        c4 = c0
        c5 = c0
        c6 = c0
        c7 = c0
        for start in range(LANE_WIDTH, end, BLOCK):
            cols = start + tile
            z = _load_row_block(base, cols, cols < end, stride_col, COL_CONTIGUOUS, neg_inf).to(tl.float32)
            block_max, d0, d1, d2, d3, d4, d5, d6, d7 = _pivot_counts(z, p0, p1, p2, p3, p4, p5, p6, p7, PIVOTS)
            lane_max = tl.maximum(lane_max, block_max, propagate_nan=tl.PropagateNan.ALL)
            c0 += d0
            c1 += d1
            c2 += d2
            if PIVOTS > 3:
                c3 += d3
            if PIVOTS > 4:
                c4 += d4
            if PIVOTS > 5:
                c5 += d5
            if PIVOTS > 6:
                c6 += d6
            if PIVOTS > 7:
                c7 += d7
        # (one use of the loop result: Triton 3.7.1 needs that)
        row_max = _nan_max(tl.reduce(lane_max, 0, _nan_max), tl.reduce(edge_max, 0, _nan_max))
        invalid = (row_max != row_max) | (row_max == float("inf"))
        below = tl.where(index == 0, tl.sum(c0, 0) + tl.sum(e0, 0), 0.0)
        below += tl.where(index == 1, tl.sum(c1, 0) + tl.sum(e1, 0), 0.0)
        below += tl.where(index == 2, tl.sum(c2, 0) + tl.sum(e2, 0), 0.0)
        below += tl.where(index == 3, tl.sum(c3, 0) + tl.sum(e3, 0), 0.0)
        below += tl.where(index == 4, tl.sum(c4, 0) + tl.sum(e4, 0), 0.0)
        below += tl.where(index == 5, tl.sum(c5, 0) + tl.sum(e5, 0), 0.0)
        below += tl.where(index == 6, tl.sum(c6, 0) + tl.sum(e6, 0), 0.0)
        below += tl.where(index == 7, tl.sum(c7, 0) + tl.sum(e7, 0), 0.0)
        # Elements read that are not in the row: the edge runs' and the body blocks', less the row.
        padding = 2 * LANE_WIDTH + tl.cdiv(tl.maximum(end - LANE_WIDTH, 0), BLOCK) * BLOCK - n
        below = below.to(tl.int32) - tl.where(pivots > neg_inf, padding, 0)
        below = tl.where(index < PIVOTS, below, n + 1)  # unused slots: above every rank
        n = tl.where(invalid, 0, n)  # NaN/+inf: the entropy is NaN whatever the other passes find
        end = tl.where(invalid, 0, end)

        # The threshold (the element of 0-based rank k) lies in [pivot j, pivot j + 1) for the last j with
        # below[j] <= k, unless the sample missed it (k outside [below[0], below[-1])).
        j = tl.sum((below <= num_removed).to(tl.int32), 0) - 1
        lo = tl.max(tl.where(index == j, pivots, neg_inf), 0)
        hi = tl.max(tl.where(index == j + 1, pivots, neg_inf), 0)
        below_lo = tl.sum(tl.where(index == j, below, 0), 0)
        inside = tl.sum(tl.where(index == j + 1, below, 0), 0) - below_lo
        if (j >= 0) & (j < PIVOTS - 1) & (inside <= CANDIDATES):
            passes += tl.where(n > 0, 1, 0)
            total, weighted, threshold, done = _softmax_and_candidates(
                base,
                head,
                n,
                end,
                tail,
                stride_col,
                candidates_ptr + row.to(tl.int64) * (CANDIDATE_DEPTH * LANES + CANDIDATES),
                lo,
                hi,
                num_removed - below_lo,
                0.0,
                row_max,
                COL_CONTIGUOUS,
                LANES,
                LANE_WIDTH,
                CANDIDATE_DEPTH,
                CANDIDATES,
                False,
            )
        # Fallback (the sample missed, heavy ties put too many elements in the interval, or one lane overflowed):
        # exact radix select, 8 bits per pass, each a 256-bin histogram of the next digit among the elements whose
        # higher digits match; then the last pass below.
        if not done:
            passes += tl.where(n > 0, KEY_BITS // 8, 0)  # the digit passes and the last pass
            for shift in tl.static_range(KEY_BITS - 8, 7, -8):  # the top digit (read as unsigned), then the others
                hist = _digit_histogram(
                    base,
                    head,
                    n,
                    end,
                    tail,
                    stride_col,
                    target,
                    shift,
                    KEY_BITS,
                    shift == KEY_BITS - 8,
                    COL_CONTIGUOUS,
                    FALLBACK_BLOCK,
                    LANE_WIDTH,
                )
                digit, rank = _select_digit(hist, rank)
                if shift == KEY_BITS - 8:
                    target = (digit - 128) << shift
                else:
                    target = target | (digit << shift)
    else:
        # k = 0: one pass, the softmax sums kept per position with an online max.
        row_max, invalid, total, weighted = _full_softmax(
            base, head, n, end, tail, stride_col, COL_CONTIGUOUS, BLOCK, LANE_WIDTH
        )
        threshold = total * 0.0 + neg_inf

    # Last pass of the fallback: sums of exp(z - max) and exp(z - max) (z - max) over the elements certainly kept
    # (above the threshold's 8-bit-wide bucket), one exponential each, and the histogram of the last digit inside
    # the bucket, whose elements' values are known from their bin. The edge runs first.
    if SELECT and not done:
        bucket = target >> 8
        last_edge_cols, last_edge = _edge_columns(tl.arange(0, 2 * LANE_WIDTH), head, n, tail, LANE_WIDTH)
        edge_total, edge_weighted, last_hist = _last_digit_terms(
            base, last_edge_cols, last_edge, stride_col, bucket, row_max, KEY_BITS, COL_CONTIGUOUS
        )
        positions = tl.arange(0, FALLBACK_BLOCK)
        lane_total = tl.zeros([FALLBACK_BLOCK], dtype=tl.float32)
        lane_weighted = tl.zeros([FALLBACK_BLOCK], dtype=tl.float32)
        for start in range(LANE_WIDTH, end, FALLBACK_BLOCK):
            last_cols = start + positions
            block_total, block_weighted, block_hist = _last_digit_terms(
                base, last_cols, last_cols < end, stride_col, bucket, row_max, KEY_BITS, COL_CONTIGUOUS
            )
            lane_total += block_total
            lane_weighted += block_weighted
            last_hist += block_hist
        total = tl.sum(lane_total, 0) + tl.sum(edge_total, 0)
        weighted = tl.sum(lane_weighted, 0) + tl.sum(edge_weighted, 0)
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
    tl.store(passes_ptr + row, passes.to(tl.float32))


@triton.jit
def _write_gradient(
    base,
    grad_base,
    cols,
    in_row,
    read,
    stride_col,
    threshold,
    shift,
    log_total,
    entropy,
    upstream,
    COL_CONTIGUOUS: tl.constexpr,
):
    z = _load_row_block(base, cols, read, stride_col, COL_CONTIGUOUS).to(tl.float32)
    kept = read & (z >= threshold) & (z > float("-inf"))
    # (z - max) first: exact for nearby values, whereas max + log_total would round at the logits' magnitude.
    log_q = tl.where(kept, (z - shift) - log_total, 0.0)
    grad = tl.where(kept, -tl.exp(log_q) * (log_q + entropy) * upstream, 0.0)
    tl.store(grad_base + cols, grad.to(grad_base.dtype.element_ty), mask=in_row)


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
    LANE_WIDTH: tl.constexpr,
):
    """Program (row, b) writes the gradient of the row's columns ``[b BLOCK, (b + 1) BLOCK)`` counted from the
    row's aligned base (:func:`_row_split`); program (row, 0) also writes the two edge runs. The gradient's rows start
    at the same offset from a 16-byte boundary as the logits' (see ``_empty_gradient``), so the stores are
    vectorised like the loads."""
    row = tl.program_id(0)
    row64 = row.to(tl.int64)
    base, head, end, tail = _row_split(x_ptr + row64 * stride_row, vocab, COL_CONTIGUOUS, LANE_WIDTH)
    grad_base = grad_ptr + row64 * grad_stride_row - head
    if COL_CONTIGUOUS:
        grad_base = tl.multiple_of(grad_base, 16)
    n = vocab  # columns read: none in a skipped row, whose gradient row is written as zeros
    if HAS_ROW_MASK:
        n = tl.where(tl.load(row_mask_ptr + row) != 0, vocab, 0)
    entropy = tl.load(entropy_ptr + row)
    threshold = tl.load(threshold_ptr + row)
    shift = tl.load(shift_ptr + row)
    log_total = tl.load(log_total_ptr + row)
    upstream = tl.load(grad_out_ptr + row64 * grad_out_stride).to(tl.float32)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    _write_gradient(
        base,
        grad_base,
        cols,
        (cols >= LANE_WIDTH) & (cols < end),
        (cols >= LANE_WIDTH) & (cols < tl.where(n > 0, end, 0)),
        stride_col,
        threshold,
        shift,
        log_total,
        entropy,
        upstream,
        COL_CONTIGUOUS,
    )
    if tl.program_id(1) == 0:
        position = tl.arange(0, 2 * LANE_WIDTH)
        edge_cols, edge = _edge_columns(position, head, vocab, tail, LANE_WIDTH)
        _write_gradient(
            base,
            grad_base,
            edge_cols,
            edge,
            _edge_columns(position, head, n, tail, LANE_WIDTH)[1],
            stride_col,
            threshold,
            shift,
            log_total,
            entropy,
            upstream,
            COL_CONTIGUOUS,
        )


# ----------------------------------------------------------------------------------------------------------------
# The nucleus (top_p) kernel: the threshold is selected by probability mass instead of by count.
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _dtype_key(x, KEY_BITS: tl.constexpr, IS_BF16: tl.constexpr):
    """Sorted key of ``x`` (a float32 holding a value of the input dtype) in the input dtype's key space."""
    if KEY_BITS == 32:
        key = _sorted_key(x, 32)
    elif IS_BF16:
        key = _sorted_key(x.to(tl.bfloat16), 16)
    else:
        key = _sorted_key(x.to(tl.float16), 16)
    return key


@triton.jit
def _round_down(x, KEY_BITS: tl.constexpr, IS_BF16: tl.constexpr):
    """The largest value of the input dtype ``<= x`` (a float32), as float32."""
    if KEY_BITS == 32:
        value = x
    else:
        if IS_BF16:
            near = x.to(tl.bfloat16)
        else:
            near = x.to(tl.float16)
        nearest = near.to(tl.float32)
        below = _key_to_float(_sorted_key(near, 16) - 1, 16, IS_BF16)
        value = tl.where(nearest > x, below, nearest)
    return value


@triton.jit
def _nucleus_pivots(lo, up, by_key, PIVOTS: tl.constexpr, KEY_BITS: tl.constexpr, IS_BF16: tl.constexpr):
    """``PIVOTS`` values of the input dtype from ``lo`` (the first) up to below ``up`` that split ``[lo, up)`` into
    ``PIVOTS`` intervals: evenly in value, or (``by_key``, or where value steps cannot split it) evenly in the
    dtype's key space: each interval then holds at most ``ceil(span / PIVOTS)`` keys, so such rounds end on a
    single key. Slots past ``PIVOTS`` are +inf."""
    index = tl.arange(0, 8)
    step = index.to(tl.float32) / PIVOTS
    in_value = _round_down(lo + (up - lo) * step, KEY_BITS, IS_BF16)
    in_value = tl.minimum(tl.where(in_value == in_value, tl.maximum(in_value, lo), lo), up)
    key_lo = _dtype_key(lo, KEY_BITS, IS_BF16)
    span = (_dtype_key(up, KEY_BITS, IS_BF16) - key_lo).to(tl.uint32, bitcast=True)
    part = index.to(tl.uint32)
    offset = span // PIVOTS * part + span % PIVOTS * part // PIVOTS
    in_key = _key_to_float(key_lo + offset.to(tl.int32, bitcast=True), KEY_BITS, IS_BF16)
    # In value space unless that cannot split the interval: pivots that coincide (a span of a few values of the
    # dtype) or a span beyond any row's (the restart from the lowest value).
    nxt = tl.max(tl.where(index[:, None] + 1 == index[None, :], in_value[None, :], float("-inf")), 1)
    nxt = tl.where(index + 1 < PIVOTS, nxt, up)  # the pivot after each, and up after the last
    collapsed = tl.max(((index < PIVOTS) & (nxt <= in_value)).to(tl.int32), 0) > 0
    by_key = by_key | collapsed | ((up - lo) > 1e30)
    pivots = tl.where(by_key, in_key, in_value)
    pivots = tl.where(index == 0, lo, pivots)
    return tl.where(index < PIVOTS, pivots, float("inf"))


@triton.jit
def _mass_term(z, w, pivot):
    """Per lane of a tile: the sum of ``w`` and the number of elements with ``z >= pivot`` (an indicator as float,
    one multiply-add and one add each)."""
    at_or_above = (z >= pivot).to(tl.float32)
    return tl.sum(at_or_above * w, 1), tl.sum(at_or_above, 1)


@triton.jit
def _mass_terms(z, w, p0, p1, p2, p3, p4, p5, p6, p7, PIVOTS: tl.constexpr):
    """A refinement pass's terms of a ``(lanes, LANE_WIDTH)`` tile, per lane and pivot: the sum of ``w = exp(z -
    max)`` and the number of elements ``>= pivot`` (float32 counts: exact, a lane sees far fewer than 2^24)."""
    m0, n0 = _mass_term(z, w, p0)
    m1, n1 = _mass_term(z, w, p1)
    m2 = m0 * 0.0
    n2 = m2
    m3 = m2
    n3 = m2
    m4 = m2
    n4 = m2
    m5 = m2
    n5 = m2
    m6 = m2
    n6 = m2
    m7 = m2
    n7 = m2
    if PIVOTS > 2:
        m2, n2 = _mass_term(z, w, p2)
    if PIVOTS > 3:
        m3, n3 = _mass_term(z, w, p3)
    if PIVOTS > 4:
        m4, n4 = _mass_term(z, w, p4)
    if PIVOTS > 5:
        m5, n5 = _mass_term(z, w, p5)
    if PIVOTS > 6:
        m6, n6 = _mass_term(z, w, p6)
    if PIVOTS > 7:
        m7, n7 = _mass_term(z, w, p7)
    return m0, n0, m1, n1, m2, n2, m3, n3, m4, n4, m5, n5, m6, n6, m7, n7


@triton.jit
def _pick(vector, index, i):
    return tl.sum(tl.where(index == i, vector, 0.0), 0)


@triton.jit
def _mass_pass(
    base,
    head,
    n,
    end,
    tail,
    stride_col,
    pivots,
    row_max,
    COL_CONTIGUOUS: tl.constexpr,
    LANES: tl.constexpr,
    LANE_WIDTH: tl.constexpr,
    PIVOTS: tl.constexpr,
):
    """A refinement pass of the nucleus select: per pivot, the sum of ``exp(z - max)`` over the row's elements ``>=
    pivot`` and their number (two length-8 vectors; slots past ``PIVOTS`` hold -1 and 0). One exponential per
    element and, per pivot, a compare, a multiply-add and an add. Out-of-row elements read as -inf (weight 0, below
    every pivot: the pivots are finite)."""
    neg_inf = float("-inf")
    index = tl.arange(0, 8)
    p0 = tl.max(tl.where(index == 0, pivots, neg_inf), 0)
    p1 = tl.max(tl.where(index == 1, pivots, neg_inf), 0)
    p2 = tl.max(tl.where(index == 2, pivots, neg_inf), 0)
    p3 = tl.max(tl.where(index == 3, pivots, neg_inf), 0)
    p4 = tl.max(tl.where(index == 4, pivots, neg_inf), 0)
    p5 = tl.max(tl.where(index == 5, pivots, neg_inf), 0)
    p6 = tl.max(tl.where(index == 6, pivots, neg_inf), 0)
    p7 = tl.max(tl.where(index == 7, pivots, neg_inf), 0)
    edge_z = _edge_tile(base, head, n, tail, stride_col, neg_inf, COL_CONTIGUOUS, LANE_WIDTH)
    edge_w = tl.math.exp2((edge_z - row_max) * LOG2E)
    e = _mass_terms(edge_z, edge_w, p0, p1, p2, p3, p4, p5, p6, p7, PIVOTS)
    lanes = tl.arange(0, LANES)
    tile = lanes[:, None] * LANE_WIDTH + tl.arange(0, LANE_WIDTH)[None, :]
    m0 = tl.zeros([LANES], dtype=tl.float32)
    n0 = m0
    m1 = m0
    n1 = m0
    m2 = m0
    n2 = m0
    m3 = m0
    n3 = m0
    m4 = m0
    n4 = m0
    m5 = m0
    n5 = m0
    m6 = m0
    n6 = m0
    m7 = m0
    n7 = m0
    for start in range(LANE_WIDTH, end, LANES * LANE_WIDTH):
        cols = start + tile
        z = _load_row_block(base, cols, cols < end, stride_col, COL_CONTIGUOUS, neg_inf).to(tl.float32)
        w = tl.math.exp2((z - row_max) * LOG2E)
        d = _mass_terms(z, w, p0, p1, p2, p3, p4, p5, p6, p7, PIVOTS)
        m0 += d[0]
        n0 += d[1]
        m1 += d[2]
        n1 += d[3]
        if PIVOTS > 2:
            m2 += d[4]
            n2 += d[5]
        if PIVOTS > 3:
            m3 += d[6]
            n3 += d[7]
        if PIVOTS > 4:
            m4 += d[8]
            n4 += d[9]
        if PIVOTS > 5:
            m5 += d[10]
            n5 += d[11]
        if PIVOTS > 6:
            m6 += d[12]
            n6 += d[13]
        if PIVOTS > 7:
            m7 += d[14]
            n7 += d[15]
    mass = tl.where(index == 0, tl.sum(m0, 0) + tl.sum(e[0], 0), 0.0)
    mass += tl.where(index == 1, tl.sum(m1, 0) + tl.sum(e[2], 0), 0.0)
    mass += tl.where(index == 2, tl.sum(m2, 0) + tl.sum(e[4], 0), 0.0)
    mass += tl.where(index == 3, tl.sum(m3, 0) + tl.sum(e[6], 0), 0.0)
    mass += tl.where(index == 4, tl.sum(m4, 0) + tl.sum(e[8], 0), 0.0)
    mass += tl.where(index == 5, tl.sum(m5, 0) + tl.sum(e[10], 0), 0.0)
    mass += tl.where(index == 6, tl.sum(m6, 0) + tl.sum(e[12], 0), 0.0)
    mass += tl.where(index == 7, tl.sum(m7, 0) + tl.sum(e[14], 0), 0.0)
    count = tl.where(index == 0, tl.sum(n0, 0) + tl.sum(e[1], 0), 0.0)
    count += tl.where(index == 1, tl.sum(n1, 0) + tl.sum(e[3], 0), 0.0)
    count += tl.where(index == 2, tl.sum(n2, 0) + tl.sum(e[5], 0), 0.0)
    count += tl.where(index == 3, tl.sum(n3, 0) + tl.sum(e[7], 0), 0.0)
    count += tl.where(index == 4, tl.sum(n4, 0) + tl.sum(e[9], 0), 0.0)
    count += tl.where(index == 5, tl.sum(n5, 0) + tl.sum(e[11], 0), 0.0)
    count += tl.where(index == 6, tl.sum(n6, 0) + tl.sum(e[13], 0), 0.0)
    count += tl.where(index == 7, tl.sum(n7, 0) + tl.sum(e[15], 0), 0.0)
    return tl.where(index < PIVOTS, mass, -1.0), tl.where(index < PIVOTS, count, 0.0)


@triton.jit
def _max_and_sum(
    base,
    head,
    n,
    end,
    tail,
    stride_col,
    COL_CONTIGUOUS: tl.constexpr,
    LANES: tl.constexpr,
    LANE_WIDTH: tl.constexpr,
):
    """The nucleus kernel's first pass: the row's NaN-propagating maximum and the sum of ``exp(z - max)``. Read as
    ``LANES`` runs of ``LANE_WIDTH`` elements (one vector load each, held by one thread); each lane keeps its own
    maximum and sum, rescaled once per block rather than per element (one exponential per element)."""
    neg_inf = float("-inf")
    lanes = tl.arange(0, LANES)
    tile = lanes[:, None] * LANE_WIDTH + tl.arange(0, LANE_WIDTH)[None, :]
    edge_z = _edge_tile(base, head, n, tail, stride_col, neg_inf, COL_CONTIGUOUS, LANE_WIDTH)
    edge_max = _max_with_nan(edge_z)
    edge_shift = tl.where(edge_max > neg_inf, edge_max, 0.0)
    edge_sum = tl.sum(tl.math.exp2((edge_z - edge_shift[:, None]) * LOG2E), 1)
    lane_max = tl.full([LANES], neg_inf, dtype=tl.float32)
    lane_sum = tl.zeros([LANES], dtype=tl.float32)
    for start in range(LANE_WIDTH, end, LANES * LANE_WIDTH):
        cols = start + tile
        z = _load_row_block(base, cols, cols < end, stride_col, COL_CONTIGUOUS, neg_inf).to(tl.float32)
        new_max = _nan_max(lane_max, _max_with_nan(z))
        shift = tl.where(new_max > neg_inf, new_max, 0.0)
        rescale = tl.where(new_max == lane_max, 1.0, tl.math.exp2((lane_max - shift) * LOG2E))
        lane_sum = lane_sum * rescale + tl.sum(tl.math.exp2((z - shift[:, None]) * LOG2E), 1)
        lane_max = new_max
    row_max = _nan_max(tl.reduce(lane_max, 0, _nan_max), tl.reduce(edge_max, 0, _nan_max))
    shift = tl.where(row_max > neg_inf, row_max, 0.0)
    total = tl.sum(tl.where(lane_sum > 0, lane_sum * tl.math.exp2((lane_max - shift) * LOG2E), 0.0), 0)
    total += tl.sum(tl.where(edge_sum > 0, edge_sum * tl.math.exp2((edge_max - shift) * LOG2E), 0.0), 0)
    invalid = (row_max != row_max) | (row_max == float("inf"))
    return row_max, invalid, total


@triton.jit
def _nucleus_entropy_forward_kernel(
    x_ptr,
    stride_row,
    stride_col,
    vocab,
    top_p,
    log_tail,
    row_mask_ptr,
    candidates_ptr,
    entropy_ptr,
    threshold_ptr,
    shift_ptr,
    log_total_ptr,
    passes_ptr,
    KEY_BITS: tl.constexpr,
    IS_BF16: tl.constexpr,
    COL_CONTIGUOUS: tl.constexpr,
    HAS_ROW_MASK: tl.constexpr,
    BLOCK: tl.constexpr,
    LANE_WIDTH: tl.constexpr,
    PIVOTS: tl.constexpr,
    CANDIDATES: tl.constexpr,
    CANDIDATE_DEPTH: tl.constexpr,
    ROUNDS: tl.constexpr,
):
    """Nucleus entropy of one row; writes the same four statistics as the rank kernel (the backward is shared).

    With ``w = exp(z - max)``, ``S`` the row's sum of ``w``, ``T = top_p S`` and ``M(v)`` the sum of ``w`` over the
    elements ``>= v``, the threshold is ``t = max{v in row : M(v) >= T}`` (the token at which the descending
    cumulative sum first reaches ``top_p``; every tie of it has ``z >= t``), and the kept set is ``z >= t``.

    * Pass 1: the row max, ``S`` and the NaN/+inf flag (:func:`_max_and_sum`).
    * ``t`` lies in ``[lo, up)`` with ``M(lo) >= T > M(up)``: first ``up`` = the value above the max and ``lo`` =
      ``max + log(S (1 - top_p) / V)`` less a margin (the elements ``<= t`` carry more than ``(1 - top_p) S``, each
      at most ``exp(t - max)``, so ``t`` is above that), rounded down to the input dtype.
    * Refinement passes: ``PIVOTS`` values split ``[lo, up)`` (evenly in value; in key space where that cannot split
      it, which ends on a single key); per pivot ``M`` and the element count give the interval that holds ``t``
      and its number of elements. Until it holds at most ``CANDIDATES`` elements, or a single value (then ``t = lo``).
    * Last pass: the rank kernel's pass 2 on ``[lo, up)``, choosing ``t`` among the candidates by mass instead of
      rank; it also gives the kept set's sums. If one lane met too many runs holding candidates, the interval is
      refined further (to an eighth of the candidates each time, so at most ``CANDIDATE_DEPTH`` in the end).

    Every decision is taken on sums computed the same way, so the result is the exact ``t`` of those float32 sums.
    ``ROUNDS`` bounds the loop and is above the most rounds any row can need."""
    row = tl.program_id(0)
    n = vocab
    if HAS_ROW_MASK:
        n = tl.where(tl.load(row_mask_ptr + row) != 0, vocab, 0)  # a skipped row: no pass reads it
    base, head, end, tail = _row_split(x_ptr + row.to(tl.int64) * stride_row, n, COL_CONTIGUOUS, LANE_WIDTH)
    LANES: tl.constexpr = BLOCK // LANE_WIDTH
    index = tl.arange(0, 8)
    row_max, invalid, full_total = _max_and_sum(base, head, n, end, tail, stride_col, COL_CONTIGUOUS, LANES, LANE_WIDTH)
    passes = tl.where(n > 0, 1, 0)
    target = top_p * full_total
    done = invalid | (full_total <= 0) | (n == 0)  # NaN/+inf, no finite element, or a skipped row
    safe_max = tl.where(done, 0.0, row_max)
    bound = safe_max + tl.log(tl.where(done, 1.0, full_total)) + log_tail
    lo = _round_down(bound - 1e-2 - 1e-5 * tl.abs(bound), KEY_BITS, IS_BF16)
    up = _key_to_float(_dtype_key(safe_max, KEY_BITS, IS_BF16) + 1, KEY_BITS, IS_BF16)
    lowest = _key_to_float(_dtype_key(safe_max * 0.0 - float("inf"), KEY_BITS, IS_BF16) + 1, KEY_BITS, IS_BF16)
    count_up = full_total * 0.0  # elements >= up (none above the max)
    lo = tl.maximum(lo, lowest)
    count = count_up + n  # at most this many elements in [lo, up) before the first refinement pass
    single = count < 0  # False: set when [lo, up) holds a single value of the dtype (then t = lo)
    limit = count * 0.0 + CANDIDATES
    ready = done | (count <= limit)  # a short row goes to the last pass at once
    total = full_total * 0.0
    weighted = total
    threshold = total
    buffer_ptr = candidates_ptr + row.to(tl.int64) * (CANDIDATE_DEPTH * LANES + CANDIDATES)
    for _ in range(ROUNDS):
        if not done:
            if ready:
                # t in [lo, up) among at most `limit` candidates, or a single value: t = lo, nothing to gather.
                passes += 1
                total, weighted, threshold, fits = _softmax_and_candidates(
                    base,
                    head,
                    n,
                    end,
                    tail,
                    stride_col,
                    buffer_ptr,
                    lo,
                    tl.where(single, lo, up),
                    0,
                    target,
                    row_max,
                    COL_CONTIGUOUS,
                    LANES,
                    LANE_WIDTH,
                    CANDIDATE_DEPTH,
                    CANDIDATES,
                    True,
                )
                done = fits
                limit = limit * 0.125
                ready = count <= limit
            else:
                passes += 1
                pivots = _nucleus_pivots(lo, up, False, PIVOTS, KEY_BITS, IS_BF16)
                mass, above = _mass_pass(
                    base, head, n, end, tail, stride_col, pivots, row_max, COL_CONTIGUOUS, LANES, LANE_WIDTH, PIVOTS
                )
                # The masses fall with the pivot (nested sets of non-negative terms summed in one order), so the
                # pivots that hold at least T are a prefix: t lies in [pivot j, pivot j + 1).
                j = tl.sum((mass >= target).to(tl.int32), 0) - 1
                if j < 0:  # rounding put t below lo (never seen): look again from the lowest finite value
                    up = lo
                    count_up = _pick(above, index, 0)
                    lo = lowest
                    count = count_up + n
                else:
                    next_up = tl.where(j + 1 < PIVOTS, _pick(pivots, index, j + 1), up)
                    count_next = tl.where(j + 1 < PIVOTS, _pick(above, index, j + 1), count_up)
                    lo = _pick(pivots, index, j)
                    count = _pick(above, index, j) - count_next
                    up = next_up
                    count_up = count_next
                keys = (_dtype_key(up, KEY_BITS, IS_BF16) - _dtype_key(lo, KEY_BITS, IS_BF16)).to(
                    tl.uint32, bitcast=True
                )
                single = keys <= 1
                ready = (count <= limit) | single

    valid = total > 0
    safe_total = tl.where(valid, total, 1.0)
    log_total = tl.log(safe_total)
    entropy = tl.where(valid, log_total - weighted / safe_total, 0.0)
    entropy = tl.where(invalid, float("nan"), entropy)
    threshold = tl.where(invalid | (~valid), float("nan"), threshold)
    tl.store(entropy_ptr + row, entropy)
    tl.store(threshold_ptr + row, threshold)
    tl.store(shift_ptr + row, tl.where(valid, row_max, 0.0))
    tl.store(log_total_ptr + row, log_total)
    tl.store(passes_ptr + row, passes.to(tl.float32))


#: Whether the kernels were decorated in Triton's interpreter mode (``TRITON_INTERPRET=1`` at import): they then
#: run on CPU tensors, slowly.
INTERPRETED = not isinstance(_clamped_entropy_forward_kernel, triton.runtime.JITFunction)


def _check_rows(rows2d: torch.Tensor, k) -> None:
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
    if k is not None and not (0 <= k < vocab):
        raise ValueError(f"the number of removed tokens k must be in [0, V) = [0, {vocab}), got {k}")
    if rows2d.shape[0] >= 2**31:
        raise ValueError(f"at most 2**31 - 1 rows are supported, got {rows2d.shape[0]}")


def _lane_width(rows2d: torch.Tensor) -> int:
    """Elements per 16-byte run: one vector load."""
    return 16 // rows2d.element_size()


def _backward_blocks(rows2d: torch.Tensor, block: int) -> int:
    """Column blocks per row of the backward grid: the row's columns counted from its aligned base reach at most
    ``V + LANE_WIDTH - 1`` (see ``_row_split``)."""
    return triton.cdiv(rows2d.shape[1] + _lane_width(rows2d) - 1, block)


def _empty_gradient(rows2d: torch.Tensor) -> torch.Tensor:
    """Uninitialised gradient of ``rows2d`` whose rows start at the same offset from a 16-byte boundary as the
    logits' rows, so that the backward splits both at the same columns and vectorises loads and stores alike.

    For contiguous columns the gradient is a view of a flat buffer: its storage offset matches the logits' address
    and its row stride their row stride modulo the run (at most ``LANE_WIDTH - 1`` unused elements per row). With
    ``V`` a multiple of 16 and aligned logits this is an ordinary contiguous tensor."""
    rows, vocab = rows2d.shape
    options = dict(dtype=rows2d.dtype, device=rows2d.device)
    if rows2d.stride(1) != 1 or rows == 0:
        return torch.empty((rows, vocab), **options)
    size = rows2d.element_size()
    lane = _lane_width(rows2d)
    stride = vocab + (rows2d.stride(0) - vocab) % lane if rows > 1 else vocab
    flat = torch.empty(lane - 1 + (rows - 1) * stride + vocab, **options)
    offset = (rows2d.data_ptr() - flat.data_ptr()) % 16 // size
    return flat.as_strided((rows, vocab), (stride, 1), offset)


def _on_device_of(tensor: torch.Tensor):
    """Launch on the tensor's GPU, not the current one (multi-GPU processes)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _row_statistics(rows2d: torch.Tensor, k: int, row_mask, config: _Config):
    rows, vocab = rows2d.shape
    stats = torch.empty((5, rows), dtype=torch.float32, device=rows2d.device)
    entropy, threshold, shift, log_total, passes = stats.unbind(0)
    if rows > 0:
        key_bits = 32 if rows2d.dtype == torch.float32 else 16
        lane_width = _lane_width(rows2d)
        # Per-row candidate buffer of the select; unused when k = 0.
        if k > 0:
            lanes = config.forward_block // lane_width
            slots = config.candidate_depth * lanes + config.candidates  # the runs' list, then the candidates
            candidates = torch.empty((rows, slots), dtype=torch.int32, device=rows2d.device)
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
                passes,
                KEY_BITS=key_bits,
                IS_BF16=rows2d.dtype == torch.bfloat16,
                SELECT=k > 0,
                COL_CONTIGUOUS=rows2d.stride(1) == 1,
                HAS_ROW_MASK=row_mask is not None,
                BLOCK=config.forward_block,
                LANE_WIDTH=lane_width,
                SAMPLE_GROUP=2 * lane_width,  # one 32-byte sector
                SAMPLE=SAMPLE,
                PIVOTS=PIVOTS[rows2d.element_size()],
                CANDIDATES=config.candidates,
                CANDIDATE_DEPTH=config.candidate_depth,
                num_warps=config.forward_warps,
            )
    return entropy, threshold, shift, log_total, passes


def _nucleus_rounds(key_bits: int, pivots: int, candidates: int) -> int:
    """Loop bound of the nucleus kernel: more rounds than any row can take (a round that finds the row done costs a
    branch). A refinement round in value space divides the interval's width by ``pivots`` (to within a value of the
    dtype), from at most ~2^7 to a few values of the dtype (at most ``key_bits`` halvings); key-space rounds split
    the key span into ``pivots`` parts (a single key after ``ceil(key_bits / log2(pivots))`` of them), counted
    twice for the one restart from the lowest value; each last pass that overflows a lane divides the candidates by
    8."""
    bits = pivots.bit_length() - 1
    key_rounds = -(-key_bits // bits) + 1
    value_rounds = -(-(key_bits + 8) // bits) + 1
    return 2 * (value_rounds + key_rounds) + candidates.bit_length() // 3 + 2


def _nucleus_statistics(rows2d: torch.Tensor, top_p: float, row_mask, config: _Config):
    rows, vocab = rows2d.shape
    stats = torch.empty((5, rows), dtype=torch.float32, device=rows2d.device)
    entropy, threshold, shift, log_total, passes = stats.unbind(0)
    if rows > 0:
        key_bits = 32 if rows2d.dtype == torch.float32 else 16
        lane_width = _lane_width(rows2d)
        lanes = config.forward_block // lane_width
        slots = config.candidate_depth * lanes + config.candidates
        candidates = torch.empty((rows, slots), dtype=torch.int32, device=rows2d.device)
        pivots = NUCLEUS_PIVOTS[rows2d.element_size()]
        with _on_device_of(rows2d):
            _nucleus_entropy_forward_kernel[(rows,)](
                rows2d,
                rows2d.stride(0),
                rows2d.stride(1),
                vocab,
                float(top_p),
                math.log((1.0 - top_p) / vocab),
                entropy if row_mask is None else row_mask.view(torch.uint8),
                candidates,
                entropy,
                threshold,
                shift,
                log_total,
                passes,
                KEY_BITS=key_bits,
                IS_BF16=rows2d.dtype == torch.bfloat16,
                COL_CONTIGUOUS=rows2d.stride(1) == 1,
                HAS_ROW_MASK=row_mask is not None,
                BLOCK=config.forward_block,
                LANE_WIDTH=lane_width,
                PIVOTS=pivots,
                CANDIDATES=config.candidates,
                CANDIDATE_DEPTH=config.candidate_depth,
                ROUNDS=_nucleus_rounds(key_bits, pivots, config.candidates),
                num_warps=config.forward_warps,
            )
    return entropy, threshold, shift, log_total, passes


class _Config(NamedTuple):
    forward_block: int
    forward_warps: int
    backward_block: int
    backward_warps: int
    candidates: int
    candidate_depth: int


class _FusedClampedEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows2d: torch.Tensor, rule, row_mask, config: _Config):
        """``rule``: ``("rank", k)`` (k lowest logits removed) or ``("top_p", top_p)``."""
        statistics = _row_statistics if rule[0] == "rank" else _nucleus_statistics
        entropy, threshold, shift, log_total, _ = statistics(rows2d, rule[1], row_mask, config)
        ctx.save_for_backward(rows2d, row_mask, entropy, threshold, shift, log_total)
        ctx.config = config
        return entropy

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows2d, row_mask, entropy, threshold, shift, log_total = ctx.saved_tensors
        rows, vocab = rows2d.shape
        grad = _empty_gradient(rows2d)
        if rows > 0:
            block = ctx.config.backward_block
            with _on_device_of(rows2d):
                _clamped_entropy_backward_kernel[(rows, _backward_blocks(rows2d, block))](
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
                    LANE_WIDTH=_lane_width(rows2d),
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
            :data:`FORWARD_BLOCK` (else :data:`FORWARD_BLOCK_BYTES` of logits) and :data:`BACKWARD_BLOCK`
            (environment ``AENT_TRITON_FORWARD_BLOCK`` / ``AENT_TRITON_BACKWARD_BLOCK``).
        forward_warps, backward_warps: warps per program (powers of two); defaults from
            ``AENT_TRITON_FORWARD_WARPS`` / ``AENT_TRITON_BACKWARD_WARPS``, else :data:`FORWARD_WARPS` /
            :data:`BACKWARD_WARPS`.
        candidates: most elements in the threshold's interval (between two pivots) that the select finishes on
            the candidate buffer (power of two >= 16); default :data:`CANDIDATES` (``AENT_TRITON_CANDIDATES``).
            Rows with more take the fallback passes instead of pass 2.
        candidate_depth: slots per lane of the list of runs that hold candidates (power of two); default
            :data:`CANDIDATE_DEPTH` (``AENT_TRITON_CANDIDATE_DEPTH``). A row where one lane of the block (a 16-byte
            run per iteration) meets more such runs than that takes the fallback passes after pass 2.
        row_mask: optional bool tensor of shape ``(rows,)`` on the logits' device; rows where it is False are never
            read: their entropy is 0 and their gradient row is written as zeros.
    """
    config = _checked_config(
        rows2d, k, row_mask, forward_block, backward_block, forward_warps, backward_warps, candidates, candidate_depth
    )
    return _FusedClampedEntropy.apply(rows2d, ("rank", int(k)), row_mask, config)


def forward_passes(rows2d: torch.Tensor, k: int, *, row_mask: torch.Tensor | None = None, **config) -> torch.Tensor:
    """Full passes over each row that the forward kernel made (float32, shape ``(rows,)``), for tests and benchmarks:
    2 for a row whose select finished on the candidate buffer (1 with ``k = 0``); 4 (float32) or 2 (16-bit) more after
    a fallback, one fewer when the fallback was decided after pass 1; 0 for a row skipped by ``row_mask``. Takes the
    keyword arguments of :func:`clamped_entropy_rows` that shape the forward."""
    names = ("forward_block", "forward_warps", "candidates", "candidate_depth")
    unknown = set(config) - set(names)
    if unknown:
        raise TypeError(f"forward_passes got unexpected keyword arguments {sorted(unknown)}; it takes {names}")
    get = config.get
    full = _checked_config(
        rows2d,
        k,
        row_mask,
        get("forward_block"),
        None,
        get("forward_warps"),
        None,
        get("candidates"),
        get("candidate_depth"),
    )  # the backward's block and warps stay at their defaults: no backward runs here
    with torch.no_grad():
        return _row_statistics(rows2d.detach(), int(k), row_mask, full)[4]


def _check_top_p(top_p) -> float:
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    return float(top_p)


def nucleus_entropy_rows(
    rows2d: torch.Tensor,
    top_p: float,
    *,
    forward_block: int | None = None,
    backward_block: int | None = None,
    forward_warps: int | None = None,
    backward_warps: int | None = None,
    candidates: int | None = None,
    candidate_depth: int | None = None,
    row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Nucleus (top_p) restricted entropy in nats of each row of a ``(rows, V)`` tensor (:class:`aent.KeptSet`'s
    ``top_p`` rule): with ``q = softmax(z)``, the kept set is every token with ``q >= tau``, ``tau`` the probability
    of the token at which the descending cumulative sum of ``q`` first reaches ``top_p`` (ties included).
    ``top_p = 1`` keeps every token with non-zero probability: the full entropy (the rank kernel with nothing
    removed).

    The threshold is found by mass inside the kernel's passes (see :func:`_nucleus_entropy_forward_kernel`), with
    the sums of ``exp(z - max)`` in float32: a row whose cumulative mass meets ``top_p`` within float32 rounding at
    a token may keep or drop that token. Arguments and the rest as :func:`clamped_entropy_rows`; ``candidates`` is
    the most elements the last pass finishes on (rows refine their interval until it holds no more).
    """
    top_p = _check_top_p(top_p)
    if top_p >= 1.0:
        return clamped_entropy_rows(
            rows2d,
            0,
            forward_block=forward_block,
            backward_block=backward_block,
            forward_warps=forward_warps,
            backward_warps=backward_warps,
            candidates=candidates,
            candidate_depth=candidate_depth,
            row_mask=row_mask,
        )
    config = _checked_config(
        rows2d,
        None,
        row_mask,
        forward_block,
        backward_block,
        forward_warps,
        backward_warps,
        candidates,
        candidate_depth,
    )
    return _FusedClampedEntropy.apply(rows2d, ("top_p", top_p), row_mask, config)


def nucleus_forward_passes(
    rows2d: torch.Tensor, top_p: float, *, row_mask: torch.Tensor | None = None, **config
) -> torch.Tensor:
    """Full passes over each row that the nucleus forward kernel made (float32, shape ``(rows,)``), for tests and
    benchmarks: the full-softmax pass, the refinement passes, and the last pass(es) on the candidate buffer; 0 for
    a row skipped by ``row_mask``. ``top_p = 1`` runs the rank kernel (:func:`forward_passes` with ``k = 0``).
    Takes the keyword arguments of :func:`nucleus_entropy_rows` that shape the forward."""
    top_p = _check_top_p(top_p)
    if top_p >= 1.0:
        return forward_passes(rows2d, 0, row_mask=row_mask, **config)
    names = ("forward_block", "forward_warps", "candidates", "candidate_depth")
    unknown = set(config) - set(names)
    if unknown:
        raise TypeError(f"nucleus_forward_passes got unexpected keyword arguments {sorted(unknown)}; it takes {names}")
    get = config.get
    full = _checked_config(
        rows2d,
        None,
        row_mask,
        get("forward_block"),
        None,
        get("forward_warps"),
        None,
        get("candidates"),
        get("candidate_depth"),
    )
    with torch.no_grad():
        return _nucleus_statistics(rows2d.detach(), top_p, row_mask, full)[4]


def _checked_config(
    rows2d, k, row_mask, forward_block, backward_block, forward_warps, backward_warps, candidates, candidate_depth
) -> _Config:
    """The launch config: each field from its argument, else its environment variable (:data:`ENVIRONMENT`), else
    the default; checked, with the argument's or the variable's name in the error. ``k`` None: no rank to check
    (the nucleus kernel)."""
    _check_rows(rows2d, k)
    given = dict(
        forward_block=forward_block,
        forward_warps=forward_warps,
        backward_block=backward_block,
        backward_warps=backward_warps,
        candidates=candidates,
        candidate_depth=candidate_depth,
    )
    defaults = dict(
        forward_block=FORWARD_BLOCK or FORWARD_BLOCK_BYTES // rows2d.element_size(),
        forward_warps=FORWARD_WARPS,
        backward_block=BACKWARD_BLOCK,
        backward_warps=BACKWARD_WARPS,
        candidates=CANDIDATES,
        candidate_depth=CANDIDATE_DEPTH,
    )
    values = {}
    for field, low in zip(_Config._fields, (256, 1, 256, 1, 16, 1)):
        value, name = given[field], field
        if not value:
            value = _from_environment(field, None)
            name = f"environment variable {ENVIRONMENT[field]}"
            if value is None:
                value, name = defaults[field], field
        if value < low or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= {low}, got {value}")
        values[field] = value
    config = _Config(**values)
    if _backward_blocks(rows2d, config.backward_block) > 65535:
        raise ValueError(
            f"V = {rows2d.shape[1]} needs more than 65535 backward blocks of {config.backward_block}; "
            "raise backward_block"
        )
    if row_mask is not None:
        _check_row_mask(row_mask, rows2d)
    return config


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
