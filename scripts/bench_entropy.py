#!/usr/bin/env python3
"""Forward + backward time and peak extra memory of entropy variants over [tokens x vocabulary] logits.

Variants, all timed in one process on one device (see docs/PERFORMANCE.md):

``full_verl``    full-vocabulary entropy as verl computes it (``verl.utils.torch_functional.entropy_from_logits`` when
                 verl imports, else the same formula written out: softmax, then logsumexp - sum p z), eager autograd.
``cpu_mask``     clamped entropy with the kept set picked the way the paper authors' code does it: logits copied to
                 the CPU, bottom-k by ``topk(largest=False)`` there, the mask copied back, masked entropy on the device.
``kthvalue``     clamped entropy, threshold by ``torch.kthvalue`` on the device, eager masked entropy with autograd.
``aent_torch``   ``aent.clamped_entropy(impl="torch")``: chunked torch path with a hand-written backward.
``aent_fused``   ``aent.clamped_entropy(impl="triton")``: the fused Triton kernels (CUDA only).
``aent_fused[fallback]``   the same with every row forced onto the select's fallback passes (a 16-element candidate
                 limit: 5 passes over a float32 row, 3 over a 16-bit row, instead of 2).
``aent_fused[row_mask 1/2]``  the same with every other row skipped by ``row_mask`` (not read; half the work).

Each variant is first checked against ``aent_torch`` (which also compiles it: compilation and warm-up stay outside
the timed region) on the first rows of the same logits (entropy and gradient);
then timed (CUDA events around forward + backward, after warm-up; min and median) with its peak extra memory
(``max_memory_allocated`` minus what was allocated before; the gradient of the logits is included). Results are
printed as a table and appended to ``benchmarks/entropy.csv`` with device, versions and date. Ratios are against
``full_verl`` of the same run. Variants that run out of memory are recorded as such and skipped.

Examples::

    python scripts/bench_entropy.py                       # CUDA: T in {4096, 16384}, fp32 and bf16, V = 151936
    python scripts/bench_entropy.py --quick               # CUDA: T = 4096 only, fewer repetitions
    python scripts/bench_entropy.py --verify              # CUDA: full-size correctness of the fused path only
    python scripts/bench_entropy.py --device cpu          # CPU, small sizes: checks that the script itself works
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # runs from a checkout without installing aent

from benchlib import exit_on_help  # noqa: E402

if __name__ == "__main__":
    exit_on_help(__doc__)  # before torch loads: help in a fraction of a second

import torch  # noqa: E402
from benchlib import GIB, append_csv, environment, fmt, print_table, sync  # noqa: E402

import aent  # noqa: E402
import aent.ops  # noqa: E402

CSV_FIELDS = [
    "date_utc",
    "device",
    "torch",
    "triton",
    "variant",
    "dtype",
    "tokens",
    "vocab",
    "clamp_p",
    "ms_min",
    "ms_median",
    "reps",
    "peak_extra_gib",
    "logits_gib",
    "peak_over_logits",
    "ratio_vs_full",
    "check",
    "note",
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------------------------
# Variants: each maps (logits leaf, clamp_p) to per-row entropy; the caller runs backward.
# --------------------------------------------------------------------------------------------------------------


def _verl_entropy_fn() -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    try:
        from verl.utils.torch_functional import entropy_from_logits

        return entropy_from_logits, "verl.utils.torch_functional.entropy_from_logits"
    except Exception:  # verl absent (e.g. on the GPU image): the same formula, written out

        def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(logits, dim=-1)
            return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)

        return entropy_from_logits, "verl not importable: its formula (softmax; logsumexp - sum p z) written out"


def _masked_entropy(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Eager entropy of the softmax renormalised over ``keep`` (float32), as a plain autograd graph."""
    z = logits.float().masked_fill(~keep, float("-inf"))
    logq = torch.log_softmax(z, dim=-1)
    return -(logq.exp() * logq.masked_fill(~keep, 0.0)).sum(dim=-1)


def clamped_cpu_mask(logits: torch.Tensor, clamp_p: float) -> torch.Tensor:
    """Paper authors' method: bottom-k on a CPU copy (ties broken by topk), mask copied back."""
    k = aent.num_removed(logits.shape[-1], clamp_p)
    with torch.no_grad():
        cpu = logits.detach().float().cpu()
        keep = torch.ones_like(cpu, dtype=torch.bool)
        if k > 0:
            keep.scatter_(-1, torch.topk(cpu, k, dim=-1, largest=False).indices, False)
        keep = keep.to(logits.device)
    return _masked_entropy(logits, keep)


