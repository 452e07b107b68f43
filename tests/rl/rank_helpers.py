"""One LearnerRank in the test process, and a GRPO batch whose loss depends on the weights:
shared by the CPU learner tests (gloo, fp32) and the GPU ones (nccl, bf16).

A process holds one default process group, so a test opens one rank at a time.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch

from model import new_policy, save_policy
from rl.batch import Batch, make_batch
from rl.learner import LearnerRank
from rl.logprobs import token_logprobs
from rl.loss_config import LossConfig

ALPHABET = "0123456789+-= "
LORA = {"r": 8, "alpha": 16.0, "targets": ["attention"], "dropout": 0.0}
TEMPERATURE = 0.7
LR = 1e-3
LOSS = LossConfig(loss_agg="token-mean", clip_low=0.2, clip_high=0.2, temperature=TEMPERATURE)
# where a device's rank runs: fp32 on CPU gloo, bf16 compute on a GPU with nccl
DEVICE_SETUP = {"cpu": {"dtype": "float32", "backend": "gloo"}, "cuda": {"dtype": "bfloat16"}}


@contextmanager
def open_rank(model_dir, dtype="bfloat16", backend="nccl", lora=None, share_prompts=0, **knobs):
    """A set-up rank (world size 1) with a fresh AdamW at ``LR``; ``knobs``: LearnerRank's
    memory switches (activation_checkpointing, offload_optimizer)."""
    rank = LearnerRank(
        0,
        1,
        str(model_dir),
        dtype=dtype,
        backend=backend,
        lora=lora,
        share_prompts=share_prompts,
        **knobs,
    )
    try:
        rank.setup(*rank.address())
        assert rank.device == ("cuda" if backend == "nccl" else "cpu")
        rank.configure_optimizer(LR)
        yield rank
    finally:
        rank.shutdown()


def grpo_batch(preset: str, model_dir, tool_tokens: bool = False, mtp: bool = False) -> Batch:
    """A saved ``preset`` policy (seed 0) and a GRPO batch: each prompt twice, one completion
    with advantage +1 and one with -1. Rollout logprobs are the fp32 policy's at TEMPERATURE;
    old logprobs are those shifted by +0.3, -0.1, -0.3, +0.1, ... along the sequence, so that
    the ratios (0.74, 1.11, 1.35, 0.90) depend on the weights and some clip at either bound:
    the loss is not the constant -mean(A) of an on-policy first step. With ``tool_tokens``,
    some completions are multi-turn: tokens inside them are tool output (mask 0). ``mtp``: the
    policy carries an MTP module (DeepSeek-V3 presets)."""
    model, tok = new_policy(preset, ALPHABET, seed=0, mtp=mtp)
    save_policy(model, tok, model_dir)
    prompts = [[1, 4, 12, 13, 5], [1, 4, 14, 5], [1, 4, 12, 15, 16, 5], [1, 4, 17, 5]] * 2
    completions = [[14, 12, 2], [13, 2], [12, 12, 12, 2], [15, 16, 2]]
    completions += [[13, 13, 2], [16, 2], [17, 14, 2], [12, 2]]
    masks = None
    if tool_tokens:  # sampled, tool output, sampled
        masks = [[1, 0, 1], None, [1, 0, 0, 1], [1, 0, 1], None, None, [1, 0, 1], None]
    batch = make_batch(
        prompts, completions, tok.pad_token_id, [1.0] * 4 + [-1.0] * 4, completion_masks=masks
    )
    with torch.no_grad():
        lp = token_logprobs(model, batch.input_ids, batch.attention_mask, TEMPERATURE)
    rollout = lp * batch.loss_mask  # (B, T-1), 0 off the mask
    shift = torch.tensor([0.3, -0.1, -0.3, 0.1]).repeat(rollout.shape[1])[: rollout.shape[1]]
    shift = shift * batch.loss_mask  # (B, T-1)
    return replace(batch, rollout_logprobs=rollout, old_logprobs=rollout + shift)


def grpo(rank: LearnerRank, batch: Batch, gradients_only: bool = False, loss=LOSS) -> dict:
    """One GRPO step over the whole batch (token-mean, clip 0.2, temperature 0.7)."""
    return rank.grpo_step(
        batch,
        num_tokens=float(batch.loss_mask.sum()),
        num_seqs=float((batch.loss_mask.sum(1) > 0).sum()),
        lr=LR,
        micro_batch_size=4,
        loss=loss,
        gradients_only=gradients_only,
    )


def completion_logprobs(rank: LearnerRank, batch: Batch) -> torch.Tensor:
    """(B,) summed logprob of each row's completion under the rank's current weights."""
    return rank.logprobs(batch, micro_batch_size=8, temperature=TEMPERATURE).sum(1)


def full_params(model) -> dict[str, torch.Tensor]:
    """{name: full fp32 CPU copy} of every parameter (gathers FSDP2 shards)."""
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
        for name, p in model.named_parameters()
    }


def grad_norm(gradients: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in gradients.values())))


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    dot = sum((a[n].double() * b[n].double()).sum() for n in a)
    return float(dot / (grad_norm(a) * grad_norm(b)))
