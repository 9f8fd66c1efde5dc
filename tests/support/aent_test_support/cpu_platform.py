"""verl's platform layer on a CPU: one "device", gloo collectives (test-only; targets verl 0.9.1).

verl 0.9 resolves the device through its platform registry (:mod:`verl.plugin.platform`) and registers its FSDP
engine for ``cuda``/``npu`` only. :func:`use_cpu_platform` registers :class:`PlatformCPU` under ``cpu``, selects it
(``VERL_PLATFORM=cpu``) and makes the engine registry hand out the FSDP engine (``VERL_ENGINE_DEVICE=cuda``), so that
``EngineRegistry.new(model_type="language_model", backend="fsdp2", ...)`` builds verl's own engine on the CPU. Call
it before importing ``verl.workers``: verl reads the device name at import time.

One copy serves the single-process engine tests of the regular suite and every process of the end-to-end run
(through :mod:`aent_test_support.verl_cpu`).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, List, Optional

__all__ = ["CPUDeviceModule", "register_cpu_platform", "use_cpu_platform", "init_single_process_group"]


class CPUDeviceModule:
    """``torch.cpu`` plus the ``torch.cuda`` functions verl 0.9.1 calls on its device module (memory figures, cache,
    RNG state) and ``torch.cpu`` lacks. Bridges verl's ``get_torch_device()`` on a CPU (verl 0.9.1)."""

    def __getattr__(self, name: str) -> Any:
        import torch

        return getattr(torch.cpu, name)

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def ipc_collect() -> None:
        return None

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return 0

    memory_reserved = max_memory_allocated = max_memory_reserved = memory_allocated

    @staticmethod
    def mem_get_info(device: Any = None):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page

    @staticmethod
    def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
        return None

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "cpu"

    @staticmethod
    def get_rng_state(device: Any = None):
        import torch

        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state, device: Any = None) -> None:
        import torch

        torch.set_rng_state(state)


def register_cpu_platform():
    """Register :class:`PlatformCPU` in verl's platform registry under ``cpu``; return the class."""
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
            return CPUDeviceModule()

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
            # verl places the vLLM server by get_accelerator_ids()["GPU"]: the end-to-end run starts Ray with
            # num_gpus=1 as a stand-in device (unused by single-process tests)
            return "GPU"

        def ray_noset_envvars(self) -> List[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self) -> Any:
            return None

    return PlatformCPU


def use_cpu_platform() -> None:
    """Register and select the CPU platform (sets ``VERL_PLATFORM=cpu`` and ``VERL_ENGINE_DEVICE=cuda``)."""
    platform_cls = register_cpu_platform()
    os.environ["VERL_PLATFORM"] = "cpu"
    os.environ["VERL_ENGINE_DEVICE"] = "cuda"
    from verl.plugin.platform import platform_manager

    platform_manager.set_platform(platform_cls())


def init_single_process_group(backend: str = "gloo") -> None:
    """``torch.distributed`` with world size 1 (what verl's engine expects to find): gloo on a CPU, nccl on a GPU."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group(backend, rank=0, world_size=1)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
