"""One learner rank in-process (FSDP2 over a world of one): its GRPO loss and gradient against
a formula written out here from the model's own logits, the direction of its updates,
padding, LoRA and a save/load round trip. On the CPU (gloo, fp32) always; the same tests run
on a GPU (nccl, bf16 compute) where one is present."""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load

from model import load_policy
from tests.rl.rank_helpers import (
    DEVICE_SETUP,
    LORA,
    LOSS,
    TEMPERATURE,
    completion_logprobs,
    full_params,
    grpo,
    grpo_batch,
    open_rank,
)

pytestmark = pytest.mark.slow
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def clipped_surrogate(model, batch, clip=0.2, temperature=TEMPERATURE):
    """GRPO's token-mean clipped loss written out from the plain model's logits: per token
    max(-A r, -A clip(r, 1 - clip, 1 + clip)), r = exp(logp - old), summed over completion
    tokens and divided by their count. No r1kit loss, logprob or aggregation code."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = (logits[:, :-1] / temperature).log_softmax(-1)  # (B, T-1, V)
    logp = logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    ratio = torch.exp(logp - batch.old_logprobs)
    adv = batch.advantages[:, None]  # (B, 1)
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    return (per_token * batch.loss_mask).sum() / batch.loss_mask.sum()


@pytest.mark.parametrize(
    ("share_prompts", "tool_tokens"), [(0, False), (1024, False), (1024, True), (0, True)]
)
@pytest.mark.parametrize("preset", ["tiny-dsv3", "tiny-qwen2"])
def test_grpo_loss_and_gradient_equal_the_written_out_formula(
    tmp_path, preset, share_prompts, tool_tokens
):
    """With ``tool_tokens`` (multi-turn rows: tool output inside completions, mask 0) the
    formula's mask leaves them out: so must the learner, packed prompts included."""
    batch = grpo_batch(preset, tmp_path, tool_tokens)
    # 22 completion tokens, 5 of them tool output
    assert batch.loss_mask.sum() == (17 if tool_tokens else 22)
    with open_rank(tmp_path, share_prompts=share_prompts, **DEVICE_SETUP["cpu"]) as rank:
        out = grpo(rank, batch, gradients_only=True)
    model, _ = load_policy(tmp_path)
    expected = clipped_surrogate(model, batch)
    expected.backward()
    stats = out["stats"]
    # both bounds clip somewhere, so the formula's max/clamp branches are all exercised
    assert stats.clip_frac_low_sum > 0 and stats.clip_frac_high_sum > 0
    # fp32, same model code, other summation order (packing, chunked logprobs): ~1e-7
    assert stats.loss == pytest.approx(float(expected), abs=1e-6)
    grads = out["gradients"]
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_padding_rows_change_no_loss_or_gradient(tmp_path):
    """Inert rows (``Batch.padded``: copies of row 0 with an empty loss mask, advantage 0) are
    what ranks get to even out their row counts: they must add nothing."""
    batch = grpo_batch("tiny-dsv3", tmp_path)
    padded = batch.padded(3)
    assert len(padded) == len(batch) + 3 and padded.loss_mask[-3:].sum() == 0
    with open_rank(tmp_path, **DEVICE_SETUP["cpu"]) as rank:
        plain, extended = grpo(rank, batch, True), grpo(rank, padded, True)
    # exact zeros added; only the order of the sums over rows differs (~1e-9 here)
    assert extended["stats"].loss == pytest.approx(plain["stats"].loss, abs=1e-7)
    assert extended["stats"].tokens == plain["stats"].tokens
    for name, grad in plain["gradients"].items():
        torch.testing.assert_close(extended["gradients"][name], grad, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", ["tiny-dsv3", "tiny-qwen2"])
def test_grpo_steps_raise_positive_advantage_completions(tmp_path, preset, device):
    batch = grpo_batch(preset, tmp_path)
    with open_rank(tmp_path, **DEVICE_SETUP[device]) as rank:
        steps = [grpo(rank, batch)]
        before = completion_logprobs(rank, batch)
        on_policy = replace(batch, old_logprobs=None)  # plain policy gradient from here
        steps += [grpo(rank, on_policy) for _ in range(3)]
        after = completion_logprobs(rank, batch)
        config = rank.model.config
    assert all(torch.isfinite(torch.tensor([s["stats"].loss, s["grad_norm"]])).all() for s in steps)
    delta = after - before  # (B,) change of each completion's logprob over steps 2-4
    # Adam's steps are not per-row ascent (rows share a prompt and tokens), but the
    # advantaged completions as a whole gain probability and the others lose it
    assert delta[:4].sum() > 0 > delta[4:].sum(), delta
    if preset == "tiny-dsv3":  # tokens per expert of every MoE layer, padding left out
        moe_layers = set(range(config.first_k_dense_replace, config.num_hidden_layers))
        assert set(steps[0]["expert_load"]) == moe_layers
        tokens = int(batch.attention_mask.sum()) * config.num_experts_per_tok
        for counts in steps[0]["expert_load"].values():
            assert counts.shape == (config.n_routed_experts,) and int(counts.sum()) == tokens
    else:
        assert steps[0]["expert_load"] == {}


@pytest.mark.parametrize("device", DEVICES)
def test_lora_trains_only_the_adapters_and_exports_merged_weights(tmp_path, device):
    batch = grpo_batch("tiny-dsv3", tmp_path)
    with open_rank(tmp_path, lora=LORA, **DEVICE_SETUP[device]) as rank:
        before = full_params(rank.model)
        trainable = {n for n, p in rank.model.named_parameters() if p.requires_grad}
        steps = [grpo(rank, batch) for _ in range(3)]
        after = full_params(rank.model)
        exported = {k: v for bucket in rank.export_weights() for k, v in load(bucket).items()}

    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(s["grad_norm"] > 0 and torch.isfinite(torch.tensor(s["stats"].loss)) for s in steps)
    for name in before:  # B moves at step 1, A from step 2 (its gradient is 0 while B is 0)
        moved = not torch.equal(before[name], after[name])
        assert moved == (name in trainable), name

    # the sync carries every adapted weight merged, W + (alpha / r) B @ A, and the router
    # biases (buffers); nothing else changed
    scale = LORA["alpha"] / LORA["r"]
    adapted = sorted({n.split(".lora_A.")[0] for n in trainable if ".lora_A." in n})
    names = {m.removeprefix("base_model.model.") + ".weight" for m in adapted}
    assert names <= set(exported) and len(names) == 5 * 4  # MLA's five projections x 4 layers
    assert all(n.endswith("e_score_correction_bias") for n in set(exported) - names)
    for module in adapted:
        w = after[f"{module}.base_layer.weight"]
        delta = after[f"{module}.lora_B.default.weight"] @ after[f"{module}.lora_A.default.weight"]
        name = module.removeprefix("base_model.model.") + ".weight"
        assert delta.abs().max() > 0, module
        torch.testing.assert_close(exported[name], w + scale * delta, rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_save_state_then_load_state_takes_the_same_next_steps(tmp_path, device):
    batch = grpo_batch("tiny-dsv3", tmp_path / "policy")  # fixed old logprobs: the loss
    state = str(tmp_path / "state")  # depends on the weights
    with open_rank(tmp_path / "policy", **DEVICE_SETUP[device]) as rank:
        start = [grpo(rank, batch) for _ in range(2)]
        rank.save_state(state)
        whole = [grpo(rank, batch) for _ in range(2)]
    with open_rank(tmp_path / "policy", **DEVICE_SETUP[device]) as rank:
        rank.load_state(state)
        resumed = [grpo(rank, batch) for _ in range(2)]
    losses = [[s["stats"].loss for s in steps] for steps in (start, whole, resumed)]
    assert losses[1][0] != losses[0][0]  # the weights moved: a fresh model would differ
    # step 3 needs the saved weights, step 4 the saved optimizer state too: exact
    assert losses[2] == losses[1]
    assert [s["grad_norm"] for s in resumed] == [s["grad_norm"] for s in whole]


def test_the_loss_config_comes_from_the_recipe():
    from rl.config import load_recipe
    from rl.loss_config import LossConfig

    recipe = load_recipe("recipes/demo.yaml", ["grpo.kl_coef=0.1", "grpo.kl_in=reward"])
    loss = LossConfig.from_grpo(recipe.grpo)
    assert loss.kl_coef == 0.0  # a KL in the reward is the driver's, not the loss's
    assert loss.max_len == recipe.grpo.max_new_tokens and not loss.every_row_learns
    assert LossConfig.from_grpo(load_recipe("recipes/demo.yaml", ["grpo.kl_coef=0.1"]).grpo)
    assert LOSS.policy_loss_options()["clip_low"] == 0.2


def test_tied_embeddings_travel_once_and_save_tied(tmp_path):
    """A policy whose output head is its input embedding (SmolLM2, Qwen2.5-0.5B, Llama-3.2-1B)
    exports that matrix once; the engine and HF loaders tie it again from the config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from model import build_char_tokenizer, save_policy

    tok = build_char_tokenizer("0123456789+-= ")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    save_policy(LlamaForCausalLM(config), tok, tmp_path / "tied")
    with open_rank(tmp_path / "tied", **DEVICE_SETUP["cpu"]) as rank:
        exported = {k: v for bucket in rank.export_weights() for k, v in load(bucket).items()}
        bytes_sent = rank.last_export["sync_bytes"]
        rank.save(str(tmp_path / "saved"))
    assert "lm_head.weight" not in exported and "model.embed_tokens.weight" in exported
    params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())  # counted once
    assert bytes_sent < 4 * params * 1.01  # fp32, plus safetensors headers
    saved, _ = load_policy(tmp_path / "saved")
    assert saved.lm_head.weight.data_ptr() == saved.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(
        saved.model.embed_tokens.weight, exported["model.embed_tokens.weight"]
    )


@pytest.mark.parametrize("knob", ["activation_checkpointing", "offload_optimizer"])
@pytest.mark.parametrize("device", DEVICES)
def test_memory_knobs_change_no_loss_gradient_or_update(tmp_path, device, knob):
    """Activation checkpointing recomputes each decoder layer in the backward (its
    checkpoint hooks must be there); optimizer offload keeps shards, gradients and the
    AdamW step in CPU memory (FSDP2's CPUOffloadPolicy, on the CPU too). Neither may change
    what is learned: the same losses, gradient norms and weights over three GRPO steps."""
    batch = grpo_batch("tiny-dsv3", tmp_path / "policy")
    runs = {}
    for on in (False, True):
        with open_rank(tmp_path / "policy", **DEVICE_SETUP[device], **{knob: on}) as rank:
            layer = rank.model.get_decoder().layers[0]
            calls, forward = [], layer.mlp.forward

            def counted(*args, calls=calls, forward=forward, **kwargs):
                calls.append(1)  # (a forward hook does not see the recomputation)
                return forward(*args, **kwargs)

            layer.mlp.forward = counted
            steps = [grpo(rank, batch)]
            layer.mlp.forward = forward
            if knob == "activation_checkpointing":  # recomputed in the backward: run twice
                assert len(calls) == (2 if on else 1) * 2  # per micro-batch (8 rows, 4 each)
            else:
                shard = next(layer.parameters())
                assert shard.to_local().device.type == ("cpu" if on else rank.device)
            steps += [grpo(rank, batch) for _ in range(2)]
            runs[on] = ([s["stats"].loss for s in steps], [s["grad_norm"] for s in steps])
            runs[on] += (full_params(rank.model),)
    (loss_off, norm_off, w_off), (loss_on, norm_on, w_on) = runs[False], runs[True]
    # fp32 on the CPU: the same ops (recomputed ones included), so the same bits up to
    # summation order; bf16 on a GPU: recomputation rounds the same way, the CPU step of an
    # offloaded optimizer is fp32 like the GPU's
    tol = 1e-6 if device == "cpu" else 1e-2
    assert loss_on == pytest.approx(loss_off, abs=tol)
    assert norm_on == pytest.approx(norm_off, rel=tol)
    moved = max(float((w_on[k] - w_off[k]).abs().max()) for k in w_off)
    assert moved <= (1e-6 if device == "cpu" else 1e-3), moved
