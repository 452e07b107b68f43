"""Golden tests for the GRPO-family extensions of rl/losses.py: GSPO sequence ratios, per-token
weights and rollout-mismatch correction, entropy (KL: test_losses_kl.py). Every expected value
is derived by hand in a comment."""

import math

import pytest
import torch

from rl.losses import entropy_from_logits, mismatch_weights, policy_loss

INF, NAN = float("inf"), float("nan")


def _close(actual: torch.Tensor, expected) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- GSPO

# Four rows, T = 3, old = -1 on masked-in tokens; d = logprobs - old per token. GSPO's ratio is
# s_i = exp(mean_t d) on every token of row i. Clip [1 - 0.05, 1 + 0.05] = [0.95, 1.05], dual
# clip c = 1.5.
#   row 0, A = +1, d = [0.3, -0.1]      s = e^0.1   = 1.105171 > 1.05: upper clip, loss -1.05
#   row 1, A = -1, d = [-0.5, 0.2, 0]   s = e^-0.1  = 0.904837 < 0.95: lower clip, loss 0.95
#   row 2, A = +2, d = [0.02, -0.04]    s = e^-0.01 = 0.990050 inside: loss -2 s = -1.980100
#   row 3, A = -1, d = [1.0, 0.0]       s = e^0.5   = 1.648721: max(s, 1.05) = s, dual -> 1.5
# Per-token losses: [-1.05] x 2, [0.95] x 3, [-2 e^-0.01] x 2, [1.5] x 2 (9 tokens).
#   seq-mean-token-mean = (-1.05 + 0.95 - 2 e^-0.01 + 1.5) / 4            = -0.145025
#   token-mean          = (-2.1 + 2.85 - 4 e^-0.01 + 3.0) / 9              = -0.023355
GSPO_D = [[0.3, -0.1, NAN], [-0.5, 0.2, 0.0], [0.02, -0.04, NAN], [1.0, 0.0, NAN]]
GSPO_ADV = torch.tensor([1.0, -1.0, 2.0, -1.0], dtype=torch.float64)
GSPO_MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
GSPO_KW = {"clip_low": 0.05, "clip_high": 0.05, "clip_ratio_c": 1.5, "ratio_level": "sequence"}


def _gspo_inputs():
    """logprobs = old + d, old = -1; padding holds -inf (new) and NaN (old)."""
    d = torch.tensor(GSPO_D, dtype=torch.float64)
    logprobs = (d - 1).masked_fill(~GSPO_MASK, -INF).requires_grad_()
    old = torch.full((4, 3), -1.0, dtype=torch.float64).masked_fill(~GSPO_MASK, NAN)
    return logprobs, old


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("seq-mean-token-mean", (-1.05 + 0.95 - 2 * math.exp(-0.01) + 1.5) / 4),
        ("token-mean", (-2.1 + 2.85 - 4 * math.exp(-0.01) + 3.0) / 9),
    ],
)
def test_gspo_sequence_ratio_clips_and_metrics(mode, expected):
    logprobs, old = _gspo_inputs()
    loss, m = policy_loss(logprobs, old, GSPO_ADV, GSPO_MASK, loss_agg=mode, **GSPO_KW)
    _close(loss, expected)
    # Each token reports its row's s_i: high = row 0 (2 tokens), low = row 1 (3), dual = row 3.
    _close(m["clip_frac_high"], 2 / 9)
    _close(m["clip_frac_low"], 3 / 9)
    _close(m["clip_frac_dual"], 2 / 9)
    _close(m["ratio_min"], math.exp(-0.1))
    _close(m["ratio_max"], math.exp(0.5))
    ratios = 2 * math.exp(0.1) + 3 * math.exp(-0.1) + 2 * math.exp(-0.01) + 2 * math.exp(0.5)
    _close(m["ratio_mean"], ratios / 9)  # 10.202396 / 9 = 1.133600

    # Only row 2 is unclipped. Its tokens carry -A s_2,t with d s_2,t / d logp_t = s_2, so under
    # seq-mean-token-mean d loss / d logp_t = (1/4) (1/2) (-2 e^-0.01) = -e^-0.01 / 4 = -0.247512
    # on both tokens; under token-mean -2 e^-0.01 / 9. Clipped rows and padding: 0.
    loss.backward()
    per_token = -math.exp(-0.01) / 4 if mode == "seq-mean-token-mean" else -2 * math.exp(-0.01) / 9
    expected_grad = torch.zeros(4, 3, dtype=torch.float64)
    expected_grad[2, :2] = per_token
    _close(logprobs.grad, expected_grad)


