"""The one place that builds randomly initialised Qwen2 models and local tokenizers (no download, no hub).

Used by ``aent demo`` (a character tokenizer and a ~0.3M-parameter model), the verl engine and data tests (a
byte-level BPE tokenizer with ChatML and a tiny model written to a folder) and ``scripts/bench_step.py`` (a model
with Qwen2.5-1.5B's shapes). transformers and tokenizers are imported inside the builders only.

Model sizes are presets of :func:`qwen2_config`; any ``Qwen2Config`` field can be overridden.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import torch

__all__ = [
    "PRESETS",
    "build_bpe_tokenizer",
    "build_char_tokenizer",
    "build_qwen2",
    "qwen2_config",
    "write_tiny_qwen2",
]

# Qwen2Config fields per preset. "qwen2.5-1.5b" has the shapes of the released Qwen2.5-1.5B (its config.json).
_QWEN25_15B: Dict[str, Any] = dict(
    vocab_size=151_936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    rope_parameters={"rope_theta": 1_000_000.0, "rope_type": "default"},
)
PRESETS: Dict[str, Dict[str, Any]] = {
    "qwen2.5-1.5b": _QWEN25_15B,
    # Qwen2.5-1.5B's settings at a size that runs on a CPU in milliseconds (bench_step.py --device cpu)
    "qwen2.5-1.5b-tiny": dict(
        _QWEN25_15B,
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    # the verl engine tests: a BPE vocabulary of a few hundred tokens
    "test": dict(
        vocab_size=384,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    ),
    # aent demo: a character vocabulary (its size is set by the caller), a few hundred thousand parameters
    "demo": dict(
        vocab_size=32,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    ),
}

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen2_config(preset: str = "test", **overrides: Any):
    """A ``transformers.Qwen2Config`` from a preset of :data:`PRESETS` with ``overrides`` applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
    from transformers import Qwen2Config

    return Qwen2Config(**{**PRESETS[preset], **overrides})


def build_qwen2(
    preset: str = "test",
    *,
    seed: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
    attn_implementation: Optional[str] = None,
    **overrides: Any,
):
    """A randomly initialised ``Qwen2ForCausalLM`` of the given preset (``overrides``: ``Qwen2Config`` fields).

    ``seed`` seeds torch's global generator before the weights are drawn; ``dtype`` and ``device`` are those the
    weights are created in (a 1.5B model is built directly on the GPU in bf16, never in float32 on the host);
    ``attn_implementation`` (e.g. ``"sdpa"``) is set on the config.
    """
    from transformers import Qwen2ForCausalLM

    config = qwen2_config(preset, **overrides)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    if seed is not None:
        torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        if device is None:
            model = Qwen2ForCausalLM(config)
        else:
            with torch.device(device):
                model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    if dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    if attn_implementation is not None:
        model.config._attn_implementation = attn_implementation
    return model


def build_bpe_tokenizer(vocab_size: int = 376, corpus: Optional[List[str]] = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained in place on ``corpus`` (default: a few lines of arithmetic
    text; well under a second), with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if corpus is None:
        corpus = [f"What is {a} + {b}? The answer is \\boxed{{{a + b}}}." for a in range(20) for b in range(10)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_char_tokenizer(alphabet: Sequence[str], pad: str = "<pad>", eos: str = "<eos>"):
    """A character-level ``PreTrainedTokenizerFast``: ``pad`` = 0, ``eos`` = 1, then one token per character of
    ``alphabet`` (duplicates once), no merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {pad: 0, eos: 1}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=pad))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=pad, eos_token=eos)


def write_tiny_qwen2(
    path: str,
    *,
    vocab_size: int = 384,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    tie_word_embeddings: bool = False,
):
    """Write a random Qwen2 causal LM (preset ``"test"``) and a trained-in-place BPE tokenizer with a ChatML template
    to ``path``; return ``path``. The model's vocabulary is ``vocab_size`` (at least the tokenizer's);
    ``tie_word_embeddings`` shares the output layer with the embedding, as Qwen2.5 up to 3B does."""
    os.makedirs(path, exist_ok=True)
    fast = build_bpe_tokenizer(vocab_size - 8)
    fast.save_pretrained(path)
    model = build_qwen2(
        "test",
        seed=seed,
        vocab_size=max(vocab_size, len(fast)),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
    )
    model.save_pretrained(path)
    return path
