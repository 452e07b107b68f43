"""Exact resume: a run killed with SIGKILL and resumed takes the same steps as an
uninterrupted run, and ends with the same weights.

The killed run is a real ``r1kit train`` process joined to the session's Ray cluster (so its
learner ranks and vLLM engine are reaped by Ray when it dies), killed once it has logged a
step past a checkpoint. ``--resume`` then restores the sharded model and optimizer (and the
KL reference policy), the data position and the evaluations done, and repeats the steps after
the checkpoint. Two cases: full fine-tuning killed mid-GRPO, with a KL reference and dynamic
sampling (whose refills move the data position by a varying amount); LoRA killed mid-SFT.

Tolerances: the resumed steps are the uninterrupted run's ops on the same inputs (the state
comes back bit for bit: DCP round-trips exactly; same ranks, threads and sampling seeds), so
logged figures agree to float32 printing noise (<= 1e-5) and the final weights exactly. A
tolerance would not buy robustness here: Adam divides by sqrt(v), so float noise in a
near-zero gradient entry can move that weight by up to 2 x lr (4e-3 at lr 2e-3), as much as
any real error; a lost optimizer state, a repeated or skipped step, or another batch moves
many weights by ~lr.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import ray
from safetensors.torch import load_file

from rl.checkpoint import list_checkpoints
from rl.config import load_recipe
from rl.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

COMMON = [
    "data.generator_args={n_sft: 256, n_rl: 128, n_eval: 16, seed: 5, max_terms: 2, max_digits: 1}",
    "sft.batch_size=32",
    "sft.lr=3e-3",
    "grpo.prompts_per_step=8",
    "grpo.group_size=4",
    "grpo.lr=2e-3",
    "grpo.max_new_tokens=16",
    "grpo.temperature=1.0",
    "grpo.mini_batches=2",
    "grpo.kl_coef=0.05",  # full weights: a frozen copy, saved in the checkpoint
    "eval.max_new_tokens=16",
    "rewards.weights={math: 1.0, format: 0.5}",  # partial credit: groups with a signal
    "learner.world_size=2",
]
GRPO_KILL = {  # killed after GRPO step 3 (checkpoints at 2, 4, 6)
    "overrides": [
        *COMMON,
        "sft.steps=4",
        "grpo.steps=6",
        "grpo.dynamic_sampling=true",
        "grpo.max_refill_rounds=1",
        "checkpoint.every=2",
    ],
    "kill_after": ("grpo", 3),
}
LORA_SFT_KILL = {  # killed after SFT step 4 (checkpoints at 3, 6, 9, 10), then SFT 5.. and GRPO
    "overrides": [
        *COMMON,
        "lora.r=8",
        "sft.steps=10",
        "sft.lr=1e-2",
        "grpo.lr=1e-2",
        "grpo.steps=2",
        "checkpoint.every=3",
        "log_every=1",
    ],
    "kill_after": ("sft", 4),
}
COMPARED = {"sft": ("loss", "grad_norm"), "grpo": ("reward_mean", "loss", "grad_norm", "kl")}


def _rows(out, stage):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["stage"] == stage}


def _kill_after(cmd, out, stage, step, timeout_s=300):
    """Run ``cmd`` in its own process group; SIGKILL the group once ``stage`` logs ``step``."""
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            if (out / "metrics.jsonl").is_file() and step in _rows(out, stage):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return
            if proc.poll() is not None:
                raise AssertionError(f"run ended before the kill: {proc.stderr.read()[-2000:]}")
            time.sleep(0.2)
        raise AssertionError(f"{stage} step {step} never logged")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


_WHOLE: dict[str, object] = {}  # case id -> the uninterrupted run's folder (one per session)


def _uninterrupted(case_id, recipe, rollouts, tmp_path_factory):
    if case_id not in _WHOLE:
        out = tmp_path_factory.mktemp(f"whole-{case_id}")
        train(recipe, out, rollouts=rollouts)
        _WHOLE[case_id] = out
    return _WHOLE[case_id]


def _assert_repeats(whole, killed, summary, kill_stage, at):
    """``killed`` (interrupted after checkpoint ``kill_stage`` step ``at``, then continued)
    ended as ``whole``: the same final weights bit for bit, evaluations and logged steps."""
    expected = load_file(whole / "checkpoints" / "grpo" / "model.safetensors")
    final = load_file(killed / "checkpoints" / "grpo" / "model.safetensors")
    assert sorted(final) == sorted(expected)
    differ = {k: float((final[k] - expected[k]).abs().max()) for k in expected}
    assert not {k: d for k, d in differ.items() if d}, differ  # bit for bit (module docstring)
    assert summary["eval"] == json.loads((whole / "summary.json").read_text())["eval"]

    # the steps after the checkpoint (and all of GRPO after an SFT kill), as in the whole run
    for name in ("sft", "grpo")[("sft", "grpo").index(kill_stage) :]:
        expected, resumed = _rows(whole, name), _rows(killed, name)
        assert sorted(resumed) == sorted(expected)  # rows after the checkpoint written once
        repeated = [s for s in sorted(expected) if name != kill_stage or s > at]
        assert repeated, name
        for s in repeated:
            for key in COMPARED[name]:
                assert resumed[s][key] == pytest.approx(expected[s][key], abs=1e-5), (name, s, key)
        if name == "grpo":  # the data position after refills came back with the checkpoint
            for s in repeated:
                for key in ("prompts_sampled", "groups_kept", "samples"):
                    assert resumed[s].get(key) == expected[s].get(key), (s, key)
            assert any(expected[s]["rows_learned"] for s in repeated), "no update to compare"


@pytest.mark.parametrize("case", [GRPO_KILL, LORA_SFT_KILL], ids=["grpo-kl-dynamic", "lora-sft"])
def test_sigkill_then_resume_repeats_the_uninterrupted_run(
    case, rollouts, tiny_policy_dir, tmp_path, tmp_path_factory, request
):
    overrides = [f"model.path={tiny_policy_dir}", *case["overrides"]]
    recipe = load_recipe("recipes/demo.yaml", overrides)
    whole = _uninterrupted(request.node.callspec.id, recipe, rollouts, tmp_path_factory)

    killed = tmp_path / "killed"
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "rl.cli", "train", "recipes/demo.yaml", "--out", str(killed)]
    stage, step = case["kill_after"]
    _kill_after([*cmd, *overrides, f"ray.address={address}"], killed, stage, step)
    assert not (killed / "summary.json").exists()
    # the latest checkpoint is in the stage that was killed, at or after the kill, before its end
    latest = list_checkpoints(killed)[-1].name
    kill_stage, at = latest.split("-")[0], int(latest.split("-")[1])
    every, last = recipe.checkpoint.every, getattr(recipe, stage).steps
    assert kill_stage == stage and at % every == 0 and step - every < at < last, latest

    summary = train(recipe, killed, rollouts=rollouts, resume=True)
    _assert_repeats(whole, killed, summary, kill_stage, at)


def _learner_rank_pids() -> list[int]:
    """The processes of the live learner ranks (Ray titles them ``ray::LearnerRank...``)."""
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::LearnerRank")
    ]


@contextlib.contextmanager
def killing_a_rank(out, stage: str, step: int, pids: Callable[[], list[int]]):
    """While in the block: SIGKILL the last of ``pids()`` once the run in ``out`` has logged
    ``stage`` step ``step``; yields the list its pid is added to."""
    victims, stop = [], threading.Event()

    def kill():
        while not stop.is_set():
            if (out / "metrics.jsonl").is_file() and step in _rows(out, stage):
                victims.append(pids()[-1])
                os.kill(victims[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    try:
        yield victims
    finally:
        stop.set()
        killer.join(timeout=10)


def _assert_no_learner_left(timeout_s: float = 30) -> None:
    deadline = time.time() + timeout_s
    while _learner_rank_pids() and time.time() < deadline:
        time.sleep(0.2)  # killed actors' processes take a moment to exit
    assert _learner_rank_pids() == []


def test_a_learner_rank_sigkilled_mid_grpo_restarts_from_the_checkpoint_and_repeats_the_run(
    rollouts, tiny_policy_dir, tmp_path, tmp_path_factory
):
    """Within one ``train`` call: one rank's process SIGKILLed after GRPO step 3 fails the
    step it is in; new ranks load the latest checkpoint, the engine gets its weights, and the
    run ends as the uninterrupted one did."""
    overrides = [f"model.path={tiny_policy_dir}", *GRPO_KILL["overrides"]]
    recipe = load_recipe("recipes/demo.yaml", overrides)
    whole = _uninterrupted("grpo-kl-dynamic", recipe, rollouts, tmp_path_factory)
    out = tmp_path / "killed"
    _assert_no_learner_left()  # none left by earlier tests: the victim is this run's
    with killing_a_rank(out, "grpo", 3, _learner_rank_pids) as victims:
        summary = train(recipe, out, rollouts=rollouts)
    assert len(victims) == 1 and summary["learner_restarts"] == 1
    grpo = _rows(out, "grpo")
    restarted_at = min(s for s, r in grpo.items() if r["learner_restarts"] == 1)
    assert restarted_at in (3, 5), grpo  # the step after a checkpoint
    at = restarted_at - 1
    assert all(grpo[s]["learner_restarts"] == int(s > at) for s in grpo)
    _assert_repeats(whole, out, summary, "grpo", at)
    _assert_no_learner_left()  # the dead rank's peer and the new ranks are gone


def test_a_learner_that_keeps_dying_ends_the_run_after_max_restarts(
    rollouts, tiny_policy_dir, tmp_path
):
    """With ``learner.max_restarts=0`` the first death ends the run: one error naming it,
    the checkpoints kept for a ``--resume``."""
    from rl.errors import LearnerDiedError

    overrides = [
        f"model.path={tiny_policy_dir}",
        *GRPO_KILL["overrides"],
        "learner.max_restarts=0",
    ]
    recipe = load_recipe("recipes/demo.yaml", overrides)
    out = tmp_path / "run"

    def kill_a_rank_after_step_3():
        while not (out / "metrics.jsonl").is_file() or 3 not in _rows(out, "grpo"):
            time.sleep(0.05)
        os.kill(_learner_rank_pids()[0], signal.SIGKILL)

    threading.Thread(target=kill_a_rank_after_step_3, daemon=True).start()
    with pytest.raises(LearnerDiedError, match=r"learner rank\(s\) \[\d\] died"):
        train(recipe, out, rollouts=rollouts)
    assert list_checkpoints(out) and not (out / "summary.json").exists()
    _assert_no_learner_left()


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


def test_async_run_killed_and_resumed_trains_every_batch_once(rollouts, tiny_policy_dir, tmp_path):
    """With ``grpo.max_staleness`` the sampler has drawn the next batch when a checkpoint is
    taken: the checkpoint's data position is the trained batches' (the batch in flight is
    sampled again after the resume, by the checkpoint's weights), so every prompt is trained
    on once and the counts are the uninterrupted run's."""
    from rl.checkpoint import load_driver_state

    steps, prompts = 6, 8
    overrides = [
        f"model.path={tiny_policy_dir}",
        *COMMON,
        "sft.steps=4",
        f"grpo.steps={steps}",
        "grpo.max_staleness=1",
        "grpo.mismatch_correction=token",
        "checkpoint.every=2",
    ]
    recipe = load_recipe("recipes/demo.yaml", overrides)
    out = tmp_path / "killed"
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "rl.cli", "train", "recipes/demo.yaml", "--out", str(out)]
    _kill_after([*cmd, *overrides, f"ray.address={address}"], out, "grpo", 3)
    latest = list_checkpoints(out)[-1]
    at = load_driver_state(latest).step
    assert latest.name.startswith("grpo-") and at in (2, 4), latest.name  # 3 was logged
    assert load_driver_state(latest).data_position == at * prompts

    train(recipe, out, rollouts=rollouts, resume=True)
    grpo = _rows(out, "grpo")
    assert sorted(grpo) == list(range(1, steps + 1))  # each step logged once
    assert all(grpo[s]["samples"] == prompts * 4 for s in grpo)
    assert load_driver_state(list_checkpoints(out)[-1]).data_position == steps * prompts
    # after the resume the pipeline starts again from the checkpoint's weights
    assert grpo[at + 1]["weight_version_min"] == at and grpo[at + 1]["staleness_max"] == 0
    for s in range(at + 2, steps + 1):
        assert grpo[s]["weight_version_min"] == s - 2 and grpo[s]["staleness_max"] == 1, s
