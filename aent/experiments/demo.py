"""``aent demo``: GRPO with AEnt end to end on a CPU, written as an example of ``aent`` in a custom trainer.

Everything a real run has, at toy size:

1. a tiny causal LM built from a config (transformers ``Qwen2ForCausalLM``, random init, ~0.33M parameters) and a
   character-level tokenizer built locally (no model hub);
2. a verifiable task: two-digit additions ``"07+45="`` whose answer the model writes as ``\\boxed{52}``, scored
   by :func:`aent.reward.compute_score` (binary reward, as in the paper);
3. a short supervised warm-up so that the model emits the format and gets some sums right;
4. GRPO (group-normalised advantages, PPO clip, KL off) from that warm-up checkpoint, three arms on the same seed and
   the same prompts: no entropy term, a plain entropy bonus (``clamp_p = 0``, constant coefficient) and AEnt
   (clamped entropy + :class:`aent.AdaptiveCoefficient`); a fourth arm, ``clamped`` (the clamp with a constant
   coefficient), runs on request and in ``aent vocab-sweep`` (:mod:`aent.experiments.vocab`).

The AEnt-specific lines of the trainer are in :func:`grpo_loss` (``aent.logprobs_and_clamped_entropy``: the sampled
tokens' log-probs and the clamped entropy of the response rows, one op) and in :func:`train_arm` (``coef.update``
once per step with the measured clamped entropy). Everything else is an ordinary small GRPO loop, written so that it
also runs with Qwen2.5's 151,936 output logits: only the response positions go through the output layer, and the
rollout samples with its own decoding loop.

Outputs in ``--out-dir``: ``metrics_<arm>.csv`` (one row per step), ``demo.png`` (the curves of all arms side by
side), ``summary.csv`` and ``config.json``; a summary table is printed at the end. See docs/DEMO.md for what the
demo shows and what it does not (a model this small is a smoke test of the mechanics, not evidence for the paper's
accuracy claims).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

import aent
from aent.experiments.tiny_model import build_char_tokenizer, build_qwen2

__all__ = [
    "ARMS",
    "AdditionTask",
    "DEFAULT_ARMS",
    "DemoConfig",
    "RolloutBatch",
    "build_model",
    "build_tokenizer",
    "grpo_loss",
    "main",
    "make_coefficient",
    "rollout",
    "run_demo",
    "sft_batch",
    "train_arm",
    "warmup",
]

# The arms the trainer knows; the demo runs DEFAULT_ARMS unless told otherwise (``aent vocab-sweep`` runs all four).
ARMS = ("grpo", "entropy", "clamped", "aent")
DEFAULT_ARMS = ("grpo", "entropy", "aent")
ARM_LABELS = {
    "grpo": "GRPO (no entropy)",
    "entropy": "GRPO + entropy bonus",
    "clamped": "GRPO + clamped bonus",
    "aent": "GRPO + AEnt",
}
ARM_COLORS = {"grpo": "tab:gray", "entropy": "tab:blue", "clamped": "tab:green", "aent": "tab:red"}
DATA_SOURCE = "aent_demo/addition"

# Tokenizer: one token per character of the task's alphabet, plus padding and end of sequence.
PAD, EOS = "<pad>", "<eos>"
ALPHABET = list("0123456789+=\\boxed{}")


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DemoConfig:
    """All settings of one demo run. Entropies are in nats per response token (token-mean over response tokens).

    The paper's AEnt settings are for Qwen2.5 with V = 151,936 output logits; a character model has V = 32, so
    ``clamp_p`` and the entropy band are chosen for this vocabulary (docs/DEMO.md explains the choice).
    """

    steps: int = 150
    seed: int = 0
    device: str = "cpu"
    # CPU threads for torch. The model is so small that its ops are overhead-bound: one thread is as fast as two
    # on an idle machine and much faster on a busy one.
    threads: int = 1
    out_dir: str = "runs/demo"
    arms: Tuple[str, ...] = DEFAULT_ARMS
    # model (Qwen2 architecture at toy size; the output layer is padded to a multiple of 32 as real models pad theirs)
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    vocab_multiple: int = 32
    # task
    max_operand: int = 49
    eval_size: int = 256
    # supervised warm-up (shared by all arms). A fraction of its targets carry an answer off by 1 or 2, so that the
    # warmed-up model is uncertain about the last digit (as a pretrained model is about hard problems) and RL has
    # something to sharpen.
    warmup_steps: int = 400
    warmup_batch: int = 64
    warmup_lr: float = 3e-3
    warmup_noise: float = 0.3
    # GRPO
    prompts_per_step: int = 16
    group_size: int = 8
    mini_batches: int = 2
    lr: float = 2e-4
    clip_eps: float = 0.2
    temperature: float = 1.0
    max_new_tokens: int = 12
    grad_clip: float = 1.0
    eval_every: int = 10
    # entropy arms. The plain bonus: clamp_p = 0 and a constant coefficient. The clamped bonus: clamp_p below and a
    # constant coefficient. AEnt: clamp_p below and the controller.
    entropy_coef: float = 0.1
    clamped_coef: float = 0.1
    clamp_p: float = 0.5
    aent_init: float = 0.05
    aent_low: float = 0.10
    aent_high: float = 0.15
    aent_lr: float = 1.0
    aent_min: float = 0.01
    aent_max: float = 0.2
    aent_warmup: int = 0
    quick: bool = False

    @classmethod
    def quick_config(cls, **overrides: Any) -> DemoConfig:
        """A smaller run for ``--quick`` and the tests: fewer steps and prompts, the same code path."""
        base = dict(
            steps=25, warmup_steps=250, prompts_per_step=8, group_size=8, eval_size=128, eval_every=5, quick=True
        )
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        for name in (
            "steps",
            "threads",
            "warmup_batch",
            "prompts_per_step",
            "mini_batches",
            "max_new_tokens",
            "eval_every",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "vocab_multiple",
            "eval_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO normalises rewards within a group), got {self.group_size}")
        if (self.prompts_per_step * self.group_size) % self.mini_batches:
            raise ValueError(
                f"prompts_per_step * group_size = {self.prompts_per_step * self.group_size} must be divisible by "
                f"mini_batches = {self.mini_batches}"
            )
        if not 1 <= self.max_operand <= 999:
            raise ValueError(f"max_operand must be in [1, 999], got {self.max_operand}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"arms must be a non-empty subset of {ARMS}, got {self.arms}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if not 0.0 <= self.clamp_p < 1.0:
            raise ValueError(f"clamp_p must be in [0, 1) (the removed fraction of the logits), got {self.clamp_p}")
        if not 0.0 <= self.warmup_noise <= 1.0:
            raise ValueError(f"warmup_noise must be in [0, 1], got {self.warmup_noise}")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device is cuda but torch.cuda.is_available() is False; use --device cpu")
        # the coefficient settings are checked by aent's own constructors
        for arm in ARMS:
            make_coefficient(arm, self)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer, model, task
# ----------------------------------------------------------------------------------------------------------------


def build_tokenizer():
    """A character-level tokenizer built locally: one token per character of :data:`ALPHABET`, no merges, no hub."""
    return build_char_tokenizer(ALPHABET, pad=PAD, eos=EOS)


def build_model(vocab_size: int, cfg: DemoConfig):
    """A randomly initialised ``Qwen2ForCausalLM`` of a few hundred thousand parameters (preset ``"demo"``).

    The output layer has ``vocab_size`` rounded up to a multiple of ``cfg.vocab_multiple`` rows, as real models pad
    theirs (Qwen2.5: 151,665 tokens, 151,936 logits); the entropy runs over all logits, padded ones included.
    """
    padded = -(-vocab_size // cfg.vocab_multiple) * cfg.vocab_multiple
    return build_qwen2(
        "demo",
        seed=cfg.seed,
        vocab_size=padded,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )


class AdditionTask:
    """Two-digit additions ``"07+45="`` with the answer expected as ``\\boxed{52}`` (a verifiable reward).

    Operands are zero-padded to a fixed width so that every prompt has the same length (no left padding needed for
    batched generation). Training prompts are drawn from ``seed``; the evaluation set is a fixed disjoint sample.
    """

    def __init__(self, max_operand: int, seed: int, eval_size: int) -> None:
        self.max_operand = max_operand
        self.width = len(str(max_operand))
        pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
        random.Random(seed + 1).shuffle(pairs)
        if eval_size >= len(pairs):
            raise ValueError(f"eval_size ({eval_size}) must be smaller than the number of problems ({len(pairs)})")
        self.eval_pairs = pairs[:eval_size]
        self.train_pairs = pairs[eval_size:]
        self.seed = seed

    def prompt(self, a: int, b: int) -> str:
        return f"{a:0{self.width}d}+{b:0{self.width}d}="

    @staticmethod
    def answer(a: int, b: int) -> str:
        return str(a + b)

    @staticmethod
    def response(a: int, b: int, offset: int = 0) -> str:
        return f"\\boxed{{{max(a + b + offset, 0)}}}"

    def warmup_batch(self, step: int, size: int, noise: float) -> List[Tuple[str, str]]:
        """``(prompt, target response)`` pairs of a warm-up step; a fraction ``noise`` of the answers is off by 1-2."""
        rng = random.Random(f"{self.seed}/sft-noise/{step}")
        out = []
        for a, b in self.train_batch(step, size, stream="sft"):
            offset = rng.choice((-2, -1, 1, 2)) if rng.random() < noise else 0
            out.append((self.prompt(a, b), self.response(a, b, offset)))
        return out

    def train_batch(self, step: int, size: int, stream: str = "rl") -> List[Tuple[int, int]]:
        """The ``size`` problems of a step; a function of (seed, stream, step) only, so every arm sees the same."""
        rng = random.Random(f"{self.seed}/{stream}/{step}")
        return [self.train_pairs[rng.randrange(len(self.train_pairs))] for _ in range(size)]


def _encode(tokenizer, texts: Sequence[str], device: torch.device) -> torch.Tensor:
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if len({len(x) for x in ids}) != 1:
        raise ValueError("prompts must all have the same length (the task zero-pads operands)")
    return torch.tensor(ids, dtype=torch.long, device=device)


# ----------------------------------------------------------------------------------------------------------------
# Supervised warm-up
# ----------------------------------------------------------------------------------------------------------------


def sft_batch(
    tokenizer, pairs: Sequence[Tuple[str, str]], device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prompt_ids, response_ids, mask)`` of ``(prompt, target response)`` pairs: each target followed by end of
    sequence, padded to the longest; ``mask`` (float) is 1 on the target tokens."""
    prompts = _encode(tokenizer, [prompt for prompt, _ in pairs], device)
    responses = [
        tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for _, target in pairs
    ]
    length = max(len(r) for r in responses)
    resp = torch.full((len(pairs), length), tokenizer.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(pairs), length), dtype=torch.float32, device=device)
    for i, r in enumerate(responses):
        resp[i, : len(r)] = torch.tensor(r, device=device)
        mask[i, : len(r)] = 1.0
    return prompts, resp, mask


