"""LoRA target families by name: the regexes ``model/lora.py`` applies (documented there).

Plain strings, free of torch, peft and transformers, so that recipe validation can list them.
"""

from __future__ import annotations

_LAYER = r"model\.layers\.\d+"
FAMILIES: dict[str, str] = {
    "attention": _LAYER + r"\.self_attn\.(q_proj|k_proj|v_proj|q_a_proj|q_b_proj"
    r"|kv_a_proj_with_mqa|kv_b_proj|o_proj)",
    "dense_mlp": _LAYER + r"\.mlp\.(gate_proj|up_proj|down_proj)",
    "shared_experts": _LAYER + r"\.mlp\.shared_experts\.(gate_proj|up_proj|down_proj)",
    "routed_experts": _LAYER + r"\.mlp\.experts\.(gate_up_proj|down_proj)",
}
"""Family name -> regex (``re.fullmatch``) over the base model's module or parameter names."""

PARAMETER_FAMILIES = frozenset({"routed_experts"})
"""Families of 3-D parameters (peft's ``target_parameters``), not ``nn.Linear`` modules."""

MERGEABLE_FAMILIES = tuple(f for f in FAMILIES if f not in PARAMETER_FAMILIES)
"""Families whose adapters ``merge_full_state`` folds into the base weights (it cannot yet
merge 3-D expert adapters); the learner syncs merged weights, so a recipe targets only these."""
