"""Tests of the controlled experiment (``aent toy-mdp``, aent/experiments/toy.py): the grouped computation against
the core on all actions, the problem family, the predicted stationary point, the learners and the CLI outputs."""

from __future__ import annotations

import json
import os

import pytest
import torch

import aent
from aent.experiments import toy
from aent.experiments.toy import DECOY, ToyConfig, build_instance

SMALL = dict(num_actions=3000, states=3, tail_bins=12)


def small_config(**overrides) -> ToyConfig:
    cfg = ToyConfig(
        sparsities=[15, 1], instances=2, steps=8, log_points=4, threads=1, clamp_ps=[0.9], aent_ps=[0.9], **SMALL
    )
    for name, value in overrides.items():
        setattr(cfg, name, value)
    return cfg


@pytest.mark.parametrize("p", [0.0, 0.33, 0.9, 0.99])
def test_grouped_entropy_and_gradient_equal_the_core_on_all_actions(p):
    inst = build_instance(3, **SMALL)
    z = inst.logits.clone()
    z[:, 2] += 4.0  # a policy away from the prior
    zg = z.clone().requires_grad_(True)
    grouped = toy.grouped_clamped_entropy(zg, inst.counts, p)
    grouped.sum().backward()
    flat = inst.expand(z).clone().requires_grad_(True)
    assert flat.shape == (3, 3000)
    reference = aent.clamped_entropy(flat, p, impl="reference")
    reference.sum().backward()
    torch.testing.assert_close(grouped, reference.double(), rtol=1e-10, atol=1e-10)
    # the gradient of a group's logit, divided by its size, is the gradient of each of its actions
    torch.testing.assert_close(inst.expand(zg.grad / inst.counts), flat.grad.double(), rtol=1e-9, atol=1e-12)


def test_exact_expected_reward_is_the_softmax_mean_over_all_actions_and_the_curves_use_it():
    inst = build_instance(1, **SMALL)
    for k in (15, 10, 1):
        r = inst.rewards(k)
        expected = (torch.softmax(inst.expand(inst.logits), -1) * inst.expand(r)).sum(-1)
        torch.testing.assert_close(toy.exact_expected_reward(inst.logits, inst.counts, r), expected)
    cfg = small_config(first_seed=1, instances=1, aent_ps=[])
    res = toy.run_experiment(cfg, progress=False)
    for run in res["runs"]:
        start = toy.exact_expected_reward(inst.logits, inst.counts, inst.rewards(run["sparsity"])).mean()
        assert run["curves"]["reward"][0] == pytest.approx(float(start), abs=1e-6)


def test_instances_are_nested_across_k_and_start_near_zero_reward():
    inst = build_instance(0)  # the default size: 100,000 actions, 25 states
    assert float(inst.counts.sum()) == 100_000
    assert inst.logits.shape == (25, inst.counts.numel())
    sets = {k: set(torch.nonzero(inst.rewards(k) == 1).flatten().tolist()) for k in (1, 5, 10, 15)}
    assert [len(sets[k]) for k in (1, 5, 10, 15)] == [1, 5, 10, 15]
    assert sets[1] < sets[5] < sets[10] < sets[15]
    assert int((inst.rewards(15) == inst.decoy_reward).sum()) == 1 and int((inst.kind == DECOY).sum()) == 1
    # every optimal and decoy action is a group of one: exact per-action dynamics where it matters
    assert bool((inst.counts[inst.kind >= -1] == 1).all())
    probs = torch.softmax(inst.logits + inst.counts.log(), -1)  # per group; the answer is a group of one
    assert bool(((probs[:, 0] >= 3e-5 * 0.999) & (probs[:, 0] <= 3e-3 * 1.001)).all())
    for k in (1, 15):
        assert float(toy.exact_expected_reward(inst.logits, inst.counts, inst.rewards(k)).mean()) < 0.05


def test_predicted_stationary_point_is_where_exact_ascent_ends():
    # a small problem the regularised ascent solves to convergence: plain and clamped bonus end at the prediction
    cfg = ToyConfig(
        num_actions=200,
        states=2,
        tail_bins=6,
        sparsities=[3],
        instances=1,
        steps=3000,
        lr=20.0,
        coefs=[0.4],
        clamp_ps=[0.9],
        aent_ps=[],
        log_points=10,
        threads=1,
        answer_prob=[0.01, 0.02],
        extra_prob=[0.01, 0.02],
        decoy_prob=[0.05, 0.1],
    )
    res = toy.run_experiment(cfg, progress=False)
    by = {r["learner"]: r for r in res["runs"]}
    for name in ("entropy reg.", "clamped p=0.9"):
        assert by[name]["final_reward"] == pytest.approx(by[name]["predicted_reward"], abs=2e-3), name
    assert by["entropy reg."]["predicted_reward"] < by["clamped p=0.9"]["predicted_reward"] < 1.0
    inst = build_instance(0, num_actions=200, states=2, tail_bins=6)
    r = inst.rewards(3)
    w = torch.exp(r / 0.4) * inst.counts
    assert toy.predicted_reward(inst.counts, r, 0.4, 0.0) == pytest.approx(float((w * r).sum() / w.sum()))
    assert toy.predicted_reward(inst.counts, r, 0.0, 0.0) == 1.0


