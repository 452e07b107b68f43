"""The learner with a DeepSeek-V3 MTP module (model/mtp.py): in GRPO the module learns to follow
the policy's own samples and changes nothing of the policy's update; in SFT its loss trains the
trunk too; it is saved with the policy. One rank in-process (FSDP2, gloo, fp32)."""

from dataclasses import replace

import pytest
import torch

from model import load_policy
from model.mtp import mtp_layer
from tests.rl.rank_helpers import DEVICE_SETUP, LOSS, full_params, grpo, grpo_batch, open_rank

pytestmark = pytest.mark.slow


def mtp_names(params: dict[str, torch.Tensor], n_layers: int) -> set[str]:
    return {name for name in params if name.startswith(f"model.layers.{n_layers}.")}


def grpo_update(model_dir, batch, weight: float) -> tuple[dict, dict, dict]:
    """(weights before, weights after, step output) of one GRPO step at ``weight``."""
    with open_rank(model_dir, **DEVICE_SETUP["cpu"]) as rank:
        before = full_params(rank.model)
        out = grpo(rank, batch, loss=replace(LOSS, mtp_loss_weight=weight))
        return before, full_params(rank.model), out


def test_grpo_trains_the_mtp_module_and_leaves_the_policy_update_as_it_was(tmp_path):
    batch = grpo_batch("tiny-dsv3", tmp_path, mtp=True)
    n = load_policy(tmp_path)[0].config.num_hidden_layers
    before, frozen, out_frozen = grpo_update(tmp_path, batch, 0.0)
    _, trained, out_trained = grpo_update(tmp_path, batch, 0.3)
    names = mtp_names(before, n)
    assert names and "mtp" not in out_frozen
    # the policy moved, and bit for bit as it does without the MTP loss (its gradient is
    # detached from the policy, its gradient norm clipped apart from the policy's)
    policy = [name for name in before if name not in names]
    assert any(not torch.equal(before[k], frozen[k]) for k in policy)
    assert out_trained["grad_norm"] == out_frozen["grad_norm"]
    for name in policy:
        assert torch.equal(trained[name], frozen[name]), name
    assert out_trained["stats"] == out_frozen["stats"]
    # the MTP module: frozen at weight 0, moved at 0.3 (its block and its projection)
    assert all(torch.equal(before[k], frozen[k]) for k in names)
    eh = f"model.layers.{n}.eh_proj.weight"
    assert not torch.equal(before[eh], trained[eh])
    mtp = out_trained["mtp"]
    assert mtp.tokens == int((batch.loss_mask[:, :-1] * batch.loss_mask[:, 1:]).sum())
    report = mtp.report()
    assert report["mtp_loss"] > 0 and 0 <= report["mtp_accuracy"] <= 1
    assert 0 < report["mtp_acceptance"] < 1
    # the MTP layer's routing is counted as its own layer's load, beside the policy's
    assert n in out_trained["expert_load"] and n not in out_frozen["expert_load"]


def test_sft_trains_module_and_trunk_with_the_mtp_loss_and_saves_them(tmp_path):
    batch = grpo_batch("tiny-dsv3", tmp_path / "start", mtp=True)
    tokens = float(batch.loss_mask.sum())
    after = {}
    for weight in (0.0, 0.3):
        with open_rank(tmp_path / "start", **DEVICE_SETUP["cpu"]) as rank:
            out = rank.sft_step(batch, tokens, lr=1e-3, micro_batch_size=4, mtp_loss_weight=weight)
            after[weight] = full_params(rank.model)
            if weight:
                rank.save(str(tmp_path / "saved"))
        if weight:
            report = out["mtp"].report(acceptance=False)
            assert out["mtp"].tokens > 0 and report["mtp_loss"] > 0
            assert 0 <= report["mtp_accuracy"] <= 1
        else:
            assert "mtp" not in out
    n = load_policy(tmp_path / "start")[0].config.num_hidden_layers
    names = mtp_names(after[0.3], n)
    # the MTP loss's gradient reaches the shared embedding and the main layers
    trunk = [k for k in after[0.3] if k not in names]
    moved = [k for k in trunk if not torch.allclose(after[0.0][k], after[0.3][k], atol=1e-7)]
    assert "model.embed_tokens.weight" in moved and any(".layers.0." in k for k in moved)
    saved, _ = load_policy(tmp_path / "saved")
    assert mtp_layer(saved) is not None
    state = saved.state_dict()
    for name in names:
        torch.testing.assert_close(state[name], after[0.3][name], atol=0, rtol=0)
