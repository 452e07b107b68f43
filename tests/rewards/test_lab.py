"""The reward lab (rewards/lab.py): rows, report, comparison, bad input."""

import json

import pytest

from rewards.lab import LabError, LabRow, compare_results, read_rows, run_lab, summarize
from rewards.pool import ScoreResult

GOOD = {"completion": r"<think>x</think> \boxed{4}", "answer": "4"}
WRONG = {"completion": r"<think>x</think> \boxed{5}", "answer": "4"}
ROUNDS = {"completion": r"<think>x</think> \boxed{1/2^{98}}", "answer": "1/2^{99}"}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_read_rows_keeps_line_numbers_and_reports_bad_lines(tmp_path):
    data = write_lines(
        tmp_path / "d.jsonl",
        [
            json.dumps(GOOD),
            "",
            '{"completion": "x"',
            "[1, 2]",
            '{"answer": "3"}',
            json.dumps(WRONG),
        ],
    )
    rows, bad = read_rows(data)
    assert [r.line for r in rows] == [1, 6]  # line 2 is blank: skipped, not an error
    assert bad == [
        {"line": 3, "error": "malformed JSON: Expecting ',' delimiter"},
        {"line": 4, "error": "a row must be a JSON object with a string 'completion'"},
        {"line": 5, "error": "a row must be a JSON object with a string 'completion'"},
    ]


def test_missing_data_file_is_fatal(tmp_path):
    with pytest.raises(LabError, match="data file not found: .*nowhere.jsonl"):
        read_rows(tmp_path / "nowhere.jsonl")


def result(reward, latency, **kw):
    return ScoreResult(reward, {"r": reward}, latency, **kw)


def test_summarize_by_hand():
    rows = [LabRow(i, {}) for i in (1, 2, 3, 5, 6)]
    results = [
        result(1.0, 0.1),
        result(0.0, 0.4, timed_out=True),
        result(0.5, 0.2, error="ValueError: x"),
        result(0.0, 0.001, data_error="reward 'math': gold answer '?' does not parse as math"),
        result(1.0, 0.3),
    ]
    report = summarize(rows, results, [{"line": 4, "error": "malformed JSON: x"}])
    # Scored: rows 1, 2, 3, 6 -> mean (1 + 0 + 0.5 + 1) / 4 = 0.625; latencies 0.1 0.2 0.3 0.4:
    # mean 0.25, p50 nearest rank ceil(0.5 * 4) = 2nd = 0.2, p99 ceil(0.99 * 4) = 4th = 0.4.
    assert report["n"] == 4 and report["mean"] == 0.625
    assert report["errors"] == 2
    assert [e["line"] for e in report["error_rows"]] == [4, 5]
    assert report["reward_errors"] == 1 and report["timeouts"] == 1
    assert report["latency"] == pytest.approx(
        {"mean_s": 0.25, "p50_s": 0.2, "p99_s": 0.4, "max_s": 0.4}
    )


def test_compare_counts_rows_that_both_scored_and_differ():
    rows = [LabRow(i, {}) for i in (1, 2, 3, 4)]
    first = [result(1.0, 0.1), result(1.0, 0.1), result(0.0, 0.1), result(1.0, 0.1, data_error="x")]
    second = [result(1.0, 0.1), result(0.0, 0.1), result(1.0, 0.1), result(0.0, 0.1)]
    block = compare_results(rows, first, second, [])
    assert block["disagree"] == 2 and block["disagree_rows"] == [2, 3]  # row 4: first rejected it
    assert block["mean"] == 0.5 and block["n"] == 4


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One run of the lab: math against a custom reward (raw math-verify) on five lines."""
    tmp = tmp_path_factory.mktemp("lab")
    lines = [
        json.dumps(GOOD),
        json.dumps(WRONG),
        json.dumps(ROUNDS),
        "{oops",
        json.dumps({"completion": "x"}),
    ]
    data = write_lines(tmp / "data.jsonl", lines)
    out = run_lab(
        "math",
        data,
        tmp / "out" / "report.json",
        rows_out=tmp / "out" / "rows.jsonl",
        workers=2,
        compare="tests.rewards.raw_math:reward",
        plot=tmp / "out" / "lab.png",
    )
    return out, tmp / "out"


def test_report_figures(report):
    out, _ = report
    assert out["reward"] == "math" and out["n"] == 3
    assert out["mean"] == pytest.approx(1 / 3)  # only GOOD matches
    assert out["errors"] == 2
    assert [e["line"] for e in out["error_rows"]] == [4, 5]
    assert "no string field 'answer'" in out["error_rows"][1]["error"]
    assert out["timeouts"] == 0 and out["reward_errors"] == 0
    assert set(out["latency"]) == {"mean_s", "p50_s", "p99_s", "max_s"}
    assert out["workers"] == 2


def test_report_compare_block(report):
    compare = report[0]["compare"]
    # Raw math-verify matches 1/2^98 with 1/2^99 (it chops the difference): line 3 disagrees.
    assert compare["reward"] == "tests.rewards.raw_math:reward"
    assert compare["mean"] == pytest.approx(2 / 3)
    assert compare["disagree"] == 1 and compare["disagree_rows"] == [3]


def test_report_files(report):
    out, folder = report
    assert json.loads((folder / "report.json").read_text()) == out
    rows = [json.loads(line) for line in (folder / "rows.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["reward"] for r in rows] == [1.0, 0.0, 0.0, None, None]
    assert [r.get("compare_reward") for r in rows] == [1.0, 0.0, 1.0, None, None]
    assert (folder / "lab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_reward_is_fatal(tmp_path):
    data = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD)])
    with pytest.raises(LabError, match="reward 'nope': unknown reward"):
        run_lab("nope", data, tmp_path / "r.json")
    with pytest.raises(LabError, match="reward 'no_such_module:fn'"):
        run_lab("no_such_module:fn", data, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_a_reward_that_cannot_run_here_is_fatal(tmp_path):
    data = write_lines(tmp_path / "d.jsonl", [json.dumps({"completion": "NOSANDBOX"})])
    with pytest.raises(LabError, match="no sandbox here"):
        run_lab("tests.rewards.hostile:refuse_setup", data, tmp_path / "r.json", workers=1)
