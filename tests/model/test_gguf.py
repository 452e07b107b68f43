"""A real GGUF model (SmolLM2-135M-Instruct, Q4_1) to an HF folder: `r1kit convert` and
``model.path: FILE.gguf``."""

import os
import subprocess
import sys

import pytest
import torch

from model import assets, load_policy
from model.chat import ChatFormat

pytestmark = pytest.mark.slow


def test_convert_writes_a_folder_transformers_loads_with_the_ggufs_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    gguf = assets.smollm2_gguf()
    out = tmp_path / "smollm2"
    result = subprocess.run(
        [sys.executable, "-m", "rl.cli", "convert", "--gguf", str(gguf), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "quantization_config" not in (out / "config.json").read_text()
    model, tok = load_policy(out)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied: counted once
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # ChatML; pad == eos == <|im_end|> (id 2) and bos <|im_start|>
    chat = ChatFormat(tok)
    assert tok.convert_ids_to_tokens([chat.end_of_turn_id]) == ["<|im_end|>"]
    assert tok.decode(chat.prompt_ids({"prompt": "2+2?"})).endswith(
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    ids = torch.tensor([chat.prompt_ids({"prompt": "What is 7 times 6?"})])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits, rtol=0, atol=0)


def test_bad_gguf_paths_are_one_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rl.cli", "convert", "--gguf", str(tmp_path / "x.gguf"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "x.gguf: no such GGUF file" in result.stderr
    from rl.config import load_recipe
    from rl.errors import ConfigError
    from rl.setup import initial_policy

    recipe = load_recipe("recipes/demo.yaml", [f"model.path={tmp_path / 'missing.gguf'}"])
    with pytest.raises(ConfigError, match="model.path': GGUF file not found"):
        initial_policy(recipe, tmp_path, {})


def test_a_hub_model_name_offline_is_one_clear_error(tmp_path):
    code = (
        "from pathlib import Path\n"
        "from rl.config import load_recipe\n"
        "from rl.setup import initial_policy\n"
        "r = load_recipe('recipes/gsm8k_qwen2.5_0.5b.yaml')\n"
        f"initial_policy(r, Path({str(tmp_path)!r}), {{}})\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert (
        "'Qwen/Qwen2.5-0.5B-Instruct' is no local folder and could not be fetched" in result.stderr
    )
