"""The paper's controlled experiment (arXiv 2509.03493, Figure 1; SPEC section 4), on a CPU: ``aent toy-mdp``.

A chain MDP with a huge action set stands in for an LLM generating a short answer:

* States ``s_0 .. s_{H-1}`` (one per "token" position); every state has the same ``num_actions`` actions.
* In state ``s_h`` the actions fall into three classes, fixed per seed: ``num_optimal`` **optimal** actions
  (quality 1), a few **decoys** (quality ``decoy_quality`` < 1: plausible, partly right) and everything else,
  **wrong** (quality 0). A wrong action ends the episode with reward 0; otherwise the chain moves on, and after
  ``H`` steps the episode pays the product of the qualities of its actions. So the return is 1 only when every
  action was optimal, ``decoy_quality ** H`` for an all-decoy answer.
* The policy is a softmax over tabular logits per state (``H x num_actions`` numbers per learner).
* The initial logits look like a pretrained model's next-token distribution: a handful of plausible actions
  (the decoys, some wrong-but-plausible actions and the optimal ones) carry almost all the mass, the rest sits in
  a long Gaussian tail. By default each optimal action has the same prior weight whatever their number, so a
  sparser problem also gives the correct answers less prior mass, as it would for a language model
  (``split_optimal`` keeps the total fixed instead).
* Learning is on-policy and GRPO-like: each iteration samples a group of ``group_size`` episodes, the advantage of
  an episode is its return minus the group mean, divided by the group standard deviation, the policy loss is the
  token-mean over visited states of ``-advantage * log pi(action)``, and Adam takes one step.

Exploration matters because of the decoys: they hold most of the prior mass, so the first returns a group sees come
from them; once a group samples nothing but decoys its advantages are all zero and the policy never leaves them
(the "entropy collapse" of LLM RL). An entropy bonus keeps other actions in play, but the plain bonus also pushes
probability onto all ~1e5 tail actions; the clamped bonus (SPEC section 1) ignores the lowest ``p`` fraction.

The exact expected return and the exact probability of the all-optimal answer are computed from the policy in closed
form at every iteration (no sampling noise in the curves): ``E[R] = prod_h (pi_h(O_h) + c * pi_h(D_h))`` and
``P(success) = prod_h pi_h(O_h)``.

Every entropy comes from :func:`aent.clamped_entropy` (``clamp_p = 0`` for the plain bonus) and every coefficient
from :class:`aent.ConstantCoefficient` / :class:`aent.AdaptiveCoefficient`. All runs (sparsity x learner x seed)
are one batched ``(runs, H, num_actions)`` logits tensor: the loss is a sum of per-run losses and Adam acts per
element, so the runs stay independent.
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from aent.advantage import grpo_advantages
from aent.coefficient import AdaptiveCoefficient, build_coefficient
from aent.entropy import clamped_entropy, num_removed

__all__ = [
    "ChainMDP",
    "LearnerSpec",
    "ToyConfig",
    "build_mdp",
    "default_learners",
    "exact_expected_return",
    "exact_success_probability",
    "main",
    "run_experiment",
    "sample_episodes",
]

WRONG, DECOY, OPTIMAL = 0, 1, 2

SCHEMA_VERSION = 1


# --------------------------------------------------------------------------------------------------------------
# The environment.
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ChainMDP:
    """One seed's chain MDP.

    Attributes:
        action_class: ``(H, num_actions)`` int8, ``WRONG`` (0) / ``DECOY`` (1) / ``OPTIMAL`` (2) per state and action.
        quality: ``(H, num_actions)`` float32 per-step reward factor: 1 optimal, ``decoy_quality`` decoy, 0 wrong.
        init_logits: ``(H, num_actions)`` float32 pretrained-like initial logits.
        plausible: ``(H, num_actions)`` bool, the actions of the prior's head (everything that is not tail).
    """

    action_class: torch.Tensor
    quality: torch.Tensor
    init_logits: torch.Tensor
    plausible: torch.Tensor
    decoy_quality: float

    @property
    def horizon(self) -> int:
        return self.action_class.shape[0]

    @property
    def num_actions(self) -> int:
        return self.action_class.shape[1]

    def optimal_sets(self) -> List[List[int]]:
        """The optimal action indices of each state, sorted."""
        return [torch.nonzero(row == OPTIMAL).flatten().tolist() for row in self.action_class]

    def episode_return(self, actions: torch.Tensor) -> torch.Tensor:
        """Return of episodes given as ``(..., H)`` action indices: the product of the per-step qualities.

        A wrong action ends the episode (the actions after it are ignored), so its return is 0.
        """
        steps = torch.arange(self.horizon)
        return self.quality[steps, actions].prod(dim=-1)


def build_mdp(
    num_actions: int,
    horizon: int,
    num_optimal: int,
    seed: int,
    *,
    optimal_weight: float = 0.02,
    split_optimal: bool = False,
    decoy_weights: Sequence[float] = (0.45, 0.20),
    plausible_wrong_weights: Sequence[float] = (0.10, 0.05, 0.05),
    tail_weight: float = 0.05,
    tail_std: float = 1.0,
    decoy_quality: float = 0.6,
) -> ChainMDP:
    """Build the chain MDP of one seed (see the module docstring).

    The prior (initial softmax) of each state is given by relative weights, normalised to 1: each optimal action
    has ``optimal_weight`` (or, with ``split_optimal``, all of them together have it), each decoy and each plausible
    wrong action its listed weight, and all other actions together ``tail_weight``, spread by tail logits drawn from
    ``Normal(0, tail_std)``. Head positions are random per state and seed.
    """
    if isinstance(num_optimal, bool) or not isinstance(num_optimal, int) or num_optimal < 1:
        raise ValueError(f"num_optimal must be a positive integer, got {num_optimal!r}")
    per_optimal = optimal_weight / num_optimal if split_optimal else optimal_weight
    per_action = [per_optimal] * num_optimal + list(decoy_weights) + list(plausible_wrong_weights)
    classes = [OPTIMAL] * num_optimal + [DECOY] * len(decoy_weights) + [WRONG] * len(plausible_wrong_weights)
    head_size = len(per_action)
    if not all(math.isfinite(w) and w > 0 for w in per_action + [tail_weight]):
        raise ValueError(
            f"the prior's weights must be positive: optimal_weight={optimal_weight}, decoy_weights="
            f"{list(decoy_weights)}, plausible_wrong_weights={list(plausible_wrong_weights)}, tail_weight={tail_weight}"
        )
    if num_actions < 2 * head_size:
        raise ValueError(
            f"num_actions ({num_actions}) must be at least twice the prior's head ({head_size} actions: "
            f"{num_optimal} optimal + {len(decoy_weights)} decoys + {len(plausible_wrong_weights)} plausible wrong)"
        )
    if not 0.0 < decoy_quality < 1.0:
        raise ValueError(f"decoy_quality must be in (0, 1) (a decoy is partly right), got {decoy_quality}")
    gen = torch.Generator().manual_seed(int(seed))
    action_class = torch.zeros(horizon, num_actions, dtype=torch.int8)
    plausible = torch.zeros(horizon, num_actions, dtype=torch.bool)
    logits = torch.randn(horizon, num_actions, generator=gen, dtype=torch.float64) * tail_std
    head_weights = torch.tensor(per_action, dtype=torch.float64)
    for h in range(horizon):
        head = torch.randperm(num_actions, generator=gen)[:head_size]
        plausible[h, head] = True
        action_class[h, head] = torch.tensor(classes, dtype=torch.int8)
        # Head logits chosen so that the softmax gives head and tail exactly their relative weights.
        tail_lse = torch.logsumexp(logits[h][~plausible[h]], dim=0)
        logits[h, head] = tail_lse + torch.log(head_weights / tail_weight)
    quality = torch.zeros(horizon, num_actions, dtype=torch.float32)
    quality[action_class == OPTIMAL] = 1.0
    quality[action_class == DECOY] = float(decoy_quality)
    return ChainMDP(action_class, quality, logits.float(), plausible, float(decoy_quality))


def exact_success_probability(logits: torch.Tensor, optimal: torch.Tensor) -> torch.Tensor:
    """``prod_h pi_h(O_h)`` for ``(..., H, A)`` logits and a broadcastable ``(..., H, A)`` bool optimal mask."""
    probs = torch.softmax(logits.float(), dim=-1)
    return (probs * optimal).sum(-1).prod(-1)


def exact_expected_return(logits: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """``prod_h sum_a pi_h(a) q_h(a)``: the expected return of the chain MDP (steps are independent given the
    policy, and a wrong action's quality 0 zeroes the product exactly as ending the episode does)."""
    probs = torch.softmax(logits.float(), dim=-1)
    return (probs * quality).sum(-1).prod(-1)


def sample_episodes(probs: torch.Tensor, group_size: int, generator: torch.Generator) -> torch.Tensor:
    """Sample ``group_size`` actions per state from ``(runs, H, A)`` probabilities: ``(runs, group_size, H)``.

    All ``H`` actions are drawn up front; the ones after a wrong action are never visited (see ``visited_mask``).
    """
    runs, horizon, num_actions = probs.shape
    flat = torch.multinomial(
        probs.reshape(runs * horizon, num_actions), group_size, replacement=True, generator=generator
    )
    return flat.reshape(runs, horizon, group_size).transpose(1, 2).contiguous()


def visited_mask(step_quality: torch.Tensor) -> torch.Tensor:
    """``(..., H)`` bool: state ``h`` is visited when every earlier action had positive quality."""
    alive = (step_quality > 0).to(torch.int32)
    before = torch.cumprod(alive, dim=-1)
    return torch.cat([torch.ones_like(before[..., :1]), before[..., :-1]], dim=-1).bool()


# --------------------------------------------------------------------------------------------------------------
# Learners and configuration.
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LearnerSpec:
    """One learner: the entropy term it adds (``kind`` none / constant / adaptive) and the removed fraction ``p``."""

    name: str
    kind: str  # "none", "constant", "adaptive"
    clamp_p: float = 0.0
    coef: float = 0.0


@dataclass
class ToyConfig:
    """Every setting of the experiment. Defaults are the documented default run (docs/TOY.md)."""

    num_actions: int = 100_000
    horizon: int = 3
    sparsities: List[int] = field(default_factory=lambda: [15, 10, 5, 2, 1])
    seeds: int = 5
    first_seed: int = 0
    steps: int = 100
    group_size: int = 16
    lr: float = 0.1
    adam_eps: float = 1e-8
    optimizer: str = "adam"
    coef: float = 1e-4
    clamp_ps: List[float] = field(default_factory=lambda: [0.33, 0.999])
    aent_ps: List[float] = field(default_factory=lambda: [0.999])
    aent_band: Tuple[float, float] = (0.5, 1.0)
    aent_lr: float = 5e-5
    aent_coef_min: float = 1e-5
    aent_coef_max: float = 1e-3
    aent_warmup: int = 0
    optimal_weight: float = 0.01
    split_optimal: bool = False
    decoy_weights: List[float] = field(default_factory=lambda: [0.45, 0.20])
    plausible_wrong_weights: List[float] = field(default_factory=lambda: [0.10, 0.05, 0.05])
    tail_weight: float = 0.05
    tail_std: float = 1.0
    decoy_quality: float = 0.8
    log_points: int = 25
    threads: Optional[int] = None

    def learners(self) -> List[LearnerSpec]:
        return default_learners(self.coef, self.clamp_ps, self.aent_ps)

    def mdp_kwargs(self) -> Dict[str, Any]:
        return {
            "optimal_weight": self.optimal_weight,
            "split_optimal": self.split_optimal,
            "decoy_weights": tuple(self.decoy_weights),
            "plausible_wrong_weights": tuple(self.plausible_wrong_weights),
            "tail_weight": self.tail_weight,
            "tail_std": self.tail_std,
            "decoy_quality": self.decoy_quality,
        }

    def validate(self) -> None:
        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("num_actions", "horizon", "seeds", "steps", "group_size", "log_points"):
            positive_int(name, getattr(self, name))
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (the group baseline needs two episodes), got {self.group_size}")
        if not self.sparsities:
            raise ValueError("sparsities is empty: give at least one number of optimal actions, e.g. 15,5,1")
        for k in self.sparsities:
            positive_int("each sparsity (number of optimal actions)", k)
        for p in list(self.clamp_ps) + list(self.aent_ps):
            if not (0.0 < p < 1.0):
                raise ValueError(
                    f"each clamp p must be in (0, 1) (the removed fraction of the actions; 0 is the plain bonus, "
                    f"which always runs), got {p}"
                )
            if self.num_actions - num_removed(self.num_actions, p) < 2:
                raise ValueError(f"clamp p={p} keeps fewer than 2 of {self.num_actions} actions; use a smaller p")
        for name in ("lr", "coef"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        low, high = self.aent_band
        if not (0 <= low <= high):
            raise ValueError(f"aent band must satisfy 0 <= low <= high (nats), got {self.aent_band}")
        if self.aent_ps and not (self.aent_coef_min <= self.coef <= self.aent_coef_max):
            raise ValueError(
                f"the AEnt initial coefficient (coef={self.coef}) must lie in [aent_coef_min, aent_coef_max] = "
                f"[{self.aent_coef_min}, {self.aent_coef_max}]"
            )
        if self.threads is not None:
            positive_int("threads", self.threads)


def default_learners(coef: float, clamp_ps: Sequence[float], aent_ps: Sequence[float] = ()) -> List[LearnerSpec]:
    """No entropy; the plain bonus; the clamped bonus for each ``p`` in ``clamp_ps``; AEnt for each ``p`` in
    ``aent_ps`` (clamped bonus with the adaptive coefficient, starting at ``coef``)."""
    learners = [LearnerSpec("no entropy", "none"), LearnerSpec("entropy", "constant", 0.0, coef)]
    learners += [LearnerSpec(f"clamped p={p:g}", "constant", float(p), coef) for p in clamp_ps]
    learners += [LearnerSpec(f"AEnt p={p:g}", "adaptive", float(p), coef) for p in aent_ps]
    return learners


def _make_coefficient(spec: LearnerSpec, cfg: ToyConfig) -> AdaptiveCoefficient:
    if spec.kind == "adaptive":
        return build_coefficient(
            spec.coef,
            lr=cfg.aent_lr,
            entropy_low=cfg.aent_band[0],
            entropy_high=cfg.aent_band[1],
            coef_min=cfg.aent_coef_min,
            coef_max=cfg.aent_coef_max,
            warmup_steps=cfg.aent_warmup,
        )
    return build_coefficient(spec.coef if spec.kind == "constant" else 0.0)


# --------------------------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------------------------


def visit_weighted_mean(per_state: torch.Tensor, visits: torch.Tensor) -> torch.Tensor:
    """Token-mean of a per-state quantity over a group's visited states: ``sum_h n_h x_h / sum_h n_h``.

    ``per_state`` and ``visits`` are ``(runs, H)``; every visit of a state sees the same logits, so this equals verl's
    ``token-mean`` (:func:`aent.aggregate`) over the group's ``(group_size, H)`` response tokens.
    """
    return (per_state * visits).sum(-1) / visits.sum(-1)


def _log_steps(steps: int, points: int) -> List[int]:
    """Iterations (0 = before training, ``steps`` = after the last update) at which curves are recorded."""
    points = min(points, steps)
    return sorted({round(i * steps / points) for i in range(points + 1)})


def run_experiment(cfg: ToyConfig, *, progress: bool = True) -> Dict[str, Any]:
    """Train every (sparsity, learner, seed) run for ``cfg.steps`` iterations and return the results dictionary
    that ``results.json`` holds (see :func:`main` and docs/TOY.md for its schema)."""
    cfg.validate()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    learners = cfg.learners()
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    # Run order (learner, sparsity, seed): each learner's runs are one contiguous slice of the batch.
    runs = [
        (li, ki, si) for li in range(len(learners)) for ki in range(len(cfg.sparsities)) for si in range(len(seeds))
    ]
    per_learner = len(cfg.sparsities) * len(seeds)
    H, A = cfg.horizon, cfg.num_actions

    mdps = {}
    for ki, k in enumerate(cfg.sparsities):
        for si, seed in enumerate(seeds):
            # The MDP depends on (seed, sparsity) only: every learner faces the same instances.
            mdps[ki, si] = build_mdp(A, H, k, seed * 1000 + k, **cfg.mdp_kwargs())
    init = torch.stack([mdps[ki, si].init_logits for _, ki, si in runs])
    quality = torch.stack([mdps[ki, si].quality for _, ki, si in runs])
    optimal = torch.stack([mdps[ki, si].action_class == OPTIMAL for _, ki, si in runs])
    plausible = torch.stack([mdps[ki, si].plausible for _, ki, si in runs])
    logits = init.clone().requires_grad_(True)
    if cfg.optimizer == "adam":
        # fused: one pass over the (runs, H, A) tensor instead of several; same update rule
        opt = torch.optim.Adam([logits], lr=cfg.lr, eps=cfg.adam_eps, fused=True)
    else:
        opt = torch.optim.SGD([logits], lr=cfg.lr)
    coefs = [_make_coefficient(learners[li], cfg) for li, _, _ in runs]
    gen = torch.Generator().manual_seed(cfg.first_seed * 7919 + 17)

    log_at = _log_steps(cfg.steps, cfg.log_points)
    curves = {name: [] for name in ("success", "expected_return", "entropy", "clamped_entropy", "tail_mass", "coef")}
    curve_steps: List[int] = []

    def record(step: int, measured_clamped: Optional[torch.Tensor]) -> None:
        with torch.no_grad():
            z = logits.detach()
            probs = torch.softmax(z, dim=-1)
            curves["success"].append(exact_success_probability(z, optimal))
            curves["expected_return"].append(exact_expected_return(z, quality))
            curves["entropy"].append(clamped_entropy(z, 0.0).mean(-1))
            curves["tail_mass"].append((probs * ~plausible).sum(-1).mean(-1))
            curves["coef"].append(torch.tensor([c.value for c in coefs]))
            if measured_clamped is None:
                measured_clamped = torch.full((len(runs),), float("nan"))
            curves["clamped_entropy"].append(measured_clamped.clone())
        curve_steps.append(step)

    record(0, None)
    started = time.perf_counter()
    iterator = range(cfg.steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(iterator, desc=f"toy-mdp ({len(runs)} runs x {H} states x {A} actions)", unit="it", file=sys.stderr)
        iterator = bar
    for step in iterator:
        with torch.no_grad():
            probs = torch.softmax(logits.detach(), dim=-1)
            actions = sample_episodes(probs, cfg.group_size, gen)  # (R, G, H)
            step_q = quality.gather(2, actions.transpose(1, 2)).transpose(1, 2)  # (R, G, H)
            returns = step_q.prod(-1)
            advantages = grpo_advantages(returns)
            visited = visited_mask(step_q).float()  # (R, G, H)
            tokens = visited.sum(dim=(1, 2))  # every run visits s_0 group_size times, so > 0
            visits = visited.sum(dim=1)  # (R, H)
        logp = torch.log_softmax(logits, dim=-1)
        logp_taken = logp.gather(2, actions.transpose(1, 2)).transpose(1, 2)  # (R, G, H)
        # token-mean policy-gradient loss per run (verl's default loss_agg_mode), summed over runs
        pg_loss = (-(advantages.unsqueeze(-1) * logp_taken * visited).sum(dim=(1, 2)) / tokens).sum()
        # Entropy of each state once per run; its token-mean over the group's visited states is the visit-weighted
        # mean (every visit of a state sees the same logits, so this equals aent.aggregate over the tokens).
        measured = torch.zeros(len(runs))
        entropy_loss = logits.new_zeros(())
        for li, spec in enumerate(learners):
            sl = slice(li * per_learner, (li + 1) * per_learner)
            if spec.kind == "none":
                if step + 1 in log_at:  # only measured for the curves: no term in its loss
                    with torch.no_grad():
                        measured[sl] = visit_weighted_mean(clamped_entropy(logits.detach()[sl], 0.0), visits[sl])
                continue
            ent = clamped_entropy(logits[sl], spec.clamp_p)  # (runs of this learner, H), nats
            token_mean = visit_weighted_mean(ent, visits[sl])
            measured[sl] = token_mean.detach()
            coef_values = torch.tensor([coefs[r].value for r in range(sl.start, sl.stop)])
            entropy_loss = entropy_loss + (coef_values * token_mean).sum()
        loss = pg_loss - entropy_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for r, coef in enumerate(coefs):
            coef.update(float(measured[r]), step)
        if step + 1 in log_at:
            record(step + 1, measured)
        if bar is not None and (step % 10 == 0 or step + 1 == cfg.steps):
            mean_success = float(curves["success"][-1].mean())
            bar.set_postfix(success=f"{mean_success:.3f}")
    elapsed = time.perf_counter() - started
    if bar is not None:
        bar.close()

    stacked = {name: torch.stack(vals, dim=1) for name, vals in curves.items()}  # (R, points)
    results_runs = []
    for r, (li, ki, si) in enumerate(runs):
        succ = stacked["success"][r]
        auc = float(torch.trapezoid(succ, torch.tensor(curve_steps, dtype=torch.float32)) / max(cfg.steps, 1))
        reached = torch.nonzero(succ >= 0.5).flatten()
        results_runs.append(
            {
                "learner": learners[li].name,
                "sparsity": cfg.sparsities[ki],
                "seed": seeds[si],
                "final_success": float(succ[-1]),
                "final_expected_return": float(stacked["expected_return"][r, -1]),
                "mean_success": auc,
                "steps_to_success_0.5": None if len(reached) == 0 else int(curve_steps[int(reached[0])]),
                "final_entropy": float(stacked["entropy"][r, -1]),
                "final_tail_mass": float(stacked["tail_mass"][r, -1]),
                "final_coef": float(stacked["coef"][r, -1]),
                # not measured before the first update: null (JSON has no NaN)
                "curves": {
                    name: [round(float(v), 6) if math.isfinite(float(v)) else None for v in stacked[name][r]]
                    for name in stacked
                },
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "experiment": "aent toy-mdp: paper Figure 1 (arXiv 2509.03493), SPEC section 4",
        "config": _jsonable(dataclasses.asdict(cfg)),
        "mdp": {
            "num_actions": A,
            "horizon": H,
            "states": "chain s_0..s_{H-1}; wrong action ends the episode with reward 0",
            "reward": "product over steps of the action quality: optimal 1, decoy decoy_quality, wrong 0",
            "decoy_quality": cfg.decoy_quality,
            "prior": {
                "weights": "relative initial probabilities, normalised per state",
                "optimal_weight": cfg.optimal_weight,
                "optimal_weight_is": "total of all optimal actions" if cfg.split_optimal else "each optimal action",
                "decoy_weights": cfg.decoy_weights,
                "plausible_wrong_weights": cfg.plausible_wrong_weights,
                "tail_weight": cfg.tail_weight,
                "tail_logits": f"Normal(0, {cfg.tail_std})",
                "initial_optimal_probability": {str(k): _initial_optimal_probability(cfg, k) for k in cfg.sparsities},
            },
            "mdp_seed": "seed * 1000 + sparsity",
        },
        "learners": [dataclasses.asdict(s) for s in learners],
        "seeds": seeds,
        "curve_steps": curve_steps,
        "elapsed_seconds": round(elapsed, 2),
        "torch_threads": torch.get_num_threads(),
        "runs": results_runs,
        "summary": summarize(results_runs, learners, cfg.sparsities),
    }


def _initial_optimal_probability(cfg: ToyConfig, k: int) -> float:
    optimal = cfg.optimal_weight if cfg.split_optimal else k * cfg.optimal_weight
    total = optimal + sum(cfg.decoy_weights) + sum(cfg.plausible_wrong_weights) + cfg.tail_weight
    return round(optimal / total, 6)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def summarize(
    runs: List[Dict[str, Any]], learners: Sequence[LearnerSpec], sparsities: Sequence[int]
) -> List[Dict[str, Any]]:
    """Mean and spread across seeds of the final success probability and of its mean over training, per setting."""
    rows = []
    for k in sparsities:
        for spec in learners:
            sel = [r for r in runs if r["learner"] == spec.name and r["sparsity"] == k]
            final = torch.tensor([r["final_success"] for r in sel], dtype=torch.float64)
            auc = torch.tensor([r["mean_success"] for r in sel], dtype=torch.float64)
            ret = torch.tensor([r["final_expected_return"] for r in sel], dtype=torch.float64)
            tail = torch.tensor([r["final_tail_mass"] for r in sel], dtype=torch.float64)
            n = len(sel)
            rows.append(
                {
                    "sparsity": k,
                    "learner": spec.name,
                    "num_seeds": n,
                    "final_success_mean": float(final.mean()),
                    "final_success_sem": float(final.std() / math.sqrt(n)) if n > 1 else 0.0,
                    "final_success_min": float(final.min()),
                    "final_success_max": float(final.max()),
                    "mean_success_mean": float(auc.mean()),
                    "mean_success_sem": float(auc.std() / math.sqrt(n)) if n > 1 else 0.0,
                    "final_expected_return_mean": float(ret.mean()),
                    "final_tail_mass_mean": float(tail.mean()),
                    "num_solved": int((final >= 0.5).sum()),
                }
            )
    return rows


# --------------------------------------------------------------------------------------------------------------
# Outputs.
# --------------------------------------------------------------------------------------------------------------


def markdown_table(results: Dict[str, Any]) -> str:
    """One row per learner, one column per sparsity: final P(all-optimal answer), mean +- s.e.m. over seeds, and the
    number of seeds that reached 0.5."""
    sparsities = results["config"]["sparsities"]
    names = [spec["name"] for spec in results["learners"]]
    by = {(row["learner"], row["sparsity"]): row for row in results["summary"]}
    n = results["config"]["seeds"]
    header = "| learner | " + " | ".join(f"{k} optimal" for k in sparsities) + " |"
    lines = [
        f"Final probability of the all-optimal answer after {results['config']['steps']} iterations "
        f"(mean +- s.e.m. over {n} seeds; [seeds >= 0.5]).",
        "",
        header,
        "|---|" + "---|" * len(sparsities),
    ]
    for name in names:
        cells = []
        for k in sparsities:
            row = by[name, k]
            cells.append(f"{row['final_success_mean']:.3f} +- {row['final_success_sem']:.3f} [{row['num_solved']}/{n}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean over training of the same probability (area under the curve / iterations):",
        "",
        header,
        "|---|" + "---|" * len(sparsities),
    ]
    for name in names:
        cells = [f"{by[name, k]['mean_success_mean']:.3f} +- {by[name, k]['mean_success_sem']:.3f}" for k in sparsities]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Final probability mass on the prior's tail (actions outside the initial plausible set), mean over "
        "seeds and states:",
        "",
        header,
        "|---|" + "---|" * len(sparsities),
    ]
    for name in names:
        lines.append(
            f"| {name} | " + " | ".join(f"{by[name, k]['final_tail_mass_mean']:.3f}" for k in sparsities) + " |"
        )
    return "\n".join(lines) + "\n"


def plot_results(results: Dict[str, Any], path: str, metric: str = "success") -> None:
    """Paper-Figure-1 layout: one panel per sparsity, one curve per learner (mean over seeds), shaded min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sparsities = results["config"]["sparsities"]
    names = [spec["name"] for spec in results["learners"]]
    steps = results["curve_steps"]
    fig, axes = plt.subplots(1, len(sparsities), figsize=(3.2 * len(sparsities), 3.0), sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, k in zip(axes[0], sparsities):
        for i, name in enumerate(names):
            sel = [r["curves"][metric] for r in results["runs"] if r["learner"] == name and r["sparsity"] == k]
            vals = torch.tensor(sel, dtype=torch.float64)
            mean = vals.mean(0)
            style = "--" if name.startswith("AEnt") else "-"
            ax.plot(steps, mean.tolist(), style, color=colors[i % len(colors)], label=name, linewidth=1.5)
            ax.fill_between(
                steps,
                vals.min(0).values.tolist(),
                vals.max(0).values.tolist(),
                color=colors[i % len(colors)],
                alpha=0.12,
                linewidth=0,
            )
        ax.set_title(f"{k} optimal action{'s' if k != 1 else ''}")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("P(all-optimal answer)" if metric == "success" else metric)
    axes[0][-1].legend(fontsize=7, loc="best")
    cfg = results["config"]
    fig.suptitle(
        f"|A| = {cfg['num_actions']:,}, horizon {cfg['horizon']}, group {cfg['group_size']}, "
        f"coef {cfg['coef']:g}, {cfg['seeds']} seeds (mean, shaded min-max)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------------------


def _int_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 15,10,5,2,1; got {text!r}") from None


def _float_list(text: str) -> List[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.33,0.999; got {text!r}") from None


def _band(text: str) -> Tuple[float, float]:
    vals = _float_list(text)
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in nats, e.g. 0.5,1.0; got {text!r}")
    return vals[0], vals[1]


QUICK = {"sparsities": [15, 5], "seeds": 2, "steps": 50, "clamp_ps": [0.33, 0.999], "aent_ps": [0.999]}


def build_parser() -> argparse.ArgumentParser:
    d = ToyConfig()
    p = argparse.ArgumentParser(
        prog="aent toy-mdp",
        description=(
            "The paper's controlled experiment (arXiv 2509.03493, Figure 1): no entropy vs the plain entropy bonus vs "
            "the clamped bonus vs AEnt in a chain MDP with a huge action set and few optimal actions. Writes "
            "results.json, figure.png and table.md to --out-dir. See docs/TOY.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out-dir", default=os.path.join("runs", "toy-mdp"), help="output directory (created)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a run of under a minute: overrides to {QUICK} unless those options are given",
    )
    p.add_argument("--num-actions", type=int, default=None, help=f"|A| (default {d.num_actions})")
    p.add_argument("--horizon", type=int, default=None, help=f"states in the chain (default {d.horizon})")
    p.add_argument(
        "--sparsities",
        type=_int_list,
        default=None,
        help=f"numbers of optimal actions per state, one panel each (default {d.sparsities})",
    )
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per setting (default {d.seeds})")
    p.add_argument("--first-seed", type=int, default=d.first_seed)
    p.add_argument("--steps", type=int, default=None, help=f"policy updates (default {d.steps})")
    p.add_argument("--group-size", type=int, default=d.group_size, help="episodes per iteration (GRPO group)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr, help="optimizer learning rate on the logits")
    p.add_argument(
        "--coef",
        type=float,
        default=d.coef,
        help="entropy coefficient of the constant learners and AEnt's initial coefficient",
    )
    p.add_argument(
        "--clamp-ps",
        type=_float_list,
        default=None,
        help=f"removed fractions p of the clamped learners, each in (0,1) (default {d.clamp_ps})",
    )
    p.add_argument(
        "--aent-ps",
        type=_float_list,
        default=None,
        help=f"removed fractions p of the AEnt learners (default {d.aent_ps})",
    )
    p.add_argument("--no-aent", action="store_true", help="leave out the AEnt (adaptive coefficient) learners")
    p.add_argument("--aent-band", type=_band, default=d.aent_band, help="AEnt target band of the clamped entropy, nats")
    p.add_argument("--aent-lr", type=float, default=d.aent_lr, help="AEnt controller step size")
    p.add_argument("--aent-coef-max", type=float, default=d.aent_coef_max, help="AEnt upper coefficient bound")
    p.add_argument("--aent-coef-min", type=float, default=d.aent_coef_min, help="AEnt lower coefficient bound")
    p.add_argument("--decoy-quality", type=float, default=d.decoy_quality, help="per-step reward factor of a decoy")
    p.add_argument(
        "--optimal-weight",
        type=float,
        default=d.optimal_weight,
        help="prior weight of each optimal action (of all of them together with --split-optimal)",
    )
    p.add_argument(
        "--split-optimal",
        action="store_true",
        help="the optimal actions share --optimal-weight instead of each having it",
    )
    p.add_argument("--tail-weight", type=float, default=d.tail_weight, help="prior weight of the whole tail")
    p.add_argument("--adam-eps", type=float, default=d.adam_eps, help="Adam epsilon")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> ToyConfig:
    base = ToyConfig()
    quick = QUICK if args.quick else {}
    picked = {
        "num_actions": args.num_actions,
        "horizon": args.horizon,
        "sparsities": args.sparsities,
        "seeds": args.seeds,
        "steps": args.steps,
        "clamp_ps": args.clamp_ps,
        "aent_ps": [] if args.no_aent else args.aent_ps,
    }
    values = {}
    for name, given in picked.items():
        values[name] = given if given is not None else quick.get(name, getattr(base, name))
    return ToyConfig(
        **values,
        first_seed=args.first_seed,
        group_size=args.group_size,
        optimizer=args.optimizer,
        lr=args.lr,
        coef=args.coef,
        aent_band=args.aent_band,
        aent_lr=args.aent_lr,
        aent_coef_min=args.aent_coef_min,
        aent_coef_max=args.aent_coef_max,
        decoy_quality=args.decoy_quality,
        optimal_weight=args.optimal_weight,
        split_optimal=args.split_optimal,
        tail_weight=args.tail_weight,
        adam_eps=args.adam_eps,
        threads=args.threads,
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    try:
        cfg.validate()
        build_mdp(cfg.num_actions, cfg.horizon, max(cfg.sparsities), 0, **cfg.mdp_kwargs())
    except ValueError as err:
        parser.error(str(err))
    os.makedirs(args.out_dir, exist_ok=True)
    results = run_experiment(cfg, progress=not args.no_progress)
    json_path = os.path.join(args.out_dir, "results.json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    table = markdown_table(results)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(table)
    plot_results(results, os.path.join(args.out_dir, "figure.png"))
    print(table)
    print(
        f"{len(results['runs'])} runs in {results['elapsed_seconds']:.1f} s; wrote {json_path}, table.md and "
        f"figure.png to {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
