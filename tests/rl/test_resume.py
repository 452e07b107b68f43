"""Exact resume: a run killed with SIGKILL mid-GRPO and resumed takes the same steps as an
uninterrupted run.

The killed run is a real ``r1kit train`` process joined to the session's Ray cluster (so its
learner ranks and vLLM engine are reaped by Ray when it dies), killed once it has logged a
GRPO step past a checkpoint. ``--resume`` then restores the sharded model and optimizer,
the data position and the evaluations done, and repeats the steps after the checkpoint.
Rewards and losses of those steps must equal the uninterrupted run's (<= 1e-5).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray

from rl.checkpoint import list_checkpoints
from rl.config import load_recipe
from rl.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

OVERRIDES = [
    "data.generator_args={n_sft: 256, n_rl: 128, n_eval: 16, seed: 5, max_terms: 2, max_digits: 1}",
    "sft.steps=4",
    "sft.batch_size=32",
    "sft.lr=3e-3",
    "grpo.steps=6",
    "grpo.prompts_per_step=8",
    "grpo.group_size=4",
    "grpo.lr=2e-3",
    "grpo.max_new_tokens=16",
    "grpo.temperature=1.0",
    "grpo.mini_batches=2",
    "eval.max_new_tokens=16",
    "rewards.weights={math: 1.0, format: 0.5}",  # partial credit: groups with a signal
    "checkpoint.every=2",
    "learner.world_size=2",
]


def _rows(out, stage):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["stage"] == stage}


def _kill_after_grpo_step(cmd, out, step, timeout_s=300):
    """Run ``cmd`` in its own process group; SIGKILL the group once GRPO ``step`` is logged."""
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            if (out / "metrics.jsonl").is_file() and step in _rows(out, "grpo"):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return
            if proc.poll() is not None:
                raise AssertionError(f"run ended before the kill: {proc.stderr.read()[-2000:]}")
            time.sleep(0.2)
        raise AssertionError("GRPO step never logged")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_sigkill_then_resume_repeats_the_uninterrupted_run(rollouts, tiny_policy_dir, tmp_path):
    overrides = [f"model.path={tiny_policy_dir}", *OVERRIDES]
    whole = tmp_path / "whole"
    train(load_recipe("recipes/demo.yaml", overrides), whole, rollouts=rollouts)

    killed = tmp_path / "killed"
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "rl.cli", "train", "recipes/demo.yaml", "--out", str(killed)]
    _kill_after_grpo_step([*cmd, *overrides, f"ray.address={address}"], killed, step=3)
    latest = list_checkpoints(killed)[-1].name
    assert latest in ("grpo-000002", "grpo-000004"), latest
    assert not (killed / "summary.json").exists()

    summary = train(
        load_recipe("recipes/demo.yaml", overrides), killed, rollouts=rollouts, resume=True
    )
    assert summary["eval"]["sft"] == json.loads((whole / "summary.json").read_text())["eval"]["sft"]
    expected, resumed = _rows(whole, "grpo"), _rows(killed, "grpo")
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # rows after the checkpoint written once
    first = int(latest.split("-")[1]) + 1
    for step in range(first, 7):
        for key in ("reward_mean", "loss", "grad_norm"):
            assert resumed[step][key] == pytest.approx(expected[step][key], abs=1e-5), (step, key)
    assert any(expected[s]["rows_learned"] for s in range(first, 7)), "no update to compare"
    assert (
        summary["eval"]["grpo"] == json.loads((whole / "summary.json").read_text())["eval"]["grpo"]
    )


def test_resume_needs_a_checkpoint_and_the_same_recipe(tmp_path):
    from dataclasses import asdict

    from rl.errors import ConfigError

    recipe = load_recipe("recipes/demo.yaml")
    with pytest.raises(ConfigError, match="holds no run"):
        train(recipe, tmp_path / "nothing", resume=True)
    out = tmp_path / "run"
    out.mkdir()
    saved = asdict(recipe)
    saved["grpo"]["lr"] = 1.0
    saved["ray"]["address"] = "elsewhere:6379"  # where the cluster is may change
    (out / "recipe.resolved.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="no resumable checkpoint"):
        train(recipe, out, resume=True)
    (out / "checkpoints" / "state" / "grpo-000002").mkdir(parents=True)
    (out / "checkpoints" / "state" / "grpo-000002" / "driver.json").write_text("{}")
    with pytest.raises(
        ConfigError, match=r"differs from the run's at grpo.lr \(run: 1.0, now: 0.0001\)$"
    ):
        train(recipe, out, resume=True)
