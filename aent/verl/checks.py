"""Start-up checks of a verl config that asks for AEnt, run on the driver before any worker or GPU is touched.

A config asks for AEnt when it selects one of the AEnt trainer modes (:data:`AENT_MODES`) or carries an ``aent:``
block. :func:`check_start` is the guard of every verl 0.9.1 training entry point: such a config either passes (and
trains with AEnt) or stops here with a message naming the key and the fix; it is never trained without AEnt.

Light on purpose (omegaconf only): the plugin runs these checks from verl's ``validate_config`` and ``run_ppo``,
before Ray starts.
"""

from __future__ import annotations

from typing import Any, List, Optional

from aent.verl.options import AEntOptions, options_from_config

__all__ = [
    "AENT_MODES",
    "ENTRY_POINTS",
    "TRAINER_MODE",
    "LOSS_MODE",
    "REQUEST_KEY",
    "StartupError",
    "apply_loss_mode",
    "check_config",
    "check_start",
    "record_request",
    "selects_aent",
    "wants_aent",
]

TRAINER_MODE = "aent"
LOSS_MODE = "aent"  # actor_rollout_ref.actor.policy_loss.loss_mode=aent: the same run as trainer.v1.trainer_mode=aent
_LOSS_MODE_KEY = "actor_rollout_ref.actor.policy_loss.loss_mode"
REQUEST_KEY = "aent_run"  # top-level record of what the user asked for (the tracker logs the config)
# AEnt trainer mode -> the verl V1 trainer mode it extends (both spelled as trainer.v1.trainer_mode values)
AENT_MODES = {"aent": "sync", "aent_colocate_async": "colocate_async", "aent_separate_async": "separate_async"}
_AENT_MODE_OF = {verl_mode: mode for mode, verl_mode in AENT_MODES.items()}

# verl 0.9.1's training entry points, by the Ray task runner each hands to verl.trainer.main_ppo.run_ppo
ENTRY_POINTS = {
    "TaskRunnerV1": "python -m verl.trainer.main_ppo",
    "TaskRunner": "python -m verl.trainer.main_ppo trainer.use_v1=false",
    "OneStepTaskRunner": "python -m verl.experimental.one_step_off_policy.main_ppo",
    "FullyAsyncTaskRunner": "python -m verl.experimental.fully_async_policy.fully_async_main",
}
_MODES_TEXT = ", ".join(f"{mode} (verl's {verl_mode})" for mode, verl_mode in AENT_MODES.items())


class StartupError(ValueError):
    """A verl config that cannot run AEnt; the message names the key and the fix."""


def _select(config: Any, key: str, default: Any = None) -> Any:
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(config, key, default=default)
    except Exception:  # an unresolvable interpolation counts as unset here; verl reports it itself
        return default
    return default if value is None else value


def selects_aent(config: Any) -> bool:
    """True when ``trainer.v1.trainer_mode`` is one of the AEnt modes."""
    return _select(config, "trainer.v1.trainer_mode") in AENT_MODES


def wants_aent(config: Any) -> bool:
    """True when the config selects an AEnt mode, sets ``policy_loss.loss_mode=aent`` or carries a top-level
    ``aent:`` block."""
    return (
        selects_aent(config)
        or _select(config, _LOSS_MODE_KEY) == LOSS_MODE
        or (hasattr(config, "get") and config.get("aent", None) is not None)
    )


def record_request(config: Any) -> None:
    """Keep what the user ran (AEnt's mode keys, before the trainer and :func:`apply_loss_mode` rewrite them) under
    the top-level key ``aent_run``, so the tracked config of the run shows it. Written once; later calls keep it."""
    from omegaconf import open_dict

    if not hasattr(config, "get") or config.get(REQUEST_KEY, None) is not None:
        return
    with open_dict(config):
        config[REQUEST_KEY] = {
            "trainer.v1.trainer_mode": _select(config, "trainer.v1.trainer_mode"),
            _LOSS_MODE_KEY: _select(config, _LOSS_MODE_KEY, "vanilla"),
        }


