"""Group-relative advantage estimators for GRPO-family training.

Every prompt is sampled G times (``group_size``); the G completions of a group sit next to each
other in the flat reward vector, so ``rewards.view(num_groups, G)`` recovers the groups. Each
estimator turns a group's rewards into one advantage per completion, which the policy loss then
broadcasts over that completion's tokens (outcome supervision, as in DeepSeek-R1 and verl).

Conventions shared by all estimators:

* std is the unbiased sample std (Bessel's correction, divide by G - 1), as in TRL and verl.
* A group whose rewards are all equal carries no learning signal: its advantage is exactly 0,
  whatever the estimator. This is enforced, not left to arithmetic: the float mean of G equal
  values need not equal them, and GRPO would then divide the rounding error by (0 + eps).
* A group of one completion has no baseline and gets advantage 0 (a special case of the above).
* The arithmetic runs in float64 and the result is returned as float32.

Adding an estimator: write ``fn(groups (M, G) float64, eps) -> (M, G)`` and register it in
``ESTIMATORS``; nothing else changes.
"""

from collections.abc import Callable

import torch
from torch import Tensor


def _centered(groups: Tensor) -> Tensor:
    """r - group mean. (M, G) -> (M, G)."""
    return groups - groups.mean(dim=1, keepdim=True)


def _grpo(groups: Tensor, eps: float) -> Tensor:
    """GRPO (Shao et al., 2024): (r - mean) / (std + eps), std unbiased."""
    std = groups.std(dim=1, keepdim=True, correction=1)  # (M, 1)
    return _centered(groups) / (std + eps)


def _dr_grpo(groups: Tensor, eps: float) -> Tensor:
    """Dr. GRPO (Liu et al., 2025): r - mean; no std division, which biases toward easy or hard
    prompts. ``eps`` is unused."""
    return _centered(groups)


def _rloo(groups: Tensor, eps: float) -> Tensor:
    """RLOO (Ahmadian et al., 2024): r_i - mean_{j != i} r_j, which equals G/(G-1) (r_i - mean).
    ``eps`` is unused."""
    group_size = groups.shape[1]
    return _centered(groups) * (group_size / (group_size - 1))


def _reinforce_pp_baseline(groups: Tensor, eps: float) -> Tensor:
    """REINFORCE++-baseline (Hu et al., 2025): subtract the group mean, then whiten over the
    whole batch: (x - batch mean) / (batch std + eps), std unbiased."""
    centered = _centered(groups)
    return (centered - centered.mean()) / (centered.std(correction=1) + eps)


ESTIMATORS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
    "reinforce_pp_baseline": _reinforce_pp_baseline,
}


def _check_rewards(rewards: Tensor, group_size: int) -> None:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of rewards {rewards.numel()} is not divisible by group_size {group_size}"
        )
    bad = (~torch.isfinite(rewards)).nonzero()
    if bad.numel() > 0:
        index = int(bad[0, 0])
        raise ValueError(f"non-finite reward {rewards[index].item()} at index {index}")


def compute_advantages(
    rewards: Tensor, group_size: int, estimator: str = "grpo", eps: float = 1e-6
) -> Tensor:
    """One advantage per completion from group-relative rewards.

    Args:
        rewards: (N,) scalar reward per completion, N = num_groups * group_size, the G
            completions of each group contiguous.
        group_size: G, completions per prompt.
        estimator: a key of ``ESTIMATORS``: "grpo", "dr_grpo", "rloo", "reinforce_pp_baseline".
        eps: added to the std before dividing (estimators that divide by a std).

    Returns:
        (N,) float32 advantages, same order as ``rewards``. std is unbiased (divide by G - 1);
        all-equal groups and groups of one get exactly 0.

    Raises:
        ValueError: unknown estimator, N not divisible by G, or a non-finite reward (the message
            names the first bad index).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {sorted(ESTIMATORS)}")
    _check_rewards(rewards, group_size)
    groups = rewards.detach().to(torch.float64).view(-1, group_size)  # (M, G)
    if group_size == 1:
        return torch.zeros(rewards.shape, dtype=torch.float32, device=rewards.device)
    advantages = ESTIMATORS[estimator](groups, eps)  # (M, G)
    constant = (groups == groups[:, :1]).all(dim=1, keepdim=True)  # (M, 1)
    advantages = advantages.masked_fill(constant, 0.0)
    return advantages.reshape(-1).to(torch.float32)
