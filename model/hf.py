"""Create, load and save policies in Hugging Face format (readable by transformers and vLLM)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from model.presets import preset_config
from model.tokenizer import build_char_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that fills padding positions of a batch: the tokenizer's pad token, else its
    end-of-sequence token (Llama-style tokenizers have no pad token), else 0. Padding is always
    masked out, so any valid id would do; one rule keeps every batch alike."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def new_policy(
    preset: str, alphabet: str, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A freshly initialised policy of ``preset`` with a character tokenizer over ``alphabet``."""
    tokenizer = build_char_tokenizer(alphabet)
    config = preset_config(
        preset,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer


def load_policy(
    path: str | Path, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load any local Hugging Face causal-LM folder (an r1kit checkpoint, Qwen2.5, Llama...)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def save_policy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path
) -> Path:
    """Save model and tokenizer so that both transformers and vLLM load the folder.

    For DeepSeek-V3 models, ``config.json`` additionally carries ``topk_method`` and
    ``scoring_func`` (vLLM needs them to load the router's ``e_score_correction_bias``).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if model.config.model_type in ("deepseek_v3", "deepseek_v2"):
        config_file = path / "config.json"
        config = json.loads(config_file.read_text())
        config.setdefault("topk_method", "noaux_tc")
        config.setdefault("scoring_func", "sigmoid")
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path
