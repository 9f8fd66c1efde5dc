"""The ``aent:`` options block of a verl run (a top-level Hydra block; verl's own dataclasses reject unknown keys
under ``actor_rollout_ref.actor``).

Defaults are the paper's setting (a) (Qwen2.5-Math-1.5B on MATH; :mod:`aent.settings`, docs/METHOD.md). Constant versus adaptive is chosen
by the values: ``lr = 0`` keeps the coefficient at ``coef_init`` for the whole run (``coef_min``/``coef_max``/band are
then unused); ``lr > 0`` runs the controller of Algorithm 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from aent.coefficient import AdaptiveCoefficient, build_coefficient
from aent.settings import SETTING_A as _A
from aent.settings import SETTING_B as _B
from aent.validate import (
    check_band,
    check_bounds,
    check_chunk_size,
    check_clamp_p,
    check_nonnegative,
    check_steps,
    finite_number,
)

__all__ = ["AEntOptions", "options_from_config", "options_help"]


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class AEntOptions:
    """AEnt settings (arXiv 2509.03493). Set them as ``+aent.<name>=<value>`` or in a recipe's ``aent:`` block.

    The defaults are the paper's setting (a) (:data:`aent.settings.SETTING_A`); :func:`options_help` prints each
    option with its default.
    """

    clamp_p: float = _opt(
        _A["clamp_p"],
        "Removed fraction of the vocabulary, in [0, 1): the floor(clamp_p * V) lowest-logit tokens of each position "
        f"are dropped before the entropy is taken (paper section 3, 'clamped entropy'; setting b uses {_B['clamp_p']}). "
        "0 gives the plain full-vocabulary entropy bonus. Unitless.",
    )
    coef_init: float = _opt(
        _A["coef_init"],
        f"Starting entropy coefficient lambda_0 (paper Algorithm 1; setting b uses {_B['coef_init']}). With lr = 0 it is the "
        "constant coefficient of the whole run. Unitless (loss per nat).",
    )
    entropy_low: float = _opt(
        _A["entropy_low"],
        "Lower edge of the target band of the clamped entropy, in nats per response token (Algorithm 1; setting b "
        "uses 0.35). Below it the coefficient rises.",
    )
    entropy_high: float = _opt(
        _A["entropy_high"],
        f"Upper edge of the target band, in nats per response token (Algorithm 1; setting b uses {_B['entropy_high']}). Above it the "
        "coefficient falls.",
    )
    lr: float = _opt(
        _A["lr"],
        "Step size of the coefficient controller per global step, per nat outside the band (Algorithm 1; setting b "
        "uses 1e-4). 0 keeps the coefficient constant at coef_init.",
    )
    coef_min: float = _opt(
        _A["coef_min"],
        f"Lower clip of the adaptive coefficient (Algorithm 1; setting b uses {_B['coef_min']}). Unused when lr = 0.",
    )
    coef_max: float = _opt(
        _A["coef_max"],
        f"Upper clip of the adaptive coefficient (Algorithm 1; setting b uses {_B['coef_max']}). Unused when lr = 0.",
    )
    warmup_steps: int = _opt(
        _A["warmup_steps"],
        "Global steps trained with coef_init before the controller moves the coefficient (verl counts global "
        "steps from 1): the first update that moves it follows step max(warmup_steps, 1), so step warmup_steps + 1 "
        "is the first to use a moved value. The entropy is measured from step 1 (paper section 5 setup; setting b "
        "uses 156).",
    )
    reg: float = _opt(
        0.0,
        "Pull of the coefficient toward coef_init per step, as a multiple of lr (docs/METHOD.md, 'Adaptive "
        "coefficient'; the paper uses none). Unitless.",
    )
    chunk_size: Optional[int] = _opt(
        None,
        "Rows (tokens) per chunk of the clamped-entropy computation; bounds its extra memory to about "
        "5 x chunk_size x V x 4 bytes. null picks a size per device. Not a paper setting.",
    )
    impl: Optional[str] = _opt(
        None,
        "Clamped-entropy implementation: null/auto (fused Triton kernels on CUDA when available, else chunked "
        "torch), torch, triton or reference (float64, for checks only).",
    )
    base_loss_mode: str = _opt(
        "vanilla",
        "The verl policy loss AEnt adds its term to when the run selects AEnt with "
        "actor_rollout_ref.actor.policy_loss.loss_mode=aent (any registered verl loss_mode). With "
        "trainer.v1.trainer_mode=aent the run's own policy_loss.loss_mode is that loss instead.",
    )

    resume_without_controller: bool = _opt(
        False,
        "Allow resuming from a checkpoint that has no aent_controller.json (one written by a run without AEnt): "
        "the run then warns and restarts the coefficient at coef_init, with the step count of the checkpoint, so a "
        "past warm-up no longer protects it. false stops such a resume with an error.",
    )

    def __post_init__(self) -> None:
        # one validation for the core, the verl loss and these options: aent.validate
        check_clamp_p("aent.clamp_p", self.clamp_p)
        for name in ("coef_init", "entropy_low", "entropy_high", "lr", "coef_min", "coef_max", "reg"):
            finite_number(f"aent.{name}", getattr(self, name))
        check_steps("aent.warmup_steps", self.warmup_steps)
        check_chunk_size("aent.chunk_size", self.chunk_size)
        check_nonnegative("aent.lr", self.lr, "0 keeps the coefficient constant")
        if self.adaptive:
            check_band("aent.entropy_low", self.entropy_low, "aent.entropy_high", self.entropy_high)
            check_bounds(
                "aent.coef_init", self.coef_init, "aent.coef_min", self.coef_min, "aent.coef_max", self.coef_max
            )
            check_nonnegative("aent.reg", self.reg)
        else:
            check_nonnegative("aent.coef_init", self.coef_init, "a negative coefficient would minimise entropy")
        from aent.entropy import IMPLEMENTATIONS

        if self.impl is not None and self.impl not in IMPLEMENTATIONS:
            raise ValueError(f"aent.impl must be one of {IMPLEMENTATIONS} or null, got {self.impl!r}")
        if not isinstance(self.base_loss_mode, str) or not self.base_loss_mode or self.base_loss_mode == "aent":
            raise ValueError(
                f"aent.base_loss_mode must name a verl policy loss other than aent (e.g. vanilla, gspo), got "
                f"{self.base_loss_mode!r}"
            )
        if not isinstance(self.resume_without_controller, bool):
            raise ValueError(
                f"aent.resume_without_controller must be true or false, got {self.resume_without_controller!r}"
            )

    @property
    def adaptive(self) -> bool:
        """True when the coefficient follows the controller (``lr > 0``), False for a constant coefficient."""
        return float(self.lr) > 0.0

    def build_coefficient(self) -> AdaptiveCoefficient:
        """A fresh :class:`aent.AdaptiveCoefficient` (``lr > 0``) or :class:`aent.ConstantCoefficient` (``lr = 0``),
        from :func:`aent.build_coefficient`."""
        return build_coefficient(
            float(self.coef_init),
            lr=float(self.lr),
            entropy_low=float(self.entropy_low),
            entropy_high=float(self.entropy_high),
            coef_min=float(self.coef_min),
            coef_max=float(self.coef_max),
            warmup_steps=int(self.warmup_steps),
            reg=float(self.reg),
        )

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def options_from_config(config: Any) -> AEntOptions:
    """Read the top-level ``aent`` block of a verl config (OmegaConf or mapping); missing block = all defaults.

    Unknown keys are an error that names the key and lists the valid ones.
    """
    block = None
    if config is not None:
        block = config.get("aent", None) if hasattr(config, "get") else None
    if block is None:
        return AEntOptions()
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(block, DictConfig):
            block = OmegaConf.to_container(block, resolve=True)
    except ImportError:  # plain mappings only
        pass
    if not isinstance(block, Mapping):
        raise ValueError(f"the aent config block must be a mapping of options, got {block!r}")
    names = {f.name for f in dataclasses.fields(AEntOptions)}
    unknown = sorted(set(block) - names)
    if unknown:
        raise ValueError(f"unknown aent option(s) {unknown}; the valid options are:\n{options_help()}")
    values = dict(block)
    for name in ("clamp_p", "coef_init", "entropy_low", "entropy_high", "lr", "coef_min", "coef_max", "reg"):
        if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
            values[name] = float(values[name])
    return AEntOptions(**values)


def options_help() -> str:
    """One line per option: name, default and help text (listed by the unknown-option error)."""
    lines = []
    for f in dataclasses.fields(AEntOptions):
        lines.append(f"aent.{f.name} (default {f.default!r}): {f.metadata['help']}")
    return "\n".join(lines)
