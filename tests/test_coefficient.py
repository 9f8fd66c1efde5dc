"""The adaptive coefficient (docs/METHOD.md, "Adaptive coefficient") and the constant one."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aent

PAPER_A = dict(init=0.002, entropy_low=0.15, entropy_high=0.24, lr=0.002, coef_min=6e-4, coef_max=9e-3)


def test_scripted_sequence_matches_algorithm_1():
    c = aent.AdaptiveCoefficient(**PAPER_A, warmup_steps=2)
    # (step, measured entropy, expected value after the update), each written out by hand from Algorithm 1
    script = [
        (0, 0.10, 0.002),  # warm-up: no change
        (1, 0.10, 0.002),  # warm-up: no change
        (2, 0.10, 0.002 + 0.002 * 0.05),  # below band by 0.05: rises by lr * 0.05
        (3, 0.20, 0.002 + 0.002 * 0.05),  # inside: unchanged
        (4, 0.30, 0.002 + 0.002 * 0.05 - 0.002 * 0.06),  # above by 0.06: falls by lr * 0.06
        (5, 10.0, 6e-4),  # far above: clipped at coef_min
        (6, 0.15, 6e-4),  # on the lower edge: unchanged
    ]
    for step, h, expected in script:
        assert c.update(h, step) == pytest.approx(expected, abs=1e-15)
        assert c.value == pytest.approx(expected, abs=1e-15)
        assert c.step == step and c.last_entropy == h
    assert c.num_updates == 5


def test_clip_at_coef_max_and_reg_pull():
    c = aent.AdaptiveCoefficient(init=0.002, entropy_low=0.5, entropy_high=0.6, lr=1.0, coef_min=0.0, coef_max=9e-3)
    assert c.update(0.0, 0) == 9e-3
    r = aent.AdaptiveCoefficient(
        init=0.002, entropy_low=0.1, entropy_high=0.9, lr=0.1, coef_min=0.0, coef_max=1.0, reg=0.5
    )
    r.value = 0.01
    # inside the band only the pull toward init acts: 0.01 - 0.1 * 0.5 * (0.01 - 0.002)
    assert r.update(0.5, 0) == pytest.approx(0.01 - 0.1 * 0.5 * 0.008, abs=1e-15)


def test_nonfinite_measurement_is_counted_and_ignored():
    c = aent.AdaptiveCoefficient(**PAPER_A)
    c.update(0.0, 0)
    before = c.value
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert c.update(bad, 1) == before
    assert c.num_nonfinite == 3 and c.last_entropy == 0.0


def test_state_round_trip_mid_sequence_continues_identically():
    seq = [0.05, 0.1, 0.3, 0.2, 0.01, 0.5, 0.12, 0.22, 0.4, 0.0]
    a = aent.AdaptiveCoefficient(**PAPER_A, warmup_steps=3)
    for step, h in enumerate(seq[:5]):
        a.update(h, step)
    saved = json.loads(json.dumps(a.state_dict()))  # must survive JSON
    b = aent.AdaptiveCoefficient(**PAPER_A, warmup_steps=3)
    b.load_state_dict(saved)
    c = aent.coefficient_from_state(saved)
    assert b.value == a.value and c.value == a.value and b.step == 4
    for step, h in enumerate(seq[5:], start=5):
        va, vb, vc = a.update(h, step), b.update(h, step), c.update(h, step)
        assert va == vb == vc
    assert a.state_dict() == b.state_dict() == c.state_dict()


def test_resumed_value_is_clipped_into_new_bounds():
    a = aent.AdaptiveCoefficient(**PAPER_A)
    a.value = 0.008
    b = aent.AdaptiveCoefficient(**{**PAPER_A, "coef_max": 0.005})
    b.load_state_dict(a.state_dict())
    assert b.value == 0.005


def test_bad_state_is_refused():
    a = aent.AdaptiveCoefficient(**PAPER_A)
    with pytest.raises(ValueError, match="not a coefficient state"):
        a.load_state_dict({"step": 3})
    with pytest.raises(ValueError, match="constant"):
        a.load_state_dict(aent.ConstantCoefficient(0.1).state_dict())
    with pytest.raises(ValueError, match="finite"):
        a.load_state_dict({**a.state_dict(), "value": float("nan")})


def test_constant_coefficient_records_but_never_moves():
    c = aent.ConstantCoefficient(0.003)
    for step, h in enumerate([0.0, 5.0, float("nan"), 0.2]):
        assert c.update(h, step) == 0.003
    assert c.last_entropy == 0.2 and c.step == 3 and c.num_nonfinite == 1
    d = aent.coefficient_from_state(json.loads(json.dumps(c.state_dict())))
    assert isinstance(d, aent.ConstantCoefficient) and d.value == 0.003
    assert aent.ConstantCoefficient(0.0).update(0.1, 0) == 0.0


@pytest.mark.parametrize(
    "override, field",
    [
        ({"entropy_low": 0.3, "entropy_high": 0.2}, "inverted"),
        ({"lr": -1.0}, "lr"),
        ({"init": 0.5}, "init"),
        ({"coef_min": 0.01, "coef_max": 0.001}, "coef_min"),
        ({"coef_min": -1.0}, "coef_min"),
        ({"reg": -0.1}, "reg"),
        ({"entropy_low": float("nan")}, "entropy_low"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 1.5}, "warmup_steps"),
        ({"lr": "0.1"}, "lr"),
    ],
)
def test_invalid_settings_name_the_field(override, field):
    with pytest.raises(ValueError, match=field):
        aent.AdaptiveCoefficient(**{**PAPER_A, **override})


def test_invalid_constant_and_step():
    with pytest.raises(ValueError, match="value"):
        aent.ConstantCoefficient(-0.1)
    with pytest.raises(ValueError, match="step"):
        aent.AdaptiveCoefficient(**PAPER_A).update(0.1, 1.5)


band = st.tuples(st.floats(0, 2), st.floats(0, 2)).map(sorted)


@settings(max_examples=200, deadline=None)
@given(
    band=band,
    lr=st.floats(0, 1),
    entropies=st.lists(st.floats(0, 5), min_size=1, max_size=20),
    bounds=st.tuples(st.floats(0, 0.1), st.floats(0, 0.1)).map(sorted),
)
def test_properties_direction_and_bounds(band, lr, entropies, bounds):
    lo, hi = band
    cmin, cmax = bounds
    c = aent.AdaptiveCoefficient(
        init=(cmin + cmax) / 2, entropy_low=lo, entropy_high=hi, lr=lr, coef_min=cmin, coef_max=cmax
    )
    for step, h in enumerate(entropies):
        before = c.value
        after = c.update(h, step)
        assert cmin <= after <= cmax
        if h < lo:
            assert after >= before
        elif h > hi:
            assert after <= before
        else:
            assert after == before
        if lr == 0:
            assert after == before
        assert math.isfinite(after)
