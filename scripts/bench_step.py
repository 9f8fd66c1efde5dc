#!/usr/bin/env python3
"""Training-step overhead of the entropy term: forward + backward of a Qwen2.5-1.5B-shaped model.

The model is built from a ``transformers`` ``Qwen2Config`` with Qwen2.5-1.5B's shapes (28 layers, hidden 1536,
12 query / 2 key-value heads, MLP 8960, V = 151936, tied embeddings), random bf16 weights and sdpa attention. One
step is a forward + backward over ``batch x seq`` tokens; logits are upcast to float32 as verl does. Variants:

``(a) pg``            policy-gradient-style loss: ``-(advantage * log p(token)).mean()``
``(b) pg+entropy``    (a) minus ``coef *`` the full-vocabulary entropy (verl's formula, eager)
``(c) pg+aent``       (a) minus ``coef *`` the clamped entropy (``aent.clamped_entropy``; the fused kernels on CUDA)
``(d) pg+aent_torch`` (a) minus ``coef *`` the clamped entropy by aent's torch path (for comparison)

Reports ms (CUDA events, min and median after warm-up), peak memory and the ratio to (a); appends the rows to
``benchmarks/step.csv`` (CUDA) with device, versions and date. The target (docs/PERFORMANCE.md, "Targets and status") is (c)/(a) <= 1.03.

    python scripts/bench_step.py                   # CUDA, 4 x 1024 tokens
    python scripts/bench_step.py --device cpu      # tiny config on the CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchlib import exit_on_help  # noqa: E402

if __name__ == "__main__":
    exit_on_help(__doc__)  # before torch loads: help in a fraction of a second

import torch  # noqa: E402
from benchlib import GIB, append_csv, environment, print_table  # noqa: E402

import aent  # noqa: E402
import aent.ops  # noqa: E402
from aent.experiments.tiny_model import PRESETS, build_qwen2  # noqa: E402

CSV_FIELDS = [
    "date_utc",
    "device",
    "torch",
    "triton",
    "transformers",
    "model",
    "tokens",
    "variant",
    "entropy_impl",
    "ms_min",
    "ms_median",
    "reps",
    "peak_gib",
    "ratio_vs_pg",
    "note",
]


def _import_transformers():
    try:
        import transformers
        from transformers import Qwen2Config, Qwen2ForCausalLM
    except ImportError as error:
        raise SystemExit(
            f"bench_step needs transformers ({error}). On a machine without internet, bring its wheel: here, "
            "`python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "
            "--platform manylinux2014_x86_64 -d .whl transformers huggingface_hub tokenizers safetensors regex` and "
            "install them there with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and "
            "PYTHONPATH=/tmp/site (see docs/PERFORMANCE.md)."
        ) from error
    return transformers, Qwen2Config, Qwen2ForCausalLM


def build_model(preset: str, device: str):
    _import_transformers()  # a clear message when transformers is missing
    model = build_qwen2(preset, dtype=torch.bfloat16, device=device, attn_implementation="sdpa")
    model.train()
    return model


def _full_entropy(logits: torch.Tensor) -> torch.Tensor:
    try:
        from verl.utils.torch_functional import entropy_from_logits

        return entropy_from_logits(logits)
    except Exception:  # the same formula when verl is absent
        probs = torch.softmax(logits, dim=-1)
        return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def step(model, input_ids, labels, advantages, variant: str, clamp_p: float, coef: float, entropy_impl: str):
    """One forward + backward; returns the loss (detached)."""
    logits = model(input_ids=input_ids).logits.float()  # verl upcasts the logits to float32
    log_probs = -torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
    ).reshape(labels.shape)
    loss = -(advantages * log_probs).mean()
    if variant == "pg+entropy":
        loss = loss - coef * _full_entropy(logits).mean()
    elif variant == "pg+aent":
        loss = loss - coef * aent.clamped_entropy(logits, clamp_p, impl=entropy_impl).mean()
    elif variant == "pg+aent_torch":
        loss = loss - coef * aent.clamped_entropy(logits, clamp_p, impl="torch").mean()
    loss.backward()
    return loss.detach()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, help="tokens per sequence (default 1024 on CUDA, 64 on CPU)")
    parser.add_argument("--clamp-p", type=float, default=0.33)
    parser.add_argument("--coef", type=float, default=0.002, help="entropy coefficient (paper setting (a) lambda_0)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["pg", "pg+entropy", "pg+aent", "pg+aent_torch"],
        choices=["pg", "pg+entropy", "pg+aent", "pg+aent_torch"],
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model (default on CPU)")
    parser.add_argument("--csv", type=Path, help="results file (default benchmarks/step.csv on CUDA, none on CPU)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu")
    device = args.device
    tiny = args.tiny or device == "cpu"
    preset = "qwen2.5-1.5b-tiny" if tiny else "qwen2.5-1.5b"
    shape = PRESETS[preset]
    seq = args.seq or (64 if device == "cpu" else 1024)
    # "auto": the fused kernels on CUDA when Triton imports, the torch path otherwise (reported in the table)
    entropy_impl = "triton" if device == "cuda" and aent.ops.triton_available() else "torch"
    env = environment(device, extra=("transformers",))
    model_name = "tiny-qwen2" if tiny else "qwen2.5-1.5b-shaped"
    print(
        f"# {env['device']} | torch {env['torch']} | triton {env['triton']} | transformers {env['transformers']} | "
        f"{model_name}, {args.batch} x {seq} tokens, random bf16 weights, sdpa | clamped entropy by {entropy_impl}"
    )
    model = build_model(preset, device)
    gen = torch.Generator(device=device).manual_seed(0)
    input_ids = torch.randint(0, shape["vocab_size"], (args.batch, seq), device=device, generator=gen)
    labels = torch.randint(0, shape["vocab_size"], (args.batch, seq), device=device, generator=gen)
    advantages = torch.randn(args.batch, seq, device=device, generator=gen)

    rows: List[Dict] = []
    base_ms = None
    for variant in args.variants:
        times, peaks, note = [], [], ""
        try:
            for rep in range(args.warmup + args.reps):
                model.zero_grad(set_to_none=True)
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    step(model, input_ids, labels, advantages, variant, args.clamp_p, args.coef, entropy_impl)
                    end.record()
                    torch.cuda.synchronize()
                    elapsed = start.elapsed_time(end)
                    peaks.append(torch.cuda.max_memory_allocated() / GIB)
                else:
                    t0 = time.perf_counter()
                    step(model, input_ids, labels, advantages, variant, args.clamp_p, args.coef, entropy_impl)
                    elapsed = (time.perf_counter() - t0) * 1e3
                if rep >= args.warmup:
                    times.append(elapsed)
        except Exception as error:  # out of memory or a kernel failure: record it and go on with the next variant
            note = f"{type(error).__name__}: {str(error)[:200]}"
            print(f"# {variant}: {note}")
        finally:
            model.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.empty_cache()
        impl = {"pg+aent": entropy_impl, "pg+aent_torch": "torch", "pg+entropy": "verl formula"}.get(variant, "")
        row = dict(env, model=model_name, tokens=args.batch * seq, variant=variant, entropy_impl=impl, note=note)
        if times:
            median = statistics.median(times)
            base_ms = median if variant == "pg" else base_ms
            row.update(
                ms_min=f"{min(times):.2f}",
                ms_median=f"{median:.2f}",
                reps=len(times),
                peak_gib=f"{max(peaks):.2f}" if peaks else "-",
                ratio_vs_pg=f"{median / base_ms:.3f}" if base_ms else "-",
            )
        rows.append(row)

    cols = ["variant", "entropy_impl", "ms_min", "ms_median", "ratio_vs_pg", "peak_gib", "note"]
    print_table(rows, cols)
    csv_path = args.csv or (None if device == "cpu" else REPO / "benchmarks" / "step.csv")
    if csv_path is not None:
        append_csv(Path(csv_path), rows, CSV_FIELDS)
        print(f"# appended {len(rows)} rows to {csv_path}")
    return 1 if any(r["note"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
