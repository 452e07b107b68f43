"""Named model presets built on transformers: DeepSeek-V3-style (MLA + MoE), and a dense
Qwen2 for side-by-side runs against toolkits that only take dense models.

The tiny DeepSeek-V3 presets are sized for vLLM's CPU build, whose MLA decode kernel only
accepts ``kv_lora_rank + qk_rope_head_dim == 512 + 64``: the latent is therefore "large"
relative to the hidden size, and the rest of the model is kept small around it.
"""

from __future__ import annotations

from typing import Any

from transformers import DeepseekV3Config, PretrainedConfig, Qwen2Config

CONFIG_CLASSES = {"deepseek_v3": DeepseekV3Config, "qwen2": Qwen2Config}

PRESETS: dict[str, dict[str, Any]] = {
    # ~3.1M parameters: 4 layers, first dense, then MoE with 8 routed experts (top-2,
    # sigmoid scores, noaux_tc bias balancing) plus 1 shared expert; MLA with q_lora_rank set.
    "tiny-dsv3": dict(
        model_type="deepseek_v3",
        hidden_size=160,
        intermediate_size=480,  # dense MLP of the first layer
        moe_intermediate_size=128,  # each routed and shared expert
        num_hidden_layers=4,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
        norm_topk_prob=True,
        routed_scaling_factor=1.0,
        q_lora_rank=96,
        kv_lora_rank=512,  # fixed by vLLM-CPU's MLA kernel (512 + 64)
        qk_rope_head_dim=64,  # fixed by vLLM-CPU's MLA kernel
        qk_nope_head_dim=32,
        v_head_dim=32,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.02,
    ),
    # ~3.2M parameters, dense: Qwen2 architecture (GQA, SwiGLU MLP), about tiny-dsv3's size.
    "tiny-qwen2": dict(
        model_type="qwen2",
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.02,
    ),
}


def preset_config(
    name: str, *, vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int
) -> PretrainedConfig:
    """Build the config of preset ``name`` for a tokenizer's vocabulary.

    Raises ValueError naming the known presets when ``name`` is unknown.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    fields = dict(PRESETS[name])
    config = CONFIG_CLASSES[fields.pop("model_type")](
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        **fields,
    )
    if config.model_type != "deepseek_v3":
        return config
    # vLLM's DeepSeek loader reads these; transformers 5 does not write them (its router is
    # always sigmoid + noaux_tc), and without them vLLM looks for no e_score_correction_bias.
    config.topk_method = "noaux_tc"
    config.scoring_func = "sigmoid"
    return config
