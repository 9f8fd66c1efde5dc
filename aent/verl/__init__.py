"""AEnt for verl 0.9: the actor loss, the ``aent`` trainer mode and its options.

Three ways in (docs/VERL.md):

* one flag on an existing run: ``python -m verl.trainer.main_ppo ... trainer.v1.trainer_mode=aent +aent.clamp_p=0.33``
  (the ``verl.plugins`` entry point registers the mode in every process);
* the recipes in ``configs/`` (paper settings a and b, and their baselines);
* custom trainers: :func:`make_aent_loss` for ``set_loss_fn`` / ``engine.train_batch``, :func:`aent_step_flags` for
  each update batch, :class:`AEntOptions` and :meth:`AEntOptions.build_coefficient` for the controller.

Importing this package imports verl lazily: ``aent.verl.options`` and ``aent.verl.loss`` need only torch until used.
"""

from aent.verl.checks import StartupError, check_config
from aent.verl.loss import AEntPolicyLoss, aent_step_flags, make_aent_loss
from aent.verl.options import AEntOptions, options_from_config

__all__ = [
    "AEntOptions",
    "AEntPolicyLoss",
    "StartupError",
    "aent_step_flags",
    "check_config",
    "make_aent_loss",
    "options_from_config",
]


def __getattr__(name):
    # The trainer pulls in verl's whole V1 trainer stack (Ray, TransferQueue): load it only when asked for.
    if name == "AEntTrainer":
        from aent.verl import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'aent.verl' has no attribute {name!r}")
