"""Integration test: AEnt with ``use_fused_kernels=true`` inside verl's REAL FSDP2 engine, on a CPU.

One subprocess builds the same tiny random Qwen2 twice: first in an engine without fused kernels (AEnt's logits seam,
verl's plain GRPO), then with verl's fused kernels (``apply_monkey_patch`` swaps the model class's forward for
verl's fused one, so the order matters), and a third time with the triton backend selected. The fused AEnt update
must equal the unfused one (loss, metrics, gradients), equal verl's own fused plain GRPO at coefficient 0, run no
fused op of verl's, and leave the old-log-prob pass's full-vocabulary entropy to verl.
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

COEF = 0.5
CLAMP_P = 0.3


def run_checks(out_path: str) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from aent_test_support.cpu_platform import init_single_process_group, use_cpu_platform

    from aent.experiments.tiny_model import write_tiny_qwen2

    use_cpu_platform()
    init_single_process_group()
    import torch
    from test_verl_engine import TEMPERATURE, _batch
    from verl.trainer.config import CheckpointConfig
    from verl.utils import tensordict_utils as tu
    from verl.utils.experimental import torch_functional as verl_fused
    from verl.workers.config import FSDPActorConfig, FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine import EngineRegistry
    from verl.workers.utils.losses import ppo_loss
    from verl.workers.utils.padding import left_right_2_no_padding

    import aent
    from aent.verl import aent_step_flags, make_aent_loss

    # tied output layer: verl 0.9.1's fused forward reads lm_head.weight without calling lm_head, which FSDP2 shards
    # as a unit of its own when untied (verl's own fused update then fails: "mixed torch.Tensor and DTensor")
    path = write_tiny_qwen2(tempfile.mkdtemp(prefix="aent_tiny_qwen2_"), tie_word_embeddings=True)

    def build(fused_backend=None):
        model = HFModelConfig(
            path=path,
            use_remove_padding=True,
            override_config={"attn_implementation": "sdpa"},
            use_fused_kernels=fused_backend is not None,
            fused_kernel_options={"impl_backend": fused_backend or "torch"},
        )
        engine = EngineRegistry.new(
            model_type="language_model",
            backend="fsdp2",
            model_config=model,
            engine_config=FSDPEngineConfig(
                strategy="fsdp2",
                use_torch_compile=False,
                model_dtype="fp32",
                mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
            ),
            optimizer_config=FSDPOptimizerConfig(lr=0.0),
            checkpoint_config=CheckpointConfig(),
        )
        engine.initialize()
        return engine

    def actor_config():
        return FSDPActorConfig(
            strategy="fsdp2",
            ppo_mini_batch_size=4,
            ppo_micro_batch_size_per_gpu=2,
            rollout_n=1,
            loss_agg_mode="token-mean",
        )

    def plain_loss(model_output, data, dp_group=None):
        return ppo_loss(actor_config(), model_output, data, dp_group)

    calls = {"aent": 0, "verl": 0}
    aent_op = aent.linear_logprobs_and_clamped_entropy

    def counting_aent(*args, **kwargs):
        calls["aent"] += 1
        return aent_op(*args, **kwargs)

    aent.linear_logprobs_and_clamped_entropy = counting_aent
    verl_forward = verl_fused.FusedLinearForPPO.forward

    def counting_verl(self, *args, **kwargs):
        calls["verl"] += 1
        return verl_forward(self, *args, **kwargs)

    verl_fused.FusedLinearForPPO.forward = counting_verl

    def train(engine, loss_fn, flags, fused, micro=2):
        td, *_ = _batch(torch, tu, left_right_2_no_padding, micro, flags)
        tu.assign_non_tensor(td, use_fused_kernels=fused)
        before = dict(calls)
        out = engine.train_batch(td, loss_function=loss_fn)
        grads = {n: p.grad.full_tensor().clone() for n, p in engine.module.named_parameters() if p.grad is not None}
        metrics = {k: float(v.aggregate()) if hasattr(v, "aggregate") else v for k, v in out["metrics"].items()}
        metrics.pop("grad_norm", None)
        used = {k: calls[k] - before[k] for k in calls}
        return float(sum(out["loss"])), grads, metrics, used

    def rel(a, b):
        num = sum(float((a[n] - b[n]).pow(2).sum()) for n in b)
        den = sum(float(b[n].pow(2).sum()) for n in b)
        return (num / max(den, 1e-30)) ** 0.5

    results = {}
    unfused = build()
    aent_u = train(unfused, make_aent_loss(actor_config(), CLAMP_P), aent_step_flags(COEF), False)
    aent_u0 = train(unfused, make_aent_loss(actor_config(), CLAMP_P), aent_step_flags(0.0), False)
    del unfused

    fused = build("torch")
    model_forward = type(fused.module).forward
    aent_f = train(fused, make_aent_loss(actor_config(), CLAMP_P), aent_step_flags(COEF, fused=True), True)
    aent_f0 = train(fused, make_aent_loss(actor_config(), CLAMP_P), aent_step_flags(0.0, fused=True), True)
    plain_f = train(fused, plain_loss, {"calculate_entropy": False}, True)
    aent_f_split = train(fused, make_aent_loss(actor_config(), CLAMP_P), aent_step_flags(COEF, fused=True), True, 4)

    keys = ("actor/aent_entropy_sum", "actor/aent_num_tokens", "actor/aent_nonfinite_tokens", "actor/pg_loss")
    results.update(
        forward_wrapped=getattr(type(fused.module).forward, "_aent_serves", None) is not None,
        forward_was_verls=model_forward.__name__,
        loss_fused_vs_unfused=[aent_f[0], aent_u[0]],
        grad_fused_vs_unfused=rel(aent_f[1], aent_u[1]),
        grad_norm=sum(float(g.pow(2).sum()) for g in aent_u[1].values()) ** 0.5,
        bonus_grad_fused_vs_unfused=rel(
            {n: aent_f[1][n] - aent_f0[1][n] for n in aent_f[1]}, {n: aent_u[1][n] - aent_u0[1][n] for n in aent_u[1]}
        ),
        metrics_fused={k: aent_f[2].get(k) for k in keys},
        metrics_unfused={k: aent_u[2].get(k) for k in keys},
        metric_keys_fused=sorted(aent_f[2]),
        calls_aent_update=aent_f[3],
        calls_unfused_aent_update=aent_u[3],
        calls_plain_update=plain_f[3],
        coef0_loss_vs_plain=[aent_f0[0], plain_f[0]],
        coef0_pg_loss_vs_plain=[aent_f0[2].get("actor/pg_loss"), plain_f[2].get("actor/pg_loss")],
        coef0_grad_vs_plain=rel(aent_f0[1], plain_f[1]),
        split_loss=[aent_f[0], aent_f_split[0]],
        split_grad=rel(aent_f_split[1], aent_f[1]),
    )

    # -- the old-log-prob pass: verl's fused op and its full-vocabulary entropy ------------------------------------
    td, seqs, pls, rls = _batch(
        torch, tu, left_right_2_no_padding, 2, {"calculate_entropy": True, "compute_loss": False}
    )
    tu.assign_non_tensor(td, use_fused_kernels=True)
    before = dict(calls)
    out = fused.infer_batch(td, loss_function=make_aent_loss(actor_config(), CLAMP_P))
    results["calls_old_log_prob"] = {k: calls[k] - before[k] for k in calls}
    ent = out["model_output"]["entropy"]
    ent = torch.cat([t for t in ent.unbind()]) if ent.is_nested else ent.reshape(-1)
    from transformers import Qwen2ForCausalLM

    hf = Qwen2ForCausalLM.from_pretrained(path, attn_implementation="sdpa", torch_dtype=torch.float32)
    with torch.no_grad():
        full = []
        for seq in seqs:
            hidden = hf.model(input_ids=seq.unsqueeze(0)).last_hidden_state[0]
            full.append(aent.entropy(hidden @ hf.lm_head.weight.t() / TEMPERATURE))
        full = torch.cat(full)
    results["old_log_prob_entropy_err"] = float((ent.float() - full).abs().max())
    results["old_log_prob_entropy_vs_clamped"] = float((ent.float() - full).abs().max()) < float(
        (
            ent.float()
            - torch.cat(
                [
                    aent.clamped_entropy(
                        hf.model(input_ids=s.unsqueeze(0)).last_hidden_state[0] @ hf.lm_head.weight.t() / TEMPERATURE,
                        CLAMP_P,
                    )
                    for s in seqs
                ]
            ).detach()
        )
        .abs()
        .max()
    )

    # -- NaN hidden states on response rows are counted ------------------------------------------------------------
    inner = next(m for m in fused.module.modules() if type(m).__name__.endswith("Qwen2ForCausalLM"))

    def poison(module, args, output):
        output = output.clone()
        output[..., 7, :] = float("nan")  # packed row 7: a response position of the first sequence
        output[..., 8, :] = float("inf")
        return output

    handle = inner.model.norm.register_forward_hook(poison)
    try:
        bad = train(fused, make_aent_loss(actor_config(), CLAMP_P), aent_step_flags(COEF, fused=True), True)
        results["nonfinite_counted"] = bad[2].get("actor/aent_nonfinite_tokens")
    finally:
        handle.remove()

    # -- unfused flags on a fused engine are refused -------------------------------------------------------------
    try:
        train(fused, make_aent_loss(actor_config(), CLAMP_P), aent_step_flags(COEF), True)
        results["unfused_flags_error"] = None
    except RuntimeError as err:
        results["unfused_flags_error"] = str(err)
    del fused

    # -- the triton backend ends up in the same place (its kernel is never called in the AEnt update) -------------
    triton_engine = build("triton")
    results["triton_forward_was"] = getattr(type(triton_engine.module).forward, "_aent_serves", None) is None and (
        type(triton_engine.module).forward.__name__
    )
    aent_t = train(triton_engine, make_aent_loss(actor_config(), CLAMP_P), aent_step_flags(COEF, fused=True), True)
    results["triton_loss_vs_unfused"] = [aent_t[0], aent_u[0]]
    results["triton_grad_vs_unfused"] = rel(aent_t[1], aent_u[1])

    with open(out_path, "w") as f:
        json.dump(results, f)


@pytest.fixture(scope="module")
def fused_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fused_engine") / "results.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__, str(out)], capture_output=True, text=True, timeout=420, env=env, cwd=os.getcwd()
    )
    if proc.returncode != 0:
        pytest.fail(f"engine subprocess failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    with open(out) as f:
        return json.load(f)


def test_the_models_forward_is_verls_fused_one_served_by_aent(fused_results):
    assert fused_results["forward_was_verls"] == "forward_with_torch_backend"
    assert fused_results["forward_wrapped"]
    assert fused_results["triton_forward_was"] == "forward_with_triton_backend"


def test_fused_aent_update_equals_the_unfused_one(fused_results):
    r = fused_results
    assert r["loss_fused_vs_unfused"][0] == pytest.approx(r["loss_fused_vs_unfused"][1], rel=1e-5, abs=1e-7)
    assert r["grad_norm"] > 0 and r["grad_fused_vs_unfused"] < 1e-5
    assert r["bonus_grad_fused_vs_unfused"] < 1e-4
    for key, value in r["metrics_unfused"].items():
        assert value is not None and r["metrics_fused"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert r["metrics_fused"]["actor/aent_num_tokens"] == 14
    # verl's entropy is not computed nor reported in the update: the entropy key carried AEnt's clamped entropy
    assert "actor/entropy_loss" not in r["metric_keys_fused"]


def test_the_triton_backend_ends_up_in_aents_op_too(fused_results):
    r = fused_results
    assert r["triton_loss_vs_unfused"][0] == pytest.approx(r["triton_loss_vs_unfused"][1], rel=1e-5, abs=1e-7)
    assert r["triton_grad_vs_unfused"] < 1e-5


def test_at_coefficient_zero_it_equals_verls_fused_plain_grpo(fused_results):
    r = fused_results
    assert r["coef0_loss_vs_plain"][0] == pytest.approx(r["coef0_loss_vs_plain"][1], rel=1e-5, abs=1e-7)
    assert r["coef0_pg_loss_vs_plain"][0] == pytest.approx(r["coef0_pg_loss_vs_plain"][1], rel=1e-5, abs=1e-7)
    assert r["coef0_grad_vs_plain"] < 1e-5


def test_the_update_runs_aents_op_and_none_of_verls(fused_results):
    r = fused_results
    assert r["calls_aent_update"] == {"aent": 2, "verl": 0}  # one per micro-batch
    assert r["calls_unfused_aent_update"] == {"aent": 0, "verl": 0}  # the logits seam
    assert r["calls_plain_update"] == {"aent": 0, "verl": 2}


def test_the_old_log_prob_pass_keeps_verls_entropy(fused_results):
    r = fused_results
    assert r["calls_old_log_prob"] == {"aent": 0, "verl": 2}
    assert r["old_log_prob_entropy_err"] < 1e-4 and r["old_log_prob_entropy_vs_clamped"]


def test_micro_batch_split_invariance(fused_results):
    r = fused_results
    assert r["split_loss"][0] == pytest.approx(r["split_loss"][1], rel=1e-5, abs=1e-7)
    assert r["split_grad"] < 1e-5


def test_nonfinite_hidden_states_on_response_rows_are_counted(fused_results):
    # packed rows 7 and 8 of each micro-batch: both predict response tokens in the first (sequences of 6 + 5 and
    # 4 + 3 tokens), only row 7 in the second (5 + 4 tokens: row 8 predicts past the end); the trainer stops the step
    # on any such count (test_verl_trainer.py)
    assert fused_results["nonfinite_counted"] == 3


def test_unfused_flags_on_a_fused_engine_are_refused(fused_results):
    err = fused_results["unfused_flags_error"]
    assert err is not None and "aent_step_flags(coef, fused=True)" in err


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))  # as tests/conftest.py
    run_checks(sys.argv[1])
