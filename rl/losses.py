"""Policy-gradient (PPO / GRPO / DAPO / GSPO) losses, rollout-mismatch weights, entropy and
SFT loss for GRPO-family training, as pure tensor functions.

Shapes: B completions (rows) by T token positions, V vocabulary entries; ``mask`` (B, T) is 1
on completion tokens that count in the loss and 0 on prompt and padding (bool or 0/1 float).
Values at masked-out positions are never read: they may be -inf or NaN (padding) without
touching a loss, a weight or a gradient. Non-finite values at masked-in positions are errors
that name the tensor, row and token.

Every loss reduces per-token terms with ``aggregate`` (``rl.aggregation``, verl's vocabulary:
``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum``, ``seq-mean-token-sum-norm``).
Pass the whole batch's ``num_tokens`` / ``num_seqs`` / ``max_len`` to each micro-batch's call
and the micro-batch losses sum to exactly the whole-batch loss, gradients included.

The aggregation and KL functions live in ``rl.aggregation`` and ``rl.kl`` and are re-exported
here: ``from rl.losses import ...`` reaches every loss.
"""

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from rl.aggregation import AGGREGATIONS, aggregate, masked_inputs
from rl.kl import KL_ESTIMATORS, kl_in_reward, kl_loss, kl_penalty

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "MISMATCH_LEVELS",
    "RATIO_LEVELS",
    "aggregate",
    "decoupled_policy_loss",
    "entropy_from_logits",
    "kl_in_reward",
    "kl_loss",
    "kl_penalty",
    "mismatch_weights",
    "policy_loss",
    "sft_loss",
]

# ---------------------------------------------------------------------------- policy loss

# Log-ratios are clamped to this range before exp (as verl does) so that a stale token cannot
# overflow float32; inside it the clamp is the identity.
_MAX_LOG_RATIO = 20.0


def _token_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """PPO / GRPO: log r_t = logp_t - old_t. All (B, T), padding already zeroed."""
    return logprobs - old_logprobs


def _sequence_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """GSPO-token: log s_it = sg[log s_i] + logp_t - sg[logp_t], with log s_i the row's mean of
    logp - old over its tokens. The value is log s_i on every token of row i; the gradient of
    s_it w.r.t. logp_t is s_i. All (B, T), padding already zeroed."""
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    log_seq_ratio = (logprobs - old_logprobs).sum(dim=1, keepdim=True) / counts  # (B, 1)
    return log_seq_ratio.detach() + (logprobs - logprobs.detach())  # (B, T)


# Each level: (logprobs, old_logprobs, mask) all (B, T) -> (B, T) log importance ratio.
RATIO_LEVELS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "token": _token_log_ratio,
    "sequence": _sequence_log_ratio,
}


def _masked_stats(values: Tensor, mask: Tensor, prefix: str) -> dict[str, Tensor]:
    """Detached mean, min and max of values (B, T) over masked-in positions; 1 when none (an
    untouched policy, a unit weight)."""
    picked = values.detach()[mask]
    if picked.numel() == 0:
        picked = torch.ones(1, dtype=values.dtype, device=values.device)
    return {
        f"{prefix}_mean": picked.mean(),
        f"{prefix}_min": picked.min(),
        f"{prefix}_max": picked.max(),
    }


def _clip_metrics(
    ratio: Tensor, adv: Tensor, mask: Tensor, low: float, high: float, c: float | None
) -> dict[str, Tensor]:
    """Detached diagnostics over masked-in tokens. ratio, mask: (B, T); adv: (B, 1).
    A clip counts only where it changes the loss: the upper bound for A > 0, the lower bound
    for A < 0, the dual clip for A < 0 and ratio > c."""
    ratio = ratio.detach()
    num_tokens = mask.sum().clamp(min=1)
    dual = mask & (adv < 0) & (ratio > c) if c is not None else torch.zeros_like(mask)
    return {
        "clip_frac_low": (mask & (adv < 0) & (ratio < 1 - low)).sum() / num_tokens,
        "clip_frac_high": (mask & (adv > 0) & (ratio > 1 + high)).sum() / num_tokens,
        "clip_frac_dual": dual.sum() / num_tokens,
        **_masked_stats(ratio, mask, "ratio"),
    }


