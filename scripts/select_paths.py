#!/usr/bin/env python3
"""How often the fused forward's select finishes in two passes over the row, on synthetic logit distributions.

The fused kernels (docs/PERFORMANCE.md, "Design") bracket the threshold with pivots from a sample and finish it on a
candidate buffer; a row where the sample misses, the threshold's interval is too crowded (heavy ties) or one lane
overflows takes the exact fallback passes instead. This script counts, per distribution, dtype and clamp p (or top-k
rank), the rows that finished in two passes (``aent.ops.triton_entropy.forward_passes``), and with ``--top-p`` the
nucleus kernel's passes per row, and checks each row's entropy against the float64 reference.

Distributions (V = 151,936 by default): random normal with scales 1-4.75, normal x 3 plus a heavy right tail,
Gumbel (scale 2), Student-t (3 degrees of freedom, x 2). Padded ``-inf`` columns: the last 100.

Without CUDA the kernels run in Triton's interpreter on the CPU (about a second per row and setting on 2 cores).

Examples::

    python scripts/select_paths.py                     # CPU (interpreter): 16 rows, fp32 and bf16, 4 values of p
    python scripts/select_paths.py --rows 4 --p 0.33   # a quick look
    python scripts/select_paths.py --rows 8 --p 0.33 --top-k 1 2 64   # top-k's ranks: V - k removed
    python scripts/select_paths.py --rows 8 --p --top-p 0.9 0.99      # the nucleus kernel's passes per row
    python scripts/select_paths.py --device cuda --rows 4096
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import warnings
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(REPO))

from benchlib import exit_on_help  # noqa: E402

if __name__ == "__main__":
    exit_on_help(__doc__)


def synthetic_rows(rows: int, vocab: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(rows):
        kind = i % 4
        if kind == 0:
            row = torch.randn(vocab, generator=gen) * (1 + i / 4)
        elif kind == 1:
            row = torch.randn(vocab, generator=gen) * 3 + torch.rand(vocab, generator=gen).pow(8) * 20
        elif kind == 2:
            uniform = torch.rand(vocab, generator=gen).clamp_min(1e-12)
            row = -2 * torch.log(-torch.log(uniform))  # Gumbel, scale 2
        else:
            normal = torch.randn(vocab, generator=gen)
            chi2 = torch.randn(3, vocab, generator=gen).pow(2).sum(0)
            row = 2 * normal / torch.sqrt(chi2 / 3)  # Student-t, 3 degrees of freedom
        out.append(row)
    logits = torch.stack(out)
    logits[:, -100:] = float("-inf")
    return logits


def load_kernels(device: str):
    """The kernel module: compiled on CUDA, else a private copy decorated in Triton's interpreter mode."""
    if device == "cuda":
        from aent.ops import triton_entropy

        return triton_entropy
    os.environ["TRITON_INTERPRET"] = "1"
    warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns about inf - inf in discarded branches
    path = REPO / "aent" / "ops" / "triton_entropy.py"
    spec = importlib.util.spec_from_file_location("aent_triton_entropy_interpreted", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rows", type=int, default=16, help="rows per setting (4 distributions in turn)")
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--p", type=float, nargs="*", default=[0.1, 0.33, 0.6, 0.9], help="clamp p values")
    parser.add_argument(
        "--top-k", type=int, nargs="+", default=[], help="also top-k ranks (k kept: V - k removed), e.g. 1 2 64"
    )
    parser.add_argument(
        "--top-p", type=float, nargs="+", default=[], help="also the nucleus kernel at these top_p, e.g. 0.9 0.99"
    )
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.vocab < 2:
        raise SystemExit("--rows must be >= 1 and --vocab >= 2")
    if any(k < 1 for k in args.top_k):
        raise SystemExit(f"--top-k values must be >= 1, got {args.top_k}")
    if any(not 0 < p < 1 for p in args.top_p):
        raise SystemExit(f"--top-p values must lie in (0, 1), got {args.top_p}")
    if any(not 0 < p < 1 for p in args.p):
        raise SystemExit(f"--p values must lie in (0, 1), got {args.p}")

    import torch

    import aent

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; run without it to use Triton's interpreter on the CPU")
    kernels = load_kernels(args.device)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    logits = synthetic_rows(args.rows, args.vocab, args.seed)
    kinds = ["normal", "normal + tail", "gumbel", "student-t"]
    print(
        f"# select paths: {args.rows} rows x V = {args.vocab}, device {args.device}, Triton interpreter: "
        f"{args.device != 'cuda'}"
    )
    print("dtype  p     rows in 2 passes  fallback rows (distribution)            max |H - H_f64|")
    failures = 0
    for name in args.dtypes:
        x = logits.to(dtypes[name]).to(args.device)
        # (label, removed tokens, clamp p of the reference: (k + 0.5) / V removes exactly k)
        settings = [(f"{p:<4}", aent.num_removed(args.vocab, p), p) for p in args.p]
        settings += [
            (f"k={k}", max(args.vocab - k, 0), (max(args.vocab - k, 0) + 0.5) / args.vocab) for k in args.top_k
        ]
        for label, k, p in settings:
            passes = kernels.forward_passes(x, k).cpu()
            with torch.no_grad():
                ent = kernels.clamped_entropy_rows(x, k).cpu().double()
            ref = aent.clamped_entropy(x.cpu().double(), p, impl="reference", check_finite=False)
            error = (ent - ref).abs().max().item()
            failures += error > 1e-4
            slow = [f"{i} ({kinds[i % 4]}, {int(passes[i])} passes)" for i in range(args.rows) if passes[i] != 2]
            print(
                f"{name:5}  {label}  {int((passes == 2).sum()):>7} of {args.rows:<6}  {', '.join(slow) or '-':40}  "
                f"{error:.1e}"
            )
        for top_p in args.top_p:
            passes = kernels.nucleus_forward_passes(x, top_p).cpu()
            with torch.no_grad():
                ent = kernels.nucleus_entropy_rows(x, top_p).cpu().double()
            ref = aent.nucleus_entropy(x.cpu().double(), top_p, impl="reference", check_finite=False)
            error = (ent - ref).abs().max().item()
            failures += error > 1e-4
            counts = {int(v): int((passes == v).sum()) for v in passes.unique()}
            by_kind = ", ".join(f"{kinds[i % 4]} {int(passes[i])}" for i in range(min(args.rows, 4)))
            print(
                f"{name:5}  top_p={top_p}  passes: {counts} (rows with that many; first rows: {by_kind})  {error:.1e}"
            )
    if failures:
        print(f"FAIL: {failures} settings differ from the float64 reference by more than 1e-4")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
