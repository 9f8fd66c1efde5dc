"""End-to-end matrix: AEnt in the settings real verl runs use, each cell a short ``main_ppo`` on a CPU.

Run with the end-to-end environment (``make e2e-matrix`` builds ``.venv-e2e`` and calls this)::

    .venv-e2e/bin/python tests/e2e/matrix.py [--cells fsdp1,bf16] [--ci] [--list] [--workdir build/e2e-matrix]

Every cell is one entry of :data:`CELLS`: its Hydra overrides on top of :data:`MATRIX_BASE` (padding removal,
dynamic batches, gradient checkpointing, several micro-batches) and the run's CPU settings (``run.overrides``). A
cell runs two steps and is asserted from the metrics verl logged (:mod:`checks`):

* the AEnt metrics present and finite; ``actor/loss = pg_loss - coef x aent_loss_entropy`` (the term as it entered
  the loss); the controller's input equal to the token-weighted mean recomputed from the logged sums, and each
  step's coefficient the one the controller's rule gave; AEnt's op and verl's log-probs equal up to rounding
  (``actor/aent_logprob_gap``); every rank and micro-batch trained with the step's one coefficient;
* on an on-policy cell (one mini-batch, one epoch): ``actor/ppo_kl`` 0 and ``actor/pg_clipfrac`` 0 within float
  rounding, and, where the cell names a baseline, no larger than plain GRPO's in the same settings.

A new cell is a few lines in :data:`CELLS`; ``ci=True`` puts it in the part that CI runs (``--ci``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import time
from typing import Dict, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import checks  # noqa: E402
import run  # noqa: E402

# Padding removal, dynamic batches, gradient checkpointing: the settings of verl's own GRPO examples. The token
# budget per micro-batch is small so that an update has several micro-batches.
MATRIX_BASE = (
    "actor_rollout_ref.model.use_remove_padding=true",
    "actor_rollout_ref.model.enable_gradient_checkpointing=true",
    "actor_rollout_ref.actor.use_dynamic_bsz=true",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=256",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=256",
)
FP32 = "actor_rollout_ref.actor.fsdp_config.mixed_precision"  # run.overrides sets fp32; dropped: verl's bf16 default
COMPILE = "actor_rollout_ref.actor.fsdp_config.use_torch_compile"  # run.overrides sets false; dropped: verl's true
TWO_RANKS = ("trainer.n_gpus_per_node=2", "+ray_kwargs.ray_init.num_gpus=2")

# README section 1: the one flag and the options of an existing GRPO run (the stock cell); warm-up 0 so that the
# controller moves within the cell's two steps.
README_OPTIONS = {"clamp_p": 0.33, "coef_init": 0.002, "entropy_low": 0.15, "entropy_high": 0.24, "warmup_steps": 0}
README_DEFAULTS = {"lr": 0.002, "coef_min": 6e-4, "coef_max": 9e-3}  # aent.verl.options defaults, for the checks


@dataclasses.dataclass(frozen=True)
class Cell:
    name: str
    what: str
    overrides: Tuple[str, ...] = ()  # on top of MATRIX_BASE and run.overrides, replacing the same keys
    drop: Tuple[str, ...] = ()  # keys of run.overrides left to the config (verl's or the recipe's default)
    recipe: str = "aent_grpo_math"
    config_path: Optional[str] = None  # None: the repository's configs; "verl": verl's own (stock ppo_trainer)
    options: Optional[Dict[str, float]] = None  # AEnt options (default run.AENT_OPTIONS)
    option_prefix: str = "aent."  # "+aent." for a config without an aent block
    ranks: int = 1
    on_policy: bool = True  # one mini-batch, one epoch: the PPO ratio must be 1
    baseline: Optional[str] = None  # recipe of a plain GRPO run in the same settings, compared on ppo_kl
    kl_tol: float = 1e-6  # |ppo_kl| of an on-policy step: float rounding
    gap_tol: float = 1e-4  # |AEnt op's log-prob - verl's|: fp32 rounding
    ci: bool = False  # in the part CI runs


# One entry per setting. A recipe of the repository is a cell too, e.g. Cell("skywork", "configs/skywork_math.yaml",
# recipe="skywork_math") (its own aent options: options={...}); a verl switch is its override, e.g.
# Cell("fused", "fused kernels", ("actor_rollout_ref.model.use_fused_kernels=true",)).
CELLS = (
    Cell("fsdp2", "FSDP2 (the recipe's strategy)"),
    Cell("fsdp1", "FSDP1, verl's default strategy", ("actor_rollout_ref.actor.strategy=fsdp",), ci=True),
    Cell("dp2", "two data-parallel ranks", TWO_RANKS, ranks=2, ci=True),
    Cell(
        "sp2",
        "Ulysses sequence parallelism 2 (two ranks, one data-parallel group)",
        (*TWO_RANKS, "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"),
        ranks=2,
        ci=True,
    ),
    # verl's default mixed precision: bf16 parameters and logits, fp32 reduce and buffers; no flash-attn on a CPU,
    # so verl's log-probs of bf16 logits are computed in bf16 (logprobs_from_logits_v2)
    Cell("bf16", "bf16 mixed precision", drop=(FP32,), baseline="grpo_math", gap_tol=0.1, ci=True),
    Cell(
        "epochs2",
        "two mini-batches and ppo_epochs=2 (off-policy after the first mini-batch)",
        ("actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.actor.ppo_epochs=2"),
        on_policy=False,
    ),
    Cell("compile", "use_torch_compile at verl's default (on)", drop=(COMPILE,)),
    Cell(
        "stock",
        "verl's stock ppo_trainer config (FSDP1 by default) with README section 1's flag and options",
        (
            "algorithm.adv_estimator=grpo",
            "trainer.v1.trainer_mode=aent",
            "actor_rollout_ref.rollout.name=vllm",
        ),
        recipe="ppo_trainer",
        config_path="verl",
        options=README_OPTIONS,
        option_prefix="+aent.",
    ),
)


def cell_extra(cell: Cell):
    options = run.AENT_OPTIONS if cell.options is None else cell.options
    return [*MATRIX_BASE, *cell.overrides, *(f"{cell.option_prefix}{k}={v}" for k, v in options.items())]


def check_options(cell: Cell):
    if cell.options is None:
        return run.AENT_OPTIONS
    return {**README_DEFAULTS, **cell.options}


def run_cell(cell: Cell, ctx, timer) -> dict:
    common = dict(steps=2, save_freq=-1, timer=timer, config_path=cell.config_path, drop=cell.drop, **ctx)
    metrics, log = run.run_main_ppo(cell.recipe, f"{cell.name}_aent", cell_extra(cell), **common)
    baseline = None
    logs = [log]
    if cell.baseline:
        base_extra = [*MATRIX_BASE, *cell.overrides]
        baseline, base_log = run.run_main_ppo(cell.baseline, f"{cell.name}_grpo", base_extra, **common)
        logs.append(base_log)
    options = check_options(cell)
    label = cell.name
    try:
        run.check(f"{label}: steps 1-2", checks.check_steps, metrics, [1, 2])
        names = [
            checks.CLAMPED_ENTROPY,
            checks.COEF,
            checks.COEF_NEXT,
            checks.LOSS,
            checks.PG_LOSS,
            checks.LOSS_ENTROPY,
            checks.ENTROPY_SUM,
            checks.NUM_TOKENS,
            checks.LOGPROB_GAP,
        ]
        run.check(f"{label}: AEnt metrics present and finite", checks.check_present_and_finite, metrics, names)
        run.check(f"{label}: loss = pg_loss - coef x entropy term", checks.check_loss_identity_terms, metrics)
        run.check(f"{label}: controller input = logged sum / tokens", checks.check_controller_input, metrics)
        first = options["coef_init"]
        run.check(
            f"{label}: the controller followed its rule",
            checks.check_controller,
            metrics,
            options,
            first,
            every_step_moves=cell.options is None,
        )
        run.check(
            f"{label}: AEnt's op and verl's log-probs agree (<= {cell.gap_tol})",
            checks.check_logprob_gap,
            metrics,
            cell.gap_tol,
        )
        run.check(f"{label}: one coefficient on every rank", checks.check_same_coef_on_ranks, metrics)
        run.check(f"{label}: advantages not all equal", checks.check_advantages_spread, metrics)
        if cell.on_policy:
            run.check(
                f"{label}: on-policy ppo_kl == 0 and pg_clipfrac == 0"
                + (f" (no larger than {cell.baseline}'s)" if baseline else ""),
                checks.check_on_policy,
                metrics,
                cell.kl_tol,
                baseline,
            )
    except checks.E2EFailure:
        run.print_tails(logs)
        raise
    keep = (checks.PPO_KL, checks.PG_CLIPFRAC, checks.LOGPROB_GAP, checks.COEF, checks.CLAMPED_ENTROPY, "timing_s/step")
    summary = {step: {k: row.get(k) for k in keep} for step, row in sorted(metrics.items())}
    if baseline:
        summary["baseline"] = {step: {k: row.get(k) for k in keep[:2]} for step, row in sorted(baseline.items())}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(run.REPO, "build", "e2e-matrix"))
    parser.add_argument("--cells", help="comma-separated cell names (default: all)")
    parser.add_argument("--ci", action="store_true", help="only the cells marked for CI")
    parser.add_argument("--list", action="store_true", help="list the cells and exit")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per main_ppo run (default 1200)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    if args.list:
        for cell in CELLS:
            print(f"{cell.name:10s} {'ci ' if cell.ci else '   '}{cell.what}")
        return 0
    by_name = {cell.name: cell for cell in CELLS}
    if args.cells:
        unknown = [n for n in args.cells.split(",") if n not in by_name]
        if unknown:
            raise SystemExit(f"unknown cells {unknown}; cells: {sorted(by_name)}")
        cells = [by_name[n] for n in args.cells.split(",")]
    else:
        cells = [c for c in CELLS if c.ci or not args.ci]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    workdir = os.path.abspath(args.workdir)
    env = run.prepare_workdir(workdir)
    timer = run.StepTimer()
    t0 = time.time()
    model = run.build_model(os.path.join(workdir, "tiny_qwen2"))
    data_dir = run.prepare_data(workdir, env, timer, args.prompts)
    ctx = dict(model=model, data_dir=data_dir, workdir=workdir, env=env, timeout=args.timeout, batch=args.batch)
    report = {"cells": {}}
    for cell in cells:
        t_cell = time.time()
        report["cells"][cell.name] = run_cell(cell, ctx, timer)
        report["cells"][cell.name]["seconds"] = round(time.time() - t_cell, 1)
        print(f"[e2e-matrix] cell {cell.name} passed in {time.time() - t_cell:.0f} s", flush=True)
    report["timings"] = timer.rows
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    names = ", ".join(c.name for c in cells)
    print(f"[e2e-matrix] {len(cells)} cells passed ({names}) in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