@pytest.mark.parametrize(
    "mode, factor",
    [("seq-mean-token-mean", 1 / 2), ("token-mean", 1 / 2), ("seq-mean-token-sum", 1.0)],
)
def test_gspo_gradient_of_a_two_token_row(mode, factor):
    # One row, A = 1, d = [0.2, -0.1]: s = e^0.05 = 1.051271, inside the default [0.8, 1.2].
    # GSPO's objective -A s has d(-s)/d logp_t = -s / |y| = -0.525636 for both tokens: the
    # token-form loss averaged over the row's tokens gives exactly that (seq-mean-token-mean,
    # and token-mean for one row); summed over tokens (seq-mean-token-sum) it is -s = -1.051271.
    # Token-level PPO would instead give the tokens different gradients -e^0.2 / 2, -e^-0.1 / 2.
    logprobs = torch.tensor([[-0.8, -1.1]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    loss, _ = policy_loss(
        logprobs,
        old,
        torch.ones(1, dtype=torch.float64),
        torch.ones(1, 2),
        ratio_level="sequence",
        loss_agg=mode,
    )
    _close(loss, -math.exp(0.05) * 2 * factor)
    loss.backward()
    _close(logprobs.grad, [[-math.exp(0.05) * factor] * 2])

    # The same gradient, from GSPO's sequence objective written directly: -exp(mean(logp - old)).
    direct = logprobs.detach().clone().requires_grad_()
    (-torch.exp((direct - old).mean()) * 2 * factor).backward()
    _close(logprobs.grad, direct.grad)


def test_gspo_degenerate_rows():
    # On-policy (all-equal inputs): s = 1 in every row, no clip; a group of one row gives loss
    # -A = -0.7. A fully masked row of NaN next to it adds nothing: seq-mean-token-mean over the
    # one non-empty row is still -0.7, the gradient -A / 2 = -0.35 per token and finite (0) on
    # the empty row.
    logprobs = torch.tensor([[-0.4, -2.0], [NAN, NAN]], requires_grad=True)
    mask = torch.tensor([[True, True], [False, False]])
    for rows in (slice(0, 1), slice(0, 2)):
        lp = logprobs[rows]
        loss, m = policy_loss(
            lp,
            lp.detach(),
            torch.tensor([0.7, 0.7])[rows],
            mask[rows],
            ratio_level="sequence",
            loss_agg="seq-mean-token-mean",
        )
        _close(loss, -0.7)
        _close(m["ratio_max"], 1.0)
        _close(m["clip_frac_high"] + m["clip_frac_low"], 0.0)
    loss.backward()
    _close(logprobs.grad, [[-0.35, -0.35], [0.0, 0.0]])

    loss, m = policy_loss(
        logprobs, logprobs.detach(), torch.ones(2), mask & False, ratio_level="sequence"
    )
    assert loss.item() == 0.0 and m["ratio_mean"].item() == 1.0


def test_policy_loss_rejects_unknown_ratio_level():
    lp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="unknown ratio_level 'seq'.*'sequence'"):
        policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 2), ratio_level="seq")


# ---------------------------------------------------------------------------- weights

# Row 0, A = +1, on-policy, weights [0.5, 2, 1]: per-token loss -A r w = [-0.5, -2, -1].
# Row 1, A = -2, on-policy, two tokens, weights [1.5, 0, NaN padding]: [3, 0].
# token-mean = (-3.5 + 3) / 5 = -0.1; gradient w * (-A r) / 5 per token, 0 on padding.
W_ADV = torch.tensor([1.0, -2.0])
W_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
W = torch.tensor([[0.5, 2.0, 1.0], [1.5, 0.0, NAN]])


def test_policy_loss_weights_scale_each_token():
    logprobs = torch.tensor([[-0.1, -0.2, -0.3], [-1.0, -2.0, -INF]], requires_grad=True)
    weights = W.clone().requires_grad_()
    loss, m = policy_loss(logprobs, logprobs.detach(), W_ADV, W_MASK, weights=weights)
    _close(loss, -0.1)
    _close(m["ratio_mean"], 1.0)  # metrics see the ratio, not the weights
    loss.backward()
    _close(logprobs.grad, torch.tensor([[-0.5, -2.0, -1.0], [3.0, 0.0, 0.0]]) / 5)
    assert weights.grad is None  # weights are detached


def test_unit_weights_and_zero_entropy_coef_change_nothing():
    # Defaults reproduce the plain loss bit for bit; so do all-one weights and entropy with
    # coefficient 0 (which only adds the metric).
    logprobs = torch.tensor([[-0.1, -0.2, -0.3], [-1.0, -2.0, -INF]], requires_grad=True)
    old = logprobs.detach() + torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.4, NAN]])
    plain, _ = policy_loss(logprobs, old, W_ADV, W_MASK, clip_ratio_c=3.0)
    (plain_grad,) = torch.autograd.grad(plain, logprobs)
    loss, m = policy_loss(
        logprobs,
        old,
        W_ADV,
        W_MASK,
        clip_ratio_c=3.0,
        weights=torch.ones(2, 3),
        entropy=torch.ones(2, 3),
        entropy_coef=0.0,
    )
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert torch.equal(loss, plain) and torch.equal(grad, plain_grad)
    _close(m["entropy"], 1.0)