def warmup(model, tokenizer, task: AdditionTask, cfg: DemoConfig, progress: bool = True) -> List[float]:
    """Teach the format (and some arithmetic) with cross-entropy on correct responses. Returns the loss per step."""
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.warmup_lr, weight_decay=0.0)
    # linear ramp over 20 steps, then linear decay to 5%: a constant 3e-3 diverges late in the warm-up
    total = max(cfg.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1.0 - s / total))
    losses = []
    model.train()
    bar = _progress(range(cfg.warmup_steps), "warm-up (SFT)", progress)
    for step in bar:
        prompts, resp, mask = sft_batch(tokenizer, task.warmup_batch(step, cfg.warmup_batch, cfg.warmup_noise), device)
        logits = _response_logits(model, prompts, resp, mask, temperature=1.0)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), resp, reduction="none")
        loss = (nll * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    return losses


# ----------------------------------------------------------------------------------------------------------------
# Rollout and scoring
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RolloutBatch:
    """One GRPO batch: ``n = prompts * group_size`` sampled responses with their rewards and advantages."""

    prompt_ids: torch.Tensor  # (n, P) long
    response_ids: torch.Tensor  # (n, R) long, padded after EOS
    response_mask: torch.Tensor  # (n, R) float, 1 on response tokens up to and including EOS
    rewards: torch.Tensor  # (n,) float
    accuracy: torch.Tensor  # (n,) float (1.0 where compute_score says acc)
    formatted: torch.Tensor  # (n,) float (1.0 where a boxed answer was found)
    advantages: torch.Tensor  # (n,) float, group-normalised
    old_log_probs: Optional[torch.Tensor] = None  # (n, R), filled before the update

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, index: torch.Tensor) -> RolloutBatch:
        return RolloutBatch(
            **{
                f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                for f in dataclasses.fields(self)
            }
        )


