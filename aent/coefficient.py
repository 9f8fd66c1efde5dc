"""Entropy coefficient controllers: one protocol, a registry, and the rules AEnt is compared with.

Every controller is a :class:`Controller`, so a trainer never branches on the kind:

* ``.value``: the coefficient the loss uses for the current step.
* ``.update(entropy, step) -> float``: feed the token-mean restricted entropy (nats) measured during the update of
  global step ``step``; returns the coefficient for the next step. Steps must increase: a step that is not after the
  last one is refused, so a re-run step cannot move the coefficient twice.
* ``.state_dict()`` / ``.load_state_dict(state)``: JSON-serialisable state for checkpoints, so that a resumed run
  continues with the coefficient it had; :func:`controller_from_state` rebuilds any registered controller from it.

The registered controllers (:data:`CONTROLLERS`, by name):

``band`` (:class:`AdaptiveCoefficient`; AEnt, arXiv 2509.03493, Algorithm 1)
    Rises below an entropy band and falls above it, in proportion to the distance.
``target`` (:class:`TargetCoefficient`; Skywork-OR1, arXiv 2505.22312)
    Moves by a fixed ``delta`` toward a target entropy and switches the bonus off while the entropy is at or above
    the target.
``constant`` (:class:`ConstantCoefficient`)
    A fixed coefficient that still records the measurements.

A new rule is one subclass of :class:`Controller` decorated with ``@register_controller("name")``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Dict, Optional, Type, TypeVar

from aent.validate import check_band, check_bounds, check_nonnegative, check_steps, finite_number

__all__ = [
    "CONTROLLERS",
    "AdaptiveCoefficient",
    "ConstantCoefficient",
    "Controller",
    "TargetCoefficient",
    "build_coefficient",
    "build_controller",
    "coefficient_from_state",
    "controller_from_state",
    "register_controller",
]

#: Registered controller classes by name (:func:`register_controller`).
CONTROLLERS: Dict[str, Type[Controller]] = {}
# names under which older checkpoints saved a controller
_OLD_NAMES = {"adaptive": "band"}

_C = TypeVar("_C", bound=Type["Controller"])


def register_controller(name: str) -> Callable[[_C], _C]:
    """Class decorator: register a :class:`Controller` subclass under ``name`` (its ``name`` attribute is set)."""

    def decorator(cls: _C) -> _C:
        if not (isinstance(cls, type) and issubclass(cls, Controller)):
            raise TypeError(f"register_controller({name!r}) decorates a Controller subclass, got {cls!r}")
        if name in CONTROLLERS and CONTROLLERS[name] is not cls:
            raise ValueError(f"a controller named {name!r} is already registered ({CONTROLLERS[name].__name__})")
        cls.name = name
        CONTROLLERS[name] = cls
        return cls

    return decorator


class Controller:
    """The protocol every entropy coefficient follows; subclasses implement :meth:`_advance` and :meth:`config`.

    The base keeps the bookkeeping every controller shares: ``step`` (the last global step fed), ``last_entropy``
    (the last finite measurement), ``num_updates`` (updates that applied the rule) and ``num_nonfinite`` (NaN or
    infinite measurements, counted and otherwise ignored). A subclass holds its dynamic state in ``_state()`` /
    ``_load_state()`` on top of these and provides ``value``.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self.step: Optional[int] = None
        self.last_entropy: Optional[float] = None
        self.num_updates = 0
        self.num_nonfinite = 0

    value: float  # the coefficient the loss uses now (an attribute or a property of the subclass)

    # -- the rule ----------------------------------------------------------------------------------------------
    def _advance(self, entropy: float, step: int) -> bool:
        """Apply the rule to a finite measurement; return whether it was applied (False during a warm-up)."""
        raise NotImplementedError

    def config(self) -> Dict[str, Any]:
        """The constructor's keyword arguments: ``type(self)(**self.config())`` builds the same controller."""
        raise NotImplementedError

    def _state(self) -> Dict[str, Any]:
        """Dynamic state beyond the shared bookkeeping (JSON-serialisable)."""
        return {"value": self.value}

    def _load_state(self, state: Dict[str, Any]) -> None:
        raise NotImplementedError

    # -- the protocol ------------------------------------------------------------------------------------------
    def update(self, entropy: float, step: int) -> float:
        """Feed the token-mean entropy (nats) measured during global step ``step``; return the next step's value.

        ``step`` must be after the last step fed (a re-run step would move the coefficient twice). A NaN or
        infinite measurement is counted in ``num_nonfinite`` and leaves the coefficient unchanged.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"step must be an integer global step, got {step!r}")
        if self.step is not None and step <= self.step:
            raise ValueError(
                f"step {step} is not after the last step fed to the {self.name} controller ({self.step}): each global "
                "step updates the coefficient once; pass the next global step (or restore the state of an earlier one "
                "with load_state_dict before re-running it)"
            )
        entropy = float(entropy)
        self.step = step
        if not math.isfinite(entropy):
            self.num_nonfinite += 1
            return self.value
        self.last_entropy = entropy
        if self._advance(entropy, step):
            self.num_updates += 1
        return self.value

    def state_dict(self) -> Dict[str, Any]:
        """JSON-serialisable state: the dynamic values plus the configuration they were produced with."""
        return {
            "kind": self.name,
            **self._state(),
            "step": self.step,
            "last_entropy": self.last_entropy,
            "num_updates": self.num_updates,
            "num_nonfinite": self.num_nonfinite,
            "config": self.config(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the dynamic state saved by :meth:`state_dict`.

        The configuration stays the one this object was built with (a resumed run may change bounds or targets);
        restored values are clipped into the current range.
        """
        if not isinstance(state, dict) or "value" not in state:
            raise ValueError(f"not a coefficient state (expected a dict with 'value'), got {state!r}")
        kind = _OLD_NAMES.get(state.get("kind", self.name), state.get("kind", self.name))
        if kind != self.name:
            raise ValueError(f"state was saved by a {state.get('kind')!r} coefficient, this one is {self.name!r}")
        self._load_state(state)
        step = state.get("step")
        self.step = None if step is None else int(step)
        last = state.get("last_entropy")
        self.last_entropy = None if last is None else float(last)
        self.num_updates = int(state.get("num_updates", 0))
        self.num_nonfinite = int(state.get("num_nonfinite", 0))

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({cfg}; value={self.value!r}, step={self.step!r})"


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


