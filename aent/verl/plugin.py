"""The ``verl.plugins`` entry point of ``aent``: loaded by ``import verl`` in every process (verl >= 0.9).

It must not fail and must stay cheap, so it imports nothing heavy itself:

* it registers the AEnt trainer modes (``aent``, ``aent_colocate_async``, ``aent_separate_async``) as soon as verl's
  V1 trainer package (``verl.trainer.ppo.v1``) is imported, through a one-shot import hook (importing that package
  eagerly would add seconds to every Ray worker's start);
* it puts the start-up guard :func:`aent.verl.checks.check_start` in front of the two functions that verl 0.9.1's
  training entry points call on the driver before Ray starts: ``verl.utils.config.validate_config`` (called by
  ``python -m verl.trainer.main_ppo``) and ``verl.trainer.main_ppo.run_ppo`` (called by main_ppo, the one-step-off and
  the fully-async entry points with a task runner that tells them apart; wrapped when that module is imported). A
  config that asks for AEnt where it would not run (``trainer.use_v1=false``, an ``aent:`` block under a non-AEnt
  mode, the one-step-off or fully-async entry point) stops there with the key and the fix;
* it wraps the FSDP engine's ``forward_step`` when ``verl.workers.engine.fsdp.transformer_impl`` is imported, so that
  AEnt updates with ``use_fused_kernels=true`` run AEnt's fused op (:mod:`aent.verl.fused`; other batches untouched).

verl swallows plugin errors at DEBUG level; this module reports its own problems with a warning instead.
``VERL_USE_EXTERNAL_PLUGINS=none`` disables all plugins; ``VERL_USE_EXTERNAL_MODULES=aent.verl.plugin`` loads this one
explicitly.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import logging
import sys
import warnings

_V1_PACKAGE = "verl.trainer.ppo.v1"
_MAIN_PPO = "verl.trainer.main_ppo"
_ENGINE = "verl.workers.engine.fsdp.transformer_impl"
_log = logging.getLogger("aent.verl.plugin")
_state = {"registered": False, "validate_wrapped": False}


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    _log.warning(message)


def register_trainer_mode() -> bool:
    """Import :mod:`aent.verl.trainer` (registers the AEnt modes); warn and return False when that fails."""
    if _state["registered"]:
        return True
    try:
        import aent.verl.trainer  # noqa: F401  (registration is the import's side effect)
    except Exception as err:  # a broken install must be loud, not a silent "unknown trainer" later
        _warn(
            f"aent: could not register verl trainer mode 'aent' ({type(err).__name__}: {err}). "
            "trainer.v1.trainer_mode=aent will not be available; check that aent and verl>=0.9.1,<0.10 are installed "
            "in this environment (pip install 'aent[verl]')."
        )
        return False
    _state["registered"] = True
    return True


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback right after a module is executed by an import (the normal machinery finds and loads it).

    A hook is used up only when its module is really executed as that module: ``python -m <module>`` looks the spec
    up but runs the code as ``__main__`` (the hook then stays for a later real import).
    """

    def __init__(self, hooks):
        self.hooks = dict(hooks)  # module name -> callback(module)
        self._resolving = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.hooks or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders' answer
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module):
            original(module)
            hook = self.hooks.pop(fullname, None)
            if not self.hooks and self in sys.meta_path:
                sys.meta_path.remove(self)
            if hook is not None:
                hook(module)

        loader.exec_module = exec_module
        return spec


def _guard(config, task_runner: str) -> None:
    from aent.verl.checks import check_start

    check_start(config, task_runner)


def _wrap_validate_config() -> None:
    """``python -m verl.trainer.main_ppo`` validates the config on the driver before ``run_ppo``: guard it there."""
    if _state["validate_wrapped"]:
        return
    try:
        import verl.utils.config as verl_config
    except Exception as err:
        _warn(f"aent: verl.utils.config is not importable ({err}); AEnt start-up checks run in the trainer only")
        return
    original = getattr(verl_config, "validate_config", None)
    if original is None or getattr(original, "_aent_wrapped", False):
        return

    @functools.wraps(original)
    def validate_config(config, *args, **kwargs):
        _guard(config, "TaskRunnerV1")
        return original(config, *args, **kwargs)

    validate_config._aent_wrapped = True
    verl_config.validate_config = validate_config
    _state["validate_wrapped"] = True


def _wrap_run_ppo(main_ppo) -> None:
    """The one-step-off and fully-async entry points call ``verl.trainer.main_ppo.run_ppo(config, task_runner_class)``
    before ``ray.init`` (and never ``validate_config`` on the driver): guard it, naming the entry point by its task
    runner."""
    original = getattr(main_ppo, "run_ppo", None)
    if original is None or getattr(original, "_aent_wrapped", False):
        return

    @functools.wraps(original)
    def run_ppo(config, task_runner_class, *args, **kwargs):
        meta = getattr(task_runner_class, "__ray_metadata__", None)  # a Ray actor class keeps its name here
        name = getattr(meta, "class_name", None) or getattr(task_runner_class, "__name__", repr(task_runner_class))
        _guard(config, name)
        return original(config, task_runner_class, *args, **kwargs)

    run_ppo._aent_wrapped = True
    main_ppo.run_ppo = run_ppo


def _install_fused_seam(transformer_impl) -> None:
    """AEnt's seam in verl's fused-kernel forward (:mod:`aent.verl.fused`), in every process with verl's engine."""
    try:
        from aent.verl.fused import install_engine_seam

        install_engine_seam(transformer_impl)
    except Exception as err:
        _warn(
            f"aent: could not install the fused-kernel seam ({type(err).__name__}: {err}); AEnt runs with "
            "use_fused_kernels=true will fail in the actor update"
        )


_HOOKS = {
    _V1_PACKAGE: lambda module: register_trainer_mode(),
    _MAIN_PPO: _wrap_run_ppo,
    _ENGINE: _install_fused_seam,
}


def install() -> None:
    """What the entry point does; safe to call more than once."""
    try:
        pending = {}
        for name, hook in _HOOKS.items():
            if name in sys.modules:
                hook(sys.modules[name])
            else:
                pending[name] = hook
        if pending and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterImport(pending))
        _wrap_validate_config()
    except Exception as err:
        _warn(f"aent: the verl plugin failed to install ({type(err).__name__}: {err}); AEnt may be missing")


install()
