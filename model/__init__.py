"""Policy construction: presets, tokenizer, Hugging Face load/save, weight naming for vLLM,
LoRA targets, MoE routing utilities.

No distributed code lives here; `rl/` shards the models it gets from this package.
"""

from model.hf import load_policy, new_policy, save_policy
from model.lora import (
    FAMILIES,
    adapter_state_dict,
    apply_lora,
    load_lora,
    lora_target_names,
    lora_targets_report,
    merged_state_dict,
    state_dict_nbytes,
)
from model.moe import (
    RoutingRecorder,
    RoutingReplay,
    expert_load,
    gate_weights,
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
    "RoutingReplay",
    "adapter_state_dict",
    "apply_lora",
    "build_char_tokenizer",
    "expert_load",
    "gate_weights",
    "load_lora",
    "load_policy",
    "lora_target_names",
    "lora_targets_report",
    "merged_state_dict",
    "moe_routers",
    "new_policy",
    "preset_config",
    "routing_agreement",
    "routing_agreement_by_layer",
    "save_policy",
    "state_dict_nbytes",
    "to_vllm_weights",
    "update_router_bias",
]
