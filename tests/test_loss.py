"""The entropy bonus term and verl-compatible aggregation."""

import pytest
import torch
from aent_test_support.deps import require

import aent


def _batch(seed=0, bs=4, seq=9, vocab=101):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(bs, seq, vocab, generator=g) * 2
    mask = (torch.rand(bs, seq, generator=g) > 0.3).float()
    mask[-1] = 0  # a sequence with no response tokens
    return logits, mask


@pytest.mark.parametrize("mode", aent.LOSS_AGG_MODES)
def test_aggregate_matches_verl_agg_loss(mode):
    core_algos = require("verl.trainer.ppo.core_algos", "verl")
    _, mask = _batch()
    values = torch.rand(mask.shape, generator=torch.Generator().manual_seed(2))
    ours = aent.aggregate(values, mask, mode)
    theirs = core_algos.agg_loss(values, mask, mode)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=1e-6, rtol=1e-6)
    n_tok, n_seq = mask.sum(), (mask.sum(-1) > 0).sum()
    ours_g = aent.aggregate(values, mask, mode, num_tokens=2 * n_tok, num_seqs=2 * n_seq, loss_scale_factor=5)
    theirs_g = core_algos.agg_loss(
        values, mask, mode, batch_num_tokens=2 * n_tok, global_batch_size=2 * n_seq, loss_scale_factor=5
    )
    torch.testing.assert_close(ours_g, theirs_g.to(ours.dtype), atol=1e-6, rtol=1e-6)


def test_aggregate_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aent.aggregate(values, mask, "token-mean").item() == pytest.approx(7 / 3)
    assert aent.aggregate(values, mask, "token-sum").item() == pytest.approx(7)
    assert aent.aggregate(values, mask, "seq-mean-token-sum").item() == pytest.approx(3.5)
    assert aent.aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 4) / 2)
    assert aent.aggregate(values, mask, "seq-mean-token-sum-norm").item() == pytest.approx(3.5 / 3)
    assert aent.aggregate(values, torch.zeros_like(mask), "token-mean").item() == 0.0
    with pytest.raises(ValueError, match="loss_agg_mode"):
        aent.aggregate(values, mask, "mean")
    with pytest.raises(ValueError, match="response_mask shape"):
        aent.aggregate(values, mask[:, :2], "token-mean")


@pytest.mark.parametrize("mode", aent.LOSS_AGG_MODES)
def test_entropy_bonus_is_coef_times_aggregated_clamped_entropy(mode):
    logits, mask = _batch(seed=1)
    x = logits.clone().requires_grad_(True)
    term, metrics = aent.entropy_bonus(x, mask, 0.003, 0.33, mode)
    ref = aent.clamped_entropy(logits.double(), 0.33, impl="reference")
    expected = 0.003 * aent.aggregate(ref, mask.double(), mode)
    assert term.item() == pytest.approx(expected.item(), rel=1e-5)
    token_mean = float((ref * mask).sum() / mask.sum())
    assert metrics["clamped_entropy"] == pytest.approx(token_mean, rel=1e-5)
    assert metrics["coef"] == 0.003 and metrics["num_tokens"] == float(mask.sum())
    (-term).backward()
    assert torch.all(x.grad[mask == 0] == 0)
    assert x.grad[mask == 1].abs().sum() > 0


def test_entropy_bonus_with_controller_and_zero_coef():
    logits, mask = _batch(seed=2)
    coef = aent.AdaptiveCoefficient(init=0.0, entropy_low=5.0, entropy_high=6.0, lr=0.01, coef_min=0.0, coef_max=1.0)
    term, metrics = aent.entropy_bonus(logits, mask, coef, 0.25)
    assert term.item() == 0.0 and metrics["coef"] == 0.0
    assert metrics["clamped_entropy"] > 0  # measured even when the coefficient is 0
    new = coef.update(metrics["clamped_entropy"], 0)
    assert new > 0  # the measured entropy (< 5 nats for V=101) is below the band


def test_entropy_bonus_bad_input():
    logits, mask = _batch()
    with pytest.raises(ValueError, match="response_mask shape"):
        aent.entropy_bonus(logits, mask[:, :-1], 0.1, 0.3)
    with pytest.raises(ValueError, match="coef"):
        aent.entropy_bonus(logits, mask, "0.1", 0.3)
    with pytest.raises(ValueError, match="clamp_p"):
        aent.entropy_bonus(logits, mask, 0.1, 1.2)
    bad = logits.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        aent.entropy_bonus(bad, mask, 0.1, 0.3)
