"""The paper's two AEnt settings (arXiv 2509.03493, section 5; docs/METHOD.md, "Paper settings"): the one source
that :class:`aent.verl.AEntOptions` takes its defaults from (setting a) and that the recipes' tests and the docs'
tables are checked against. Pure Python.

Entropies are nats per response token of the clamped (renormalised) distribution; the coefficients are loss per nat.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

__all__ = ["OPTION_NAMES", "PAPER_SETTINGS", "SETTING_A", "SETTING_B"]

# AEnt options (the names of aent.verl.AEntOptions) in the order the docs' tables list them
OPTION_NAMES = ("clamp_p", "coef_init", "entropy_low", "entropy_high", "lr", "coef_min", "coef_max", "warmup_steps")

# (a) Qwen2.5-Math-1.5B on MATH train, 512 prompts x 16 rollouts, response 3072, actor lr 2e-6, mini-batch 128
SETTING_A: Mapping[str, float] = MappingProxyType(
    {
        "clamp_p": 0.33,
        "coef_init": 0.002,
        "entropy_low": 0.15,
        "entropy_high": 0.24,
        "lr": 0.002,
        "coef_min": 6e-4,
        "coef_max": 9e-3,
        "warmup_steps": 30,
    }
)

# (b) R1-Distill-Qwen-1.5B on 40k OpenR1-Math, 256 prompts x 8 rollouts, response 7168, actor lr 1e-6, mini-batch 64
SETTING_B: Mapping[str, float] = MappingProxyType(
    {
        "clamp_p": 0.25,
        "coef_init": 3e-4,
        "entropy_low": 0.35,
        "entropy_high": 0.62,
        "lr": 1e-4,
        "coef_min": 4e-5,
        "coef_max": 1e-3,
        "warmup_steps": 156,
    }
)

PAPER_SETTINGS: Mapping[str, Mapping[str, float]] = MappingProxyType({"a": SETTING_A, "b": SETTING_B})