@pytest.mark.parametrize("name", ["weights", "entropy"])
def test_policy_loss_rejects_bad_weights_or_entropy(name):
    lp = torch.zeros(2, 3)
    bad = torch.ones(2, 3)
    bad[1, 1] = NAN
    bad[1, 2] = INF  # masked out: ignored
    with pytest.raises(ValueError, match=f"non-finite {name} at row 1, token 1"):
        policy_loss(lp, lp, torch.ones(2), W_MASK, **{name: bad})
    with pytest.raises(ValueError, match="expected equal"):
        policy_loss(lp, lp, torch.ones(2), W_MASK, **{name: torch.ones(2, 2)})


# ---------------------------------------------------------------------------- entropy bonus


@pytest.mark.parametrize(
    "mode, pg, mean_entropy",
    [
        # On-policy, A = [1, -1]: per-token pg loss -A = [-1, -1], [1]; entropy [.5, 1], [2].
        ("token-mean", (-1 - 1 + 1) / 3, (0.5 + 1 + 2) / 3),  # -1/3 and 3.5/3
        ("seq-mean-token-mean", (-1 + 1) / 2, ((0.5 + 1) / 2 + 2) / 2),  # 0 and 1.375
    ],
)
def test_policy_loss_entropy_bonus(mode, pg, mean_entropy):
    # loss = pg - 0.1 * aggregate(entropy): token-mean -1/3 - 0.35/3 = -0.45; seq-mean -0.1375.
    # d loss / d entropy = -0.1 * d aggregate / d entropy: token-mean -0.1/3 per token;
    # seq-mean-token-mean -0.1 / (2 rows * 2 tokens) on row 0, -0.1 / (2 * 1) on row 1.
    logprobs = torch.tensor([[-0.7, -1.2], [-0.3, NAN]])
    entropy = torch.tensor([[0.5, 1.0], [2.0, NAN]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, m = policy_loss(
        logprobs,
        logprobs,
        torch.tensor([1.0, -1.0]),
        mask,
        loss_agg=mode,
        entropy=entropy,
        entropy_coef=0.1,
    )
    _close(loss, pg - 0.1 * mean_entropy)
    _close(m["entropy"], mean_entropy)
    loss.backward()
    if mode == "token-mean":
        expected = torch.tensor([[1.0, 1.0], [1.0, 0.0]]) * -0.1 / 3
    else:
        expected = torch.tensor([[-0.1 / 4, -0.1 / 4], [-0.1 / 2, 0.0]])
    _close(entropy.grad, expected)


def test_entropy_coef_needs_entropy():
    lp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="entropy_coef=0.01 needs the entropy"):
        policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 2), entropy_coef=0.01)


# ---------------------------------------------------------------------------- entropy


def test_entropy_from_logits_by_hand():
    # Position 0: logits [0, ln 2, ln 3] -> p = [1, 2, 3] / 6;
    #   H = logsumexp - sum p z = ln 6 - (2 ln 2 + 3 ln 3) / 6 = 1.791759 - 0.780355 = 1.011404.
    # Position 1: uniform over 3 -> ln 3 = 1.098612. Position 2: [5, 5, -inf] -> uniform over 2
    # -> ln 2 = 0.693147 (the -inf entry has p = 0 and adds 0, not 0 * -inf = NaN).
    # chunk_size 2 splits the three positions across two chunks.
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)], [7.0, 7.0, 7.0], [5.0, 5.0, -INF]]])
    expected = [[math.log(6) - (2 * math.log(2) + 3 * math.log(3)) / 6, math.log(3), math.log(2)]]
    for chunk_size in (1, 2, 1024):
        entropy = entropy_from_logits(logits, chunk_size=chunk_size)
        assert entropy.dtype == torch.float32 and entropy.shape == (1, 3)
        _close(entropy, expected)


