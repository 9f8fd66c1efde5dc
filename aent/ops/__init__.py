"""Fused GPU kernels. Imported lazily: ``import aent`` does not import Triton."""

from __future__ import annotations

import importlib.util

import torch


def triton_available() -> bool:
    """Whether the fused Triton path can run here (Triton installed and aent's kernels present)."""
    return (
        importlib.util.find_spec("triton") is not None
        and importlib.util.find_spec("aent.ops.triton_entropy") is not None
    )


def clamped_entropy_triton(rows2d: torch.Tensor, k: int) -> torch.Tensor:
    """Clamped entropy of a 2-D ``(rows, V)`` tensor with ``k`` removed tokens per row, by the fused kernels."""
    if not triton_available():
        raise RuntimeError(
            "impl='triton' needs Triton and aent's fused kernels (pip install 'aent[gpu]'); "
            "use impl='torch' to run without them"
        )
    from aent.ops.triton_entropy import clamped_entropy_rows

    return clamped_entropy_rows(rows2d, k)
