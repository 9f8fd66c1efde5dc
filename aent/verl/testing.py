"""Running verl's real FSDP2 training engine on a CPU, for tests and for debugging a loss without a GPU.

verl 0.9 registers its FSDP engine for ``cuda``/``npu`` only and resolves the device through its platform registry
(:mod:`verl.plugin.platform`). :func:`use_cpu_platform` registers a small CPU platform (device ``"cpu"``,
communication backend ``gloo``) and selects it, and makes the engine registry hand out the FSDP engine, so that
``EngineRegistry.new(model_type="language_model", backend="fsdp2", ...)`` builds verl's own engine in a single CPU
process. Call it in a fresh process BEFORE importing ``verl.workers``: verl reads the device name at import time.

The tiny models and tokenizers the tests run it on come from :mod:`aent.experiments.tiny_model`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, List, Optional

__all__ = ["use_cpu_platform", "init_single_process_group"]


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
