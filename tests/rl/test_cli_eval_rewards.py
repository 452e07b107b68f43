"""`r1kit eval-rewards` on the command line: the report, and bad input as one clear line."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOOD = {"completion": r"<think>x</think> \boxed{4}", "answer": "4"}


def run_cli(*args, **env_vars):
    # This checkout's packages, whatever r1kit the interpreter has installed.
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "rl.cli", "eval-rewards", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_clear_line(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1kit: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_data_file(tmp_path):
    result = run_cli(
        "--reward", "math", "--data", tmp_path / "nowhere.jsonl", "--out", tmp_path / "r.json"
    )
    assert_one_clear_line(result, "data file not found", "nowhere.jsonl")
    assert not (tmp_path / "r.json").exists()


def test_unknown_reward(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    result = run_cli("--reward", "maths", "--data", data, "--out", tmp_path / "r.json")
    assert_one_clear_line(result, "unknown reward 'maths'", "use one of")


def test_unknown_argument(tmp_path):
    result = run_cli("--reward", "math", "--data", "d", "--out", "r", "grpo.steps=3")
    assert result.returncode == 2 and "unrecognized arguments: grpo.steps=3" in result.stderr


def test_bad_rows_are_reported_with_their_lines_not_fatal(tmp_path):
    data = tmp_path / "d.jsonl"
    lines = [json.dumps(GOOD), '{"completion": "x", ', json.dumps({"completion": "x"}), "[]"]
    data.write_text("\n".join(lines) + "\n")
    result = run_cli(
        "--reward", "math", "--data", data, "--out", tmp_path / "r.json", "--workers", "1"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 1 and report["mean"] == 1.0 and report["errors"] == 3
    assert [e["line"] for e in report["error_rows"]] == [2, 3, 4]
    assert "Traceback" not in result.stderr
    out = result.stdout
    assert "math: n=1 mean=1.0000 errors=3" in out
    assert f"not scored: {data}:2: malformed JSON" in out
    assert f"not scored: {data}:3: reward 'math': the row has no string field 'answer'" in out


def test_code_reward_refuses_without_a_sandbox_and_says_so(tmp_path):
    # A sandbox interpreter that does not exist makes the sandbox probe fail, as a machine
    # without bubblewrap would.
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"completion": "x = 1", "test": "assert x == 1"}) + "\n")
    args = ["--reward", "code", "--data", data, "--out", tmp_path / "r.json", "--workers", "1"]
    result = run_cli(*args, R1KIT_SANDBOX_PYTHON="/nonexistent/python3")
    assert_one_clear_line(result, "refusing to run model-written code", "R1KIT_UNSAFE_NO_SANDBOX=1")
