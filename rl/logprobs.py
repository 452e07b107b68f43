"""Teacher-forced per-token log-probabilities (and entropies) of a causal LM.

Two savings over ``log_softmax(model(ids).logits).gather(...)``, which matter at real
vocabulary sizes (150k entries: a float32 log-softmax of 64 x 1024 positions is 40 GB):

- logits are computed from ``start`` on only (transformers' ``logits_to_keep``): the prompt's
  positions, which no loss reads, never reach the LM head;
- ``selected_logprobs`` picks each target's log-probability a chunk of positions at a time
  and keeps only the model-dtype logits for backward: no full float32 copy, no log-softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    # positions start .. T-2 (the last predicts nothing), picked before the head: sliced
    # logits would be copied by the reshape below and given a full-size gradient
    kept = torch.arange(start, width - 1, device=input_ids.device)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=False,
        logits_to_keep=kept,
    ).logits  # (B, T-1-start, V), contiguous
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


@dataclass
class SharedPrompts:
    """Rows that share a prompt laid out as ``[prompt, completion 1, completion 2, ...]`` in one
    packed row: the prompt goes through the model once, each completion attends to it and to
    its own earlier tokens only, at the positions it has in its own row."""

    input_ids: Tensor  # (N, L)
    position_ids: Tensor  # (N, L)
    attention: Tensor  # (N, 1, L, L) bool: query attends key
    valid: Tensor  # (N, L) bool: real tokens (not padding)
    source: Tensor  # (B, T-1) long: flat index into the kept (N, L - start) logits of the
    # position predicting each loss token
    start: int  # first packed position any loss reads

    def to(self, device: torch.device | str) -> SharedPrompts:
        tensors = (self.input_ids, self.position_ids, self.attention, self.valid, self.source)
        return SharedPrompts(*(t.to(device) for t in tensors), self.start)


def share_prompts(
    input_ids: Tensor, loss_mask: Tensor, max_tokens: int, min_saving: float = 0.1
) -> SharedPrompts | None:
    """Pack rows whose loss reads the same prompt (a GRPO group's completions), at most
    ``max_tokens`` per packed row; None when that would save under ``min_saving`` of the
    tokens (or no row has a loss). Rows with an empty loss mask are left out: they add
    nothing to a loss. The prompt of a row is everything before its first loss target."""
    mask = loss_mask > 0
    rows = torch.nonzero(mask.any(1)).flatten().tolist()
    if not rows:
        return None
    first = mask.float().argmax(1)  # position predicting the first completion token
    last = mask.shape[1] - 1 - mask.flip(1).float().argmax(1)
    prompt_len, completion_len = (first + 1).tolist(), (last - first + 1).tolist()
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for b in rows:
        by_prompt.setdefault(tuple(input_ids[b, : prompt_len[b]].tolist()), []).append(b)
    packs: list[list[int]] = []  # rows per packed row, in packing order
    for members in by_prompt.values():
        packs.append([])
        size = prompt_len[members[0]]
        for b in members:
            if packs[-1] and size + completion_len[b] > max_tokens:
                packs.append([])
                size = prompt_len[b]
            packs[-1].append(b)
            size += completion_len[b]
    lengths = [prompt_len[pack[0]] + sum(completion_len[b] for b in pack) for pack in packs]
    if sum(lengths) > (1 - min_saving) * sum(prompt_len[b] + completion_len[b] for b in rows):
        return None
    width = max(lengths)
    start = min(prompt_len[pack[0]] for pack in packs) - 1
    packed = torch.zeros(len(packs), width, dtype=input_ids.dtype)
    positions = torch.zeros(len(packs), width, dtype=torch.long)
    segment = torch.full((len(packs), width), -2, dtype=torch.long)  # -1 prompt, i completion i
    source = torch.zeros(mask.shape, dtype=torch.long)
    for j, pack in enumerate(packs):
        p = prompt_len[pack[0]]
        packed[j, :p] = input_ids[pack[0], :p]
        positions[j, :p] = torch.arange(p)
        segment[j, :p] = -1
        offset = p
        for i, b in enumerate(pack):
            n = completion_len[b]
            packed[j, offset : offset + n] = input_ids[b, p : p + n]
            positions[j, offset : offset + n] = torch.arange(p, p + n)
            segment[j, offset : offset + n] = i
            # row b's loss position t predicts token t + 1: its hidden state sits at packed
            # position t (the prompt's last, t = p - 1) or offset + t - p (a completion token);
            # counted among the logits kept from ``start`` on
            t = torch.arange(p - 1, p + n - 1)
            source[b, p - 1 : p + n - 1] = (
                j * (width - start) - start + torch.where(t < p, t, offset + t - p)
            )
            offset += n
    valid = segment > -2
    causal = positions[:, :, None] >= positions[:, None, :]
    same = (segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == -1)
    attention = (causal & same & valid[:, None, :]) | torch.eye(width, dtype=torch.bool)
    return SharedPrompts(packed, positions, attention[:, None], valid, source, start)


def shared_token_logprobs(
    model: torch.nn.Module,
    packed: SharedPrompts,
    input_ids: Tensor,
    loss_mask: Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``token_logprobs`` of the rows ``packed`` holds, from one forward of the packed rows:
    (B, T-1) values on ``loss_mask``, 0 elsewhere (and entropies, as token_logprobs)."""
    device = packed.input_ids.device
    logits = model(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=packed.attention,
        use_cache=False,
        logits_to_keep=packed.input_ids.shape[1] - packed.start,
    ).logits  # (N, L - start, V)
    on = loss_mask.to(device) > 0
    picked = logits.reshape(-1, logits.shape[-1])[packed.source[on]]  # (tokens, V)
    targets = input_ids.to(device)[:, 1:][on]
    out = torch.zeros(loss_mask.shape, dtype=torch.float32, device=device)
    out = out.masked_scatter(on, selected_logprobs(picked, targets, temperature))
    if not with_entropy:
        return out
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        scaled = picked if temperature == 1.0 else picked / temperature
        entropy = torch.zeros(loss_mask.shape, dtype=torch.float32, device=device)
        entropy = entropy.masked_scatter(on, entropy_from_logits(scaled[None])[0].float())
    return out, entropy
