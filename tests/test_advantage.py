"""``aent.grpo_advantages`` (the experiments' GRPO advantage) against verl's and on its defining properties."""

from __future__ import annotations

import pytest
import torch
from aent_test_support.deps import require

import aent


def test_normalised_per_group_and_zero_for_equal_rewards():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv = aent.grpo_advantages(rewards)
    assert float(adv[0].mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(adv[0].std(unbiased=True)) == pytest.approx(1.0, rel=1e-4)
    assert adv[0, 0] > 0 > adv[0, 1]
    assert torch.equal(adv[1], torch.zeros(4))  # equal rewards: no signal
    assert torch.equal(aent.grpo_advantages(rewards, norm_by_std=False)[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_matches_verl_compute_grpo_outcome_advantage(norm_by_std):
    np = require("numpy", "demo")
    core_algos = require("verl.trainer.ppo.core_algos", "verl")
    gen = torch.Generator().manual_seed(0)
    prompts, group, length = 6, 5, 7
    rewards = (torch.rand(prompts, group, generator=gen) < 0.4).float() * torch.rand(prompts, group, generator=gen)
    rewards[2] = 0.5  # a group with equal rewards
    # verl takes token-level rewards (the outcome reward on one token), a response mask and the prompt index
    token_rewards = torch.zeros(prompts * group, length)
    ends = torch.randint(1, length, (prompts * group,), generator=gen)
    token_rewards[torch.arange(prompts * group), ends - 1] = rewards.flatten()
    mask = (torch.arange(length) < ends.unsqueeze(1)).float()
    index = np.repeat(np.arange(prompts), group)
    # shuffle the rows: verl groups by index, not by position
    perm = torch.randperm(prompts * group, generator=gen)
    verl_adv, _ = core_algos.compute_grpo_outcome_advantage(
        token_rewards[perm], mask[perm], index[perm.numpy()], epsilon=1e-6, norm_adv_by_std_in_grpo=norm_by_std
    )
    ours = aent.grpo_advantages(rewards, eps=1e-6, norm_by_std=norm_by_std).flatten()[perm]
    torch.testing.assert_close(verl_adv, ours.unsqueeze(1) * mask[perm], rtol=1e-6, atol=1e-6)


def test_rejects_groups_of_one():
    with pytest.raises(ValueError, match="at least 2 responses"):
        aent.grpo_advantages(torch.ones(4, 1))
