"""What AEnt adds to verl's actor update: verl's real FSDP engine ``train_batch``, plain GRPO against AEnt.

Runs verl 0.9.1's FSDP2 engine in this process (a CPU platform is registered for it; on a GPU machine it runs on the
GPU) on a tiny random Qwen2 whose vocabulary is realistic (default V = 32,768) and the same micro-batches for each
variant:

* ``plain``: verl's own policy loss (``ppo_loss``) and its own log-prob call. On a CPU that call is replaced by an
  emulation of flash-attn's in-place cross-entropy (``--logprob flash-like``, the default), which is what a GPU run
  uses and what the buffer goal is measured against; ``--logprob verl`` keeps verl's own call (flash-attn's in-place
  cross-entropy on a GPU where flash-attn is installed, verl's out-of-place torch path elsewhere).
* ``aent``: the AEnt loss with the per-step flags of the ``aent`` trainer mode (torch path of the clamped entropy).
* ``plain_fused``: verl's plain GRPO with ``use_fused_kernels=true`` (a second engine on the same weights; verl's
  fused forward, ``fused_kernel_options.impl_backend=torch``: ``FusedLinearForPPO``, no logits).
* ``aent_fused``: AEnt with ``use_fused_kernels=true`` (``aent.verl.fused``: ``aent.linear_logprobs_and_clamped_entropy``
  in the model's fused forward, no logits).

The model ties its output layer to the embedding (as Qwen2.5 up to 3B does): verl 0.9.1's fused forward fails under
FSDP2 with an untied one (docs/VERL.md).

Reported side by side, from one run: the time of each update (min and median over interleaved repetitions), the time
of the AEnt op alone on the same logits (``aent.clamped_entropy`` forward + backward on the loss rows of the same
micro-batches), the ratio ``(aent update - plain update) / op alone`` (goal <= 1.15: nothing hidden beyond the op),
the peak number of logits-sized (``[micro-batch tokens x V]`` float32) buffers alive during each update and the peak
of the memory the update allocates on top of what it started with (both from ``torch.profiler``'s memory events;
goals: at most one buffer more than plain; AEnt fused <= 1.1x verl's fused plain GRPO and at least one logits buffer
below verl's unfused plain GRPO). Rows are appended to
``benchmarks/verl_update.csv`` with the date, device and versions.

    python scripts/bench_verl_update.py                 # 2,048 tokens (8 x 256, 2 micro-batches), V = 32,768, CPU
    python scripts/bench_verl_update.py --vocab 151936  # the fused rows' setting: logits dominate the update
    python scripts/bench_verl_update.py --reps 5 --vocab 65536
    python scripts/bench_verl_update.py --device cuda --hidden 1536 --layers 28 --vocab 151936 --seqs 4 --seq-len 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (REPO, HERE, REPO / "tests" / "support"):  # the test-only CPU platform and log-prob emulation
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

CSV_FIELDS = [
    "date_utc",
    "device",
    "torch",
    "triton",
    "verl",
    "transformers",
    "variant",
    "logprob",
    "dtype",
    "tokens",
    "loss_rows",
    "vocab",
    "clamp_p",
    "ms_min",
    "ms_median",
    "reps",
    "op_ms_median",
    "ratio_vs_plain",
    "overhead_over_op",
    "peak_logits_buffers",
    "buffer_mib",
    "note",
    "peak_mib",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--preset",
        default="test",
        help="model shape from aent.experiments.tiny_model.PRESETS: 'test' (sized by --hidden/--layers) or e.g. "
        "'qwen2.5-1.5b' (the released model's shapes, random weights)",
    )
    parser.add_argument("--vocab", type=int, default=32768, help="model vocabulary (logits' last dimension)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the random Qwen2")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seqs", type=int, default=8, help="sequences in the update batch")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (prompt + response)")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--micro", type=int, default=4, help="sequences per micro-batch")
    parser.add_argument("--clamp-p", type=float, default=0.33)
    parser.add_argument("--coef", type=float, default=0.002)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--logprob", choices=("flash-like", "verl"), default="flash-like", help="plain GRPO's log-prob call (see above)"
    )
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="model weights and compute dtype")
    parser.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "verl_update.csv")
    parser.add_argument("--no-csv", action="store_true", help="print only")
    parser.add_argument("--note", default="", help="text for the CSV rows' note column (e.g. the machine's load)")
    return parser.parse_args(argv)


def build_engine(model_path: str, dtype: str, fused: bool = False):
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine import EngineRegistry

    engine = EngineRegistry.new(
        model_type="language_model",
        backend="fsdp2",
        model_config=HFModelConfig(
            path=model_path,
            use_remove_padding=True,
            override_config={"attn_implementation": "sdpa"},
            use_fused_kernels=fused,
            fused_kernel_options={"impl_backend": "torch"},
        ),
        engine_config=FSDPEngineConfig(
            strategy="fsdp2",
            use_torch_compile=False,
            model_dtype=dtype,
            mixed_precision={"param_dtype": dtype, "reduce_dtype": "fp32", "buffer_dtype": "fp32"},
        ),
        optimizer_config=FSDPOptimizerConfig(lr=0.0),  # the same weights for every repetition
        checkpoint_config=CheckpointConfig(),
    )
    engine.initialize()
    return engine


def write_model(args, path: str) -> str:
    """A random Qwen2 of ``args.preset`` with vocabulary ``args.vocab`` and a small tokenizer, saved to ``path``."""
    import torch

    from aent.experiments.tiny_model import build_bpe_tokenizer, build_qwen2

    sizes = dict(hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers)
    tokenizer = build_bpe_tokenizer()
    model = build_qwen2(
        args.preset,
        seed=0,
        dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32,
        device=args.device,
        vocab_size=args.vocab,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        **(sizes if args.preset == "test" else {}),
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    return path


def make_batch(args, flags: Dict, first: int = 0, count: int = 0, fused: bool = False):
    """The update batch (sequences ``first .. first + count``; all of them by default), in verl's no-padding form."""
    import torch
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    gen = torch.Generator().manual_seed(0)
    bs, P = args.seqs, args.prompt_len
    R = args.seq_len - P
    input_ids = torch.randint(0, args.vocab, (bs, P + R), generator=gen)
    attn = torch.ones(bs, P + R, dtype=torch.long)
    td = TensorDict(
        {
            "input_ids": input_ids,
            "attention_mask": attn,
            "position_ids": (attn.cumsum(-1) - 1).clamp_min(0),
            "response_mask": attn[:, P:].clone(),
            "prompts": input_ids[:, :P],
            "responses": input_ids[:, P:],
            "old_log_probs": -torch.rand(bs, R, generator=gen) - 8.0,
            "advantages": torch.randn(bs, R, generator=gen),
        },
        batch_size=[bs],
    )
    if count:
        td = td[first : first + count]
    td = left_right_2_no_padding(td)
    tu.assign_non_tensor(
        td,
        use_remove_padding=True,
        use_dynamic_bsz=False,
        micro_batch_size_per_gpu=args.micro,
        global_batch_size=td.batch_size[0],
        max_token_len_per_gpu=1 << 20,
        use_fused_kernels=fused,
        temperature=1.0,
        **flags,
    )
    return td