def clamped_kthvalue(logits: torch.Tensor, clamp_p: float) -> torch.Tensor:
    """Threshold = (k+1)-th smallest by torch.kthvalue on the device, keep z >= threshold (the tie rule of docs/METHOD.md)."""
    k = aent.num_removed(logits.shape[-1], clamp_p)
    with torch.no_grad():
        z = logits.detach().float()
        threshold = torch.kthvalue(z, k + 1, dim=-1, keepdim=True).values
        keep = z >= threshold
        del z
    return _masked_entropy(logits, keep)


def make_variants(device: str, fused_configs: List[str]) -> Dict[str, Callable]:
    verl_entropy, _ = _verl_entropy_fn()
    variants: Dict[str, Callable] = {
        "full_verl": lambda x, p: verl_entropy(x),
        "cpu_mask": clamped_cpu_mask,
        "kthvalue": clamped_kthvalue,
        "aent_torch": lambda x, p: aent.clamped_entropy(x, p, impl="torch"),
    }
    if device == "cuda":
        variants["aent_fused"] = lambda x, p: aent.clamped_entropy(x, p, impl="triton")

        def fused_fallback(x, p):
            """Every row forced onto the select's fallback passes (a 16-element candidate limit)."""
            from aent.ops.triton_entropy import clamped_entropy_rows

            return clamped_entropy_rows(x.reshape(-1, x.shape[-1]), aent.num_removed(x.shape[-1], p), candidates=16)

        def fused_half_rows(x, p):
            """Every other row skipped by row_mask (as the verl loss skips prompt rows)."""
            rows2d = x.reshape(-1, x.shape[-1])
            mask = torch.arange(rows2d.shape[0], device=x.device) % 2 == 0
            return aent.ops.clamped_entropy_triton(rows2d, aent.num_removed(x.shape[-1], p), row_mask=mask)

        variants["aent_fused[fallback]"] = fused_fallback
        variants["aent_fused[row_mask 1/2]"] = fused_half_rows
        for config in fused_configs:
            block, warps = (int(v) for v in config.lower().split("x"))

            def fused(x, p, block=block, warps=warps):
                from aent.ops.triton_entropy import clamped_entropy_rows

                return clamped_entropy_rows(
                    x.reshape(-1, x.shape[-1]),
                    aent.num_removed(x.shape[-1], p),
                    forward_block=block,
                    forward_warps=warps,
                )

            variants[f"aent_fused[{block}x{warps}]"] = fused
    return variants


# --------------------------------------------------------------------------------------------------------------
# Measurement.
# --------------------------------------------------------------------------------------------------------------


def _forward_backward(fn, logits: torch.Tensor, clamp_p: float, grad_out: Optional[torch.Tensor] = None):
    x = logits.detach().requires_grad_()
    ent = fn(x, clamp_p)
    ent.backward(torch.ones_like(ent) if grad_out is None else grad_out)
    return ent.detach(), x.grad


def check_against_torch_path(fn, name: str, logits: torch.Tensor, clamp_p: float, rows: int) -> str:
    """Entropy and gradient of ``fn`` vs aent's torch path on the first ``rows`` rows: 'ok' or what differs."""
    sample = logits[:rows]
    gen = torch.Generator(device=sample.device).manual_seed(0)
    grad_out = torch.randn(sample.shape[0], device=sample.device, generator=gen)
    p_ref = 0.0 if name == "full_verl" else clamp_p
    ent, grad = _forward_backward(fn, sample, clamp_p, grad_out)
    ref, ref_grad = _forward_backward(lambda x, p: aent.clamped_entropy(x, p, impl="torch"), sample, p_ref, grad_out)
    if "row_mask" in name:  # skipped rows: entropy 0 and zero gradient; the others as usual
        skipped = torch.arange(sample.shape[0], device=sample.device) % 2 == 1
        if ent[skipped].any() or grad[skipped].any():
            return "MISMATCH (a skipped row has a non-zero entropy or gradient)"
        ref, ref_grad = ref.masked_fill(skipped, 0.0), ref_grad.masked_fill(skipped[:, None], 0.0)
    ent_err = (ent.float() - ref).abs().max().item() / max(ref.abs().max().item(), 1.0)
    grad_err = (grad.float() - ref_grad.float()).abs().max().item() / max(ref_grad.float().abs().max().item(), 1e-12)
    # verl's formula runs in the input dtype (bf16 softmax); the rest compute in float32. cpu_mask breaks ties at the
    # boundary arbitrarily, which moves its result a little on tie-heavy (bf16) logits.
    low_precision = name == "full_verl" and logits.dtype != torch.float32
    ent_tol = 3e-2 if low_precision else 2e-4
    grad_tol = 5e-2 if low_precision or logits.dtype != torch.float32 else 2e-3
    if name == "cpu_mask" and logits.dtype != torch.float32:
        ent_tol, grad_tol = 2e-3, 0.5
    status = "ok" if (ent_err <= ent_tol and grad_err <= grad_tol) else "MISMATCH"
    return f"{status} (ent {ent_err:.1e}, grad {grad_err:.1e}, relative)"


