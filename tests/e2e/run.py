"""End to end on a CPU: verl 0.9.1's own ``main_ppo`` with vLLM rollouts and AEnt switched on by the recipe's flag.

Run with the end-to-end environment (``make e2e`` builds ``.venv-e2e`` and calls this)::

    .venv-e2e/bin/python tests/e2e/run.py [--workdir build/e2e] [--only aent|baselines]

1. builds a tiny random Qwen2 and its tokenizer (offline) and a small verl parquet through ``aent prepare-data``;
2. ``python -m verl.trainer.main_ppo --config-path=<repo>/configs --config-name=aent_grpo_math`` scaled down by
   command-line overrides: GRPO, vLLM rollouts with n = 2, a few prompts, steps 1-2 with a checkpoint at step 2,
   then a second run that resumes from it and does step 3;
3. asserts from the metrics verl logged (:mod:`checks`); the baseline recipes ``grpo_math`` and ``entreg_math`` run
   one step the same way.

Every process runs under a timeout in its own session; whatever is left of it (Ray, the vLLM server and its workers)
is killed by session and by a marker in the environment. A failure prints the last lines of every log.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import checks  # noqa: E402

MARKER = "AENT_E2E_RUN"  # environment variable carried by every process of one run: the cleanup's handle
TAIL_LINES = 40

# A band the random model's clamped entropy (several nats) lies far above, so the coefficient must fall every step;
# a coefficient large enough that the entropy term is plainly visible in actor/loss.
AENT_OPTIONS = {
    "coef_init": 0.05,
    "entropy_low": 0.15,
    "entropy_high": 0.24,
    "lr": 0.002,
    "coef_min": 0.001,
    "coef_max": 0.1,
    "warmup_steps": 0,
}
PROBS_DIFF_TOL = 1e-5


class StepTimer:
    def __init__(self):
        self.rows = []

    def add(self, name, seconds, **extra):
        self.rows.append({"name": name, "seconds": round(seconds, 1), **extra})
        print(f"[e2e] {name}: {seconds:.1f} s {extra if extra else ''}", flush=True)


# -- processes ---------------------------------------------------------------------------------------------
def _processes_of(session_id: int, marker: str):
    """pids of live processes in session ``session_id`` or carrying ``MARKER=marker`` in their environment."""
    found = []
    needle = f"{MARKER}={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == session_id:  # field 6 of stat: session id
                found.append(int(entry))
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return found


def cleanup(session_id: int, marker: str) -> int:
    """SIGTERM, then SIGKILL, every process of the run; returns how many were still there."""
    pids = _processes_of(session_id, marker)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and _processes_of(session_id, marker):
            time.sleep(0.2)
        pids = _processes_of(session_id, marker)
        if not pids:
            break
    return len(pids)


def run_logged(cmd, log_path, env, timeout, cwd=REPO):
    """Run ``cmd`` in its own session under ``timeout`` seconds, output to ``log_path``; clean up after it."""
    marker = uuid.uuid4().hex
    env = dict(env, **{MARKER: marker})
    print(f"[e2e] $ {' '.join(cmd)}\n[e2e]   log: {log_path}", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            left = cleanup(proc.pid, marker)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if left:
        print(f"[e2e] warning: {left} processes of {cmd[0]} survived SIGKILL", flush=True)
    return rc


def print_tails(paths) -> None:
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                lines = f.readlines()
        except OSError:
            continue
        if not lines:
            continue
        print(f"\n[e2e] ---- last {min(TAIL_LINES, len(lines))} lines of {path} ----", flush=True)
        sys.stdout.write("".join(lines[-TAIL_LINES:]))
    sys.stdout.flush()


def worker_logs(ray_dir: str):
    """Ray's per-process logs of the run (workers, raylet, GCS), newest session only."""
    sessions = sorted(p for p in glob.glob(os.path.join(ray_dir, "session_*")) if not os.path.islink(p))
    if not sessions:
        return []
    logs = sorted(glob.glob(os.path.join(sessions[-1], "logs", "*")))
    keep = ("worker-", "raylet.", "gcs_server.")  # the workers' stdout/stderr, and Ray's own two services
    return [p for p in logs if os.path.basename(p).startswith(keep) and p.endswith((".err", ".out"))]


