"""The decoupled off-policy loss (``rl.losses.decoupled_policy_loss``) against numbers worked
out by hand, its limits (behaviour == proximal is today's loss; any logprob gap stays finite),
and its gradient: the weight scales the clipped term and never carries a gradient."""

import math

import torch

from rl.losses import decoupled_policy_loss, policy_loss


def log(x):
    return math.log(x)


def test_hand_derived_values():
    # one row, A = +1, clip 0.2; token 1: r = 0.5/0.4 = 1.25 (clipped to 1.2), w = 0.4/0.1 = 4
    # capped to 2: loss -2.4; token 2: r = 0.3/0.3 = 1, w = 0.3/0.6 = 0.5: loss -0.5;
    # token-mean over 2 tokens: -1.45
    lp = torch.tensor([[log(0.5), log(0.3)]], requires_grad=True)
    prox = torch.tensor([[log(0.4), log(0.3)]])
    behav = torch.tensor([[log(0.1), log(0.6)]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, m = decoupled_policy_loss(lp, prox, behav, torch.tensor([1.0]), mask, cap=2.0)
    assert abs(loss.item() + 1.45) < 1e-6
    assert abs(float(m["mismatch_weight_max"]) - 2.0) < 1e-6
    assert abs(float(m["mismatch_weight_min"]) - 0.5) < 1e-6
    assert float(m["mismatch_capped_frac"]) == 0.5 and float(m["clip_frac_high"]) == 0.5
    loss.backward()
    # the clipped token has no gradient; token 2: d/dlp of -(w * A * exp(lp - prox)) / 2
    # = -0.5 * 1 * 1 / 2 = -0.25
    assert lp.grad[0, 0].item() == 0.0 and abs(lp.grad[0, 1].item() + 0.25) < 1e-6


def test_negative_advantage_and_sequence_level():
    # A = -2, one token: r = 0.6/0.5 = 1.2 (no clip for A < 0 above 1), w_seq = exp(sum of
    # prox - behav) = (0.5/0.25) * (0.5/1.0) = 1 on both tokens; token 2: r = 0.25/0.5 = 0.5,
    # clipped at 0.8 for A < 0: max(1.0, 1.6) = 1.6; token 1: max(2.4, 2.4) = 2.4; mean 2.0
    lp = torch.tensor([[log(0.6), log(0.25)]])
    prox = torch.tensor([[log(0.5), log(0.5)]])
    behav = torch.tensor([[log(0.25), log(1.0)]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, m = decoupled_policy_loss(
        lp, prox, behav, torch.tensor([-2.0]), mask, level="sequence", cap=3.0
    )
    assert abs(loss.item() - 2.0) < 1e-6
    assert abs(float(m["mismatch_weight_mean"]) - 1.0) < 1e-6


def test_behaviour_equal_to_proximal_is_todays_loss_exactly():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 7, generator=g) - 2
    prox = lp + 0.1 * torch.randn(4, 7, generator=g)
    adv = torch.randn(4, generator=g)
    mask = torch.rand(4, 7, generator=g) > 0.3
    ours, _ = decoupled_policy_loss(lp, prox, prox, adv, mask, loss_agg="seq-mean-token-mean")
    today, _ = policy_loss(lp, prox, adv, mask, loss_agg="seq-mean-token-mean")
    assert ours.item() == today.item()


def test_any_logprob_gap_stays_finite():
    lp = torch.tensor([[0.0, -1e4, -30.0]], requires_grad=True)
    prox = torch.tensor([[-1e4, 0.0, -1e-3]])
    behav = torch.tensor([[-3e4, 0.0, -1e4]])  # exp(prox - behav) = exp(2e4): inf, capped
    mask = torch.ones(1, 3, dtype=torch.bool)
    for adv in (1.0, -1.0):
        loss, m = decoupled_policy_loss(lp, prox, behav, torch.tensor([adv]), mask, cap=2.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
        assert float(m["mismatch_weight_max"]) == 2.0
        lp.grad = None
