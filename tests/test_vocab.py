"""Tests of ``aent vocab-sweep`` (aent/experiments/vocab.py) and the pieces of the demo trainer it relies on.

The model at each count (added rows, tail mass matched), the tail-mass metric recomputed in float64, the sampler
against exact probabilities and against transformers' greedy ``generate``, the ``--quick`` sweep end to end (files,
gains recomputed from the per-run CSVs, resume), and clear errors for bad settings. About a minute on 2 cores.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import statistics

import pytest
import torch
from aent_test_support.deps import require

require("transformers", "verl")
require("math_verify", "math")

import aent  # noqa: E402
from aent.experiments import demo, vocab  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small_model(seed=0, warmup_steps=30):
    """The demo's model at 32 logits, briefly warmed up (the unused rows trained down), small enough for unit tests."""
    cfg = demo.DemoConfig(warmup_steps=warmup_steps, hidden_size=32, intermediate_size=64, num_heads=2, seed=seed)
    tokenizer = demo.build_tokenizer()
    task = demo.AdditionTask(cfg.max_operand, cfg.seed, 16)
    torch.manual_seed(seed)
    model = demo.build_model(len(tokenizer), cfg)
    demo.warmup(model, tokenizer, task, cfg, progress=False)
    return model, tokenizer, task, cfg


# ------------------------------------------------------------------------------------------------------------------
# The model at each count
# ------------------------------------------------------------------------------------------------------------------


def test_grow_output_layer_adds_rows_keeps_the_rest_and_stays_tied():
    model, tokenizer, _, _ = _small_model()
    before = model.get_input_embeddings().weight.detach().clone()
    small, large = copy.deepcopy(model), copy.deepcopy(model)
    vocab.grow_output_layer(small, 5000, len(tokenizer), seed=7)
    vocab.grow_output_layer(large, 9000, len(tokenizer), seed=7)
    for m, n in ((small, 5000), (large, 9000)):
        weight = m.get_input_embeddings().weight
        assert weight.shape == (n, before.shape[1]) and m.config.vocab_size == n
        assert m.get_output_embeddings().weight.data_ptr() == weight.data_ptr()  # still tied
        assert torch.equal(weight[:32], before)  # the warmed-up rows, task rows included, are untouched
    # a smaller count's added rows are the first rows of a larger count's
    assert torch.equal(large.get_input_embeddings().weight[:5000], small.get_input_embeddings().weight)
    # the added rows follow the unused rows' per-dimension statistics
    added = large.get_input_embeddings().weight[32:].detach()
    unused = before[len(tokenizer) :]
    assert torch.allclose(added.mean(0), unused.mean(0), atol=0.05 * float(unused.std(0).max()) + 1e-3)
    assert torch.allclose(added.std(0), unused.std(0), rtol=0.1)
    with pytest.raises(ValueError, match="at least the model's 32 output rows"):
        vocab.grow_output_layer(copy.deepcopy(model), 16, len(tokenizer), seed=7)
    with pytest.raises(ValueError, match="unused output rows"):
        vocab.grow_output_layer(copy.deepcopy(model), 64, 31, seed=7)


def _tail_mass_f64(model, hidden, task_tokens):
    logits = hidden.double() @ model.get_output_embeddings().weight.detach().double().T
    return float(torch.softmax(logits, dim=-1)[:, task_tokens:].sum(-1).mean())


