"""Tests of ``aent demo`` (aent/experiments/demo.py): the end-to-end ``--quick`` run, the controller inside the loop, and the loss.

The ``--quick`` run takes about a minute on two CPU cores; everything else here is a few seconds.
"""

from __future__ import annotations

import csv
import math
import os

import pytest
import torch
from aent_test_support.deps import require

require("transformers", "verl")
require("math_verify", "math")

import aent  # noqa: E402
from aent.experiments import demo  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _tiny_config(tmp_path, **overrides):
    """A config small enough for unit tests: random-init model, no warm-up, a handful of samples."""
    base = dict(
        steps=3,
        warmup_steps=0,
        prompts_per_step=2,
        group_size=4,
        mini_batches=2,
        eval_size=8,
        eval_every=100,
        max_new_tokens=8,
        out_dir=str(tmp_path),
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
    )
    base.update(overrides)
    return demo.DemoConfig(**base)


def _score():
    from aent.reward import compute_score

    return compute_score


# ------------------------------------------------------------------------------------------------------------------
# --quick end to end (one run shared by the tests that read its outputs)
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo_quick")
    code = demo.main(["--quick", "--out-dir", str(out_dir), "--no-progress"])
    return code, out_dir


@pytest.mark.slow
def test_quick_runs_end_to_end_and_writes_outputs(quick_run):
    code, out_dir = quick_run
    assert code == 0
    cfg = demo.DemoConfig.quick_config()
    for arm in demo.DEFAULT_ARMS:
        rows = _read_csv(os.path.join(out_dir, f"metrics_{arm}.csv"))
        assert len(rows) == cfg.steps
        assert list(rows[0]) == list(demo.METRIC_COLUMNS)
        assert [int(r["step"]) for r in rows] == list(range(1, cfg.steps + 1))  # global steps count from 1
        for r in rows:
            for key in ("reward", "accuracy", "format_rate", "entropy", "clamped_entropy", "coef", "response_length"):
                assert math.isfinite(float(r[key])), (arm, key, r)
            assert 0.0 <= float(r["reward"]) <= 1.0
            assert 0.0 <= float(r["clamped_entropy"]) <= math.log(32) + 1e-6
            # the clamped distribution lives on a subset of the vocabulary: its entropy is at most ln(kept tokens)
            assert float(r["clamped_entropy"]) <= math.log(32 - aent.num_removed(32, cfg.clamp_p)) + 1e-6
            assert 1.0 <= float(r["response_length"]) <= cfg.max_new_tokens
        assert rows[-1]["eval_accuracy"] != ""  # evaluated at the last step
    # the arms' coefficients are what they claim to be
    assert {float(r["coef"]) for r in _read_csv(os.path.join(out_dir, "metrics_grpo.csv"))} == {0.0}
    assert {float(r["coef"]) for r in _read_csv(os.path.join(out_dir, "metrics_entropy.csv"))} == {cfg.entropy_coef}
    summary = _read_csv(os.path.join(out_dir, "summary.csv"))
    assert [s["arm"] for s in summary] == list(demo.DEFAULT_ARMS)
    png = os.path.join(out_dir, "demo.png")
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10_000
    assert os.path.exists(os.path.join(out_dir, "config.json"))


@pytest.mark.slow
def test_quick_aent_coefficient_follows_algorithm_1(quick_run):
    """Algorithm 1 (docs/METHOD.md) recomputed from the logged clamped entropy: below the band up, above down, inside unchanged."""
    _, out_dir = quick_run
    cfg = demo.DemoConfig.quick_config()
    rows = _read_csv(os.path.join(out_dir, "metrics_aent.csv"))
    moved = 0
    for i, r in enumerate(rows):
        h, coef, nxt = float(r["clamped_entropy"]), float(r["coef"]), float(r["coef_next"])
        if i + 1 < len(rows):
            assert float(rows[i + 1]["coef"]) == nxt  # the new value is used from the next step on
        expected = coef - cfg.aent_lr * (min(0.0, h - cfg.aent_low) + max(0.0, h - cfg.aent_high))
        expected = min(max(expected, cfg.aent_min), cfg.aent_max)
        assert nxt == pytest.approx(expected, rel=1e-9, abs=1e-12)
        if h < cfg.aent_low:
            assert nxt > coef or nxt == cfg.aent_max
        elif h > cfg.aent_high:
            assert nxt < coef or nxt == cfg.aent_min
        else:
            assert nxt == coef
        moved += nxt != coef
    assert moved > 0, "the controller never moved during the quick run; the check above would be vacuous"