# -- inputs ------------------------------------------------------------------------------------------------
def build_model(path: str, tie_word_embeddings: bool = False) -> str:
    from aent.experiments.tiny_model import write_tiny_qwen2  # the repository's one tiny-model builder

    if os.path.exists(os.path.join(path, "done")):
        return path
    # hidden 128 with 4 heads: head size 32, which vLLM's CPU attention supports
    write_tiny_qwen2(path, hidden_size=128, num_layers=2, seed=0, tie_word_embeddings=tie_word_embeddings)
    # vLLM samples and normalises over the tokenizer's ids only; the trainer over the model's whole vocabulary. A
    # real checkpoint's padding rows have ~0 probability, a random model's do not (log(384/319) = 0.19 nats per
    # token apart): cut the vocabulary to the tokenizer's so that the two sides' probabilities can be compared.
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = Qwen2ForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(path)
    open(os.path.join(path, "done"), "w").close()
    return path


def write_problems(path: str, n: int) -> str:
    rows = [
        {"problem": f"What is {a} + {b}?", "answer": str(a + b), "solution": f"$\\boxed{{{a + b}}}$"}
        for a, b in ((3 + i, 4 + 2 * i) for i in range(n))
    ]
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def prepare_data(workdir: str, env, timer: StepTimer, n_prompts: int) -> str:
    data_dir = os.path.join(workdir, "data")
    os.makedirs(data_dir, exist_ok=True)
    source = write_problems(os.path.join(workdir, "problems.jsonl"), n_prompts)
    aent_cli = os.path.join(os.path.dirname(sys.executable), "aent")
    for name in ("math_train", "math500"):  # training set, and the one validation set of the scaled-down run
        t0 = time.time()
        rc = run_logged(
            [aent_cli, "prepare-data", name, "--input", source, "--out-dir", data_dir],
            os.path.join(workdir, f"prepare_{name}.log"),
            env,
            timeout=300,
        )
        if rc != 0:
            print_tails([os.path.join(workdir, f"prepare_{name}.log")])
            raise SystemExit(f"aent prepare-data {name} failed (rc {rc})")
        timer.add(f"prepare-data {name}", time.time() - t0)
    return data_dir


# -- main_ppo ----------------------------------------------------------------------------------------------
def overrides(model: str, data_dir: str, workdir: str, ckpt: str, steps: int, save_freq: int, batch: int):
    """The project's recipe scaled down to a CPU: every change is a command-line override."""
    return [
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={data_dir}/math_train.parquet",
        f"data.val_files=[{data_dir}/math500.parquet]",
        f"data.train_batch_size={batch}",
        "data.max_prompt_length=256",
        "data.max_response_length=24",
        "data.dataloader_num_workers=0",
        "data.shuffle=false",
        # the trainer: one mini-batch per step, fp32, sdpa attention, no compile
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch}",
        "actor_rollout_ref.actor.use_dynamic_bsz=false",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.actor.optim.lr=0.005",  # large, so that stale weights in vLLM would show
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=false",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
        "actor_rollout_ref.model.use_remove_padding=false",
        "actor_rollout_ref.model.enable_gradient_checkpointing=false",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=false",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        # vLLM on a CPU
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.dtype=float32",
        "actor_rollout_ref.rollout.enforce_eager=true",
        "actor_rollout_ref.rollout.free_cache_engine=false",
        "+actor_rollout_ref.rollout.enable_sleep_mode=false",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        # a test reward with spread (a random model scores 0 on the math reward)
        "reward.custom_reward_function.path=pkg://aent_test_support.reward",
        "reward.custom_reward_function.name=compute_score",
        "reward.num_workers=1",
        # Ray and TransferQueue on one small machine
        "ray_kwargs.ray_init.num_cpus=16",
        "+ray_kwargs.ray_init.num_gpus=1",  # the stand-in device the CPU platform names (aent_test_support)
        "+ray_kwargs.ray_init.include_dashboard=false",
        f"+ray_kwargs.ray_init._temp_dir={workdir}/ray",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        # the trainer loop
        "trainer.device=cpu",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "trainer.logger=[console,file]",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        f"trainer.total_training_steps={steps}",
        f"trainer.save_freq={save_freq}",
        "trainer.resume_mode=auto",
        f"trainer.default_local_dir={workdir}/ckpt/{ckpt}",
    ]


