"""Rollout engines colocated with learner ranks (``rollout.colocate``, rl/colocated.py): each
engine runs in its rank's process and gets the weights from the rank's memory.

Real Ray actors, 2 FSDP2 ranks on gloo, real vLLM engines (CPU) inside them. On CPU vLLM's sleep
mode does nothing, so the GPU test (marked) is the one that sees an engine free its memory.
"""

import os

import pytest
import ray
import torch

from rl.batch import make_batch
from rl.colocated import ColocatedRank
from rl.config import load_recipe
from rl.errors import ConfigError
from rl.learner_group import LearnerGroup
from rl.trainer import train
from rollouts import RolloutGroup
from rollouts.worker import ENGINE_ENV
from tests.rl.test_resume import (
    GRPO_KILL,
    _assert_repeats,
    _rows,
    _uninterrupted,
    killing_a_rank,
)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["rollout.workers=3", "learner.world_size=2"], "rollout.workers"),
        (["grpo.max_staleness=1", "grpo.mismatch_correction=token"], "grpo.max_staleness"),
        (["rollout.tensor_parallel_size=2"], "rollout.tensor_parallel_size"),
        (["rollout.sync_transport=collective"], "rollout.sync_transport"),
    ],
)
def test_what_colocated_engines_cannot_do_is_one_clear_error(overrides, key):
    with pytest.raises(ConfigError, match=rf"key '{key}' must be .*with rollout.colocate"):
        load_recipe("recipes/demo.yaml", ["rollout.colocate=true", *overrides])


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))


@pytest.mark.slow
def test_each_engine_lives_in_its_rank_and_takes_the_weights_from_memory(
    ray_cluster, tiny_policy_dir
):
    env = dict(ENGINE_ENV, OMP_NUM_THREADS="1")
    learner = LearnerGroup(tiny_policy_dir, 2, threads=1, rank_cls=ColocatedRank, env=env)
    try:
        actors = learner.start_engines(tiny_policy_dir, 2, dtype="float32", max_model_len=128)
        group = RolloutGroup(tiny_policy_dir, 2, actors=actors)
        assert [_pid(w) for w in group.workers] == [_pid(r) for r in learner.ranks]
        before = group.fingerprints()
        # move the learner's weights: an SFT step at a large learning rate
        prompts = [[1, 2, 3, 4]] * 4
        batch = make_batch(prompts, [[5, 6, 7, 8, 9]] * 4, 0)
        learner.configure_optimizer(lr=1e-2)
        learner.sft_step(batch, lr=1e-2, micro_batch_size=4)
        figures = learner.sync_colocated(version=7, engines=2)
        after = group.fingerprints()
        assert after[0] == after[1] and after[0] != before[0]  # both engines, the new weights
        assert figures["sync_bytes"] > 0 and figures["sync_tensors"] > 0
        # the engines now compute the learner's policy
        outs = group.generate(prompts, n=2, max_tokens=8, seed=3, temperature=1.0)
        assert {c.weight_version for c in outs} == {7}
        rows = make_batch(
            [prompts[c.prompt_index] for c in outs],
            [c.token_ids for c in outs],
            0,
            rollout_logprobs=[c.logprobs for c in outs],
        )
        learner_lp = learner.logprobs(rows, micro_batch_size=8, temperature=1.0)
        mask = rows.loss_mask.bool()
        gap = (learner_lp[mask] - rows.rollout_logprobs[mask]).abs()
        assert float(gap.max()) < 1e-3, float(gap.max())
        assert not any(ray.get([r.engine_asleep.remote() for r in learner.ranks]))  # CPU
        group.shutdown()  # the learner's actors: still alive
        assert len(learner.dead_ranks()) == 0
    finally:
        learner.shutdown()


def _colocated_pids() -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::ColocatedRank")
    ]


@pytest.mark.slow
@pytest.mark.e2e
def test_colocated_grpo_syncs_in_memory_and_survives_a_rank_killed_mid_run(
    rollouts, tiny_policy_dir, tmp_path, tmp_path_factory
):
    """Two ranks, each hosting an engine, one rank SIGKILLed after GRPO step 3 (its engine
    dies with it): the learner and its engines start again from the latest checkpoint. Every
    step samples the weights the learner holds (the in-memory sync works), and the run ends
    bit for bit as test_resume's uninterrupted run of the same recipe with one separate
    engine (prompt i is seeded alike however the engines split a batch)."""
    import time

    separate = [f"model.path={tiny_policy_dir}", *GRPO_KILL["overrides"]]
    whole = _uninterrupted(
        "grpo-kl-dynamic", load_recipe("recipes/demo.yaml", separate), rollouts, tmp_path_factory
    )
    recipe = load_recipe(
        "recipes/demo.yaml", [*separate, "rollout.colocate=true", "rollout.workers=2"]
    )
    out = tmp_path / "killed"
    with killing_a_rank(out, "grpo", 3, _colocated_pids) as victims:
        summary = train(recipe, out)
    assert len(victims) == 1 and summary["learner_restarts"] == 1
    assert summary["placement"]["rollout"] == summary["placement"]["learner"]
    resumed = _rows(out, "grpo")
    assert any(r["rows_learned"] for r in resumed.values()), "no update to sync"
    for r in resumed.values():  # before the kill and after the restart
        assert r["logprob_diff_max"] < 1e-3, r
        assert r["sync_bytes"] > 0 or not r["rows_learned"]
    restarted_at = min(s for s, r in resumed.items() if r["learner_restarts"] == 1)
    assert restarted_at in (3, 5), resumed  # the step after a checkpoint
    _assert_repeats(whole, out, summary, "grpo", restarted_at - 1)
    deadline = time.time() + 30
    while _colocated_pids() and time.time() < deadline:
        time.sleep(0.2)
    assert _colocated_pids() == []  # the dead rank's peer and the new ranks are gone


@pytest.mark.gpu
def test_on_a_gpu_a_colocated_engine_sleeps_while_its_rank_trains(ray_cluster, tiny_policy_dir):
    learner = LearnerGroup(
        tiny_policy_dir, 1, rank_cls=ColocatedRank, env=dict(ENGINE_ENV), num_gpus_per_rank=1
    )
    try:
        (actor,) = learner.start_engines(
            tiny_policy_dir, 1, dtype="float32", max_model_len=128, gpu_memory_utilization=0.3
        )
        free = actor.__ray_call__.remote(lambda _: torch.cuda.mem_get_info()[0])
        awake = ray.get(free)
        ray.get(actor._learner_turn.remote())
        assert ray.get(actor.engine_asleep.remote())
        asleep = ray.get(actor.__ray_call__.remote(lambda _: torch.cuda.mem_get_info()[0]))
        assert asleep - awake > 0.2 * torch.cuda.get_device_properties(0).total_memory
        group = RolloutGroup(tiny_policy_dir, 1, actors=[actor])
        assert group.generate([[1, 2, 3]], max_tokens=4, seed=0)  # woken for the call
        assert not ray.get(actor.engine_asleep.remote())
    finally:
        learner.shutdown()
