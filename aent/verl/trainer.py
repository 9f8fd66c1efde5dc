"""The AEnt trainer modes of verl's V1 trainer: ``trainer.v1.trainer_mode=aent`` (verl's ``sync``),
``aent_colocate_async`` (verl's ``colocate_async``) and ``aent_separate_async`` (verl's ``separate_async``).

One piece of driver logic, :class:`AEntTrainerMixin`, is put in front of each of verl's three V1 trainers; it adds:

* start-up checks on the driver (:func:`aent.verl.checks.check_config`) before anything is built;
* the AEnt loss (:func:`aent.verl.make_aent_loss`) installed once in every actor worker after ``init_model``;
* per actor update, the step flags and the current coefficient carried by the update batch itself
  (:func:`aent_step_flags`);
* after each global step's updates, the token-weighted clamped entropy measured during them (summed over
  mini-batches, micro-batches and ranks) feeds the coefficient controller; the new value goes with the next step;
* the controller state written to ``global_step_N/aent_controller.json`` in every checkpoint and restored on resume
  (a checkpoint without it stops the resume unless ``aent.resume_without_controller=true``).

Importing this module imports verl's V1 trainer stack (Ray, TransferQueue); the ``verl.plugins`` entry point
(:mod:`aent.verl.plugin`) arranges that it happens whenever verl's V1 trainer is imported.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, Optional

from omegaconf import OmegaConf, open_dict
from verl.trainer.ppo.v1 import PPOTrainerColocateAsync, PPOTrainerSeparateAsync, PPOTrainerSync, register_trainer

from aent.verl.checks import REQUEST_KEY, StartupError, apply_loss_mode, check_config, record_request
from aent.verl.loss import (
    METRIC_CLAMPED_ENTROPY,
    METRIC_COEF,
    METRIC_ENTROPY_SUM,
    METRIC_NONFINITE,
    METRIC_NUM_TOKENS,
    aent_step_flags,
    make_aent_loss,
)

__all__ = [
    "AEntTrainer",
    "AEntTrainerColocateAsync",
    "AEntTrainerMixin",
    "AEntTrainerSeparateAsync",
    "CONTROLLER_FILE",
    "StartupError",
    "check_config",
]

logger = logging.getLogger(__name__)

CONTROLLER_FILE = "aent_controller.json"
METRIC_COEF_NEXT = "actor/aent_coef_next"


class _StepExtraInfo(dict):
    """``batch.extra_info`` of one actor update, with AEnt's values pinned.

    verl's ``_update_actor`` writes its own ``calculate_entropy``/``distillation_use_topk``/``distillation_only``
    into the batch's ``extra_info`` right before it calls the worker group; AEnt's values for those keys (and the
    coefficient) are kept over such writes, so the batch carries them to the workers and the rest of that method
    stays verl's. Copies (verl deep-copies ``extra_info`` when it splits the batch; Ray pickles it) are plain dicts.
    """

    def __init__(self, base: Optional[Dict[str, Any]], pinned: Dict[str, Any]):
        super().__init__(base or {})
        self._pinned = dict(pinned)
        dict.update(self, self._pinned)

    def __setitem__(self, key, value):
        dict.__setitem__(self, key, self._pinned.get(key, value))

    def update(self, *args, **kwargs):
        dict.update(self, *args, **kwargs)
        dict.update(self, self._pinned)

    def __deepcopy__(self, memo):
        import copy

        return copy.deepcopy(dict(self), memo)

    def __reduce__(self):
        return dict, (dict(self),)


class AEntTrainerMixin:
    """AEnt's driver logic for any of verl's V1 trainers (docs/METHOD.md, "Loss" and "Adaptive coefficient"); put it
    first in the bases.

    ``verl_mode`` is the V1 trainer mode of the base class: verl's base classes branch on ``trainer_mode`` ("sync"
    or not, and ``trainer.v1.<mode>`` settings), so the run continues under that name once the checks passed.
    """

    verl_mode = "sync"

    def __init__(self, config):
        record_request(config)  # what the user ran, for the tracked config (before any rewrite)
        apply_loss_mode(config)
        self.aent_options = check_config(config)  # refuse before anything is built
        self.coefficient = self.aent_options.build_coefficient()
        # no logits with verl's fused kernels: the update's forward serves AEnt (aent.verl.fused)
        self.aent_fused = OmegaConf.select(config, "actor_rollout_ref.model.use_fused_kernels", default=False) is True
        self._aent_sums = [0.0, 0.0, 0.0]  # entropy sum, response tokens, non-finite tokens of this global step
        with open_dict(config):
            # verl logs this config to the tracker: every AEnt option as it runs, next to aent_run (the user's mode)
            config.aent = dict(
                self.aent_options.to_dict(),
                base_loss_mode=str(config.actor_rollout_ref.actor.policy_loss.get("loss_mode", "vanilla")),
            )
            config[REQUEST_KEY]["aent_trainer_mode"] = config.trainer.v1.trainer_mode
            config.trainer.v1.trainer_mode = self.verl_mode
        super().__init__(config)
        logger.warning(
            "AEnt on verl's %s trainer: kept set %s, %s coefficient %s",
            self.verl_mode,
            self.aent_options.kept_set,
            self.aent_options.controller,
            self.coefficient,
        )

    # -- the loss ------------------------------------------------------------------------------------------
    def build_aent_loss(self):
        from verl.utils.config import omega_conf_to_dataclass

        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        return make_aent_loss(
            actor_config,
            self.aent_options.kept_set,
            chunk_size=self.aent_options.chunk_size,
            impl=self.aent_options.impl,
        )

    def on_init_end(self):
        # once, after init_model (which installs verl's own ppo_loss) and the checkpoint load
        self.actor_rollout_wg.set_loss_fn(self.build_aent_loss())
        super().on_init_end()

    # -- per step ------------------------------------------------------------------------------------------
    def _update_actor(self, batch, metrics: dict):
        # the coefficient of this global step travels with the update batch
        batch.extra_info = _StepExtraInfo(
            batch.extra_info, aent_step_flags(self.coefficient.value, fused=self.aent_fused)
        )
        try:
            batch = super()._update_actor(batch, metrics)
        finally:
            batch.extra_info = dict(batch.extra_info)
        if METRIC_NUM_TOKENS not in metrics:
            raise RuntimeError(
                "the actor update returned no AEnt measurement: the actor workers are not running the AEnt loss "
                "(was set_loss_fn replaced?)"
            )
        # verl reduced each metric with a mean over the update's mini-batches; the ratio of the two means is the
        # token-weighted clamped entropy over all of them. The updates of one global step (parameter_sync_step > 1)
        # have the same number of mini-batches, so adding their means keeps the ratio token-weighted.
        self._aent_sums[0] += float(metrics[METRIC_ENTROPY_SUM])
        self._aent_sums[1] += float(metrics[METRIC_NUM_TOKENS])
        self._aent_sums[2] += float(metrics.get(METRIC_NONFINITE, 0.0))
        return batch

    def step(self, metrics: dict, timing_raw: dict):
        self._aent_sums = [0.0, 0.0, 0.0]
        coef_used = self.coefficient.value
        batch = super().step(metrics, timing_raw)
        self.aent_controller_step(metrics, coef_used)
        return batch

    def aent_controller_step(self, metrics: dict, coef_used: float) -> Optional[float]:
        """Feed this global step's measurement to the controller; write the step's AEnt metrics. Runs on the driver
        after the step's actor updates and before its checkpoint, so a checkpoint holds the coefficient of the next
        step."""
        ent_sum, num_tokens, nonfinite = self._aent_sums
        if nonfinite > 0:
            raise FloatingPointError(
                f"AEnt: {int(round(nonfinite))} response tokens of global step {self.global_steps} had NaN or +inf "
                "logits, so their clamped entropy is undefined. The policy has diverged: resume from the last "
                "checkpoint with a lower actor_rollout_ref.actor.optim.lr or a grad_clip, or check the model's dtype."
            )
        if num_tokens <= 0:
            return None  # no actor update this step (e.g. trainer.critic_warmup)
        entropy = ent_sum / num_tokens
        new_value = self.coefficient.update(entropy, step=int(self.global_steps))
        metrics[METRIC_CLAMPED_ENTROPY] = entropy
        metrics[METRIC_COEF] = coef_used
        metrics[METRIC_COEF_NEXT] = new_value
        return new_value

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _step_folder(self) -> str:
        return os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")

    def _save_checkpoint(self):
        # written before verl's own files: verl marks the checkpoint complete last (latest_checkpointed_iteration)
        folder = self._step_folder()
        os.makedirs(folder, exist_ok=True)
        state = {"options": self.aent_options.to_dict(), "coefficient": self.coefficient.state_dict()}
        tmp = os.path.join(folder, CONTROLLER_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, os.path.join(folder, CONTROLLER_FILE))
        super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if not self.global_steps:
            return
        if self.config.trainer.resume_mode == "resume_path":
            folder = self.config.trainer.resume_from_path
        else:
            folder = self._step_folder()
        if not os.path.isabs(folder):
            folder = os.path.join(os.getcwd(), folder)
        self.load_controller(os.path.join(folder, CONTROLLER_FILE))

    def load_controller(self, path: str) -> None:
        """Restore the coefficient saved at ``path``.

        A missing file stops the run (:class:`StartupError`) unless ``aent.resume_without_controller=true``; then
        the run warns and keeps ``coef_init``.
        """
        if not os.path.exists(path):
            opts = self.aent_options
            restart = (
                f"the coefficient would restart at aent.coef_init={opts.coef_init} at global step {self.global_steps}"
                + (
                    f", past the warm-up of aent.warmup_steps={opts.warmup_steps}, so the controller moves it from "
                    "there at once"
                    if opts.adaptive and self.global_steps >= opts.warmup_steps
                    else ""
                )
            )
            if not opts.resume_without_controller:
                raise StartupError(
                    f"resuming from a checkpoint without {path} (written by a run without AEnt, or copied without "
                    f"this file): {restart}. Resume from a checkpoint of an AEnt run, start a fresh run "
                    "(trainer.resume_mode=disable or another trainer.default_local_dir), or accept the restart with "
                    "++aent.resume_without_controller=true"
                )
            logger.warning(
                "AEnt: resuming from a checkpoint without %s (aent.resume_without_controller=true): %s", path, restart
            )
            return
        try:
            with open(path) as f:
                state = json.load(f)
            if not isinstance(state, dict):
                raise ValueError(f"expected a JSON object, got {type(state).__name__}")
        except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
            raise StartupError(
                f"the AEnt controller state {path} is truncated or corrupt ({type(err).__name__}: {err}). Resume from "
                "an earlier checkpoint (trainer.resume_mode=resume_path trainer.resume_from_path=<its global_step_N>), "
                "restore the file from a copy, or delete it and resume with ++aent.resume_without_controller=true "
                "(the coefficient then restarts at aent.coef_init)"
            ) from None
        try:
            self.coefficient.load_state_dict(state["coefficient"])
        except (KeyError, ValueError, TypeError) as err:
            raise StartupError(
                f"cannot restore the AEnt controller from {path}: {err}. The checkpoint was written with options "
                f"{state.get('options')}; resume with the same kind of coefficient (aent.controller, and for band "
                "aent.lr > 0 adaptive, = 0 constant) or start a fresh run (trainer.resume_mode=disable)"
            ) from None
        if not math.isfinite(self.coefficient.value):
            raise StartupError(f"the AEnt controller state in {path} holds a non-finite coefficient")
        logger.warning("AEnt: restored the controller from %s: %s", path, self.coefficient)


@register_trainer("aent")
class AEntTrainer(AEntTrainerMixin, PPOTrainerSync):
    """``trainer.v1.trainer_mode=aent``: verl's synchronous V1 trainer with AEnt."""

    verl_mode = "sync"


@register_trainer("aent_colocate_async")
class AEntTrainerColocateAsync(AEntTrainerMixin, PPOTrainerColocateAsync):
    """``trainer.v1.trainer_mode=aent_colocate_async``: verl's colocated asynchronous V1 trainer with AEnt."""

    verl_mode = "colocate_async"


@register_trainer("aent_separate_async")
class AEntTrainerSeparateAsync(AEntTrainerMixin, PPOTrainerSeparateAsync):
    """``trainer.v1.trainer_mode=aent_separate_async``: verl's separate-pool asynchronous V1 trainer with AEnt."""

    verl_mode = "separate_async"
