"""Teacher-forced per-token log-probabilities of a causal LM."""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, temperature: float = 1.0
) -> Tensor:
    """Log-probability of each next token: (B, T) ids -> (B, T-1) logprobs of ids[:, 1:].

    Logits are scaled by ``1 / temperature`` so the result is the log-probability under the
    distribution the rollout engine sampled from. Computed in float32, one row at a time
    over the vocabulary (no (B, T, V) log-softmax held for backward beyond the logits).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, :-1].float()  # (B, T-1, V)
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
    picked = logits.gather(-1, targets).squeeze(-1)  # (B, T-1)
    return picked - torch.logsumexp(logits, dim=-1)
