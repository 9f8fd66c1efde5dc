"""Tiny models for tests and demos without a download.

:func:`build_tiny_qwen2` writes a randomly initialised Qwen2 causal LM and a byte-level BPE tokenizer with a chat
template to a folder, with no download. (The CPU platform that runs verl's engine without a GPU is test-only: see
``tests/support/aent_test_support/cpu_platform.py``.)
"""

from __future__ import annotations

import os
from typing import List, Optional

__all__ = ["build_tiny_tokenizer", "build_tiny_qwen2"]

_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(vocab_size: int = 376, corpus: Optional[List[str]] = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained in place on ``corpus`` (default: a few lines of arithmetic
    text; well under a second), with ChatML special tokens and chat template. Nothing is downloaded."""
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
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def build_tiny_qwen2(path: str, *, vocab_size: int = 384, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """Write a random Qwen2 causal LM and a trained-in-place byte-level BPE tokenizer to ``path``; return ``path``.

    The tokenizer is trained on a few lines of arithmetic text (well under a second) and carries a ChatML template;
    the model's vocabulary is ``vocab_size`` (at least the tokenizer's). Nothing is downloaded.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    os.makedirs(path, exist_ok=True)
    fast = build_tiny_tokenizer(vocab_size - 8)
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=max(vocab_size, len(fast)),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    return path
