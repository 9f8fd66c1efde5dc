#!/usr/bin/env python3
"""The torch path of every kept-set rule of aent.restricted_entropy (the CPU and non-Triton fallback) against verl's
eager entropy.

Variants, forward + backward over the same [tokens x vocabulary] logits, timed side by side in one process:

``verl``          ``verl.utils.torch_functional.entropy_from_logits`` with eager autograd (full vocabulary)
``aent_p0``       ``aent.clamped_entropy(logits, 0.0, impl="torch")`` (full vocabulary, chunked, hand-written backward)
``aent_p<p>``     ``aent.clamped_entropy(logits, p, impl="torch")`` for each ``--clamp-p`` above 0 (bottom_p)
``aent_top_k<k>`` ``aent.topk_entropy(logits, k, impl="torch")`` for each ``--top-k`` (TRE-K)
``aent_top_p<p>`` ``aent.nucleus_entropy(logits, top_p, impl="torch")`` for each ``--top-p`` (TRE-P)

Before timing, aent's results on the first rows are compared with the float64 reference (values and gradients) and
verl's with aent's at p = 0. Repetitions are interleaved (verl, aent_p0, aent_p..., verl, ...) and each ratio is taken
within one repetition, so a machine whose load changes still gives comparable ratios; the table shows the median
ratio. Peak extra memory is the resident-set high-water mark (Linux ``/proc/self/status`` VmHWM, reset through
``clear_refs``, free heap returned by ``malloc_trim`` first) above what was resident before the call; it includes
the gradient. Rows are appended to ``benchmarks/torch_path.csv`` with device, versions, thread counts and date; the
``clamp_p`` column holds the bottom_p rows' p ("-" for the other rules, whose parameter is in the variant's name).

    OMP_NUM_THREADS=2 python scripts/bench_torch_path.py                  # 2048 x 32768 fp32, every rule
    OMP_NUM_THREADS=1 python scripts/bench_torch_path.py --quick          # 256 x 32768, 3 repetitions, no CSV
    python scripts/bench_torch_path.py --dtype bf16 --clamp-p 0.25 0.33
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # runs from a checkout without installing aent

CSV_FIELDS = [
    "date_utc",
    "commit",
    "device",
    "torch",
    "triton",
    "verl",
    "omp_num_threads",
    "torch_threads",
    "variant",
    "dtype",
    "tokens",
    "vocab",
    "clamp_p",
    "ms_min",
    "ms_median",
    "reps",
    "ratio_vs_verl",
    "peak_extra_mib",
    "logits_mib",
    "check",
    "note",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="rows T (default 2048)")
    parser.add_argument("--vocab", type=int, default=32768, help="V (default 32768)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--clamp-p", type=float, nargs="+", default=[0.33], help="p > 0 to time (default 0.33)")
    parser.add_argument("--top-k", type=int, nargs="*", default=[2, 64], help="k of top_k to time (default 2 64)")
    parser.add_argument("--top-p", type=float, nargs="*", default=[0.99], help="top_p to time (default 0.99)")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each variant (default 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--check-rows", type=int, default=8, help="rows compared with the float64 reference")
    parser.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "torch_path.csv", help="results file")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    parser.add_argument("--note", default="", help="free text for the CSV's note column")
    parser.add_argument("--quick", action="store_true", help="256 rows, 3 repetitions, no CSV (checks the script)")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # -h/--help and bad arguments are answered before torch loads

import torch  # noqa: E402
from benchlib import append_csv, environment, fmt, print_table  # noqa: E402

import aent  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def peak_extra_mib(fn) -> float:
    """Resident-set high-water mark above the resident set before ``fn()``, in MiB (NaN where Linux lacks it)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident set
        base = _status_kib("VmRSS")
    except (OSError, RuntimeError):
        fn()
        return float("nan")
    fn()
    return (_status_kib("VmHWM") - base) / 1024.0