def time_variant(fn, logits: torch.Tensor, clamp_p: float, device: str, warmup: int, reps: int):
    """(ms per forward+backward for each rep, peak extra GiB or nan)."""
    times, peaks = [], []
    for rep in range(warmup + reps):
        x = logits.detach().requires_grad_()
        sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            ent = fn(x, clamp_p)
            ent.sum().backward()
            end.record()
            torch.cuda.synchronize()
            elapsed = start.elapsed_time(end)
            peak = (torch.cuda.max_memory_allocated() - before) / GIB
        else:
            t0 = time.perf_counter()
            ent = fn(x, clamp_p)
            ent.sum().backward()
            elapsed = (time.perf_counter() - t0) * 1e3
            peak = float("nan")
        del ent, x
        if rep >= warmup:
            times.append(elapsed)
            peaks.append(peak)
    return times, max(peaks)


TABLE_COLUMNS = [
    "variant",
    "dtype",
    "tokens",
    "ms_min",
    "ms_median",
    "ratio_vs_full",
    "peak_extra_gib",
    "peak_over_logits",
    "check",
]


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_benchmark(args) -> int:
    device = args.device
    env = environment(device)
    variants = make_variants(device, args.fused_configs)
    if args.variants:
        unknown = sorted(set(args.variants) - set(variants))
        if unknown:
            raise SystemExit(f"--variants: unknown {unknown}; choose from {sorted(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.variants or k == "full_verl"}
    _, verl_source = _verl_entropy_fn()
    print(f"# {env['device']} | torch {env['torch']} | triton {env['triton']} | full_verl = {verl_source}")
    rows: List[Dict[str, str]] = []
    failed = False
    try:
        from tqdm import tqdm
    except Exception:  # tqdm absent on the GPU image: plain iteration

        def tqdm(iterable, **_):
            return iterable

    cases = [(t, d) for t in args.tokens for d in args.dtypes]
    for tokens, dtype_name in tqdm(cases, desc="cases", disable=not sys.stderr.isatty()):
        dtype = DTYPES[dtype_name]
        gen = torch.Generator(device=device).manual_seed(tokens)
        try:
            logits = torch.randn(tokens, args.vocab, device=device, generator=gen).mul_(args.scale).to(dtype)
            if device == "cuda":
                torch.cuda.empty_cache()  # give the float32 draw back before measuring (T = 16384: 10 GB)
        except Exception as error:
            if not _is_oom(error):
                raise
            print(f"# T={tokens} {dtype_name}: the logits themselves do not fit; skipped")
            continue
        logits_gib = logits.numel() * logits.element_size() / GIB
        full_ms = float("nan")
        for name, fn in variants.items():
            row = dict(
                env,
                variant=name,
                dtype=dtype_name,
                tokens=tokens,
                vocab=args.vocab,
                clamp_p=args.clamp_p,
                logits_gib=fmt(logits_gib, 3),
                note="",
            )
            reps = args.reps
            if name == "cpu_mask":
                if tokens > args.cpu_mask_max_tokens:
                    row.update(check="skipped", note=f"T > --cpu-mask-max-tokens {args.cpu_mask_max_tokens}")
                    rows.append(row)
                    continue
                reps = min(reps, args.cpu_mask_reps)
            try:
                row["check"] = check_against_torch_path(fn, name, logits, args.clamp_p, args.check_rows)
                if row["check"].startswith("MISMATCH") and name.startswith("aent_fused"):
                    failed = True
                times, peak = time_variant(
                    fn, logits, args.clamp_p, device, args.warmup if name != "cpu_mask" else 0, reps
                )
            except Exception as error:
                if not _is_oom(error):
                    row.update(check=row.get("check", "error"), note=f"{type(error).__name__}: {str(error)[:200]}")
                    rows.append(row)
                    print(f"# {name} T={tokens} {dtype_name}: {row['note']}")
                    failed = failed or name.startswith("aent_fused")
                    continue
                row.update(note="out of memory")
                rows.append(row)
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            finally:
                if device == "cuda":
                    torch.cuda.empty_cache()
            ms_min, ms_median = min(times), statistics.median(times)
            if name == "full_verl":
                full_ms = ms_median
            row.update(
                ms_min=fmt(ms_min, 3),
                ms_median=fmt(ms_median, 3),
                reps=len(times),
                peak_extra_gib=fmt(peak, 3),
                peak_over_logits=fmt(peak / logits_gib, 2),
                ratio_vs_full=fmt(ms_median / full_ms, 2),
            )
            rows.append(row)
        del logits
        if device == "cuda":
            torch.cuda.empty_cache()
    print_table(rows, TABLE_COLUMNS)
    csv_path = args.csv or (None if device == "cpu" else REPO / "benchmarks" / "entropy.csv")
    if csv_path is not None:
        append_csv(Path(csv_path), rows, CSV_FIELDS)
        print(f"# appended {len(rows)} rows to {csv_path}")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------------------------
# --verify: full-size correctness of the fused path against the torch path and the float64 reference.
# --------------------------------------------------------------------------------------------------------------


def run_verify(args) -> int:
    if args.device != "cuda":
        raise SystemExit("--verify checks the compiled kernels and needs --device cuda")
    if not aent.ops.triton_available():
        print("FAIL: Triton or aent's kernels do not import here")
        return 1
    env = environment("cuda")
    print(f"# verify on {env['device']} | torch {env['torch']} | triton {env['triton']} | V = {args.vocab}")
    tolerances = {torch.float32: (1e-4, 2e-6), torch.bfloat16: (1.6e-2, 1e-5)}
    failures = 0
    print("dtype  rows  p     ent_vs_torch  grad_vs_torch  ent_vs_f64  grad_vs_f64  fused_peak/logits  status")
    for dtype_name in ("fp32", "bf16"):
        dtype = DTYPES[dtype_name]
        for rows in (1, 3, 4097):
            gen = torch.Generator(device="cuda").manual_seed(rows)
            logits = (torch.randn(rows, args.vocab, device="cuda", generator=gen) * args.scale).to(dtype)
            logits[:, -64:] = float("-inf")  # padded vocabulary columns
            if rows >= 3:
                logits[1] = (logits[1].float() * 4).round().to(dtype) / 4  # heavy ties
            grad_out = torch.randn(rows, device="cuda", generator=gen)
            for clamp_p in (0.0, args.clamp_p):
                ok = True
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                ent, grad = _forward_backward(
                    lambda x, p: aent.clamped_entropy(x, p, impl="triton"), logits, clamp_p, grad_out
                )
                peak = (torch.cuda.max_memory_allocated() - before) / (logits.numel() * logits.element_size())
                ref, ref_grad = _forward_backward(
                    lambda x, p: aent.clamped_entropy(x, p, impl="torch"), logits, clamp_p, grad_out
                )
                rtol, atol = tolerances[dtype]
                ent_err = (ent - ref).abs().max().item()
                grad_err = (grad.float() - ref_grad.float()).abs().max().item()
                ok &= torch.allclose(ent, ref, rtol=1e-4, atol=1e-4)
                ok &= torch.allclose(grad.float(), ref_grad.float(), rtol=rtol, atol=atol)
                ent64 = grad64 = float("nan")
                if rows <= 3:
                    x64 = logits.detach().cpu().double().requires_grad_()
                    r64 = aent.clamped_entropy(x64, clamp_p, impl="reference")
                    r64.backward(grad_out.cpu().double())
                    ent64 = (ent.cpu().double() - r64.detach()).abs().max().item()
                    grad64 = (grad.cpu().double() - x64.grad).abs().max().item()
                    ok &= torch.allclose(ent.cpu().double(), r64.detach(), rtol=1e-4, atol=1e-4)
                    ok &= torch.allclose(grad.cpu().double(), x64.grad, rtol=rtol, atol=atol)
                if rows >= 3 and clamp_p > 0:
                    # The fallback path (every row) and row skipping, against the same torch-path results.
                    rows2d, k = logits, aent.num_removed(args.vocab, clamp_p)
                    from aent.ops.triton_entropy import clamped_entropy_rows

                    fb, fb_grad = _forward_backward(
                        lambda x, p, k=k: clamped_entropy_rows(x, k, candidates=16), rows2d, clamp_p, grad_out
                    )
                    ok &= torch.allclose(fb, ref, rtol=1e-4, atol=1e-4)
                    ok &= torch.allclose(fb_grad.float(), ref_grad.float(), rtol=rtol, atol=atol)
                    mask = torch.arange(rows, device="cuda") % 2 == 0
                    rm, rm_grad = _forward_backward(
                        lambda x, p, k=k, m=mask: aent.ops.clamped_entropy_triton(x, k, row_mask=m),
                        rows2d,
                        clamp_p,
                        grad_out,
                    )
                    ok &= torch.allclose(rm[mask], ref[mask], rtol=1e-4, atol=1e-4)
                    ok &= torch.allclose(rm_grad[mask].float(), ref_grad[mask].float(), rtol=rtol, atol=atol)
                    ok &= not rm[~mask].any() and not rm_grad[~mask].any()
                    # Rows that start one element past a 16-byte boundary, V - 1 columns (no multiple of 16): the
                    # kernels' aligned body between masked edge runs, and the gradient laid out at the same offsets.
                    view = logits[:, 1:]
                    sv, sv_grad = _forward_backward(
                        lambda x, p: aent.clamped_entropy(x, p, impl="triton"), view, clamp_p, grad_out
                    )
                    sv_ref, sv_ref_grad = _forward_backward(
                        lambda x, p: aent.clamped_entropy(x, p, impl="torch"), view, clamp_p, grad_out
                    )
                    ok &= torch.allclose(sv, sv_ref, rtol=1e-4, atol=1e-4)
                    ok &= torch.allclose(sv_grad.float(), sv_ref_grad.float(), rtol=rtol, atol=atol)
                    del fb, fb_grad, rm, rm_grad, sv, sv_grad, sv_ref, sv_ref_grad
                if clamp_p > 0:
                    from aent.ops.triton_entropy import forward_passes

                    passes = forward_passes(logits, aent.num_removed(args.vocab, clamp_p))
                    print(f"       rows whose select finished in 2 passes: {(passes == 2).sum().item()} of {rows}")
                failures += not ok
                print(
                    f"{dtype_name:5}  {rows:4}  {clamp_p:<4}  {ent_err:12.2e}  {grad_err:13.2e}  {ent64:10.2e}  "
                    f"{grad64:11.2e}  {peak:17.2f}  {'ok' if ok else 'FAIL'}"
                )
                del ent, grad, ref, ref_grad
            del logits
            torch.cuda.empty_cache()
    print(f"# verify: {failures} failure(s)")
    return 1 if failures else 0


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, nargs="+", help="rows T (default: 4096 16384 on CUDA, 64 256 on CPU)")
    parser.add_argument("--vocab", type=int, help="V (default: 151936 on CUDA, 4096 on CPU)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--clamp-p", type=float, default=0.33, help="removed fraction p (default 0.33)")
    parser.add_argument("--scale", type=float, default=3.0, help="logits = randn * scale (default 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument(
        "--cpu-mask-max-tokens",
        type=int,
        default=4096,
        help="largest T for the CPU-mask method (seconds per call, ~1.2 GB host RAM per 1k rows)",
    )
    parser.add_argument("--cpu-mask-reps", type=int, default=2)
    parser.add_argument("--check-rows", type=int, default=256, help="rows of the correctness check before timing")
    parser.add_argument("--variants", nargs="+", help="only these variants (full_verl always runs: it is the base)")
    parser.add_argument(
        "--fused-configs",
        nargs="*",
        default=[],
        help="extra fused variants with forward BLOCKxWARPS, e.g. 1024x4 4096x8 (CUDA)",
    )
    parser.add_argument("--csv", type=Path, help="results file (default benchmarks/entropy.csv on CUDA, none on CPU)")
    parser.add_argument("--quick", action="store_true", help="T = 4096 only (CUDA), 3 repetitions, 1 warm-up")
    parser.add_argument("--verify", action="store_true", help="full-size correctness of the fused path only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu")
    if not 0.0 <= args.clamp_p < 1.0:
        parser.error(f"--clamp-p must be in [0, 1), got {args.clamp_p}")
    cpu = args.device == "cpu"
    args.vocab = args.vocab or (4096 if cpu else 151_936)
    if args.tokens is None:
        args.tokens = ([64] if args.quick else [64, 256]) if cpu else ([4096] if args.quick else [4096, 16384])
    if args.quick:
        args.reps, args.warmup, args.cpu_mask_reps = 3, 1, 1
    if args.reps < 1 or args.warmup < 0:
        parser.error("--reps must be >= 1 and --warmup >= 0")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_verify(args) if args.verify else run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
