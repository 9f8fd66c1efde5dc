"""What the end-to-end run asserts, from the metrics verl itself logged (its file logger, one JSON line per step).

Pure functions over ``{step: {metric: value}}``; each raises :class:`E2EFailure` naming the step and the numbers.
"""

from __future__ import annotations

import json
import math
from typing import Dict, Iterable, List, Mapping

Metrics = Dict[int, Dict[str, float]]

CLAMPED_ENTROPY = "actor/aent_clamped_entropy"
COEF = "actor/aent_coef"
COEF_NEXT = "actor/aent_coef_next"
PG_LOSS = "actor/pg_loss"  # verl 0.9.1 ppo_loss: the policy-gradient term, summed over micro-batches like the loss
LOSS = "actor/loss"  # verl 0.9.1 engine worker: the total loss that was back-propagated
ENTROPY_LOSS = "actor/entropy_loss"  # verl 0.9.1 ppo_loss: its own entropy term, only when the update computes one
FULL_ENTROPY = "actor/entropy"  # verl 0.9.1: the full-vocabulary entropy of the old-log-prob pass, token-mean
ENTROPY_SUM = "actor/aent_entropy_sum"  # the step's clamped-entropy sum over response tokens (mean over updates)
NUM_TOKENS = "actor/aent_num_tokens"  # the step's response tokens (mean over updates, like the sum)
LOSS_ENTROPY = "actor/aent_loss_entropy"  # the aggregated clamped entropy that entered the loss
COEF_MIN = "actor/aent_coef_min"  # min / max of the coefficient over micro-batches and ranks
COEF_MAX = "actor/aent_coef_max"
LOGPROB_GAP = "actor/aent_logprob_gap"  # max |AEnt op's log-prob - verl's| over the update's response tokens
PPO_KL = "actor/ppo_kl"  # verl 0.9.1 policy loss: mean(old_log_prob - log_prob), 0 on an on-policy update
PG_CLIPFRAC = "actor/pg_clipfrac"  # fraction of tokens whose ratio was clipped
PROBS_DIFF_MAX = "training/rollout_probs_diff_max"  # max |p_vllm - p_trainer| over response tokens
ADVANTAGES_MAX = "critic/advantages/max"
ADVANTAGES_MIN = "critic/advantages/min"


class E2EFailure(AssertionError):
    pass


def read_metrics(path: str) -> Metrics:
    """The step -> metrics map of a verl file-logger jsonl (``{"step": n, "data": {...}}`` per line)."""
    out: Metrics = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.setdefault(int(row["step"]), {}).update(row["data"])
    return out