@register_controller("band")
class AdaptiveCoefficient(Controller):
    """AEnt's adaptive entropy coefficient (Algorithm 1 of arXiv 2509.03493), registered as ``band``.

    After each global step ``step >= warmup_steps`` with measured token-mean restricted entropy ``H`` (nats)::

        value <- clip(value - lr * (min(0, H - entropy_low) + max(0, H - entropy_high))
                      - lr * reg * (value - init), coef_min, coef_max)

    Below the band the coefficient rises in proportion to the shortfall, above it it falls, inside it only the
    optional pull toward ``init`` acts. The new value applies from the next step on.

    Args (keyword-only):
        init: starting coefficient ``lambda_0`` (paper: 0.002 for setting a, 3e-4 for b).
        entropy_low, entropy_high: target band of the entropy in nats per token (a: [0.15, 0.24];
            b: [0.35, 0.62]). ``entropy_low == entropy_high`` is a single target.
        lr: step size of the controller (a: 0.002; b: 1e-4). ``lr=0`` keeps the coefficient constant.
        coef_min, coef_max: clipping range (a: [6e-4, 9e-3]; b: [4e-5, 1e-3]); ``init`` must lie inside.
        warmup_steps: the coefficient stays at ``init`` while ``step < warmup_steps`` (a: 30; b: 156).
        reg: strength of the pull toward ``init`` (default 0, as in the paper).
    """

    def __init__(
        self,
        *,
        init: float,
        entropy_low: float,
        entropy_high: float,
        lr: float,
        coef_min: float,
        coef_max: float,
        warmup_steps: int = 0,
        reg: float = 0.0,
    ) -> None:
        super().__init__()
        self.entropy_low, self.entropy_high = check_band("entropy_low", entropy_low, "entropy_high", entropy_high)
        self.lr = check_nonnegative("lr", lr, "0 keeps the coefficient constant")
        self.reg = check_nonnegative("reg", reg)
        self.warmup_steps = check_steps("warmup_steps", warmup_steps)
        self.init, self.coef_min, self.coef_max = check_bounds("init", init, "coef_min", coef_min, "coef_max", coef_max)
        self.value = self.init

    def _advance(self, entropy: float, step: int) -> bool:
        if step < self.warmup_steps:
            return False
        signal = min(0.0, entropy - self.entropy_low) + max(0.0, entropy - self.entropy_high)
        new = self.value - self.lr * signal - self.lr * self.reg * (self.value - self.init)
        self.value = _clip(new, self.coef_min, self.coef_max)
        return True

    def config(self) -> Dict[str, Any]:
        return {
            "init": self.init,
            "entropy_low": self.entropy_low,
            "entropy_high": self.entropy_high,
            "lr": self.lr,
            "coef_min": self.coef_min,
            "coef_max": self.coef_max,
            "warmup_steps": self.warmup_steps,
            "reg": self.reg,
        }

    def _load_state(self, state: Dict[str, Any]) -> None:
        self.value = _clip(finite_number("state['value']", state["value"]), self.coef_min, self.coef_max)


