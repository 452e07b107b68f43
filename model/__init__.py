"""Policy construction: presets, tokenizer, Hugging Face load/save, weight naming for vLLM,
LoRA targets, MoE routing utilities.

No distributed code lives here; `rl/` shards the models it gets from this package.
"""

from model.hf import load_policy, new_policy, pad_token_id, save_policy
from model.lora import (
    FAMILIES,
    apply_lora,
    lora_target_names,
    lora_targets_report,
)
from model.moe import (
    RoutingRecorder,
    expert_load,
    moe_routers,
    routing_agreement,
    routing_agreement_by_layer,
    update_router_bias,
)
from model.presets import PRESETS, preset_config
from model.tokenizer import build_char_tokenizer
from model.weights import to_vllm_weights

__all__ = [
    "FAMILIES",
    "PRESETS",
    "RoutingRecorder",
    "apply_lora",
    "build_char_tokenizer",
    "expert_load",
    "load_policy",
    "lora_target_names",
    "lora_targets_report",
    "moe_routers",
    "new_policy",
    "pad_token_id",
    "preset_config",
    "routing_agreement",
    "routing_agreement_by_layer",
    "save_policy",
    "to_vllm_weights",
    "update_router_bias",
]
