"""The data a recipe trains and evaluates on: each stage's rows from its source, held-out rows
kept apart from training rows, and the order a stage draws its rows in.

``load_rows`` (``rl/rows.py``) reads a source (a file, folder, hub dataset or reasoning-gym
task: ``rl/sources.py``) into rows of r1kit's row contract; ``read_rows`` is its shorthand for
one file.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from model.chat import ChatFormat
from rl.config import DataConfig, DataSource
from rl.errors import DataError
from rl.rows import load_rows

__all__ = [
    "STAGES",
    "DataOrder",
    "check_disjoint",
    "load_rows",
    "read_rows",
    "stage_sources",
    "write_rows",
]

STAGES = ("sft", "rl", "eval")


def stage_sources(cfg: DataConfig) -> dict[str, tuple[DataSource, str]]:
    """The source each stage names (``data.<stage>``, or its ``data.<stage>_file``
    shorthand) with that recipe key; stages that name none are absent."""
    sources = {}
    for kind in STAGES:
        src, file = getattr(cfg, kind), getattr(cfg, f"{kind}_file")
        if src.path or src.reasoning_gym:
            sources[kind] = (src, f"data.{kind}")
        elif file:
            sources[kind] = (DataSource(path=file), f"data.{kind}_file")
    return sources


def read_rows(path: str | Path, kind: str, key: str = "") -> list[dict[str, Any]]:
    """Rows of a data file of ``kind`` (sft, rl, eval); ``key`` names the recipe key."""
    return load_rows(DataSource(path=str(path)), kind, key or f"data.{kind}_file")


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSONL (one object per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def check_disjoint(
    train: list[dict],
    held_out: list[dict],
    source: str,
    system_prompt: str | None = None,
    prompt_template: str = "{prompt}",
) -> None:
    """Refuse a held-out set whose questions also appear in training data.

    Two rows ask the same question when the conversations they ask the policy to continue
    (``ChatFormat.messages``: the system prompt, then the row's messages or its prompt through the
    prompt template) are equal, compared as canonical JSON of the turns' roles and contents:
    a prompt row and a messages row with the same user turn match, and no tokenizer is needed
    (a preset's is built from the data).
    """
    chat = ChatFormat(None, system_prompt, prompt_template)
    seen = {_conversation(chat, r) for r in train}
    overlap = [r for r in held_out if _conversation(chat, r) in seen]
    if overlap:
        question = chat.messages(overlap[0])[-1]["content"]
        raise DataError(
            f"{source}: {len(overlap)} held-out prompts also in training data, e.g. {question!r}"
        )


def _conversation(chat: ChatFormat, row: dict) -> str:
    turns = [[t["role"], t["content"]] for t in chat.messages(row)]
    return json.dumps(turns, ensure_ascii=False)


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
