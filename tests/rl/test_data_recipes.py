"""Recipes' data keys end to end through ``rl.trainer.load_data``: the YAML a user writes (the
README's examples: GSM8K from the hub, a local MATH parquet, a verl parquet, a reasoning-gym
task), the ``data.*_file`` shorthands and the generator as before, and held-out rows kept
apart from training rows."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rl.config import load_recipe
from rl.errors import ConfigError, DataError
from rl.trainer import load_data
from tests.rl.data_rows import GSM8K, MATH, VERL


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def recipe(tmp_path, text, *overrides):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return load_recipe(path, list(overrides))


def test_gsm8k_from_the_hub(tmp_path, monkeypatch):
    calls = []

    def fake_hub(path, name=None, split=None):
        calls.append((path, name, split))
        rows = GSM8K if split == "train" else [{"question": "Held out?", "answer": "#### 5"}]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    r = recipe(
        tmp_path,
        """
grpo: {steps: 1}
data:
  prompt_template: "{prompt}\\nPut the final answer after ####."
  rl: {path: openai/gsm8k, name: main, split: train, fields: {prompt: question}, answer_format: gsm8k}
  eval: {path: openai/gsm8k, name: main, split: test, fields: {prompt: question}, answer_format: gsm8k, limit: 500}
""",
    )
    data = load_data(r, tmp_path / "out")
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert [row["answer"] for row in data["rl"]] == ["72", "1234"]
    assert data["eval"] == [{"question": "Held out?", "prompt": "Held out?", "answer": "5"}]
    assert data["sft"] == []


def test_a_local_math_parquet(tmp_path):
    pq.write_table(pa.Table.from_pylist(MATH[:1]), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(MATH[1:]), tmp_path / "test.parquet")
    r = recipe(
        tmp_path,
        f"""
sft: {{steps: 1}}
data:
  prompt_template: "{{prompt}}\\nPut your final answer within \\\\boxed{{{{}}}}."
  sft: {{path: {tmp_path}/train.parquet, fields: {{prompt: problem, completion: solution}}}}
  eval: {{path: {tmp_path}/test.parquet, fields: {{prompt: problem, answer: solution}}, answer_format: math}}
""",
    )
    assert r.data.prompt_template == "{prompt}\nPut your final answer within \\boxed{{}}."
    data = load_data(r, tmp_path / "out")
    assert data["sft"][0]["completion"] == MATH[0]["solution"]
    assert data["eval"][0]["answer"] == "2"


def test_a_verl_parquet(tmp_path):
    pq.write_table(pa.Table.from_pylist(VERL[:16]), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(VERL[16:]), tmp_path / "test.parquet")
    r = recipe(
        tmp_path,
        f"""
grpo: {{steps: 1}}
data:
  rl: {{path: {tmp_path}/train.parquet}}
  eval: {{path: {tmp_path}/test.parquet}}
""",
    )
    data = load_data(r, tmp_path / "out")
    assert len(data["rl"]) == 16 and len(data["eval"]) == 4
    assert data["eval"][0]["messages"][-1]["content"].startswith("What is 16 + 16?")
    assert data["eval"][0]["answer"] == "32"


def test_a_verl_eval_set_that_repeats_a_training_prompt_is_refused(tmp_path):
    pq.write_table(pa.Table.from_pylist(VERL), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(VERL[5:6]), tmp_path / "test.parquet")
    r = recipe(
        tmp_path,
        f"grpo: {{steps: 1}}\ndata: {{rl: {{path: {tmp_path}/train.parquet}}, "
        f"eval: {{path: {tmp_path}/test.parquet}}}}\n",
    )
    with pytest.raises(
        DataError,
        match=r"^data.eval: 1 held-out prompts also in training data, e.g. \"What is 5 \+ 5\? Let's",
    ):
        load_data(r, tmp_path / "out")


def test_reasoning_gym_countdown(tmp_path):
    r = recipe(
        tmp_path,
        """
seed: 3
grpo: {steps: 1}
rewards: {weights: {reasoning_gym: 1.0}, accuracy: reasoning_gym}
data:
  rl: {reasoning_gym: countdown, size: 64, config: {min_numbers: 3, max_numbers: 4}}
  eval: {reasoning_gym: countdown, size: 16, seed: 1000, config: {min_numbers: 3, max_numbers: 4}}
""",
    )
    data = load_data(r, tmp_path / "out")
    assert len(data["rl"]) == 64 and len(data["eval"]) == 16
    assert {row["reasoning_gym"]["task"] for row in data["rl"] + data["eval"]} == {"countdown"}
    assert all(3 <= len(row["metadata"]["numbers"]) <= 4 for row in data["rl"])


def test_the_file_shorthands_and_the_generator_still_work(tmp_path):
    rows = [{"prompt": "1+1", "answer": "2", "completion": "<think>1+1=2</think>2"}]
    (tmp_path / "sft.jsonl").write_text(json.dumps(rows[0]) + "\n")
    r = recipe(
        tmp_path,
        f"""
sft: {{steps: 1}}
grpo: {{steps: 1}}
data:
  generator: recipes.arithmetic:generate
  generator_args: {{n_sft: 4, n_rl: 4, n_eval: 4, seed: 0}}
  sft_file: {tmp_path}/sft.jsonl
""",
    )
    data = load_data(r, tmp_path / "out")
    assert data["sft"] == rows  # the stage's own file wins over the generator
    assert len(data["rl"]) == 4 and len(data["eval"]) == 4
    assert (tmp_path / "out" / "data" / "rl.jsonl").is_file()
    assert not (tmp_path / "out" / "data" / "sft.jsonl").exists()


def test_a_stage_source_wins_over_the_generator(tmp_path):
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "9+9", "answer": "18"}) + "\n")
    r = recipe(
        tmp_path,
        f"""
grpo: {{steps: 1}}
data:
  generator: recipes.arithmetic:generate
  generator_args: {{n_sft: 4, n_rl: 4, n_eval: 4, seed: 0}}
  eval: {{path: {tmp_path}/eval.jsonl}}
""",
    )
    assert load_data(r, tmp_path / "out")["eval"] == [{"prompt": "9+9", "answer": "18"}]


def test_a_stage_that_runs_needs_data(tmp_path):
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "9+9", "answer": "18"}) + "\n")
    r = recipe(tmp_path, f"grpo: {{steps: 1}}\ndata: {{eval_file: {tmp_path}/eval.jsonl}}\n")
    with pytest.raises(
        ConfigError, match="rl data needed: set data.rl, data.rl_file or data.generator"
    ):
        load_data(r, tmp_path / "out")


def test_errors_from_a_shorthand_name_its_key(tmp_path):
    r = recipe(tmp_path, f"data: {{eval_file: {tmp_path}/nowhere.jsonl}}\n")
    with pytest.raises(
        DataError, match=r"data file not found: .*nowhere.jsonl \(recipe key data.eval_file\)"
    ):
        load_data(r, tmp_path / "out")
