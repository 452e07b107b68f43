"""Golden tests for rl/losses.py: every expected value is derived by hand in a comment."""

import math

import pytest
import torch

from rl.losses import AGGREGATIONS, aggregate, kl_penalty, policy_loss, sft_loss

INF, NAN = float("inf"), float("nan")


def _close(actual: torch.Tensor, expected) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- aggregate

# Row sums S = [1+2+3, 5, 0] = [6, 5, 0]; token counts n = [3, 1, 0]; row 2 is fully masked and
# holds NaN/inf, which must not leak.
LOSS_MAT = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [NAN, INF, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)

AGGREGATE_CASES = [
    # mode, kwargs, expected
    ("token-mean", {}, 11 / 4),  # (6 + 5) / (3 + 1) = 2.75
    ("token-mean", {"num_tokens": 10}, 11 / 10),
    ("seq-mean-token-mean", {}, (6 / 3 + 5 / 1) / 2),  # row means [2, 5]; empty row not counted
    ("seq-mean-token-mean", {"num_seqs": 4}, 7 / 4),
    ("seq-mean-token-sum", {}, (6 + 5) / 2),  # 5.5
    ("seq-mean-token-sum", {"num_seqs": 4}, 11 / 4),
    ("seq-mean-token-sum-norm", {}, (6 / 4 + 5 / 4) / 2),  # max_len = T = 4 -> 1.375
    ("seq-mean-token-sum-norm", {"max_len": 8}, (6 / 8 + 5 / 8) / 2),  # 0.6875
    ("seq-mean-token-sum-norm", {"max_len": 8, "num_seqs": 5}, 11 / 8 / 5),
]


@pytest.mark.parametrize("mode, kwargs, expected", AGGREGATE_CASES)
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_aggregate_modes(mode, kwargs, expected, mask_dtype):
    _close(aggregate(LOSS_MAT, MASK.to(mask_dtype), mode, **kwargs), expected)


@pytest.mark.parametrize("mode", list(AGGREGATIONS))
def test_aggregate_fully_masked_batch_is_zero_with_zero_gradient(mode):
    # Nothing to average: loss 0, gradient 0 everywhere, even over NaN padding.
    loss_mat = LOSS_MAT.clone().requires_grad_()
    loss = aggregate(loss_mat, torch.zeros(3, 4), mode)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(loss_mat.grad, torch.zeros(3, 4))


def test_aggregate_gradient_ignores_padding():
    # token-mean over 4 tokens: d loss / d l_bt = 1/4 where masked in, 0 elsewhere.
    loss_mat = LOSS_MAT.clone().requires_grad_()
    aggregate(loss_mat, MASK, "token-mean").backward()
    assert torch.equal(loss_mat.grad, MASK.float() / 4)


def test_aggregate_rejects_bad_mask_and_unknown_mode():
    with pytest.raises(ValueError, match="only 0 and 1"):
        aggregate(LOSS_MAT, MASK.float() * 0.5, "token-mean")
    with pytest.raises(ValueError, match="known:.*'seq-mean-token-sum-norm'"):
        aggregate(LOSS_MAT, MASK, "sum")


# ---------------------------------------------------------------------------- policy_loss

# Row 0, A = +2, ratios [1.0, 1.5, 0.5, 1.25]; row 1, A = -1, ratios [0.5, 1.5, 4.0, padding].
# Per-token loss = max(-A r, -A clip(r, 0.8, 1.28)) with clip_low 0.2, clip_high 0.28:
#   row 0: r=1    -> -2
#          r=1.5  -> max(-3, -2.56)  = -2.56  upper clip active (A > 0)
#          r=0.5  -> max(-1, -1.6)   = -1     lower bound reached, but inactive for A > 0
#          r=1.25 -> -2.5                     inside [0.8, 1.28]
#   row 1: r=0.5  -> max(0.5, 0.8)   = 0.8    lower clip active (A < 0)
#          r=1.5  -> max(1.5, 1.28)  = 1.5    upper bound reached, but inactive for A < 0
#          r=4    -> max(4, 1.28)    = 4      dual clip (c = 3): min(4, 3 * 1) = 3
# Sum without dual clip: -8.06 + 6.3 = -1.76; with it: -8.06 + 5.3 = -2.76; 7 tokens.
RATIOS = torch.tensor([[1.0, 1.5, 0.5, 1.25], [0.5, 1.5, 4.0, 1.0]])
ADV = torch.tensor([2.0, -1.0])
PG_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)


