"""``r1kit check``: parity of learner and rollout engine, and a sync that must add no error.

A sync that skips a tensor family leaves the engine computing with stale weights for it: the
check must fail. Thresholds and the figures behind them are in rl/check.py.
"""

import json

import pytest

from rl.check import THRESHOLDS, check
from rl.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_tiny_preset_passes_through_the_cli(ray_cluster, tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["check", "--model", "tiny-dsv3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["passed"] and report["failures"] == []
    assert report["thresholds"] == THRESHOLDS["float32"]
    assert report["logprob_abs_diff"]["max"] < 1e-3 and report["tokens"] > 100
    assert report["sync_added_error"] < 1e-5
    assert report["routing_agreement"] >= 0.99  # MoE: top-k sets across batch cuts
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["kv_b_proj", "mlp.experts.", "q_b_proj"])
def test_a_sync_that_skips_a_tensor_family_fails(rollout_worker, tiny_policy_dir, tmp_path, family):
    report = check(
        tiny_policy_dir, tmp_path / "check.json", rollout=rollout_worker, break_sync=(family,)
    )
    assert not report["passed"]
    assert report["sync_added_error"] > 10 * report["thresholds"]["sync_added_error"], report
    assert any("did not reach the engine" in f for f in report["failures"])
    # the sampled-token parity before the sync was fine: only the sync broke
    assert report["logprob_abs_diff"]["max"] < 1e-3


@pytest.mark.parametrize("transport", ["collective", "object_store"])
def test_a_sync_over_each_transport_adds_no_error(
    rollout_worker, tiny_policy_dir, tmp_path, transport
):
    report = check(
        tiny_policy_dir, tmp_path / "check.json", rollout=rollout_worker, transport=transport
    )
    assert report["passed"], report["failures"]
    assert report["transport"] == transport
    assert report["sync_added_error"] < 1e-5


def test_a_broken_collective_sync_fails(rollout_worker, tiny_policy_dir, tmp_path):
    report = check(
        tiny_policy_dir,
        tmp_path / "check.json",
        rollout=rollout_worker,
        break_sync=("mlp.experts.",),
        transport="collective",
    )
    assert not report["passed"] and report["transport"] == "collective"
    assert any("did not reach the engine" in f for f in report["failures"])


def test_unknown_model_is_one_clear_error(capsys):
    assert main(["check", "--model", "no-such-preset", "--out", "/tmp/x.json"]) == 2
    assert "not a Hugging Face model folder, a .gguf file nor a preset" in capsys.readouterr().err