def _response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 on every generated token up to and including the first EOS (all of them when there is none)."""
    is_eos = (response_ids == eos_id).long()
    after_eos = (torch.cumsum(is_eos, dim=1) - is_eos) > 0
    return (~after_eos).float()


def score_responses(texts: Sequence[str], answers: Sequence[str], compute_score: Callable) -> Dict[str, torch.Tensor]:
    scores = [compute_score(DATA_SOURCE, text, answer) for text, answer in zip(texts, answers)]
    return {
        "rewards": torch.tensor([float(s["score"]) for s in scores]),
        "accuracy": torch.tensor([1.0 if s["acc"] else 0.0 for s in scores]),
        "formatted": torch.tensor([0.0 if s["reason"] in ("no_answer", "parse_error") else 1.0 for s in scores]),
    }


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: torch.Tensor, cfg: DemoConfig, greedy: bool = False) -> torch.Tensor:
    """Sample (or greedily decode) up to ``cfg.max_new_tokens`` tokens per prompt; returns the ``(n, R)`` generated ids.

    A plain decoding loop on the model's KV cache, computing the logits of the last position only. Sampling is at
    ``cfg.temperature`` from the full distribution (no top-k, no top-p, as the paper samples) by inverting each
    row's float64 cumulative distribution at one uniform draw: exact, and at 151,936 logits about half the time of
    ``torch.multinomial`` on a CPU, which dominated a rollout there. Tokens after a row's end of sequence are
    padding; the loop stops when every row has ended.
    """
    from transformers import DynamicCache

    was_training = model.training
    model.eval()
    n = prompt_ids.shape[0]
    cache = DynamicCache(config=model.config)
    done = torch.zeros(n, dtype=torch.bool, device=prompt_ids.device)
    ids, out = prompt_ids, []
    for _ in range(cfg.max_new_tokens):
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        nxt = logits.argmax(dim=-1) if greedy else _sample_rows(logits, cfg.temperature)
        nxt = torch.where(done, torch.full_like(nxt, tokenizer.pad_token_id), nxt)
        out.append(nxt)
        done |= nxt == tokenizer.eos_token_id
        if bool(done.all()):
            break
        ids = nxt.unsqueeze(1)
    model.train(was_training)
    return torch.stack(out, dim=1)


def _sample_rows(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per row of ``(n, V)`` logits, drawn from ``softmax(logits / temperature)`` by the inverse CDF."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    draw = torch.rand((logits.shape[0], 1), dtype=torch.float64, device=logits.device) * cdf[:, -1:]
    # right=True: a token of probability 0 spans an empty interval of the CDF and is never drawn
    return torch.searchsorted(cdf, draw, right=True).squeeze(1).clamp_max_(logits.shape[-1] - 1)


def decode_responses(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> List[str]:
    return [
        tokenizer.decode(ids[: int(m.sum())].tolist(), skip_special_tokens=True) for ids, m in zip(response_ids, mask)
    ]


def rollout(
    model, tokenizer, task: AdditionTask, pairs: Sequence[Tuple[int, int]], cfg: DemoConfig, compute_score: Callable
) -> RolloutBatch:
    """Sample ``group_size`` responses per problem, score them, and compute group-normalised advantages."""
    device = next(model.parameters()).device
    prompt_ids = _encode(tokenizer, [task.prompt(a, b) for a, b in pairs], device)
    prompt_ids = prompt_ids.repeat_interleave(cfg.group_size, dim=0)
    response_ids = generate(model, tokenizer, prompt_ids, cfg)
    mask = _response_mask(response_ids, tokenizer.eos_token_id)
    texts = decode_responses(tokenizer, response_ids, mask)
    answers = [task.answer(a, b) for a, b in pairs for _ in range(cfg.group_size)]
    scored = score_responses(texts, answers, compute_score)
    rewards = scored["rewards"].to(device)
    return RolloutBatch(
        prompt_ids=prompt_ids,
        response_ids=response_ids,
        response_mask=mask,
        rewards=rewards,
        accuracy=scored["accuracy"].to(device),
        formatted=scored["formatted"].to(device),
        advantages=aent.grpo_advantages(rewards.view(-1, cfg.group_size)).view(-1),
    )


@torch.no_grad()
def evaluate(model, tokenizer, task: AdditionTask, cfg: DemoConfig, compute_score: Callable) -> float:
    """Greedy accuracy on the fixed held-out problems."""
    device = next(model.parameters()).device
    prompt_ids = _encode(tokenizer, [task.prompt(a, b) for a, b in task.eval_pairs], device)
    response_ids = generate(model, tokenizer, prompt_ids, cfg, greedy=True)
    texts = decode_responses(tokenizer, response_ids, _response_mask(response_ids, tokenizer.eos_token_id))
    scored = score_responses(texts, [task.answer(a, b) for a, b in task.eval_pairs], compute_score)
    return float(scored["accuracy"].mean())


# ----------------------------------------------------------------------------------------------------------------
# The loss: GRPO/PPO clip minus the AEnt entropy term
# ----------------------------------------------------------------------------------------------------------------


def _response_logits(
    model, prompt_ids: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Temperature-scaled logits ``(n, R, V)`` that predict each response token (position ``P - 1 + j``).

    Only those ``R`` positions go through the output layer (``logits_to_keep``): the prompt's logits are never
    built, which matters when the output layer has 151,936 rows.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([torch.ones_like(prompt_ids, dtype=torch.long), response_mask.long()], dim=1)
    start = prompt_ids.shape[1] - 1
    keep = torch.arange(start, start + response_ids.shape[1], device=input_ids.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits.float()
    return logits if temperature == 1.0 else logits / temperature


@torch.no_grad()
def old_log_probs(model, batch: RolloutBatch, cfg: DemoConfig) -> torch.Tensor:
    """Log-probabilities of the sampled tokens under the rollout policy (0 outside the response mask)."""
    logits = _response_logits(model, batch.prompt_ids, batch.response_ids, batch.response_mask, cfg.temperature)
    log_probs, _ = aent.logprobs_and_clamped_entropy(
        logits, batch.response_ids, 0.0, row_mask=batch.response_mask.bool()
    )
    return log_probs


def grpo_loss(
    model,
    batch: RolloutBatch,
    coef: float,
    clamp_p: float,
    clip_eps: float = 0.2,
    temperature: float = 1.0,
    measure_clamp_p: Optional[float] = None,
    task_tokens: Optional[int] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """``loss = L_PG - coef * token_mean(clamped_entropy(logits, clamp_p))`` on one mini-batch (docs/METHOD.md, "Loss").

    ``L_PG`` is the PPO-clip surrogate with GRPO advantages, token-mean over response tokens (verl's default
    ``loss_agg_mode``). The sampled tokens' log-probabilities and the clamped entropy come from one op
    (:func:`aent.logprobs_and_clamped_entropy`) on the same temperature-scaled logits, computed on the response rows
    only (``row_mask``), with one gradient buffer. ``coef = 0`` still measures the entropy (docs/METHOD.md, "Adaptive
    coefficient": the measurement must not stop at a zero coefficient).

    Returns the loss and float statistics: ``pg_loss``, ``entropy_term`` (the subtracted term), ``clamped_entropy``
    (token-mean at ``clamp_p``; what the arm's controller consumes), ``entropy`` (full-vocabulary, token-mean),
    ``clamped_entropy_measure`` (token-mean at ``measure_clamp_p``, for comparing arms), ``tail_mass`` (token-mean
    probability of the output rows ``>= task_tokens``, the tokens the task never uses; 0 without ``task_tokens``),
    ``clip_frac`` and ``num_tokens``.
    """
    logits = _response_logits(model, batch.prompt_ids, batch.response_ids, batch.response_mask, temperature)
    mask = batch.response_mask
    rows = mask.bool()
    # The AEnt line: the sampled tokens' log-probs and the clamped entropy of the response rows, one op.
    log_probs, ent = aent.logprobs_and_clamped_entropy(logits, batch.response_ids, clamp_p, row_mask=rows)
    old = batch.old_log_probs if batch.old_log_probs is not None else log_probs.detach()
    ratio = torch.exp(log_probs - old)
    adv = batch.advantages.unsqueeze(1)
    surrogate = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps))
    pg_loss = aent.aggregate(surrogate, mask, "token-mean")
    entropy_agg = aent.aggregate(ent, mask, "token-mean")
    loss = pg_loss - coef * entropy_agg

    with torch.no_grad():
        z = logits.detach()
        p_measure = clamp_p if measure_clamp_p is None else measure_clamp_p
        full = ent if clamp_p == 0.0 else aent.entropy(z, row_mask=rows)
        measured = ent if p_measure == clamp_p else aent.clamped_entropy(z, p_measure, row_mask=rows)
        tail = torch.zeros_like(ent)
        if task_tokens is not None and task_tokens < z.shape[-1]:
            # log-partition of each row from the op's log-prob: log Z = z[label] - log p(label)
            log_z = z.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1) - log_probs.detach()
            tail = torch.where(rows, torch.exp(torch.logsumexp(z[..., task_tokens:], dim=-1) - log_z), tail)
        clipped = ((ratio.detach() - 1.0).abs() > clip_eps).float()
        denom = mask.sum().clamp_min(1.0)
        stats = torch.stack(
            [(x * mask).sum() / denom for x in (ent.detach(), full, measured, tail, clipped)]
            + [pg_loss.detach(), entropy_agg.detach(), mask.sum()]
        ).tolist()  # the one host synchronisation
    clamped, full_mean, measured_mean, tail_mean, clip_frac, pg_value, entropy_value, num_tokens = stats
    return loss, {
        "pg_loss": pg_value,
        "entropy_term": coef * entropy_value,
        "clamped_entropy": clamped,
        "entropy": full_mean,
        "clamped_entropy_measure": measured_mean,
        "tail_mass": tail_mean,
        "clip_frac": clip_frac,
        "num_tokens": num_tokens,
    }


# ----------------------------------------------------------------------------------------------------------------
# The three arms
# ----------------------------------------------------------------------------------------------------------------


def make_coefficient(arm: str, cfg: DemoConfig) -> Tuple[aent.Controller, float]:
    """The coefficient object and ``clamp_p`` of an arm.

    * ``grpo``: coefficient 0 (the entropy is still measured, at AEnt's ``clamp_p`` so that arms compare);
    * ``entropy``: the plain bonus, full-vocabulary entropy (``clamp_p = 0``) with a constant coefficient;
    * ``clamped``: the clamped entropy at ``cfg.clamp_p`` with a constant coefficient (the clamp without the
      controller);
    * ``aent``: clamped entropy at ``cfg.clamp_p`` with the adaptive coefficient (docs/METHOD.md).
    """
    if arm == "grpo":
        return aent.build_coefficient(0.0), cfg.clamp_p
    if arm == "entropy":
        return aent.build_coefficient(cfg.entropy_coef), 0.0
    if arm == "clamped":
        return aent.build_coefficient(cfg.clamped_coef), cfg.clamp_p
    if arm == "aent":
        coef = aent.build_coefficient(
            cfg.aent_init,
            lr=cfg.aent_lr,
            entropy_low=cfg.aent_low,
            entropy_high=cfg.aent_high,
            coef_min=cfg.aent_min,
            coef_max=cfg.aent_max,
            warmup_steps=cfg.aent_warmup,
        )
        return coef, cfg.clamp_p
    raise ValueError(f"unknown arm {arm!r}; choose from {ARMS}")


METRIC_COLUMNS = (
    "step",
    "reward",
    "accuracy",
    "format_rate",
    "entropy",
    "clamped_entropy",
    "tail_mass",
    "coef",
    "coef_next",
    "response_length",
    "pg_loss",
    "entropy_term",
    "clip_frac",
    "eval_accuracy",
    "seconds",
)


def train_arm(
    arm: str,
    model,
    tokenizer,
    task: AdditionTask,
    cfg: DemoConfig,
    compute_score: Callable,
    progress: bool = True,
    desc: Optional[str] = None,
) -> List[Dict[str, float]]:
    """Run GRPO for ``cfg.steps`` steps on ``model`` (modified in place); returns one metrics row per step.

    Row fields: ``reward``/``accuracy``/``format_rate`` (means over the step's samples), ``entropy`` (full
    vocabulary) and ``clamped_entropy`` (at AEnt's ``clamp_p``) as token-means over response tokens during the
    update, ``tail_mass`` (the probability on output rows the tokenizer does not have, token-mean, during the
    update), ``coef`` (used in this step) and ``coef_next`` (after ``update``), ``response_length`` (tokens incl.
    EOS), ``eval_accuracy`` (greedy, held-out; empty except every ``eval_every`` steps and at the last step).
    """
    coef, clamp_p = make_coefficient(arm, cfg)
    torch.manual_seed(cfg.seed)  # same sampling noise at the start of every arm
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rows: List[Dict[str, float]] = []
    start = time.perf_counter()
    # global steps count from 1, as in verl (and aent.AdaptiveCoefficient's warmup_steps): steps 1..warmup_steps
    # train with the initial coefficient
    task_tokens = len(tokenizer)
    bar = _progress(range(1, cfg.steps + 1), desc or f"{arm:>7s}", progress)
    for step in bar:
        pairs = task.train_batch(step - 1, cfg.prompts_per_step, stream=f"rl/{cfg.seed}")
        batch = rollout(model, tokenizer, task, pairs, cfg, compute_score)
        batch.old_log_probs = old_log_probs(model, batch, cfg)

        coef_used = coef.value
        totals = {
            "pg_loss": 0.0,
            "entropy_term": 0.0,
            "clip_frac": 0.0,
            "entropy": 0.0,
            "measure": 0.0,
            "tail": 0.0,
            "controller": 0.0,
            "tokens": 0.0,
        }
        order = torch.randperm(len(batch), device=batch.response_ids.device)
        for index in order.chunk(cfg.mini_batches):
            loss, stats = grpo_loss(
                model,
                batch.select(index),
                coef.value,
                clamp_p,
                cfg.clip_eps,
                cfg.temperature,
                measure_clamp_p=cfg.clamp_p,
                task_tokens=task_tokens,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            n = stats["num_tokens"]
            totals["tokens"] += n
            totals["pg_loss"] += stats["pg_loss"] * n
            totals["entropy_term"] += stats["entropy_term"] * n
            totals["clip_frac"] += stats["clip_frac"] * n
            totals["entropy"] += stats["entropy"] * n
            totals["measure"] += stats["clamped_entropy_measure"] * n
            totals["tail"] += stats["tail_mass"] * n
            totals["controller"] += stats["clamped_entropy"] * n

        # Once per global step, after the update: feed the token-weighted mean of the arm's own clamped entropy.
        tokens = max(totals["tokens"], 1.0)
        coef.update(totals["controller"] / tokens, step)

        eval_acc = float("nan")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            eval_acc = evaluate(model, tokenizer, task, cfg, compute_score)
        row = {
            "step": step,
            "reward": float(batch.rewards.mean()),
            "accuracy": float(batch.accuracy.mean()),
            "format_rate": float(batch.formatted.mean()),
            "entropy": totals["entropy"] / tokens,
            "clamped_entropy": totals["measure"] / tokens,
            "tail_mass": totals["tail"] / tokens,
            "coef": coef_used,
            "coef_next": coef.value,
            "response_length": float(batch.response_mask.sum(dim=1).mean()),
            "pg_loss": totals["pg_loss"] / tokens,
            "entropy_term": totals["entropy_term"] / tokens,
            "clip_frac": totals["clip_frac"] / tokens,
            "eval_accuracy": eval_acc,
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(
                acc=f"{row['accuracy']:.2f}", H=f"{row['entropy']:.3f}", coef=f"{coef_used:.4f}", refresh=False
            )
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


def write_metrics_csv(path: str, rows: Sequence[Dict[str, float]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(METRIC_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if isinstance(row[k], float) and math.isnan(row[k]) else row[k]) for k in METRIC_COLUMNS}
            )


def summarize(arm: str, rows: Sequence[Dict[str, float]], initial_eval: float) -> Dict[str, Any]:
    tail = rows[-max(1, len(rows) // 5) :]  # last 20% of the steps

    def mean(key: str) -> float:
        return sum(r[key] for r in tail) / len(tail)

    return {
        "arm": arm,
        "eval_acc_start": initial_eval,
        "eval_acc_end": rows[-1]["eval_accuracy"],
        "train_acc_last20": mean("accuracy"),
        "format_rate_last20": mean("format_rate"),
        "entropy_last20": mean("entropy"),
        "clamped_entropy_last20": mean("clamped_entropy"),
        "coef_end": rows[-1]["coef_next"],
        "response_length_last20": mean("response_length"),
        "seconds": rows[-1]["seconds"],
    }


def format_summary(summary: Sequence[Dict[str, Any]]) -> str:
    header = ("arm", "eval acc start", "eval acc end", "train acc*", "format*", "H*", "H~*", "coef end", "len*", "s")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        cells = [
            ARM_LABELS[s["arm"]],
            f"{s['eval_acc_start']:.3f}",
            f"{s['eval_acc_end']:.3f}",
            f"{s['train_acc_last20']:.3f}",
            f"{s['format_rate_last20']:.3f}",
            f"{s['entropy_last20']:.3f}",
            f"{s['clamped_entropy_last20']:.3f}",
            f"{s['coef_end']:.4f}",
            f"{s['response_length_last20']:.1f}",
            f"{s['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(
    path: str, results: Dict[str, List[Dict[str, float]]], cfg: DemoConfig, initial_eval: Optional[float] = None
) -> None:
    """One PNG: accuracy, full entropy, clamped entropy (with AEnt's band), coefficient, response length.

    Training curves are smoothed over 5 steps; held-out accuracy is plotted against the number of updates done
    (0 = the warm-up model).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("accuracy", "train accuracy (sampled, T=1)"),
        ("eval_accuracy", "held-out accuracy (greedy)"),
        ("entropy", "full entropy (nats/token)"),
        ("clamped_entropy", f"clamped entropy, p={cfg.clamp_p} (nats/token)"),
        ("coef", "entropy coefficient"),
        ("response_length", "response length (tokens)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.6), dpi=90)
    axes = axes.ravel()
    for ax, (key, title) in zip(axes, panels):
        for arm, rows in results.items():
            xs = [r["step"] for r in rows if not math.isnan(r[key])]
            ys = [r[key] for r in rows if not math.isnan(r[key])]
            if key in ("accuracy", "entropy", "clamped_entropy", "response_length"):
                ys = _smooth(ys, 5)
            if key == "eval_accuracy":
                xs = [x + 1 for x in xs]
                if initial_eval is not None:
                    xs, ys = [0] + xs, [initial_eval] + ys
            ax.plot(
                xs,
                ys,
                color=ARM_COLORS[arm],
                label=ARM_LABELS[arm],
                marker="o" if key == "eval_accuracy" else None,
                markersize=3,
            )
        if key == "clamped_entropy" and "aent" in results:
            ax.axhspan(cfg.aent_low, cfg.aent_high, color="tab:red", alpha=0.12, lw=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("GRPO step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"aent demo: GRPO on 2-digit additions, tiny Qwen2 ({cfg.steps} steps, seed {cfg.seed}); "
        "a smoke test of the mechanics, not evidence for accuracy claims",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _smooth(values: Sequence[float], window: int) -> List[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    # in a log file (no terminal) a bar redrawn ten times a second is noise: redraw every 15 s there
    return tqdm(iterable, desc=desc, leave=True, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 15.0)


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def _check_dependencies() -> None:
    import importlib.util

    missing = [
        name
        for name, module in (
            ("transformers", "transformers"),
            ("tokenizers", "tokenizers"),
            ("matplotlib", "matplotlib"),
            ("tqdm", "tqdm"),
            ("math-verify", "math_verify"),
        )
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise RuntimeError(
            f"aent demo needs {', '.join(missing)}; install them with: pip install 'aent[demo,math]' (or `make demo`)"
        )


def _load_compute_score() -> Callable:
    from aent.reward import compute_score

    return compute_score


def run_demo(cfg: DemoConfig, progress: bool = True, compute_score: Optional[Callable] = None) -> Dict[str, Any]:
    """Warm up once, then train each arm from a copy of the warm-up model. Writes the outputs; returns the results."""
    cfg.validate()
    _check_dependencies()
    threads = torch.get_num_threads()
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    try:
        return _run_demo(cfg, progress, compute_score)
    finally:
        torch.set_num_threads(threads)


def _run_demo(cfg: DemoConfig, progress: bool, compute_score: Optional[Callable]) -> Dict[str, Any]:
    device = torch.device(cfg.device)
    compute_score = compute_score or _load_compute_score()
    os.makedirs(cfg.out_dir, exist_ok=True)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    tokenizer = build_tokenizer()
    task = AdditionTask(cfg.max_operand, cfg.seed, cfg.eval_size)
    base = build_model(len(tokenizer), cfg).to(device)
    num_params = sum(p.numel() for p in base.parameters())
    vocab_logits = base.config.vocab_size
    t0 = time.perf_counter()
    warmup_losses = warmup(base, tokenizer, task, cfg, progress)
    initial_eval = evaluate(base, tokenizer, task, cfg, compute_score)
    warmup_seconds = time.perf_counter() - t0

    results: Dict[str, List[Dict[str, float]]] = {}
    summary = []
    for arm in cfg.arms:
        model = copy.deepcopy(base)
        rows = train_arm(arm, model, tokenizer, task, cfg, compute_score, progress)
        results[arm] = rows
        write_metrics_csv(os.path.join(cfg.out_dir, f"metrics_{arm}.csv"), rows)
        summary.append(summarize(arm, rows, initial_eval))

    with open(os.path.join(cfg.out_dir, "summary.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    info = {
        "config": dataclasses.asdict(cfg),
        "num_params": num_params,
        "tokenizer_size": len(tokenizer),
        "logits_size": vocab_logits,
        "tokens_removed_by_clamp": aent.num_removed(vocab_logits, cfg.clamp_p),
        "warmup_final_loss": warmup_losses[-1] if warmup_losses else None,
        "warmup_seconds": warmup_seconds,
        "torch": torch.__version__,
        "aent": aent.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    with open(os.path.join(cfg.out_dir, "config.json"), "w") as fh:
        json.dump(info, fh, indent=2)
    figure = os.path.join(cfg.out_dir, "demo.png")
    plot(figure, results, cfg, initial_eval)
    return {"results": results, "summary": summary, "info": info, "figure": figure}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aent demo",
        description="GRPO with three entropy settings (none, plain bonus, AEnt) on a tiny model and a synthetic "
        "addition task; CPU-friendly. Writes metrics CSVs, a figure and a summary table.",
    )
    parser.add_argument("--quick", action="store_true", help="a ~1-2 minute run (fewer steps and prompts)")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per arm (default 150; 25 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model init, the data and the sampling")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--out-dir", default="runs/demo", help="where the CSVs, figure and summary go")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    parser.add_argument(
        "--clamp-p",
        type=float,
        default=None,
        help="removed vocabulary fraction of AEnt's clamped entropy (default 0.5 for this 32-logit model)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    overrides: Dict[str, Any] = {
        "seed": args.seed,
        "device": args.device,
        "out_dir": args.out_dir,
        "arms": tuple(a.strip() for a in args.arms.split(",") if a.strip()),
    }
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.clamp_p is not None:
        overrides["clamp_p"] = args.clamp_p
    return DemoConfig.quick_config(**overrides) if args.quick else DemoConfig(**overrides)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        cfg.validate()
    except ValueError as err:
        print(f"aent demo: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    out = run_demo(cfg, progress=not args.no_progress)
    info = out["info"]
    print(
        f"\nmodel: Qwen2 architecture, {info['num_params']:,} parameters, {info['logits_size']} logits "
        f"({info['tokenizer_size']} tokens); clamp_p={cfg.clamp_p} removes {info['tokens_removed_by_clamp']} "
        f"of them; {cfg.steps} GRPO steps x {cfg.prompts_per_step} prompts x {cfg.group_size} samples per arm"
    )
    print("* = mean over the last 20% of the steps; H = full entropy, H~ = clamped entropy (nats/token)\n")
    print(format_summary(out["summary"]))
    print(
        f"\noutputs in {cfg.out_dir}: metrics_<arm>.csv, summary.csv, config.json, demo.png "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
