"""``r1kit evaluate`` on the real stack: the report's contract, reproducible samples, the model's
own weights in a shared engine, and bad input refused before anything starts."""

import json

import pytest

from model import new_policy, save_policy
from rl.cli import main
from rl.errors import ConfigError
from rl.evaluate_model import data_source, evaluate_model, tools_config
from rl.evaluation import Sampling
from tests.conftest import ALPHABET

REWARD = "tests.rl.eval_rewards:first_char"
ROWS = [
    {"prompt": p, "answer": a}
    for p, a in [("3+4", "7"), ("9-5", "4"), ("2+2", "4"), ("8-1", "7"), ("1+0", "1"), ("6-6", "0")]
]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def evaluate_cli(*args):
    return main(["evaluate", "--data", "eval.jsonl", "--out", "x.json", *map(str, args)])


def test_greedy_with_more_than_one_sample_is_refused_before_anything_starts(capsys, tmp_path):
    assert evaluate_cli("--model", tmp_path, "--n", 4, "--temperature", 0) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("r1kit: error: ") and "k must be 1, got 4" in line


def test_not_a_model_folder_is_one_clear_line(capsys, tmp_path, data):
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "nowhere"),
                "--data",
                str(data),
                "--n",
                "1",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert "not a Hugging Face model folder" in capsys.readouterr().err


def test_a_template_field_the_rows_lack_is_one_clear_line(capsys, tmp_path, data, tiny_policy_dir):
    argv = ["evaluate", "--model", tiny_policy_dir, "--data", str(data), "--n", "1"]
    argv += ["--prompt-template", "Q: {question}", "--out", str(tmp_path / "x.json")]
    assert main(argv) == 2
    assert "eval.jsonl:1: prompt_template needs field 'question'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_data_takes_a_recipes_data_source_keys():
    src = data_source("{path: rows.parquet, split: test, fields: {answer: label}, limit: 5}")
    assert (src.path, src.split, src.fields.answer, src.limit) == (
        "rows.parquet",
        "test",
        "label",
        5,
    )
    with pytest.raises(ConfigError, match="--data: unknown key 'pth' \\(did you mean 'path'"):
        data_source("{pth: rows.jsonl}")


