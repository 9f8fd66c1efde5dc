"""GRPO's outcome advantage (torch only), shared by the experiments; verl computes its own in the trainer."""

from __future__ import annotations

import torch

__all__ = ["grpo_advantages"]


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6, norm_by_std: bool = True) -> torch.Tensor:
    """GRPO's outcome advantage of every response, groups along the last dimension.

    ``rewards`` is ``(..., G)``: one scalar reward per response, the ``G`` responses of a prompt in one row. Returns
    ``(r - mean) / (std + eps)`` per group, with the unbiased standard deviation (``norm_by_std=False``: ``r - mean``,
    Dr. GRPO). A group whose rewards are all equal gets advantage 0. The same values as verl 0.9's
    ``compute_grpo_outcome_advantage`` for groups of at least two responses (tested).
    """
    if rewards.dim() < 1 or rewards.shape[-1] < 2:
        raise ValueError(
            f"grpo_advantages needs groups of at least 2 responses along the last dimension, got shape "
            f"{tuple(rewards.shape)} (reshape the rewards to (prompts, group_size))"
        )
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not norm_by_std:
        return centred
    return centred / (rewards.std(dim=-1, keepdim=True) + eps)
