"""Fused GPU kernels. Imported lazily: ``import aent`` does not import Triton.

What this module decides, and how a user hears about it:

* Whether the kernels load (:func:`triton_available`). Triton not installed: the torch path, silently (documented).
  Triton installed but the kernels do not load (an incompatible version, a broken install, an error in the
  kernels): ``impl="triton"`` raises with the cause; ``impl="auto"`` warns once with the cause
  (:class:`FusedKernelWarning`) and takes the torch path.
* A first-use self-check on the device (:func:`clamped_entropy_triton`, :func:`nucleus_entropy_triton`): the first
  call per device, dtype, vocabulary size and rule compares the kernels with the torch path on a few rows of the
  real logits (see :data:`SELF_CHECK_ROWS`). Beyond :data:`SELF_CHECK_TOLERANCE`, ``impl="triton"`` raises and
  ``impl="auto"`` warns once with the device and the numbers, and takes the torch path for the rest of the process
  (:func:`auto_uses_triton`). ``AENT_TRITON_SELF_CHECK=0`` turns the check off.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

#: Input dtypes the fused kernels handle (others, e.g. float64, go to the ``"torch"`` path under ``impl="auto"``).
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Kept-set rules (:data:`aent.KEPT_RULES`) with a fused kernel; ``impl="auto"`` takes the torch path for the others.
FUSED_RULES = ("bottom_p", "top_k", "top_p")
#: Oldest Triton the fused kernels compile with (``tl.histogram(..., mask=)``).
MIN_TRITON = (3, 4)
#: Environment variable that turns the first-use self-check off (``0``) or on (``1``, the default).
SELF_CHECK_ENV = "AENT_TRITON_SELF_CHECK"
#: Real rows of the logits the self-check takes (first, middle, last of the computed rows), besides a tie-heavy copy
#: of the first (the select's exact fallback at real vocabulary sizes) and a row-masked one.
SELF_CHECK_ROWS = 3
#: Tolerances of the self-check against the torch path: entropies ``(rtol, atol)``; gradients by dtype ``(rtol,
#: atol)``, with ``1e-3`` of the row's largest gradient added to the atol (a nucleus token whose cumulative mass
#: meets ``top_p`` within float32 rounding may be kept by one path and not the other).
SELF_CHECK_TOLERANCE = {
    "entropy": (1e-4, 1e-4),
    torch.float32: (1e-4, 2e-6),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float16: (2e-3, 2e-6),
}


class FusedKernelWarning(RuntimeWarning):
    """``impl="auto"`` could not use the fused kernels (they do not load, or failed the self-check on this device)
    and takes the torch path."""


@functools.cache
def _load_error() -> Optional[BaseException]:
    """None when Triton imports and aent's kernels load; else the exception that stopped them (cached).

    A missing Triton is a :class:`ModuleNotFoundError` whose ``name`` is ``"triton"``."""
    if importlib.util.find_spec("triton") is None:
        error = ModuleNotFoundError("Triton is not installed", name="triton")
        return error
    try:
        import triton

        version = tuple(int(part) for part in triton.__version__.split(".")[:2])
        if version < MIN_TRITON:
            raise ImportError(f"Triton {triton.__version__} is older than {'.'.join(map(str, MIN_TRITON))}")
        import aent.ops.triton_entropy  # noqa: F401
    except Exception as error:  # noqa: BLE001 - kept and reported: re-raised under impl="triton", warned under auto
        return error
    return None


def _not_installed(error: Optional[BaseException]) -> bool:
    return isinstance(error, ModuleNotFoundError) and error.name == "triton"


def triton_available() -> bool:
    """Whether the fused Triton path can run here: Triton (>= 3.4) imports and aent's kernels load.

    The first call imports Triton (only ``impl="auto"`` on CUDA and ``impl="triton"`` call it); the answer is cached.
    :func:`triton_load_error` gives the reason when it is False."""
    return _load_error() is None


def triton_load_error() -> Optional[BaseException]:
    """Why the fused kernels cannot run here (the exception; a ``ModuleNotFoundError`` named ``triton`` when Triton
    is not installed), or None when they can."""
    return _load_error()


_WARNED: set = set()


def _warn_once(key, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, FusedKernelWarning, stacklevel=4)


#: Set when a self-check failed under ``impl="auto"``: the message; ``auto`` then takes the torch path everywhere.
_AUTO_DISABLED: Optional[str] = None


def auto_uses_triton(dtype: torch.dtype, rule: str = "bottom_p") -> bool:
    """For ``impl="auto"`` on a CUDA device: whether the fused kernels take a call on ``dtype`` logits with kept-set
    ``rule``. False for dtypes and rules without a kernel, when the kernels do not load (warned once with the cause,
    unless Triton is simply not installed), and after a failed self-check in this process."""
    if dtype not in FUSED_DTYPES or rule not in FUSED_RULES or _AUTO_DISABLED is not None:
        return False
    if not triton_available():
        error = _load_error()
        if error is not None and not _not_installed(error):
            _warn_once(
                "load",
                f"aent's fused Triton kernels do not load ({type(error).__name__}: {error}); impl='auto' takes the "
                "torch path. Install a compatible Triton (pip install 'aent[gpu]') or set AENT_ENTROPY_IMPL=torch "
                "to silence this.",
            )
        return False
    return True


def chosen_by_auto(impl: Optional[str]) -> bool:
    """Whether an entry point's ``impl`` argument leaves the choice to ``"auto"`` (``None``/``"auto"`` with
    ``AENT_ENTROPY_IMPL`` unset or ``auto``): the fused kernels then fall back instead of raising."""
    if impl not in (None, "auto"):
        return False
    return (os.environ.get("AENT_ENTROPY_IMPL", "auto") or "auto") == "auto"


def _kernels():
    error = _load_error()
    if error is not None:
        reason = "Triton is not installed" if _not_installed(error) else f"{type(error).__name__}: {error}"
        raise RuntimeError(
            f"impl='triton' needs Triton >= 3.4 and aent's fused kernels ({reason}); install them with "
            "pip install 'aent[gpu]', or use impl='torch' to run without them"
        ) from (None if _not_installed(error) else error)
    from aent.ops import triton_entropy

    return triton_entropy


def _check_device(kernels, rows2d: torch.Tensor) -> None:
    if rows2d.device.type != "cuda" and not kernels.INTERPRETED:
        raise RuntimeError(
            f"impl='triton' runs on CUDA tensors, got a tensor on {rows2d.device}; use impl='torch' (or 'auto'), "
            "or set TRITON_INTERPRET=1 before importing aent.ops.triton_entropy to run the kernels in Triton's "
            "interpreter on the CPU (slow; for testing)"
        )


def clamped_entropy_triton(
    rows2d: torch.Tensor, k: int, row_mask: torch.Tensor | None = None, *, auto: bool = False
) -> torch.Tensor:
    """Clamped entropy of a 2-D ``(rows, V)`` tensor with ``k`` removed tokens per row, by the fused kernels (the
    rank rules: ``bottom_p``, and ``top_k`` with ``k = V - top_k``).

    ``row_mask``: optional 1-D bool tensor of shape ``(rows,)`` on the same device. Rows where it is False are never
    read: their entropy is 0 and their gradient row is written as zeros. ``None`` computes every row.
    ``auto``: the call came from ``impl="auto"`` (:func:`chosen_by_auto`): a failed self-check then warns and returns
    the torch path's result instead of raising.
    """
    kernels = _kernels()
    _check_device(kernels, rows2d)
    vocab = rows2d.shape[-1] if rows2d.dim() == 2 else 0

    def fused(rows, mask):
        return kernels.clamped_entropy_rows(rows, k, row_mask=mask)

    def torch_path(rows, mask):
        from aent.entropy import clamped_entropy

        clamp_p = (k + 0.5) / vocab  # floor(clamp_p * V) = k exactly
        return clamped_entropy(rows, clamp_p, impl="torch", check_finite=False, row_mask=mask)

    return _checked_call(("rank", k), rows2d, row_mask, fused, torch_path, auto)


def nucleus_entropy_triton(
    rows2d: torch.Tensor, top_p: float, row_mask: torch.Tensor | None = None, *, auto: bool = False
) -> torch.Tensor:
    """Nucleus (``top_p``) restricted entropy of a 2-D ``(rows, V)`` tensor by the fused kernels
    (:func:`aent.ops.triton_entropy.nucleus_entropy_rows`); ``row_mask`` and ``auto`` as
    :func:`clamped_entropy_triton`."""
    kernels = _kernels()
    _check_device(kernels, rows2d)

    def fused(rows, mask):
        return kernels.nucleus_entropy_rows(rows, top_p, row_mask=mask)

    def torch_path(rows, mask):
        import aent

        return aent.nucleus_entropy(rows, top_p, impl="torch", check_finite=False, row_mask=mask)

    return _checked_call(("top_p", float(top_p)), rows2d, row_mask, fused, torch_path, auto)


Path = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
#: Self-check results by (device, dtype, V, rule): None when passed, else the failure's message.
_SELF_CHECKS: Dict[Tuple, Optional[str]] = {}


def _self_check_enabled() -> bool:
    text = os.environ.get(SELF_CHECK_ENV, "").strip().lower()
    if text in ("", "1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"environment variable {SELF_CHECK_ENV} must be 0 or 1, got {text!r}")


def _checked_call(rule, rows2d, row_mask, fused: Path, torch_path: Path, auto: bool) -> torch.Tensor:
    global _AUTO_DISABLED
    if rows2d.dim() == 2 and rows2d.shape[0] > 0 and _self_check_enabled():
        key = (str(rows2d.device), rows2d.dtype, rows2d.shape[1], rule)
        if key not in _SELF_CHECKS:
            _SELF_CHECKS[key] = self_check(rows2d, row_mask, fused, torch_path, rule)
        failure = _SELF_CHECKS[key]
        if failure is not None:
            fix = (
                "Use impl='torch' (or AENT_ENTROPY_IMPL=torch) and report it with your Triton version and GPU; "
                f"{SELF_CHECK_ENV}=0 skips the check"
            )
            if not auto:
                raise RuntimeError(f"{failure}. {fix}.")
            _AUTO_DISABLED = failure
            _warn_once(("check", key), f"{failure}; impl='auto' takes the torch path in this process. {fix}.")
            return torch_path(rows2d, row_mask)
    return fused(rows2d, row_mask)


def self_check(rows2d: torch.Tensor, row_mask, fused: Path, torch_path: Path, rule) -> Optional[str]:
    """Compare ``fused`` with ``torch_path`` (entropies and gradients) on a few rows of ``rows2d``: the first, middle
    and last computed rows, a tie-heavy copy of the first (rounded to integers: thousands of ties at the threshold,
    the exact fallback at real vocabulary sizes) and a row masked out by ``row_mask`` (filled with NaN: it must come
    back 0 with a zero gradient). None when they agree within :data:`SELF_CHECK_TOLERANCE`, else what differs.
    Runs with autograd on whatever the caller's mode (``no_grad``, ``inference_mode``): the gradients are checked."""
    with torch.inference_mode(False):
        return _self_check(rows2d, row_mask, fused, torch_path, rule)


