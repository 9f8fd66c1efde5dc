"""The recipes' own guard against AEnt being silently off: a Hydra callback every AEnt recipe names.

verl loads the ``aent`` plugin through its ``verl.plugins`` entry point; ``VERL_USE_EXTERNAL_PLUGINS=none`` (or a list
without ``aent``) turns that off, and then nothing of AEnt's would run: a recipe that asks for AEnt under
``trainer.v1.trainer_mode=sync`` would train without it. Every AEnt recipe therefore names this guard in its
``hydra.callbacks`` block, with the keys it needs interpolated from the run's config. Hydra builds the callbacks
right after composing the config, on the driver, before verl's ``main`` runs; :func:`require_plugin` raises there
when the config asks for AEnt and the plugin is not loaded in this process.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

__all__ = ["require_plugin"]

_PLUGIN = "aent.verl.plugin"


def require_plugin(trainer_mode: Optional[str] = None, loss_mode: Optional[str] = None, aent: Any = None):
    """Hydra callback factory (``_target_``): refuse a run that asks for AEnt when AEnt's verl plugin is not loaded.

    Returns a no-op callback otherwise; the plugin's own start-up guard (:func:`aent.verl.checks.check_start`)
    does the real checks later, in verl's ``validate_config``.
    """
    from hydra.experimental.callback import Callback

    from aent.verl.checks import AENT_MODES, LOSS_MODE, StartupError

    asked = []
    if trainer_mode in AENT_MODES:
        asked.append(f"trainer.v1.trainer_mode={trainer_mode}")
    if loss_mode == LOSS_MODE:
        asked.append("actor_rollout_ref.actor.policy_loss.loss_mode=aent")
    if aent is not None:
        asked.append("an aent: block")
    if asked and _PLUGIN not in sys.modules:
        policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto")
        raise StartupError(
            f"this run asks for AEnt ({', '.join(asked)}), but AEnt's verl plugin is not loaded "
            f"(VERL_USE_EXTERNAL_PLUGINS={policy}), so verl would train without it. Let verl load it: unset "
            "VERL_USE_EXTERNAL_PLUGINS or include aent in it (VERL_USE_EXTERNAL_PLUGINS=aent,...), or set "
            f"VERL_USE_EXTERNAL_MODULES={_PLUGIN}; or remove the aent: block and the AEnt mode to train without AEnt"
        )
    return Callback()
