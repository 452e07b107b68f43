"""What one GRPO update computes: the loss options, typed and frozen, resolved once from a
recipe's ``grpo`` section and handed to every learner rank as one object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LossConfig:
    """Options of the learner's ``grpo_step``. Defaults are plain on-policy GRPO."""

    clip_low: float = 0.2
    """The importance ratio is clipped below at 1 - clip_low."""
    clip_high: float = 0.2
    """... and above at 1 + clip_high (DAPO's clip-higher raises it)."""
    clip_ratio_c: float | None = None
    """Dual clip (> 1) of negative-advantage tokens; None: off."""
    loss_agg: str = "token-mean"
    """verl's aggregation mode (rl.aggregation.AGGREGATIONS)."""
    max_len: int | None = None
    """seq-mean-token-sum-norm's constant: the recipe's max_new_tokens, not a batch's."""
    ratio_level: str = "token"
    """token (PPO/GRPO) or sequence (GSPO) importance ratios."""
    entropy_coef: float = 0.0
    """Entropy bonus weight; > 0 makes the entropy differentiable."""
    kl_coef: float = 0.0
    """beta of the KL loss term against ``Batch.ref_logprobs``; 0: no KL in the loss (a KL in
    the reward is applied by the driver before advantages)."""
    kl_estimator: str = "k3"
    """k1, k2 or k3 (rl.kl.KL_ESTIMATORS)."""
    mismatch: str = "none"
    """Truncated importance weights old / rollout per ``token`` or ``sequence``; none: off."""
    mismatch_cap: float = 2.0
    """Cap of those weights."""
    temperature: float = 1.0
    """Sampling temperature: the learner scales its logits by the same value."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping by global norm; None: off."""
    mtp_loss_weight: float = 0.0
    """Weight of the MTP module's NLL of the sampled tokens (model/mtp.py), detached from the
    policy: the draft follows the policy; 0: the draft stays as it is."""

    @classmethod
    def from_grpo(cls, grpo: Any) -> LossConfig:
        """From a recipe's ``grpo`` section (rl.config.GRPOConfig)."""
        return cls(
            clip_low=grpo.clip_low,
            clip_high=grpo.clip_high,
            clip_ratio_c=grpo.clip_ratio_c,
            loss_agg=grpo.loss_agg,
            max_len=grpo.max_new_tokens,
            ratio_level=grpo.ratio_level,
            entropy_coef=grpo.entropy_coef,
            kl_coef=grpo.kl_coef if grpo.kl_in == "loss" else 0.0,
            kl_estimator=grpo.kl_estimator,
            mismatch=grpo.mismatch_correction,
            mismatch_cap=grpo.mismatch_cap,
            temperature=grpo.temperature,
            max_grad_norm=grpo.max_grad_norm,
            mtp_loss_weight=grpo.mtp_loss_weight,
        )

    @property
    def every_row_learns(self) -> bool:
        """Whether rows with advantage 0 still move the loss: through a KL term or an
        entropy bonus. Otherwise such a row adds exactly 0 to the loss and its gradient,
        and the learner may skip it."""
        return self.kl_coef > 0 or self.entropy_coef != 0

    def policy_loss_options(self) -> dict[str, Any]:
        """The keyword arguments ``rl.losses.policy_loss`` takes from this config."""
        return {
            "clip_low": self.clip_low,
            "clip_high": self.clip_high,
            "clip_ratio_c": self.clip_ratio_c,
            "loss_agg": self.loss_agg,
            "max_len": self.max_len,
            "ratio_level": self.ratio_level,
            "entropy_coef": self.entropy_coef,
        }
