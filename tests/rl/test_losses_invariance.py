"""Micro-batch invariance of the whole GRPO-family loss: for every aggregation mode, ratio
level, and with or without mismatch weights, entropy bonus and KL loss, splitting a batch into
1, 2 or 3 micro-batches (each re-padded to its longest row, as a packer would) and passing the
whole batch's denominators gives the same summed loss and the same gradients."""

import pytest
import torch

from rl.losses import AGGREGATIONS, RATIO_LEVELS, kl_loss, mismatch_weights, policy_loss

INF, NAN = float("inf"), float("nan")
B, T = 6, 5
LENGTHS = torch.tensor([5, 2, 0, 3, 4, 1])  # row 2 is empty
NUM_TOKENS, NUM_SEQS = 15, 5  # sum of LENGTHS; non-empty rows
ADVANTAGES = torch.tensor([-1.5, 0.8, 1.0, -0.5, 2.0, 0.3], dtype=torch.float64)
# Row offsets of logprobs - old, so that at sequence level too every clip fires (clip_low 0.2,
# clip_high 0.28, dual c = 1.05): row 0 (A < 0) s ~ e^-0.35 = 0.70 lower clip; row 1 (A > 0)
# s ~ e^0.4 = 1.49 upper clip; row 3 (A < 0) s ~ e^0.2 = 1.22 dual clip; rows 4, 5 inside.
OFFSETS = torch.tensor([-0.35, 0.4, 0.0, 0.2, 0.0, -0.1], dtype=torch.float64)
SPLITS = {  # row ranges of each micro-batch
    1: [(0, 6)],
    2: [(0, 3), (3, 6)],
    3: [(0, 1), (1, 4), (4, 6)],
}
KWARGS = {"clip_high": 0.28, "clip_ratio_c": 1.05}
ENTROPY_COEF, KL_COEF = 0.01, 0.1


def _batch():
    """float64 (B, T) inputs; padding holds -inf or NaN everywhere, which must never leak."""
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(T)[None, :] < LENGTHS[:, None]  # (B, T)

    def noise(scale):
        return (torch.rand(B, T, generator=g, dtype=torch.float64) - 0.5) * 2 * scale

    logprobs = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    old = logprobs - OFFSETS[:, None] - noise(0.3)
    rollout = old + noise(0.6)
    ref = logprobs + noise(0.5)
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    return {
        "logprobs": logprobs.masked_fill(~mask, -INF),
        "old": old.masked_fill(~mask, NAN),
        "rollout": rollout.masked_fill(~mask, -INF),
        "ref": ref.masked_fill(~mask, NAN),
        "entropy": entropy.masked_fill(~mask, NAN),
        "mask": mask,
    }


def _loss(x, rows, mode, ratio_level, use_weights, use_entropy, use_kl):
    """The learner's total loss on the micro-batch rows[0]:rows[1], re-padded to its longest
    row, with the whole batch's denominators. Returns the loss and the policy metrics."""
    mask = x["mask"][rows[0] : rows[1]]
    width = max(int(mask.sum(dim=1).max()), 1)
    part = {k: v[rows[0] : rows[1], :width] for k, v in x.items()}
    denominators = {"num_tokens": NUM_TOKENS, "num_seqs": NUM_SEQS, "max_len": T}
    weights = None
    if use_weights:
        weights, _ = mismatch_weights(part["old"], part["rollout"], part["mask"], cap=1.5)
    loss, metrics = policy_loss(
        part["logprobs"],
        part["old"],
        ADVANTAGES[rows[0] : rows[1]],
        part["mask"],
        loss_agg=mode,
        ratio_level=ratio_level,
        weights=weights,
        entropy=part["entropy"] if use_entropy else None,
        entropy_coef=ENTROPY_COEF if use_entropy else 0.0,
        **denominators,
        **KWARGS,
    )
    if use_kl:
        kl = kl_loss(part["logprobs"], part["ref"], part["mask"], loss_agg=mode, **denominators)
        loss = loss + KL_COEF * kl
    return loss, metrics


@pytest.mark.parametrize("ratio_level", list(RATIO_LEVELS))
def test_invariance_batch_exercises_every_clip_and_the_cap(ratio_level):
    # Guards the test below against passing vacuously: on the whole batch, the lower, upper and
    # dual clips each change some token's loss, and the mismatch cap binds on some token.
    x = _batch()
    _, m = _loss(x, (0, B), "token-mean", ratio_level, False, False, False)
    assert all(m[k] > 0 for k in ("clip_frac_low", "clip_frac_high", "clip_frac_dual"))
    assert m["clip_frac_low"] + m["clip_frac_high"] + m["clip_frac_dual"] < 1  # some unclipped
    _, mm = mismatch_weights(x["old"], x["rollout"], x["mask"], cap=1.5)
    assert 0 < mm["mismatch_capped_frac"] < 1


@pytest.mark.parametrize("use_kl", [False, True], ids=["", "kl"])
@pytest.mark.parametrize("use_entropy", [False, True], ids=["", "entropy"])
@pytest.mark.parametrize("use_weights", [False, True], ids=["", "weights"])
@pytest.mark.parametrize("ratio_level", list(RATIO_LEVELS))
@pytest.mark.parametrize("mode", list(AGGREGATIONS))
def test_micro_batches_sum_to_whole_batch(mode, ratio_level, use_weights, use_entropy, use_kl):
    x = _batch()
    flags = (mode, ratio_level, use_weights, use_entropy, use_kl)
    results = {}
    for n, splits in SPLITS.items():
        logprobs = x["logprobs"].clone().requires_grad_()
        entropy = x["entropy"].clone().requires_grad_()
        inputs = {**x, "logprobs": logprobs, "entropy": entropy}
        total = torch.zeros((), dtype=torch.float64)
        for rows in splits:
            loss, _ = _loss(inputs, rows, *flags)
            loss.backward()
            total = total + loss.detach()
        entropy_grad = (
            torch.zeros(B, T, dtype=torch.float64) if entropy.grad is None else entropy.grad
        )
        results[n] = (total, logprobs.grad, entropy_grad)
    whole_total, whole_grad, whole_entropy_grad = results[1]
    assert torch.isfinite(whole_grad).all() and (whole_grad[~x["mask"]] == 0).all()
    assert (whole_grad != 0).any()
    for n in (2, 3):
        total, grad, entropy_grad = results[n]
        torch.testing.assert_close(total, whole_total, rtol=0, atol=1e-6)
        torch.testing.assert_close(grad, whole_grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(entropy_grad, whole_entropy_grad, rtol=0, atol=1e-6)

    if not (use_weights or use_entropy or use_kl):
        # The 1-split passed the whole batch's denominators explicitly; they are the batch's
        # own counts, so the plain loss with default denominators agrees too.
        default, _ = policy_loss(
            x["logprobs"],
            x["old"],
            ADVANTAGES,
            x["mask"],
            loss_agg=mode,
            ratio_level=ratio_level,
            **KWARGS,
        )
        torch.testing.assert_close(default, whole_total, rtol=0, atol=1e-12)