def _self_check(rows2d, row_mask, fused: Path, torch_path: Path, rule) -> Optional[str]:
    with torch.no_grad():
        computed = torch.arange(rows2d.shape[0], device=rows2d.device)
        if row_mask is not None:
            computed = computed[row_mask]
        if computed.numel() == 0:
            return None
        picks = computed[torch.linspace(0, computed.numel() - 1, SELF_CHECK_ROWS, device=rows2d.device).long()]
        real = rows2d.index_select(0, picks.unique())
        tied = torch.round(real[:1].float()).to(rows2d.dtype)
        rows = torch.cat([real, tied, torch.full_like(real[:1], float("nan"))]).clone()  # a normal tensor
        mask = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
        mask[-1] = False
        grad_out = torch.linspace(0.5, 1.5, rows.shape[0], device=rows.device)
    x = rows.clone().requires_grad_()
    with torch.enable_grad():
        ent = fused(x, mask)
        ent.backward(grad_out)
    y = rows[:-1].clone().requires_grad_()
    with torch.enable_grad():
        ref = torch_path(y, None)
        ref.backward(grad_out[:-1])
    ent, grad, ref, ref_grad = ent.detach().float(), x.grad.float(), ref.detach().float(), y.grad.float()
    problems = []
    if ent[-1] != 0 or grad[-1].any():
        problems.append(f"a row outside row_mask gave entropy {ent[-1].item()!r} and a non-zero gradient")
    rtol, atol = SELF_CHECK_TOLERANCE["entropy"]
    both_nan = torch.isnan(ent[:-1]) & torch.isnan(ref)  # NaN/+inf in a real row: NaN from both paths
    ent_error = torch.where(both_nan, 0.0, (ent[:-1] - ref).abs())
    if not (both_nan | (ent_error <= atol + rtol * ref.abs())).all():
        problems.append(f"max |entropy difference| {ent_error.max().item():.3g} (tolerance {atol} + {rtol} x |H|)")
    rtol, atol = SELF_CHECK_TOLERANCE[rows.dtype]
    row_atol = atol + 1e-3 * ref_grad.abs().amax(dim=-1, keepdim=True)
    grad_error = (grad[:-1] - ref_grad).abs()
    if not (grad_error <= row_atol + rtol * ref_grad.abs()).all():
        problems.append(f"max |gradient difference| {grad_error.max().item():.3g}")
    if not problems:
        return None
    name = torch.cuda.get_device_name(rows2d.device) if rows2d.is_cuda else "Triton's interpreter"
    what = "rank (bottom_p/top_k)" if rule[0] == "rank" else "nucleus (top_p)"
    return (
        f"aent's fused {what} kernel disagrees with the torch path on {rows2d.device} ({name}) for "
        f"{str(rows2d.dtype).replace('torch.', '')} logits with V = {rows2d.shape[1]} ({rule[0]} {rule[1]}): "
        + "; ".join(problems)
    )
