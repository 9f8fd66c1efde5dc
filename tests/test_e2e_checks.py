"""The end-to-end run's assertions (tests/e2e/checks.py) accept a consistent log and reject each kind of broken one.

The run itself needs .venv-e2e and minutes (``make e2e``); these checks are pure functions over logged metrics.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

_spec = importlib.util.spec_from_file_location(
    "e2e_checks", os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e", "checks.py")
)
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

OPTIONS = {"entropy_low": 0.15, "entropy_high": 0.24, "lr": 0.002, "coef_min": 0.001, "coef_max": 0.1}


def consistent_log(first_coef=0.05, entropies=(5.0, 4.9, 4.8), first_step=1):
    """Metrics as a correct AEnt run logs them (the controller rule applied by hand)."""
    out, coef = {}, first_coef
    for i, ent in enumerate(entropies):
        signal = min(0.0, ent - OPTIONS["entropy_low"]) + max(0.0, ent - OPTIONS["entropy_high"])
        nxt = min(max(coef - OPTIONS["lr"] * signal, OPTIONS["coef_min"]), OPTIONS["coef_max"])
        pg = 0.01 * (i + 1)
        out[first_step + i] = {
            checks.CLAMPED_ENTROPY: ent,
            checks.COEF: coef,
            checks.COEF_NEXT: nxt,
            checks.PG_LOSS: pg,
            checks.LOSS: pg - coef * ent,
            checks.PROBS_DIFF_MAX: 1e-8,
            checks.ADVANTAGES_MAX: 0.7,
            checks.ADVANTAGES_MIN: -0.7,
        }
        coef = nxt
    return out


def test_a_consistent_log_passes(tmp_path):
    log = consistent_log()
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"step": s, "data": row}) + "\n" for s, row in log.items()))
    read = checks.read_metrics(str(path))
    assert read == log
    checks.check_steps(read, [1, 2, 3])
    checks.check_present_and_finite(read, [checks.CLAMPED_ENTROPY, checks.COEF, checks.LOSS])
    checks.check_loss_identity(read)
    checks.check_controller(read, OPTIONS, 0.05)
    checks.check_rollout_matches_trainer(read, [1, 2, 3], 1e-3)
    checks.check_advantages_spread(read)
    assert read[2][checks.COEF] < read[1][checks.COEF]  # entropy above the band: the coefficient falls


def test_expected_next_coef_follows_the_band_and_clips():
    assert checks.expected_next_coef(0.01, 0.2, OPTIONS) == 0.01  # inside the band: unchanged
    assert checks.expected_next_coef(0.01, 0.05, OPTIONS) == pytest.approx(0.01 + 0.002 * 0.1)  # below: rises
    assert checks.expected_next_coef(0.01, 100.0, OPTIONS) == OPTIONS["coef_min"]  # far above: clipped


@pytest.mark.parametrize(
    "breakage, check",
    [
        ("loss_without_entropy_term", "check_loss_identity"),
        ("coef_not_updated", "check_controller"),
        ("wrong_next_coef", "check_controller"),
        ("nan_entropy", "check_present_and_finite"),
        ("missing_coef", "check_present_and_finite"),
        ("stale_vllm_weights", "check_rollout_matches_trainer"),
        ("zero_advantages", "check_advantages_spread"),
    ],
)
def test_each_broken_log_is_rejected(breakage, check):
    log = consistent_log()
    row = log[2]
    if breakage == "loss_without_entropy_term":
        row[checks.LOSS] = row[checks.PG_LOSS]
    elif breakage == "coef_not_updated":
        row[checks.COEF] = log[1][checks.COEF]
    elif breakage == "wrong_next_coef":
        row[checks.COEF_NEXT] *= 1.01
    elif breakage == "nan_entropy":
        row[checks.CLAMPED_ENTROPY] = float("nan")
    elif breakage == "missing_coef":
        del row[checks.COEF]
    elif breakage == "stale_vllm_weights":
        row[checks.PROBS_DIFF_MAX] = 0.2
    elif breakage == "zero_advantages":
        row[checks.ADVANTAGES_MAX] = row[checks.ADVANTAGES_MIN] = 0.0
    args = {
        "check_loss_identity": (log,),
        "check_controller": (log, OPTIONS, 0.05),
        "check_present_and_finite": (log, [checks.CLAMPED_ENTROPY, checks.COEF]),
        "check_rollout_matches_trainer": (log, [1, 2, 3], 1e-3),
        "check_advantages_spread": (log,),
    }[check]
    with pytest.raises(checks.E2EFailure):
        getattr(checks, check)(*args)


def test_check_equal():
    log = consistent_log()
    for row in log.values():
        row[checks.ENTROPY_LOSS] = row[checks.CLAMPED_ENTROPY] * (1 + 1e-7)
    checks.check_equal(log, checks.CLAMPED_ENTROPY, checks.ENTROPY_LOSS, 1e-5)
    log[3][checks.ENTROPY_LOSS] *= 1.01
    with pytest.raises(checks.E2EFailure):
        checks.check_equal(log, checks.CLAMPED_ENTROPY, checks.ENTROPY_LOSS, 1e-5)


def test_a_resume_that_restarts_the_coefficient_is_rejected():
    resumed = consistent_log(first_step=3, entropies=(4.7,))
    saved = consistent_log()[2][checks.COEF_NEXT]
    checks.check_controller(consistent_log(first_coef=saved, first_step=3, entropies=(4.7,)), OPTIONS, saved)
    with pytest.raises(checks.E2EFailure):
        checks.check_controller(resumed, OPTIONS, saved)  # this one started again from coef_init


def test_a_coefficient_that_does_not_move_is_rejected():
    log = consistent_log(entropies=(0.2, 0.2, 0.2))  # inside the band: the check would mean nothing
    with pytest.raises(checks.E2EFailure, match="did not move"):
        checks.check_controller(log, OPTIONS, 0.05)


def matrix_log():
    """A consistent log of a matrix cell: the step's sums, the loss term, the ranks' coefficients, the PPO ratio."""
    log = consistent_log(entropies=(5.0, 4.9))
    for row in log.values():
        tokens = 40.0
        row.update(
            {
                checks.ENTROPY_SUM: row[checks.CLAMPED_ENTROPY] * tokens,
                checks.NUM_TOKENS: tokens,
                checks.LOSS_ENTROPY: row[checks.CLAMPED_ENTROPY],
                checks.COEF_MIN: row[checks.COEF],
                checks.COEF_MAX: row[checks.COEF],
                checks.LOGPROB_GAP: 2e-7,
                checks.PPO_KL: 0.0,
                checks.PG_CLIPFRAC: 0.0,
            }
        )
    return log


def test_a_consistent_matrix_log_passes():
    log = matrix_log()
    checks.check_loss_identity_terms(log)
    checks.check_controller_input(log)
    checks.check_on_policy(log, 1e-6)
    checks.check_on_policy(log, 1e-6, baseline={s: {checks.PPO_KL: 0.0, checks.PG_CLIPFRAC: 0.0} for s in log})
    checks.check_logprob_gap(log, 1e-4)
    checks.check_same_coef_on_ranks(log)


@pytest.mark.parametrize(
    "breakage, check",
    [
        ("loss_term_missing", "check_loss_identity_terms"),
        ("controller_input_not_token_weighted", "check_controller_input"),
        ("ratio_not_one", "check_on_policy"),
        ("clipped_on_policy", "check_on_policy"),
        ("larger_than_baseline", "check_on_policy_baseline"),
        ("op_and_verl_disagree", "check_logprob_gap"),
        ("ranks_with_different_coefficients", "check_same_coef_on_ranks"),
    ],
)
def test_each_broken_matrix_log_is_rejected(breakage, check):
    log = matrix_log()
    row = log[2]
    baseline = None
    if breakage == "loss_term_missing":
        row[checks.LOSS] = row[checks.PG_LOSS]
    elif breakage == "controller_input_not_token_weighted":
        row[checks.NUM_TOKENS] *= 1.1
    elif breakage == "ratio_not_one":
        row[checks.PPO_KL] = 5.0e-4  # the bf16 log-probs of verl against float32 ones of AEnt's op
    elif breakage == "clipped_on_policy":
        row[checks.PG_CLIPFRAC] = 0.01
    elif breakage == "larger_than_baseline":
        row[checks.PPO_KL] = 1e-7  # within the tolerance, but plain GRPO had exactly 0
        baseline = {s: {checks.PPO_KL: 0.0, checks.PG_CLIPFRAC: 0.0} for s in log}
    elif breakage == "op_and_verl_disagree":
        row[checks.LOGPROB_GAP] = 0.3  # a misaligned label
    elif breakage == "ranks_with_different_coefficients":
        row[checks.COEF_MAX] = row[checks.COEF] * 1.5
    args = {
        "check_loss_identity_terms": (log,),
        "check_controller_input": (log,),
        "check_on_policy": (log, 1e-6),
        "check_on_policy_baseline": (log, 1e-6, baseline),
        "check_logprob_gap": (log, 1e-4),
        "check_same_coef_on_ranks": (log,),
    }[check]
    with pytest.raises(checks.E2EFailure):
        getattr(checks, check.replace("_baseline", ""))(*args)


def test_a_clipped_coefficient_may_stay_once_it_moved():
    log = consistent_log(entropies=(100.0, 100.0))  # step 1 moves to coef_min, step 2 stays there
    with pytest.raises(checks.E2EFailure, match="did not move"):
        checks.check_controller(log, OPTIONS, 0.05)
    checks.check_controller(log, OPTIONS, 0.05, every_step_moves=False)
    still = consistent_log(first_coef=OPTIONS["coef_min"], entropies=(100.0, 100.0))
    with pytest.raises(checks.E2EFailure, match="never moved"):
        checks.check_controller(still, OPTIONS, OPTIONS["coef_min"], every_step_moves=False)


def test_matrix_cells_are_distinct_and_complete():
    spec = importlib.util.spec_from_file_location(
        "e2e_matrix_cells", os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e", "matrix.py")
    )
    e2e_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e")
    sys.path.insert(0, e2e_dir)
    before = set(sys.modules)
    try:
        matrix = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = matrix  # dataclasses look their module up there
        spec.loader.exec_module(matrix)
    finally:
        sys.path.remove(e2e_dir)
        for name in set(sys.modules) - before:  # matrix.py's own imports of run.py and checks.py
            if name in ("run", "checks", spec.name):
                sys.modules.pop(name)
    names = [cell.name for cell in matrix.CELLS]
    assert len(names) == len(set(names))
    assert {"fsdp1", "fsdp2", "dp2", "sp2", "bf16", "epochs2", "compile", "stock"} <= set(names)
    for cell in matrix.CELLS:
        extra = matrix.cell_extra(cell)
        keys = [matrix.run.override_key(item) for item in extra]
        assert len(keys) == len(set(keys)), cell.name  # Hydra refuses a key given twice
        if cell.ranks > 1:
            assert "trainer.n_gpus_per_node=2" in extra
    merged = matrix.run.merge_overrides(["a.b=1", "+c=2", "d=3"], ["+a.b=4"], drop=["d"])
    assert merged == ["+c=2", "+a.b=4"]