def override_key(item: str) -> str:
    """The config key of a Hydra command-line override (``+a.b=1``, ``++a.b=1`` and ``a.b=1`` name ``a.b``)."""
    return item.split("=", 1)[0].lstrip("+~")


def merge_overrides(base, extra, drop=()):
    """``base`` with every override whose key ``extra`` sets replaced by ``extra``'s, and the keys in ``drop``
    removed (Hydra refuses a key given twice)."""
    keys = {override_key(item) for item in extra} | set(drop)
    return [item for item in base if override_key(item) not in keys] + list(extra)


def run_main_ppo(
    recipe: str,
    name: str,
    extra,
    workdir: str,
    env,
    timeout: int,
    timer: StepTimer,
    ckpt=None,
    config_path=None,
    drop=(),
    **kw,
):
    """One ``main_ppo`` run of ``recipe`` (from ``config_path``: default the repository's configs, ``"verl"`` verl's
    own config folder) with :func:`overrides`, then ``extra`` (replacing the same keys) and without the keys in
    ``drop``. Returns the metrics verl logged and the run's log."""
    log = os.path.join(workdir, f"{name}.log")
    metrics_path = os.path.join(workdir, f"{name}.jsonl")
    if os.path.exists(metrics_path):
        os.remove(metrics_path)
    config_args = [f"--config-path={config_path or os.path.join(REPO, 'configs')}"] if config_path != "verl" else []
    cmd = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        *config_args,
        f"--config-name={recipe}",
        *merge_overrides(overrides(workdir=workdir, ckpt=ckpt or name, **kw), extra, drop),
    ]
    t0 = time.time()
    rc = run_logged(cmd, log, dict(env, VERL_FILE_LOGGER_PATH=metrics_path), timeout=timeout)
    elapsed = time.time() - t0
    if rc != 0:
        print_tails([log, *worker_logs(os.path.join(workdir, "ray"))])
        why = "timed out" if rc is None else f"exit status {rc}"
        raise SystemExit(f"[e2e] main_ppo {name} ({recipe}) failed: {why} after {elapsed:.0f} s; log {log}")
    metrics = checks.read_metrics(metrics_path) if os.path.exists(metrics_path) else {}
    step_times = [row.get("timing_s/step") for _, row in sorted(metrics.items())]
    timer.add(f"main_ppo {name}", elapsed, step_times_s=[round(t, 1) for t in step_times if t is not None])
    return metrics, log


def aent_args(options):
    return [f"aent.{k}={v}" for k, v in options.items()]


def check(label, fn, *args, **kwargs):
    fn(*args, **kwargs)
    print(f"[e2e] ok: {label}", flush=True)


def run_aent(ctx, timer):
    opts = AENT_OPTIONS
    # one checkpoint folder: the second run resumes from the first one's step 2 (trainer.resume_mode=auto)
    args = dict(extra=aent_args(opts), save_freq=2, timer=timer, ckpt="aent", **ctx)
    m1, log1 = run_main_ppo("aent_grpo_math", "aent_1", steps=2, **args)
    m2, log2 = run_main_ppo("aent_grpo_math", "aent_2", steps=3, **args)
    try:
        check("run 1 logged steps 1-2", checks.check_steps, m1, [1, 2])
        check("the resumed run logged step 3 only", checks.check_steps, m2, [3])
        both = {**m1, **m2}
        names = [checks.CLAMPED_ENTROPY, checks.COEF, checks.COEF_NEXT, checks.LOSS, checks.PG_LOSS]
        check("AEnt metrics present and finite on every step", checks.check_present_and_finite, both, names)
        check("actor/loss = pg_loss - coef x clamped entropy", checks.check_loss_identity, both)
        # the update pass runs no entropy of verl's own (calculate_entropy=False): ppo_loss then logs no entropy term
        check("verl computes no entropy in the AEnt update", checks.check_absent, both, [checks.ENTROPY_LOSS])
        check("advantages not all equal", checks.check_advantages_spread, both)
        check("the controller followed its rule", checks.check_controller, m1, opts, opts["coef_init"])
        saved = os.path.join(ctx["workdir"], "ckpt", "aent", "global_step_2", "aent_controller.json")
        with open(saved) as f:
            saved_coef = json.load(f)["coefficient"]["value"]
        if saved_coef != m1[2][checks.COEF_NEXT]:
            raise checks.E2EFailure(f"checkpoint holds {saved_coef!r}, step 2 logged {m1[2][checks.COEF_NEXT]!r}")
        check("the resumed run starts from the saved coefficient", checks.check_controller, m2, opts, saved_coef)
        # step 1 samples with the initial weights; steps 2 and 3 with weights updated by the trainer
        check(
            f"vLLM and the trainer agree (max prob diff <= {PROBS_DIFF_TOL})",
            checks.check_rollout_matches_trainer,
            both,
            [1, 2, 3],
            PROBS_DIFF_TOL,
        )
    except checks.E2EFailure:
        print_tails([log1, log2])
        raise
    return {"steps": {str(k): v for k, v in sorted({**m1, **m2}.items())}, "checkpoint_coef": saved_coef}


