"""Integration test: the AEnt loss inside verl's REAL FSDP2 training engine, on a CPU.

The engine runs in a fresh subprocess (it registers a CPU platform with verl and starts torch.distributed, which must
not leak into other tests). The subprocess builds a tiny random Qwen2 and a tokenizer, runs
``engine.train_batch(data, loss_function=make_aent_loss(...))`` with the per-step flags, and compares everything with
an independent forward/backward of the same weights through plain transformers and the float64 reference entropy.

The whole subprocess runs under an emulation of flash-attn's in-place cross-entropy backward (the GPU default of
verl's log-prob call, which writes its gradient into the logits storage): the AEnt update must stay exact under it,
and a seam that lets verl's own log-prob call run next to AEnt's op must be caught by the same comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

if __name__ != "__main__":  # under pytest (the engine subprocess runs this file as a script, with its own path)
    from aent_test_support.deps import require

    require("verl", "verl")
    require("transformers", "verl")

MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
COEF = 0.5
TEMPERATURE = 0.7
CLAMP_P = 0.3


def _batch(torch, tu, left_right_2_no_padding, micro_batch_size, flags):
    from tensordict import TensorDict

    gen = torch.Generator().manual_seed(1)
    bs, P, R = 4, 6, 5
    prompts = torch.randint(3, 300, (bs, P), generator=gen)
    responses = torch.randint(3, 300, (bs, R), generator=gen)
    prompt_lens, resp_lens = [6, 4, 5, 3], [5, 3, 4, 2]
    attn = torch.zeros(bs, P + R, dtype=torch.long)
    for i in range(bs):
        attn[i, P - prompt_lens[i] : P] = 1
        attn[i, P : P + resp_lens[i]] = 1
    td = TensorDict(
        {
            "input_ids": torch.cat([prompts, responses], 1),
            "attention_mask": attn,
            "position_ids": (attn.cumsum(-1) - 1).clamp_min(0),
            "response_mask": attn[:, P:].clone(),
            "prompts": prompts,
            "responses": responses,
            "old_log_probs": -torch.rand(bs, R, generator=gen),
            "advantages": torch.randn(bs, R, generator=gen),
        },
        batch_size=[bs],
    )
    seqs = [torch.cat([prompts[i, P - prompt_lens[i] :], responses[i, : resp_lens[i]]]) for i in range(bs)]
    td = left_right_2_no_padding(td)
    tu.assign_non_tensor(
        td,
        use_remove_padding=True,
        use_dynamic_bsz=False,
        micro_batch_size_per_gpu=micro_batch_size,
        global_batch_size=bs,
        max_token_len_per_gpu=4096,
        use_fused_kernels=False,
        temperature=TEMPERATURE,
        **flags,
    )
    return td, seqs, prompt_lens, resp_lens


def run_checks(out_path: str) -> None:
    """Runs in the subprocess; writes a JSON dict of measured quantities to ``out_path``."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from aent_test_support.cpu_platform import init_single_process_group, use_cpu_platform

    from aent.experiments.tiny_model import write_tiny_qwen2

    use_cpu_platform()
    init_single_process_group()
    import torch
    from aent_test_support.flash_like_ce import install_inplace_cross_entropy
    from transformers import Qwen2ForCausalLM
    from verl.trainer.config import CheckpointConfig
    from verl.utils import tensordict_utils as tu
    from verl.workers.config import FSDPActorConfig, FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine import EngineRegistry
    from verl.workers.utils.losses import ppo_loss
    from verl.workers.utils.padding import left_right_2_no_padding

    import aent
    from aent.verl import AEntPolicyLoss, aent_step_flags, make_aent_loss
    from aent.verl.loss import packed_labels_and_loss_rows

    results = {}
    path = write_tiny_qwen2(tempfile.mkdtemp(prefix="aent_tiny_qwen2_"))
    engine = EngineRegistry.new(
        model_type="language_model",
        backend="fsdp2",
        model_config=HFModelConfig(path=path, use_remove_padding=True, override_config={"attn_implementation": "sdpa"}),
        engine_config=FSDPEngineConfig(
            strategy="fsdp2",
            use_torch_compile=False,
            model_dtype="fp32",
            mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
        ),
        optimizer_config=FSDPOptimizerConfig(lr=0.0),  # weights stay put, so every run sees the same policy
        checkpoint_config=CheckpointConfig(),
    )
    engine.initialize()
    results["engine_class"] = type(engine).__name__
    ce_calls = {"inplace": 0, "out_of_place": 0, "forward_only": 0}
    install_inplace_cross_entropy(ce_calls)
    entropy_calls = [0]
    verl_entropy = engine.compute_entropy_from_logits

    def counting_entropy(*args, **kwargs):
        entropy_calls[0] += 1
        return verl_entropy(*args, **kwargs)

    engine.compute_entropy_from_logits = counting_entropy

    class RecordingLoss(AEntPolicyLoss):
        """Keeps the logits the engine hands over (a copy; the math is the library's)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen_logits = []
            self.seen_rows = []

        def logits_outputs(self, student_logits, data):
            self.seen_logits.append(student_logits.detach().clone())
            labels, rows = packed_labels_and_loss_rows(data, student_logits.shape[1], student_logits.device)
            self.seen_rows.append((labels, rows, data["input_ids"].values()))
            return super().logits_outputs(student_logits, data)

    def actor_config(mode="token-mean", loss_scale_factor=None):
        return FSDPActorConfig(
            strategy="fsdp2",
            ppo_mini_batch_size=4,
            ppo_micro_batch_size_per_gpu=2,
            rollout_n=1,
            loss_agg_mode=mode,
            loss_scale_factor=loss_scale_factor,
        )

    def train(loss_fn, micro, coef, flags=None):
        flags = aent_step_flags(coef) if flags is None else flags
        td, seqs, pls, rls = _batch(torch, tu, left_right_2_no_padding, micro, flags)
        out = engine.train_batch(td, loss_function=loss_fn)
        grads = {n: p.grad.full_tensor().clone() for n, p in engine.module.named_parameters() if p.grad is not None}
        metrics = {k: float(v.aggregate()) if hasattr(v, "aggregate") else v for k, v in out["metrics"].items()}
        metrics.pop("grad_norm", None)
        return float(sum(out["loss"])), grads, metrics, (seqs, pls, rls)

    # -- the bonus, measured against an independent forward/backward ----------------------------------------------
    loss_c = RecordingLoss(actor_config(), CLAMP_P)
    loss1, g1, m1, (seqs, pls, rls) = train(loss_c, 2, COEF)
    calls_aent = dict(ce_calls, entropy=entropy_calls[0])
    loss0, g0, m0, _ = train(make_aent_loss(actor_config(), CLAMP_P), 2, 0.0)

    # plain GRPO on the same micro-batches: verl's own loss, verl's own (in-place) log-prob call
    def plain_loss(model_output, data, dp_group=None):
        return ppo_loss(actor_config(), model_output, data, dp_group)

    before = dict(ce_calls)
    loss_plain, g_plain, m_plain, _ = train(plain_loss, 2, 0.0, flags={})
    calls_plain = {k: ce_calls[k] - before[k] for k in ce_calls}
    # an unsafe seam: verl computes its own log-probs (in place) next to the AEnt op, which re-reads the logits
    unsafe_flags = {"distillation_use_topk": True, "distillation_only": False, "calculate_entropy": False}
    loss_u, g_u, _, _ = train(make_aent_loss(actor_config(), CLAMP_P), 2, COEF, dict(unsafe_flags, aent_coef=COEF))

    hf = Qwen2ForCausalLM.from_pretrained(path, attn_implementation="sdpa", torch_dtype=torch.float32)
    ent_rows, logit_err = [], 0.0
    seen = torch.cat([t.squeeze(0) for t in loss_c.seen_logits], 0)
    row = 0
    for seq, pl, rl in zip(seqs, pls, rls):
        logits = hf(input_ids=seq.unsqueeze(0)).logits[0] / TEMPERATURE
        logit_err = max(logit_err, float((seen[row : row + len(seq)] - logits.detach()).abs().max()))
        row += len(seq)
        ent_rows.append(aent.clamped_entropy(logits[pl - 1 : pl + rl - 1].double(), CLAMP_P, impl="reference"))
    ent_all = torch.cat(ent_rows)
    h_ref = ent_all.mean()
    hf.zero_grad()
    h_ref.backward()
    gh = {n: p.grad.detach().float() for n, p in hf.named_parameters() if p.grad is not None}
    diff_sq = sum(float(((g0[n] - g1[n]) - COEF * gh[n]).pow(2).sum()) for n in gh)
    ref_sq = sum(float((COEF * gh[n]).pow(2).sum()) for n in gh)
    unsafe_sq = sum(float(((g_plain[n] - g_u[n]) - COEF * gh[n]).pow(2).sum()) for n in gh)
    plain_sq = sum(float((g0[n] - g_plain[n]).pow(2).sum()) for n in g_plain)
    plain_norm_sq = sum(float(g_plain[n].pow(2).sum()) for n in g_plain)
    # the rows the op computed: response positions after the shift, labelled with the response tokens
    rows_true, rows_total, label_ok = 0, 0, True
    for _labels, rows, _ids in loss_c.seen_rows:
        rows_true += int(rows.sum())
        rows_total += int(rows.numel())
    resp_tokens = torch.cat([seq[pl : pl + rl] for seq, pl, rl in zip(seqs, pls, rls)])
    picked = torch.cat([labels[rows] for labels, rows, _ in loss_c.seen_rows])
    label_ok = bool(torch.equal(picked, resp_tokens))
    results.update(
        logits_rows_seen=int(seen.shape[0]),
        logits_rows_expected=int(sum(len(s) for s in seqs)),
        logits_vocab=int(seen.shape[1]),
        max_abs_logit_err=logit_err,
        clamped_entropy_ref=float(h_ref),
        metric_entropy_sum=m1["actor/aent_entropy_sum"],
        metric_num_tokens=m1["actor/aent_num_tokens"],
        metric_clamped_entropy=m1["actor/aent_entropy_sum"] / m1["actor/aent_num_tokens"],
        metric_clamped_entropy_coef0=m0["actor/aent_entropy_sum"] / m0["actor/aent_num_tokens"],
        metric_coef=m1["actor/aent_coef"],
        metric_nonfinite=m1["actor/aent_nonfinite_tokens"],
        metric_keys=sorted(m1),
        full_entropy_metric=m1.get("actor/entropy_loss"),
        loss_drop=loss0 - loss1,
        expected_loss_drop=COEF * float(h_ref),
        grad_bonus_rel_err=(diff_sq / max(ref_sq, 1e-30)) ** 0.5,
        grad_bonus_norm=ref_sq**0.5,
        unsafe_seam_grad_bonus_rel_err=(unsafe_sq / max(ref_sq, 1e-30)) ** 0.5,
        coef0_vs_plain_grad_rel_err=(plain_sq / max(plain_norm_sq, 1e-30)) ** 0.5,
        coef0_vs_plain_loss=[loss0, loss_plain],
        pg_loss_aent_vs_plain=[m0.get("actor/pg_loss"), m_plain.get("actor/pg_loss")],
        calls_during_aent_update=calls_aent,
        calls_during_plain_update=calls_plain,
        loss_rows_computed=rows_true,
        packed_rows=rows_total,
        loss_row_labels_are_the_response_tokens=label_ok,
    )

    # -- the seam itself: prepare_model_outputs hands the loss real logits and keeps their gradient --------------
    td, seqs, _, _ = _batch(torch, tu, left_right_2_no_padding, 4, aent_step_flags(COEF))
    ids = torch.cat(seqs).unsqueeze(0)
    raw = hf(input_ids=ids, position_ids=torch.cat([torch.arange(len(q)) for q in seqs]).unsqueeze(0))
    raw.logits.retain_grad()
    output_args = {
        "input_ids_rmpad_rolled": torch.roll(ids[0], -1),
        "temperature_rmpad": torch.full((ids.shape[1],), TEMPERATURE),
        "pad_size": 0,
        "temperature_is_one": False,
    }
    model_output = engine.prepare_model_outputs(
        output=raw,
        output_args=output_args,
        micro_batch=td,
        logits_processor_func=make_aent_loss(actor_config(), CLAMP_P),
    )
    seam = model_output["aent_clamped_entropy"]
    seam_logp = model_output["log_probs"]
    (seam.values().sum() + 0.5 * seam_logp.values().sum()).backward()
    _, rows = packed_labels_and_loss_rows(td, ids.shape[1], ids.device)
    scaled = (raw.logits.detach()[0] / TEMPERATURE).double().requires_grad_(True)
    ref = aent.clamped_entropy(scaled, CLAMP_P, impl="reference") * rows
    ref_logp = torch.log_softmax(scaled, -1).gather(1, torch.roll(ids[0], -1).unsqueeze(1)).squeeze(1) * rows
    (ref.sum() + 0.5 * ref_logp.sum()).backward()
    results.update(
        seam_is_nested=bool(seam.is_nested and seam_logp.is_nested),
        seam_keys=sorted(model_output),
        seam_value_err=float((seam.values().detach().double() - ref.detach()).abs().max()),
        seam_logp_err=float((seam_logp.values().detach().double() - ref_logp.detach()).abs().max()),
        seam_grad_err=float((raw.logits.grad[0].double() - scaled.grad / TEMPERATURE).abs().max()),
        seam_grad_norm=float(raw.logits.grad.norm()),
    )

    # -- the old-log-prob pass (verl's actor/entropy metric) still computes verl's full entropy -------------------
    before = entropy_calls[0]
    td, *_ = _batch(torch, tu, left_right_2_no_padding, 2, {"calculate_entropy": True, "compute_loss": False})
    engine.infer_batch(td, loss_function=make_aent_loss(actor_config(), CLAMP_P))
    results["entropy_calls_in_old_log_prob_pass"] = entropy_calls[0] - before

    # -- micro-batch split invariance, each loss_agg_mode ---------------------------------------------------------
    split = {}
    for mode in MODES:
        scale = 5.0 if mode == "seq-mean-token-sum-norm" else None  # a fixed horizon, as verl recommends
        fn = make_aent_loss(actor_config(mode, scale), CLAMP_P)
        runs = [train(fn, micro, COEF) for micro in (1, 4)]
        (la, ga, ma, _), (lb, gb, mb, _) = runs
        gdiff = max(float((ga[n] - gb[n]).abs().max()) for n in ga)
        gmax = max(float(ga[n].abs().max()) for n in ga)
        split[mode] = {
            "loss": [la, lb],
            "grad_max_abs_diff": gdiff,
            "grad_max_abs": gmax,
            "entropy_token_mean": [
                ma["actor/aent_entropy_sum"] / ma["actor/aent_num_tokens"],
                mb["actor/aent_entropy_sum"] / mb["actor/aent_num_tokens"],
            ],
        }
    results["split"] = split

    # -- without the per-step flags the loss refuses to train silently without the bonus -----------------------------
    td, *_ = _batch(torch, tu, left_right_2_no_padding, 2, {})
    try:
        engine.train_batch(td, loss_function=make_aent_loss(actor_config(), CLAMP_P))
        results["missing_flags_error"] = None
    except RuntimeError as err:
        results["missing_flags_error"] = str(err)

    with open(out_path, "w") as f:
        json.dump(results, f)


@pytest.fixture(scope="module")
def engine_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "results.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__, str(out)], capture_output=True, text=True, timeout=420, env=env, cwd=os.getcwd()
    )
    if proc.returncode != 0:
        pytest.fail(f"engine subprocess failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    with open(out) as f:
        return json.load(f)


def test_engine_is_verls_fsdp_engine(engine_results):
    assert engine_results["engine_class"] == "FSDPEngineWithLMHead"


def test_clamped_entropy_comes_from_the_engines_temperature_scaled_logits(engine_results):
    r = engine_results
    # every packed row (prompt and response) of both micro-batches went through the seam, over the padded vocabulary
    assert r["logits_rows_seen"] == r["logits_rows_expected"]
    assert r["logits_vocab"] >= 384
    # they are the model's logits divided by the rollout temperature
    assert r["max_abs_logit_err"] < 1e-4
    # the measured token-mean clamped entropy equals the float64 reference on those logits
    assert r["metric_num_tokens"] == 14
    assert r["metric_entropy_sum"] / r["metric_num_tokens"] == pytest.approx(r["clamped_entropy_ref"], rel=1e-5)
    assert r["metric_clamped_entropy"] == pytest.approx(r["clamped_entropy_ref"], rel=1e-5)
    assert r["metric_nonfinite"] == 0


def test_entropy_is_measured_when_the_coefficient_is_zero(engine_results):
    assert engine_results["metric_clamped_entropy_coef0"] == pytest.approx(
        engine_results["clamped_entropy_ref"], rel=1e-5
    )


def test_bonus_enters_the_loss_and_its_gradient_reaches_the_weights(engine_results):
    r = engine_results
    assert r["loss_drop"] == pytest.approx(r["expected_loss_drop"], rel=1e-4)
    assert r["grad_bonus_norm"] > 0
    assert r["grad_bonus_rel_err"] < 1e-3


def test_metrics_come_back_and_the_update_computes_no_verl_entropy(engine_results):
    r = engine_results
    keys = set(r["metric_keys"])
    assert {"actor/aent_entropy_sum", "actor/aent_num_tokens", "actor/aent_coef", "actor/pg_loss"} <= keys
    # the step's token-weighted clamped entropy is the trainer's (sum / tokens over the step); the loss sends none
    assert "actor/aent_clamped_entropy" not in keys
    assert r["metric_coef"] == COEF
    # verl's eager full-vocabulary entropy is neither computed nor back-propagated in the AEnt update ...
    assert "actor/entropy_loss" not in keys and r["full_entropy_metric"] is None
    assert r["calls_during_aent_update"]["entropy"] == 0
    # ... but the old-log-prob pass, where verl's actor/entropy metric comes from, still computes it
    assert r["entropy_calls_in_old_log_prob_pass"] > 0


def test_the_update_runs_no_log_prob_call_of_verls_own(engine_results):
    r = engine_results
    # with AEnt on, the log-prob gradient comes from AEnt's op: verl's (in-place, flash-attn style) call never runs
    # with autograd ...
    assert r["calls_during_aent_update"]["inplace"] == 0 and r["calls_during_aent_update"]["out_of_place"] == 0
    # ... only without it, for the values (the old-log-prob pass's own computation: an on-policy ratio of exactly 1)
    assert r["calls_during_aent_update"]["forward_only"] > 0
    # ... while plain GRPO on the same engine takes the in-place path (so the emulation is live)
    assert r["calls_during_plain_update"]["inplace"] > 0


def test_log_prob_part_equals_plain_grpo(engine_results):
    r = engine_results
    # at coefficient 0 the AEnt update is plain GRPO: same loss, same pg_loss, same gradient
    assert r["coef0_vs_plain_loss"][0] == pytest.approx(r["coef0_vs_plain_loss"][1], rel=1e-5, abs=1e-7)
    assert r["pg_loss_aent_vs_plain"][0] == pytest.approx(r["pg_loss_aent_vs_plain"][1], rel=1e-5, abs=1e-7)
    assert r["coef0_vs_plain_grad_rel_err"] < 1e-4


def test_bonus_gradient_is_exact_under_the_in_place_backward_and_an_unsafe_seam_is_caught(engine_results):
    r = engine_results
    assert r["grad_bonus_rel_err"] < 1e-3
    # the same comparison on a seam where verl's in-place log-prob backward runs before AEnt's backward reads the
    # logits: the bonus gradient is garbage, so this test would fail on such a seam
    assert r["unsafe_seam_grad_bonus_rel_err"] > 0.1


def test_only_loss_rows_are_computed(engine_results):
    r = engine_results
    # response positions after verl's one-token shift: 14 response tokens out of the packed prompt+response rows
    assert r["loss_rows_computed"] == r["metric_num_tokens"] == 14
    assert r["packed_rows"] == r["logits_rows_expected"] > r["loss_rows_computed"]
    assert r["loss_row_labels_are_the_response_tokens"]


def test_logits_seam_returns_log_probs_and_entropy_from_real_logits(engine_results):
    r = engine_results
    assert r["seam_is_nested"]
    assert "log_probs" in r["seam_keys"] and "aent_clamped_entropy" in r["seam_keys"]
    assert "entropy" not in r["seam_keys"]
    assert r["seam_value_err"] < 1e-5
    assert r["seam_logp_err"] < 1e-5
    assert r["seam_grad_norm"] > 0
    assert r["seam_grad_err"] < 1e-6


@pytest.mark.parametrize("mode", MODES)
def test_micro_batch_split_invariance(engine_results, mode):
    s = engine_results["split"][mode]
    assert s["loss"][0] == pytest.approx(s["loss"][1], rel=1e-5, abs=1e-7)
    assert s["grad_max_abs_diff"] <= 1e-5 * max(s["grad_max_abs"], 1e-6) + 1e-8
    assert s["entropy_token_mean"][0] == pytest.approx(s["entropy_token_mean"][1], rel=1e-6)


def test_training_without_the_step_flags_is_refused(engine_results):
    err = engine_results["missing_flags_error"]
    assert err is not None and "trainer_mode=aent" in err and "distillation_use_topk" in err


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))  # as tests/conftest.py
    run_checks(sys.argv[1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_update_log_probs_are_the_old_log_prob_pass_values_with_the_ops_gradient(dtype):
    """The update's log-probs are the values of verl's own log-prob call on the same logits (what the old-log-prob
    pass computes: for bf16 logits without flash-attn, log_softmax in bf16), bit for bit, so an on-policy PPO ratio
    is exactly 1; their gradient is AEnt's op's (float32, one buffer)."""
    import torch
    from verl.workers.engine.fsdp import transformer_impl

    import aent
    from aent.verl.loss import _ValueFrom, engine_log_probs

    dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(37, 301, generator=gen)).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 301, (37,), generator=gen)
    with torch.no_grad():
        old_pass = transformer_impl.logprobs_from_logits(logits=logits, labels=labels).float()
    op_logp, _ = aent.logprobs_and_clamped_entropy(logits, labels, CLAMP_P)
    values = engine_log_probs(logits, labels)
    update = _ValueFrom.apply(op_logp, values)
    assert torch.equal(update.detach(), old_pass)  # the ratio exp(update - old) is exactly 1
    if dtype == torch.bfloat16:
        assert not torch.equal(op_logp.detach(), old_pass)  # the op alone would not give it (the bf16 path differs)
    assert (op_logp.detach() - old_pass).abs().max() < (0.05 if dtype == torch.bfloat16 else 1e-5)
    weights = torch.randn(37, generator=gen)
    (g_update,) = torch.autograd.grad((update * weights).sum(), logits)
    op_logp_again, _ = aent.logprobs_and_clamped_entropy(logits, labels, CLAMP_P)  # the op's graph runs once
    (g_op,) = torch.autograd.grad((op_logp_again * weights).sum(), logits)
    assert torch.equal(g_update, g_op)
