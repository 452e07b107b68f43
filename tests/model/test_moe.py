"""MoE routing: recording, load and agreement, auxiliary-loss-free bias balancing."""

import copy
import math

import pytest
import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

from model import apply_lora, new_policy
from model.moe import (
    RoutingRecorder,
    expert_load,
    moe_routers,
    routing_agreement,
    routing_agreement_by_layer,
    update_router_bias,
)

ALPHABET = "0123456789+-= "
IDS = torch.tensor([[1, 4, 9, 10, 11, 5, 6, 7, 12, 3], [1, 8, 8, 13, 4, 4, 14, 6, 2, 0]])
PADDED = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])  # right-padded second row


def tiny():
    return new_policy("tiny-dsv3", ALPHABET, seed=0)[0]


def record(model, ids=IDS, **kwargs):
    with torch.no_grad(), RoutingRecorder(model) as rec:
        logits = model(ids, **kwargs).logits
    return rec, logits


def with_other_routers(model, std=0.1):
    """A copy of ``model`` whose routers choose differently (everything else is shared values)."""
    other = copy.deepcopy(model)
    torch.manual_seed(7)
    with torch.no_grad():
        for router in moe_routers(other).values():
            router.weight.add_(torch.randn_like(router.weight) * std)
    return other


def test_recorder_keeps_each_layers_topk_experts_per_token():
    model = tiny()
    rec, _ = record(model)
    assert sorted(rec.records) == [1, 2, 3] and rec.token_shape == (2, 10)
    # with zero correction bias and one group, the top-2 of sigmoid(logits) is the top-2 logits
    router_logits = model(IDS, output_router_logits=True).router_logits  # 3 x (20, 8)
    for layer, logits in zip((1, 2, 3), router_logits, strict=True):
        ids = rec.records[layer]
        assert ids.shape == (20, 2) and ids.dtype == torch.long
        assert torch.equal(ids.sort(-1).values, logits.topk(2).indices.sort(-1).values)


def test_recorder_finds_the_routers_of_a_peft_wrapped_model():
    plain, _ = record(tiny())
    wrapped, _ = record(apply_lora(tiny(), r=4, alpha=4, targets=["routed_experts", "attention"]))
    assert routing_agreement(plain.records, wrapped.records) == 1.0  # adapter B = 0: same model


def test_recorder_rejects_a_second_different_forward():
    model = tiny()
    with RoutingRecorder(model):
        model(IDS)
        model(IDS)  # same routing (what an activation-checkpoint recompute does): fine
        with pytest.raises(RuntimeError, match="second, different forward"):
            model(IDS.flip(-1))
    assert not any(r._forward_hooks for r in moe_routers(model).values())  # hooks removed


def test_expert_load_counts_tokens_per_expert_without_padding():
    ids = torch.tensor([[0, 1], [0, 2], [1, 0]])
    ((counts, cv),) = expert_load({1: ids}, n_experts=4).values()
    assert counts.tolist() == [3, 2, 1, 0]
    assert cv == pytest.approx(math.sqrt(1.25) / 1.5)  # population var (2.25+.25+.25+2.25)/4
    ((counts, cv),) = expert_load({1: ids}, 4, mask=torch.tensor([1, 1, 0])).values()
    assert counts.tolist() == [2, 1, 1, 0] and cv == pytest.approx(math.sqrt(0.5))  # mean 1
    ((counts, cv),) = expert_load({1: ids}, 4, mask=torch.zeros(3)).values()
    assert counts.tolist() == [0, 0, 0, 0] and math.isnan(cv)
    ((counts, cv),) = expert_load({1: torch.tensor([[0, 1], [2, 3]])}, 4).values()
    assert cv == 0.0
    with pytest.raises(ValueError, match="mask has 4 elements"):
        expert_load({1: ids}, 4, mask=torch.ones(2, 2))
    rec, _ = record(tiny(), attention_mask=PADDED)
    for counts, _ in expert_load(rec.records, 8, mask=PADDED).values():
        assert int(counts.sum()) == 2 * 16  # k=2 experts x 16 real tokens


def test_routing_agreement_compares_expert_sets():
    a = {1: torch.tensor([[0, 1], [2, 3], [4, 5]]), 2: torch.tensor([[4, 5], [6, 7], [0, 1]])}
    b = {1: torch.tensor([[1, 0], [2, 4], [4, 5]]), 2: torch.tensor([[4, 5], [7, 6], [0, 2]])}
    # layer 1: {0,1}={1,0} yes, {2,3}!={2,4}, yes -> 2/3; layer 2: yes, yes, no -> 2/3
    assert routing_agreement_by_layer(a, b) == pytest.approx({1: 2 / 3, 2: 2 / 3})
    assert routing_agreement(a, b) == pytest.approx(2 / 3)
    # the first two tokens only: layer 1 1/2, layer 2 2/2
    mask = torch.tensor([True, True, False])
    assert routing_agreement_by_layer(a, b, mask) == {1: 0.5, 2: 1.0}
    assert routing_agreement(a, b, mask) == 0.75
    assert routing_agreement(a, a) == 1.0
    with pytest.raises(ValueError, match="different layers"):
        routing_agreement(a, {1: b[1]})


def four_expert_model():
    config = DeepseekV3Config(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=3,  # layer 0 dense, layers 1 and 2 MoE
        first_k_dense_replace=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
    )
    return DeepseekV3ForCausalLM(config)


def test_update_router_bias_raises_underloaded_and_lowers_overloaded_experts():
    model = four_expert_model()
    routers = moe_routers(model)
    routers[1].e_score_correction_bias.copy_(torch.tensor([0.1, 0.0, 0.0, -0.2]))
    weight = routers[1].weight.detach().clone()
    # loads [5, 1, 3, 3]: mean 3 -> sign(3 - load) = [-1, +1, 0, 0]
    update_router_bias(model, {1: torch.tensor([5, 1, 3, 3])}, rate=0.01)
    torch.testing.assert_close(
        routers[1].e_score_correction_bias, torch.tensor([0.09, 0.01, 0.0, -0.2])
    )
    assert torch.equal(routers[2].e_score_correction_bias, torch.zeros(4))  # not in the update
    assert torch.equal(routers[1].weight, weight) and routers[1].weight.grad is None
    with pytest.raises(ValueError, match=r"layers \[0\] have no MoE router"):
        update_router_bias(model, {0: torch.tensor([1, 1, 1, 1])}, rate=0.01)


def test_the_bias_steers_the_choice_but_not_the_gating_weights():
    model = tiny()
    steered = copy.deepcopy(model)
    # expert 7 idle, the rest busy: a large rate puts 7 into every token's top-2
    update_router_bias(
        steered, {layer: torch.tensor([3] * 7 + [0]) for layer in (1, 2, 3)}, rate=10.0
    )
    router = moe_routers(steered)[2]
    hidden = torch.randn(20, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, weights, ids = router(hidden)
        assert (ids == 7).any(-1).all()
        # the gates are the *unbiased* sigmoid scores of the chosen experts, normalised
        # (norm_topk_prob; routed_scaling_factor 1.0): the +10 bias of expert 7 is not in them
        scores = torch.sigmoid(hidden @ router.weight.T).gather(1, ids)
        torch.testing.assert_close(weights, scores / scores.sum(-1, keepdim=True))