def _pg_inputs():
    """logprobs = log(ratio), old = 0; padding holds -inf (new) and NaN (old)."""
    logprobs = RATIOS.log().masked_fill(~PG_MASK, -INF).requires_grad_()
    old = torch.zeros(2, 4).masked_fill(~PG_MASK, NAN)
    return logprobs, old


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_policy_loss_asymmetric_and_dual_clip(mask_dtype):
    logprobs, old = _pg_inputs()
    loss, m = policy_loss(
        logprobs, old, ADV, PG_MASK.to(mask_dtype), clip_high=0.28, clip_ratio_c=3.0
    )
    _close(loss, -2.76 / 7)
    _close(m["clip_frac_high"], 1 / 7)  # row 0, r=1.5
    _close(m["clip_frac_low"], 1 / 7)  # row 1, r=0.5
    _close(m["clip_frac_dual"], 1 / 7)  # row 1, r=4
    _close(m["ratio_mean"], (1 + 1.5 + 0.5 + 1.25 + 0.5 + 1.5 + 4) / 7)  # 10.25 / 7
    _close(m["ratio_min"], 0.5)
    _close(m["ratio_max"], 4.0)
    assert not any(v.requires_grad for v in m.values())

    # d loss / d logp = d(-A r)/d logp / 7 = -A r / 7 where the unclipped term is selected,
    # 0 where a clip (or the dual constant) is selected, 0 on padding.
    loss.backward()
    expected_grad = torch.tensor([[-2.0, 0.0, -1.0, -2.5], [0.0, 1.5, 0.0, 0.0]]) / 7
    _close(logprobs.grad, expected_grad)


def test_policy_loss_without_dual_clip():
    # Row 1, r=4 keeps its loss 4: sum -1.76 over 7 tokens.
    logprobs, old = _pg_inputs()
    loss, m = policy_loss(logprobs, old, ADV, PG_MASK, clip_high=0.28)
    _close(loss, -1.76 / 7)
    _close(m["clip_frac_dual"], 0.0)


def test_policy_loss_symmetric_clip_catches_1_25():
    # clip_high = 0.2: row 0, r=1.5 -> max(-3, -2.4) = -2.4 (was -2.56), and r=1.25 is now
    # above 1.2 -> -2.4 (was -2.5) and counts as clipped. Row 1 unchanged (r=1.5: max(1.5, 1.2)).
    # Sum -2.76 + 0.16 + 0.1 = -2.5; upper clip fraction 2/7.
    logprobs, old = _pg_inputs()
    loss, m = policy_loss(logprobs, old, ADV, PG_MASK, clip_ratio_c=3.0)
    _close(loss, -2.5 / 7)
    _close(m["clip_frac_high"], 2 / 7)
    _close(m["clip_frac_low"], 1 / 7)


