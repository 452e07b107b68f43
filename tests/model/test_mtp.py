"""DeepSeek-V3's MTP module (model/mtp.py): checkpoints in vLLM's layout with the true count of
MTP layers, and the module's forward inside the policy's: what it predicts, from what, and
where its gradient goes."""

import json

import pytest
import torch
from safetensors.torch import load_file

from model import load_policy, new_policy, save_policy
from model.mtp import MTPForward, attach_mtp, mtp_layer

ALPHABET = "0123456789+-= "


def mtp_policy(seed: int = 0):
    model, tok = new_policy("tiny-dsv3", ALPHABET, seed=seed, mtp=True)
    return model, tok


def saved_tensors(path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_checkpoint_holds_the_mtp_layer_as_vllm_names_it_and_loads_back(tmp_path):
    model, tok = mtp_policy()
    n = model.config.num_hidden_layers
    save_policy(model, tok, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["num_nextn_predict_layers"] == 1
    names = set(saved_tensors(tmp_path))
    mtp_names = {k for k in names if k.startswith(f"model.layers.{n}.")}
    # vLLM's DeepSeekMTP: the four MTP tensors plus a whole decoder block (MLA + MoE)
    for part in ("enorm", "hnorm", "eh_proj", "shared_head.norm", "input_layernorm"):
        assert f"model.layers.{n}.{part}.weight" in mtp_names
    assert any(".self_attn.kv_a_proj_with_mqa." in k for k in mtp_names)
    assert any(".mlp.gate.e_score_correction_bias" in k for k in mtp_names)
    assert not any(k.startswith(f"model.layers.{n + 1}.") for k in names)

    loaded, _ = load_policy(tmp_path)
    assert loaded.config.num_nextn_predict_layers == 1
    assert mtp_layer(loaded) is not None
    original, back = model.state_dict(), loaded.state_dict()
    assert set(original) == set(back)
    for name, tensor in original.items():
        assert torch.equal(tensor, back[name]), name


def test_a_checkpoint_without_the_module_says_zero_even_where_transformers_claims_one(tmp_path):
    model, tok = new_policy("tiny-dsv3", ALPHABET)
    assert mtp_layer(model) is None
    save_policy(model, tok, tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["num_nextn_predict_layers"] == 0
    # a folder saved before (transformers' config default) claims 1 and holds nothing
    config["num_nextn_predict_layers"] = 1
    (tmp_path / "plain" / "config.json").write_text(json.dumps(config))
    loaded, _ = load_policy(tmp_path / "plain")
    assert mtp_layer(loaded) is None and loaded.config.num_nextn_predict_layers == 0


def test_only_deepseek_v3_policies_take_an_mtp_module():
    model, _ = new_policy("tiny-qwen2", ALPHABET)
    with pytest.raises(ValueError, match="needs a DeepSeek-V3 policy; this one is 'qwen2'"):
        attach_mtp(model)
    with pytest.raises(ValueError, match="has no MTP module"):
        MTPForward(model, torch.ones(1, 3))
    with pytest.raises(ValueError, match="already has an MTP module"):
        attach_mtp(mtp_policy()[0])


def draft_logprobs(model, ids, mask, **kw) -> MTPForward:
    with MTPForward(model, mask, **kw) as mtp:
        model(input_ids=ids)
    return mtp


def test_slot_j_predicts_token_j_plus_2_from_tokens_up_to_j_plus_1():
    model, _ = mtp_policy()
    model.eval()
    ids = torch.tensor([[1, 4, 12, 13, 14, 15, 16, 17, 2]])
    mask = torch.zeros(1, ids.shape[1] - 1)
    mask[:, 3:] = 1  # targets from token 4 on: the completion
    mtp = draft_logprobs(model, ids, mask)
    # slot j counts where tokens j+1 and j+2 are both targets: j = 3..6 predict tokens 5..8
    assert mtp.count == 4 and mtp.logprobs.shape == (4,)
    assert (mtp.logprobs < 0).all() and 0.0 <= mtp.accuracy <= 1.0
    # the last target, token 8, is predicted by slot 6 only from tokens <= 7: changing it
    # moves that logprob and none of the others; changing token 7 moves slots 5 and 6
    last = ids.clone()
    last[0, 8] = 3
    moved = draft_logprobs(model, last, mask).logprobs
    torch.testing.assert_close(moved[:3], mtp.logprobs[:3], atol=1e-6, rtol=0)
    assert abs(moved[3] - mtp.logprobs[3]) > 1e-3
    seventh = ids.clone()
    seventh[0, 7] = 3
    moved = draft_logprobs(model, seventh, mask).logprobs
    torch.testing.assert_close(moved[:2], mtp.logprobs[:2], atol=1e-6, rtol=0)
    assert ((moved[2:] - mtp.logprobs[2:]).abs() > 1e-3).all()


def test_padding_and_batching_leave_each_rows_draft_unchanged():
    model, _ = mtp_policy()
    model.eval()
    rows = [[1, 4, 12, 13, 14, 2], [1, 4, 15, 2]]
    alone = []
    for row in rows:
        ids = torch.tensor([row])
        alone.append(draft_logprobs(model, ids, torch.ones(1, len(row) - 1)).logprobs)
    width = max(map(len, rows))
    ids = torch.tensor([row + [0] * (width - len(row)) for row in rows])
    attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    mask = attention[:, 1:].clone()
    with MTPForward(model, mask) as mtp:
        model(input_ids=ids, attention_mask=attention)
    torch.testing.assert_close(mtp.logprobs, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_detached_the_mtp_loss_trains_the_module_only_else_the_trunk_too():
    ids = torch.tensor([[1, 4, 12, 13, 14, 15, 16, 2]])
    mask = torch.ones(1, ids.shape[1] - 1)
    for detach in (True, False):
        model, _ = mtp_policy()
        layer = mtp_layer(model)
        own = {id(p) for p in layer.parameters()}
        with MTPForward(model, mask, detach=detach, temperature=0.7) as mtp:
            model(input_ids=ids)
        mtp.nll(float(mask.sum())).backward()
        assert 0.0 < mtp.acceptance < 1.0
        assert layer.eh_proj.weight.grad.abs().sum() > 0
        trunk = [
            (name, p)
            for name, p in model.named_parameters()
            if id(p) not in own and p.grad is not None and p.grad.abs().sum() > 0
        ]
        if detach:
            assert trunk == []
        else:
            names = {name for name, _ in trunk}
            assert "model.embed_tokens.weight" in names and "lm_head.weight" in names
            assert any(name.startswith("model.layers.0.") for name in names)


def test_one_forward_per_context():
    model, _ = mtp_policy()
    ids = torch.tensor([[1, 4, 12, 2]])
    with pytest.raises(RuntimeError, match="second forward"), MTPForward(model, torch.ones(1, 3)):
        model(input_ids=ids)
        model(input_ids=ids)
    mismatch = r"mask \(1, 2\) does not match ids \(1, 4\)"
    with pytest.raises(ValueError, match=mismatch), MTPForward(model, torch.ones(1, 2)):
        model(input_ids=ids)
