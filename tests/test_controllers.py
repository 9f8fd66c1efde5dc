"""The controller protocol and registry, and the target controller (Skywork-OR1) against a hand-written sequence."""

from __future__ import annotations

import json

import pytest

import aent
from aent.coefficient import CONTROLLERS, Controller, register_controller

SKYWORK = dict(init=0.0, target=0.2, delta=1e-4, coef_min=0.0, coef_max=0.005)
BAND = dict(init=0.002, entropy_low=0.15, entropy_high=0.24, lr=0.002, coef_min=6e-4, coef_max=9e-3)


def test_target_controller_follows_a_hand_written_sequence():
    c = aent.TargetCoefficient(init=0.0003, target=0.2, delta=1e-4, coef_min=0.0, coef_max=0.0005, warmup_steps=2)
    assert c.value == 0.0003 and c.gate  # the gate starts open
    # (step, measured entropy, coef after, gate after, value the next step uses), each written out by hand
    script = [
        (1, 0.50, 0.0003, True, 0.0003),  # warm-up: nothing moves, the gate stays open
        (2, 0.10, 0.0004, True, 0.0004),  # below the target: +delta, open
        (3, 0.15, 0.0005, True, 0.0005),  # below: +delta reaches coef_max
        (4, 0.19, 0.0005, True, 0.0005),  # below: clipped at coef_max
        (5, 0.20, 0.0004, False, 0.0),  # at the target: -delta and the gate closes (the bonus is off)
        (6, 0.30, 0.0003, False, 0.0),  # above: -delta, still closed
        (7, 0.10, 0.0004, True, 0.0004),  # below again: +delta, open
        (8, 0.90, 0.0003, False, 0.0),
        (9, 0.90, 0.0002, False, 0.0),
        (10, 0.90, 0.0001, False, 0.0),
        (11, 0.90, 0.0, False, 0.0),
        (12, 0.90, 0.0, False, 0.0),  # clipped at coef_min
    ]
    for step, h, coef, gate, value in script:
        assert c.update(h, step) == pytest.approx(value, abs=1e-15)
        assert c.coef == pytest.approx(coef, abs=1e-15) and c.gate is gate
        assert c.value == pytest.approx(value, abs=1e-15)
        assert c.step == step and c.last_entropy == h
    assert c.num_updates == len(script) - 1  # the warm-up step records but does not update


def test_target_controller_state_round_trips_mid_sequence():
    seq = [0.1, 0.3, 0.25, 0.05, 0.5, 0.1, 0.1, 0.4]
    a = aent.TargetCoefficient(**SKYWORK)
    for step, h in enumerate(seq[:5], start=1):
        a.update(h, step)
    assert not a.gate  # 0.5 >= 0.2: closed at the save
    saved = json.loads(json.dumps(a.state_dict()))
    assert saved["kind"] == "target" and saved["gate"] is False and saved["step"] == 5
    assert saved["coef"] == a.coef and saved["value"] == 0.0
    b = aent.TargetCoefficient(**SKYWORK)
    b.load_state_dict(saved)
    c = aent.controller_from_state(saved)
    assert isinstance(c, aent.TargetCoefficient) and c.config() == a.config()
    assert (b.coef, b.gate, b.step, b.value) == (a.coef, a.gate, a.step, a.value) == (c.coef, c.gate, c.step, c.value)
    for step, h in enumerate(seq[5:], start=6):
        assert a.update(h, step) == b.update(h, step) == c.update(h, step)
    assert a.state_dict() == b.state_dict() == c.state_dict()


@pytest.mark.parametrize(
    "make",
    [
        lambda: aent.TargetCoefficient(**SKYWORK),
        lambda: aent.AdaptiveCoefficient(**BAND),
        lambda: aent.ConstantCoefficient(0.001),
    ],
    ids=["target", "band", "constant"],
)
def test_every_controller_refuses_a_step_that_is_not_after_the_last(make):
    c = make()
    c.update(0.1, 3)
    state = c.state_dict()
    for step in (3, 2):
        with pytest.raises(ValueError, match=rf"step {step} is not after the last step .*\(3\)"):
            c.update(0.0, step)
    assert c.state_dict() == state  # the refused update changed nothing
    c.update(0.1, 4)
    # a resumed controller refuses the saved step too: the saved one already counted it
    resumed = aent.controller_from_state(c.state_dict())
    with pytest.raises(ValueError, match="step 4 is not after"):
        resumed.update(0.1, 4)


def test_target_controller_ignores_nonfinite_measurements():
    c = aent.TargetCoefficient(**{**SKYWORK, "init": 0.001})
    c.update(0.5, 1)  # closes the gate
    for step, bad in enumerate([float("nan"), float("inf")], start=2):
        assert c.update(bad, step) == 0.0
    assert c.num_nonfinite == 2 and c.coef == pytest.approx(0.0009) and not c.gate