def _check_policy_args(
    logprobs: Tensor, advantages: Tensor, clip_ratio_c: float | None, ratio_level: str
) -> None:
    """Check policy_loss's advantages and constants (masked_inputs checks the rest)."""
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"expected logprobs (B, T) and advantages (B,); "
            f"got {tuple(logprobs.shape)}, {tuple(advantages.shape)}"
        )
    if clip_ratio_c is not None and clip_ratio_c <= 1:
        raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}")
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio_level {ratio_level!r}; known: {list(RATIO_LEVELS)}")
    bad_rows = (~torch.isfinite(advantages)).nonzero()
    if bad_rows.numel() > 0:
        raise ValueError(f"non-finite advantages at row {int(bad_rows[0, 0])}")


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
    ratio_level: str = "token",
    weights: Tensor | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with asymmetric (DAPO clip-higher) and optional dual clip, at token
    (PPO/GRPO) or sequence (GSPO) level, with optional per-token weights and entropy bonus.

    Per token, with r the importance ratio, A the row's advantage and w the weight (default 1):

        loss = w * max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
        if clip_ratio_c is not None and A < 0:  loss = w * min(max(...), clip_ratio_c * |A|)
        total = aggregate(loss) - entropy_coef * aggregate(entropy)

    ``ratio_level="token"``: r = exp(logprobs - old_logprobs). ``"sequence"`` (GSPO, Zheng et
    al. 2025, as verl's ``gspo`` loss): r = s_i = exp(mean over row i's tokens of (logprobs -
    old_logprobs)) on every token of the row, in the GSPO-token form whose gradient w.r.t.
    logprobs_t is s_i (so ``seq-mean-token-mean`` gives GSPO's d s_i / d logp_t = s_i / |y_i|).
    GRPO is the symmetric case clip_low == clip_high; the dual clip (Ye et al., 2020) bounds the
    loss of a negative-advantage token whose ratio has run away.

    Args:
        logprobs: (B, T) log-probs of the sampled tokens under the current policy (with grad).
        old_logprobs: (B, T) the same under the sampling policy (no grad needed).
        advantages: (B,) one advantage per completion, broadcast over its tokens.
        mask: (B, T) bool or 0/1 float; 1 on completion tokens.
        clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high].
        clip_ratio_c: dual-clip constant (> 1), or None for no dual clip.
        loss_agg, num_tokens, num_seqs, max_len: see ``aggregate``; they also reduce entropy.
        ratio_level: a key of ``RATIO_LEVELS``: "token" or "sequence".
        weights: (B, T) detached per-token multipliers of the clipped loss, e.g. from
            ``mismatch_weights``; None for 1.
        entropy: (B, T) per-token policy entropy (``entropy_from_logits``), or None.
        entropy_coef: weight of the entropy bonus; nonzero needs ``entropy``.

    Returns:
        The () loss and detached metrics over masked-in tokens: ``clip_frac_low``,
        ``clip_frac_high``, ``clip_frac_dual`` (fraction of tokens where that clip changes the
        loss), ``ratio_mean``, ``ratio_min``, ``ratio_max`` (at sequence level, each token
        reports its row's s_i); with ``entropy``, also ``entropy``: aggregate(entropy) with the
        loss's denominators, so like the loss it sums over micro-batches to the batch's value.

    Raises:
        ValueError: non-finite logprobs, old_logprobs, weights or entropy at a masked-in
            position (naming row and token), non-finite advantages, mismatched shapes,
            clip_ratio_c <= 1, an unknown ratio_level, or entropy_coef without entropy.
    """
    _check_policy_args(logprobs, advantages, clip_ratio_c, ratio_level)
    if entropy_coef != 0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs the entropy tensor")
    extra = {k: t for k, t in (("weights", weights), ("entropy", entropy)) if t is not None}
    mask, (logprobs, old_logprobs, *rest) = masked_inputs(
        mask, logprobs=logprobs, old_logprobs=old_logprobs, **extra
    )
    extra = dict(zip(extra, rest, strict=True))  # the optional inputs, zeroed off the mask
    adv = advantages.detach()[:, None]  # (B, 1)

    log_ratio = RATIO_LEVELS[ratio_level](logprobs, old_logprobs.detach(), mask)
    ratio = torch.exp(log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))  # (B, T)
    clipped_ratio = ratio.clamp(1 - clip_low, 1 + clip_high)
    loss_mat = torch.maximum(-adv * ratio, -adv * clipped_ratio)  # (B, T)
    if clip_ratio_c is not None:
        loss_mat = torch.where(adv < 0, torch.minimum(loss_mat, -adv * clip_ratio_c), loss_mat)
    if "weights" in extra:
        loss_mat = loss_mat * extra["weights"].detach()

    agg = partial(
        aggregate,
        mask=mask,
        mode=loss_agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_len=max_len,
    )
    loss = agg(loss_mat)
    metrics = _clip_metrics(ratio, adv, mask, clip_low, clip_high, clip_ratio_c)
    if "entropy" in extra:
        mean_entropy = agg(extra["entropy"])
        if entropy_coef != 0:
            loss = loss - entropy_coef * mean_entropy
        metrics["entropy"] = mean_entropy.detach()
    return loss, metrics


# ---------------------------------------------------------------------------- mismatch

MISMATCH_LEVELS = ("token", "sequence")


def mismatch_weights(
    old_logprobs: Tensor,
    rollout_logprobs: Tensor,
    mask: Tensor,
    *,
    level: str = "token",
    cap: float = 2.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Truncated importance weights that correct for the rollout engine sampling from a
    slightly different distribution than the learner computes (TIS: Yao et al. 2025, "Your
    efficient RL framework secretly brings you off-policy RL training"; verl's ``rollout_is``).

        token:     w_t = min(exp(old_t - rollout_t), cap)
        sequence:  w_i = min(exp(sum_t (old_t - rollout_t)), cap), on every token of row i

    Args:
        old_logprobs: (B, T) sampled-token log-probs recomputed by the learner (pi_old).
        rollout_logprobs: (B, T) the same as reported by the rollout engine.
        mask: (B, T) bool or 0/1 float; 1 on completion tokens.
        level: "token" or "sequence" (``MISMATCH_LEVELS``).
        cap: truncation threshold (> 0).

    Returns:
        (B, T) detached weights, 0 at masked-out positions (pass to ``policy_loss(weights=)``),
        and detached metrics over masked-in tokens: ``mismatch_weight_mean``,
        ``mismatch_weight_min``, ``mismatch_weight_max`` (1 when nothing is masked in) and
        ``mismatch_capped_frac``, the fraction of tokens whose weight was capped.
    """
    if level not in MISMATCH_LEVELS:
        raise ValueError(f"unknown mismatch level {level!r}; known: {list(MISMATCH_LEVELS)}")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    mask, (old, rollout) = masked_inputs(
        mask, old_logprobs=old_logprobs, rollout_logprobs=rollout_logprobs
    )
    log_ratio = (old - rollout).detach()  # (B, T), 0 off the mask
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=1, keepdim=True).expand_as(log_ratio)
    ratio = torch.exp(log_ratio)  # may overflow to inf; the cap takes it back to cap
    weights = torch.where(mask, ratio.clamp(max=cap), 0.0)  # (B, T)
    capped = (mask & (ratio > cap)).sum() / mask.sum().clamp(min=1)
    return weights, {
        **_masked_stats(weights, mask, "mismatch_weight"),
        "mismatch_capped_frac": capped,
    }


