"""Turn token sequences into padded tensors for the learner, and split them across ranks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """Right-padded sequences (prompt + completion). ``loss_mask`` (B, T-1) marks the
    completion tokens, aligned with ``token_logprobs`` (position t predicts token t+1)."""

    input_ids: Tensor  # (B, T) long
    attention_mask: Tensor  # (B, T) long
    loss_mask: Tensor  # (B, T-1) float
    advantages: Tensor | None = None  # (B,) float
    rollout_logprobs: Tensor | None = None  # (B, T-1) float, 0 off the mask

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: slice | Tensor) -> Batch:
        def pick(t):
            return None if t is None else t[rows]

        return Batch(
            pick(self.input_ids),
            pick(self.attention_mask),
            pick(self.loss_mask),
            pick(self.advantages),
            pick(self.rollout_logprobs),
        )

    def padded(self, rows: int) -> Batch:
        """This batch plus ``rows`` inert rows (copies of row 0 with an empty loss mask and zero
        advantage): they add nothing to any loss or gradient, only forward/backward passes."""
        if rows == 0:
            return self

        def extend(t: Tensor | None, fill_zero: bool) -> Tensor | None:
            if t is None:
                return None
            extra = t[:1].expand(rows, *t.shape[1:]).clone()
            return torch.cat([t, extra.zero_() if fill_zero else extra])

        return Batch(
            extend(self.input_ids, False),
            extend(self.attention_mask, False),
            extend(self.loss_mask, True),
            extend(self.advantages, True),
            extend(self.rollout_logprobs, True),
        )

    def trimmed(self) -> Batch:
        """Drop the padding columns no row of this batch uses."""
        width = int(self.attention_mask.sum(1).max())
        return Batch(
            self.input_ids[:, :width],
            self.attention_mask[:, :width],
            self.loss_mask[:, : width - 1],
            self.advantages,
            None if self.rollout_logprobs is None else self.rollout_logprobs[:, : width - 1],
        )


def make_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    advantages: Sequence[float] | None = None,
    rollout_logprobs: Sequence[Sequence[float]] | None = None,
) -> Batch:
    """Pad ``prompt + completion`` pairs to the longest; mask the completion tokens."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros((len(lengths), width - 1))
    lps = torch.zeros((len(lengths), width - 1)) if rollout_logprobs is not None else None
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(list(p) + list(c))
        attn[i, :n] = 1
        mask[i, len(p) - 1 : n - 1] = 1  # logprob at position t is of token t + 1
        if lps is not None:
            lps[i, len(p) - 1 : n - 1] = torch.tensor(rollout_logprobs[i], dtype=torch.float32)
    adv = None if advantages is None else torch.tensor(advantages, dtype=torch.float32)
    return Batch(ids, attn, mask, adv, lps)


def shard_rows(n: int, world_size: int) -> list[slice]:
    """Contiguous, near-equal row ranges, one per rank."""
    base, extra = divmod(n, world_size)
    bounds = [0]
    for r in range(world_size):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return [slice(bounds[r], bounds[r + 1]) for r in range(world_size)]