def commit() -> str:
    """Short hash of the checkout's HEAD, with "+changes" when aent/ differs from it ("unknown" outside git)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "aent"], capture_output=True)
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.returncode else "")


def make_variants(clamp_ps: List[float], top_ks: List[int] = (), top_ps: List[float] = ()):
    """name -> (kept set, forward function) of every variant; verl's has the full entropy's kept set."""
    from verl.utils.torch_functional import entropy_from_logits

    kept_sets = [aent.KeptSet.bottom_p(p) for p in [0.0, *clamp_ps]]
    kept_sets += [aent.KeptSet.top_k(k) for k in top_ks] + [aent.KeptSet.top_p(p) for p in top_ps]
    variants = {"verl": (aent.KeptSet.bottom_p(0.0), lambda x: entropy_from_logits(x))}
    for kept in kept_sets:
        name = f"aent_p{kept.value:g}" if kept.rule == "bottom_p" else f"aent_{kept.rule}{kept.value:g}"
        variants[name] = (kept, lambda x, kept=kept: aent.restricted_entropy(x, kept, impl="torch"))
    return variants


def check(variants, logits: torch.Tensor, rows: int) -> Dict[str, str]:
    """aent's torch path against the float64 reference, and verl against aent at p = 0, on the first rows."""
    sample = logits[:rows]
    weights = torch.randn(sample.shape[0], generator=torch.Generator().manual_seed(1))
    results = {}

    def run(fn):
        leaf = sample.detach().clone().requires_grad_(True)
        out = fn(leaf)
        (out.float() * weights).sum().backward()
        return out.detach().float(), leaf.grad.float()

    value_tol = dict(atol=2e-5, rtol=1e-5)
    grad_tol = dict(atol=2e-6, rtol=1e-4) if logits.dtype == torch.float32 else dict(atol=1e-4, rtol=2e-2)
    for name, (kept, fn) in variants.items():
        if name == "verl":
            continue
        ref = run(lambda x, kept=kept: aent.restricted_entropy(x, kept, impl="reference"))
        got = run(fn)
        try:
            torch.testing.assert_close(got[0], ref[0], **value_tol)
            torch.testing.assert_close(got[1], ref[1], **grad_tol)
            results[name] = "ok vs float64 reference"
        except AssertionError as error:
            results[name] = "MISMATCH: " + str(error).splitlines()[0]
    verl, ours = run(variants["verl"][1]), run(variants["aent_p0"][1])
    try:
        torch.testing.assert_close(verl[0], ours[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(verl[1], ours[1], **grad_tol)
        results["verl"] = "ok vs aent_p0"
    except AssertionError as error:
        results["verl"] = "MISMATCH: " + str(error).splitlines()[0]
    return results


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.tokens, args.reps, args.warmup, args.no_csv = 256, 3, 1, True
    if args.reps < 1 or args.warmup < 0 or args.tokens < 1 or args.vocab < 1:
        raise SystemExit("--reps, --tokens and --vocab must be >= 1, --warmup >= 0")
    if any(not 0.0 < p < 1.0 for p in args.clamp_p):
        raise SystemExit(f"--clamp-p values must be in (0, 1) (p = 0 always runs), got {args.clamp_p}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    env = environment("cpu", extra=("verl",))
    env.update(commit=commit(), note=args.note)
    env.update(omp_num_threads=os.environ.get("OMP_NUM_THREADS", "unset"), torch_threads=torch.get_num_threads())
    print(
        f"# {env['device']} | torch {env['torch']} | verl {env['verl']} | OMP_NUM_THREADS={env['omp_num_threads']} "
        f"| torch threads {env['torch_threads']} | {args.tokens} x {args.vocab} {args.dtype}, forward + backward"
    )
    logits = (torch.randn(args.tokens, args.vocab, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    if any(k < 1 for k in args.top_k) or any(not 0.0 < p <= 1.0 for p in args.top_p):
        raise SystemExit(f"--top-k values must be >= 1 and --top-p values in (0, 1], got {args.top_k} {args.top_p}")
    variants = make_variants(args.clamp_p, args.top_k, args.top_p)
    checks = check(variants, logits, min(args.check_rows, args.tokens))

    def step(fn, leaf=None):
        leaf = logits.detach().clone().requires_grad_(True) if leaf is None else leaf
        start = time.perf_counter()
        fn(leaf).sum().backward()
        return (time.perf_counter() - start) * 1e3

    times: Dict[str, List[float]] = {name: [] for name in variants}
    ratios: Dict[str, List[float]] = {name: [] for name in variants}
    for rep in range(args.warmup + args.reps):
        this = {name: step(fn) for name, (_, fn) in variants.items()}
        if rep >= args.warmup:
            for name, ms in this.items():
                times[name].append(ms)
                ratios[name].append(ms / this["verl"])
    logits_mib = logits.numel() * logits.element_size() / 2**20
    rows = []
    for name, (kept, fn) in variants.items():
        leaf = logits.detach().clone().requires_grad_(True)  # made before the measurement: not counted
        peak = peak_extra_mib(lambda fn=fn, leaf=leaf: step(fn, leaf))
        del leaf
        rows.append(
            dict(
                env,
                variant=name,
                dtype=args.dtype,
                tokens=args.tokens,
                vocab=args.vocab,
                clamp_p=kept.value if kept.rule == "bottom_p" else "-",
                ms_min=fmt(min(times[name]), 1),
                ms_median=fmt(statistics.median(times[name]), 1),
                reps=args.reps,
                ratio_vs_verl=fmt(statistics.median(ratios[name])),
                peak_extra_mib=fmt(peak, 0),
                logits_mib=fmt(logits_mib, 0),
                check=checks[name],
            )
        )
    print_table(
        rows,
        ["variant", "clamp_p", "ms_min", "ms_median", "ratio_vs_verl", "peak_extra_mib", "logits_mib", "check"],
    )
    if not args.no_csv:
        append_csv(args.csv, rows, CSV_FIELDS)
        print(f"# appended {len(rows)} rows to {args.csv}")
    return 0 if all(not c.startswith("MISMATCH") for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
