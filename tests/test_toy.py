"""Tests of the controlled experiment (``aent toy-mdp``, aent/experiments/toy.py): the MDP, its exact return, the CLI outputs."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

import aent
from aent.experiments import toy
from aent.experiments.toy import DECOY, OPTIMAL, WRONG, ToyConfig, build_mdp

SMALL_ARGS = [
    "--num-actions",
    "3000",
    "--horizon",
    "2",
    "--seeds",
    "2",
    "--steps",
    "6",
    "--no-progress",
    "--threads",
    "1",
]


def small_config(**overrides) -> ToyConfig:
    cfg = ToyConfig(num_actions=3000, horizon=2, sparsities=[3, 1], seeds=2, steps=6, log_points=3, threads=1)
    for name, value in overrides.items():
        setattr(cfg, name, value)
    return cfg


@pytest.mark.parametrize("num_optimal, split", [(1, False), (2, False), (5, True), (15, False), (15, True)])
def test_mdp_classes_and_prior_match_parameters(num_optimal, split):
    mdp = build_mdp(
        20_000,
        3,
        num_optimal,
        seed=7,
        optimal_weight=0.02,
        split_optimal=split,
        decoy_weights=(0.45, 0.2),
        plausible_wrong_weights=(0.1, 0.05, 0.05),
        tail_weight=0.05,
        decoy_quality=0.6,
    )
    assert mdp.horizon == 3 and mdp.num_actions == 20_000
    each_optimal = 0.02 / num_optimal if split else 0.02
    total = num_optimal * each_optimal + 0.45 + 0.2 + 0.1 + 0.05 + 0.05 + 0.05
    probs = torch.softmax(mdp.init_logits.double(), dim=-1)
    for h in range(3):
        cls = mdp.action_class[h]
        assert int((cls == OPTIMAL).sum()) == num_optimal
        assert int((cls == DECOY).sum()) == 2
        assert int(mdp.plausible[h].sum()) == num_optimal + 2 + 3
        # every optimal and decoy action is in the head; the tail is all wrong
        assert bool(mdp.plausible[h][cls != WRONG].all())
        assert torch.equal(mdp.quality[h][cls == OPTIMAL], torch.ones(num_optimal))
        assert torch.allclose(mdp.quality[h][cls == DECOY], torch.full((2,), 0.6))
        assert float(mdp.quality[h][cls == WRONG].abs().sum()) == 0.0
        # the prior's probabilities are the configured weights, normalised
        expected_optimal = torch.full((num_optimal,), each_optimal / total, dtype=torch.float64)
        assert torch.allclose(probs[h][cls == OPTIMAL], expected_optimal, rtol=1e-4)
        assert sorted(probs[h][cls == DECOY].tolist()) == pytest.approx([0.2 / total, 0.45 / total], rel=1e-4)
        assert float(probs[h][~mdp.plausible[h]].sum()) == pytest.approx(0.05 / total, rel=1e-3)
    assert [len(s) for s in mdp.optimal_sets()] == [num_optimal] * 3
    # different states draw different optimal sets
    assert mdp.optimal_sets()[0] != mdp.optimal_sets()[1]


def test_episode_return_is_product_of_qualities_and_a_wrong_action_ends_it():
    mdp = build_mdp(5_000, 3, 2, seed=1, decoy_quality=0.6)
    opt = [s[0] for s in mdp.optimal_sets()]
    decoy = [int(torch.nonzero(mdp.action_class[h] == DECOY)[0]) for h in range(3)]
    wrong = [int(torch.nonzero(mdp.action_class[h] == WRONG)[0]) for h in range(3)]
    episodes = torch.tensor(
        [
            opt,
            decoy,
            [opt[0], decoy[1], opt[2]],
            [wrong[0], opt[1], opt[2]],
            [opt[0], opt[1], wrong[2]],
        ]
    )
    returns = mdp.episode_return(episodes)
    assert returns.tolist() == pytest.approx([1.0, 0.6**3, 0.6, 0.0, 0.0])
    q = mdp.quality[torch.arange(3), episodes]
    assert toy.visited_mask(q).tolist() == [[True] * 3, [True] * 3, [True] * 3, [True, False, False], [True] * 3]


def test_exact_expected_return_agrees_with_monte_carlo():
    mdp = build_mdp(4_000, 3, 3, seed=3)
    gen = torch.Generator().manual_seed(0)
    # a policy away from the prior, so that optimal, decoy and tail mass all matter
    logits = mdp.init_logits + 1.5 * (mdp.action_class == OPTIMAL) + 0.5 * torch.randn(3, 4_000, generator=gen)
    exact_return = float(toy.exact_expected_return(logits, mdp.quality))
    exact_success = float(toy.exact_success_probability(logits, mdp.action_class == OPTIMAL))
    n = 200_000
    actions = toy.sample_episodes(torch.softmax(logits, -1).unsqueeze(0), n, gen)[0]  # (n, H)
    returns = mdp.episode_return(actions)
    success = (mdp.action_class[torch.arange(3), actions] == OPTIMAL).all(-1).double()
    for exact, samples in ((exact_return, returns.double()), (exact_success, success)):
        sem = float(samples.std()) / math.sqrt(n)
        assert 0.01 < exact < 0.99
        assert abs(float(samples.mean()) - exact) < 5 * sem


def test_visit_weighted_mean_is_verl_token_mean():
    gen = torch.Generator().manual_seed(0)
    per_state = torch.rand(4, 3, generator=gen)
    visited = torch.rand(4, 6, 3, generator=gen) > 0.4
    visited[..., 0] = True
    got = toy.visit_weighted_mean(per_state, visited.float().sum(1))
    for r in range(4):
        expected = aent.aggregate(per_state[r].expand(6, 3), visited[r].float(), "token-mean")
        assert float(got[r]) == pytest.approx(float(expected), rel=1e-6)


def test_cli_writes_all_outputs_with_expected_schema(tmp_path):
    out = tmp_path / "out"
    # --quick sets the sparsities (15, 5, 1) and p values; the explicit options keep this run tiny
    rc = toy.main(["--quick", *SMALL_ARGS, "--out-dir", str(out)])
    assert rc == 0
    assert {"results.json", "figure.png", "table.md"} <= set(os.listdir(out))
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert res["schema_version"] == toy.SCHEMA_VERSION
    for key in ("config", "mdp", "learners", "seeds", "curve_steps", "runs", "summary", "elapsed_seconds"):
        assert key in res
    cfg = res["config"]
    assert cfg["sparsities"] == toy.QUICK["sparsities"] and cfg["num_actions"] == 3000 and cfg["steps"] == 6
    names = [spec["name"] for spec in res["learners"]]
    assert names[:2] == ["no entropy", "entropy"]
    assert {f"clamped p={p:g}" for p in toy.QUICK["clamp_ps"]} <= set(names)
    assert {f"AEnt p={p:g}" for p in toy.QUICK["aent_ps"]} <= set(names)
    assert len(res["runs"]) == len(names) * len(cfg["sparsities"]) * cfg["seeds"]
    assert res["curve_steps"][0] == 0 and res["curve_steps"][-1] == 6
    for run in res["runs"]:
        assert run["learner"] in names and run["sparsity"] in cfg["sparsities"] and run["seed"] in res["seeds"]
        assert 0.0 <= run["final_success"] <= run["final_expected_return"] <= 1.0
        for curve in ("success", "expected_return", "entropy", "clamped_entropy", "tail_mass", "coef"):
            assert len(run["curves"][curve]) == len(res["curve_steps"])
        assert run["curves"]["success"][-1] == pytest.approx(run["final_success"], abs=1e-6)
    assert len(res["summary"]) == len(names) * len(cfg["sparsities"])
    assert {"final_success_mean", "final_success_sem", "mean_success_mean", "num_solved"} <= set(res["summary"][0])
    table = (out / "table.md").read_text()
    for name in names:
        assert f"| {name} |" in table
    # before training every learner has the same policy: the curves start at the same point per (sparsity, seed)
    starts = {}
    for run in res["runs"]:
        starts.setdefault((run["sparsity"], run["seed"]), set()).add(run["curves"]["success"][0])
    assert all(len(v) == 1 for v in starts.values())


def test_seeded_run_is_deterministic():
    a = toy.run_experiment(small_config(), progress=False)
    b = toy.run_experiment(small_config(), progress=False)
    assert [r["curves"] for r in a["runs"]] == [r["curves"] for r in b["runs"]]
    c = toy.run_experiment(small_config(first_seed=5), progress=False)
    assert [r["curves"] for r in a["runs"]] != [r["curves"] for r in c["runs"]]


def test_coefficients_come_from_the_core_and_behave():
    # band far above any reachable entropy: AEnt's coefficient must rise every step; constant ones must not move
    cfg = small_config(sparsities=[2], aent_band=(20.0, 21.0), aent_lr=0.01, coef=0.05, aent_coef_max=1.0)
    res = toy.run_experiment(cfg, progress=False)
    for run in res["runs"]:
        coef = run["curves"]["coef"]
        if run["learner"].startswith("AEnt"):
            assert all(b > a for a, b in zip(coef, coef[1:])), coef
        elif run["learner"] == "no entropy":
            assert set(coef) == {0.0}
        else:
            assert set(coef) == {0.05}


def test_plain_bonus_raises_tail_mass_more_than_a_clamped_bonus_that_drops_the_tail():
    # The mechanism the experiment is about, on a small instance: with the same coefficient, the plain bonus puts
    # more mass on the prior's tail than the clamped bonus with a large p (which keeps only the top actions).
    cfg = small_config(sparsities=[1], seeds=2, steps=30, coef=0.2, clamp_ps=[0.99], aent_ps=[])
    res = toy.run_experiment(cfg, progress=False)
    by = {(r["learner"], r["seed"]): r["final_tail_mass"] for r in res["runs"]}
    for seed in res["seeds"]:
        assert by["entropy", seed] > 2 * by["clamped p=0.99", seed]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsities", "0"], "positive integer"),
        (["--sparsities", "a,b"], "comma-separated integers"),
        (["--clamp-ps", "1.0"], "clamp p"),
        (["--seeds", "0"], "seeds"),
        (["--group-size", "1"], "group_size"),
        (["--coef", "0"], "coef"),
        (["--num-actions", "10", "--clamp-ps", "0.5", "--aent-ps", "0.5"], "num_actions"),
        (["--num-actions", "100", "--clamp-ps", "0.999"], "keeps fewer than 2"),
        (["--aent-band", "1.0,0.5"], "band"),
        (["--aent-coef-max", "0.00001"], "aent_coef_max"),
    ],
)
def test_bad_arguments_give_clear_errors(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as err:
        toy.main([*args, "--out-dir", str(tmp_path / "never")])
    assert err.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_cli_routes_toy_mdp(tmp_path, capsys):
    from aent import cli

    with pytest.raises(SystemExit) as err:
        cli.main(["toy-mdp", "--help"])
    assert err.value.code == 0
    assert "--quick" in capsys.readouterr().out
