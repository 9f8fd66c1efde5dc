"""The ``verl.plugins`` entry point of ``aent``: loaded by ``import verl`` in every process (verl >= 0.9).

It must not fail and must stay cheap, so it imports nothing heavy itself:

* it registers the ``aent`` trainer mode as soon as verl's V1 trainer package (``verl.trainer.ppo.v1``) is imported,
  through a one-shot import hook (importing that package eagerly would add seconds to every Ray worker's start);
* it wraps ``verl.utils.config.validate_config`` so that a config selecting ``trainer.v1.trainer_mode=aent`` is
  checked on the driver before Ray starts (this also catches ``trainer.use_v1=false``, whose legacy trainer would
  ignore the mode).

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
_log = logging.getLogger("aent.verl.plugin")
_state = {"registered": False, "validate_wrapped": False}


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    _log.warning(message)


def register_trainer_mode() -> bool:
    """Import :mod:`aent.verl.trainer` (registers ``aent``); warn and return False when that fails."""
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


class _RegisterAfterV1Import(importlib.abc.MetaPathFinder):
    """One-shot finder: lets the normal machinery load ``verl.trainer.ppo.v1``, then registers the mode."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _V1_PACKAGE:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module):
            original(module)
            register_trainer_mode()

        loader.exec_module = exec_module
        return spec


def _wrap_validate_config() -> None:
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
        from aent.verl.checks import check_config, selects_aent

        if selects_aent(config):
            check_config(config)
        return original(config, *args, **kwargs)

    validate_config._aent_wrapped = True
    verl_config.validate_config = validate_config
    _state["validate_wrapped"] = True


def install() -> None:
    """What the entry point does; safe to call more than once."""
    try:
        if _V1_PACKAGE in sys.modules:
            register_trainer_mode()
        elif not any(isinstance(f, _RegisterAfterV1Import) for f in sys.meta_path):
            sys.meta_path.insert(0, _RegisterAfterV1Import())
        _wrap_validate_config()
    except Exception as err:
        _warn(
            f"aent: the verl plugin failed to install ({type(err).__name__}: {err}); trainer mode 'aent' may be missing"
        )


install()