def peak_live_buffers(events, threshold: int) -> int:
    """Peak number of simultaneously live allocations of at least ``threshold`` bytes (profiler memory events)."""
    live, peak = 0, 0
    for nbytes in (e.nbytes() for e in sorted(events, key=lambda e: e.start_ns())):
        if nbytes >= threshold:
            live += 1
        elif nbytes <= -threshold:
            live -= 1
        peak = max(peak, live)
    return peak


def peak_allocated(events) -> int:
    """Peak bytes allocated on top of the level at the first event (profiler memory events)."""
    total, peak = 0, 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        total += e.nbytes()
        peak = max(peak, total)
    return peak


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from aent_test_support.cpu_platform import init_single_process_group, use_cpu_platform

    if args.device == "cpu":
        use_cpu_platform()
    init_single_process_group(backend="gloo" if args.device == "cpu" else "nccl")
    import torch
    from benchlib import append_csv, environment, print_table, sync
    from torch.profiler import ProfilerActivity, profile
    from verl.workers.config import FSDPActorConfig
    from verl.workers.utils.losses import ppo_loss

    import aent
    from aent.verl import aent_step_flags, make_aent_loss
    from aent.verl.loss import packed_labels_and_loss_rows

    env = environment(args.device, extra=("verl", "transformers"))
    model_path = write_model(args, tempfile.mkdtemp(prefix="aent_bench_qwen2_"))
    engines = {False: build_engine(model_path, args.dtype)}
    # verl's fused kernels replace the model class's forward (apply_monkey_patch): keep each engine's own and put it
    # back before each of its updates, so that the four variants run interleaved on two engines
    model_cls = next(
        c for c in type(engines[False].module).__mro__ if "forward" in c.__dict__ and "FSDP" not in c.__name__
    )
    forwards = {False: model_cls.__dict__["forward"]}
    engines[True] = build_engine(model_path, args.dtype, fused=True)
    forwards[True] = model_cls.__dict__["forward"]
    counts = {"inplace": 0, "out_of_place": 0}
    if args.logprob == "flash-like":
        from aent_test_support.flash_like_ce import install_inplace_cross_entropy

        install_inplace_cross_entropy(counts)
    actor_config = FSDPActorConfig(
        strategy="fsdp2", ppo_mini_batch_size=args.seqs, ppo_micro_batch_size_per_gpu=args.micro, rollout_n=1
    )

    def plain_loss(model_output, data, dp_group=None):
        return ppo_loss(actor_config, model_output, data, dp_group)

    aent_loss = make_aent_loss(actor_config, args.clamp_p, impl="torch")
    variants = {  # name: (loss, flags, fused)
        "plain": (plain_loss, {}, False),
        "aent": (aent_loss, aent_step_flags(args.coef), False),
        "plain_fused": (plain_loss, {"calculate_entropy": False}, True),
        "aent_fused": (aent_loss, aent_step_flags(args.coef, fused=True), True),
    }
    tokens = args.seqs * args.seq_len
    micro_tokens = args.micro * args.seq_len
    threshold = int(0.9 * micro_tokens * args.vocab * 4)

    def update(name):
        loss_fn, flags, fused = variants[name]
        td = make_batch(args, flags, fused=fused)
        model_cls.forward = forwards[fused]
        sync(args.device)
        start = time.perf_counter()
        engines[fused].train_batch(td, loss_function=loss_fn)
        sync(args.device)
        forwards[fused] = model_cls.__dict__["forward"]  # AEnt's fused seam wraps verl's on its first update
        return (time.perf_counter() - start) * 1e3

    print(
        f"# {env['device']} | torch {env['torch']} | verl {env['verl']} | Qwen2 hidden {args.hidden} x "
        f"{args.layers} layers, V = {args.vocab}, {tokens} tokens ({args.seqs} x {args.seq_len}, prompts "
        f"{args.prompt_len}), micro-batches of {args.micro}, {args.dtype} | log-prob call: {args.logprob} | threads "
        f"{torch.get_num_threads()}"
    )
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for rep in range(args.warmup + args.reps):
        for name in variants:  # interleaved, so that drift of a loaded machine hits both alike
            elapsed = update(name)
            if rep >= args.warmup:
                times[name].append(elapsed)
        print(
            f"# rep {rep + 1}/{args.warmup + args.reps}: "
            + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in times.items() if t)
        )

    peaks, peak_bytes = {}, {}
    for name in variants:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
        with profile(activities=activities, profile_memory=True) as prof:
            update(name)
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        peaks[name] = peak_live_buffers(events, threshold)
        peak_bytes[name] = peak_allocated(events)

    # the AEnt op alone, on the same logits and the same loss rows, micro-batch by micro-batch
    torch.manual_seed(0)
    from transformers import Qwen2ForCausalLM

    hf_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    hf = Qwen2ForCausalLM.from_pretrained(model_path, torch_dtype=hf_dtype).to(args.device)
    micro_inputs = []
    with torch.no_grad():
        for start in range(0, args.seqs, args.micro):
            chunk = make_batch(args, aent_step_flags(args.coef), start, args.micro)
            model_cls.forward = forwards[False]
            ids = chunk["input_ids"].values().to(args.device)
            logits = hf(input_ids=ids.unsqueeze(0)).logits[0]  # the dtype the engine hands to the loss
            _, rows = packed_labels_and_loss_rows(chunk, logits.shape[0], logits.device)
            micro_inputs.append((logits, rows))
    del hf
    loss_rows = sum(int(rows.sum()) for _, rows in micro_inputs)
    op_times = []
    for rep in range(args.warmup + args.reps):
        sync(args.device)
        start = time.perf_counter()
        for logits, rows in micro_inputs:
            x = logits.detach().requires_grad_(True)
            aent.clamped_entropy(x, args.clamp_p, row_mask=rows, impl="torch").sum().backward()
        sync(args.device)
        if rep >= args.warmup:
            op_times.append((time.perf_counter() - start) * 1e3)

    op_ms = statistics.median(op_times)
    plain_ms = statistics.median(times["plain"])
    rows = []
    for name, ts in times.items():
        median = statistics.median(ts)
        rows.append(
            dict(
                env,
                variant=name,
                logprob=args.logprob,
                dtype=args.dtype,
                tokens=tokens,
                loss_rows=loss_rows,
                vocab=args.vocab,
                clamp_p=args.clamp_p,
                ms_min=f"{min(ts):.1f}",
                ms_median=f"{median:.1f}",
                reps=len(ts),
                op_ms_median=f"{op_ms:.1f}",
                # fused rows against verl's fused plain GRPO, the others against its unfused one
                ratio_vs_plain=f"{median / statistics.median(times['plain_fused' if 'fused' in name else 'plain']):.3f}",
                overhead_over_op=f"{(median - plain_ms) / op_ms:.3f}" if name == "aent" else "-",
                peak_logits_buffers=peaks[name],
                buffer_mib=f"{micro_tokens * args.vocab * 4 / 2**20:.0f}",
                note=(f"verl log-prob calls {counts}; " if name == "plain" and args.logprob == "flash-like" else "")
                + args.note,
                peak_mib=f"{peak_bytes[name] / 2**20:.0f}",
            )
        )
    print_table(
        rows,
        [
            "variant",
            "ms_min",
            "ms_median",
            "ratio_vs_plain",
            "op_ms_median",
            "overhead_over_op",
            "peak_logits_buffers",
            "buffer_mib",
            "peak_mib",
        ],
    )
    print(
        f"# AEnt update - plain update = {statistics.median(times['aent']) - plain_ms:.0f} ms; the op alone "
        f"{op_ms:.0f} ms on {loss_rows} of {tokens} rows; logits-sized buffers at the peak: plain {peaks['plain']}, "
        f"aent {peaks['aent']} (+{peaks['aent'] - peaks['plain']})"
    )
    mib = {name: b / 2**20 for name, b in peak_bytes.items()}
    buffer = micro_tokens * args.vocab * 4 / 2**20
    print(
        f"# fused: AEnt peak {mib['aent_fused']:.0f} MiB = {mib['aent_fused'] / mib['plain_fused']:.2f}x verl's fused "
        f"plain GRPO (goal <= 1.1), {(mib['plain'] - mib['aent_fused']) / buffer:.2f} logits buffers below verl's "
        f"unfused plain GRPO (goal >= 1); AEnt fused time {statistics.median(times['aent_fused']):.0f} ms = "
        f"{statistics.median(times['aent_fused']) / statistics.median(times['aent']):.2f}x AEnt unfused (goal <= 1.2)"
    )
    if not args.no_csv:
        append_csv(args.csv, rows, CSV_FIELDS)
        print(f"# appended {len(rows)} rows to {args.csv}")
    return 0


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
