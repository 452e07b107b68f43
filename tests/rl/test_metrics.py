"""Health metrics of GRPO updates: one accumulator from micro-batch to step, hand-computed."""

import math

import pytest
import torch

from rl.metrics import UpdateStats, combine_updates


def micro(tokens, loss, diffs, entropy, clip_low, clip_high, ratio, weights=None):
    stats = UpdateStats()
    policy = {
        "clip_frac_low": clip_low,
        "clip_frac_high": clip_high,
        "ratio_mean": ratio[0],
        "ratio_min": ratio[1],
        "ratio_max": ratio[2],
    }
    mismatch = None
    if weights is not None:
        mismatch = dict(
            zip(
                ("mismatch_weight_mean", "mismatch_weight_max", "mismatch_capped_frac"),
                weights,
                strict=True,
            )
        )
    stats.add(tokens, loss, 0.0, torch.tensor(diffs), torch.tensor(entropy), policy, mismatch)
    return stats


def test_micro_batches_and_ranks_add_up_token_weighted():
    # micro-batch a: 2 tokens, b: 6 tokens (say on the other rank)
    a = micro(2, 0.5, [0.1, 0.3], [1.0, 2.0], 0.5, 0.0, (1.1, 0.9, 1.3), (1.0, 1.2, 0.5))
    b = micro(6, -0.2, [0.0] * 5 + [0.6], [0.5] * 6, 0.0, 1 / 6, (1.0, 0.8, 1.1), (0.9, 1.0, 0.0))
    report = (a + b).report(kl=True, mismatch=True)
    assert report["loss"] == pytest.approx(0.3)  # loss terms add: each is over the batch
    assert report["logprob_diff_mean"] == pytest.approx(1.0 / 8)  # (0.4 + 0.6) / 8 tokens
    assert report["logprob_diff_max"] == pytest.approx(0.6)
    assert report["entropy"] == pytest.approx((3.0 + 3.0) / 8)
    assert report["clip_frac_low"] == pytest.approx(1 / 8)  # 1 of a's 2 tokens
    assert report["clip_frac_high"] == pytest.approx(1 / 8)  # 1 of b's 6
    assert report["ratio_mean"] == pytest.approx((2 * 1.1 + 6 * 1.0) / 8)
    assert (report["ratio_min"], report["ratio_max"]) == pytest.approx((0.8, 1.3))
    assert report["is_weight_mean"] == pytest.approx((2 * 1.0 + 6 * 0.9) / 8)
    assert report["is_weight_max"] == pytest.approx(1.2)
    assert report["is_capped_frac"] == pytest.approx(1 / 8)
    assert report["kl_loss"] == 0.0
    assert "kl_loss" not in a.report() and "is_weight_mean" not in a.report()


def test_a_rank_without_tokens_changes_nothing():
    a = micro(2, 0.5, [0.1, 0.3], [1.0, 2.0], 0.5, 0.0, (1.1, 0.9, 1.3))
    assert (a + UpdateStats()).report() == a.report()
    assert UpdateStats().report()["ratio_min"] == math.inf  # written as null to metrics.jsonl


def test_combine_updates_means_over_steps_and_the_first_for_health():
    first = {"loss": 1.0, "grad_norm": 2.0, "rows_learned": 8, "logprob_diff_mean": 1e-7}
    first.update(clip_frac_low=0.1, clip_frac_high=0.0, ratio_mean=1.0, ratio_min=1.0)
    first.update(ratio_max=1.0, logprob_diff_max=1e-6, entropy=2.0)
    second = {**first, "loss": 3.0, "grad_norm": 4.0, "rows_learned": 4, "ratio_min": 0.7}
    second.update(ratio_max=1.4, logprob_diff_mean=5.0, entropy=9.0, clip_frac_low=0.3)
    idle = {"loss": 0.0, "grad_norm": 0.0, "rows_learned": 0}  # a mini-batch with no signal
    out = combine_updates([first, idle, second], first_pass=2)
    assert out["optimizer_steps"] == 2 and out["rows_learned"] == 8  # first pass: 8 + 0
    assert (out["loss"], out["grad_norm"], out["clip_frac_low"]) == pytest.approx((2, 3, 0.2))
    assert (out["ratio_min"], out["ratio_max"]) == (0.7, 1.4)
    assert (out["logprob_diff_mean"], out["entropy"]) == (1e-7, 2.0)  # before any update
    nothing = combine_updates([idle], first_pass=1)
    assert nothing["optimizer_steps"] == 0 and nothing["loss"] == 0.0