def test_match_tail_mass_hits_the_target_and_leaves_the_task_distribution_alone():
    model, tokenizer, task, cfg = _small_model()
    t = len(tokenizer)
    hidden = vocab.response_hidden(model, tokenizer, task, cfg, batches=1)
    target = _tail_mass_f64(model, hidden, t)
    assert 0.0 < target < 0.5
    assert vocab.tail_mass_at(model, t, hidden) == pytest.approx(target, rel=1e-4)
    grown = copy.deepcopy(model)
    vocab.grow_output_layer(grown, 6000, t, seed=3)
    before = _tail_mass_f64(grown, hidden, t)
    assert before > 3 * target  # 5,968 more unused tokens: far more tail mass before matching
    w_before = grown.get_output_embeddings().weight.detach().clone()
    info = vocab.match_tail_mass(grown, t, hidden, target)
    assert info["shift"] > 0 and info["tail_mass_before"] == pytest.approx(before, rel=1e-3)
    assert _tail_mass_f64(grown, hidden, t) == pytest.approx(target, rel=1e-3)
    w_after = grown.get_output_embeddings().weight.detach()
    assert torch.equal(w_after[:t], w_before[:t])  # task rows untouched
    # every unused logit drops at every matched position
    drop = hidden.double() @ (w_before[t:] - w_after[t:]).double().T
    assert float(drop.min()) > 0
    # a model already at or below the target is left as it is
    same = copy.deepcopy(model)
    assert vocab.match_tail_mass(same, t, hidden, target * 2)["shift"] == 0.0
    assert torch.equal(same.get_output_embeddings().weight, model.get_output_embeddings().weight)


def test_tail_mass_metric_equals_a_float64_recomputation():
    model, tokenizer, task, cfg = _small_model()
    assert vocab.task_tokens() == len(tokenizer) and vocab.VocabConfig.base_logits() == 32
    vocab.grow_output_layer(model, 2000, len(tokenizer), seed=1)
    batch = demo.rollout(model, tokenizer, task, task.train_batch(0, 3), cfg, demo._load_compute_score())
    _, stats = demo.grpo_loss(model, batch, 0.0, 0.33, task_tokens=len(tokenizer))
    with torch.no_grad():
        ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
        p_len, r_len = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
        logits = model(input_ids=ids).logits[:, p_len - 1 : p_len - 1 + r_len].double()
        tail = torch.softmax(logits, dim=-1)[..., len(tokenizer) :].sum(-1)
        mask = batch.response_mask.double()
        expected = float((tail * mask).sum() / mask.sum())
    assert expected > 0
    assert stats["tail_mass"] == pytest.approx(expected, rel=1e-4)
    # without task_tokens (or with none unused) there is no tail
    _, stats = demo.grpo_loss(model, batch, 0.0, 0.33)
    assert stats["tail_mass"] == 0.0


# ------------------------------------------------------------------------------------------------------------------
# The sampler
# ------------------------------------------------------------------------------------------------------------------


def test_sampler_draws_from_the_softmax_and_never_a_zero_probability_token():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0, float("-inf"), 1.0, -40.0, float("-inf")]])
    n = 60_000
    draws = demo._sample_rows(logits.expand(n, -1), temperature=1.0)
    counts = torch.bincount(draws, minlength=7).double()
    probs = torch.softmax(logits[0].double(), dim=-1)
    assert counts[3] == 0 and counts[6] == 0  # -inf: probability 0
    for j in (0, 1, 2, 4):  # within 5 standard deviations of the binomial count
        sd = math.sqrt(n * probs[j] * (1 - probs[j]))
        assert abs(counts[j] - n * probs[j]) < 5 * sd, (j, counts[j], n * probs[j])
    hot = demo._sample_rows(logits.expand(n, -1), temperature=2.0)
    assert torch.bincount(hot, minlength=7)[2] > counts[2]  # a higher temperature flattens


def test_greedy_decoding_matches_transformers_generate():
    from transformers import GenerationConfig

    model, tokenizer, task, cfg = _small_model(warmup_steps=10)
    vocab.grow_output_layer(model, 3000, len(tokenizer), seed=0)
    model.eval()
    prompts = demo._encode(tokenizer, [task.prompt(a, b) for a, b in task.eval_pairs[:12]], torch.device("cpu"))
    ours = demo.generate(model, tokenizer, prompts, cfg, greedy=True)
    gen = GenerationConfig(
        do_sample=False,
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    theirs = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), generation_config=gen)
    theirs = theirs[:, prompts.shape[1] :]
    assert torch.equal(ours, theirs[:, : ours.shape[1]])
    assert bool((theirs[:, ours.shape[1] :] == tokenizer.pad_token_id).all())


