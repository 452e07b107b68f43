"""The learner's GPU path: FSDP2 on nccl with bf16 compute (no Ray needed: one rank in-process)."""

import pytest
import torch

from model import new_policy, save_policy
from rl.batch import make_batch
from rl.learner import LearnerRank
from rl.logprobs import token_logprobs
from rl.losses import sft_loss

pytestmark = pytest.mark.gpu


def test_fsdp2_nccl_bf16_learns_and_agrees_with_fp32(tmp_path):
    model, tok = new_policy("tiny-dsv3", "0123456789+-= ", seed=0)
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
