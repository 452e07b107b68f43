"""Masked (B, T) tensors: input checks and the loss-aggregation modes shared by ``rl.losses``.

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

# ---------------------------------------------------------------------------- masked inputs


def bool_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    """The (B, T) mask as bool, after checking its shape and that a float mask holds 0/1."""
    if mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != loss shape {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("a float mask must hold only 0 and 1")
    return mask != 0


def check_finite(name: str, values: Tensor, mask: Tensor) -> None:
    """Raise on the first non-finite value at a masked-in position. values, mask: (B, T)."""
    bad = (mask & ~torch.isfinite(values)).nonzero()
    if bad.numel() > 0:
        row, token = (int(i) for i in bad[0])
        raise ValueError(f"non-finite {name} at row {row}, token {token}")


def masked_inputs(mask: Tensor, **tensors: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Check and clean named (B, T) inputs against a mask.

    Each tensor must have the mask's shape and be finite where the mask is 1 (the error names
    the tensor, row and token). Returns the bool mask and the tensors, in keyword order, with
    masked-out positions set to 0, so that no padding NaN/inf can reach a value or a gradient.
    """
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"expected equal (B, T) shapes, got {shapes}")
    mask = bool_mask(mask, next(iter(tensors.values())).shape)
    for name, values in tensors.items():
        check_finite(name, values, mask)
    return mask, [torch.where(mask, values, 0.0) for values in tensors.values()]


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
    mask = bool_mask(mask, loss_mat.shape)
    masked = torch.where(mask, loss_mat, 0.0)  # (B, T), padding NaN/inf cannot leak
    counts = mask.sum(dim=1)  # (B,)
    max_len = loss_mat.shape[1] if max_len is None else max_len
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    return AGGREGATIONS[mode](masked, counts, max_len, num_tokens, num_seqs)
