"""KL(policy || reference) for GRPO-family training: Schulman's per-token estimators, the KL
term of the loss and the per-sequence KL subtracted from rewards. Pure tensor functions.

Shapes and mask conventions as in ``rl.aggregation``: (B, T) tensors, ``mask`` 1 on completion
tokens; padding may hold -inf/NaN and is zeroed before any estimator; a non-finite masked-in
value is an error naming the tensor, row and token. ``rl.losses`` re-exports everything here.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from rl.aggregation import aggregate, masked_inputs


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
        values go through unchanged, so keep them finite when backpropagating (``kl_loss`` and
        ``kl_in_reward`` do).
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; known: {list(KL_ESTIMATORS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"shapes differ: {tuple(logprobs.shape)} vs {tuple(ref_logprobs.shape)}")
    return KL_ESTIMATORS[kind](ref_logprobs - logprobs)


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    *,
    kind: str = "k3",
    loss_agg: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """KL to the reference as a loss term: aggregate(kl_penalty(logprobs, ref, kind), mask,
    loss_agg, ...), to be added times beta to the policy loss (GRPO, Shao et al. 2024; verl's
    ``use_kl_loss``). Masked-out positions are zeroed before the estimator, so -inf/NaN padding
    gives a finite value and a zero gradient there.

    Args:
        logprobs: (B, T) sampled-token log-probs under the policy (with grad).
        ref_logprobs: (B, T) the same under the frozen reference (detached here).
        mask: (B, T) bool or 0/1 float; 1 on completion tokens.
        kind: a key of ``KL_ESTIMATORS``.
        loss_agg, num_tokens, num_seqs, max_len: see ``aggregate``; use the policy loss's.

    Returns:
        () loss.
    """
    mask, (logprobs, ref) = masked_inputs(mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    per_token = kl_penalty(logprobs, ref.detach(), kind)  # (B, T), 0 off the mask
    return aggregate(
        per_token, mask, loss_agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )


def kl_in_reward(
    old_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kind: str = "k1"
) -> Tensor:
    """Per-sequence KL estimate KL_i = sum over row i's tokens of kl_penalty(old, ref, kind),
    detached: a trainer sets reward_i -= beta * KL_i before computing advantages (the
    InstructGPT-style penalty; verl's ``use_kl_in_reward``, summed over the row).

    Args:
        old_logprobs: (B, T) sampled-token log-probs under the sampling policy.
        ref_logprobs: (B, T) the same under the frozen reference.
        mask: (B, T) bool or 0/1 float; 1 on completion tokens.
        kind: a key of ``KL_ESTIMATORS``; k1 (the default) is the unbiased log-ratio.

    Returns:
        (B,) detached; 0 for an empty row.
    """
    mask, (old, ref) = masked_inputs(mask, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)
    return kl_penalty(old.detach(), ref.detach(), kind).sum(dim=1)  # (B,)
