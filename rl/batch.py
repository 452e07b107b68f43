"""Turn token sequences into padded tensors for the learner, and split them across ranks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Batch:
    """Right-padded sequences (prompt + completion). ``loss_mask`` (B, T-1) marks the
    completion tokens, aligned with ``token_logprobs`` (position t predicts token t+1).
    Per-token fields are (B, T-1) and hold 0 off the mask."""

    input_ids: Tensor  # (B, T) long
    attention_mask: Tensor  # (B, T) long
    loss_mask: Tensor  # (B, T-1) float
    advantages: Tensor | None = None  # (B,) float
    rollout_logprobs: Tensor | None = None  # (B, T-1) the rollout engine's sampling logprobs
    old_logprobs: Tensor | None = None  # (B, T-1) the learner's, before this step's updates
    ref_logprobs: Tensor | None = None  # (B, T-1) the frozen reference policy's

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def _map(self, fn) -> Batch:
        """A new Batch with ``fn(name, tensor)`` applied to every field that is set."""
        return Batch(
            **{
                f.name: None if getattr(self, f.name) is None else fn(f.name, getattr(self, f.name))
                for f in fields(self)
            }
        )

    def select(self, rows: slice | Tensor) -> Batch:
        return self._map(lambda name, t: t[rows])

    def padded(self, rows: int) -> Batch:
        """This batch plus ``rows`` inert rows (copies of row 0 with an empty loss mask and zero
        advantage): they add nothing to any loss or gradient, only forward/backward passes."""
        if rows == 0:
            return self

        def extend(name: str, t: Tensor) -> Tensor:
            extra = t[:1].expand(rows, *t.shape[1:]).clone()
            return torch.cat([t, extra if name in _SEQUENCE_FIELDS else extra.zero_()])

        return self._map(extend)

    def trimmed(self) -> Batch:
        """Drop the padding columns no row of this batch uses."""
        width = int(self.attention_mask.sum(1).max())

        def trim(name: str, t: Tensor) -> Tensor:
            if name in _SEQUENCE_FIELDS:
                return t[:, :width]
            return t if t.dim() == 1 else t[:, : width - 1]

        return self._map(trim)


_SEQUENCE_FIELDS = ("input_ids", "attention_mask")  # (B, T); every other field follows the mask


def make_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    advantages: Sequence[float] | None = None,
    rollout_logprobs: Sequence[Sequence[float]] | None = None,
    completion_masks: Sequence[Sequence[int] | None] | None = None,
) -> Batch:
    """Pad ``prompt + completion`` pairs to the longest; mask the completion tokens (of a
    multi-turn completion, only those its ``completion_masks`` entry marks 1: the sampled
    ones, not the tool output)."""
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
        if completion_masks is not None and completion_masks[i] is not None:
            mask[i, len(p) - 1 : n - 1] = torch.tensor(completion_masks[i], dtype=torch.float32)
        if lps is not None:
            lps[i, len(p) - 1 : n - 1] = torch.tensor(rollout_logprobs[i], dtype=torch.float32)
    adv = None if advantages is None else torch.tensor(advantages, dtype=torch.float32)
    return Batch(ids, attn, mask, adv, lps)


def micro_batch_starts(lengths: Sequence[int], max_rows: int, max_tokens: int | None) -> list[int]:
    """Where each micro-batch begins, for rows sorted longest first: at most ``max_rows`` rows
    and, with ``max_tokens``, at most that many padded tokens (rows x its first, longest row)
    each, so short rows travel many to a pass and long rows few (little padding computed);
    a row longer than ``max_tokens`` is a micro-batch of its own."""
    starts = [0] if len(lengths) else []
    for i in range(1, len(lengths)):
        rows = i - starts[-1] + 1
        if rows > max_rows or (max_tokens is not None and rows * lengths[starts[-1]] > max_tokens):
            starts.append(i)
    return starts
