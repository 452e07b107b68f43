"""Memory a policy's attention cache takes, from its Hugging Face config.json alone.

Multi-head Latent Attention (DeepSeek-V2/V3, Kimi-K2) caches one compressed latent per token
and layer, ``kv_lora_rank + qk_rope_head_dim`` elements (DeepSeek-V3: 512 + 64 = 576), shared by
every head; other attention caches a key and a value per key-value head. These are the figures
vLLM allocates by: checked against its block count on CPU for both tiny presets
(tests/model/test_memory.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp8": 1}


def is_mla(config: Mapping[str, Any]) -> bool:
    """Whether the config describes Multi-head Latent Attention (a compressed KV latent)."""
    return bool(config.get("kv_lora_rank"))


def kv_elements_per_token(config: Mapping[str, Any]) -> int:
    """Cached elements per token over all decoder layers (multi-token-prediction layers,
    which an engine caches only when it runs them as a draft model, are not counted)."""
    layers = int(config["num_hidden_layers"])
    if is_mla(config):
        return (int(config["kv_lora_rank"]) + int(config["qk_rope_head_dim"])) * layers
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    return 2 * kv_heads * head_dim * layers


def kv_cache_bytes_per_token(config: Mapping[str, Any], dtype: str = "bfloat16") -> int:
    """Bytes of KV cache per token (all layers) in ``dtype``; DeepSeek-V3 in bf16: 70,272."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}")
    return kv_elements_per_token(config) * DTYPE_BYTES[dtype]
