"""Start-up checks of a verl config that selects AEnt, run on the driver before any worker or GPU is touched.

Light on purpose (omegaconf only): the plugin also runs them from verl's ``validate_config``, before Ray starts.
"""

from __future__ import annotations

from typing import Any, List

from aent.verl.options import AEntOptions, options_from_config

__all__ = ["TRAINER_MODE", "StartupError", "check_config", "selects_aent"]

TRAINER_MODE = "aent"


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
    """True when the config asks for the ``aent`` trainer mode."""
    return _select(config, "trainer.v1.trainer_mode") == TRAINER_MODE


def check_config(config: Any) -> AEntOptions:
    """Refuse settings AEnt cannot honour; return the parsed ``aent:`` options.

    Raises :class:`StartupError` listing every problem found (key, value, fix).
    """
    problems: List[str] = []
    if not _select(config, "trainer.use_v1", False):
        problems.append(
            "trainer.use_v1=false selects verl's legacy trainer, which ignores trainer.v1.trainer_mode=aent and "
            "would train without AEnt: set trainer.use_v1=true"
        )
    strategy = str(_select(config, "actor_rollout_ref.actor.strategy", "fsdp"))
    if strategy not in ("fsdp", "fsdp2"):
        problems.append(
            f"actor_rollout_ref.actor.strategy={strategy}: AEnt reads the logits of verl's FSDP engine "
            "(Megatron and other engines are not supported): set actor_rollout_ref.actor.strategy=fsdp2"
        )
    for key in (
        "actor_rollout_ref.model.use_fused_kernels",
        "actor_rollout_ref.actor.use_fused_kernels",
        "actor_rollout_ref.actor.fsdp_config.use_fused_kernels",
    ):
        if _select(config, key, False) is True:
            problems.append(
                f"{key}=true: fused kernels never materialise the logits the clamped entropy needs: set {key}=false"
            )
            break
    if _select(config, "distillation.enabled", False) is True:
        problems.append(
            "distillation.enabled=true: on-policy distillation uses the same logits hook as AEnt: "
            "set distillation.enabled=false (or do not use trainer.v1.trainer_mode=aent)"
        )
    for key in ("actor_rollout_ref.actor.pad_to_length", "actor_rollout_ref.actor.fsdp_config.pad_to_length"):
        if _select(config, key, False) is True:
            problems.append(f"{key}=true: verl's logits hook does not support static padding: set {key}=false")
            break
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
        raise StartupError(f"trainer.v1.trainer_mode=aent cannot start:\n  - {lines}")
    assert options is not None
    return options
