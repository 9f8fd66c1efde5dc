"""AEnt: clamped entropy with an adaptive coefficient for LLM reinforcement learning.

"On Entropy Control in LLM-RL Algorithms" (Han Shen, arXiv 2509.03493). ``import aent`` needs torch only; the verl
adapter (:mod:`aent.verl`), the reward (:mod:`aent.reward`) and the command line load their dependencies lazily.
"""

from aent.advantage import grpo_advantages
from aent.coefficient import (
    CONTROLLERS,
    AdaptiveCoefficient,
    ConstantCoefficient,
    Controller,
    TargetCoefficient,
    build_coefficient,
    build_controller,
    coefficient_from_state,
    controller_from_state,
    register_controller,
)
from aent.entropy import (
    IMPLEMENTATIONS,
    clamped_entropy,
    entropy,
    nucleus_entropy,
    num_removed,
    restricted_entropy,
    topk_entropy,
)
from aent.fused import linear_logprobs_and_clamped_entropy
from aent.kept import KEPT_RULES, KeptSet, as_kept
from aent.logprobs import logprobs_and_clamped_entropy
from aent.loss import LOSS_AGG_MODES, aggregate, entropy_bonus

__version__ = "0.1.0"

__all__ = [
    "AdaptiveCoefficient",
    "CONTROLLERS",
    "ConstantCoefficient",
    "Controller",
    "IMPLEMENTATIONS",
    "KEPT_RULES",
    "KeptSet",
    "LOSS_AGG_MODES",
    "aggregate",
    "as_kept",
    "build_coefficient",
    "build_controller",
    "clamped_entropy",
    "coefficient_from_state",
    "controller_from_state",
    "entropy",
    "entropy_bonus",
    "grpo_advantages",
    "linear_logprobs_and_clamped_entropy",
    "logprobs_and_clamped_entropy",
    "nucleus_entropy",
    "num_removed",
    "register_controller",
    "restricted_entropy",
    "TargetCoefficient",
    "topk_entropy",
    "__version__",
]