def apply_loss_mode(config: Any) -> None:
    """``actor_rollout_ref.actor.policy_loss.loss_mode=aent`` (verl's flag for a custom policy loss) switches AEnt on
    exactly as ``trainer.v1.trainer_mode=aent`` does: the mode becomes the AEnt mode of the chosen verl trainer
    (``sync`` -> ``aent``, ``colocate_async`` -> ``aent_colocate_async``, ``separate_async`` ->
    ``aent_separate_async``) and the policy loss AEnt adds its term to becomes ``aent.base_loss_mode``. The run then
    goes through the one AEnt trainer path. Runs on the driver before anything is built (idempotent)."""
    if _select(config, _LOSS_MODE_KEY) != LOSS_MODE:
        return
    from omegaconf import open_dict

    mode = _select(config, "trainer.v1.trainer_mode", "sync")
    target = mode if mode in AENT_MODES else _AENT_MODE_OF.get(mode)
    if target is None:
        raise StartupError(
            f"{_LOSS_MODE_KEY}=aent asks for AEnt, but trainer.v1.trainer_mode={mode} is not a verl V1 trainer AEnt "
            f"extends: use trainer.v1.trainer_mode=sync, colocate_async or separate_async (or an AEnt mode: "
            f"{_MODES_TEXT})"
        )
    try:
        base = options_from_config(config).base_loss_mode
    except (ValueError, TypeError) as err:
        raise StartupError(str(err)) from None
    record_request(config)
    with open_dict(config):
        config.trainer.v1.trainer_mode = target
        config.actor_rollout_ref.actor.policy_loss.loss_mode = base


def check_start(config: Any, task_runner: str = "TaskRunnerV1") -> Optional[AEntOptions]:
    """The start-up guard of a verl training run, on the driver before Ray starts.

    ``task_runner`` names the Ray task runner the entry point hands to ``verl.trainer.main_ppo.run_ppo`` (the keys of
    :data:`ENTRY_POINTS`; ``main_ppo`` itself runs ``TaskRunnerV1``). Returns None for a config that does not ask for
    AEnt (verl's business), the checked options for one that can run it, and raises :class:`StartupError` for one
    that asks for AEnt where it would not run.
    """
    if not wants_aent(config):
        return None
    by_loss_mode = _select(config, _LOSS_MODE_KEY) == LOSS_MODE
    apply_loss_mode(config)
    mode = _select(config, "trainer.v1.trainer_mode")
    if by_loss_mode:
        asked = f"{_LOSS_MODE_KEY}=aent"
    else:
        asked = f"trainer.v1.trainer_mode={mode}" if selects_aent(config) else "an aent: block"
    if task_runner in ("OneStepTaskRunner", "FullyAsyncTaskRunner"):
        raise StartupError(
            f"verl's entry point '{ENTRY_POINTS[task_runner]}' does not run AEnt (it never reads "
            f"trainer.v1.trainer_mode), but the config asks for it ({asked}). Run AEnt asynchronously with "
            "verl's V1 trainer instead: python -m verl.trainer.main_ppo trainer.v1.trainer_mode=aent_colocate_async "
            "(or aent_separate_async), or remove the aent: block and any AEnt trainer mode to train without AEnt"
        )
    if task_runner not in ENTRY_POINTS:
        raise StartupError(
            f"the config asks for AEnt ({asked}), but it is started with the task runner {task_runner!r}; AEnt runs "
            "in verl's V1 trainer only (python -m verl.trainer.main_ppo with trainer.v1.trainer_mode=aent, "
            "aent_colocate_async or aent_separate_async): start it that way, or remove the aent: block"
        )
    if mode not in AENT_MODES and _select(config, "trainer.use_v1", False):
        raise StartupError(
            f"the config carries an aent: block, but trainer.v1.trainer_mode={mode} does not run AEnt and would "
            f"train without it: set trainer.v1.trainer_mode={_AENT_MODE_OF.get(mode, TRAINER_MODE)} (AEnt modes: "
            f"{_MODES_TEXT}), or remove the aent: block to train without AEnt"
        )
    return check_config(config)


