"""Policy construction: tokenizer, preset, HF save/load, vLLM weight naming."""

import json

import pytest
import torch
from safetensors.torch import load_file

from model import build_char_tokenizer, load_policy, new_policy, save_policy, to_vllm_weights
from model.presets import preset_config


def test_char_tokenizer_round_trips_and_keeps_think_tags_on_decode():
    tok = build_char_tokenizer("0123456789+-= ")
    text = "<think>12+30=42</think>42"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len("12+30=42") + len("42") + 2  # one token per char, one per tag
    # vLLM decodes with skip_special_tokens=True: the think tags must survive it
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok.encode("7x", add_special_tokens=False)) == "7<unk>"


def test_chat_template_renders_the_generation_prompt():
    tok = build_char_tokenizer("0123456789+")
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "1+2"}], add_generation_prompt=True, return_dict=False
    )
    assert tok.decode(ids) == "<bos><|user|>1+2<|assistant|>"


def test_tiny_preset_is_mla_and_moe_as_vllm_cpu_needs():
    cfg = preset_config("tiny-dsv3", vocab_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    assert cfg.kv_lora_rank + cfg.qk_rope_head_dim == 512 + 64  # the CPU MLA kernel's only size
    assert cfg.q_lora_rank and cfg.n_routed_experts >= 8 and cfg.num_experts_per_tok == 2
    assert cfg.n_shared_experts == 1 and cfg.first_k_dense_replace == 1
    assert (cfg.topk_method, cfg.scoring_func) == ("noaux_tc", "sigmoid")
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        preset_config("nope", vocab_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def test_save_writes_vllm_keys_and_loads_back_identically(tmp_path):
    model, tok = new_policy("tiny-dsv3", "0123456789+-", seed=3)
    n = sum(p.numel() for p in model.parameters())
    assert 2e6 <= n <= 10e6
    save_policy(model, tok, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["topk_method"], config["scoring_func"]) == ("noaux_tc", "sigmoid")
    again, _ = load_policy(tmp_path)
    x = torch.tensor([[1, 4, 9, 10, 11, 5]])
    torch.testing.assert_close(again(x).logits, model(x).logits, rtol=0, atol=0)


def test_vllm_naming_splits_fused_experts_exactly_as_save_pretrained(tmp_path):
    model, tok = new_policy("tiny-dsv3", "0123456789", seed=1)
    save_policy(model, tok, tmp_path)
    on_disk = load_file(tmp_path / "model.safetensors")
    ours = dict(to_vllm_weights(model.state_dict().items()))
    assert set(ours) == set(on_disk)
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in ours
    for name, tensor in on_disk.items():
        assert torch.equal(ours[name], tensor), name


def test_any_local_hf_causal_lm_loads_through_the_same_function(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_char_tokenizer("abc")
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    save_policy(Qwen2ForCausalLM(cfg), tok, tmp_path)
    model, loaded_tok = load_policy(tmp_path)
    assert model.config.model_type == "qwen2" and len(loaded_tok) == len(tok)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_policy(tmp_path / "missing")
