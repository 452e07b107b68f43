"""The vLLM rollout worker: sampling with logprobs, and exact in-place weight reload."""

import pytest
import ray
import torch
from safetensors.torch import load

from model import load_policy, to_vllm_weights
from rollouts.engine import _layer_of, pack_buckets, pack_weights
from tests.parity import teacher_forced

pytestmark = pytest.mark.slow


def perturbed(model, scale=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in state.items():
        if v.is_floating_point() and "rotary" not in k:
            v.add_(torch.randn(v.shape, generator=g) * (1.0 if "e_score" in k else scale))
    return state


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_groups_come_back_with_logprobs_that_match_the_learner(
    rollout_worker, tiny_policy_dir, temperature
):
    model, tok = load_policy(tiny_policy_dir)
    ray.get(
        rollout_worker.update_weights.remote(
            pack_weights(to_vllm_weights(model.state_dict().items()))
        )
    )
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_dict=False
        )
        for p in ("1+2", "34-5")
    ]
    out = ray.get(
        rollout_worker.generate.remote(prompts, n=3, max_tokens=16, seed=1, temperature=temperature)
    )
    assert [c.prompt_index for c in out] == [0, 0, 0, 1, 1, 1]
    for c in out:
        assert len(c.token_ids) == len(c.logprobs) > 0 and c.finish_reason in ("stop", "length")
        # the logprobs of the distribution sampled from: logits / temperature
        tf = teacher_forced(model, prompts[c.prompt_index], c.token_ids, temperature)
        diff = (tf - torch.tensor(c.logprobs)).abs()
        # fp32: only summation order differs from transformers (seen ~1e-6)
        assert diff.max() < 1e-3, diff.max()


def test_same_seed_same_samples(rollout_worker, tiny_policy_dir):
    _, tok = load_policy(tiny_policy_dir)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "9+9"}], add_generation_prompt=True, return_dict=False
    )
    a = ray.get(rollout_worker.generate.remote([prompt], n=4, max_tokens=12, seed=5))
    b = ray.get(rollout_worker.generate.remote([prompt], n=4, max_tokens=12, seed=5))
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


def test_reload_is_exact_for_every_tensor_experts_and_mla_included(rollout_worker, tiny_policy_dir):
    """Sync other weights, then the original ones again: every engine tensor (in vLLM's own
    prepacked / absorbed layouts) must be bit-identical to before. vLLM 0.32's CPU MoE skips
    its expert prepack on reload; without r1kit's repack this fails on w13/w2."""
    model, _ = load_policy(tiny_policy_dir)
    base = pack_weights(to_vllm_weights(model.state_dict().items()))
    ray.get(rollout_worker.update_weights.remote(base))
    before = ray.get(rollout_worker.fingerprint.remote())
    other = pack_weights(to_vllm_weights(perturbed(model).items()))
    assert ray.get(rollout_worker.update_weights.remote(other)) > 0
    changed = ray.get(rollout_worker.fingerprint.remote())
    moved = {k for k in before if before[k] != changed[k]}
    assert any("w13_weight" in k for k in moved) and any("kv_b_proj" in k for k in moved)
    assert any("W_UK_T" in k or "W_UV" in k for k in moved)  # MLA's absorbed projections
    ray.get(rollout_worker.update_weights.remote(base))
    after = ray.get(rollout_worker.fingerprint.remote())
    assert {k for k in before if before[k] != after[k]} == set()


def test_bucketed_sync_is_cut_between_layers_and_exact(rollout_worker, tiny_policy_dir):
    """Buckets bound what one reload holds; they never split a layer (vLLM-CPU repacks a MoE
    layer's experts together), and loading them one by one equals loading one blob."""
    model, _ = load_policy(tiny_policy_dir)
    named = list(to_vllm_weights(model.state_dict().items()))
    ray.get(rollout_worker.update_weights.remote(pack_weights(named)))
    before = ray.get(rollout_worker.fingerprint.remote())
    ray.get(
        rollout_worker.update_weights.remote(
            pack_weights(to_vllm_weights(perturbed(model).items()))
        )
    )
    buckets = pack_buckets(named, bucket_bytes=2**20)
    layers = [{_layer_of(k) for k in load(b)} for b in buckets]
    assert len(buckets) >= 4
    for i, a in enumerate(layers):  # no layer in two buckets
        assert all(not (a & b) for b in layers[i + 1 :])
    assert ray.get(rollout_worker.update_weights.remote(buckets)) == len(named)
    after = ray.get(rollout_worker.fingerprint.remote())
    assert {k for k in before if before[k] != after[k]} == set()


