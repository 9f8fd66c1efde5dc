"""The paper's controlled experiment (arXiv 2509.03493, Figure 1; docs/METHOD.md), on a CPU: ``aent toy-mdp``.

The published figure plots the *average reward* against the step (0-4000) in panels K = 15, 10 and 1 optimal
actions, plus a bar panel of the final gain over no regularisation at K = 15, 10, 5, 1. Every plateau is a multiple
of 1/25, and the curves are smooth. This module builds a problem family consistent with that:

* **25 independent states** (a one-step decision each, as an answer that is right or wrong), every state with the
  same ``num_actions = 100,000`` actions. The average reward is the mean over the states of the expected reward
  of the current policy, computed exactly: a state that is solved adds 1/25.
* **Rewards per state**: ``K`` optimal actions (reward 1), one decoy (reward ``decoy_reward``, small: a partly right
  answer that the no-bonus learner settles on), everything else 0.
* **Prior** (initial softmax, like a pretrained model's next-token distribution): a few plausible wrong actions hold
  most of the mass, the decoy and the first optimal action ("the answer") have probabilities drawn per state
  (log-uniform), the other 14 optimal candidates sit in the body at ranks drawn per state, and the rest is a long
  ``Normal(0, 1)``-logit tail. **Nested placement**: one instance fixes 15 ordered optimal candidates per state;
  K optimal actions are the first K of them. So the K = 1 problem is the K = 15 problem with 14 optimal actions
  turned into ordinary ones, and K is not confounded with the instance.
* **Learners**: no regularisation; the plain entropy bonus; the clamped bonus (docs/METHOD.md) for each ``p``;
  AEnt (clamped bonus with :func:`aent.build_coefficient`'s adaptive controller), which is *not in the figure*.
* **Updates**: exact softmax policy gradient of ``E[r] + coef * H_p`` with plain gradient steps on the logits by
  default (smooth curves); ``--sampled G`` replaces the exact reward gradient by GRPO on ``G`` samples per state
  (:func:`aent.grpo_advantages`), ``--optimizer adam`` uses Adam. Both are options, labelled as such in the outputs.

For speed the 1e5 actions of a state are held as *groups* of equal logit (a few hundred tail bins of equal size,
every other action its own group). Actions of one group have the same logit and reward, so under exact gradients
they stay equal for ever, and the tie rule of docs/METHOD.md keeps or removes tied actions together: the grouped computation is the
computation on all 1e5 actions, not an approximation (tested against :func:`aent.clamped_entropy` on the expanded
logits). Only ``--sampled`` is approximate for the tail: a sampled tail action's update is shared by its bin.

The stationary point that each regularised objective predicts is printed next to each result: ``pi ~ exp(r / coef)``
on the entropy's support (all actions for the plain bonus, the kept ``(1 - p) * num_actions`` for the clamped one),
which gives ``sum_a r_a e^{r_a/coef} / (sum_{rewarding} e^{r_a/coef} + #zero-reward actions in the support)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from aent.advantage import grpo_advantages
from aent.coefficient import AdaptiveCoefficient, build_coefficient
from aent.entropy import num_removed

__all__ = [
    "PAPER",
    "Instance",
    "LearnerSpec",
    "ToyConfig",
    "build_instance",
    "exact_expected_reward",
    "grouped_clamped_entropy",
    "main",
    "predicted_reward",
    "run_experiment",
]

SCHEMA_VERSION = 2
NUM_CANDIDATES = 15  # optimal candidates per state; K optimal actions are the first K

# Read off the published figure (docs/METHOD.md): K -> (no reg., entropy reg., clamped, gain entropy, gain clamped).
PAPER: Dict[int, Dict[str, Optional[float]]] = {
    15: {"no_reg": 0.24, "entropy": 0.36, "clamped": 0.80, "gain_entropy": 0.12, "gain_clamped": 0.56},
    10: {"no_reg": 0.20, "entropy": 0.32, "clamped": 0.60, "gain_entropy": 0.12, "gain_clamped": 0.40},
    5: {"no_reg": None, "entropy": None, "clamped": None, "gain_entropy": 0.0, "gain_clamped": 0.24},
    1: {"no_reg": 0.20, "entropy": 0.20, "clamped": 0.44, "gain_entropy": 0.0, "gain_clamped": 0.24},
}


# --------------------------------------------------------------------------------------------------------------
# The problem family.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Instance:
    """One paired instance: ``states`` one-step problems over ``num_actions`` actions, held as groups.

    Attributes:
        logits: ``(states, G)`` float64 initial logit of each group (every action of a group has it).
        counts: ``(G,)`` float64 number of actions per group (sums to ``num_actions``).
        kind: ``(G,)`` int: ``0..14`` the optimal candidates in nested order, ``DECOY``, ``WRONG_HEAD``, ``TAIL``.
        decoy_reward: reward of the decoy.
    """

    logits: torch.Tensor
    counts: torch.Tensor
    kind: torch.Tensor
    decoy_reward: float

    def rewards(self, k: int) -> torch.Tensor:
        """``(G,)`` rewards with ``k`` optimal actions: the first ``k`` candidates 1, the decoy ``decoy_reward``."""
        r = torch.zeros(self.counts.shape, dtype=torch.float64)
        r[(self.kind >= 0) & (self.kind < k)] = 1.0
        r[self.kind == DECOY] = self.decoy_reward
        return r

    def expand(self, values: torch.Tensor) -> torch.Tensor:
        """Per-group values ``(..., G)`` -> per-action values ``(..., num_actions)`` (for checks only)."""
        return values.repeat_interleave(self.counts.long(), dim=-1)


DECOY, WRONG_HEAD, TAIL = -1, -2, -3


def build_instance(
    seed: int,
    *,
    num_actions: int = 100_000,
    states: int = 25,
    tail_bins: int = 40,
    answer_prob: Sequence[float] = (3e-5, 3e-3),
    decoy_prob: Sequence[float] = (0.03, 0.3),
    decoy_reward: float = 0.05,
    extra_prob: Sequence[float] = (1e-5, 1e-3),
    wrong_head_probs: Sequence[float] = (0.3, 0.15, 0.1, 0.05),
) -> Instance:
    """Build one instance (see the module docstring).

    Per state: the first optimal candidate ("the answer") has prior probability drawn log-uniformly from
    ``answer_prob``, candidates 2-15 each from ``extra_prob``, the decoy from ``decoy_prob``; the plausible wrong
    actions have the fixed
    probabilities ``wrong_head_probs``; the tail is ``Normal(0, 1)`` quantiles in ``tail_bins`` bins of equal size.
    """
    head = NUM_CANDIDATES + 1 + len(wrong_head_probs)
    tail_size = num_actions - head
    if tail_bins < 1 or tail_size < tail_bins:
        raise ValueError(
            f"num_actions - {head} head actions = {tail_size} must be at least tail_bins ({tail_bins}); "
            "raise num_actions or lower tail_bins"
        )
    for name, rng in (("answer_prob", answer_prob), ("extra_prob", extra_prob), ("decoy_prob", decoy_prob)):
        if not 0 < rng[0] <= rng[1] < 1:
            raise ValueError(f"{name} must be a range 0 < low <= high < 1, got {tuple(rng)}")
    if not 0 <= decoy_reward < 1:
        raise ValueError(f"decoy_reward must be in [0, 1) (below an optimal action's 1), got {decoy_reward}")
    # bins of the tail's ranks (from the top) with log-spaced edges: single actions at the top, where the clamp
    # boundaries of large p fall, thousands per bin deep in the tail; a bin's logit is the Normal quantile at its
    # middle rank
    edges = torch.unique(torch.round(torch.logspace(0, math.log10(tail_size), tail_bins + 1, dtype=torch.float64)))
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), edges])
    bin_counts = edges[1:] - edges[:-1]
    bin_end = edges[1:]
    normal = torch.distributions.Normal(0.0, 1.0)
    tail_logits = normal.icdf(1.0 - (bin_end - bin_counts / 2) / tail_size)
    tail_bins = len(bin_counts)
    gen = torch.Generator().manual_seed(int(seed))

    def log_uniform(rng: Sequence[float]) -> torch.Tensor:
        u = torch.rand(states, generator=gen, dtype=torch.float64)
        return torch.exp(math.log(rng[0]) + u * (math.log(rng[1]) - math.log(rng[0])))

    p_answer, p_decoy = log_uniform(answer_prob), log_uniform(decoy_prob)
    p_extra = torch.stack([log_uniform(extra_prob) for _ in range(NUM_CANDIDATES - 1)], dim=1)
    tail_lse = torch.logsumexp(tail_logits + bin_counts.log(), dim=0)
    wrong = torch.tensor(list(wrong_head_probs), dtype=torch.float64)
    head_mass = p_answer + p_extra.sum(1) + p_decoy + wrong.sum()  # (states,)
    if bool((head_mass >= 1).any()):
        raise ValueError("the head's prior probabilities add up to 1 or more; lower wrong_head_probs or decoy_prob")
    # logits chosen so that the softmax gives the head exactly its probabilities and the tail the rest
    log_tail_mass = torch.log1p(-head_mass)

    def head_logit(prob: torch.Tensor) -> torch.Tensor:
        return tail_lse + torch.log(prob) - log_tail_mass[:, None]

    logits = torch.cat(
        [
            head_logit(p_answer[:, None]),
            head_logit(p_extra),
            head_logit(p_decoy[:, None]),
            head_logit(wrong.expand(states, -1)),
            tail_logits.expand(states, -1),
        ],
        dim=1,
    )
    kind = torch.tensor(
        list(range(NUM_CANDIDATES)) + [DECOY] + [WRONG_HEAD] * len(wrong_head_probs) + [TAIL] * tail_bins
    )
    counts = torch.cat([torch.ones(head, dtype=torch.float64), bin_counts])
    return Instance(logits, counts, kind, float(decoy_reward))


# --------------------------------------------------------------------------------------------------------------
# Exact quantities on grouped logits.
# --------------------------------------------------------------------------------------------------------------


def _log_probs(z: torch.Tensor, log_counts: torch.Tensor) -> torch.Tensor:
    """Per-action log-probability of each group, ``(..., G)``."""
    return z - torch.logsumexp(z + log_counts, dim=-1, keepdim=True)


def exact_expected_reward(z: torch.Tensor, counts: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """``sum_a pi(a) r(a)`` per row of grouped logits ``(..., G)`` (``counts`` actions per group)."""
    logp = _log_probs(z, counts.log())
    return (counts * logp.exp() * rewards).sum(-1)


def grouped_clamped_entropy(z: torch.Tensor, counts: torch.Tensor, p: float) -> torch.Tensor:
    """:func:`aent.clamped_entropy` of the expanded logits, computed on the groups: ``(..., G) -> (...)``.

    docs/METHOD.md: remove the ``k = floor(p * V)`` lowest logits (``V = counts.sum()``), keeping every action whose
    logit is at least the (k+1)-th smallest (ties stay together, so a group is kept or removed whole); the entropy of
    the renormalised kept distribution. The kept set carries no gradient.
    """
    total = int(round(float(counts.sum())))
    k = num_removed(total, p) if p > 0 else 0
    log_counts = counts.log().expand_as(z)
    if k > 0:
        with torch.no_grad():
            order = torch.argsort(z, dim=-1)
            cum = torch.cumsum(counts.expand_as(z).gather(-1, order), dim=-1)
            first_kept = torch.searchsorted(
                cum, torch.full(cum.shape[:-1] + (1,), float(k), dtype=cum.dtype), right=True
            )
            threshold = z.gather(-1, order.gather(-1, first_kept))
            kept = z >= threshold
        log_counts = torch.where(kept, log_counts, torch.full_like(log_counts, -math.inf))
    logz = torch.logsumexp(z + log_counts, dim=-1, keepdim=True)
    logq = z - logz
    w = log_counts.exp()
    return -(w * logq.exp() * logq).sum(-1)


def predicted_reward(counts: torch.Tensor, rewards: torch.Tensor, coef: float, p: float) -> float:
    """Expected reward at the stationary point of ``E[r] + coef * H_p``: ``pi ~ exp(r / coef)`` on the entropy's
    support (all actions for ``p = 0``, the top ``(1 - p) V`` with every rewarding action among them otherwise);
    1 without an entropy term (the best action)."""
    if coef <= 0:
        return float(rewards.max())
    total = float(counts.sum())
    support = total - (num_removed(int(round(total)), p) if p > 0 else 0)
    pos = rewards > 0
    w = counts[pos] * torch.exp((rewards[pos] - 1.0) / coef)  # scaled by e^{-1/coef} against overflow
    zeros = max(support - float(counts[pos].sum()), 0.0) * math.exp(-1.0 / coef)
    return float((w * rewards[pos]).sum() / (w.sum() + zeros))


# --------------------------------------------------------------------------------------------------------------
# Learners and configuration.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LearnerSpec:
    """One learner: ``kind`` none / constant / adaptive, removed fraction ``clamp_p``, coefficient ``coef``."""

    name: str
    kind: str
    clamp_p: float = 0.0
    coef: float = 0.0
    in_figure: bool = True


@dataclass
class ToyConfig:
    """Every setting of the experiment. Defaults are the documented default run (docs/TOY.md)."""

    num_actions: int = 100_000
    states: int = 25
    tail_bins: int = 40
    sparsities: List[int] = field(default_factory=lambda: [15, 10, 5, 1])
    instances: int = 5
    first_seed: int = 0
    steps: int = 1500
    lr: float = 1.0
    optimizer: str = "gd"
    sampled: int = 0
    coefs: List[float] = field(default_factory=lambda: [0.1])
    clamp_ps: List[float] = field(default_factory=lambda: [0.33, 0.999])
    aent_ps: List[float] = field(default_factory=lambda: [0.999])
    aent_band: List[float] = field(default_factory=lambda: [1.0, 2.0])
    aent_lr: float = 0.01
    aent_coef_min: float = 0.01
    aent_coef_max: float = 0.3
    answer_prob: List[float] = field(default_factory=lambda: [3e-5, 3e-3])
    decoy_prob: List[float] = field(default_factory=lambda: [0.03, 0.3])
    decoy_reward: float = 0.05
    extra_prob: List[float] = field(default_factory=lambda: [1e-5, 1e-3])
    log_points: int = 80
    # one torch thread: the tensors are small, so a second thread costs more than it gives (10x on a busy machine)
    threads: Optional[int] = 1

    def learners(self) -> List[LearnerSpec]:
        learners = [LearnerSpec("no reg.", "none")]
        multi = len(self.coefs) > 1
        for c in self.coefs:
            suffix = f" coef={c:g}" if multi else ""
            learners.append(LearnerSpec(f"entropy reg.{suffix}", "constant", 0.0, c))
            learners += [LearnerSpec(f"clamped p={p:g}{suffix}", "constant", float(p), c) for p in self.clamp_ps]
        learners += [
            LearnerSpec(f"AEnt p={p:g} (not in the figure)", "adaptive", float(p), self.coefs[0], in_figure=False)
            for p in self.aent_ps
        ]
        return learners

    def instance_kwargs(self) -> Dict[str, Any]:
        return {
            "num_actions": self.num_actions,
            "states": self.states,
            "tail_bins": self.tail_bins,
            "answer_prob": tuple(self.answer_prob),
            "decoy_prob": tuple(self.decoy_prob),
            "decoy_reward": self.decoy_reward,
            "extra_prob": tuple(self.extra_prob),
        }

    def validate(self) -> None:
        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("num_actions", "states", "tail_bins", "instances", "steps", "log_points"):
            positive_int(name, getattr(self, name))
        if not self.sparsities:
            raise ValueError("sparsities is empty: give at least one number of optimal actions, e.g. 15,10,5,1")
        for k in self.sparsities:
            positive_int("each sparsity (number of optimal actions)", k)
            if k > NUM_CANDIDATES:
                raise ValueError(f"each sparsity must be at most {NUM_CANDIDATES} (the nested candidates), got {k}")
        if not self.coefs:
            raise ValueError("coefs is empty: give at least one entropy coefficient, e.g. 0.1")
        for c in self.coefs:
            if not (math.isfinite(c) and c > 0):
                raise ValueError(f"each coef must be a positive number, got {c}")
        for p in list(self.clamp_ps) + list(self.aent_ps):
            if not 0.0 < p < 1.0:
                raise ValueError(
                    f"each clamp p must be in (0, 1) (the removed fraction; the plain bonus, p = 0, always runs), got {p}"
                )
            if self.num_actions - num_removed(self.num_actions, p) < NUM_CANDIDATES + 2:
                raise ValueError(f"clamp p={p} keeps fewer than {NUM_CANDIDATES + 2} of {self.num_actions} actions")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in ("gd", "adam"):
            raise ValueError(f"optimizer must be 'gd' (plain gradient steps) or 'adam', got {self.optimizer!r}")
        if self.sampled == 1 or self.sampled < 0:
            raise ValueError(f"sampled must be 0 (exact gradients) or a GRPO group size >= 2, got {self.sampled}")
        if self.aent_ps:
            low, high = self.aent_band
            build_coefficient(
                self.coefs[0],
                lr=self.aent_lr,
                entropy_low=low,
                entropy_high=high,
                coef_min=self.aent_coef_min,
                coef_max=self.aent_coef_max,
            )
        if self.threads is not None:
            positive_int("threads", self.threads)


def _make_coefficient(spec: LearnerSpec, cfg: ToyConfig) -> AdaptiveCoefficient:
    if spec.kind == "adaptive":
        return build_coefficient(
            spec.coef,
            lr=cfg.aent_lr,
            entropy_low=cfg.aent_band[0],
            entropy_high=cfg.aent_band[1],
            coef_min=cfg.aent_coef_min,
            coef_max=cfg.aent_coef_max,
        )
    return build_coefficient(spec.coef if spec.kind == "constant" else 0.0)


def _log_steps(steps: int, points: int) -> List[int]:
    points = min(points, steps)
    return sorted({round(i * steps / points) for i in range(points + 1)})


# --------------------------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------------------------


def run_experiment(cfg: ToyConfig, *, progress: bool = True) -> Dict[str, Any]:
    """Train every (learner, sparsity, instance) run for ``cfg.steps`` steps; return the ``results.json`` dict."""
    cfg.validate()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    learners = cfg.learners()
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.instances))
    instances = [build_instance(s, **cfg.instance_kwargs()) for s in seeds]
    counts = instances[0].counts  # the same layout for every instance
    log_counts = counts.log()
    runs = [
        (li, ki, ii) for li in range(len(learners)) for ki in range(len(cfg.sparsities)) for ii in range(len(seeds))
    ]
    R, S, G = len(runs), cfg.states, counts.numel()
    init = torch.stack([instances[ii].logits for _, _, ii in runs])  # (R, S, G)
    rewards = torch.stack([instances[ii].rewards(cfg.sparsities[ki]) for _, ki, ii in runs])[:, None, :]  # (R, 1, G)
    coefs = [_make_coefficient(learners[li], cfg) for li, _, _ in runs]
    groups_by_p: Dict[float, List[int]] = {}
    for r, (li, _, _) in enumerate(runs):
        if learners[li].kind != "none":
            groups_by_p.setdefault(learners[li].clamp_p, []).append(r)
    index_by_p = {p: torch.tensor(rs) for p, rs in groups_by_p.items()}

    z = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=cfg.lr) if cfg.optimizer == "adam" else None
    gen = torch.Generator().manual_seed(cfg.first_seed * 7919 + 17)
    log_at = set(_log_steps(cfg.steps, cfg.log_points))
    curve_steps: List[int] = []
    curves: Dict[str, List[torch.Tensor]] = {"reward": [], "entropy": [], "coef": []}

    def record(step: int) -> None:
        with torch.no_grad():
            zd = z.detach()
            curves["reward"].append(exact_expected_reward(zd, counts, rewards).mean(-1))
            curves["entropy"].append(grouped_clamped_entropy(zd, counts, 0.0).mean(-1))
            curves["coef"].append(torch.tensor([c.value for c in coefs], dtype=torch.float64))
        curve_steps.append(step)

    record(0)
    started = time.perf_counter()
    iterator: Any = range(cfg.steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(iterator, desc=f"toy-mdp ({R} runs x {S} states)", unit="step", file=sys.stderr, mininterval=2)
        iterator = bar
    coef_values = torch.zeros(R, dtype=torch.float64)
    for step in iterator:
        for r, c in enumerate(coefs):
            coef_values[r] = c.value
        logp = _log_probs(z, log_counts)
        if cfg.sampled:
            with torch.no_grad():
                probs = (logp.detach() + log_counts).exp().reshape(R * S, G)
                picks = torch.multinomial(probs, cfg.sampled, replacement=True, generator=gen).reshape(R, S, -1)
                sample_r = rewards.expand(R, S, G).gather(-1, picks)
                adv = grpo_advantages(sample_r)  # (R, S, group)
            # GRPO surrogate: its gradient is the sampled policy gradient (mean over the group)
            objective = (adv * logp.gather(-1, picks)).mean(-1)
        else:
            objective = (counts * logp.exp() * rewards).sum(-1)  # exact E[r], (R, S)
        measured = torch.full((R,), float("nan"), dtype=torch.float64)
        for p, idx in index_by_p.items():
            ent = grouped_clamped_entropy(z[idx], counts, p)  # (runs, S)
            objective = objective.index_add(0, idx, coef_values[idx, None] * ent)
            measured[idx] = ent.detach().mean(-1)
        # gradient per group / actions per group = the gradient of each of its actions
        (grad,) = torch.autograd.grad(objective.sum(), z)
        grad = grad / counts
        with torch.no_grad():
            if opt is None:
                z += cfg.lr * grad
            else:
                z.grad = -grad
                opt.step()
        for r, c in enumerate(coefs):
            if math.isfinite(float(measured[r])):
                c.update(float(measured[r]), step)
        if step + 1 in log_at:
            record(step + 1)
    elapsed = time.perf_counter() - started
    if bar is not None:
        bar.close()

    stacked = {name: torch.stack(vals, dim=1) for name, vals in curves.items()}  # (R, points)
    results_runs = []
    for r, (li, ki, ii) in enumerate(runs):
        spec = learners[li]
        final_coef = float(stacked["coef"][r, -1])
        results_runs.append(
            {
                "learner": spec.name,
                "sparsity": cfg.sparsities[ki],
                "instance": seeds[ii],
                "final_reward": float(stacked["reward"][r, -1]),
                "predicted_reward": predicted_reward(counts, rewards[r, 0], final_coef, spec.clamp_p),
                "final_coef": final_coef,
                "curves": {name: [round(float(v), 6) for v in stacked[name][r]] for name in stacked},
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "experiment": "aent toy-mdp: paper Figure 1 (arXiv 2509.03493), docs/METHOD.md",
        "config": dataclasses.asdict(cfg),
        "update": (f"sampled GRPO, group {cfg.sampled}" if cfg.sampled else "exact policy gradient")
        + (", Adam" if cfg.optimizer == "adam" else ", plain gradient steps"),
        "learners": [dataclasses.asdict(s) for s in learners],
        "instances": seeds,
        "curve_steps": curve_steps,
        "elapsed_seconds": round(elapsed, 2),
        "torch_threads": torch.get_num_threads(),
        "paper": {str(k): v for k, v in PAPER.items()},
        "runs": results_runs,
        "summary": summarize(results_runs, learners, cfg.sparsities, curve_steps),
    }


def summarize(
    runs: List[Dict[str, Any]], learners: Sequence[LearnerSpec], sparsities: Sequence[int], steps: Sequence[int]
) -> List[Dict[str, Any]]:
    """Per (learner, K): final average reward (mean, s.e.m. over instances), the paired gain over no reg., the
    predicted stationary reward, and whether the mean curve still moves by more than 0.01 over the last 20%."""
    rows = []
    last_part = [i for i, s in enumerate(steps) if s >= 0.8 * steps[-1]]
    for k in sparsities:
        base = {
            r["instance"]: r["final_reward"] for r in runs if r["learner"] == learners[0].name and r["sparsity"] == k
        }
        for spec in learners:
            sel = [r for r in runs if r["learner"] == spec.name and r["sparsity"] == k]
            final = torch.tensor([r["final_reward"] for r in sel], dtype=torch.float64)
            gain = torch.tensor([r["final_reward"] - base[r["instance"]] for r in sel], dtype=torch.float64)
            mean_curve = torch.tensor([r["curves"]["reward"] for r in sel], dtype=torch.float64).mean(0)
            tail = mean_curve[last_part]
            n = len(sel)
            rows.append(
                {
                    "sparsity": k,
                    "learner": spec.name,
                    "in_figure": spec.in_figure,
                    "num_instances": n,
                    "final_reward_mean": float(final.mean()),
                    "final_reward_sem": float(final.std() / math.sqrt(n)) if n > 1 else 0.0,
                    "gain_mean": float(gain.mean()),
                    "gain_sem": float(gain.std() / math.sqrt(n)) if n > 1 else 0.0,
                    "predicted_reward": sum(r["predicted_reward"] for r in sel) / n,
                    "converged": bool(float(tail.max() - tail.min()) <= 0.01),
                }
            )
    return rows


# --------------------------------------------------------------------------------------------------------------
# Outputs.
# --------------------------------------------------------------------------------------------------------------


def markdown_table(results: Dict[str, Any]) -> str:
    """Final average reward per learner and K (mean +- s.e.m. over instances; the predicted stationary reward in
    brackets; "not converged" where the curve still moves), the paired gain over no reg., and the paper's numbers."""
    cfg = results["config"]
    ks = cfg["sparsities"]
    names = [spec["name"] for spec in results["learners"]]
    by = {(row["learner"], row["sparsity"]): row for row in results["summary"]}
    header = "| learner | " + " | ".join(f"K = {k}" for k in ks) + " |"
    rule = "|---|" + "---|" * len(ks)
    lines = [
        f"Average reward after {cfg['steps']} steps ({results['update']}; mean +- s.e.m. over {cfg['instances']} "
        "instances; [predicted stationary point]; * = not converged: the mean curve moves by > 0.01 over the last 20%).",
        "",
        header,
        rule,
    ]
    for name in names:
        cells = []
        for k in ks:
            row = by[name, k]
            flag = "" if row["converged"] else " *"
            cells.append(
                f"{row['final_reward_mean']:.3f} +- {row['final_reward_sem']:.3f} [{row['predicted_reward']:.2f}]{flag}"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    paper = results["paper"]
    for key, label in (("no_reg", "paper: no reg."), ("entropy", "paper: entropy reg."), ("clamped", "paper: clamped")):
        cells = [_fmt(paper.get(str(k), {}).get(key)) for k in ks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Gain over no reg. (paired by instance, mean +- s.e.m.):", "", header, rule]
    for name in names[1:]:
        cells = [f"{by[name, k]['gain_mean']:+.3f} +- {by[name, k]['gain_sem']:.3f}" for k in ks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key, label in (("gain_entropy", "paper: entropy reg."), ("gain_clamped", "paper: clamped")):
        cells = [_fmt(paper.get(str(k), {}).get(key), sign=True) for k in ks]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Optional[float], sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def plot_results(results: Dict[str, Any], path: str) -> None:
    """The published layout: average reward against step for K = 15, 10, 1 (those present), and a bar panel of the
    gain over no reg. at every K next to the paper's read-off gains (black markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    ks = cfg["sparsities"]
    panels = [k for k in (15, 10, 1) if k in ks] or ks[:3]
    names = [spec["name"] for spec in results["learners"]]
    steps = results["curve_steps"]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.3 * (len(panels) + 1), 3.2))
    for ax, k in zip(axes, panels):
        for i, name in enumerate(names):
            vals = torch.tensor(
                [r["curves"]["reward"] for r in results["runs"] if r["learner"] == name and r["sparsity"] == k]
            )
            style = ":" if "not in the figure" in name else "-"
            ax.plot(steps, vals.mean(0).tolist(), style, color=colors[i % len(colors)], label=name, linewidth=1.4)
            ax.fill_between(
                steps,
                vals.min(0).values.tolist(),
                vals.max(0).values.tolist(),
                color=colors[i % len(colors)],
                alpha=0.1,
            )
        ax.set_title(f"{k} optimal action{'s' if k != 1 else ''}", fontsize=9)
        ax.set_xlabel("Step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Average reward")
    axes[0].legend(fontsize=6, loc="upper left")
    ax = axes[-1]
    by = {(row["learner"], row["sparsity"]): row for row in results["summary"]}
    width = 0.8 / max(len(names) - 1, 1)
    for i, name in enumerate(names[1:], start=1):
        xs = [j + (i - 1) * width - 0.4 + width / 2 for j in range(len(ks))]
        ax.bar(
            xs,
            [by[name, k]["gain_mean"] for k in ks],
            width,
            yerr=[by[name, k]["gain_sem"] for k in ks],
            color=colors[i % len(colors)],
            hatch="//" if "not in the figure" in name else None,
        )
    for key, marker, label in (("gain_entropy", "x", "paper: entropy reg."), ("gain_clamped", "o", "paper: clamped")):
        pts = [(j, PAPER[k][key]) for j, k in enumerate(ks) if k in PAPER]
        ax.plot(
            [j for j, _ in pts], [v for _, v in pts], marker, color="black", label=label, markersize=6, fillstyle="none"
        )
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(ks)))
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("optimal actions K")
    ax.set_title("Reward gain over no-reg. baseline", fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"|A| = {cfg['num_actions']:,}, {cfg['states']} states, {results['update']}, lr {cfg['lr']:g}, "
        f"coef {','.join(f'{c:g}' for c in cfg['coefs'])}, {cfg['instances']} instances (mean, shaded min-max)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------------------


def _num_list(kind: type):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None

    return parse


QUICK = {"sparsities": [15, 1], "instances": 2, "steps": 800, "clamp_ps": [0.999], "aent_ps": []}


def build_parser() -> argparse.ArgumentParser:
    d = ToyConfig()
    p = argparse.ArgumentParser(
        prog="aent toy-mdp",
        description=(
            "The paper's controlled experiment (arXiv 2509.03493, Figure 1): no regularisation vs the plain entropy "
            "bonus vs the clamped bonus (and AEnt, not in the figure) on 25 one-step states with 100,000 actions and "
            "K optimal actions. Writes results.json, figure.png and table.md to --out-dir. See docs/TOY.md."
        ),
    )
    p.add_argument("--out-dir", default=os.path.join("runs", "toy-mdp"), help="output directory (created)")
    p.add_argument("--quick", action="store_true", help=f"a run of ~30 s: {QUICK} unless those options are given")
    p.add_argument("--num-actions", type=int, default=None, help=f"actions per state (default {d.num_actions})")
    p.add_argument("--states", type=int, default=d.states, help="independent states (one-step problems)")
    p.add_argument("--tail-bins", type=int, default=d.tail_bins, help="equal-logit bins of the Normal tail")
    p.add_argument("--sparsities", type=_num_list(int), default=None, help=f"values of K (default {d.sparsities})")
    p.add_argument("--instances", type=int, default=None, help=f"paired instances (default {d.instances})")
    p.add_argument("--first-seed", type=int, default=d.first_seed)
    p.add_argument("--steps", type=int, default=None, help=f"updates (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"step size on the logits (default {d.lr})")
    p.add_argument("--optimizer", choices=["gd", "adam"], default=d.optimizer, help="gd = plain gradient steps")
    p.add_argument(
        "--sampled", type=int, default=0, metavar="G", help="sampled GRPO with G samples per state (default: exact)"
    )
    p.add_argument(
        "--coefs", type=_num_list(float), default=None, help=f"entropy coefficients, swept (default {d.coefs})"
    )
    p.add_argument("--clamp-ps", type=_num_list(float), default=None, help=f"removed fractions (default {d.clamp_ps})")
    p.add_argument("--aent-ps", type=_num_list(float), default=None, help=f"AEnt's p values (default {d.aent_ps})")
    p.add_argument("--no-aent", action="store_true", help="leave out AEnt (not in the figure)")
    p.add_argument("--aent-band", type=_num_list(float), default=d.aent_band, help="AEnt's entropy band LOW,HIGH nats")
    p.add_argument("--aent-lr", type=float, default=d.aent_lr, help="AEnt's controller step size")
    p.add_argument("--aent-coef-min", type=float, default=d.aent_coef_min)
    p.add_argument("--aent-coef-max", type=float, default=d.aent_coef_max)
    p.add_argument("--decoy-reward", type=float, default=d.decoy_reward)
    p.add_argument("--answer-prob", type=_num_list(float), default=d.answer_prob, help="prior range of the answer")
    p.add_argument("--decoy-prob", type=_num_list(float), default=d.decoy_prob, help="prior range of the decoy")
    p.add_argument("--extra-prob", type=_num_list(float), default=d.extra_prob, help="prior range of candidates 2-15")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> ToyConfig:
    base = ToyConfig()
    quick = QUICK if args.quick else {}
    picked = {
        "num_actions": args.num_actions,
        "sparsities": args.sparsities,
        "instances": args.instances,
        "steps": args.steps,
        "coefs": args.coefs,
        "clamp_ps": args.clamp_ps,
        "aent_ps": [] if args.no_aent else args.aent_ps,
    }
    values = {
        name: given if given is not None else quick.get(name, getattr(base, name)) for name, given in picked.items()
    }
    return ToyConfig(
        **values,
        states=args.states,
        tail_bins=args.tail_bins,
        first_seed=args.first_seed,
        lr=args.lr,
        optimizer=args.optimizer,
        sampled=args.sampled,
        aent_band=args.aent_band,
        aent_lr=args.aent_lr,
        aent_coef_min=args.aent_coef_min,
        aent_coef_max=args.aent_coef_max,
        decoy_reward=args.decoy_reward,
        answer_prob=args.answer_prob,
        decoy_prob=args.decoy_prob,
        extra_prob=args.extra_prob,
        threads=args.threads,
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    try:
        cfg.validate()
        build_instance(0, **cfg.instance_kwargs())
    except ValueError as err:
        parser.error(str(err))
    os.makedirs(args.out_dir, exist_ok=True)
    results = run_experiment(cfg, progress=not args.no_progress)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    table = markdown_table(results)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(table)
    plot_results(results, os.path.join(args.out_dir, "figure.png"))
    print(table)
    print(
        f"{len(results['runs'])} runs in {results['elapsed_seconds']:.1f} s; wrote results.json, table.md and figure.png to {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