def test_not_converged_flag_follows_the_last_fifth_of_the_mean_curve():
    learners = [toy.LearnerSpec("no reg.", "none")]
    steps = list(range(0, 101, 10))
    flat = [0.0] * 8 + [0.5, 0.5, 0.505]
    moving = [0.0] * 8 + [0.5, 0.51, 0.53]
    for curve, converged in ((flat, True), (moving, False)):
        runs = [{"learner": "no reg.", "sparsity": 1, "instance": 0, "final_reward": curve[-1], "predicted_reward": 1}]
        runs[0]["curves"] = {"reward": curve}
        assert toy.summarize(runs, learners, [1], steps)[0]["converged"] is converged


def test_cli_writes_all_outputs_with_expected_schema(tmp_path):
    out = tmp_path / "out"
    args = ["--quick", "--num-actions", "20000", "--states", "3", "--tail-bins", "12", "--steps", "6"]
    rc = toy.main([*args, "--aent-ps", "0.99", "--no-progress", "--threads", "1", "--out-dir", str(out)])
    assert rc == 0
    assert {"results.json", "figure.png", "table.md"} <= set(os.listdir(out))
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert res["schema_version"] == toy.SCHEMA_VERSION
    assert res["update"] == "exact policy gradient, plain gradient steps"
    cfg = res["config"]
    assert cfg["sparsities"] == toy.QUICK["sparsities"] and cfg["num_actions"] == 20000 and cfg["steps"] == 6
    names = [spec["name"] for spec in res["learners"]]
    assert names == ["no reg.", "entropy reg.", "clamped p=0.999", "AEnt p=0.99 (not in the figure)"]
    assert [spec["in_figure"] for spec in res["learners"]] == [True, True, True, False]
    assert len(res["runs"]) == len(names) * 2 * cfg["instances"]
    for run in res["runs"]:
        assert 0.0 <= run["final_reward"] <= 1.0 and 0.0 < run["predicted_reward"] <= 1.0
        assert len(run["curves"]["reward"]) == len(res["curve_steps"])
    table = (out / "table.md").read_text()
    for name in names:
        assert f"| {name} |" in table
    assert "| paper: clamped | 0.80 | 0.44 |" in table and "| paper: clamped | +0.56 | +0.24 |" in table
    # paired: before training every learner of a (K, instance) has the same policy
    starts = {}
    for run in res["runs"]:
        starts.setdefault((run["sparsity"], run["instance"]), set()).add(run["curves"]["reward"][0])
    assert all(len(v) == 1 for v in starts.values())


def test_sampled_grpo_and_adam_are_labelled_options():
    res = toy.run_experiment(small_config(sampled=8, optimizer="adam", lr=0.05, aent_ps=[]), progress=False)
    assert res["update"] == "sampled GRPO, group 8, Adam"
    a = toy.run_experiment(small_config(sampled=8, aent_ps=[]), progress=False)
    b = toy.run_experiment(small_config(sampled=8, aent_ps=[]), progress=False)
    assert [r["curves"] for r in a["runs"]] == [r["curves"] for r in b["runs"]]  # seeded
    exact = toy.run_experiment(small_config(aent_ps=[]), progress=False)
    assert [r["curves"] for r in a["runs"]] != [r["curves"] for r in exact["runs"]]


def test_coefficients_come_from_the_core_and_behave():
    # band far above any reachable entropy: AEnt's coefficient must rise every step; constant ones must not move
    cfg = small_config(sparsities=[1], aent_ps=[0.9], aent_band=[20.0, 21.0], aent_lr=0.001, aent_coef_max=1.0)
    res = toy.run_experiment(cfg, progress=False)
    for run in res["runs"]:
        coef = run["curves"]["coef"]
        if run["learner"].startswith("AEnt"):
            assert all(b > a for a, b in zip(coef, coef[1:])), coef
        elif run["learner"] == "no reg.":
            assert set(coef) == {0.0}
        else:
            assert set(coef) == {0.1}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsities", "0"], "positive integer"),
        (["--sparsities", "16"], "at most 15"),
        (["--sparsities", "a,b"], "comma-separated"),
        (["--clamp-ps", "1.0"], "clamp p"),
        (["--instances", "0"], "instances"),
        (["--sampled", "1"], "sampled"),
        (["--coefs", "0"], "coef"),
        (["--num-actions", "30", "--clamp-ps", "0.1", "--no-aent"], "num_actions"),
        (["--aent-band", "1.0,0.5"], "entropy_low"),
        (["--decoy-reward", "1.5"], "decoy_reward"),
    ],
)
def test_bad_arguments_give_clear_errors(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as err:
        toy.main([*args, "--out-dir", str(tmp_path / "never")])
    assert err.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_cli_routes_toy_mdp(capsys):
    from aent import cli

    with pytest.raises(SystemExit) as err:
        cli.main(["toy-mdp", "--help"])
    assert err.value.code == 0
    assert capsys.readouterr().out == toy.build_parser().format_help()
