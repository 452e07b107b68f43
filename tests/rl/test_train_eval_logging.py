"""A short real run (SFT, GRPO, held-out evaluations with samples) through Ray, two FSDP2
ranks and the session's vLLM engine: pass@k beside accuracy in metrics and summary.json, and
the TensorBoard event files read back."""

import json

import pytest

from rl.config import load_recipe
from rl.trainer import train
from tests.rl.test_dashboards import read_board

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_held_out_pass_at_k_and_the_event_files_of_a_run(rollouts, tiny_policy_dir, tmp_path):
    recipe = load_recipe(
        "recipes/demo.yaml",
        [
            f"model.path={tiny_policy_dir}",
            "data.generator_args={n_sft: 64, n_rl: 64, n_eval: 6, seed: 9, max_terms: 2, max_digits: 1}",
            "log_every=1",
            "sft.steps=2",
            "sft.batch_size=16",
            "grpo.steps=2",
            "grpo.prompts_per_step=4",
            "grpo.group_size=4",
            "grpo.max_new_tokens=8",
            "eval.max_new_tokens=8",
            "eval.n=4",
            "logging.samples=2",
            "checkpoint.every=0",
        ],
    )
    summary = train(recipe, tmp_path, rollouts=rollouts)

    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for stage in ("sft", "grpo"):
        result = summary["eval"][stage]
        assert list(result) == ["accuracy", "n", "k", "pass@k", "mean@k", "maj@k"]
        assert (result["n"], result["k"]) == (6, 4)
        # with a 0/1 reward: sampled pass@1 (= mean@k) <= pass@k, and a correct majority
        # answer means a correct sample
        assert (
            0 <= result["mean@k"] <= result["pass@k"] <= 1 and result["maj@k"] <= result["pass@k"]
        )
        (row,) = [r for r in metrics if r["stage"] == f"eval_{stage}"]
        assert row == {"step": None, "stage": f"eval_{stage}", **result}
        per_row = [
            json.loads(x) for x in (tmp_path / f"eval_{stage}.jsonl").read_text().splitlines()
        ]
        assert len(per_row) == 6 and all(len(r["samples"]) == 4 for r in per_row)
        assert {"prompt", "answer", "completion", "reward", "maj_answer"} <= set(per_row[0])
        correct = sum(r["reward"] >= 1 for r in per_row) / 6
        assert result["accuracy"] == pytest.approx(correct)

    scalars, texts = read_board(tmp_path / "tensorboard")
    assert scalars["sft/loss"][0] == [1, 2]
    for row in [r for r in metrics if r["stage"] in ("sft", "grpo")]:
        numbers = {  # every number of the row, a dict of numbers one per key
            f"{row['stage']}/{k}{'/' + sub if sub else ''}": x
            for k, v in row.items()
            if k != "step"
            for sub, x in (v.items() if isinstance(v, dict) else [("", v)])
            if isinstance(x, int | float) and not isinstance(x, bool)
        }
        assert {"grpo/reward_mean", "grpo/time_step"} <= set(numbers) or row["stage"] == "sft"
        for tag, value in numbers.items():
            steps, values = scalars[tag]
            assert values[steps.index(row["step"])] == pytest.approx(value, rel=1e-6), tag
    for stage in ("sft", "grpo"):  # at the last step of the stage evaluated
        assert scalars[f"eval/{stage}/accuracy"] == (
            [2],
            [pytest.approx(summary["eval"][stage]["accuracy"])],
        )
        assert scalars[f"eval/{stage}/pass@k"][0] == [2]
    assert [s for s, _ in texts["grpo/completions"]] == [1, 2]  # log_every=1
    step_one = texts["grpo/completions"][0][1]
    assert step_one.count("reward ") == 2 and "<|assistant|>" in step_one  # the rendered prompt
    assert [s for s, _ in texts["eval/sft/completions"]] == [2]
