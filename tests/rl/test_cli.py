"""The r1kit command line on bad input: one clear line on stderr, a non-zero exit, no traceback."""

import json
import subprocess
import sys

import pytest

RECIPE = """
name: bad-input
model: {{preset: tiny-dsv3}}
data: {{sft_file: {sft}, rl_file: {rl}, eval_file: {eval}}}
sft: {{steps: 1}}
grpo: {{steps: 1}}
"""


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "rl.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def data_dir(tmp_path):
    rows = [{"prompt": "1+1", "answer": "2", "completion": "<think>1+1=2</think>2"}]
    for name in ("sft", "rl", "eval"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"prompt": "2+2", "answer": "4"}) + "\n")
    return tmp_path


def write_recipe(data_dir, **files):
    paths = {k: data_dir / f"{k}.jsonl" for k in ("sft", "rl", "eval")} | files
    recipe = data_dir / "recipe.yaml"
    recipe.write_text(RECIPE.format(**paths))
    return recipe


def assert_one_clear_line(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1kit: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_recipe_key(data_dir, tmp_path):
    recipe = write_recipe(data_dir)
    recipe.write_text(recipe.read_text() + "grpo_steps: 3\n")
    result = run_cli("train", recipe, "--out", tmp_path / "out", cwd=data_dir)
    assert_one_clear_line(result, "unknown key 'grpo_steps'", "recipe.yaml")


def test_unknown_override_key(data_dir, tmp_path):
    result = run_cli(
        "train", write_recipe(data_dir), "--out", tmp_path / "out", "grpo.stepz=2", cwd=data_dir
    )
    assert_one_clear_line(result, "unknown key 'grpo.stepz'", "did you mean 'grpo.steps'")


def test_missing_data_file(data_dir, tmp_path):
    recipe = write_recipe(data_dir, rl=data_dir / "nowhere.jsonl")
    result = run_cli("train", recipe, "--out", tmp_path / "out", cwd=data_dir)
    assert_one_clear_line(result, "data file not found", "nowhere.jsonl", "data.rl_file")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"prompt": "3+3", "answer": "6"', "malformed JSON"),
        ('{"prompt": "3+3"}', "missing or empty string field 'answer'"),
        ('["3+3", "6"]', "a row must be a JSON object"),
        ('{"prompt": "3+3", "answer": 6}', "field 'answer'"),
    ],
)
def test_malformed_row_names_file_and_line(data_dir, tmp_path, line, needle):
    good = json.dumps({"prompt": "1+2", "answer": "3"})
    (data_dir / "rl.jsonl").write_text(f"{good}\n{good}\n{line}\n")
    result = run_cli("train", write_recipe(data_dir), "--out", tmp_path / "out", cwd=data_dir)
    assert_one_clear_line(result, "rl.jsonl:3:", needle)


def test_held_out_rows_must_not_be_training_rows(data_dir, tmp_path):
    (data_dir / "eval.jsonl").write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n")
    result = run_cli("train", write_recipe(data_dir), "--out", tmp_path / "out", cwd=data_dir)
    assert_one_clear_line(result, "held-out prompts also in training data", "'1+1'")


def test_an_existing_run_is_never_overwritten(data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    result = run_cli("train", write_recipe(data_dir), "--out", out, cwd=data_dir)
    assert_one_clear_line(result, "already holds a run")
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'