# ------------------------------------------------------------------------------------------------------------------
# The controller inside the training loop, with bands the measured entropy is certainly below / above
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("band, direction", [((3.0, 3.2), +1), ((0.0, 0.5), -1)])
def test_train_arm_moves_coefficient_toward_band(tmp_path, band, direction):
    # A random-init model over 32 logits: clamped entropy (p = 0.5) is near ln(16) = 2.77 nats, below [3.0, 3.2]
    # and above [0, 0.5].
    cfg = _tiny_config(
        tmp_path, aent_low=band[0], aent_high=band[1], aent_init=0.5, aent_lr=0.01, aent_min=0.0, aent_max=1.0
    )
    tokenizer = demo.build_tokenizer()
    task = demo.AdditionTask(cfg.max_operand, cfg.seed, cfg.eval_size)
    model = demo.build_model(len(tokenizer), cfg)
    rows = demo.train_arm("aent", model, tokenizer, task, cfg, _score(), progress=False)
    for r in rows:
        h = float(r["clamped_entropy"])
        assert (h < band[0]) if direction > 0 else (h > band[1])
        step = r["coef_next"] - r["coef"]
        assert step * direction > 0
        shortfall = (h - band[0]) if direction > 0 else (h - band[1])
        assert step == pytest.approx(-cfg.aent_lr * shortfall, rel=1e-9)


def test_steps_count_from_1_and_warmup_steps_means_what_it_means_in_verl(tmp_path):
    """One step convention everywhere (verl, the README loop, aent.verl's trainer, this demo): global steps count
    from 1, steps 1..warmup_steps use the initial coefficient, the first update that moves it follows step
    warmup_steps, and step warmup_steps + 1 is the first to use a moved value."""
    warmup = 2
    cfg = _tiny_config(
        tmp_path,
        steps=4,
        aent_warmup=warmup,
        aent_low=3.0,
        aent_high=3.2,  # far above the measured ~2.8 nats: every allowed update raises the coefficient
        aent_init=0.5,
        aent_lr=0.01,
        aent_min=0.0,
        aent_max=1.0,
    )
    tokenizer = demo.build_tokenizer()
    task = demo.AdditionTask(cfg.max_operand, cfg.seed, cfg.eval_size)
    model = demo.build_model(len(tokenizer), cfg)
    rows = demo.train_arm("aent", model, tokenizer, task, cfg, _score(), progress=False)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    moved_after = [r["step"] for r in rows if r["coef_next"] != r["coef"]]
    assert moved_after == list(range(warmup, cfg.steps + 1))
    first_using_moved = next(r["step"] for r in rows if r["coef"] != cfg.aent_init)
    assert first_using_moved == warmup + 1


