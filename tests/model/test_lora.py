"""LoRA through peft: exact targets per family, merged weights, adapter off = base policy."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from model import new_policy
from model.lora import FAMILIES, apply_lora, lora_targets_report, merge_full_state

ALPHABET = "0123456789+-= "
IDS = torch.tensor([[1, 4, 9, 10, 11, 5, 6, 7, 12, 3], [1, 8, 8, 13, 4, 4, 14, 6, 2, 0]])

# tiny-dsv3: 4 layers; layer 0 dense, layers 1-3 MoE (8 routed experts + 1 shared); MLA with
# q_lora_rank, so q_a_proj/q_b_proj and no q_proj.
MLA = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
EXPECTED = {
    "attention": [f"model.layers.{i}.self_attn.{p}" for i in range(4) for p in MLA],
    "dense_mlp": [f"model.layers.0.mlp.{p}" for p in MLP],
    "shared_experts": [f"model.layers.{i}.mlp.shared_experts.{p}" for i in (1, 2, 3) for p in MLP],
    "routed_experts": [
        f"model.layers.{i}.mlp.experts.{p}"
        for i in (1, 2, 3)
        for p in ("gate_up_proj", "down_proj")
    ],
}


def tiny():
    return new_policy("tiny-dsv3", ALPHABET, seed=0)[0]


def perturb_adapters(peft_model, std=0.05):
    """B starts at 0 (adapter = identity); give it values so that the adapter changes logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)


@pytest.mark.parametrize(
    "targets",
    [["attention"], ["dense_mlp"], ["shared_experts"], ["routed_experts"], list(FAMILIES)],
)
def test_each_family_adapts_exactly_its_weights(targets):
    peft_model = apply_lora(tiny(), r=8, alpha=16, targets=targets)
    expected = {f: sorted(EXPECTED[f]) if f in targets else [] for f in FAMILIES}
    assert lora_targets_report(peft_model) == {**expected, "other": []}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_unknown_or_empty_family_and_expert_dropout_are_errors():
    with pytest.raises(ValueError, match=r"known: \['attention', 'dense_mlp', 'routed_expert"):
        apply_lora(tiny(), r=8, alpha=16, targets=["attention", "mlp"])
    with pytest.raises(ValueError, match="dropout is not supported on the routed experts"):
        apply_lora(tiny(), r=8, alpha=16, targets=["routed_experts"], dropout=0.1)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dense = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    )
    with pytest.raises(ValueError, match="'shared_experts' selects nothing"):
        apply_lora(dense, r=4, alpha=4, targets=["shared_experts"])
    report = lora_targets_report(apply_lora(dense, r=4, alpha=4, targets=["attention"]))
    assert len(report["attention"]) == 2 * 4  # q, k, v, o per layer
    assert report["dense_mlp"] == []


@pytest.mark.filterwarnings("ignore:The following (rank|alpha)_pattern keys")
def test_plain_peft_would_move_mlp_names_onto_the_routed_experts():
    """Why apply_lora switches peft's v4->v5 rewrite off (if this fails, peft stopped doing it)."""
    dense = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    config = LoraConfig(r=8, lora_alpha=16, target_modules=dense)
    report = lora_targets_report(get_peft_model(tiny(), config))
    assert report["dense_mlp"] == []
    assert report["routed_experts"] == [
        f"model.layers.{i}.mlp.experts.gate_up_proj" for i in (1, 2, 3)
    ]


def test_merged_weight_is_w_plus_alpha_over_r_times_b_a():
    model = tiny()
    w = model.model.layers[1].self_attn.o_proj.weight.detach().clone()  # (160, 128)
    peft_model = apply_lora(model, r=4, alpha=8, targets=["attention"])
    perturb_adapters(peft_model)
    layer = peft_model.base_model.model.model.layers[1].self_attn.o_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (4, 128), (160, 4)
    merged = merge_full_state(peft_model.state_dict(), 8 / 4)
    merged = merged["model.layers.1.self_attn.o_proj.weight"]
    torch.testing.assert_close(merged, w + (8 / 4) * b.detach() @ a.detach(), rtol=0, atol=1e-7)
    assert not torch.equal(merged, w)


def test_merged_state_runs_the_base_model_as_the_adapter_does():
    """What the learner syncs with LoRA: its gathered state dict, merged (the families the
    learner adapts; 3-D expert adapters are not merged yet)."""
    base_logits = tiny()(IDS).logits
    families = ["attention", "shared_experts", "dense_mlp"]
    peft_model = apply_lora(tiny(), r=8, alpha=16, targets=families)
    perturb_adapters(peft_model)
    weights_before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    with torch.no_grad():
        adapted = peft_model(IDS).logits
        merged = merge_full_state(peft_model.state_dict(), 16 / 8)
        plain = tiny()
        plain.load_state_dict(merged, strict=True)  # same names and shapes as the base model
        assert (adapted - base_logits).abs().max() > 1e-2  # the adapter matters
        torch.testing.assert_close(plain(IDS).logits, adapted, rtol=0, atol=1e-5)
    for name, p in peft_model.named_parameters():  # merging left the training model alone
        assert torch.equal(p, weights_before[name]), name


def test_disabled_adapter_is_exactly_the_base_policy():
    base_logits = tiny()(IDS).logits
    peft_model = apply_lora(tiny(), r=8, alpha=16, targets=list(FAMILIES))
    perturb_adapters(peft_model)
    with torch.no_grad():
        assert (peft_model(IDS).logits - base_logits).abs().max() > 1e-2
        with peft_model.disable_adapter():
            torch.testing.assert_close(peft_model(IDS).logits, base_logits, rtol=0, atol=0)


def test_routed_expert_adapters_get_gradients_and_the_base_does_not():
    peft_model = apply_lora(tiny(), r=4, alpha=4, targets=["routed_experts"])
    perturb_adapters(peft_model)
    peft_model(IDS).logits.logsumexp(-1).mean().backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters()}
    expert_grads = [g for n, g in grads.items() if ".experts." in n and "lora_" in n]
    assert len(expert_grads) == 3 * 2 * 2  # 3 layers x (gate_up, down) x (A, B)
    assert all(g is not None and g.abs().sum() > 0 for g in expert_grads)
    assert all(g is None for n, g in grads.items() if "lora_" not in n)
