"""Loss normalisation does not depend on how a batch is cut: for every aggregation mode (and
GSPO ratios, an entropy bonus, a KL loss, mismatch weights), one batch gives the same loss and
the same gradient as one micro-batch, as several (cut by rows or by padded tokens), on 1 or 2
FSDP2 ranks (gloo, Ray), and with each prompt's rows packed into one forward (share_prompts).

Each rank's loss is its rows' share of the *global* numerator over the global denominator
(tokens, sequences, or sequences x max_len), so the pieces add up exactly: the only
difference left is float summation order, ~1e-7 here; the bound is 1e-5.
"""

import pytest
import torch

from rl.learner_group import LearnerGroup
from rl.loss_config import LossConfig
from rl.losses import AGGREGATIONS
from tests.rl.test_learner import batches

pytestmark = pytest.mark.slow

# (ranks, micro-batch rows per rank, micro_batch_tokens, share_prompts): the test batch has 3
# prompts x 3 rows of 4-11 tokens; 16 tokens cut it into 1-2 rows per pass, and packed rows
# of at most 12 tokens split a prompt's rows over two packs
CUTS = [(1, 64, None, 0), (1, 2, None, 0), (2, 3, None, 0), (2, 64, 16, 0), (2, 3, None, 12)]
CUTS += [(1, 64, 16, 1024)]
VARIANTS = [{"loss_agg": mode} for mode in AGGREGATIONS] + [
    {"loss_agg": "seq-mean-token-mean", "ratio_level": "sequence"},
    {"loss_agg": "token-mean", "entropy_coef": 0.01, "clip_ratio_c": 3.0},
    {"loss_agg": "seq-mean-token-sum", "kl": True},
    {"loss_agg": "token-mean", "mismatch": True},
]


@pytest.fixture(scope="module")
def learners(ray_cluster, tiny_policy_dir):
    groups = {
        (ranks, tokens, share): LearnerGroup(
            tiny_policy_dir,
            ranks,
            threads=1,
            seed=0,
            micro_batch_tokens=tokens,
            share_prompts=share,
        )
        for ranks, _, tokens, share in CUTS
    }
    for group in groups.values():
        group.configure_optimizer(1e-3)
        group.snapshot_reference()
    yield groups
    for group in groups.values():
        group.shutdown()


def _batch(group):
    """The shared test batch with old and reference logprobs away from the current ones, so
    that clipping, the dual clip, KL and the mismatch cap all have something to do."""
    batch = batches()
    current = group.logprobs(batch, 64, 1.0)
    noise = torch.randn(current.shape, generator=torch.Generator().manual_seed(0))
    batch.old_logprobs = (current + 0.4 * noise) * batch.loss_mask
    batch.ref_logprobs = (current - 0.3 * noise.abs()) * batch.loss_mask
    batch.rollout_logprobs = (current + 0.2 * noise) * batch.loss_mask
    return batch


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_one_batch_any_cut_same_loss_and_gradient(learners, variant):
    options = dict(variant)
    if options.pop("kl", False):
        options.update(kl_coef=0.1, kl_estimator="k3")
    if options.pop("mismatch", False):
        options.update(mismatch="token", mismatch_cap=1.5)
    loss = LossConfig(clip_low=0.2, clip_high=0.28, max_len=8, **options)
    batch = _batch(learners[1, None, 0])
    results = [
        learners[ranks, tokens, share].grpo_step(
            batch, lr=0.0, micro_batch_size=micro, loss=loss, gradients_only=True
        )
        for ranks, micro, tokens, share in CUTS
    ]
    reference = results[0]
    assert reference["clip_frac_low"] + reference["clip_frac_high"] > 0, "no clip exercised"
    assert sum(g.abs().sum() for g in reference["gradients"].values()) > 0
    for (ranks, micro, tokens, share), result in zip(CUTS[1:], results[1:], strict=True):
        where = f"{ranks} rank(s), micro-batch {micro} rows / {tokens} tokens, share {share}"
        assert result["loss"] == pytest.approx(reference["loss"], abs=1e-5), where
        assert result["gradients"].keys() == reference["gradients"].keys()
        for name, grad in reference["gradients"].items():
            torch.testing.assert_close(
                result["gradients"][name], grad, atol=1e-5, rtol=1e-4, msg=f"{name}, {where}"
            )
