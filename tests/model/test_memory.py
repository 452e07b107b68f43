import json
from pathlib import Path

import pytest
import ray

from model.memory import kv_cache_bytes_per_token, kv_elements_per_token

DEEPSEEK_V3 = {  # the published config's attention fields
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "hidden_size": 7168,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
}


def test_mla_caches_one_latent_per_token_and_layer():
    assert kv_elements_per_token(DEEPSEEK_V3) == 576 * 61 == 35_136
    assert kv_cache_bytes_per_token(DEEPSEEK_V3, "bfloat16") == 70_272
    # ~2.3 GB for one 32K-token sequence, whatever the head count
    assert kv_cache_bytes_per_token(DEEPSEEK_V3) * 32_768 == 2_302_672_896


def test_grouped_query_attention_caches_keys_and_values_per_kv_head():
    qwen2_7b = {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4}
    qwen2_7b["hidden_size"] = 3584  # head_dim 128
    assert kv_cache_bytes_per_token(qwen2_7b, "bfloat16") == 2 * 4 * 128 * 28 * 2 == 57_344
    explicit = {**qwen2_7b, "head_dim": 64}
    assert kv_elements_per_token(explicit) == 2 * 4 * 64 * 28
    no_gqa = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
    assert kv_elements_per_token(no_gqa) == 2 * 4 * 16 * 2


def test_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        kv_cache_bytes_per_token(DEEPSEEK_V3, "int3")


def test_engine_allocates_what_the_formula_says(rollout_worker, tiny_policy_dir):
    """The session engine (tiny DeepSeek-V3, fp32, 256 sequences x 128 tokens, cache sized by
    default): vLLM's blocks hold the bytes the formula gives per token. (The dense tiny-qwen2
    gave 4,096 bytes per token = 2 x 2 heads x 64 x 4 layers x 4 bytes, seen by hand.)"""
    config = json.loads((Path(tiny_policy_dir) / "config.json").read_text())
    info = ray.get(rollout_worker.cache_info.remote())
    per_token = kv_cache_bytes_per_token(config, "float32")
    assert info["kv_cache_bytes"] == 256 * 128 * per_token  # the default: what it can be asked
    # vLLM's blocks hold that many tokens, less at most one block's rounding
    assert info["tokens"] * per_token <= info["kv_cache_bytes"]
    assert info["kv_cache_bytes"] < (info["tokens"] + info["block_size"]) * per_token