# ------------------------------------------------------------------------------------------------------------------
# The loss's entropy term, recomputed independently
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("clamp_p", [0.0, 0.5, 0.33])
def test_loss_entropy_term_equals_minus_coef_times_reference_clamped_entropy(tmp_path, clamp_p):
    cfg = _tiny_config(
        tmp_path,
        prompts_per_step=3,
        group_size=4,
        max_new_tokens=10,
        warmup_steps=60,
        hidden_size=128,
        intermediate_size=256,
        num_heads=4,
    )
    tokenizer = demo.build_tokenizer()
    task = demo.AdditionTask(cfg.max_operand, cfg.seed, cfg.eval_size)
    model = demo.build_model(len(tokenizer), cfg)
    # a short warm-up: confident format tokens next to uncertain digits, so the per-token entropy varies
    demo.warmup(model, tokenizer, task, cfg, progress=False)
    batch = demo.rollout(model, tokenizer, task, task.train_batch(0, cfg.prompts_per_step), cfg, _score())
    # Responses of different lengths (a random model rarely stops by itself), so that a token-mean differs from a
    # mean of per-sequence means and a wrong aggregation would show.
    n, r_len = batch.response_ids.shape
    lengths = torch.tensor([1 + (3 * i) % r_len for i in range(n)])
    batch.response_mask = (torch.arange(r_len).unsqueeze(0) < lengths.unsqueeze(1)).float()
    batch.response_ids = torch.where(batch.response_mask.bool(), batch.response_ids, tokenizer.pad_token_id)
    batch.response_ids[torch.arange(n), lengths - 1] = tokenizer.eos_token_id
    assert len(set(lengths.tolist())) > 3
    batch.old_log_probs = demo.old_log_probs(model, batch, cfg)

    coef = 0.37
    loss_with, stats = demo.grpo_loss(model, batch, coef, clamp_p, cfg.clip_eps, cfg.temperature)
    loss_without, _ = demo.grpo_loss(model, batch, 0.0, clamp_p, cfg.clip_eps, cfg.temperature)

    # Independent recomputation: own forward (no attention mask: padding after EOS cannot affect earlier positions of
    # a causal model), own slicing, float64 reference entropy, own token-mean over response tokens.
    with torch.no_grad():
        input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
        logits = model(input_ids=input_ids).logits
        p_len, r_len = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
        logits = logits[:, p_len - 1 : p_len - 1 + r_len, :].double() / cfg.temperature
        ent = aent.clamped_entropy(logits, clamp_p, impl="reference")
        mask = batch.response_mask.double()
        h_agg = float((ent * mask).sum() / mask.sum())
        per_seq_mean = float(((ent * mask).sum(1) / mask.sum(1)).mean())
    # the check below tells a token-mean from a mean of per-sequence means
    assert abs(per_seq_mean - h_agg) > 1e-2 * h_agg

    assert float((loss_with - loss_without).detach()) == pytest.approx(-coef * h_agg, rel=1e-4, abs=1e-6)
    assert stats["entropy_term"] == pytest.approx(coef * h_agg, rel=1e-4, abs=1e-6)
    assert stats["clamped_entropy"] == pytest.approx(h_agg, rel=1e-4, abs=1e-6)


def test_tokenizer_round_trip_and_response_mask():
    tok = demo.build_tokenizer()
    text = "07+45=\\boxed{52}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    eos = tok.eos_token_id
    resp = torch.tensor([[5, 6, eos, 0, 0], [5, 6, 7, 8, 9], [eos, 0, 0, 0, 0]])
    mask = demo._response_mask(resp, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_cli_rejects_bad_settings_with_a_clear_message(capsys):
    assert demo.main(["--steps", "0", "--no-progress"]) == 2
    assert "steps must be a positive integer" in capsys.readouterr().err
    assert demo.main(["--arms", "grpo,foo", "--no-progress"]) == 2
    assert "arms must be a non-empty subset" in capsys.readouterr().err
    assert demo.main(["--clamp-p", "1.5", "--no-progress"]) == 2
    assert "clamp_p" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert demo.main(["--device", "cuda", "--no-progress"]) == 2
        assert "cuda" in capsys.readouterr().err


def test_cli_routes_demo_to_this_module(capsys):
    # the help text is this module's parser's (its --arms option exists nowhere else)
    from aent import cli

    with pytest.raises(SystemExit) as err:
        cli.main(["demo", "--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aent demo") and "--arms" in out
    assert out == demo.build_parser().format_help()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(tmp_path):
    cfg = _tiny_config(tmp_path, device="cuda", steps=2, warmup_steps=2)
    out = demo.run_demo(cfg, progress=False)
    assert set(out["results"]) == set(demo.DEFAULT_ARMS)
    assert all(math.isfinite(r["clamped_entropy"]) for rows in out["results"].values() for r in rows)
