"""KL(policy || reference) for GRPO-family training: Schulman's per-token estimators, as pure
tensor functions of (B, T) sampled-token log-probs. ``rl.losses`` re-exports everything here.
"""

from collections.abc import Callable

import torch
from torch import Tensor


def _k1(delta: Tensor) -> Tensor:
    """logp - ref: unbiased, high variance, can be negative."""
    return -delta


def _k2(delta: Tensor) -> Tensor:
    """0.5 (logp - ref)^2: biased, low variance, >= 0."""
    return 0.5 * delta**2


def _k3(delta: Tensor) -> Tensor:
    """exp(ref - logp) - (ref - logp) - 1: unbiased, low variance, >= 0 (verl's low_var_kl,
    here without its clamp)."""
    return torch.expm1(delta) - delta


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs.

    Schulman's estimators (http://joschu.net/blog/kl-approx.html), written with
    delta = ref_logprobs - logprobs: k1 = -delta, k2 = delta^2 / 2, k3 = exp(delta) - delta - 1.

    Args:
        logprobs: (B, T) log-probs under the policy (with grad).
        ref_logprobs: (B, T) log-probs under the frozen reference policy.
        kind: "k1", "k2" or "k3".

    Returns:
        (B, T) per-token penalty, not reduced: pass it to ``aggregate`` with the mask. Padding
        values go through unchanged, so keep them finite when backpropagating.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; known: {list(KL_ESTIMATORS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"shapes differ: {tuple(logprobs.shape)} vs {tuple(ref_logprobs.shape)}")
    return KL_ESTIMATORS[kind](ref_logprobs - logprobs)
