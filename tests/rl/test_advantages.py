"""Golden tests for rl/advantages.py: every expected value is derived by hand in a comment."""

import math

import pytest
import torch

from rl.advantages import ESTIMATORS, compute_advantages

EPS = 1e-6


def _close(actual: torch.Tensor, expected: list[float]) -> None:
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=1e-6)


def test_grpo_two_winners_of_four():
    # mean = 0.5, deviations +-0.5; unbiased var = 4 * 0.25 / 3 = 1/3, std = sqrt(1/3) = 0.57735
    # advantage = +-0.5 / (0.57735 + 1e-6) = +-0.866024 (0.866025 without eps).
    a = 0.5 / (math.sqrt(1 / 3) + EPS)
    _close(compute_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4), [a, -a, -a, a])


def test_grpo_two_groups_one_constant():
    # Group [0, 1, 2]: mean 1, deviations [-1, 0, 1], unbiased var = 2 / 2 = 1, std 1.
    # Group [5, 5, 5]: all equal -> exactly 0.
    a = 1 / (1 + EPS)
    rewards = torch.tensor([0.0, 1.0, 2.0, 5.0, 5.0, 5.0])
    _close(compute_advantages(rewards, 3, "grpo"), [-a, 0.0, a, 0.0, 0.0, 0.0])


def test_dr_grpo_subtracts_mean_only():
    # Group [0, 0, 3]: mean 1 -> [-1, -1, 2]. Group [2, 4, 6]: mean 4 -> [-2, 0, 2] (std 2 unused).
    rewards = torch.tensor([0.0, 0.0, 3.0, 2.0, 4.0, 6.0])
    _close(compute_advantages(rewards, 3, "dr_grpo"), [-1.0, -1.0, 2.0, -2.0, 0.0, 2.0])


def test_rloo_leave_one_out_baseline():
    # Group [0, 0, 3]: baselines mean(0, 3) = 1.5, 1.5, mean(0, 0) = 0 -> [-1.5, -1.5, 3];
    # same as G/(G-1) (r - mean) = 1.5 * [-1, -1, 2].
    # Group [1, 3]: baselines 3 and 1 -> [-2, 2] = 2 * [-1, 1].
    _close(compute_advantages(torch.tensor([0.0, 0.0, 3.0]), 3, "rloo"), [-1.5, -1.5, 3.0])
    _close(compute_advantages(torch.tensor([1.0, 3.0]), 2, "rloo"), [-2.0, 2.0])


def test_reinforce_pp_baseline_whitens_over_batch():
    # Group-centred: [0, 0, 3] -> [-1, -1, 2]; [1, 1, 1] -> [0, 0, 0].
    # Batch of 6: mean 0, unbiased var = (1 + 1 + 4) / 5 = 1.2, std = sqrt(1.2) = 1.095445.
    # Whitened: [-1, -1, 2] / (1.095445 + 1e-6) = [-0.912870, -0.912870, 1.825740], zeros stay 0.
    s = math.sqrt(1.2) + EPS
    rewards = torch.tensor([0.0, 0.0, 3.0, 1.0, 1.0, 1.0])
    expected = [-1 / s, -1 / s, 2 / s, 0.0, 0.0, 0.0]
    _close(compute_advantages(rewards, 3, "reinforce_pp_baseline"), expected)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_all_equal_groups_are_exactly_zero(estimator):
    # Values whose float mean is not exactly themselves (found by search): without the explicit
    # zeroing, GRPO would give ~1e-9 (float64) and ~0.06 (float32 arithmetic) instead of 0.
    rewards = torch.tensor([7.268231772653808] * 3 + [0.8847743272781372] * 3, dtype=torch.float64)
    assert torch.equal(compute_advantages(rewards, 3, estimator), torch.zeros(6))


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_group_of_one_is_zero(estimator):
    # No other completion to compare with: no baseline, advantage 0.
    rewards = torch.tensor([3.0, -1.0, 0.5])
    assert torch.equal(compute_advantages(rewards, 1, estimator), torch.zeros(3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_reward_names_first_bad_index(bad):
    rewards = torch.tensor([0.0, 1.0, bad, 2.0, bad, 1.0])
    with pytest.raises(ValueError, match="at index 2"):
        compute_advantages(rewards, 3)


def test_size_not_divisible_by_group_size():
    with pytest.raises(ValueError, match="not divisible by group_size 2"):
        compute_advantages(torch.zeros(5), 2)


def test_unknown_estimator_lists_known_ones():
    with pytest.raises(
        ValueError, match="known:.*'dr_grpo'.*'grpo'.*'reinforce_pp_baseline'.*'rloo'"
    ):
        compute_advantages(torch.zeros(4), 2, "ppo")