def run_baselines(ctx, timer):
    mg, logg = run_main_ppo("grpo_math", "grpo_1", [], steps=1, save_freq=-1, timer=timer, **ctx)
    me, loge = run_main_ppo(
        "entreg_math", "entreg_1", ["aent.coef_init=0.05"], steps=1, save_freq=-1, timer=timer, **ctx
    )
    try:
        check("grpo_math: one step", checks.check_steps, mg, [1])
        check("grpo_math: pg_loss and loss finite", checks.check_present_and_finite, mg, [checks.PG_LOSS, checks.LOSS])
        check("grpo_math: no AEnt metrics", checks.check_absent, mg, [checks.COEF, checks.CLAMPED_ENTROPY])
        check("entreg_math: one step", checks.check_steps, me, [1])
        names = [checks.CLAMPED_ENTROPY, checks.COEF, checks.COEF_NEXT, checks.LOSS, checks.PG_LOSS]
        check("entreg_math: metrics present and finite", checks.check_present_and_finite, me, names)
        check("entreg_math: loss identity", checks.check_loss_identity, me)
        check("entreg_math: constant coefficient", checks.check_constant_coef, me, 0.05)
        check("entreg_math: verl computes no entropy in the update", checks.check_absent, me, [checks.ENTROPY_LOSS])
        # clamp_p = 0 removes nothing: AEnt's entropy of the update (one mini-batch, so the weights of the old-log-prob
        # pass) is verl's own full-vocabulary actor/entropy of that pass
        check(
            "entreg_math: clamped entropy at clamp_p=0 equals verl's actor/entropy",
            checks.check_equal,
            me,
            checks.CLAMPED_ENTROPY,
            checks.FULL_ENTROPY,
            1e-4,
        )
    except checks.E2EFailure:
        print_tails([logg, loge])
        raise
    return {"grpo_math": mg, "entreg_math": me}


def run_fused(ctx, timer):
    """AEnt with verl's fused kernels (use_fused_kernels=true: no logits; aent.verl.fused), one step. A tied output
    layer (verl 0.9.1's fused forward fails under FSDP2 with an untied one) and packed micro-batches (the seam's)."""
    model = build_model(os.path.join(ctx["workdir"], "tiny_qwen2_tied"), tie_word_embeddings=True)
    fused = ["actor_rollout_ref.model.use_fused_kernels=true", "actor_rollout_ref.model.use_remove_padding=true"]
    args = dict(ctx, model=model, steps=1, save_freq=-1, timer=timer)
    m, log = run_main_ppo("aent_grpo_math", "aent_fused_1", aent_args(AENT_OPTIONS) + fused, **args)
    try:
        check("fused: one step", checks.check_steps, m, [1])
        names = [checks.CLAMPED_ENTROPY, checks.COEF, checks.LOSS, checks.PG_LOSS, checks.FULL_ENTROPY, "actor/ppo_kl"]
        check(
            "fused: AEnt metrics and verl's actor/entropy present and finite", checks.check_present_and_finite, m, names
        )
        check("fused: actor/loss = pg_loss - coef x clamped entropy", checks.check_loss_identity, m)
        check("fused: verl computes no entropy in the AEnt update", checks.check_absent, m, [checks.ENTROPY_LOSS])
        # one mini-batch: the update's log-probs (AEnt's op) must be verl's old log-probs (verl's fused op)
        if abs(m[1]["actor/ppo_kl"]) > 1e-6:
            raise checks.E2EFailure(f"fused: actor/ppo_kl = {m[1]['actor/ppo_kl']!r} on an on-policy step")
    except checks.E2EFailure:
        print_tails([log])
        raise
    return {"aent_fused": m}