def test_registry_holds_every_controller_and_builds_them_by_name():
    assert {"band", "target", "constant"} <= set(aent.CONTROLLERS)
    assert aent.CONTROLLERS["band"] is aent.AdaptiveCoefficient
    for name, kwargs in [("band", BAND), ("target", SKYWORK), ("constant", {"value": 0.01})]:
        c = aent.build_controller(name, **kwargs)
        assert isinstance(c, Controller) and c.name == name and c.state_dict()["kind"] == name
        assert type(aent.controller_from_state(c.state_dict())) is type(c)
    with pytest.raises(ValueError, match=r"controller must be one of \('band', .*'bogus'"):
        aent.build_controller("bogus")


def test_a_new_rule_is_one_class_and_one_name():
    try:

        @register_controller("halving")
        class Halving(Controller):
            def __init__(self, *, init: float) -> None:
                super().__init__()
                self.init = self.value = init

            def _advance(self, entropy, step):
                self.value /= 2
                return True

            def config(self):
                return {"init": self.init}

            def _load_state(self, state):
                self.value = state["value"]

        c = aent.build_controller("halving", init=1.0)
        c.update(0.1, 1)
        c.update(0.1, 2)
        restored = aent.controller_from_state(json.loads(json.dumps(c.state_dict())))
        assert isinstance(restored, Halving) and restored.value == 0.25 and restored.step == 2
        with pytest.raises(ValueError, match="already registered"):
            register_controller("band")(Halving)
    finally:
        CONTROLLERS.pop("halving", None)


def test_checkpoints_of_older_versions_load_as_band():
    old = {
        "kind": "adaptive",
        "value": 0.0031,
        "step": 40,
        "last_entropy": 0.12,
        "num_updates": 10,
        "num_nonfinite": 0,
        "config": {**BAND, "warmup_steps": 30, "reg": 0.0},
    }
    c = aent.coefficient_from_state(old)
    assert type(c) is aent.AdaptiveCoefficient and c.value == 0.0031 and c.step == 40
    fresh = aent.AdaptiveCoefficient(**BAND, warmup_steps=30)
    fresh.load_state_dict(old)
    assert fresh.value == 0.0031
    with pytest.raises(ValueError, match="saved by a 'adaptive' coefficient, this one is 'target'"):
        aent.TargetCoefficient(**SKYWORK).load_state_dict(old)


def test_constructor_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        aent.AdaptiveCoefficient(0.002, 0.15, 0.24, 0.002, 6e-4, 9e-3)
    with pytest.raises(TypeError):
        aent.TargetCoefficient(0.0, 0.2, 1e-4, 0.0, 0.005)


@pytest.mark.parametrize(
    "override, match",
    [
        ({"target": None}, r"target is required"),
        ({"target": -0.1}, r"target must be >= 0"),
        ({"delta": -1e-4}, r"delta must be >= 0"),
        ({"init": 0.01}, r"init \(0.01\) must lie inside \[coef_min, coef_max\]"),
        ({"coef_min": 0.01, "coef_max": 0.001}, r"coef_min \(0.01\) must not exceed coef_max"),
        ({"warmup_steps": -1}, r"warmup_steps"),
    ],
)
def test_bad_target_settings_are_named(override, match):
    kwargs = {**SKYWORK, **override}
    if override.get("target", 0) is None:
        kwargs.pop("target")
    with pytest.raises(ValueError, match=match):
        aent.TargetCoefficient(**kwargs)


def test_bad_target_state_is_refused():
    c = aent.TargetCoefficient(**SKYWORK)
    with pytest.raises(ValueError, match="not a target controller state"):
        c.load_state_dict({"kind": "target", "value": 0.0})
    with pytest.raises(ValueError, match=r"state\['coef'\] must be a finite number"):
        c.load_state_dict({**c.state_dict(), "coef": float("nan")})


def test_build_coefficient_refuses_a_band_controller_that_could_not_move():
    with pytest.raises(ValueError, match=r"lr=0.1 > 0 runs the band controller.*set entropy_low and entropy_high"):
        aent.build_coefficient(0.002, lr=0.1, coef_min=0.0, coef_max=0.01)
    with pytest.raises(ValueError, match=r"needs a range coef_min < coef_max.*coef_min=None"):
        aent.build_coefficient(0.002, lr=0.1, entropy_low=0.1, entropy_high=0.2)
    with pytest.raises(ValueError, match=r"coef_min=0.002, coef_max=0.002"):
        aent.build_coefficient(0.002, lr=0.1, entropy_low=0.1, entropy_high=0.2, coef_min=0.002, coef_max=0.002)
    assert isinstance(aent.build_coefficient(0.002), aent.ConstantCoefficient)
