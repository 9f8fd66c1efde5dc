"""One validation of the AEnt settings (``aent/validate.py``): the core, the verl loss and the verl options refuse the
same values with the same message, each under its own name for the setting."""

from __future__ import annotations

import re

import pytest
import torch
from aent_test_support.deps import require

import aent
from aent.verl.options import AEntOptions

PAPER_A = dict(init=0.002, entropy_low=0.15, entropy_high=0.24, lr=0.002, coef_min=6e-4, coef_max=9e-3)
CORE_TO_OPTION = {"init": "coef_init"}


def _message(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


def _same(core: str, verl: str) -> None:
    """The verl message is the core one with every setting name prefixed by ``aent.`` (``init`` -> ``coef_init``)."""
    for core_name, option in CORE_TO_OPTION.items():
        core = re.sub(rf"\b{core_name}\b", option, core)
    assert re.sub(r"aent\.", "", verl) == core


@pytest.mark.parametrize("clamp_p", [1.0, -0.1, 1.5, True, "0.3", float("nan")])
def test_clamp_p_is_refused_alike_everywhere(clamp_p):
    core = _message(lambda: aent.clamped_entropy(torch.zeros(2, 5), clamp_p))
    options = _message(lambda: AEntOptions(clamp_p=clamp_p))
    assert "clamp_p must be a number in [0, 1)" in core
    _same(core, options)
    require("verl", "verl")
    from aent.verl.loss import AEntPolicyLoss

    class Config:
        entropy_coeff = 0.0

    loss = _message(lambda: AEntPolicyLoss(Config(), clamp_p))
    assert "aent.clamp_p must be a number in [0, 1)" in loss


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_chunk_size_is_refused_alike_everywhere(chunk_size):
    core = _message(lambda: aent.clamped_entropy(torch.zeros(2, 5), 0.3, chunk_size=chunk_size))
    options = _message(lambda: AEntOptions(chunk_size=chunk_size))
    _same(core, options)
    require("verl", "verl")
    from aent.verl.loss import AEntPolicyLoss

    class Config:
        entropy_coeff = 0.0

    _same(core, _message(lambda: AEntPolicyLoss(Config(), 0.3, chunk_size=chunk_size)))


@pytest.mark.parametrize(
    "override",
    [
        {"entropy_low": 0.3, "entropy_high": 0.2},
        {"entropy_low": -0.1},
        {"coef_min": 0.01, "coef_max": 0.001},
        {"coef_min": -1.0},
        {"init": 0.5},
        {"lr": -0.1},
        {"reg": -1.0},
    ],
)
def test_band_and_bounds_are_refused_alike_by_the_controller_and_the_options(override):
    core = _message(lambda: aent.AdaptiveCoefficient(**{**PAPER_A, **override}))
    options = {CORE_TO_OPTION.get(k, k): v for k, v in override.items()}
    _same(core, _message(lambda: AEntOptions(**options)))