def test_policy_loss_on_policy_no_clip_active():
    # ratio 1 everywhere: loss = token mean of -A = (-1 - 1 + 1) / 3 = -1/3; no clipping;
    # gradient -A / 3 per token.
    logprobs = torch.tensor([[-0.7, -1.2], [-0.3, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, m = policy_loss(logprobs, logprobs.detach(), torch.tensor([1.0, -1.0]), mask)
    _close(loss, -1 / 3)
    for key in ("clip_frac_low", "clip_frac_high", "clip_frac_dual"):
        _close(m[key], 0.0)
    for key in ("ratio_mean", "ratio_min", "ratio_max"):
        _close(m[key], 1.0)
    loss.backward()
    _close(logprobs.grad, torch.tensor([[-1 / 3, -1 / 3], [1 / 3, 0.0]]))


@pytest.mark.parametrize("advantage, direction", [(1.0, 1.0), (-1.0, -1.0)])
def test_gradient_step_moves_logprob_with_advantage_sign(advantage, direction):
    # One SGD step on the loss raises the logprob of a positive-advantage token, lowers a
    # negative one.
    logprobs = torch.tensor([[-1.0]], requires_grad=True)
    loss, _ = policy_loss(logprobs, logprobs.detach(), torch.tensor([advantage]), torch.ones(1, 1))
    loss.backward()
    step = -0.1 * logprobs.grad.item()
    assert math.copysign(1.0, step) == direction


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", -2 / 2),  # 2 tokens
        ("seq-mean-token-mean", -1 / 1),  # row 0 mean -1, one non-empty row
        ("seq-mean-token-sum", -2 / 1),
        ("seq-mean-token-sum-norm", (-2 / 2) / 1),  # max_len = T = 2
    ],
)
def test_policy_loss_fully_masked_row_and_batch(mode, expected):
    # Row 1 is empty (and NaN): it adds nothing and is not counted. Row 0 alone: on-policy,
    # A = 1, per-token loss -1 on two tokens, row sum -2.
    logprobs = torch.tensor([[-0.5, -0.5], [NAN, NAN]], requires_grad=True)
    mask = torch.tensor([[True, True], [False, False]])
    loss, _ = policy_loss(
        logprobs, logprobs.detach(), torch.tensor([1.0, 1.0]), mask, loss_agg=mode
    )
    _close(loss, expected)
    loss.backward()
    assert torch.isfinite(logprobs.grad).all()

    loss, m = policy_loss(logprobs, logprobs.detach(), torch.ones(2), mask & False, loss_agg=mode)
    assert loss.item() == 0.0 and m["clip_frac_high"].item() == 0.0


@pytest.mark.parametrize("which", ["logprobs", "old_logprobs"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_policy_loss_rejects_non_finite_masked_in(which, bad):
    inputs = {"logprobs": torch.zeros(2, 3), "old_logprobs": torch.zeros(2, 3)}
    inputs[which][1, 2] = bad
    inputs[which][1, 0] = bad  # masked out: ignored
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    with pytest.raises(ValueError, match=f"non-finite {which} at row 1, token 2"):
        policy_loss(inputs["logprobs"], inputs["old_logprobs"], torch.ones(2), mask)


def test_policy_loss_rejects_non_finite_advantage_and_bad_dual_clip():
    lp = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="non-finite advantages at row 1"):
        policy_loss(lp, lp, torch.tensor([0.0, NAN]), torch.ones(2, 2))
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        policy_loss(lp, lp, torch.zeros(2), torch.ones(2, 2), clip_ratio_c=1.0)


# ---------------------------------------------------------------------------- micro-batches


def _invariance_batch():
    """B=5, T=4 with ragged lengths and an empty row (row 3). Masked-in ratios:
    row 0 (A=-1.5) [0.83, 0.66, 1.11, 0.69], row 1 (A=-0.5) [1.08, 0.95], row 2 (A=2)
    [1.37, 1.13, 1.22], row 4 (A=0.7) [1.34]: lower, upper and dual (c=1.05) clips all fire."""
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(5, 4, generator=g) * 2
    old = logprobs + (torch.rand(5, 4, generator=g) - 0.5)  # ratios in [0.61, 1.65]
    lengths = torch.tensor([4, 2, 3, 0, 1])
    mask = torch.arange(4)[None, :] < lengths[:, None]  # (5, 4)
    advantages = torch.tensor([-1.5, -0.5, 2.0, 1.0, 0.7])
    return logprobs, old, advantages, mask


@pytest.mark.parametrize("mode", list(AGGREGATIONS))
def test_micro_batches_sum_to_whole_batch(mode):
    # Global denominators: 10 tokens, 4 non-empty rows, max_len = T = 4. Micro-batches are the
    # rows [0:2], [2:3], [3:5], each re-padded to its own longest row (4, 3, 1 columns), as a
    # packer would.
    logprobs, old, adv, mask = _invariance_batch()
    kwargs = {"clip_high": 0.28, "clip_ratio_c": 1.05, "loss_agg": mode}

    whole_lp = logprobs.clone().requires_grad_()
    whole, m = policy_loss(whole_lp, old, adv, mask, **kwargs)
    whole.backward()
    assert all(m[k] > 0 for k in ("clip_frac_low", "clip_frac_high", "clip_frac_dual"))

    split_lp = logprobs.clone().requires_grad_()
    total = torch.zeros(())
    for rows in (slice(0, 2), slice(2, 3), slice(3, 5)):
        width = max(int(mask[rows].sum(dim=1).max()), 1)
        cols = slice(0, width)
        part, _ = policy_loss(
            split_lp[rows, cols],
            old[rows, cols],
            adv[rows],
            mask[rows, cols],
            num_tokens=10,
            num_seqs=4,
            max_len=4,
            **kwargs,
        )
        part.backward()
        total = total + part.detach()
    _close(total, whole.detach())
    _close(split_lp.grad, whole_lp.grad)


def test_sft_micro_batches_sum_to_whole_batch():
    logprobs, _, _, mask = _invariance_batch()
    whole_lp = logprobs.clone().requires_grad_()
    whole = sft_loss(whole_lp, mask)
    whole.backward()
    split_lp = logprobs.clone().requires_grad_()
    total = sum(sft_loss(split_lp[r], mask[r], num_tokens=10) for r in (slice(0, 3), slice(3, 5)))
    total.backward()
    _close(total, whole.detach())
    _close(split_lp.grad, whole_lp.grad)


# ---------------------------------------------------------------------------- KL and SFT


def test_kl_estimators_by_hand():
    # delta = ref - logp per token: [-1, 1, 0].
    #   k1 = -delta             = [1, -1, 0]
    #   k2 = delta^2 / 2        = [0.5, 0.5, 0]
    #   k3 = e^delta - delta - 1 = [e^-1 = 0.367879, e - 2 = 0.718282, 0]
    logprobs = torch.tensor([[0.0, -1.0, -2.3]])
    ref = torch.tensor([[-1.0, 0.0, -2.3]])
    _close(kl_penalty(logprobs, ref, "k1"), [[1.0, -1.0, 0.0]])
    _close(kl_penalty(logprobs, ref, "k2"), [[0.5, 0.5, 0.0]])
    _close(kl_penalty(logprobs, ref), [[math.exp(-1), math.e - 2, 0.0]])
    assert kl_penalty(logprobs, ref)[0, 2].item() == 0.0


def test_kl_k3_gradient_and_unknown_kind():
    # d k3 / d logp = d(e^(ref - logp) - (ref - logp) - 1) / d logp = 1 - e^(ref - logp):
    # at delta = -1: 1 - e^-1 = 0.632121 (pulls logp down toward ref).
    logprobs = torch.tensor([[0.0]], requires_grad=True)
    kl_penalty(logprobs, torch.tensor([[-1.0]])).sum().backward()
    _close(logprobs.grad, [[1 - math.exp(-1)]])
    with pytest.raises(ValueError, match="known:.*'k3'"):
        kl_penalty(logprobs, logprobs, "k4")


def test_sft_loss_by_hand():
    # Masked-in logprobs -1, -2, -0.5: NLL mean = 3.5 / 3; with a global count of 7: 0.5.
    logprobs = torch.tensor([[-1.0, -2.0, -INF], [-0.5, NAN, -INF]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    _close(sft_loss(logprobs, mask), 3.5 / 3)
    _close(sft_loss(logprobs, mask, num_tokens=7), 0.5)
    with pytest.raises(ValueError, match="non-finite logprobs at row 0, token 2"):
        sft_loss(logprobs, torch.ones(2, 3))
