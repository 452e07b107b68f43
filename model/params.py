"""Parameter counts of a causal LM from its Hugging Face config.json alone.

Covers the architectures r1kit plans for: DeepSeek-V2/V3 and Kimi-K2 (Multi-head Latent
Attention; dense first layers, then MoE layers of shared + routed experts; multi-token
prediction modules), Qwen2/Qwen2-MoE/Qwen3-MoE and Llama (grouped-query attention, SwiGLU).
Counted from the shapes each layer holds, the way the checkpoints store them: DeepSeek-V3
comes to 671.0B total and 37.5B active per token (its paper: 671B and 37B), Kimi-K2 to 1.03T
and 32.9B (1T, 32B).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from model.memory import is_mla


@dataclass(frozen=True)
class ParamCount:
    """Parameters by where they sit; ``active`` is what one token computes with."""

    total: int
    active: int
    embedding: int  # input embedding and output head (once if tied)
    attention: int  # all layers
    dense_mlp: int  # all dense (non-MoE) MLP layers
    shared_experts: int  # all MoE layers
    routed_experts: int  # all MoE layers, every expert
    router: int
    norms: int
    mtp: int  # multi-token-prediction modules (not in ``total``: DeepSeek counts them apart)
    layers: int
    moe_layers: int
    expert: int  # one routed expert of one layer
    largest_layer: int  # the biggest decoder layer (what FSDP gathers at once)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _get(config: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return default


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's config (multimodal configs such as Kimi-K2.5 nest it)."""
    return config.get("text_config") or config


def attention_params(config: Mapping[str, Any]) -> int:
    """One layer's attention weights (projections, their norms and biases)."""
    h = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    if is_mla(config):
        rope, nope = int(config["qk_rope_head_dim"]), int(config["qk_nope_head_dim"])
        v, kv_rank = int(config["v_head_dim"]), int(config["kv_lora_rank"])
        q_rank = config.get("q_lora_rank")
        q = (
            h * heads * (nope + rope)
            if not q_rank
            else h * q_rank + q_rank + q_rank * heads * (nope + rope)
        )
        kv = h * (kv_rank + rope) + kv_rank + kv_rank * heads * (nope + v)
        return q + kv + heads * v * h
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or h // heads)
    qkv = h * (heads + 2 * kv_heads) * head_dim
    bias = (heads + 2 * kv_heads) * head_dim if _qkv_bias(config) else 0
    norms = 2 * head_dim if config.get("model_type", "").startswith("qwen3") else 0  # q/k norms
    return qkv + bias + heads * head_dim * h + norms


def _qkv_bias(config: Mapping[str, Any]) -> bool:
    if "attention_bias" in config:
        return bool(config["attention_bias"])
    return config.get("model_type") in ("qwen2", "qwen2_moe")  # Qwen2 has q/k/v biases


def _moe_layout(config: Mapping[str, Any]) -> tuple[int, int]:
    """(number of MoE layers, routed experts per MoE layer); (0, 0) for a dense model."""
    layers = int(config["num_hidden_layers"])
    experts = int(_get(config, "n_routed_experts", "num_experts", "num_local_experts", default=0))
    if not experts:
        return 0, 0
    first_dense = int(config.get("first_k_dense_replace") or 0)
    step = int(_get(config, "moe_layer_freq", "decoder_sparse_step", default=1) or 1)
    sparse = [i for i in range(layers) if i >= first_dense and i % step == 0]
    dense_only = set(config.get("mlp_only_layers") or [])
    return len([i for i in sparse if i not in dense_only]), experts


def count_params(config: Mapping[str, Any]) -> ParamCount:
    """Counts for the model ``config`` (a config.json as a dict) describes."""
    config = text_config(config)
    h, vocab = int(config["hidden_size"]), int(config["vocab_size"])
    layers = int(config["num_hidden_layers"])
    moe_layers, experts = _moe_layout(config)
    dense_layers = layers - moe_layers
    attn = attention_params(config)
    dense_mlp = 3 * h * int(config["intermediate_size"])
    moe_inter = int(_get(config, "moe_intermediate_size", default=config["intermediate_size"]))
    expert = 3 * h * moe_inter
    shared_inter = _get(config, "shared_expert_intermediate_size")  # Qwen-MoE: one, its size
    if shared_inter:
        shared = 3 * h * int(shared_inter) + h  # + its sigmoid gate
    else:
        shared = expert * int(_get(config, "n_shared_experts", default=0) or 0)
    bias = experts if config.get("topk_method") == "noaux_tc" else 0  # selection bias
    router = experts * h + bias
    top_k = int(_get(config, "num_experts_per_tok", default=0) or 0)
    norms = 2 * h * layers + h
    tied = bool(config.get("tie_word_embeddings", False))
    embedding = vocab * h * (1 if tied else 2)
    moe_layer = attn + shared + experts * expert + router + 2 * h
    dense_layer = attn + dense_mlp + 2 * h
    total = (
        embedding
        + layers * attn
        + dense_layers * dense_mlp
        + moe_layers * (shared + experts * expert + router)
        + norms
    )
    active = total - moe_layers * (experts - top_k) * expert
    nextn = int(config.get("num_nextn_predict_layers") or 0)
    # a module: two norms, a 2h -> h projection, one decoder layer, the head's norm (the
    # embedding and head are the main model's)
    mtp = nextn * (2 * h + 2 * h * h + (moe_layer if moe_layers else dense_layer) + h)
    return ParamCount(
        total=total,
        active=active,
        embedding=embedding,
        attention=layers * attn,
        dense_mlp=dense_layers * dense_mlp,
        shared_experts=moe_layers * shared,
        routed_experts=moe_layers * experts * expert,
        router=moe_layers * router,
        norms=norms,
        mtp=mtp,
        layers=layers,
        moe_layers=moe_layers,
        expert=expert,
        largest_layer=max(moe_layer if moe_layers else 0, dense_layer if dense_layers else 0),
    )
