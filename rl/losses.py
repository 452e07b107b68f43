"""Policy-gradient and SFT losses for GRPO-family training, as pure tensor functions.

Shapes: B completions (rows) by T token positions; ``mask`` (B, T) is 1 on completion tokens
that count in the loss and 0 on prompt and padding. The mask may be bool or a 0/1 float.
Values at masked-out positions are never read: they may be -inf or NaN (padding) without
touching the loss or its gradient.

Every loss reduces per-token terms with ``aggregate`` (``rl.aggregation``, verl's vocabulary).
Pass the whole batch's ``num_tokens`` / ``num_seqs`` / ``max_len`` to each micro-batch's call
and the micro-batch losses sum to exactly the whole-batch loss, gradients included.

The aggregation and KL functions live in ``rl.aggregation`` and ``rl.kl`` and are re-exported
here: ``from rl.losses import ...`` reaches every loss.
"""

import torch
from torch import Tensor

from rl.aggregation import AGGREGATIONS, aggregate, bool_mask, check_finite, masked_inputs
from rl.kl import KL_ESTIMATORS, kl_penalty

__all__ = ["AGGREGATIONS", "KL_ESTIMATORS", "aggregate", "kl_penalty", "policy_loss", "sft_loss"]

# ---------------------------------------------------------------------------- policy loss

# Log-ratios are clamped to this range before exp (as verl does) so that a stale token cannot
# overflow float32; inside it the clamp is the identity.
_MAX_LOG_RATIO = 20.0


def _clip_metrics(
    ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float | None,
) -> dict[str, Tensor]:
    """Detached diagnostics over masked-in tokens. ratio, mask: (B, T); advantages: (B, 1).
    A clip counts only where it changes the loss: the upper bound for A > 0, the lower bound
    for A < 0, the dual clip for A < 0 and ratio > clip_ratio_c."""
    ratio = ratio.detach()
    num_tokens = mask.sum().clamp(min=1)
    high = mask & (advantages > 0) & (ratio > 1 + clip_high)
    low = mask & (advantages < 0) & (ratio < 1 - clip_low)
    dual = torch.zeros_like(mask)
    if clip_ratio_c is not None:
        dual = mask & (advantages < 0) & (ratio > clip_ratio_c)
    in_mask = ratio[mask]
    if in_mask.numel() == 0:  # nothing masked in: report an untouched policy
        in_mask = torch.ones(1, dtype=ratio.dtype, device=ratio.device)
    return {
        "clip_frac_low": low.sum() / num_tokens,
        "clip_frac_high": high.sum() / num_tokens,
        "clip_frac_dual": dual.sum() / num_tokens,
        "ratio_mean": in_mask.mean(),
        "ratio_min": in_mask.min(),
        "ratio_max": in_mask.max(),
    }


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_ratio_c: float | None = None,
    loss_agg: str = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with asymmetric (DAPO clip-higher) and optional dual clip.

    Per token, with ratio r = exp(logprobs - old_logprobs) and A the row's advantage:

        loss = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
        if clip_ratio_c is not None and A < 0:  loss = min(loss, clip_ratio_c * |A|)

    GRPO is the symmetric case clip_low == clip_high. The dual clip (Ye et al., 2020) bounds the
    loss of a negative-advantage token whose ratio has run away. The per-token loss is reduced
    by ``aggregate(loss, mask, loss_agg, ...)``, default ``token-mean``.

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the current policy (with grad).
        old_logprobs: (B, T) the same under the sampling policy (no grad needed).
        advantages: (B,) one advantage per completion, broadcast over its tokens.
        mask: (B, T) bool or 0/1 float; 1 on completion tokens.
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high].
        clip_ratio_c: dual-clip constant (> 1), or None for no dual clip.
        loss_agg, num_tokens, num_seqs, max_len: see ``aggregate``.

    Returns:
        The () loss and detached metrics over masked-in tokens: ``clip_frac_low``,
        ``clip_frac_high``, ``clip_frac_dual`` (fraction of tokens where that clip changes the
        loss), ``ratio_mean``, ``ratio_min``, ``ratio_max``.

    Raises:
        ValueError: non-finite logprobs or old_logprobs at a masked-in position (naming row
            and token), non-finite advantages, mismatched shapes, or clip_ratio_c <= 1.
    """
    if logprobs.shape != old_logprobs.shape or advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"expected logprobs/old_logprobs (B, T) and advantages (B,); got "
            f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(advantages.shape)}"
        )
    if clip_ratio_c is not None and clip_ratio_c <= 1:
        raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}")
    mask = bool_mask(mask, logprobs.shape)
    check_finite("logprobs", logprobs, mask)
    check_finite("old_logprobs", old_logprobs, mask)
    bad_rows = (~torch.isfinite(advantages)).nonzero()
    if bad_rows.numel() > 0:
        raise ValueError(f"non-finite advantages at row {int(bad_rows[0, 0])}")

    # Zero the padding first, so that no NaN/inf there can reach the gradient.
    logprobs = torch.where(mask, logprobs, 0.0)  # (B, T)
    old_logprobs = torch.where(mask, old_logprobs, 0.0)  # (B, T)
    adv = advantages.detach()[:, None]  # (B, 1)

    log_ratio = (logprobs - old_logprobs.detach()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)  # (B, T)
    clipped_ratio = ratio.clamp(1 - clip_low, 1 + clip_high)
    loss_mat = torch.maximum(-adv * ratio, -adv * clipped_ratio)  # (B, T)
    if clip_ratio_c is not None:
        loss_mat = torch.where(adv < 0, torch.minimum(loss_mat, -adv * clip_ratio_c), loss_mat)

    loss = aggregate(
        loss_mat, mask, loss_agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )
    metrics = _clip_metrics(ratio, adv, mask, clip_low, clip_high, clip_ratio_c)
    return loss, metrics


# ---------------------------------------------------------------------------- SFT


def sft_loss(logprobs: Tensor, mask: Tensor, *, num_tokens: float | None = None) -> Tensor:
    """Mean negative log-likelihood over completion tokens (``token-mean``).

    Args:
        logprobs: (B, T) log-probs of the target tokens.
        mask: (B, T) bool or 0/1 float; 1 on completion tokens.
        num_tokens: global token count for micro-batch invariance; see ``aggregate``.

    Returns:
        () loss = -sum(masked logprobs) / num_tokens (default: this batch's count).
    """
    mask, (logprobs,) = masked_inputs(mask, logprobs=logprobs)
    return aggregate(-logprobs, mask, "token-mean", num_tokens=num_tokens)
