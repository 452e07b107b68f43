"""Teacher-forced per-token log-probabilities (and entropies) of a causal LM.

Two savings over ``log_softmax(model(ids).logits).gather(...)``, which matter at real
vocabulary sizes (150k entries: a float32 log-softmax of 64 x 1024 positions is 40 GB):

- logits are computed from ``start`` on only (transformers' ``logits_to_keep``): the prompt's
  positions, which no loss reads, never reach the LM head;
- ``selected_logprobs`` picks each target's log-probability a chunk of positions at a time
  and keeps only the model-dtype logits for backward: no full float32 copy, no log-softmax.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rl.losses import entropy_from_logits

CHUNK = 1024  # positions per chunk of float32 work


class _SelectedLogprobs(torch.autograd.Function):
    """log softmax(logits * scale)[target] per row of (N, V) logits; backward recomputes the
    softmax chunk by chunk: d/dz = scale * (onehot(target) - softmax(scale * z))."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, scale: float, chunk: int) -> Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for s in range(0, logits.shape[0], chunk):
            z = logits[s : s + chunk].float() * scale
            picked = z.gather(-1, targets[s : s + chunk, None]).squeeze(-1)
            out[s : s + chunk] = picked - torch.logsumexp(z, dim=-1)
        ctx.save_for_backward(logits, targets)
        ctx.scale, ctx.chunk = scale, chunk
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        logits, targets = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        out = torch.empty_like(logits)
        for s in range(0, logits.shape[0], chunk):
            g = torch.softmax(logits[s : s + chunk].float() * scale, dim=-1).neg_()
            g.scatter_add_(-1, targets[s : s + chunk, None], torch.ones_like(g[:, :1]))
            out[s : s + chunk] = g.mul_(grad[s : s + chunk, None] * scale).to(logits.dtype)
        return out, None, None, None


def selected_logprobs(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, chunk: int = CHUNK
) -> Tensor:
    """``log_softmax(logits / temperature)`` at ``targets``: (..., V), (...) -> (...) float32,
    differentiable in ``logits``, with at most ``chunk`` positions' float32 copies alive."""
    shape = targets.shape
    flat = _SelectedLogprobs.apply(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), 1.0 / temperature, chunk
    )
    return flat.view(shape)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    start: int = 0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probability of each next token: (B, T) ids -> (B, T-1) logprobs of ids[:, 1:].

    Logits are scaled by ``1 / temperature`` so the result is the log-probability under the
    distribution the rollout engine sampled from. Computed in float32. Positions before
    ``start`` (e.g. the batch's shortest prompt minus one) are not computed and hold 0. With
    ``with_entropy`` also returns the (B, T-1) entropy of that distribution at each position
    (0 before ``start``), differentiable only with ``entropy_grad`` (an entropy bonus);
    otherwise a detached metric.
    """
    width = input_ids.shape[1]
    start = max(0, min(start, width - 1))
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=False,
        logits_to_keep=width - start,  # positions start .. T-1; the last predicts nothing
    ).logits[:, :-1]  # (B, T-1-start, V)
    logprobs = selected_logprobs(logits, input_ids[:, start + 1 :], temperature)
    logprobs = torch.nn.functional.pad(logprobs, (start, 0))
    if not with_entropy:
        return logprobs
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        scaled = logits if temperature == 1.0 else logits / temperature
        entropy = torch.nn.functional.pad(entropy_from_logits(scaled), (start, 0))
    return logprobs, entropy


def first_target(loss_mask: Tensor) -> int:
    """The first position any row's loss reads ((B, T-1) mask); 0 for an empty mask."""
    used = torch.nonzero(loss_mask.any(0))
    return int(used[0]) if len(used) else 0