@register_controller("constant")
class ConstantCoefficient(Controller):
    """A fixed entropy coefficient with the controller's interface (the band controller at ``lr = 0``).

    Measurements are still recorded (``last_entropy``, ``step``), so logs and checkpoints look the same whichever
    coefficient a run uses. ``value`` is its one argument.
    """

    def __init__(self, value: float) -> None:
        super().__init__()
        self.init = check_nonnegative("value", value, "a negative coefficient would minimise entropy")
        self.value = self.init

    def _advance(self, entropy: float, step: int) -> bool:
        return False

    def config(self) -> Dict[str, Any]:
        return {"value": self.init}

    def _load_state(self, state: Dict[str, Any]) -> None:
        finite_number("state['value']", state["value"])  # the configured value stays

    def __repr__(self) -> str:
        return f"ConstantCoefficient({self.value!r})"


@register_controller("target")
class TargetCoefficient(Controller):
    """Skywork-OR1's target-entropy controller (arXiv 2505.22312; also TRL's GRPOTrainer), registered as ``target``.

    State: the coefficient ``c`` (``.coef``) and a gate ``g`` (starts open). After each global step
    ``step >= warmup_steps`` with measured token-mean entropy ``H`` (nats)::

        c <- clip(c + delta if H < target else c - delta, coef_min, coef_max)
        g <- H < target

    The next step's bonus uses ``c * g``: ``.value`` is ``c`` while the gate is open and 0 while it is closed (the
    entropy at or above the target). During the warm-up ``c`` stays at ``init`` and the gate open. Skywork measures
    ``H`` as the sampled-token estimate ``-mean(log pi(a_t))`` of the rollout policy; here it is the token-mean
    entropy of the distribution the bonus uses, measured during the update (as TRL does).

    Args (keyword-only):
        init: starting coefficient (Skywork-OR1: 0).
        target: target entropy in nats per token (Skywork-OR1: 0.2). Required.
        delta: change of the coefficient per step (Skywork-OR1: 1e-4).
        coef_min, coef_max: clipping range of ``c`` (Skywork-OR1: [0, 0.005]); ``init`` must lie inside.
        warmup_steps: global steps before the rule applies (default 0).
    """

    def __init__(
        self,
        *,
        init: float,
        target: Optional[float] = None,
        delta: float,
        coef_min: float,
        coef_max: float,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if target is None:
            raise ValueError(
                "target is required: the entropy (nats per token) the target controller steers toward "
                "(Skywork-OR1 uses 0.2)"
            )
        self.target = check_nonnegative("target", target, "an entropy is never negative")
        self.delta = check_nonnegative("delta", delta, "0 keeps the coefficient at init")
        self.warmup_steps = check_steps("warmup_steps", warmup_steps)
        self.init, self.coef_min, self.coef_max = check_bounds("init", init, "coef_min", coef_min, "coef_max", coef_max)
        self.coef = self.init
        self.gate = True

    @property
    def value(self) -> float:  # type: ignore[override]
        """The coefficient the loss uses: ``coef`` while the gate is open, 0 while it is closed."""
        return self.coef if self.gate else 0.0

    def _advance(self, entropy: float, step: int) -> bool:
        if step < self.warmup_steps:
            return False
        below = entropy < self.target
        self.coef = _clip(self.coef + (self.delta if below else -self.delta), self.coef_min, self.coef_max)
        self.gate = below
        return True

    def config(self) -> Dict[str, Any]:
        return {
            "init": self.init,
            "target": self.target,
            "delta": self.delta,
            "coef_min": self.coef_min,
            "coef_max": self.coef_max,
            "warmup_steps": self.warmup_steps,
        }

    def _state(self) -> Dict[str, Any]:
        return {"value": self.value, "coef": self.coef, "gate": self.gate}

    def _load_state(self, state: Dict[str, Any]) -> None:
        if "coef" not in state or not isinstance(state.get("gate"), bool):
            raise ValueError(f"not a target controller state (expected 'coef' and a bool 'gate'), got {state!r}")
        self.coef = _clip(finite_number("state['coef']", state["coef"]), self.coef_min, self.coef_max)
        self.gate = state["gate"]

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"TargetCoefficient({cfg}; coef={self.coef!r}, gate={self.gate!r}, step={self.step!r})"


def build_controller(name: str, **kwargs: Any) -> Controller:
    """A fresh controller of the registered ``name`` (``band``, ``target``, ``constant``, ...) from its keywords."""
    if name not in CONTROLLERS:
        raise ValueError(f"controller must be one of {tuple(CONTROLLERS)}, got {name!r}")
    return CONTROLLERS[name](**kwargs)


def controller_from_state(state: Dict[str, Any]) -> Controller:
    """Rebuild a controller (configuration and state) from :meth:`Controller.state_dict` output.

    Checkpoints of older versions, whose band controller saved the kind ``"adaptive"``, load as ``band``.
    """
    if not isinstance(state, dict):
        raise ValueError(f"not a coefficient state (expected a dict), got {state!r}")
    kind = _OLD_NAMES.get(state.get("kind"), state.get("kind"))
    if kind not in CONTROLLERS:
        raise ValueError(f"unknown coefficient kind {state.get('kind')!r} (expected one of {tuple(CONTROLLERS)})")
    config = dict(state.get("config") or {})
    if kind == "constant" and not config:
        config = {"value": state["value"]}
    controller = CONTROLLERS[kind](**config)
    controller.load_state_dict(state)
    return controller


#: The former name of :func:`controller_from_state`.
coefficient_from_state = controller_from_state


def build_coefficient(
    init: float,
    *,
    lr: float = 0.0,
    entropy_low: Optional[float] = None,
    entropy_high: Optional[float] = None,
    coef_min: Optional[float] = None,
    coef_max: Optional[float] = None,
    warmup_steps: int = 0,
    reg: float = 0.0,
) -> Controller:
    """The band controller the option values describe: :class:`AdaptiveCoefficient` for ``lr > 0``, else
    :class:`ConstantCoefficient` at ``init`` (the band, bounds, warm-up and ``reg`` are then unused).

    With ``lr > 0`` the band (``entropy_low``, ``entropy_high``) and a range ``coef_min < coef_max`` are required: a
    controller without them could never move the coefficient the way the band rule means.
    """
    lr = check_nonnegative("lr", lr, "0 keeps the coefficient constant")
    if lr == 0:
        return ConstantCoefficient(init)
    missing = [name for name, v in (("entropy_low", entropy_low), ("entropy_high", entropy_high)) if v is None]
    if missing:
        raise ValueError(
            f"lr={lr} > 0 runs the band controller, which needs its entropy band: set {' and '.join(missing)} "
            "(nats per token; the paper's setting a uses [0.15, 0.24]), or lr=0 for a constant coefficient"
        )
    if coef_min is None or coef_max is None or not float(coef_min) < float(coef_max):
        raise ValueError(
            f"lr={lr} > 0 runs the band controller, which needs a range coef_min < coef_max to move in, got "
            f"coef_min={coef_min!r}, coef_max={coef_max!r} (the paper's setting a uses [6e-4, 9e-3]), or lr=0 for a "
            "constant coefficient"
        )
    return AdaptiveCoefficient(
        init=init,
        entropy_low=entropy_low,
        entropy_high=entropy_high,
        lr=lr,
        coef_min=coef_min,
        coef_max=coef_max,
        warmup_steps=warmup_steps,
        reg=reg,
    )
