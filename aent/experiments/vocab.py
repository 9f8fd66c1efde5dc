"""``aent vocab-sweep``: the paper's vocabulary argument in a language model trained with GRPO, on a CPU.

The paper's case against a plain entropy bonus is about vocabulary size: with ~1.5e5 output logits, almost all of
them useless in a given context, the bonus pushes probability onto the useless tail, and that bias outweighs the
exploration it buys; the clamped entropy with an adaptive coefficient (AEnt) does not have that problem. This
experiment changes one thing, the number of output logits of the demo's model, and runs the demo's GRPO trainer
(:mod:`aent.experiments.demo`, unchanged) with four arms at each count:

* ``grpo``: no entropy term;
* ``entropy``: the plain bonus (full-vocabulary entropy, constant coefficient);
* ``clamped``: the clamped bonus (``clamp_p``, constant coefficient);
* ``aent``: the clamped entropy with the adaptive coefficient.

Coefficients and band are chosen once, at 32 logits, and kept at every count. The model is warmed up once, at 32
logits (the demo's warm-up); for a larger count its output layer gets the extra rows, tokens the task never uses,
each drawn from a Gaussian fitted to the warmed-up model's own never-used rows (the 10 padded rows of the 32-logit
layer), so that every added token looks, to the model, like a token it has learned not to emit; then every unused
row is lowered by one shared vector until the tail's probability at the warm-up's response positions is the 32-logit
model's. The trunk and the 22 task tokens' rows are the same at every count. docs/VOCAB.md says why, and what the
default run found.

Outputs in ``--out``: ``cells/<count>_<arm>_s<seed>.csv`` (the demo's per-step metrics of every run),
``results.json`` (settings, per-cell summaries, means and spreads over seeds, per-step means),
``table.md`` and ``vocab.png``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

import aent
from aent.experiments import demo

__all__ = ["VocabConfig", "grow_output_layer", "main", "run_sweep", "summarize_cells"]

QWEN25_LOGITS = 151_936  # Qwen2.5's output layer (151,665 tokens, padded)


@dataclass
class VocabConfig:
    """Settings of one sweep. Everything not named here is the demo's (:class:`aent.experiments.demo.DemoConfig`).

    Entropies are in nats per response token; coefficients multiply the token-mean entropy in the loss.
    """

    counts: Tuple[int, ...] = (32, 4096, 32768, QWEN25_LOGITS)
    arms: Tuple[str, ...] = demo.ARMS
    seeds: Tuple[int, ...] = (0, 1, 2)
    # GRPO steps per run, and the batch: prompts x samples per prompt (the demo's default is 16 x 8)
    steps: int = 30
    prompts_per_step: int = 8
    group_size: int = 8
    eval_every: int = 10
    # the entropy arms: the demo's settings, chosen at 32 logits (docs/VOCAB.md, "The arms and their settings");
    # clamp_p is the paper's setting (a)
    entropy_coef: float = 0.1
    clamped_coef: float = 0.1
    clamp_p: float = 0.33
    aent_init: float = 0.05
    aent_low: float = 0.10
    aent_high: float = 0.15
    aent_lr: float = 1.0
    aent_min: float = 0.01
    aent_max: float = 0.2
    # the shared warm-up (model init, warm-up data and the held-out split) and the draw of the added rows
    warmup_seed: int = 0
    warmup_steps: int = 400
    rows_seed: int = 1234
    eval_size: int = 256
    threads: int = 2
    device: str = "cpu"
    out_dir: str = "runs/vocab"
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides: Any) -> VocabConfig:
        """The same code path in about a minute (CI): two small counts, two seeds, a few steps. Numbers mean nothing."""
        base = dict(
            counts=(32, 2048),
            seeds=(0, 1),
            steps=4,
            prompts_per_step=4,
            group_size=4,
            eval_every=2,
            warmup_steps=60,
            eval_size=32,
            quick=True,
        )
        base.update(overrides)
        return cls(**base)

    def demo_config(self, seed: int) -> demo.DemoConfig:
        """The demo trainer's settings for one run (RL seed ``seed``: prompts and sampling)."""
        return demo.DemoConfig(
            steps=self.steps,
            seed=seed,
            device=self.device,
            threads=self.threads,
            out_dir=self.out_dir,
            arms=tuple(self.arms),
            prompts_per_step=self.prompts_per_step,
            group_size=self.group_size,
            eval_every=self.eval_every,
            eval_size=self.eval_size,
            warmup_steps=self.warmup_steps,
            entropy_coef=self.entropy_coef,
            clamped_coef=self.clamped_coef,
            clamp_p=self.clamp_p,
            aent_init=self.aent_init,
            aent_low=self.aent_low,
            aent_high=self.aent_high,
            aent_lr=self.aent_lr,
            aent_min=self.aent_min,
            aent_max=self.aent_max,
        )

    def validate(self) -> None:
        counts = list(self.counts)
        if not counts or any(isinstance(c, bool) or not isinstance(c, int) for c in counts):
            raise ValueError(f"counts must be a non-empty list of integers, got {self.counts!r}")
        if counts != sorted(set(counts)):
            raise ValueError(f"counts must be increasing and distinct, got {self.counts!r}")
        base = self.base_logits()
        if counts[0] != base:
            raise ValueError(
                f"counts must start at {base}, the warm-up model's own output layer (the coefficients are chosen "
                f"there), got {counts[0]}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds!r}")
        if "grpo" not in self.arms:
            raise ValueError(f"arms must include grpo (gains are measured against it), got {self.arms!r}")
        for seed in self.seeds:
            self.demo_config(seed).validate()  # steps, batch, arms, coefficients, band, clamp_p

    @staticmethod
    def base_logits() -> int:
        """The warm-up model's output rows: the demo tokenizer's size rounded up to the demo's multiple (32)."""
        return -(-task_tokens() // demo.DemoConfig.vocab_multiple) * demo.DemoConfig.vocab_multiple


def task_tokens() -> int:
    """The demo tokenizer's size (padding, end of sequence, one token per distinct character): output rows at or
    above it are tokens the task never uses."""
    return 2 + len(dict.fromkeys(demo.ALPHABET))


# ----------------------------------------------------------------------------------------------------------------
# The model at each logit count
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def grow_output_layer(model, num_logits: int, task_tokens: int, seed: int) -> Dict[str, float]:
    """Give ``model`` (tied embeddings) ``num_logits`` output rows, in place; return the added rows' statistics.

    The rows ``>= task_tokens`` of the current layer are tokens the task never uses, which the warm-up has trained
    down; each added row is drawn from the Gaussian (per-dimension mean and standard deviation) fitted to them, with a
    generator seeded by ``seed``, so every added token is one more token of that kind. Rows drawn for a smaller
    count are the first rows drawn for a larger one.
    """
    emb = model.get_input_embeddings().weight
    current, hidden = emb.shape
    if num_logits < current:
        raise ValueError(f"num_logits ({num_logits}) must be at least the model's {current} output rows")
    unused = emb[task_tokens:current].detach().float()
    if unused.shape[0] < 2:
        raise ValueError(
            f"the model has {unused.shape[0]} unused output rows (>= {task_tokens}); at least 2 are needed to draw "
            "more like them"
        )
    mean, std = unused.mean(dim=0), unused.std(dim=0)
    if num_logits > current:
        model.resize_token_embeddings(num_logits, mean_resizing=False)
        weight = model.get_input_embeddings().weight
        gen = torch.Generator().manual_seed(seed)
        block = 4096  # drawn block by block, so that a smaller count's rows are a prefix of a larger count's
        for start in range(current, num_logits, block):
            stop = min(start + block, num_logits)
            draw = torch.randn((block, hidden), generator=gen)[: stop - start]
            weight[start:stop] = (mean + std * draw).to(weight.dtype)
        if model.get_output_embeddings().weight.data_ptr() != weight.data_ptr():
            raise RuntimeError("the output layer is no longer tied to the embedding after resizing")
    return {"unused_rows_fitted": int(unused.shape[0]), "row_norm_mean": float(unused.norm(dim=1).mean())}


@torch.no_grad()
def response_hidden(model, tokenizer, task, cfg: demo.DemoConfig, batches: int = 2) -> torch.Tensor:
    """Final hidden states ``(tokens, H)`` at the positions that predict the target responses of the warm-up's first
    ``batches`` batches, with correct answers: the positions the tail mass is matched on."""
    device = next(model.parameters()).device
    out = []
    for step in range(batches):
        prompts, resp, mask = demo.sft_batch(tokenizer, task.warmup_batch(step, cfg.warmup_batch, 0.0), device)
        length = resp.shape[1]
        hidden = model.model(input_ids=torch.cat([prompts, resp], dim=1)).last_hidden_state
        start = prompts.shape[1] - 1
        out.append(hidden[:, start : start + length][mask.bool()])
    return torch.cat(out).float()


def _positive_direction(hidden: torch.Tensor, steps: int = 500) -> torch.Tensor:
    """A unit vector ``d`` with ``h . d > 0`` for every row ``h`` of ``hidden``, as far from 0 as a few hundred steps of
    soft-min ascent (from the mean direction) get it; raises if the rows do not all lie on one side of a plane."""
    with torch.enable_grad():
        d = hidden.mean(dim=0).clone().requires_grad_(True)
        opt = torch.optim.Adam([d], lr=0.02)
        scale = float(hidden.norm(dim=1).mean())
        for _ in range(steps):
            margin = hidden @ (d / d.norm()) / scale
            loss = torch.logsumexp(-margin / 0.02, dim=0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    d = (d / d.norm()).detach()
    low = float((hidden @ d).min())
    if low <= 0.0:
        raise RuntimeError(f"no direction found with a positive dot product at every position (lowest {low:.3g})")
    return d


def _log_sums(model, task_tokens: int, hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per position of ``hidden``: the log-sum-exp of the task rows' logits and of the unused rows' logits."""
    weight = model.get_output_embeddings().weight
    lse_task = torch.logsumexp(hidden @ weight[:task_tokens].float().T, dim=1)
    lse_tail = torch.cat(
        [torch.logsumexp(hidden @ w.float().T, dim=1, keepdim=True) for w in weight[task_tokens:].split(8192)], dim=1
    ).logsumexp(dim=1)
    return lse_task, lse_tail


@torch.no_grad()
def tail_mass_at(model, task_tokens: int, hidden: torch.Tensor) -> float:
    """The probability on the output rows ``>= task_tokens``, averaged over the positions with hidden states
    ``hidden``."""
    lse_task, lse_tail = _log_sums(model, task_tokens, hidden)
    return float(torch.sigmoid(lse_tail - lse_task).double().mean())


@torch.no_grad()
def match_tail_mass(model, task_tokens: int, hidden: torch.Tensor, target: float) -> Dict[str, float]:
    """Lower every unused output row (``>= task_tokens``) by one shared vector until the tail mass averaged over the
    positions ``hidden`` equals ``target``; in place. Returns the shift and the tail mass before and after.

    Row ``j`` becomes ``e_j - c * d``, with ``d`` a unit direction whose dot product with every hidden state in
    ``hidden`` is positive (:func:`_positive_direction`): every unused logit drops, at every position, by ``c * (h . d)``.
    ``c >= 0`` is found by bisection; the task rows and the trunk are untouched, so the distribution over the task's
    tokens, renormalised, does not change.
    """
    weight = model.get_output_embeddings().weight
    lse_task, lse_tail = _log_sums(model, task_tokens, hidden)
    before = float(torch.sigmoid(lse_tail - lse_task).double().mean())
    if before <= target:
        return {"shift": 0.0, "tail_mass_before": before, "tail_mass_after": before}
    direction = _positive_direction(hidden)
    along = hidden @ direction  # (positions,) > 0: how much a unit shift lowers the tail logits at each position

    def tail(c: float) -> float:
        return float(torch.sigmoid(lse_tail - c * along - lse_task).double().mean())

    low, high = 0.0, 1.0
    while tail(high) > target:
        low, high = high, 2.0 * high
        if high > 1e4:
            raise RuntimeError(f"no shift brings the tail mass down to {target:g}")
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if tail(mid) > target else (low, mid)
    weight[task_tokens:] -= (high * direction).to(weight.dtype)
    return {"shift": high, "tail_mass_before": before, "tail_mass_after": tail(high)}


@torch.no_grad()
def start_measures(model, tokenizer, task, cfg: demo.DemoConfig, compute_score: Callable) -> Dict[str, float]:
    """The model before RL at one count: greedy held-out accuracy, and the tail mass and entropy of its sampled
    responses to the held-out prompts (one sample each, token-means over response tokens)."""
    accuracy = demo.evaluate(model, tokenizer, task, cfg, compute_score)
    device = next(model.parameters()).device
    prompts = demo._encode(tokenizer, [task.prompt(a, b) for a, b in task.eval_pairs], device)
    torch.manual_seed(cfg.seed)
    sums = {"tail_mass": 0.0, "entropy": 0.0, "clamped_entropy_measure": 0.0}
    tokens = 0.0
    for part in prompts.split(64):  # 64 prompts at a time: at 151,936 logits a batch's logits take 0.5 GB
        responses = demo.generate(model, tokenizer, part, cfg)
        zeros = torch.zeros(len(part), device=part.device)
        batch = demo.RolloutBatch(
            prompt_ids=part,
            response_ids=responses,
            response_mask=demo._response_mask(responses, tokenizer.eos_token_id),
            rewards=zeros,
            accuracy=zeros,
            formatted=zeros,
            advantages=zeros,
        )
        _, stats = demo.grpo_loss(model, batch, 0.0, 0.0, measure_clamp_p=cfg.clamp_p, task_tokens=len(tokenizer))
        for key in sums:
            sums[key] += stats[key] * stats["num_tokens"]
        tokens += stats["num_tokens"]
    stats = {key: value / max(tokens, 1.0) for key, value in sums.items()}
    return {
        "eval_accuracy": accuracy,
        "tail_mass": stats["tail_mass"],
        "entropy": stats["entropy"],
        "clamped_entropy": stats["clamped_entropy_measure"],
    }


# ----------------------------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------------------------


def cell_name(count: int, arm: str, seed: int) -> str:
    return f"{count}_{arm}_s{seed}"


def _settings_key(cfg: VocabConfig) -> Dict[str, Any]:
    """What a finished cell depends on (a resumed sweep reuses cells only when this is unchanged)."""
    out = dataclasses.asdict(cfg)
    for name in ("counts", "arms", "seeds", "out_dir", "threads", "quick"):
        out.pop(name)
    return out


def _read_cell(path: str) -> List[Dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: (float(v) if v != "" else float("nan")) for k, v in row.items()} for row in csv.DictReader(fh)]


def run_sweep(
    cfg: VocabConfig, progress: bool = True, compute_score: Optional[Callable] = None, resume: bool = False
) -> Dict[str, Any]:
    """Warm up once, then for every count, seed and arm run the demo's GRPO trainer; write and return the results.

    With ``resume``, cells already written in ``cfg.out_dir`` by a sweep of the same settings are read back instead of
    run again; a directory written with other settings is refused.
    """
    cfg.validate()
    demo._check_dependencies()
    threads = torch.get_num_threads()
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    try:
        return _run_sweep(cfg, progress, compute_score or demo._load_compute_score(), resume)
    finally:
        torch.set_num_threads(threads)


def _run_sweep(cfg: VocabConfig, progress: bool, compute_score: Callable, resume: bool) -> Dict[str, Any]:
    cells_dir = os.path.join(cfg.out_dir, "cells")
    os.makedirs(cells_dir, exist_ok=True)
    settings_path = os.path.join(cfg.out_dir, "settings.json")
    key = _settings_key(cfg)
    if resume and os.path.exists(settings_path):
        with open(settings_path) as fh:
            saved = json.load(fh)
        if saved != key:
            changed = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
            raise ValueError(
                f"--resume: {cfg.out_dir} holds a sweep with other settings ({', '.join(changed)}); use another "
                "--out or leave out --resume to start afresh"
            )
    with open(settings_path, "w") as fh:
        json.dump(key, fh, indent=2)

    device = torch.device(cfg.device)
    base_cfg = cfg.demo_config(cfg.warmup_seed)
    tokenizer = demo.build_tokenizer()
    task = demo.AdditionTask(base_cfg.max_operand, cfg.warmup_seed, cfg.eval_size)
    torch.manual_seed(cfg.warmup_seed)
    base = demo.build_model(len(tokenizer), base_cfg).to(device)
    t0 = time.perf_counter()
    demo.warmup(base, tokenizer, task, base_cfg, progress)
    warmup_seconds = time.perf_counter() - t0

    # the tail mass every count starts from: the warmed-up 32-logit model's, on the warm-up's response positions
    hidden = response_hidden(base, tokenizer, task, base_cfg)
    target = tail_mass_at(base, len(tokenizer), hidden)

    total = len(cfg.counts) * len(cfg.seeds) * len(cfg.arms)
    done = 0
    cells: Dict[str, List[Dict[str, float]]] = {}
    starts: Dict[int, Dict[str, float]] = {}
    for count in cfg.counts:
        model = copy.deepcopy(base)
        grown = grow_output_layer(model, count, len(tokenizer), cfg.rows_seed)
        if count > cfg.counts[0]:
            grown.update(match_tail_mass(model, len(tokenizer), hidden, target))
        else:
            grown.update(shift=0.0, tail_mass_before=target, tail_mass_after=target)
        starts[count] = dict(start_measures(model, tokenizer, task, base_cfg, compute_score), **grown)
        for seed in cfg.seeds:
            run_cfg = cfg.demo_config(seed)
            for arm in cfg.arms:
                done += 1
                name = cell_name(count, arm, seed)
                path = os.path.join(cells_dir, f"{name}.csv")
                if resume and os.path.exists(path):
                    cells[name] = _read_cell(path)
                    continue
                rows = demo.train_arm(
                    arm,
                    copy.deepcopy(model),
                    tokenizer,
                    task,
                    run_cfg,
                    compute_score,
                    progress,
                    desc=f"[{done}/{total}] {count:>6d} logits {arm:>7s} seed {seed}",
                )
                demo.write_metrics_csv(path + ".part", rows)
                os.replace(path + ".part", path)  # a cell file is whole or absent
                cells[name] = rows
                if not progress:
                    last = rows[-1]
                    print(
                        f"[{done}/{total}] {count} logits, {arm}, seed {seed}: eval acc {last['eval_accuracy']:.3f}, "
                        f"tail mass {last['tail_mass']:.2e}, {last['seconds']:.0f} s",
                        flush=True,
                    )
        del model

    results = summarize_cells(cfg, cells, starts)
    results["warmup_seconds"] = warmup_seconds
    results["target_tail_mass"] = target
    results["versions"] = {"torch": torch.__version__, "aent": aent.__version__, "threads": torch.get_num_threads()}
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    with open(os.path.join(cfg.out_dir, "table.md"), "w") as fh:
        fh.write(format_table(results) + "\n")
    plot(os.path.join(cfg.out_dir, "vocab.png"), results)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------------------------

_TAIL_FRACTION = 4  # "late" = the last quarter of the steps


def _late_mean(rows: Sequence[Dict[str, float]], key: str) -> float:
    tail = rows[-max(1, len(rows) // _TAIL_FRACTION) :]
    return sum(r[key] for r in tail) / len(tail)


def _run_summary(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    steps = len(rows)
    return {
        "eval_accuracy_end": rows[-1]["eval_accuracy"],
        "reward_late": _late_mean(rows, "reward"),
        "format_rate_late": _late_mean(rows, "format_rate"),
        "tail_mass_late": _late_mean(rows, "tail_mass"),
        "tail_mass_end": rows[-1]["tail_mass"],
        "entropy_late": _late_mean(rows, "entropy"),
        "clamped_entropy_late": _late_mean(rows, "clamped_entropy"),
        "coef_end": rows[-1]["coef_next"],
        "response_length_late": _late_mean(rows, "response_length"),
        "seconds_per_step": rows[-1]["seconds"] / steps,
    }


def _spread(values: Sequence[float]) -> Dict[str, float]:
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarize_cells(
    cfg: VocabConfig, cells: Dict[str, List[Dict[str, float]]], starts: Dict[int, Dict[str, float]]
) -> Dict[str, Any]:
    """Per-run summaries, their means and spreads over seeds, gains over GRPO (same count and seed), and per-step
    means over seeds (the curves)."""
    runs: Dict[str, Dict[str, float]] = {name: _run_summary(rows) for name, rows in cells.items()}
    table: Dict[str, Dict[str, Any]] = {}
    curves: Dict[str, Dict[str, List[float]]] = {}
    for count in cfg.counts:
        for arm in cfg.arms:
            per_seed = [runs[cell_name(count, arm, s)] for s in cfg.seeds]
            entry = {key: _spread([r[key] for r in per_seed]) for key in per_seed[0]}
            for key in ("eval_accuracy_end", "reward_late", "format_rate_late"):
                gains = [
                    runs[cell_name(count, arm, s)][key] - runs[cell_name(count, "grpo", s)][key] for s in cfg.seeds
                ]
                entry[f"gain_{key}"] = _spread(gains)
            table[f"{count}/{arm}"] = entry
            rows = [cells[cell_name(count, arm, s)] for s in cfg.seeds]
            curves[f"{count}/{arm}"] = {
                key: [statistics.fmean(r[i][key] for r in rows) for i in range(len(rows[0]))]
                for key in ("reward", "format_rate", "tail_mass", "entropy", "clamped_entropy", "coef")
            }
            curves[f"{count}/{arm}"]["tail_mass_min"] = [
                min(r[i]["tail_mass"] for r in rows) for i in range(len(rows[0]))
            ]
            curves[f"{count}/{arm}"]["tail_mass_max"] = [
                max(r[i]["tail_mass"] for r in rows) for i in range(len(rows[0]))
            ]
    return {
        "settings": dataclasses.asdict(cfg),
        "task_tokens": task_tokens(),
        "start": {str(c): v for c, v in starts.items()},
        "runs": runs,
        "table": table,
        "curves": curves,
    }


def _pm(entry: Dict[str, float], fmt: str) -> str:
    return f"{entry['mean']:{fmt}} ± {entry['sd']:{fmt.lstrip('+')}}"


def format_table(results: Dict[str, Any]) -> str:
    """The results as a Markdown table: mean ± standard deviation over seeds."""
    cfg = results["settings"]
    header = (
        "logits",
        "arm",
        "held-out acc",
        "gain vs GRPO",
        "reward*",
        "gain vs GRPO",
        "format*",
        "tail mass*",
        "H*",
        f"H~* (p={cfg['clamp_p']})",
        "coef end",
        "s/step",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for count in cfg["counts"]:
        for arm in cfg["arms"]:
            e = results["table"][f"{count}/{arm}"]
            gain_acc = "—" if arm == "grpo" else _pm(e["gain_eval_accuracy_end"], "+.3f")
            gain_rew = "—" if arm == "grpo" else _pm(e["gain_reward_late"], "+.3f")
            cells = [
                f"{count:,}",
                demo.ARM_LABELS[arm],
                _pm(e["eval_accuracy_end"], ".3f"),
                gain_acc,
                _pm(e["reward_late"], ".3f"),
                gain_rew,
                _pm(e["format_rate_late"], ".3f"),
                f"{e['tail_mass_late']['mean']:.1e} ({e['tail_mass_late']['min']:.0e}-{e['tail_mass_late']['max']:.0e})",
                _pm(e["entropy_late"], ".3f"),
                _pm(e["clamped_entropy_late"], ".3f"),
                f"{e['coef_end']['mean']:.3f}",
                f"{e['seconds_per_step']['mean']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: str, results: Dict[str, Any]) -> None:
    """Four panels: held-out accuracy gain and sampled reward gain over GRPO against the logit count (mean ± sd over
    seeds), the tail mass against the step at the largest count (mean, min-max band), the late tail mass against
    the count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["settings"]
    counts, arms = cfg["counts"], cfg["arms"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=90)
    (ax_acc, ax_rew), (ax_tail, ax_tailc) = axes
    offsets = {arm: 1.0 + 0.06 * (i - (len(arms) - 1) / 2) for i, arm in enumerate(arms)}
    for ax, key, title in (
        (ax_acc, "gain_eval_accuracy_end", "held-out accuracy (greedy) minus GRPO's, end of run"),
        (ax_rew, "gain_reward_late", "sampled reward (T=1) minus GRPO's, last quarter of the run"),
    ):
        for arm in arms:
            if arm == "grpo":
                continue
            means = [results["table"][f"{c}/{arm}"][key]["mean"] for c in counts]
            sds = [results["table"][f"{c}/{arm}"][key]["sd"] for c in counts]
            xs = [c * offsets[arm] for c in counts]
            ax.errorbar(
                xs, means, yerr=sds, color=demo.ARM_COLORS[arm], label=demo.ARM_LABELS[arm], marker="o", capsize=3
            )
        ax.axhline(0.0, color=demo.ARM_COLORS["grpo"], lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("output logits (log scale)", fontsize=8)
        ax.set_title(title, fontsize=9)
    top = counts[-1]
    for arm in arms:
        curve = results["curves"][f"{top}/{arm}"]
        steps = list(range(1, len(curve["tail_mass"]) + 1))
        ax_tail.plot(steps, curve["tail_mass"], color=demo.ARM_COLORS[arm], label=demo.ARM_LABELS[arm])
        ax_tail.fill_between(
            steps, curve["tail_mass_min"], curve["tail_mass_max"], color=demo.ARM_COLORS[arm], alpha=0.15, lw=0
        )
        late = [results["table"][f"{c}/{arm}"]["tail_mass_late"]["mean"] for c in counts]
        ax_tailc.plot(counts, late, color=demo.ARM_COLORS[arm], label=demo.ARM_LABELS[arm], marker="o")
    starts = [results["start"][str(c)]["tail_mass"] for c in counts]
    ax_tailc.plot(counts, starts, color="black", ls=":", marker="x", label="before RL")
    ax_tail.set_yscale("log")
    ax_tail.set_xlabel("GRPO step", fontsize=8)
    ax_tail.set_title(f"tail mass at {top:,} logits (mean over seeds, min-max band)", fontsize=9)
    ax_tailc.set_xscale("log")
    ax_tailc.set_yscale("log")
    ax_tailc.set_xlabel("output logits (log scale)", fontsize=8)
    ax_tailc.set_title("tail mass, last quarter of the run (mean over seeds)", fontsize=9)
    for ax in axes.ravel():
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    ax_tailc.legend(fontsize=7)
    fig.suptitle(
        f"aent vocab-sweep: only the number of output logits changes ({len(cfg['seeds'])} seeds x {cfg['steps']} "
        "GRPO steps per point; tail mass = probability on tokens the task never uses)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def _ints(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aent vocab-sweep",
        description="The demo's GRPO trainer at several output-logit counts (32 to Qwen2.5's 151,936), four arms "
        "(no entropy, plain bonus, clamped bonus, AEnt), several seeds. Writes per-run CSVs, results.json, "
        "table.md and vocab.png. The default takes about 40 minutes on 2 CPU cores (docs/VOCAB.md).",
    )
    parser.add_argument("--out", default="runs/vocab", help="output directory")
    parser.add_argument(
        "--quick", action="store_true", help="a ~1 minute run of the same code path (numbers mean nothing)"
    )
    parser.add_argument("--resume", action="store_true", help="reuse the runs an interrupted sweep left in --out")
    parser.add_argument("--counts", type=_ints, default=None, help="output-logit counts, from 32 (e.g. 32,4096)")
    parser.add_argument("--seeds", type=_ints, default=None, help="RL seeds (e.g. 0,1,2)")
    parser.add_argument("--arms", default=None, help=f"comma-separated subset of {','.join(demo.ARMS)} (grpo included)")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run")
    parser.add_argument("--entropy-coef", type=float, default=None, help="the plain bonus's constant coefficient")
    parser.add_argument("--clamped-coef", type=float, default=None, help="the clamped bonus's constant coefficient")
    parser.add_argument(
        "--clamp-p", type=float, default=None, help="removed fraction of the clamped entropy (clamped and aent arms)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="a line per run instead of progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> VocabConfig:
    overrides: Dict[str, Any] = {"out_dir": args.out, "device": args.device}
    for name in ("counts", "seeds", "steps", "threads", "entropy_coef", "clamped_coef", "clamp_p"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.arms is not None:
        overrides["arms"] = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    return VocabConfig.quick_config(**overrides) if args.quick else VocabConfig(**overrides)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        cfg.validate()
    except ValueError as err:
        print(f"aent vocab-sweep: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        results = run_sweep(cfg, progress=not args.no_progress, resume=args.resume)
    except ValueError as err:
        print(f"aent vocab-sweep: {err}", file=sys.stderr)
        return 2
    print("\n* = mean over the last quarter of the steps; mean ± sd over seeds; gains against GRPO at the same seed\n")
    print(format_table(results))
    print(
        f"\noutputs in {cfg.out_dir}: cells/*.csv, results.json, table.md, vocab.png "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
