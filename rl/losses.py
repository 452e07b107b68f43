"""Policy-gradient, KL and SFT losses for GRPO-family training, as pure tensor functions.

Shapes: B completions (rows) by T token positions; ``mask`` (B, T) is 1 on completion tokens
that count in the loss and 0 on prompt and padding. The mask may be bool or a 0/1 float.
Values at masked-out positions are never read: they may be -inf or NaN (padding) without
touching the loss or its gradient.

Aggregation uses verl's vocabulary (``AGGREGATIONS``): ``token-mean``, ``seq-mean-token-mean``,
``seq-mean-token-sum``, ``seq-mean-token-sum-norm``. Each mode is a numerator that is a sum
over this batch's rows divided by a denominator. By default the denominator is counted on the
batch itself; when the batch is a micro-batch of a larger one, pass the whole batch's
``num_tokens`` / ``num_seqs`` (and ``max_len``), and the micro-batch losses then sum to exactly
the whole-batch loss, gradients included.

Empty rows (no masked-in token) contribute 0 and never produce NaN. The ``seq-*`` modes count
only rows with at least one token as sequences; a global ``num_seqs`` must follow the same rule.
A zero denominator (nothing to average) gives loss 0.
"""

from collections.abc import Callable

import torch
from torch import Tensor

# ---------------------------------------------------------------------------- aggregation

Count = float | Tensor | None  # a global denominator: None means "count this batch"


def _divide(total: Tensor, denominator: float | Tensor) -> Tensor:
    """total / denominator, where a denominator below 1 (no tokens, no rows) counts as 1:
    the total is then 0, and so is the result."""
    denominator = torch.as_tensor(denominator, dtype=total.dtype, device=total.device)
    return total / denominator.clamp(min=1)


def _token_mean(
    masked: Tensor, counts: Tensor, max_len: int, num_tokens: Count, num_seqs: Count
) -> Tensor:
    """sum of all masked-in token losses / number of masked-in tokens."""
    return _divide(masked.sum(), counts.sum() if num_tokens is None else num_tokens)


def _seq_mean(per_seq: Tensor, counts: Tensor, num_seqs: Count) -> Tensor:
    """sum of per-sequence losses / number of non-empty sequences. per_seq, counts: (B,)."""
    return _divide(per_seq.sum(), (counts > 0).sum() if num_seqs is None else num_seqs)


def _seq_mean_token_mean(
    masked: Tensor, counts: Tensor, max_len: int, num_tokens: Count, num_seqs: Count
) -> Tensor:
    """Mean over sequences of each sequence's token mean (original GRPO)."""
    return _seq_mean(masked.sum(dim=1) / counts.clamp(min=1), counts, num_seqs)


def _seq_mean_token_sum(
    masked: Tensor, counts: Tensor, max_len: int, num_tokens: Count, num_seqs: Count
) -> Tensor:
    """Mean over sequences of each sequence's token sum."""
    return _seq_mean(masked.sum(dim=1), counts, num_seqs)


def _seq_mean_token_sum_norm(
    masked: Tensor, counts: Tensor, max_len: int, num_tokens: Count, num_seqs: Count
) -> Tensor:
    """Mean over sequences of each sequence's token sum / max_len (Dr. GRPO: a constant
    normaliser, so long answers are not down-weighted), as current verl does with
    ``loss_scale_factor``. Older verl divided the sum over sequences by T with no mean over
    sequences: the same up to the constant factor B."""
    return _seq_mean(masked.sum(dim=1) / max_len, counts, num_seqs)


# Each mode: (masked (B, T), counts (B,), max_len, num_tokens, num_seqs) -> () loss.
AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, int, Count, Count], Tensor]] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def _bool_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    if mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != loss shape {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("a float mask must hold only 0 and 1")
    return mask != 0


def aggregate(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce per-token losses to a scalar.

    Args:
        loss_mat: (B, T) per-token loss.
        mask: (B, T) bool or 0/1 float; 1 where the token counts.
        mode: a key of ``AGGREGATIONS``. With S_b the masked token sum of row b, n_b its token
            count and R the rows with n_b > 0:
            ``token-mean`` = sum_b S_b / sum_b n_b;
            ``seq-mean-token-mean`` = sum_{b in R} (S_b / n_b) / |R|;
            ``seq-mean-token-sum`` = sum_b S_b / |R|;
            ``seq-mean-token-sum-norm`` = sum_b (S_b / max_len) / |R|.
        num_tokens: global token count replacing sum_b n_b (``token-mean`` only).
        num_seqs: global count of non-empty rows replacing |R| (``seq-*`` modes only).
        max_len: constant normaliser of ``seq-mean-token-sum-norm``; defaults to T. Pass it
            explicitly when micro-batches are padded to different lengths.

    Returns:
        () scalar loss. Empty rows contribute 0; a zero denominator gives 0, never NaN.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; known: {list(AGGREGATIONS)}")
    mask = _bool_mask(mask, loss_mat.shape)
    masked = torch.where(mask, loss_mat, 0.0)  # (B, T), padding NaN/inf cannot leak
    counts = mask.sum(dim=1)  # (B,)
    max_len = loss_mat.shape[1] if max_len is None else max_len
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    return AGGREGATIONS[mode](masked, counts, max_len, num_tokens, num_seqs)


# ---------------------------------------------------------------------------- policy loss

# Log-ratios are clamped to this range before exp (as verl does) so that a stale token cannot
# overflow float32; inside it the clamp is the identity.
_MAX_LOG_RATIO = 20.0


def _check_finite(name: str, values: Tensor, mask: Tensor) -> None:
    """Raise on the first non-finite value at a masked-in position. values, mask: (B, T)."""
    bad = (mask & ~torch.isfinite(values)).nonzero()
    if bad.numel() > 0:
        row, token = (int(i) for i in bad[0])
        raise ValueError(f"non-finite {name} at row {row}, token {token}")


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
    mask = _bool_mask(mask, logprobs.shape)
    _check_finite("logprobs", logprobs, mask)
    _check_finite("old_logprobs", old_logprobs, mask)
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


# ---------------------------------------------------------------------------- KL and SFT


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


def sft_loss(logprobs: Tensor, mask: Tensor, *, num_tokens: float | None = None) -> Tensor:
    """Mean negative log-likelihood over completion tokens (``token-mean``).

    Args:
        logprobs: (B, T) log-probs of the target tokens.
        mask: (B, T) bool or 0/1 float; 1 on completion tokens.
        num_tokens: global token count for micro-batch invariance; see ``aggregate``.

    Returns:
        () loss = -sum(masked logprobs) / num_tokens (default: this batch's count).
    """
    mask = _bool_mask(mask, logprobs.shape)
    _check_finite("logprobs", logprobs, mask)
    logprobs = torch.where(mask, logprobs, 0.0)  # (B, T)
    return aggregate(-logprobs, mask, "token-mean", num_tokens=num_tokens)