# ------------------------------------------------------------------------------------------------------------------
# --quick end to end
# ------------------------------------------------------------------------------------------------------------------


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _late_reward(out, count, arm, seed):
    """A run's sampled reward, mean over the last quarter of its steps, from its CSV."""
    rows = _read_csv(out / "cells" / f"{vocab.cell_name(count, arm, seed)}.csv")
    late = rows[-max(1, len(rows) // 4) :]
    return sum(float(r["reward"]) for r in late) / len(late)


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab_quick")
    assert vocab.main(["--quick", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    return out


@pytest.mark.slow
def test_quick_sweep_writes_every_run_and_the_summaries(quick_sweep):
    cfg = vocab.VocabConfig.quick_config()
    results = json.loads((quick_sweep / "results.json").read_text())
    for count in cfg.counts:
        for arm in cfg.arms:
            for seed in cfg.seeds:
                rows = _read_csv(quick_sweep / "cells" / f"{vocab.cell_name(count, arm, seed)}.csv")
                assert len(rows) == cfg.steps and list(rows[0]) == list(demo.METRIC_COLUMNS)
                for r in rows:
                    assert 0.0 <= float(r["tail_mass"]) <= 1.0
                    assert 0.0 <= float(r["entropy"]) <= math.log(count) + 1e-6
                    kept = count - aent.num_removed(count, cfg.clamp_p)
                    assert 0.0 <= float(r["clamped_entropy"]) <= math.log(kept) + 1e-6
                assert rows[-1]["eval_accuracy"] != ""
            # the gains are the arm's numbers minus GRPO's at the same seed, from the CSVs
            gains = [
                float(_read_csv(quick_sweep / "cells" / f"{vocab.cell_name(count, arm, s)}.csv")[-1]["eval_accuracy"])
                - float(
                    _read_csv(quick_sweep / "cells" / f"{vocab.cell_name(count, 'grpo', s)}.csv")[-1]["eval_accuracy"]
                )
                for s in cfg.seeds
            ]
            entry = results["table"][f"{count}/{arm}"]["gain_eval_accuracy_end"]
            assert entry["mean"] == pytest.approx(sum(gains) / len(gains), abs=1e-12)
            assert entry["n"] == len(cfg.seeds)

            gains = [
                _late_reward(quick_sweep, count, arm, s) - _late_reward(quick_sweep, count, "grpo", s)
                for s in cfg.seeds
            ]
            entry = results["table"][f"{count}/{arm}"]["gain_reward_late"]
            assert entry["mean"] == pytest.approx(sum(gains) / len(gains), abs=1e-12)
            assert entry["sd"] == pytest.approx(statistics.stdev(gains), abs=1e-12)
    # every count starts from the 32-logit model's tail mass (matched on the warm-up's positions)
    start = results["start"]["2048"]
    assert start["tail_mass_before"] > start["tail_mass_after"]
    assert start["tail_mass_after"] == pytest.approx(results["target_tail_mass"], rel=1e-3)
    # the coefficients are what the arms claim to be, at every count
    for count in cfg.counts:
        rows = _read_csv(quick_sweep / "cells" / f"{vocab.cell_name(count, 'entropy', 0)}.csv")
        assert {float(r["coef"]) for r in rows} == {cfg.entropy_coef}
        rows = _read_csv(quick_sweep / "cells" / f"{vocab.cell_name(count, 'clamped', 0)}.csv")
        assert {float(r["coef"]) for r in rows} == {cfg.clamped_coef}
    table = (quick_sweep / "table.md").read_text()
    assert table.count("\n") == 2 + len(cfg.counts) * len(cfg.arms)
    with open(quick_sweep / "vocab.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resume_reuses_finished_runs_and_refuses_other_settings(quick_sweep, monkeypatch, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in (quick_sweep / "cells").iterdir()}
    calls = []
    real = demo.train_arm
    monkeypatch.setattr(demo, "train_arm", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    removed = quick_sweep / "cells" / f"{vocab.cell_name(2048, 'aent', 1)}.csv"
    os.remove(removed)
    assert vocab.main(["--quick", "--out", str(quick_sweep), "--no-progress", "--threads", "1", "--resume"]) == 0
    assert calls == ["aent"]  # only the missing run ran again
    after = {p.name: p.stat().st_mtime_ns for p in (quick_sweep / "cells").iterdir()}
    assert {k: v for k, v in after.items() if k != removed.name} == {
        k: v for k, v in before.items() if k != removed.name
    }
    code = vocab.main(["--quick", "--out", str(quick_sweep), "--steps", "3", "--no-progress", "--resume"])
    assert code == 2


def test_cli_rejects_bad_settings_with_a_clear_message(capsys, tmp_path):
    out = str(tmp_path)
    assert vocab.main(["--counts", "64,4096", "--out", out]) == 2
    assert "counts must start at 32" in capsys.readouterr().err
    assert vocab.main(["--counts", "32,4096,4096", "--out", out]) == 2
    assert "increasing and distinct" in capsys.readouterr().err
    assert vocab.main(["--arms", "entropy,aent", "--out", out]) == 2
    assert "must include grpo" in capsys.readouterr().err
    assert vocab.main(["--seeds", "1,1", "--out", out]) == 2
    assert "seeds must be distinct" in capsys.readouterr().err
    assert vocab.main(["--steps", "0", "--out", out]) == 2
    assert "steps must be a positive integer" in capsys.readouterr().err
    assert not os.listdir(out)  # nothing started


def test_cli_routes_vocab_sweep_to_this_module(capsys):
    from aent import cli

    with pytest.raises(SystemExit) as err:
        cli.main(["vocab-sweep", "--help"])
    assert err.value.code == 0
    assert capsys.readouterr().out == vocab.build_parser().format_help()


# ------------------------------------------------------------------------------------------------------------------
# The committed results
# ------------------------------------------------------------------------------------------------------------------

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def test_committed_results_are_the_default_run_and_the_doc_table_is_theirs():
    """docs/figures/vocab-results.json is the default run's results.json, and docs/VOCAB.md shows its table as
    ``format_table`` writes it: no number in the doc is typed by hand."""
    with open(os.path.join(DOCS, "figures", "vocab-results.json")) as fh:
        results = json.load(fh)
    default = json.loads(json.dumps(dataclasses.asdict(vocab.VocabConfig())))
    assert {k: v for k, v in results["settings"].items() if k != "out_dir"} == {
        k: v for k, v in default.items() if k != "out_dir"
    }
    cfg = vocab.VocabConfig()
    assert len(results["runs"]) == len(cfg.counts) * len(cfg.arms) * len(cfg.seeds)
    with open(os.path.join(DOCS, "VOCAB.md")) as fh:
        page = fh.read()
    assert vocab.format_table(results) in page
    # the control: the default run but for the plain bonus's coefficient, three counts and two arms
    with open(os.path.join(DOCS, "figures", "vocab-floor-results.json")) as fh:
        floor = json.load(fh)
    control = dict(default, counts=[32, 32768, 151936], arms=["grpo", "entropy"], entropy_coef=0.01)
    assert {k: v for k, v in floor["settings"].items() if k != "out_dir"} == {
        k: v for k, v in control.items() if k != "out_dir"
    }
    assert vocab.format_table(floor) in page
    # GRPO does not depend on the plain bonus's coefficient: the control's GRPO runs are the default run's (but for
    # their wall time)
    for name, summary in floor["runs"].items():
        if "_grpo_" in name:
            assert dict(summary, seconds_per_step=0) == dict(results["runs"][name], seconds_per_step=0)
    assert os.path.getsize(os.path.join(DOCS, "figures", "vocab.png")) > 10_000
