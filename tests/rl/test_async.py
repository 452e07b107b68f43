"""Asynchronous GRPO (``grpo.max_staleness``): the sampler runs ahead of the learner on a fixed
schedule (rl/async_sampler.py), every completion carries the weight version that sampled it,
and the decoupled correction sees the gap.

Through the trainer with the session's real engine and 2 FSDP2 ranks, with multi-turn
rollouts and dynamic sampling at once: batch ``t`` is sampled by version
``max(0, t - 1 - k)`` exactly, nothing is dropped or trained twice, the correction's weights
are 1 where the batch is the learner's own (step 1) and not once the learner has moved on,
and the engine ends with the final weights.
"""

import json

import pytest
import ray
import torch

from model import load_policy
from rl.batch import make_batch
from rl.grpo import Groups, drop_stale
from rl.trainer import train
from rollouts.types import Completion
from tests.parity import chat_prompts, engine_gap
from tests.test_e2e import tiny_recipe


def test_drop_stale_leaves_rows_older_than_the_bound_out_of_the_loss():
    versions = [3, 2, 1, 0]  # learner at version 3, bound 2: staleness 0, 1, 2, 3
    completions = [
        Completion(0, [5, 6], "", [-1.0, -1.0], "stop", weight_version=v) for v in versions
    ]
    groups = Groups([[1]] * 4, completions, [None] * 4, torch.zeros(4))
    batch = make_batch(groups.prompts, [c.token_ids for c in completions], 0)
    figures = drop_stale(groups, batch, learner_version=3, max_staleness=2)
    assert figures == {
        "weight_version_min": 0,
        "staleness_mean": 1.5,
        "staleness_max": 3,
        "stale_dropped": 1,
    }
    assert batch.loss_mask.sum(1).tolist() == [2, 2, 2, 0]


@pytest.mark.slow
@pytest.mark.e2e
def test_async_grpo_samples_ahead_on_schedule_with_tools_and_dynamic_sampling(
    rollouts, rollout_worker, tiny_policy_dir, tmp_path
):
    k, steps = 2, 5
    recipe = tiny_recipe(
        tiny_policy_dir,
        6,
        "sft.steps=0",
        f"grpo.steps={steps}",
        f"grpo.max_staleness={k}",
        "grpo.mismatch_correction=token",
        "grpo.dynamic_sampling=true",
        "grpo.max_refill_rounds=1",
        "tools.environment=tests.rollouts.envs:Echo",  # reward = tool calls: groups differ
        "tools.max_turns=3",
        "rewards.weights={environment: 1.0}",
        "rewards.accuracy=environment",
        "grpo.max_new_tokens=24",
        "checkpoint.every=0",
    )
    train(recipe, tmp_path, rollouts=rollouts)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo] == list(range(1, steps + 1))  # each step once
    for r in grpo:
        s = r["step"]
        version = max(0, s - 1 - k)
        assert r["weight_version_min"] == version, r  # every row of the batch: min == max
        assert r["staleness_mean"] == r["staleness_max"] == s - 1 - version
        assert r["stale_dropped"] == 0
        assert r["samples"] == 8 * 4  # the kept groups, topped up to prompts_per_step
        assert r["turns_mean"] > 1 and r["tool_calls_per_sample"] > 0
        assert r["idle_learner_s"] >= 0 and r["idle_rollout_s"] >= 0
    first, later = grpo[0], [r for r in grpo[1:] if r["rows_learned"]]
    assert first["rows_learned"] and later, "no learning signal to compare"
    # step 1 trains the engine's own weights: the correction is 1 and the logprobs agree
    assert first["logprob_diff_max"] < 1e-3 and abs(first["is_weight_max"] - 1) < 1e-3
    for r in later:  # the learner has moved on from the weights that sampled these
        if r["staleness_max"]:
            assert r["logprob_diff_mean"] > 1e-3, r

    # the engine holds the final weights (the last sync reached it)
    final, tok = load_policy(tmp_path / "checkpoints" / "grpo")
    prompts = chat_prompts(tok, ("3+4", "8-5"))
    out = ray.get(rollout_worker.generate.remote(prompts, n=4, max_tokens=16, seed=3))
    assert {c.weight_version for c in out} == {steps}
    diff = engine_gap(final, prompts, out)
    assert diff.mean() < 1e-4 and diff.max() < 1e-3, (diff.mean(), diff.max())


@pytest.mark.slow
@pytest.mark.e2e
def test_the_sampler_thread_at_staleness_0_is_the_synchronous_loop(
    rollouts, tiny_policy_dir, tmp_path
):
    """The asynchronous data path (thread, hand-over, versions, sync gating) with no lag
    trains on exactly what the synchronous loop trains on: the same rewards and losses."""
    from rl.setup import start_run
    from rl.trainer import load_data, run_grpo

    recipe = tiny_recipe(
        tiny_policy_dir,
        7,
        "sft.steps=0",
        "grpo.steps=3",
        "rewards.weights={math: 1.0, format: 0.5}",  # partial credit: groups with a signal
        "learner.world_size=1",  # the data path is the point, not the ranks: a faster start
    )
    logged = {}
    for threaded in (False, True):
        out = tmp_path / f"threaded-{threaded}"
        out.mkdir()
        data = load_data(recipe, out)
        run = start_run(recipe, out, data, rollouts)
        try:
            run_grpo(run, data["rl"], None, {"eval": {}}, threaded=threaded)
        finally:
            run.close()
        lines = (out / "metrics.jsonl").read_text().splitlines()
        logged[threaded] = [r for r in map(json.loads, lines) if r.get("stage") == "grpo"]
    sync, thread = logged[False], logged[True]
    assert [r["step"] for r in thread] == [1, 2, 3]
    assert any(r["rows_learned"] for r in sync), "no update to compare"
    for a, b in zip(sync, thread, strict=True):
        assert b["weight_version_min"] == a["step"] - 1 and b["staleness_max"] == 0
        assert a["reward_mean"] == b["reward_mean"] and a["samples"] == b["samples"]
        for key in ("loss", "grad_norm", "logprob_diff_mean"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