def test_entropy_from_logits_gradient():
    # dH/dz_j = -p_j (ln p_j + H). For p = [1/6, 1/3, 1/2], H = 1.011404:
    #   ln p + H = [-0.780355, -0.087208, 0.318257] -> grad = [0.130059, 0.029069, -0.159129]
    # (sums to 0: adding a constant to the logits leaves H unchanged). With a -inf logit the
    # gradient is finite, 0 there: [0, 0, -inf] has H = ln 2 and p ln p + p H = 0 on both.
    logits = torch.tensor([[[0.0, math.log(2), math.log(3)], [0.0, 0.0, -INF]]], requires_grad=True)
    entropy_from_logits(logits, chunk_size=1).sum().backward()
    h = math.log(6) - (2 * math.log(2) + 3 * math.log(3)) / 6
    expected = [[[-p * (math.log(p) + h) for p in (1 / 6, 1 / 3, 1 / 2)], [0.0, 0.0, 0.0]]]
    _close(logits.grad, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_entropy_from_logits_stable_and_float32(dtype):
    # Uniform over 4 at offset 1e4 (exp overflows without the max shift): H = ln 4 = 1.386294,
    # in float32 from bf16 too. One vocabulary entry: a certain token, H = 0.
    entropy = entropy_from_logits(torch.full((2, 3, 4), 1e4, dtype=dtype))
    assert entropy.dtype == torch.float32
    _close(entropy, torch.full((2, 3), math.log(4)))
    _close(entropy_from_logits(torch.randn(2, 3, 1).to(dtype)), torch.zeros(2, 3))
    assert entropy_from_logits(torch.zeros(0, 3, 4)).shape == (0, 3)
    with pytest.raises(ValueError, match=r"expected logits \(B, T, V\)"):
        entropy_from_logits(torch.zeros(3, 4))


# ---------------------------------------------------------------------------- mismatch


def _mismatch_inputs():
    """old - rollout: row 0 [ln 1.5, ln 3, -ln 2], row 1 [ln 1.2, ln 1.5, padding], row 2
    empty. rollout = 0 where masked in; padding holds NaN (old) and -inf (rollout)."""
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    old = torch.tensor([[1.5, 3.0, 0.5], [1.2, 1.5, 1.0], [1.0, 1.0, 1.0]]).log()
    old = old.masked_fill(~mask, NAN).requires_grad_()
    rollout = torch.zeros(3, 3).masked_fill(~mask, -INF)
    return old, rollout, mask


@pytest.mark.parametrize(
    "level, expected, mean, lo, capped",
    [
        # token: min(r, 2) per token: [1.5, 2 (capped 3), 0.5], [1.2, 1.5]; masked-in mean
        # 6.7 / 5 = 1.34, min 0.5, capped 1 / 5.
        ("token", [[1.5, 2.0, 0.5], [1.2, 1.5, 0.0], [0, 0, 0]], 6.7 / 5, 0.5, 1 / 5),
        # sequence: row products 1.5 * 3 * 0.5 = 2.25 -> capped at 2 on its 3 tokens; 1.2 * 1.5
        # = 1.8 on 2 tokens. Mean (6 + 3.6) / 5 = 1.92, min 1.8, capped 3 / 5.
        ("sequence", [[2.0, 2.0, 2.0], [1.8, 1.8, 0.0], [0, 0, 0]], 9.6 / 5, 1.8, 3 / 5),
    ],
)
def test_mismatch_weights_by_hand(level, expected, mean, lo, capped):
    old, rollout, mask = _mismatch_inputs()
    weights, m = mismatch_weights(old, rollout, mask, level=level, cap=2.0)
    _close(weights, expected)  # 0 off the mask, never NaN
    assert not weights.requires_grad
    _close(m["mismatch_weight_mean"], mean)
    _close(m["mismatch_weight_min"], lo)
    _close(m["mismatch_weight_max"], 2.0)
    _close(m["mismatch_capped_frac"], capped)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_mismatch_weights_degenerate(level):
    # Equal log-probs: every weight 1, nothing capped. A log-ratio of 100 per token overflows
    # float32's exp (e^100 > 3.4e38): the weight is the cap, not inf or NaN. Nothing masked
    # in: all weights 0, metrics of a unit weight.
    lp = torch.tensor([[-1.0, -2.0]])
    weights, m = mismatch_weights(lp, lp, torch.ones(1, 2), level=level)
    _close(weights, [[1.0, 1.0]])
    _close(m["mismatch_capped_frac"], 0.0)
    weights, m = mismatch_weights(lp + 100, lp, torch.ones(1, 2), level=level, cap=3.0)
    _close(weights, [[3.0, 3.0]])
    _close(m["mismatch_capped_frac"], 1.0)
    weights, m = mismatch_weights(lp, lp * NAN, torch.zeros(1, 2), level=level)
    _close(weights, [[0.0, 0.0]])
    _close(m["mismatch_weight_mean"], 1.0)


def test_mismatch_weights_rejects_bad_input():
    old, rollout, mask = _mismatch_inputs()
    rollout[1, 1] = NAN
    with pytest.raises(ValueError, match="non-finite rollout_logprobs at row 1, token 1"):
        mismatch_weights(old, rollout, mask)
    with pytest.raises(ValueError, match="unknown mismatch level 'geometric'"):
        mismatch_weights(old, old, mask, level="geometric")
    with pytest.raises(ValueError, match="cap must be > 0"):
        mismatch_weights(old, old, mask, cap=0.0)
    with pytest.raises(ValueError, match="expected equal"):
        mismatch_weights(old, old[:, :2], mask)
