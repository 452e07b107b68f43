"""evaluate_rows on a scripted policy scored by the real math reward: every figure by hand."""

import json

import pytest

from rewards import RewardDataError, ScoreResult, math_reward
from rl.config import load_recipe
from rl.errors import ConfigError, DataError
from rl.evaluation import Policy, Sampling, evaluate_rows, vote_key
from rollouts.types import Completion

ROWS = [
    {"prompt": "a", "answer": "1"},
    {"prompt": "b", "answer": "2"},
    {"prompt": "c", "answer": "3"},
]
GREEDY = {"a": r"\boxed{1}", "b": r"\boxed{5}", "c": "no answer"}
SAMPLES = {
    # rewards 1 0 1 0 (c = 2); answers 1 2 1 -: majority "1", correct
    "a": [r"\boxed{1}", r"\boxed{2}", r"\boxed{1}", "pass"],
    # rewards 0 1 0 0 (c = 1; the last hedges); answers 3 2 3 -: majority "3", wrong
    "b": [r"\boxed{3}", r"\boxed{2}", r"\boxed{ 3 }", r"\boxed{2} or \boxed{3}"],
    # rewards 1 0 0 1 (c = 2); 3 and 4 tie at two votes: "3" came first, correct
    "c": [r"\boxed{3}", r"\boxed{4}", r"\boxed{4}", r"\boxed{3}"],
}


class ScriptedPolicy:
    """The completions above; records every generate call."""

    def __init__(self):
        self.calls = []

    def generate(self, rows, n, temperature, max_tokens, seed=None):
        self.calls.append(([r["prompt"] for r in rows], n, temperature, seed))
        out = []
        for i, row in enumerate(rows):
            texts = [GREEDY[row["prompt"]]] if temperature == 0 else SAMPLES[row["prompt"]][:n]
            out += [Completion(i, [1], t, [0.0], "stop") for t in texts]
        return out


class InProcessPool:
    """RewardPool's contract with the math reward, in this process."""

    def score(self, texts, rows, on_data_error="raise"):
        results = []
        for text, row in zip(texts, rows, strict=True):
            try:
                results.append(ScoreResult(math_reward(text, **row), {}, 0.0))
            except RewardDataError as e:
                results.append(ScoreResult(0.0, {}, 0.0, data_error=str(e)))
        return results


def run(rows=ROWS, **sampling):
    scripted = ScriptedPolicy()
    policy = Policy(scripted.generate, lambda text: text, InProcessPool())
    return evaluate_rows(policy, rows, Sampling(**sampling), vote_key("math")), scripted.calls


def test_report_figures_by_hand():
    report, _ = run(k=4, temperature=0.7, seed=100)
    assert report["n_rows"] == 3 and report["k"] == 4
    assert report["pass@1"] == pytest.approx(1 / 3)  # greedy: a right, b wrong, c no answer
    assert report["pass@k"] == 1.0  # every row has a correct sample
    assert report["mean@k"] == pytest.approx((2 / 4 + 1 / 4 + 2 / 4) / 3)
    assert report["maj@k"] == pytest.approx(2 / 3)  # a and c
    # pass@2 per row: 1 - C(4 - c, 2) / C(4, 2): a, c: 1 - 1/6; b: 1 - 3/6
    assert report["pass_curve"] == pytest.approx(
        {"1": 1.25 / 3, "2": (5 / 6 + 1 / 2 + 5 / 6) / 3, "4": 1.0}
    )
    a, b, c = report["rows"]
    assert [r["correct"] for r in (a, b, c)] == [2, 1, 2]
    assert (a["maj_answer"], b["maj_answer"], c["maj_answer"]) == ("1", "3", "3")
    assert [s["vote"] for s in b["samples"]] == ["3", "2", "3", None]  # collapsed; hedge abstains
    assert a["greedy"] == {"completion": r"\boxed{1}", "reward": 1.0, "finish_reason": "stop"}
    assert report["reward_errors"] == 0 and report["sample_truncation_rate"] == 0.0