def test_n_must_be_positive(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        evaluate_cli("--model", tmp_path, "--n", 0)
    assert exit_.value.code == 2 and "argument --n: must be >= 1" in capsys.readouterr().err


def check_contract(report, rows, k, random_text=True):
    assert list(report)[:6] == ["n_rows", "k", "pass@1", "pass@k", "mean@k", "maj@k"]
    assert report["n_rows"] == len(rows) == len(report["rows"]) and report["k"] == k
    per_row = report["rows"]
    assert all(len(r["samples"]) == k for r in per_row)
    assert [r["prompt"] for r in per_row] == [r["prompt"] for r in rows]
    # the summary figures are the rows' own, recomputed here
    greedy = [r["greedy"]["reward"] >= 1 for r in per_row]
    rewards = [[s["reward"] for s in r["samples"]] for r in per_row]
    assert report["pass@1"] == pytest.approx(sum(greedy) / len(rows))
    assert report["pass@k"] == pytest.approx(
        sum(any(x >= 1 for x in r) for r in rewards) / len(rows)
    )
    assert report["mean@k"] == pytest.approx(sum(sum(r) / k for r in rewards) / len(rows))
    assert [r["correct"] for r in per_row] == [sum(x >= 1 for x in r) for r in rewards]
    if random_text:  # no final answer: no sample votes
        assert report["maj@k"] == 0.0
    assert 0 <= report["mean@k"] <= report["pass@k"] <= 1


@pytest.mark.slow
@pytest.mark.e2e
def test_the_cli_starts_its_engine_and_writes_the_report(
    ray_cluster, rollouts, tiny_policy_dir, data, tmp_path, capsys
):
    out = tmp_path / "report.json"
    argv = [
        "evaluate",
        "--model",
        tiny_policy_dir,
        "--data",
        str(data),
        "--n",
        "4",
        "--max-new-tokens",
        "8",
        "--seed",
        "3",
        "--reward",
        REWARD,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    check_contract(report, ROWS, 4)
    assert (report["model"], report["reward"], report["temperature"]) == (
        tiny_policy_dir,
        REWARD,
        1.0,
    )
    assert f"pass@4 {report['pass@k']:.3f}" in capsys.readouterr().out

    # The session's shared engine, after it held another model's weights, gives the same
    # greedy completions and (same seed) the same samples: the model's weights were loaded.
    other, tokenizer = new_policy("tiny-dsv3", ALPHABET, seed=1)
    other_dir = save_policy(other, tokenizer, tmp_path / "other")
    sampling = Sampling(k=4, temperature=1.0, max_new_tokens=8, seed=3)
    run = lambda model, name: evaluate_model(  # noqa: E731
        model, str(data), tmp_path / name, sampling, reward=REWARD, rollouts=rollouts
    )
    elsewhere = run(other_dir, "other.json")
    shared = run(tiny_policy_dir, "shared.json")
    greedy = [r["greedy"]["completion"] for r in report["rows"]]
    assert [r["greedy"]["completion"] for r in elsewhere["rows"]] != greedy
    assert [r["greedy"]["completion"] for r in shared["rows"]] == greedy
    assert [r["samples"] for r in shared["rows"]] == [r["samples"] for r in report["rows"]]
    reseeded = evaluate_model(
        tiny_policy_dir,
        f"{{path: {data}, limit: 3}}",  # a recipe's data source keys
        tmp_path / "s4.json",
        Sampling(k=4, temperature=1.0, max_new_tokens=8, seed=4),
        reward=REWARD,
        rollouts=rollouts,
    )
    assert reseeded["n_rows"] == 3
    assert [r["samples"] for r in reseeded["rows"]] != [r["samples"] for r in report["rows"][:3]]


def test_bad_tools_are_one_clear_line_before_anything_starts(capsys, tmp_path):
    assert evaluate_cli("--model", tmp_path, "--n", 1, "--tools", "{environment: functions}") == 2
    assert "--tools: environment functions needs functions" in capsys.readouterr().err
    assert evaluate_cli("--model", tmp_path, "--n", 1, "--tools", "{max_turn: 2}") == 2
    assert "unknown key 'max_turn' (did you mean 'max_turns'" in capsys.readouterr().err
    assert evaluate_cli("--model", tmp_path, "--n", 1, "--tools", "nowhere:Env") == 2
    assert "--tools: " in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.e2e
def test_evaluate_with_tools_runs_multi_turn_episodes(rollouts, tiny_policy_dir, data, tmp_path):
    tools = tools_config("{environment: tests.rollouts.envs:Echo, max_turns: 3}")
    sampling = Sampling(k=4, temperature=1.0, max_new_tokens=16, seed=3)
    report = evaluate_model(
        tiny_policy_dir, str(data), tmp_path / "t.json", sampling, reward=REWARD,
        rollouts=rollouts, tools=tools,
    )  # fmt: skip
    check_contract(report, ROWS, 4, random_text=False)  # the tool's text may hold an answer
    assert report["tools"] == "tests.rollouts.envs:Echo"
    samples = [s for r in report["rows"] for s in r["samples"]]
    greedy = [r["greedy"] for r in report["rows"]]
    assert all("tool_calls" in s for s in samples + greedy)
    called = [s for s in samples if s["tool_calls"]]
    assert called, "no sample wrote a '=' (a call of the Echo environment)"
    assert all("= 11" in s["completion"] for s in called)  # the observation (maybe cut short)
    assert report["sample_tool_use_frac"] == pytest.approx(len(called) / len(samples))
    assert report["tool_use_frac"] == pytest.approx(
        sum(g["tool_calls"] > 0 for g in greedy) / len(greedy)
    )
    assert json.loads((tmp_path / "t.json").read_text())["tools"] == report["tools"]