def _finite(name: str, step: int, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise E2EFailure(f"step {step}: {name} = {value!r} is not a finite number")
    return float(value)


def check_steps(metrics: Metrics, expected: Iterable[int]) -> None:
    expected = sorted(expected)
    if sorted(metrics) != expected:
        raise E2EFailure(f"logged steps {sorted(metrics)}, expected {expected}")


def check_present_and_finite(metrics: Metrics, names: Iterable[str]) -> None:
    for step, row in sorted(metrics.items()):
        for name in names:
            if name not in row:
                raise E2EFailure(f"step {step}: metric {name} missing (logged: {sorted(row)})")
            _finite(name, step, row[name])


def check_absent(metrics: Metrics, names: Iterable[str]) -> None:
    for step, row in sorted(metrics.items()):
        found = [name for name in names if name in row]
        if found:
            raise E2EFailure(f"step {step}: {found} logged by a run that should not have them")


def check_loss_identity(metrics: Metrics, rel: float = 1e-4, abs_tol: float = 1e-6) -> None:
    """``actor/loss == actor/pg_loss - coef x clamped entropy`` on every step (one mini-batch per step, token-mean:
    then the logged clamped entropy is exactly the aggregate that entered the loss)."""
    for step, row in sorted(metrics.items()):
        loss, pg, coef, ent = (_finite(k, step, row[k]) for k in (LOSS, PG_LOSS, COEF, CLAMPED_ENTROPY))
        expected = pg - coef * ent
        if not math.isclose(loss, expected, rel_tol=rel, abs_tol=abs_tol):
            raise E2EFailure(
                f"step {step}: actor/loss = {loss!r} but pg_loss - coef x clamped entropy = {pg!r} - {coef!r} x "
                f"{ent!r} = {expected!r}"
            )
        if coef * ent <= 10 * max(abs_tol, rel * abs(loss)):
            raise E2EFailure(
                f"step {step}: the entropy term {coef * ent!r} is too small for the check to mean anything"
            )


def expected_next_coef(coef: float, entropy: float, options: Mapping[str, float]) -> float:
    """AEnt's controller rule (docs/METHOD.md, "Adaptive coefficient"), written out here independently of aent.coefficient."""
    low, high, lr = options["entropy_low"], options["entropy_high"], options["lr"]
    signal = min(0.0, entropy - low) + max(0.0, entropy - high)
    return min(max(coef - lr * signal, options["coef_min"]), options["coef_max"])


def check_controller(
    metrics: Metrics, options: Mapping[str, float], first_coef: float, rel: float = 1e-6, every_step_moves: bool = True
) -> None:
    """Every step used the coefficient the previous step's measurement gave (the first: ``first_coef``), and the
    coefficient moved (the band is chosen so that it must): on every step, or with ``every_step_moves=False`` on
    at least one (a coefficient clipped at ``coef_min`` stays there)."""
    coef = first_coef
    moved = False
    for step, row in sorted(metrics.items()):
        used = _finite(COEF, step, row[COEF])
        if not math.isclose(used, coef, rel_tol=rel, abs_tol=1e-12):
            raise E2EFailure(f"step {step}: actor/aent_coef = {used!r}, the controller said {coef!r}")
        entropy = _finite(CLAMPED_ENTROPY, step, row[CLAMPED_ENTROPY])
        coef = expected_next_coef(used, entropy, options)
        logged_next = _finite(COEF_NEXT, step, row[COEF_NEXT])
        if not math.isclose(logged_next, coef, rel_tol=rel, abs_tol=1e-12):
            raise E2EFailure(
                f"step {step}: entropy {entropy!r} with coefficient {used!r} gives {coef!r} by the rule, the trainer "
                f"logged actor/aent_coef_next = {logged_next!r}"
            )
        if math.isclose(coef, used, rel_tol=1e-9, abs_tol=1e-15):
            if every_step_moves:
                raise E2EFailure(
                    f"step {step}: the coefficient did not move ({used!r}, entropy {entropy!r}): pick a band the "
                    "measured entropy lies outside so that the check means something"
                )
        else:
            moved = True
    if not moved:
        raise E2EFailure(f"the coefficient never moved over steps {sorted(metrics)}: the check means nothing")


def check_constant_coef(metrics: Metrics, value: float) -> None:
    for step, row in sorted(metrics.items()):
        for name in (COEF, COEF_NEXT):
            if not math.isclose(_finite(name, step, row[name]), value, rel_tol=1e-9):
                raise E2EFailure(f"step {step}: {name} = {row[name]!r}, a constant coefficient of {value!r} expected")


def check_equal(metrics: Metrics, a: str, b: str, rel: float) -> None:
    """``a == b`` within ``rel`` on every step (e.g. AEnt's clamped entropy at clamp_p = 0 and verl's entropy)."""
    for step, row in sorted(metrics.items()):
        va, vb = _finite(a, step, row.get(a)), _finite(b, step, row.get(b))
        if not math.isclose(va, vb, rel_tol=rel):
            raise E2EFailure(f"step {step}: {a} = {va!r} but {b} = {vb!r}")


def check_rollout_matches_trainer(metrics: Metrics, steps: List[int], tol: float) -> None:
    """vLLM's token probabilities equal the trainer's: the weights reached vLLM (also after updates)."""
    for step in steps:
        diff = _finite(PROBS_DIFF_MAX, step, metrics[step].get(PROBS_DIFF_MAX))
        if diff > tol:
            raise E2EFailure(f"step {step}: {PROBS_DIFF_MAX} = {diff!r} > {tol}: vLLM and the trainer disagree")


def check_advantages_spread(metrics: Metrics) -> None:
    for step, row in sorted(metrics.items()):
        hi, lo = _finite(ADVANTAGES_MAX, step, row[ADVANTAGES_MAX]), _finite(ADVANTAGES_MIN, step, row[ADVANTAGES_MIN])
        if not hi > lo:
            raise E2EFailure(f"step {step}: all advantages are {hi!r}: the actor update had nothing to learn from")


def check_loss_identity_terms(metrics: Metrics, rel: float = 1e-5, abs_tol: float = 1e-7) -> None:
    """``actor/loss == actor/pg_loss - coef x actor/aent_loss_entropy`` on every step: the entropy term as it entered
    the loss, summed like verl's own terms, so the identity holds for any number of mini-batches and ranks."""
    for step, row in sorted(metrics.items()):
        loss, pg, coef, ent = (_finite(k, step, row.get(k)) for k in (LOSS, PG_LOSS, COEF, LOSS_ENTROPY))
        expected = pg - coef * ent
        if not math.isclose(loss, expected, rel_tol=rel, abs_tol=abs_tol):
            raise E2EFailure(
                f"step {step}: actor/loss = {loss!r} but pg_loss - coef x {LOSS_ENTROPY} = {pg!r} - {coef!r} x "
                f"{ent!r} = {expected!r}"
            )
        if coef * ent <= 10 * max(abs_tol, rel * abs(loss)):
            raise E2EFailure(
                f"step {step}: the entropy term {coef * ent!r} is too small for the check to mean anything"
            )


def check_controller_input(metrics: Metrics, rel: float = 1e-9) -> None:
    """The controller's input (logged as ``actor/aent_clamped_entropy``) is the token-weighted mean of the step,
    recomputed here from the logged sums."""
    for step, row in sorted(metrics.items()):
        total, tokens = _finite(ENTROPY_SUM, step, row.get(ENTROPY_SUM)), _finite(NUM_TOKENS, step, row.get(NUM_TOKENS))
        if not tokens > 0:
            raise E2EFailure(f"step {step}: {NUM_TOKENS} = {tokens!r}: the update measured no token")
        used = _finite(CLAMPED_ENTROPY, step, row.get(CLAMPED_ENTROPY))
        if not math.isclose(used, total / tokens, rel_tol=rel):
            raise E2EFailure(
                f"step {step}: the controller's input {used!r} is not {ENTROPY_SUM} / {NUM_TOKENS} = {total!r} / "
                f"{tokens!r} = {total / tokens!r}"
            )


def check_on_policy(metrics: Metrics, kl_tol: float, baseline: Metrics = None) -> None:
    """An on-policy update (one mini-batch, one epoch): the update's log-probs are the old-log-prob pass's, so the
    PPO ratio is 1: ``|actor/ppo_kl| <= kl_tol`` (float rounding) and ``actor/pg_clipfrac == 0``; with a
    ``baseline`` (plain GRPO in the same settings), neither larger than the baseline's on the same step."""
    for step, row in sorted(metrics.items()):
        kl, clip = _finite(PPO_KL, step, row.get(PPO_KL)), _finite(PG_CLIPFRAC, step, row.get(PG_CLIPFRAC))
        if abs(kl) > kl_tol:
            raise E2EFailure(f"step {step}: on-policy {PPO_KL} = {kl!r} (|.| > {kl_tol}): the PPO ratio is not 1")
        if clip != 0.0:
            raise E2EFailure(f"step {step}: on-policy {PG_CLIPFRAC} = {clip!r}, 0 expected")
        if baseline is not None:
            base = baseline.get(step)
            if base is None:
                raise E2EFailure(f"step {step}: the baseline run logged no step {step}")
            base_kl, base_clip = (
                _finite(PPO_KL, step, base.get(PPO_KL)),
                _finite(PG_CLIPFRAC, step, base.get(PG_CLIPFRAC)),
            )
            if abs(kl) > abs(base_kl) or clip > base_clip:
                raise E2EFailure(
                    f"step {step}: {PPO_KL} = {kl!r}, {PG_CLIPFRAC} = {clip!r}; plain GRPO in the same settings: "
                    f"{base_kl!r}, {base_clip!r}"
                )


def check_logprob_gap(metrics: Metrics, tol: float) -> None:
    """The update's log-prob values are verl's, its gradient AEnt's op's: the op's own log-probs differ from verl's
    by float rounding only (a label or row the op gets wrong shows here)."""
    for step, row in sorted(metrics.items()):
        gap = _finite(LOGPROB_GAP, step, row.get(LOGPROB_GAP))
        if gap > tol:
            raise E2EFailure(
                f"step {step}: {LOGPROB_GAP} = {gap!r} > {tol}: AEnt's op and verl compute different log-probs"
            )


def check_same_coef_on_ranks(metrics: Metrics) -> None:
    """Every micro-batch of every rank trained with the step's one coefficient."""
    for step, row in sorted(metrics.items()):
        lo, hi, coef = (_finite(k, step, row.get(k)) for k in (COEF_MIN, COEF_MAX, COEF))
        # equal up to the driver's mean over mini-batches of equal values (np.mean may round their sum)
        if not (math.isclose(lo, coef, rel_tol=1e-12) and math.isclose(hi, coef, rel_tol=1e-12)):
            raise E2EFailure(f"step {step}: coefficients from {lo!r} to {hi!r} over ranks and micro-batches; {coef!r}")