def check_config(config: Any) -> AEntOptions:
    """Refuse settings AEnt cannot honour; return the parsed ``aent:`` options.

    Raises :class:`StartupError` listing every problem found (key, value, fix).
    """
    problems: List[str] = []
    mode = _select(config, "trainer.v1.trainer_mode")
    if not _select(config, "trainer.use_v1", False):
        problems.append(
            "trainer.use_v1=false selects verl's legacy trainer, which has no AEnt (it ignores "
            "trainer.v1.trainer_mode and the aent: block) and would train without it: set trainer.use_v1=true"
            + ("" if mode in AENT_MODES else " trainer.v1.trainer_mode=aent")
        )
    elif mode not in AENT_MODES:
        problems.append(
            f"trainer.v1.trainer_mode={mode} does not run AEnt: set trainer.v1.trainer_mode="
            f"{_AENT_MODE_OF.get(mode, TRAINER_MODE)} (AEnt modes: {_MODES_TEXT})"
        )
    strategy = str(_select(config, "actor_rollout_ref.actor.strategy", "fsdp"))
    if strategy not in ("fsdp", "fsdp2"):
        problems.append(
            f"actor_rollout_ref.actor.strategy={strategy}: AEnt reads the logits of verl's FSDP engine "
            "(Megatron and other engines are not supported): set actor_rollout_ref.actor.strategy=fsdp2"
        )
    if _select(config, "actor_rollout_ref.model.use_fused_kernels", False) is True:
        from aent.verl.fused import startup_problems  # verl's fused path without logits: covered models only

        problems.extend(startup_problems(config, _select))
    if _select(config, "distillation.enabled", False) is True:
        problems.append(
            "distillation.enabled=true: on-policy distillation uses the same logits hook as AEnt: "
            "set distillation.enabled=false (or do not use an AEnt trainer mode)"
        )
    for key in ("actor_rollout_ref.actor.pad_to_length", "actor_rollout_ref.actor.fsdp_config.pad_to_length"):
        if _select(config, key, False) is True:
            problems.append(f"{key}=true: verl's logits hook does not support static padding: set {key}=false")
            break
    loss_mode = _select(config, _LOSS_MODE_KEY, "vanilla")
    block = config.get("aent", None) if hasattr(config, "get") else None
    if loss_mode == LOSS_MODE:
        problems.append(f"{_LOSS_MODE_KEY}=aent was not resolved: call aent.verl.checks.apply_loss_mode(config) first")
    elif block is not None and "base_loss_mode" in block and block["base_loss_mode"] != loss_mode:
        problems.append(
            f"aent.base_loss_mode={block['base_loss_mode']} applies only with {_LOSS_MODE_KEY}=aent, but the run's "
            f"policy loss is {_LOSS_MODE_KEY}={loss_mode}: set {_LOSS_MODE_KEY}=aent, or drop aent.base_loss_mode"
        )
    entropy_coeff = _select(config, "actor_rollout_ref.actor.entropy_coeff", 0)
    try:
        entropy_coeff = float(entropy_coeff)
    except (TypeError, ValueError):
        entropy_coeff = float("nan")
    if entropy_coeff != 0.0:
        problems.append(
            f"actor_rollout_ref.actor.entropy_coeff={entropy_coeff} adds verl's own full-vocabulary entropy bonus "
            "on top of AEnt's: set actor_rollout_ref.actor.entropy_coeff=0 (AEnt's coefficient is aent.coef_init; "
            "for a plain entropy bonus use aent.clamp_p=0 aent.lr=0)"
        )
    options = None
    try:
        options = options_from_config(config)
    except (ValueError, TypeError) as err:
        problems.append(str(err))
    if problems:
        lines = "\n  - ".join(problems)
        raise StartupError(f"AEnt (trainer.v1.trainer_mode={mode}) cannot start:\n  - {lines}")
    assert options is not None
    return options
