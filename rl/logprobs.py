"""Teacher-forced per-token log-probabilities (and entropies) of a causal LM."""

from __future__ import annotations

import torch
from torch import Tensor

from rl.losses import entropy_from_logits


def token_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probability of each next token: (B, T) ids -> (B, T-1) logprobs of ids[:, 1:].

    Logits are scaled by ``1 / temperature`` so the result is the log-probability under the
    distribution the rollout engine sampled from. Computed in float32. With ``with_entropy``
    also returns the (B, T-1) entropy of that distribution at each position, differentiable
    only with ``entropy_grad`` (an entropy bonus); otherwise a detached metric.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, :-1].float()  # (B, T-1, V)
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
    picked = logits.gather(-1, targets).squeeze(-1)  # (B, T-1)
    logprobs = picked - torch.logsumexp(logits, dim=-1)
    if not with_entropy:
        return logprobs
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = entropy_from_logits(logits)
    return logprobs, entropy