def test_synced_engine_matches_the_learner_it_came_from(rollout_worker, tiny_policy_dir):
    model, tok = load_policy(tiny_policy_dir)
    model.load_state_dict(perturbed(model, scale=0.01, seed=3))
    ray.get(
        rollout_worker.update_weights.remote(
            pack_weights(to_vllm_weights(model.state_dict().items()))
        )
    )
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "12+7"}], add_generation_prompt=True, return_dict=False
    )
    out = ray.get(rollout_worker.generate.remote([prompt], n=8, max_tokens=16, seed=2))
    diffs = torch.cat(
        [(teacher_forced(model, prompt, c.token_ids) - torch.tensor(c.logprobs)).abs() for c in out]
    )
    assert diffs.mean() < 1e-4 and diffs.max() < 1e-3, (diffs.mean(), diffs.max())


def test_teacher_forced_logprobs_match_with_sharp_attention(rollout_worker, tiny_policy_dir):
    """At random init q.k is ~0, attention is uniform, and position handling cannot show.
    Scaling up the query/key projections makes attention depend on positions; vLLM 0.32's
    CPU rotary kernel mis-rotates MLA's (tokens, heads, 64) queries and fails this by nats
    (r1kit runs vLLM's native rope instead)."""
    model, tok = load_policy(tiny_policy_dir)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_b_proj.weight.mul_(6.0)
            layer.self_attn.kv_a_proj_with_mqa.weight.mul_(6.0)
    ray.get(
        rollout_worker.update_weights.remote(
            pack_weights(to_vllm_weights(model.state_dict().items()))
        )
    )
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "98+93-7"}], add_generation_prompt=True, return_dict=False
    )
    completion = tok.encode("<think>98+93=191 191-7=184</think>184", add_special_tokens=False)
    engine = torch.tensor(
        ray.get(rollout_worker.score.remote([prompt + completion], [len(prompt)]))[0]
    )
    diff = (teacher_forced(model, prompt, completion) - engine).abs()
    assert diff.max() < 1e-3, diff


@pytest.fixture(scope="module")
def dense_engine(ray_cluster, tmp_path_factory):
    """A dense policy's engine (tiny-qwen2: prefix caching on; the MLA session engine has it
    off) and its saved policy."""
    from model import new_policy, save_policy
    from rollouts import RolloutGroup

    model, tok = new_policy("tiny-qwen2", "0123456789+-= ", seed=0)
    path = save_policy(model, tok, tmp_path_factory.mktemp("dense") / "policy")
    group = RolloutGroup(str(path), 1, dtype="float32", max_model_len=128)
    yield group.workers[0], path
    group.shutdown()


def test_a_weight_sync_drops_prompt_kv_cached_by_the_old_weights(dense_engine):
    """With prefix caching, a prompt sampled before a sync has its KV blocks cached; after the
    sync they hold the old weights' keys and values. The engine must not reuse them
    (NeMo-RL PR#4018): the samples' logprobs after the sync are the new policy's."""
    worker, path = dense_engine
    model, tok = load_policy(path)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "12+34-5+67-8+9+10-11+12-13+14 " * 3}],
        add_generation_prompt=True,
        return_dict=False,
    )
    assert len(prompt) > 2 * 32  # two full 32-token KV blocks to cache
    ray.get(worker.generate.remote([prompt], n=4, max_tokens=8, seed=3))  # caches the prompt
    new = {k: v for k, v in perturbed(model, scale=0.05, seed=4).items()}
    model.load_state_dict(new)
    ray.get(worker.update_weights.remote(pack_weights(to_vllm_weights(new.items()))))
    out = ray.get(worker.generate.remote([prompt], n=4, max_tokens=8, seed=3))
    for c in out:
        diff = (teacher_forced(model, prompt, c.token_ids) - torch.tensor(c.logprobs)).abs()
        assert diff.max() < 1e-3, diff.max()  # without the reset: 2.6 nats (seen)
