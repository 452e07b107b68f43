"""The learner's GPU path: FSDP2 on nccl with bf16 compute (no Ray needed: one rank in-process).

A process holds one default process group, so each test opens one rank at a time; the fp32
references are computed on the CPU by a ``LearnerRank`` on gloo (float32), the same code path.
Tolerances against fp32 were measured on an H100 (the figures are printed with ``-s``) and set
with about 3x margin. The device-independent learner tests (loss formula, update direction,
LoRA, save/load) are in test_learner_rank.py, on the CPU and, with a GPU, here too.
"""

from dataclasses import replace

import pytest
import torch

from model import new_policy, save_policy
from rl.batch import make_batch
from rl.learner import LearnerRank
from rl.logprobs import token_logprobs
from rl.losses import sft_loss
from rl.parity import THRESHOLDS
from tests.rl.rank_helpers import (
    ALPHABET,
    completion_logprobs,
    cosine,
    grad_norm,
    grpo,
    grpo_batch,
    open_rank,
)

pytestmark = pytest.mark.gpu

# The learner's bf16 vs fp32 logprob |diff| over completion tokens. Measured on an H100 (torch
# 2.11), tiny-dsv3 / tiny-qwen2: random init (NLL 3.1) mean 1.5e-3 / 1.9e-3, p99 6.4e-3 /
# 5.8e-3, max 1.1e-2 / 6.8e-3; after 100 SFT steps (NLL 0.40 / 0.20) mean 1.6e-2 / 7.8e-3,
# p99 0.15 / 0.12, max 2.0 / 0.78: the error grows as the policy sharpens (an fp32 lm_head
# does not help: it builds up in the bf16 layers). Bounds: ~3x the worst mean and p99, 1.5x
# the worst max (a few near-zero-probability tokens set it).
BF16_LOGPROB_ERROR = {
    "init": {"mean": 6e-3, "p99": 2e-2, "max": 4e-2},
    "sft": {"mean": 5e-2, "p99": 0.5, "max": 3.0},
}
SFT_STEPS = 100


def test_fsdp2_nccl_bf16_learns_and_agrees_with_fp32(tmp_path):
    model, tok = new_policy("tiny-dsv3", ALPHABET, seed=0)
    save_policy(model, tok, tmp_path)
    prompts = [[1, 4, 12, 13, 5], [1, 4, 14, 5], [1, 4, 12, 15, 16, 5], [1, 4, 17, 5]] * 4
    completions = [[14, 12, 2], [13, 2], [12, 12, 12, 2], [15, 16, 2]] * 4
    batch = make_batch(prompts, completions, tok.pad_token_id)
    num_tokens = float(batch.loss_mask.sum())
    with torch.no_grad():  # fp32 reference loss of the first step, on the CPU
        ref = float(
            sft_loss(token_logprobs(model, batch.input_ids, batch.attention_mask), batch.loss_mask)
        )

    rank = LearnerRank(0, 1, str(tmp_path), dtype="bfloat16", backend="auto")
    try:
        rank.setup(*rank.address())
        assert rank.backend == "nccl" and rank.device == "cuda"
        rank.configure_optimizer(1e-3)
        losses = [
            rank.sft_step(batch, num_tokens, lr=1e-3, micro_batch_size=6)["loss"] for _ in range(8)
        ]
        blob = rank.export_weights()
    finally:
        rank.shutdown()
    assert losses[0] == pytest.approx(ref, rel=2e-2)  # bf16 compute vs fp32
    assert losses[-1] < 0.8 * losses[0], losses
    assert blob and sum(len(bucket) for bucket in blob) > 1e6


# ---------------------------------------------------------------------------- GRPO