def run_relatives(ctx, timer):
    """One step of each relative's recipe: TRE's top-k entropy (constant 0.001) and Skywork-OR1's target controller
    (started at 0.001 so that its first step carries a bonus; the random model's entropy is far above the target, so
    the gate closes and the coefficient falls by delta)."""
    runs = {
        "tre_topk_math": run_main_ppo("tre_topk_math", "tre_topk_1", [], steps=1, save_freq=-1, timer=timer, **ctx),
        "skywork_math": run_main_ppo(
            "skywork_math", "skywork_1", ["aent.coef_init=0.001"], steps=1, save_freq=-1, timer=timer, **ctx
        ),
    }
    names = [checks.CLAMPED_ENTROPY, checks.COEF, checks.COEF_NEXT, checks.LOSS, checks.PG_LOSS]
    try:
        for recipe, (m, _) in runs.items():
            check(f"{recipe}: one step", checks.check_steps, m, [1])
            check(f"{recipe}: metrics present and finite", checks.check_present_and_finite, m, names)
            check(f"{recipe}: loss identity", checks.check_loss_identity, m)
        check("tre_topk_math: constant coefficient", checks.check_constant_coef, runs["tre_topk_math"][0], 0.001)
        step1 = runs["skywork_math"][0][1]
        expected = 0.0 if step1[checks.CLAMPED_ENTROPY] >= 0.2 else min(0.001 + 1e-4, 0.005)
        if step1[checks.COEF] != 0.001 or abs(step1[checks.COEF_NEXT] - expected) > 1e-12:
            raise checks.E2EFailure(f"skywork_math: target controller logged {step1}, expected next value {expected}")
        print("[e2e] ok: skywork_math: the target controller followed its rule", flush=True)
    except checks.E2EFailure:
        print_tails([log for _, log in runs.values()])
        raise
    return {recipe: m for recipe, (m, _) in runs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(REPO, "build", "e2e"))
    parser.add_argument("--only", choices=["aent", "baselines", "relatives", "fused"], help="run only these recipes")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per main_ppo run (default 1200)")
    parser.add_argument("--prompts", type=int, default=8, help="prompts in the training file (default 8)")
    parser.add_argument("--batch", type=int, default=4, help="prompts per step (default 4)")
    args = parser.parse_args(argv)
    # a SIGTERM (e.g. from `timeout`) unwinds like an error, so that the running main_ppo is cleaned up
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    workdir = os.path.abspath(args.workdir)
    env = prepare_workdir(workdir)
    timer = StepTimer()
    t0 = time.time()
    model = build_model(os.path.join(workdir, "tiny_qwen2"))
    timer.add("tiny model", time.time() - t0)
    data_dir = prepare_data(workdir, env, timer, args.prompts)
    ctx = dict(model=model, data_dir=data_dir, workdir=workdir, env=env, timeout=args.timeout, batch=args.batch)
    report = {}
    if args.only in (None, "aent"):
        report["aent"] = run_aent(ctx, timer)
    if args.only in (None, "baselines"):
        report["baselines"] = run_baselines(ctx, timer)
    if args.only in (None, "relatives"):
        report["relatives"] = run_relatives(ctx, timer)
    if args.only in (None, "fused"):
        report["fused"] = run_fused(ctx, timer)
    report["timings"] = timer.rows
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"[e2e] passed in {time.time() - t0:.0f} s; report {os.path.join(workdir, 'report.json')}", flush=True)
    return 0


def prepare_workdir(workdir: str):
    """Create ``workdir`` without a previous run's checkpoints and Ray folder; the environment of every run."""
    os.makedirs(workdir, exist_ok=True)
    for stale in ("ckpt", "ray"):
        subprocess.run(["rm", "-rf", os.path.join(workdir, stale)], check=True)
    env = dict(
        os.environ,
        VERL_PLATFORM="cpu",  # switches on the CPU bridges of aent_test_support (every process imports verl)
        VERL_ENGINE_DEVICE="cuda",
        VLLM_CPU_KVCACHE_SPACE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p),
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


if __name__ == "__main__":
    sys.exit(main())
