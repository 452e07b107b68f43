"""Policy construction: presets, tokenizer, Hugging Face load/save, weight naming for vLLM.

No distributed code lives here; `rl/` shards the models it gets from this package.
"""

from model.hf import load_policy, new_policy, save_policy
from model.presets import PRESETS, preset_config
from model.tokenizer import build_char_tokenizer
from model.weights import to_vllm_weights

__all__ = [
    "PRESETS",
    "build_char_tokenizer",
    "load_policy",
    "new_policy",
    "preset_config",
    "save_policy",
    "to_vllm_weights",
]
