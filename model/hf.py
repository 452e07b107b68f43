"""Create, load and save policies in Hugging Face format (readable by transformers and vLLM)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from model.mtp import attach_mtp, has_mtp_support, load_mtp, mtp_layer
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


@contextlib.contextmanager
def _expect_mtp_keys(path: Path):
    """transformers reports a checkpoint's MTP tensors (``model.layers.{num_hidden_layers}.*``)
    as unexpected keys, its DeepSeek-V3 ignoring layer 61's only; ``load_mtp`` loads them
    right after, so they are expected here (for this folder's layer count only)."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3ForCausalLM

    config = json.loads((path / "config.json").read_text())
    saved = DeepseekV3ForCausalLM._keys_to_ignore_on_load_unexpected
    if config.get("model_type") == "deepseek_v3":
        n = int(config["num_hidden_layers"])
        DeepseekV3ForCausalLM._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{n}\."]
    try:
        yield
    finally:
        DeepseekV3ForCausalLM._keys_to_ignore_on_load_unexpected = saved


def new_policy(
    preset: str, alphabet: str, seed: int = 0, mtp: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A freshly initialised policy of ``preset`` with a character tokenizer over ``alphabet``;
    ``mtp``: with a multi-token-prediction module (DeepSeek-V3 presets, model/mtp.py)."""
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
    if mtp:
        attach_mtp(model)
    elif has_mtp_support(model):
        model.config.num_nextn_predict_layers = 0
    return model, tokenizer


def policy_from_config(config: PretrainedConfig, **kwargs) -> PreTrainedModel:
    """An empty policy of ``config`` (``from_config``), with the MTP module the config counts
    (``num_nextn_predict_layers``, which ``load_policy`` sets to what a checkpoint holds)."""
    model = AutoModelForCausalLM.from_config(config, **kwargs)
    if has_mtp_support(model) and getattr(config, "num_nextn_predict_layers", 0):
        attach_mtp(model, init_from_last=False)
    return model


def load_policy(
    path: str | Path, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load any local Hugging Face causal-LM folder (an r1kit checkpoint, Qwen2.5, Llama...),
    with the DeepSeek-V3 MTP module it holds (transformers drops it: model/mtp.py)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    with _expect_mtp_keys(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    load_mtp(model, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def save_policy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path
) -> Path:
    """Save model and tokenizer so that both transformers and vLLM load the folder.

    For DeepSeek-V3 models, ``config.json`` additionally carries ``topk_method`` and
    ``scoring_func`` (vLLM needs them to load the router's ``e_score_correction_bias``), and
    ``num_nextn_predict_layers`` is the number of MTP modules the folder really holds.
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
        config["num_nextn_predict_layers"] = 0 if mtp_layer(model) is None else 1
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path
