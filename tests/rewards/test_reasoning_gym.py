"""The reasoning_gym reward: a task's own scorer on the completion's final answer, in the reward
pool's worker processes, with no model output run as code."""

import inspect
import re

import pytest
import reasoning_gym

from rewards import RewardDataError, RewardPool, get_reward
from rewards.reasoning_gym import (
    LITERAL_EVAL_TASKS,
    PARSE_EXPR_TASKS,
    UnsafeAnswer,
    final_answer,
    math_only,
    reasoning_gym_reward,
)


def rows(task, size=4, seed=0, **config):
    """Rows as ``data.rl: {reasoning_gym: TASK}`` loads them (rl/sources.py, rl/rows.py)."""
    data = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    return [
        {**item, "prompt": item["question"], "reasoning_gym": {"task": task, "config": config}}
        for item in data
    ]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>try 1</think><answer>2</answer>", "2"),
        ("<think>x</think>\n<answer>\n 2 + 3 \n</answer>\n", "2 + 3"),
        ("<answer>1</answer> no, <answer>2</answer>", "2"),  # the last one
        ("<think><answer>1</answer></think> <answer>2</answer>", "2"),  # not the thinking's
        ("<think><answer>1</answer></think> 3", "3"),  # after a think block: its text
        ("<think>only thinking</think>", ""),
        ("<answer>7</answer>", "7"),
        ("7", None),  # no tag, no think block: no answer
        ("<think>unclosed <answer>7</answer>", "7"),
    ],
)
def test_final_answer(completion, expected):
    assert final_answer(completion) == expected


def test_countdown_scores_are_the_tasks_own():
    row = rows("countdown", size=1, seed=3)[0]
    gold = row["answer"]
    assert reasoning_gym_reward(f"<think>...</think><answer>{gold}</answer>", **row) == 1.0
    assert reasoning_gym_reward("<think>...</think><answer>1 + 2</answer>", **row) == 0.05
    assert reasoning_gym_reward("I give up", **row) == 0.01  # None: countdown's floor


def test_a_task_with_config_is_scored_with_that_config():
    row = rows("chain_sum", size=1, seed=0, min_terms=3, max_terms=3)[0]
    assert row["reasoning_gym"]["config"] == {"min_terms": 3, "max_terms": 3}
    assert reasoning_gym_reward(f"<answer>{row['answer']}</answer>", **row) == 1.0


@pytest.mark.parametrize("task", sorted(LITERAL_EVAL_TASKS | PARSE_EXPR_TASKS))
def test_gold_answers_of_the_guarded_tasks_still_score_one(task):
    for row in rows(task, size=6, seed=1):
        assert reasoning_gym_reward(f"<answer>{row['answer']}</answer>", **row) == 1.0, row[
            "answer"
        ]


def test_a_list_answer_is_still_read_where_the_scorer_reads_lists():
    row = rows("spiral_matrix", size=1, seed=2)[0]
    as_list = "[" + ", ".join(row["answer"].split()) + "]"
    assert reasoning_gym_reward(f"<answer>{as_list}</answer>", **row) == 0.1  # its partial credit


HOSTILE = "__import__('os').system('touch {marker}')"


@pytest.mark.parametrize("task", ["countdown", "polynomial_multiplication", "puzzle24"])
def test_parse_expr_tasks_refuse_answers_that_are_code(tmp_path, task):
    marker = tmp_path / "ran"
    row = rows(task, size=1)[0]
    for answer in [HOSTILE.format(marker=marker), "exec(chr(49)) + 1", "(1).real", "ｅｘｅｃ(1)"]:
        with pytest.raises(UnsafeAnswer, match="names that are not math"):
            reasoning_gym_reward(f"<answer>{answer}</answer>", **row)
    assert not marker.exists()


@pytest.mark.parametrize("task", sorted(LITERAL_EVAL_TASKS))
def test_eval_tasks_only_read_literals(tmp_path, task):
    marker = tmp_path / "ran"
    row = rows(task, size=1)[0]
    assert reasoning_gym_reward(f"<answer>{HOSTILE.format(marker=marker)}</answer>", **row) == 0.0
    assert not marker.exists()


@pytest.mark.parametrize(
    ("answer", "ok"),
    [
        ("94*4 - 61 - 6", True),
        ("(8 - 2) * (3 + 1)", True),
        ("-3*x**4/4 + 2*x**2 + C", True),
        ("2*sin(x)**2 + exp(-x) + sqrt(x1) + pi", True),
        ("x.__class__", False),
        ("lambda: 1", False),
        ("open('/etc/passwd')", False),
        ("sympify('1')", False),
        ("'unterminated", False),
        ("x √ 2", False),
    ],
)
def test_math_only(answer, ok):
    assert math_only(answer) is ok


def test_every_reasoning_gym_scorer_that_evaluates_text_is_guarded():
    """Fails when a reasoning-gym version adds (or drops) a scorer that evaluates text."""
    evaluates = re.compile(r"(?<![\w.])(eval|exec)\(|parse_expr|sympify")
    found = {
        name
        for name, (cls, _) in reasoning_gym.factory.DATASETS.items()
        if evaluates.search(inspect.getsource(cls.score_answer))
    }
    # number_sorting evaluates its own gold answer, never the model's.
    assert found == LITERAL_EVAL_TASKS | PARSE_EXPR_TASKS | {"number_sorting"}


def test_bad_rows_are_data_errors():
    with pytest.raises(RewardDataError, match="no 'reasoning_gym' field"):
        reasoning_gym_reward("<answer>1</answer>", answer="1")
    with pytest.raises(RewardDataError, match="no reasoning-gym task 'nope'"):
        reasoning_gym_reward("<answer>1</answer>", reasoning_gym={"task": "nope", "config": {}})


def test_the_registry_names_it():
    assert get_reward("reasoning_gym") is reasoning_gym_reward


@pytest.mark.slow
def test_in_the_reward_pool_workers(tmp_path):
    """Rows cross to spawned worker processes (pickled), where the task's scorer is built."""
    from rl.config import DataSource
    from rl.rows import load_rows

    loaded = load_rows(DataSource(reasoning_gym="countdown", size=3, seed=3), "rl", "data.rl")
    marker = tmp_path / "ran"
    completions = [
        f"<think>ok</think><answer>{loaded[0]['answer']}</answer>",
        "<think>hmm</think><answer>1 + 2</answer>",
        "no answer",
        f"<answer>{HOSTILE.format(marker=marker)}</answer>",
    ]
    with RewardPool({"reasoning_gym": 1.0}, num_workers=1, timeout_s=60) as pool:
        results = pool.score(completions, [loaded[0], loaded[0], loaded[1], loaded[2]])
    assert [r.reward for r in results] == [1.0, 0.05, 0.01, 0.0]
    assert [r.error is None for r in results] == [True, True, True, False]
    assert results[3].error.startswith("UnsafeAnswer: countdown: the answer uses names")
    assert not marker.exists()