# ---------------------------------------------------------------------------- off-policy


def decoupled_policy_loss(
    logprobs: Tensor,
    proximal_logprobs: Tensor,
    behaviour_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    level: str = "token",
    cap: float = 2.0,
    **policy_options,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy optimization";
    AReaL, Fu et al. 2025) for samples the engine drew with older or slightly different
    weights: the clip is anchored at the *proximal* policy (the learner's weights before this
    update), and a capped importance weight carries the samples over from the *behaviour*
    policy that generated them (the engine's per-token logprobs, k weight versions old):

        r_t = exp(logp_t - prox_t)                        the clipped PPO ratio
        w_t = min(exp(prox_t - behav_t), cap)             (level "sequence": one w_i per row)
        loss_t = w_t * max(-A r_t, -A clip(r_t, 1 - clip_low, 1 + clip_high))

    reduced by ``policy_options["loss_agg"]``, so that a stale sample neither moves the policy
    further than the clip allows from where it is now (the clip is never anchored to a policy
    that generated nothing, miles PR#1829) nor counts more than ``cap`` times. Finite for any
    finite logprob gap: exp of ``prox - behav`` may overflow to inf and the cap takes it back,
    the ratio's log is clamped to +-20. With behaviour == proximal (synchronous sampling, up to
    the engine's numerics) every w_t is 1 and this is ``policy_loss``.

    Args: logprobs (B, T) with grad; proximal_logprobs and behaviour_logprobs (B, T); the
    rest as ``policy_loss`` (``policy_options``: clip_low, clip_high, loss_agg, ...) and
    ``mismatch_weights`` (level, cap).

    Returns: the loss and ``policy_loss``'s metrics with ``mismatch_weights``'s.
    """
    weights, weight_metrics = mismatch_weights(
        proximal_logprobs, behaviour_logprobs, mask, level=level, cap=cap
    )
    loss, metrics = policy_loss(
        logprobs, proximal_logprobs, advantages, mask, weights=weights, **policy_options
    )
    return loss, {**metrics, **weight_metrics}


# ---------------------------------------------------------------------------- entropy


def _entropy(logits: Tensor) -> Tensor:
    """(N, V) -> (N,): H = logsumexp(z) - sum softmax(z) z, with z shifted by its row max so
    that neither term grows with the logits' offset; -inf logits (masked vocab) add 0."""
    z = logits - logits.max(dim=-1, keepdim=True).values.detach()  # (N, V), max 0
    lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (N, 1), in [0, log V]
    probs = torch.exp(z - lse)  # (N, V)
    return (lse - (probs * z.masked_fill(z == -torch.inf, 0.0)).sum(-1, keepdim=True)).squeeze(-1)


def entropy_from_logits(logits: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Entropy of the next-token distribution at each position, H = logsumexp(z) - sum_v
    softmax(z)_v z_v, differentiable (for ``policy_loss(entropy=)``) and in at least float32.

    The (B * T) positions go through ``chunk_size`` at a time, so that without grad only one
    chunk's float32 copy of (bf16) logits is alive at once, as verl's
    ``entropy_from_logits_with_chunking``. With grad each chunk's softmax is kept for backward.

    Args:
        logits: (B, T, V) unnormalised logits (any float dtype; -inf entries allowed as long
            as a row has one finite entry).
        chunk_size: positions per chunk.

    Returns:
        (B, T) entropy in nats, dtype float32 (float64 for float64 logits).

    >>> entropy_from_logits(torch.zeros(1, 1, 4)).item() == torch.tensor(4.0).log().item()
    True
    """
    if logits.dim() != 3:
        raise ValueError(f"expected logits (B, T, V), got shape {tuple(logits.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    flat = logits.reshape(-1, logits.shape[-1])  # (B * T, V)
    parts = [_entropy(chunk.to(dtype)) for chunk in flat.split(chunk_size)]
    return torch.cat(parts).reshape(logits.shape[:2])


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
