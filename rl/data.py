"""Read and write the JSONL data a recipe trains and evaluates on, row by row, with errors
that name the file and line; the order a stage draws its rows in."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rl.errors import DataError

REQUIRED = {
    "sft": ("prompt", "completion"),
    "rl": ("prompt", "answer"),
    "eval": ("prompt", "answer"),
}


def read_rows(path: str | Path, kind: str, key: str = "") -> list[dict[str, Any]]:
    """Rows of a JSONL file of ``kind`` (sft, rl, eval); ``key`` names the recipe key."""
    path = Path(path)
    where = f" (recipe key {key})" if key else ""
    if not path.is_file():
        raise DataError(f"data file not found: {path}{where}")
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: a row must be a JSON object")
            for name in REQUIRED[kind]:
                if not isinstance(row.get(name), str) or not row[name]:
                    raise DataError(f"{path}:{lineno}: missing or empty string field '{name}'")
            if "answer" in row and not isinstance(row["answer"], str):
                raise DataError(f"{path}:{lineno}: field 'answer' must be a string")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows{where}")
    return rows


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSONL (one object per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def check_disjoint(train: list[dict], held_out: list[dict], source: str) -> None:
    """Refuse a held-out set whose prompts also appear in training data."""
    seen = {r["prompt"] for r in train}
    overlap = [r["prompt"] for r in held_out if r["prompt"] in seen]
    if overlap:
        raise DataError(
            f"{source}: {len(overlap)} held-out prompts also in training data, e.g. {overlap[0]!r}"
        )


class DataOrder:
    """Endless shuffled passes over range(n); its position can be saved and restored."""

    def __init__(self, n: int, seed: int, position: int = 0) -> None:
        self.n, self.seed, self.position = n, seed, 0
        self._it = self._passes()
        for _ in range(position):
            next(self)

    def _passes(self) -> Iterator[int]:
        rng = random.Random(self.seed)
        while True:
            order = list(range(self.n))
            rng.shuffle(order)
            yield from order

    def __iter__(self) -> DataOrder:
        return self

    def __next__(self) -> int:
        self.position += 1
        return next(self._it)

    def take(self, k: int) -> list[int]:
        return [next(self) for _ in range(k)]
