"""Running verl's real FSDP2 training engine on a CPU, for tests and for debugging a loss without a GPU.

verl 0.9 registers its FSDP engine for ``cuda``/``npu`` only and resolves the device through its platform registry
(:mod:`verl.plugin.platform`). :func:`use_cpu_platform` registers a small CPU platform (device ``"cpu"``,
communication backend ``gloo``) and selects it, and makes the engine registry hand out the FSDP engine, so that
``EngineRegistry.new(model_type="language_model", backend="fsdp2", ...)`` builds verl's own engine in a single CPU
process. Call it in a fresh process BEFORE importing ``verl.workers``: verl reads the device name at import time.

:func:`build_tiny_qwen2` writes a randomly initialised Qwen2 causal LM and a byte-level BPE tokenizer with a chat
template to a folder, with no download.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, List, Optional

__all__ = ["use_cpu_platform", "build_tiny_tokenizer", "build_tiny_qwen2", "init_single_process_group"]

_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def use_cpu_platform() -> None:
    """Register and select a CPU platform in verl's platform registry (sets ``VERL_PLATFORM=cpu``).

    Also sets ``VERL_ENGINE_DEVICE=cuda`` so that verl's engine registry returns the FSDP engine, which it registers
    under ``cuda``/``npu`` only; the engine itself then runs on the device the platform names, the CPU.
    """
    import torch
    from verl.plugin.platform.platform_base import PlatformBase
    from verl.plugin.platform.platform_manager import PlatformRegistry

    @PlatformRegistry.register(platform="cpu")
    class PlatformCPU(PlatformBase):
        """CPU-only platform: one "device", gloo collectives, no profiler or IPC."""

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self):
            return torch.cpu

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            return True

        def current_device(self):
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index) -> None:
            return None

        def synchronize(self, device_index: Optional[int] = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0):
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CPU_VISIBLE_DEVICES"

        def nvtx_range(self, msg: str):
            return contextlib.nullcontext()

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def ray_resource_name(self) -> str:
            return "CPU"

        def ray_noset_envvars(self) -> List[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    os.environ["VERL_PLATFORM"] = "cpu"
    os.environ["VERL_ENGINE_DEVICE"] = "cuda"
    from verl.plugin.platform import platform_manager

    platform_manager.set_platform(PlatformCPU())


def init_single_process_group() -> None:
    """``torch.distributed`` with the gloo backend and world size 1 (what verl's engine expects to find)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group("gloo", rank=0, world_size=1)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
