"""``aent.build_coefficient``: the option values -> a constant (``lr = 0``) or adaptive coefficient."""

from __future__ import annotations

import pytest

import aent


def test_lr_zero_gives_a_constant_coefficient_at_init():
    coef = aent.build_coefficient(0.01, entropy_low=0.5, entropy_high=0.6, coef_min=0.0, coef_max=1.0)
    assert isinstance(coef, aent.ConstantCoefficient) and coef.value == 0.01
    coef.update(0.0, step=5)  # far below the band: a constant does not move
    assert coef.value == 0.01


def test_positive_lr_gives_the_controller_with_every_setting():
    kwargs = dict(lr=0.5, entropy_low=0.2, entropy_high=0.3, coef_min=0.001, coef_max=1.0, warmup_steps=2, reg=0.1)
    coef = aent.build_coefficient(0.01, **kwargs)
    assert type(coef) is aent.AdaptiveCoefficient
    assert coef.config() == {"init": 0.01, **kwargs}
    coef.update(0.0, step=1)  # warm-up: unchanged
    assert coef.value == 0.01
    coef.update(0.0, step=2)  # below the band: rises by lr * 0.2
    assert coef.value == pytest.approx(0.01 + 0.5 * 0.2)


def test_bad_values_are_reported_by_name():
    with pytest.raises(ValueError, match="lr must be >= 0"):
        aent.build_coefficient(0.01, lr=-1.0)
    with pytest.raises(ValueError, match="init"):
        aent.build_coefficient(0.5, lr=0.1, entropy_low=0.1, entropy_high=0.2, coef_min=0.0, coef_max=0.1)
