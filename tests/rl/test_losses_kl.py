"""Golden tests for KL as a loss term (kl_loss) and as a reward penalty (kl_in_reward). Every
expected value is derived by hand in a comment."""

import math

import pytest
import torch

from rl.losses import AGGREGATIONS, kl_in_reward, kl_loss

INF, NAN = float("inf"), float("nan")
E = math.e


def _close(actual: torch.Tensor, expected) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def _kl_inputs():
    """delta = ref - logp: row 0 [-1, 1], row 1 [0]; padding -inf (policy) and NaN (ref)."""
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    logprobs = torch.tensor([[0.0, -1.0, -INF], [-2.3, -INF, -INF]], requires_grad=True)
    ref = torch.tensor([[-1.0, 0.0, NAN], [-2.3, NAN, 0.0]])
    return logprobs, ref, mask


@pytest.mark.parametrize(
    "kind, mode, expected",
    [
        # k3 = e^delta - delta - 1 per token: [e^-1, e - 2], [0] = [0.367879, 0.718282], [0].
        ("k3", "token-mean", (math.exp(-1) + E - 2) / 3),  # 0.362054
        ("k3", "seq-mean-token-mean", ((math.exp(-1) + E - 2) / 2 + 0) / 2),  # 0.271540
        ("k1", "token-mean", (1 - 1 + 0) / 3),  # k1 = -delta = [1, -1], [0]
        ("k2", "seq-mean-token-sum", (0.5 + 0.5 + 0) / 2),  # k2 = delta^2 / 2
    ],
)
def test_kl_loss_by_hand(kind, mode, expected):
    logprobs, ref, mask = _kl_inputs()
    ref.requires_grad_()
    loss = kl_loss(logprobs, ref, mask, kind=kind, loss_agg=mode)
    _close(loss, expected)
    loss.backward()
    assert torch.isfinite(logprobs.grad).all() and ref.grad is None


def test_kl_loss_gradient_is_zero_on_minus_inf_padding():
    # d k3 / d logp = 1 - e^delta: [1 - e^-1, 1 - e], [0]; over 3 tokens:
    # [0.210707, -0.572761], [0]. Padding (-inf policy, NaN ref) gets exactly 0.
    logprobs, ref, mask = _kl_inputs()
    kl_loss(logprobs, ref, mask).backward()
    _close(logprobs.grad, [[(1 - math.exp(-1)) / 3, (1 - E) / 3, 0.0], [0.0, 0.0, 0.0]])
    assert (logprobs.grad[~mask] == 0).all()


@pytest.mark.parametrize("mode", list(AGGREGATIONS))
def test_kl_loss_degenerate(mode):
    # Policy equal to the reference: k3 = 0 with gradient 1 - e^0 = 0. Nothing masked in: 0.
    logprobs = torch.tensor([[-0.5, -1.5]], requires_grad=True)
    loss = kl_loss(logprobs, logprobs.detach(), torch.ones(1, 2), loss_agg=mode)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logprobs.grad, torch.zeros(1, 2))
    assert kl_loss(logprobs * NAN, logprobs, torch.zeros(1, 2), loss_agg=mode).item() == 0.0


def test_kl_loss_rejects_bad_input():
    logprobs, ref, mask = _kl_inputs()
    ref[0, 1] = INF
    with pytest.raises(ValueError, match="non-finite ref_logprobs at row 0, token 1"):
        kl_loss(logprobs, ref, mask)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_loss(logprobs, logprobs.detach(), mask, kind="k4")
    with pytest.raises(ValueError, match="expected equal"):
        kl_loss(logprobs, torch.zeros(2, 1), mask)  # would broadcast silently


@pytest.mark.parametrize(
    "kind, expected",
    [
        # delta = ref - old: row 0 [-0.5, -1], row 1 [1], row 2 empty.
        ("k1", [0.5 + 1.0, -1.0, 0.0]),  # sum of -delta
        # k3: e^-0.5 + 0.5 - 1 = 0.106531, e^-1 + 1 - 1 = 0.367879 -> 0.474410; e - 2.
        ("k3", [math.exp(-0.5) - 0.5 + math.exp(-1), E - 2, 0.0]),
    ],
)
def test_kl_in_reward_by_hand(kind, expected):
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    old = torch.tensor([[-0.5, -1.0, NAN], [-2.0, NAN, NAN], [NAN, NAN, NAN]], requires_grad=True)
    ref = torch.tensor([[-1.0, -2.0, -INF], [-1.0, -INF, 0.0], [-INF, 0.0, 0.0]])
    penalty = kl_in_reward(old, ref, mask, kind)
    assert penalty.shape == (3,) and not penalty.requires_grad
    _close(penalty, expected)


def test_kl_in_reward_rejects_non_finite():
    with pytest.raises(ValueError, match="non-finite old_logprobs at row 0, token 0"):
        kl_in_reward(torch.tensor([[NAN]]), torch.zeros(1, 1), torch.ones(1, 1))