@pytest.mark.parametrize("preset", ["tiny-dsv3", "tiny-qwen2"])
def test_grpo_step_bf16_agrees_with_fp32_and_moves_the_policy(tmp_path, preset):
    batch = grpo_batch(preset, tmp_path)
    with open_rank(tmp_path, dtype="float32", backend="gloo") as cpu:
        ref = grpo(cpu, batch, gradients_only=True)
    with open_rank(tmp_path) as gpu:
        first = grpo(gpu, batch, gradients_only=True)
        steps = [grpo(gpu, batch)]
        before = completion_logprobs(gpu, batch)
        on_policy = replace(batch, old_logprobs=None)  # plain policy gradient from here
        steps += [grpo(gpu, on_policy) for _ in range(3)]
        after = completion_logprobs(gpu, batch)

    first_stats, ref_stats = first["stats"], ref["stats"]
    loss_diff = abs(first_stats.loss - ref_stats.loss)
    norm_rel = abs(grad_norm(first["gradients"]) / grad_norm(ref["gradients"]) - 1)
    cos = cosine(first["gradients"], ref["gradients"])
    lp_diff = first_stats.report()["logprob_diff_mean"]  # bf16 learner vs fp32 "rollout"
    ref_lp_diff = ref_stats.report()["logprob_diff_mean"]
    clip_low, clip_high = (first_stats.report()[k] for k in ("clip_frac_low", "clip_frac_high"))
    delta = after - before  # (B,) change of each completion's logprob over steps 2-4
    print(
        f"\n{preset} GRPO step 1, bf16 GPU vs fp32 CPU: loss {first_stats.loss:.6g} vs "
        f"{ref_stats.loss:.6g} (|diff| {loss_diff:.2e}), grad norm rel {norm_rel:.2e}, "
        f"cosine {cos:.6f}, |lp - rollout| mean bf16 {lp_diff:.2e} fp32 {ref_lp_diff:.2e}; "
        f"clip low/high {clip_low:.3f}/{clip_high:.3f}; "
        f"logprob change +A {delta[:4].tolist()} -A {delta[4:].tolist()}"
    )
    assert ref_lp_diff < 1e-5  # the gloo rank is the fp32 policy
    assert clip_low > 0 and clip_high > 0  # the clip is exercised
    # H100, torch 2.11, tiny-dsv3 / tiny-qwen2: |loss diff| 4.3e-4 / 3.3e-4 (rel 7e-3 / 5e-3
    # of a loss of -0.06 whose per-token terms are ~1 and cancel: an absolute bound), grad
    # norm rel 1.2e-3 / 4.0e-3, 1 - cosine 5e-5 / 9e-5
    assert loss_diff < 1.5e-3 and norm_rel < 1.2e-2 and cos > 0.9995
    assert all(torch.isfinite(torch.tensor([s["stats"].loss, s["grad_norm"]])).all() for s in steps)
    # the direction of the updates, and expert load, are tested on both devices in
    # tests/rl/test_learner_rank.py; here in bf16 from the same start as the fp32 reference
    assert delta[:4].sum() > 0 > delta[4:].sum()


# ---------------------------------------------------------------------------- logprob parity


def sft_probe_batch(tok, seed=0, rows=32):
    """Probe sequences of 4-8 prompt and 16-32 completion tokens over the alphabet."""
    g = torch.Generator().manual_seed(seed)
    chars = torch.tensor(tok.convert_tokens_to_ids(list(ALPHABET)))

    def text(low, high):  # a random string of low..high-1 alphabet tokens
        n = int(torch.randint(low, high, (1,), generator=g))
        return chars[torch.randint(len(chars), (n,), generator=g)].tolist()

    prompts = [[1, *text(4, 9)] for _ in range(rows)]
    completions = [text(16, 33) for _ in range(rows)]
    return make_batch(prompts, completions, tok.pad_token_id)


def lp_diff_stats(a, b, mask):
    diff = (a - b).abs()[mask > 0]
    return {"mean": float(diff.mean()), "p99": float(diff.quantile(0.99)), "max": float(diff.max())}


@pytest.mark.parametrize("preset", ["tiny-dsv3", "tiny-qwen2"])
def test_bf16_logprob_error_against_fp32(tmp_path, preset):
    """Teacher-forced logprobs, bf16 on the GPU vs fp32 on the CPU, of the random-init policy
    and of the same policy after fp32 SFT on the probes (peaked, like sampled text)."""
    model, tok = new_policy(preset, ALPHABET, seed=0)
    save_policy(model, tok, tmp_path / "init")
    batch = sft_probe_batch(tok)
    with open_rank(tmp_path / "init", dtype="float32") as fp32:  # fp32 SFT on the GPU
        for _ in range(SFT_STEPS):
            fp32.sft_step(batch, float(batch.loss_mask.sum()), lr=3e-3, micro_batch_size=32)
        fp32.save(str(tmp_path / "sft"))
    for name, bounds in BF16_LOGPROB_ERROR.items():
        with open_rank(tmp_path / name, dtype="float32", backend="gloo") as cpu:
            ref = cpu.logprobs(batch, micro_batch_size=32)
        with open_rank(tmp_path / name) as gpu:
            stats = lp_diff_stats(gpu.logprobs(batch, micro_batch_size=32), ref, batch.loss_mask)
        nll = float(-(ref * batch.loss_mask).sum() / batch.loss_mask.sum())
        print(
            f"\n{preset} {name} (fp32 NLL {nll:.3f}): bf16 vs fp32 logprob |diff| "
            + " ".join(f"{k} {v:.2e}" for k, v in stats.items())
        )
        for key, bound in bounds.items():
            assert stats[key] < bound, (name, key, stats)
            # r1kit check's bf16 limits must leave room for the engine's own bf16 error
            # beside the learner's (rl/parity.py): at least 1.3x what the learner alone has
            assert 1.3 * stats[key] < THRESHOLDS["bfloat16"][key], (name, key, stats)
