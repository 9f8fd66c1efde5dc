"""Entropy coefficients: the AEnt adaptive controller (paper Algorithm 1; docs/METHOD.md) and a constant one.

Both share one interface so that a trainer never branches on the kind:

* ``.value``: the coefficient to use for the current step.
* ``.update(entropy, step) -> float``: feed the token-mean clamped entropy (nats) measured during the update of
  global step ``step``; returns the coefficient for the next step.
* ``.state_dict()`` / ``.load_state_dict(state)``: JSON-serialisable state for checkpoints, so that a resumed run
  continues with the coefficient it had.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

from aent.validate import check_band, check_bounds, check_nonnegative, check_steps, finite_number

__all__ = ["AdaptiveCoefficient", "ConstantCoefficient", "build_coefficient", "coefficient_from_state"]


class AdaptiveCoefficient:
    """AEnt's adaptive entropy coefficient (Algorithm 1 of arXiv 2509.03493; docs/METHOD.md).

    After each global step ``step >= warmup_steps`` with measured token-mean clamped entropy ``H`` (nats)::

        value <- clip(value - lr * (min(0, H - entropy_low) + max(0, H - entropy_high))
                      - lr * reg * (value - init), coef_min, coef_max)

    Below the band the coefficient rises in proportion to the shortfall, above it it falls, inside it only the
    optional pull toward ``init`` acts. A non-finite measurement leaves the value unchanged and is counted in
    ``num_nonfinite``.

    Args:
        init: starting coefficient ``lambda_0`` (paper: 0.002 for setting a, 3e-4 for b).
        entropy_low, entropy_high: target band of the clamped entropy in nats per token (a: [0.15, 0.24];
            b: [0.35, 0.62]). ``entropy_low == entropy_high`` is a single target.
        lr: step size of the controller (a: 0.002; b: 1e-4). ``lr=0`` keeps the coefficient constant.
        coef_min, coef_max: clipping range (a: [6e-4, 9e-3]; b: [4e-5, 1e-3]); ``init`` must lie inside.
        warmup_steps: the coefficient stays at ``init`` while ``step < warmup_steps`` (a: 30; b: 156).
        reg: strength of the pull toward ``init`` (default 0, as in the paper).
    """

    kind = "adaptive"

    def __init__(
        self,
        init: float,
        entropy_low: float,
        entropy_high: float,
        lr: float,
        coef_min: float,
        coef_max: float,
        warmup_steps: int = 0,
        reg: float = 0.0,
    ) -> None:
        self.entropy_low, self.entropy_high = check_band("entropy_low", entropy_low, "entropy_high", entropy_high)
        self.lr = check_nonnegative("lr", lr, "0 keeps the coefficient constant")
        self.reg = check_nonnegative("reg", reg)
        self.warmup_steps = check_steps("warmup_steps", warmup_steps)
        self.init, self.coef_min, self.coef_max = check_bounds("init", init, "coef_min", coef_min, "coef_max", coef_max)
        self.value = self.init
        self.step: Optional[int] = None
        self.last_entropy: Optional[float] = None
        self.num_updates = 0
        self.num_nonfinite = 0

    def _next(self, entropy: float) -> float:
        signal = min(0.0, entropy - self.entropy_low) + max(0.0, entropy - self.entropy_high)
        new = self.value - self.lr * signal - self.lr * self.reg * (self.value - self.init)
        return min(max(new, self.coef_min), self.coef_max)

    def update(self, entropy: float, step: int) -> float:
        """Feed the token-mean clamped entropy (nats) measured during global step ``step``; return the new value.

        The new value applies from the next step on. Measurements before ``warmup_steps`` are recorded but do not
        move the coefficient. A NaN or infinite measurement is counted in ``num_nonfinite`` and ignored.
        """
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"step must be an integer global step, got {step!r}")
        entropy = float(entropy)
        self.step = step
        if not math.isfinite(entropy):
            self.num_nonfinite += 1
            return self.value
        self.last_entropy = entropy
        if step >= self.warmup_steps:
            self.value = self._next(entropy)
            self.num_updates += 1
        return self.value

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

    def state_dict(self) -> Dict[str, Any]:
        """JSON-serialisable state: the dynamic values plus the configuration they were produced with."""
        return {
            "kind": self.kind,
            "value": self.value,
            "step": self.step,
            "last_entropy": self.last_entropy,
            "num_updates": self.num_updates,
            "num_nonfinite": self.num_nonfinite,
            "config": self.config(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the dynamic state saved by :meth:`state_dict`.

        The configuration stays the one this object was built with (a resumed run may change the band or bounds);
        the restored value is clipped into the current ``[coef_min, coef_max]``.
        """
        if not isinstance(state, dict) or "value" not in state:
            raise ValueError(f"not a coefficient state (expected a dict with 'value'), got {state!r}")
        if state.get("kind", self.kind) != self.kind:
            raise ValueError(f"state was saved by a {state.get('kind')!r} coefficient, this one is {self.kind!r}")
        value = finite_number("state['value']", state["value"])
        self.value = min(max(value, self.coef_min), self.coef_max)
        step = state.get("step")
        self.step = None if step is None else int(step)
        last = state.get("last_entropy")
        self.last_entropy = None if last is None else float(last)
        self.num_updates = int(state.get("num_updates", 0))
        self.num_nonfinite = int(state.get("num_nonfinite", 0))

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({cfg}; value={self.value!r}, step={self.step!r})"


