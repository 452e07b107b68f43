"""GRPO over multi-turn rollouts through the trainer (the session's engine, 2 FSDP2 ranks):
the learner's logprobs of the sampled tokens match the engine's over sequences with tool
output inside them, the mismatch correction sees weights of 1 there, tool metrics are
counted, and SFT leaves ```output blocks out of its loss."""

import json

import pytest

from rl.config import load_recipe
from rl.trainer import sft_target, train
from tests.test_e2e import tiny_recipe

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_grpo_with_an_environment_learns_over_multi_turn_sequences(
    rollouts, tiny_policy_dir, tmp_path
):
    recipe = tiny_recipe(
        tiny_policy_dir,
        5,
        "sft.steps=0",
        "tools.environment=tests.rollouts.envs:Echo",  # every "=" is a call: reward = calls
        "tools.max_turns=4",
        "rewards.weights={environment: 1.0}",
        "rewards.accuracy=environment",
        "grpo.max_new_tokens=32",
        "grpo.mismatch_correction=token",
        "eval.max_new_tokens=16",
    )
    summary = train(recipe, tmp_path, rollouts=rollouts)
    assert set(summary["eval"]) == {"start", "grpo"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert len(grpo) == 3
    for r in grpo:
        assert r["tool_calls_per_sample"] > 0 and r["tool_token_frac"] > 0
        assert r["turns_mean"] > 1 and r["tool_error_rate"] == 0
        assert 0 < r["tool_use_frac"] <= 1
    learned = [r for r in grpo if r["rows_learned"]]
    assert learned, "no learning signal"
    for r in learned:  # tool tokens are out of the comparison, sampled ones match
        assert r["logprob_diff_mean"] < 1e-4 and r["logprob_diff_max"] < 1e-3, r
        assert abs(r["is_weight_max"] - 1) < 1e-3 and r["is_capped_frac"] == 0
    evals = [r for r in rows if r["stage"].startswith("eval_")]
    assert all("tool_use_frac" in r for r in evals)


def test_sft_targets_leave_tool_output_out_of_the_loss(tmp_path):
    from types import SimpleNamespace

    from model import new_policy
    from model.chat import ChatFormat

    _, tok = new_policy("tiny-qwen2", "0123456789*+-=`pytho\nrintu()<>/k", seed=0)
    recipe = load_recipe("recipes/demo_tools.yaml")
    run = SimpleNamespace(recipe=recipe, tokenizer=tok, chat=ChatFormat(tok))
    completion = "<think>```python\nprint(6*7)\n```\n```output\n42\n```\n</think>42"
    ids, mask = sft_target(run, {"prompt": "6*7", "completion": completion})
    assert ids[-1] == run.chat.end_of_turn_id and len(ids) == len(mask)
    kept = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    dropped = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert dropped == "```output\n42\n```\n"
    assert kept.startswith("<think>```python\nprint(6*7)\n```\n</think>42")
