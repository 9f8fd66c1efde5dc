"""The ``aent:`` options block of a verl run (a top-level Hydra block; verl's own dataclasses reject unknown keys
under ``actor_rollout_ref.actor``).

Defaults are the paper's setting (a) (Qwen2.5-Math-1.5B on MATH; :mod:`aent.settings`, docs/METHOD.md). Constant versus adaptive is chosen
by the values: ``lr = 0`` keeps the coefficient at ``coef_init`` for the whole run (``coef_min``/``coef_max``/band are
then unused); ``lr > 0`` runs the controller of Algorithm 1. ``kept`` and ``controller`` choose another kept-set rule
(top-k, nucleus) or controller (Skywork-OR1's target, a constant); each takes its own options, and an option of a
rule or controller the run did not choose stops it at start-up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from aent.coefficient import ConstantCoefficient, Controller, TargetCoefficient, build_coefficient
from aent.kept import KEPT_RULES, KeptSet
from aent.settings import SETTING_A as _A
from aent.settings import SETTING_B as _B
from aent.validate import (
    check_band,
    check_bounds,
    check_chunk_size,
    check_clamp_p,
    check_nonnegative,
    check_steps,
    check_top_k,
    check_top_p,
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
    kept: str = _opt(
        "bottom_p",
        "Which tokens the entropy bonus keeps: bottom_p removes the lowest logits (AEnt's clamp, arXiv 2509.03493; "
        "set by aent.clamp_p), top_k keeps the highest (TRE-K, arXiv 2602.03635; aent.top_k), top_p keeps the "
        "nucleus (TRE-P, arXiv 2602.03635; aent.top_p). A rule name. docs/ENTROPY.md compares them.",
    )
    top_k: Optional[int] = _opt(
        None,
        "Tokens kept per position by aent.kept=top_k: every token whose logit is >= the k-th largest (TRE-K, "
        "arXiv 2602.03635; its scripts use 2). A count, an integer >= 1.",
    )
    top_p: Optional[float] = _opt(
        None,
        "Probability mass of the nucleus kept by aent.kept=top_p: the smallest top set with probability >= top_p, "
        "ties included (TRE-P, arXiv 2602.03635; its scripts use 0.99). Unitless, in (0, 1].",
    )
    controller: str = _opt(
        "band",
        "Entropy coefficient controller: band (AEnt, arXiv 2509.03493, Algorithm 1: aent.entropy_low/high, lr, "
        "coef_min/max, warmup_steps, reg; lr = 0 keeps it at coef_init), target (Skywork-OR1, arXiv 2505.22312: "
        "aent.target_entropy, delta, coef_min/max, warmup_steps) or constant (aent.coef_init). A controller name.",
    )
    target_entropy: Optional[float] = _opt(
        None,
        "Target entropy of aent.controller=target, in nats per response token (Skywork-OR1, arXiv 2505.22312; its "
        "scripts use 0.2): below it the coefficient rises by aent.delta and the bonus applies; at or above it the "
        "coefficient falls and the next step has no bonus.",
    )
    delta: Optional[float] = _opt(
        None,
        "Change of the aent.controller=target coefficient per global step (Skywork-OR1, arXiv 2505.22312; its "
        "scripts use 1e-4). Unitless (loss per nat).",
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
        self._check_family()

    def _check_family(self) -> None:
        """The chosen kept-set rule and controller get their own options; another's options stop the run."""
        if self.kept not in KEPT_RULES:
            raise ValueError(f"aent.kept must be one of {tuple(KEPT_RULES)}, got {self.kept!r}")
        if self.controller not in CONTROLLER_OPTIONS:
            raise ValueError(f"aent.controller must be one of {tuple(CONTROLLER_OPTIONS)}, got {self.controller!r}")
        _refuse_foreign("kept", self.kept, KEPT_OPTIONS, self)
        _refuse_foreign("controller", self.controller, CONTROLLER_OPTIONS, self)
        if self.kept == "top_k":
            _require(self, "top_k", "an integer >= 1, the tokens kept per position; TRE uses 2", "kept")
            check_top_k("aent.top_k", self.top_k)
        elif self.kept == "top_p":
            _require(self, "top_p", "a probability mass in (0, 1]; TRE uses 0.99", "kept")
            check_top_p("aent.top_p", self.top_p)
        if self.controller == "target":
            _require(self, "target_entropy", "nats per response token; Skywork-OR1 uses 0.2", "controller")
            _require(self, "delta", "the change per global step; Skywork-OR1 uses 1e-4", "controller")
            check_nonnegative("aent.target_entropy", self.target_entropy, "an entropy is never negative")
            check_nonnegative("aent.delta", self.delta, "0 keeps the coefficient at coef_init")

    @property
    def kept_set(self) -> KeptSet:
        """The kept set of the entropy bonus (:class:`aent.KeptSet`) from ``aent.kept`` and its parameter."""
        return KeptSet(self.kept, getattr(self, KEPT_RULES[self.kept].param))

    @property
    def adaptive(self) -> bool:
        """True when a controller moves the coefficient (``target``, or ``band`` with ``lr > 0``), False for a
        constant coefficient."""
        if self.controller == "constant":
            return False
        return self.controller != "band" or float(self.lr) > 0.0

    def build_coefficient(self) -> Controller:
        """A fresh controller of ``aent.controller``: :class:`aent.TargetCoefficient`, :class:`aent.ConstantCoefficient`,
        or for ``band`` :func:`aent.build_coefficient` (:class:`aent.AdaptiveCoefficient` at ``lr > 0``, else
        constant)."""
        if self.controller == "constant":
            return ConstantCoefficient(float(self.coef_init))
        if self.controller == "target":
            return TargetCoefficient(
                init=float(self.coef_init),
                target=float(self.target_entropy),
                delta=float(self.delta),
                coef_min=float(self.coef_min),
                coef_max=float(self.coef_max),
                warmup_steps=int(self.warmup_steps),
            )
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
    for name in ("top_p", "target_entropy", "delta"):
        if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
            values[name] = float(values[name])
    return AEntOptions(**values)


