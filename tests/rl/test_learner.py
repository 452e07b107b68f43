"""The FSDP2 learner as Ray actors: world size 1 and 2 train the same model."""

import pytest
import ray
from safetensors.torch import load

from model import load_policy, new_policy, save_policy, to_vllm_weights
from rl.batch import make_batch
from rl.learner_group import LearnerGroup
from rl.loss_config import LossConfig

pytestmark = pytest.mark.slow


def batches():
    prompts = [[1, 4, 12, 13, 5], [1, 4, 14, 5], [1, 4, 12, 15, 16, 5]] * 3  # uneven lengths
    completions = [[14, 12, 2], [13, 2], [12, 12, 12, 2], [2], [15, 16, 17, 18, 2]] * 2
    completions = completions[: len(prompts)]
    advantages = [1.0, -1.0, 0.5, -0.5, 0.0, 2.0, -2.0, 1.5, -1.5]
    rollout_lp = [[-1.0] * len(c) for c in completions]
    return make_batch(prompts, completions, 0, advantages, rollout_lp)


def train_a_little(model_dir, world_size):
    group = LearnerGroup(model_dir, world_size, threads=1, seed=0)
    try:
        group.configure_optimizer(1e-3)
        batch = batches()
        sft = [group.sft_step(batch, lr=1e-3, micro_batch_size=2)["loss"] for _ in range(2)]
        grpo = group.grpo_step(
            batch,
            lr=1e-3,
            micro_batch_size=4,
            loss=LossConfig(loss_agg="seq-mean-token-mean"),
        )
        weights = {
            k: v for bucket in ray.get(group.export_weights()) for k, v in load(bucket).items()
        }
        return sft, grpo, weights
    finally:
        group.shutdown()


def test_one_and_two_ranks_take_the_same_steps(ray_cluster, tiny_policy_dir):
    sft1, grpo1, w1 = train_a_little(tiny_policy_dir, 1)
    sft2, grpo2, w2 = train_a_little(tiny_policy_dir, 2)
    assert sft1[1] < sft1[0]  # it learns
    assert sft1 == pytest.approx(sft2, abs=1e-5)
    assert grpo1["loss"] == pytest.approx(grpo2["loss"], abs=1e-5)
    assert grpo1["grad_norm"] == pytest.approx(grpo2["grad_norm"], rel=1e-4)
    # rollout logprobs were -1.0 everywhere: the health metric is |learner - rollout|
    assert grpo1["logprob_diff_mean"] == pytest.approx(grpo2["logprob_diff_mean"], abs=1e-5)
    assert set(w1) == set(w2) and "model.layers.1.mlp.experts.0.gate_proj.weight" in w1
    # Adam divides each gradient element by its own running scale, so float noise in an
    # element whose gradient is ~0 becomes a step of up to ~lr: compare each tensor's
    # difference with how far it moved (seen: at most 0.8% of the move, on 2 cores), and
    # tensors that did not move must stay equal
    start = dict(to_vllm_weights(load_policy(tiny_policy_dir)[0].state_dict().items()))
    for name in w1:
        moved = float((w1[name] - start[name]).norm())
        assert float((w1[name] - w2[name]).norm()) <= 0.02 * moved + 1e-7, (name, moved)
    assert sum(float((w1[n] - start[n]).norm()) > 0 for n in w1) > len(w1) // 2  # it trained


def test_no_grad_forward_before_the_optimizer_keeps_checkpoints_working(
    ray_cluster, tiny_policy_dir, tmp_path
):
    """FSDP2 leaves the root module's parameters unsharded after a forward until backward
    reshards them; a no-grad forward (old or reference logprobs, the start-of-run parity
    check) before the optimizer is built once made it hold the unsharded tensors, and the
    first checkpoint failed (KeyError in get_state_dict). The learner reshards after
    no-grad forwards."""
    group = LearnerGroup(tiny_policy_dir, 2, threads=1, seed=0)
    try:
        group.logprobs(batches(), 64, 1.0)
        group.configure_optimizer(1e-3)
        group.sft_step(batches(), lr=1e-3, micro_batch_size=4)
        group.logprobs(batches(), 64, 1.0)
        group.save_state(str(tmp_path / "state"))
        group.load_state(str(tmp_path / "state"))
    finally:
        group.shutdown()


def test_a_dense_policy_trains_and_exports(ray_cluster, tmp_path):
    """Any HF causal LM is a policy: no MoE router to record, no expert load to report."""
    model, tokenizer = new_policy("tiny-qwen2", "0123456789+-= ", seed=0)
    path = str(save_policy(model, tokenizer, tmp_path / "dense"))
    sft, grpo, weights = train_a_little(path, 2)
    assert sft[1] < sft[0] and grpo["grad_norm"] > 0 and grpo["rows_learned"] > 0
    assert "expert_load" not in grpo
    assert "model.layers.0.mlp.gate_proj.weight" in weights
