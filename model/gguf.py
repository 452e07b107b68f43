"""GGUF files (llama.cpp's format, often quantized) as Hugging Face folders that transformers
and vLLM load.

transformers reads a GGUF model with ``from_pretrained(folder, gguf_file=NAME)`` (the
``gguf`` package parses it; quantized tensors are dequantized) but refuses to
``save_pretrained`` the result ("quantized with GGUF ... not serializable"): the quantization
config is dropped and the weights are moved into a plain model of the same config first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from model.hf import DTYPES, save_policy


def convert_gguf(gguf: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write ``gguf`` (a model file: weights, tokenizer, chat template) to ``out`` as an HF
    folder in ``dtype``; written under a temporary name and renamed, so ``out`` is complete or
    absent. Returns ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf.stem
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    state = {k: v.to(DTYPES[dtype]) for k, v in loaded.state_dict().items()}
    plain.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        plain.tie_weights()
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_policy(plain, tokenizer, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def converted(gguf: str | Path, dtype: str = "float32") -> Path:
    """``gguf`` as an HF folder, converted once into the asset cache (keyed by the file's
    path, size and modification time) and reused after."""
    import hashlib

    from model.assets import cache_dir

    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF file")
    stat = gguf.stat()
    digest = hashlib.sha1(f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{gguf.stem}-{dtype}-{digest}"
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(gguf, out, dtype=dtype)
    return out