def test_samples_are_seeded_by_row_whatever_the_batching(capsys):
    one, calls = run(k=4, temperature=0.7, seed=100, batch_rows=2)
    lines = capsys.readouterr().err.splitlines()  # progress off a terminal: a line a batch
    assert lines[0].startswith("evaluate (2 rows x 5 completions) 1/2 (50%)")
    assert lines[1].endswith(": pass@1 0.333 pass@4 1.000")  # after all 3 rows
    assert calls == [
        (["a", "b"], 1, 0.0, None),  # greedy
        (["a", "b"], 4, 0.7, 100),  # rows 0, 1: seeds 100, 101
        (["c"], 1, 0.0, None),
        (["c"], 4, 0.7, 102),  # row 2: seed 102
    ]
    whole, calls = run(k=4, temperature=0.7, seed=100, batch_rows=3)
    assert [c[3] for c in calls] == [None, 100]
    assert {k: v for k, v in one.items() if k != "rows"} == {
        k: v for k, v in whole.items() if k != "rows"
    }


def test_greedy_only_at_temperature_zero():
    report, calls = run(k=1, temperature=0.0)
    assert calls == [(["a", "b", "c"], 1, 0.0, None)]  # the samples are the greedy completions
    assert report["pass@1"] == report["pass@k"] == report["mean@k"] == pytest.approx(1 / 3)
    assert report["maj@k"] == pytest.approx(1 / 3)  # one vote: the greedy answer
    with pytest.raises(ValueError, match="k must be 1"):
        Sampling(k=4, temperature=0.0)


def test_a_gold_answer_that_does_not_parse_names_its_row():
    rows = [ROWS[0], {"prompt": "b", "answer": r"\frac{"}]
    with pytest.raises(DataError, match="evaluation row 2 cannot be scored"):
        run(rows, k=1, temperature=0.0)


def test_code_rewards_vote_on_the_program():
    assert vote_key("code")("```python\nx  =  1\n```") == "x = 1"
    assert vote_key("math")(r"<think>\boxed{4}</think>The answer is 5.") == "5"


def test_a_misspelt_logging_key_is_caught():  # the ranges and choices: tests/rl/test_config.py
    with pytest.raises(ConfigError, match="did you mean 'logging.tensorboard'"):
        load_recipe("recipes/demo.yaml", ["logging.tensorbord=false"])


def test_recipe_defaults_keep_the_greedy_evaluation_and_turn_tensorboard_on():
    recipe = load_recipe("recipes/demo.yaml")
    assert (recipe.eval.n, recipe.logging.tensorboard, recipe.logging.wandb.project) == (
        1,
        True,
        None,
    )


def test_a_run_started_before_the_eval_and_logging_keys_existed_still_resumes(tmp_path):
    from dataclasses import asdict

    from rl.trainer import _resume_state

    recipe = load_recipe("recipes/demo.yaml", ["logging.samples=8"])  # logging may change
    saved = asdict(load_recipe("recipes/demo.yaml"))
    del saved["logging"], saved["eval"]["n"], saved["eval"]["temperature"]
    (tmp_path / "recipe.resolved.json").write_text(json.dumps(saved))
    checkpoint = tmp_path / "checkpoints" / "state" / "grpo-000002"
    checkpoint.mkdir(parents=True)
    driver = {"stage": "grpo", "step": 2, "data_position": 8, "summary": {}, "metrics_rows": 2}
    (checkpoint / "driver.json").write_text(json.dumps({**driver, "wall_seconds": 1.0}))
    assert _resume_state(recipe, tmp_path).step == 2
    with pytest.raises(ConfigError, match=r"eval.n \(run: 1, now: 4\)"):
        _resume_state(load_recipe("recipes/demo.yaml", ["eval.n=4"]), tmp_path)