#: The options of each kept-set rule (``aent.kept``) and each controller (``aent.controller``); an option that
#: belongs only to rules or controllers other than the chosen one must keep its default.
KEPT_OPTIONS = {"bottom_p": ("clamp_p",), "top_k": ("top_k",), "top_p": ("top_p",)}
CONTROLLER_OPTIONS = {
    "band": ("entropy_low", "entropy_high", "lr", "coef_min", "coef_max", "warmup_steps", "reg"),
    "target": ("target_entropy", "delta", "coef_min", "coef_max", "warmup_steps"),
    "constant": (),
}


def _refuse_foreign(key: str, chosen: str, table: Dict[str, tuple], options: AEntOptions) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(AEntOptions)}
    foreign = sorted({name for names in table.values() for name in names} - set(table[chosen]))
    for name in foreign:
        value = getattr(options, name)
        if value == defaults[name]:
            continue
        owners = [owner for owner, names in table.items() if name in names]
        raise ValueError(
            f"aent.{name}={value!r} is an option of aent.{key}={'|'.join(owners)}, but this run has "
            f"aent.{key}={chosen}: remove aent.{name}, or set aent.{key}={owners[0]}"
        )


def _require(options: AEntOptions, name: str, what: str, key: str) -> None:
    if getattr(options, name) is None:
        raise ValueError(f"aent.{key}={getattr(options, key)} needs aent.{name} ({what}): set aent.{name}")


def options_help() -> str:
    """One line per option: name, default and help text (listed by the unknown-option error)."""
    lines = []
    for f in dataclasses.fields(AEntOptions):
        lines.append(f"aent.{f.name} (default {f.default!r}): {f.metadata['help']}")
    return "\n".join(lines)
