"""The reward lab: score a JSONL file of completions offline, and compare two graders.

`r1kit eval-rewards --reward NAME --data FILE.jsonl --out REPORT.json [--rows-out ROWS.jsonl]
[--workers N] [--timeout S] [--compare NAME2] [--plot FILE.png] [--unsafe-no-sandbox]`
(`rl/cli.py` only parses the arguments; `run_lab` does the work).

The data file has one JSON object per line: a string "completion" and the fields the reward
reads ("answer" for math; "test" and "entry_point", or "stdio", for code; see each reward).
Blank lines are skipped. A line that is not a JSON object with a string "completion", or a row
the reward rejects (`RewardDataError`: a missing or unparsable gold answer, malformed tests), is
not scored: it is counted in "errors" and listed with its line number. Rows are scored in a
`RewardPool` (parallel worker processes, each sample killed after `timeout_s`).

The report (REPORT.json):

    {"reward": NAME, "data": FILE,
     "n": rows scored, "mean": mean reward over them (null if none),
     "errors": rows not scored, "error_rows": [{"line": int, "error": str}, ...],
     "reward_errors": scored rows whose reward raised on the completion (scored 0),
     "timeouts": scored rows that ran out of time (scored 0),
     "latency": {"mean_s", "p50_s", "p99_s", "max_s"} per scored row,
     "workers": int, "timeout_s": float, "wall_s": float,
     "compare": {"reward": NAME2, "n", "mean", "errors", "reward_errors", "timeouts",
                 "latency": {...}, "disagree": rows whose two rewards differ,
                 "disagree_rows": [line numbers]}}          (only with --compare)

--rows-out writes one JSON object per data line that was read: {"line", "reward",
"latency_s", "timed_out", "error", "data_error"} (and "compare_reward" with --compare).
Fatal errors raise `LabError`: a missing data file, an unknown reward, a reward that cannot
run here (no sandbox for code); the CLI prints them as one line and exits non-zero.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .pool import RewardPool, ScoreResult, default_num_workers, stats
from .registry import RewardSetupError
from .sandbox import UNSAFE_ENV

DEFAULT_TIMEOUT_S = 30.0
"""Seconds one row may take (all the sandboxed runs of a code row together)."""


class LabError(Exception):
    """A fatal error of the reward lab (the user's to fix): nothing was scored."""


@dataclass(frozen=True)
class LabRow:
    """One data row and where it came from."""

    line: int
    row: dict[str, Any]


def run_lab(
    reward: str,
    data: str | Path,
    out: str | Path,
    *,
    rows_out: str | Path | None = None,
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    compare: str | None = None,
    plot: str | Path | None = None,
    unsafe_no_sandbox: bool = False,
) -> dict[str, Any]:
    """Score `data` with `reward` (and `compare`), write the report (module docstring).

    `unsafe_no_sandbox` sets `R1KIT_UNSAFE_NO_SANDBOX=1` in this process's environment (the
    pool's workers inherit it): code rewards then run without isolation where bubblewrap
    cannot run.
    """
    if unsafe_no_sandbox:
        os.environ[UNSAFE_ENV] = "1"  # the pool's workers inherit it
    start = time.monotonic()
    rows, bad_lines = read_rows(data)
    results = score_rows(reward, rows, workers=workers, timeout_s=timeout_s)
    report = summarize(rows, results, bad_lines)
    report = {"reward": reward, "data": str(data), **report}
    other = None
    if compare is not None:
        other = score_rows(compare, rows, workers=workers, timeout_s=timeout_s, label=compare)
        report["compare"] = {"reward": compare, **compare_results(rows, results, other, bad_lines)}
    report |= {"workers": workers or default_num_workers(), "timeout_s": timeout_s}
    report["wall_s"] = round(time.monotonic() - start, 3)
    _write_json(out, report)
    if rows_out is not None:
        _write_rows(rows_out, rows, results, other, bad_lines)
    if plot is not None:
        from .lab_plot import plot_lab

        plot_lab(plot, reward, results, compare, other)
    return report


def read_rows(path: str | Path) -> tuple[list[LabRow], list[dict[str, Any]]]:
    """The rows of a JSONL file, and the lines that are not rows ({"line", "error"})."""
    path = Path(path)
    if not path.is_file():
        raise LabError(f"data file not found: {path}")
    rows, bad = [], []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append({"line": number, "error": f"malformed JSON: {exc.msg}"})
                continue
            if not isinstance(row, dict) or not isinstance(row.get("completion"), str):
                error = "a row must be a JSON object with a string 'completion'"
                bad.append({"line": number, "error": error})
                continue
            rows.append(LabRow(number, row))
    return rows, bad


def score_rows(
    reward: str,
    rows: list[LabRow],
    *,
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    label: str | None = None,
) -> list[ScoreResult]:
    """Score every row with `reward` in a pool, with a progress bar (on a terminal)."""
    try:
        pool = RewardPool({reward: 1.0}, num_workers=workers, timeout_s=timeout_s)
    except (ValueError, ImportError) as exc:
        raise LabError(f"reward {reward!r}: {exc}") from None
    results: list[ScoreResult] = []
    chunk = 4 * pool.num_workers
    with pool, tqdm(total=len(rows), desc=label or reward, unit="row", disable=None) as bar:
        for start in range(0, len(rows), chunk):
            batch = rows[start : start + chunk]
            completions = [r.row["completion"] for r in batch]
            try:
                results += pool.score(completions, [r.row for r in batch], on_data_error="report")
            except RewardSetupError as exc:
                raise LabError(str(exc)) from None
            bar.update(len(batch))
    return results


def summarize(
    rows: list[LabRow], results: list[ScoreResult], bad_lines: list[dict]
) -> dict[str, Any]:
    """The report's figures for one reward (its "compare" block has the same keys)."""
    scored = [r for r in results if r.data_error is None]
    error_rows = bad_lines + [
        {"line": row.line, "error": result.data_error}
        for row, result in zip(rows, results, strict=True)
        if result.data_error is not None
    ]
    counts = stats(scored)
    latencies = sorted(r.latency_s for r in scored)
    return {
        "n": len(scored),
        "mean": sum(r.reward for r in scored) / len(scored) if scored else None,
        "errors": len(error_rows),
        "error_rows": sorted(error_rows, key=lambda e: e["line"]),
        "reward_errors": counts["reward_errors"],
        "timeouts": counts["reward_timeouts"],
        "latency": {
            "mean_s": counts["reward_latency_mean_s"],
            "p50_s": _nearest_rank(latencies, 0.5),
            "p99_s": counts["reward_latency_p99_s"],
            "max_s": latencies[-1] if latencies else 0.0,
        },
    }


def compare_results(
    rows: list[LabRow], first: list[ScoreResult], second: list[ScoreResult], bad_lines: list[dict]
) -> dict[str, Any]:
    """The second reward's figures and where the two disagree (rows both scored)."""
    figures = summarize(rows, second, bad_lines)
    del figures["error_rows"]
    disagree = [
        row.line
        for row, a, b in zip(rows, first, second, strict=True)
        if a.data_error is None and b.data_error is None and not math.isclose(a.reward, b.reward)
    ]
    return {**figures, "disagree": len(disagree), "disagree_rows": disagree}


def _nearest_rank(values: list[float], q: float) -> float:
    return values[math.ceil(q * len(values)) - 1] if values else 0.0


def _write_json(path: str | Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_rows(
    path: str | Path,
    rows: list[LabRow],
    results: list[ScoreResult],
    other: list[ScoreResult] | None,
    bad_lines: list[dict],
) -> None:
    out = [{"line": b["line"], "reward": None, "data_error": b["error"]} for b in bad_lines]
    for i, (row, result) in enumerate(zip(rows, results, strict=True)):
        record = {
            "line": row.line,
            "reward": None if result.data_error else result.reward,
            "latency_s": round(result.latency_s, 6),
            "timed_out": result.timed_out,
            "error": result.error,
            "data_error": result.data_error,
        }
        if other is not None:
            record["compare_reward"] = None if other[i].data_error else other[i].reward
        out.append(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for record in sorted(out, key=lambda r: r["line"]):
            f.write(json.dumps(record) + "\n")
