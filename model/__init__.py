"""Policy construction: presets, tokenizer, Hugging Face load/save, weight naming for vLLM,
LoRA targets, MoE routing utilities.

No distributed code lives here; `rl/` shards the models it gets from this package.

The names below are imported on first use, so that a light submodule (``model.lora_families``,
read by recipe validation) does not pull in transformers and peft with this package.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "load_policy": "hf",
    "new_policy": "hf",
    "save_policy": "hf",
    "pad_token_id": "hf",
    "FAMILIES": "lora_families",
    "apply_lora": "lora",
    "lora_target_names": "lora",
    "lora_targets_report": "lora",
    "RoutingRecorder": "moe",
    "expert_load": "moe",
    "moe_routers": "moe",
    "routing_agreement": "moe",
    "routing_agreement_by_layer": "moe",
    "update_router_bias": "moe",
    "PRESETS": "presets",
    "preset_config": "presets",
    "build_char_tokenizer": "tokenizer",
    "to_vllm_weights": "weights",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    """``from model import NAME`` imports NAME's submodule on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"model.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
