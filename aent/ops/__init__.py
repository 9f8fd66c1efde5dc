"""Fused GPU kernels. Imported lazily: ``import aent`` does not import Triton."""

from __future__ import annotations

import functools
import importlib.util

import torch

#: Input dtypes the fused kernels handle (others, e.g. float64, go to the ``"torch"`` path under ``impl="auto"``).
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Kept-set rules (:data:`aent.KEPT_RULES`) with a fused kernel; ``impl="auto"`` takes the torch path for the others.
FUSED_RULES = ("bottom_p", "top_k")
#: Oldest Triton the fused kernels compile with (``tl.histogram(..., mask=)``).
MIN_TRITON = (3, 4)


@functools.cache
def triton_available() -> bool:
    """Whether the fused Triton path can run here: Triton imports and aent's kernels load.

    The first call imports Triton (only ``impl="auto"`` on CUDA and ``impl="triton"`` call it); the answer is cached.
    """
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton

        if tuple(int(part) for part in triton.__version__.split(".")[:2]) < MIN_TRITON:
            return False  # no mask argument on tl.histogram
    except Exception:
        return False
    try:
        import aent.ops.triton_entropy  # noqa: F401
    except Exception:  # a broken or incompatible Triton install: fall back rather than fail at import
        return False
    return True


def clamped_entropy_triton(rows2d: torch.Tensor, k: int, row_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Clamped entropy of a 2-D ``(rows, V)`` tensor with ``k`` removed tokens per row, by the fused kernels.

    ``row_mask``: optional 1-D bool tensor of shape ``(rows,)`` on the same device. Rows where it is False are never
    read: their entropy is 0 and their gradient row is written as zeros. ``None`` computes every row.
    """
    if not triton_available():
        raise RuntimeError(
            "impl='triton' needs Triton >= 3.4 and aent's fused kernels (pip install 'aent[gpu]'); "
            "use impl='torch' to run without them"
        )
    from aent.ops import triton_entropy

    if rows2d.device.type != "cuda" and not triton_entropy.INTERPRETED:
        raise RuntimeError(
            f"impl='triton' runs on CUDA tensors, got a tensor on {rows2d.device}; use impl='torch' (or 'auto'), "
            "or set TRITON_INTERPRET=1 before importing aent.ops.triton_entropy to run the kernels in Triton's "
            "interpreter on the CPU (slow; for testing)"
        )
    return triton_entropy.clamped_entropy_rows(rows2d, k, row_mask=row_mask)