class ConstantCoefficient(AdaptiveCoefficient):
    """A fixed entropy coefficient with the controller's interface (docs/METHOD.md: the controller with ``lr = 0``).

    Measurements are still recorded (``last_entropy``, ``step``), so logs and checkpoints look the same whichever
    coefficient a run uses.
    """

    kind = "constant"

    def __init__(self, value: float) -> None:
        value = check_nonnegative("value", value, "a negative coefficient would minimise entropy")
        super().__init__(init=value, entropy_low=0.0, entropy_high=0.0, lr=0.0, coef_min=value, coef_max=value)

    def config(self) -> Dict[str, Any]:
        return {"value": self.init}

    def __repr__(self) -> str:
        return f"ConstantCoefficient({self.value!r})"


def coefficient_from_state(state: Dict[str, Any]) -> AdaptiveCoefficient:
    """Rebuild a coefficient (configuration and state) from :meth:`AdaptiveCoefficient.state_dict` output."""
    kind = state.get("kind")
    config = state.get("config") or {}
    if kind == "constant":
        coef = ConstantCoefficient(config.get("value", state["value"]))
    elif kind == "adaptive":
        coef = AdaptiveCoefficient(**config)
    else:
        raise ValueError(f"unknown coefficient kind {kind!r} (expected 'adaptive' or 'constant')")
    coef.load_state_dict(state)
    return coef


def build_coefficient(
    init: float,
    *,
    lr: float = 0.0,
    entropy_low: float = 0.0,
    entropy_high: float = 0.0,
    coef_min: Optional[float] = None,
    coef_max: Optional[float] = None,
    warmup_steps: int = 0,
    reg: float = 0.0,
) -> AdaptiveCoefficient:
    """The coefficient the option values describe: :class:`AdaptiveCoefficient` for ``lr > 0``, else
    :class:`ConstantCoefficient` at ``init`` (the band, bounds, warm-up and ``reg`` are then unused).

    ``coef_min``/``coef_max`` default to ``init`` (no room to move), so an adaptive coefficient needs them.
    """
    lr = check_nonnegative("lr", lr, "0 keeps the coefficient constant")
    if lr == 0:
        return ConstantCoefficient(init)
    return AdaptiveCoefficient(
        init=init,
        entropy_low=entropy_low,
        entropy_high=entropy_high,
        lr=lr,
        coef_min=init if coef_min is None else coef_min,
        coef_max=init if coef_max is None else coef_max,
        warmup_steps=warmup_steps,
        reg=reg,
    )
