"""Open a stage's data source as a table of raw rows, whatever it is, through ``datasets``.

A source (``DataSource``, a recipe's ``data.sft`` / ``data.rl`` / ``data.eval``) is one of

- a local file: ``.jsonl`` (read line by line here, as JSON types it), ``.json`` (datasets'
  json builder), ``.parquet``, ``.csv`` (every
  column read as text: ``007`` stays ``007``), ``.arrow``; compressed ``.gz`` / ``.bz2`` /
  ``.xz`` / ``.zst`` too. A single file is one split;
- a folder written by ``datasets``' ``save_to_disk`` (``load_from_disk``), or any other
  folder of data files (``load_dataset(folder, split=...)``: its file names give the splits);
- a Hugging Face hub dataset name (``openai/gsm8k``), through the same
  ``load_dataset(path, name=..., split=...)`` call as a folder; it needs network on first use
  (then the datasets cache);
- a reasoning-gym task by name, generated offline.

Outside JSONL nothing is converted to Python rows here: a ``Table`` reads the rows a caller
picks (``pick``: the first ``limit``, or a shuffled sample of that many), so a large dataset
stays memory-mapped Arrow on disk and only the rows kept become dicts. A table also says where each
row is, for error messages: ``train.jsonl:3`` (the line) for JSONL, ``train.parquet: row 17``
(the 0-based index) for everything else.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl.config import DataSource
from rl.errors import DataError

BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}
"""A data file's suffix -> the ``datasets`` builder that reads it."""
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
STAGE_SEEDS = {"sft": 0, "rl": 1, "eval": 2}
"""Added to the recipe's seed for a reasoning-gym task without a seed of its own."""
REASONING_GYM_COLUMNS = ["question", "answer", "metadata", "reasoning_gym"]


@dataclass
class Table:
    """A source's raw rows: how many, read by index, and where each one is."""

    name: str
    """The source in messages: a path, ``openai/gsm8k (main, test)``, ``reasoning_gym countdown``."""
    columns: list[str]
    size: int
    read: Callable[[Sequence[int]], Iterator[dict[str, Any]]]
    """The rows at these indices, in that order."""
    where: Callable[[int], str]
    """Row ``index`` in an error message: ``train.jsonl:4``, ``train.parquet: row 17``."""
    needs_answer: bool = True
    """False for reasoning-gym tasks: some have no one answer (graph_color, rush_hour, ...);
    their scorer checks a completion against the row's metadata."""


def open_table(src: DataSource, key: str, stage: str = "rl", recipe_seed: int = 0) -> Table:
    """The table of ``src``, the recipe's ``key`` (``data.rl``); errors name the key."""
    if src.reasoning_gym:
        seed = src.seed if src.seed is not None else recipe_seed + STAGE_SEEDS[stage]
        return _reasoning_gym(src, key, seed)
    path = Path(src.path).expanduser()
    if path.is_file():
        return _file(path, src, key)
    if path.is_dir():
        return _folder(path, src, key)
    if _looks_local(src.path):
        raise DataError(f"data file not found: {path} (recipe key {key})")
    return _load_dataset(src.path, src, key)


def pick(size: int, limit: int | None, shuffle_seed: int | None) -> Sequence[int]:
    """Indices of the rows to read: the first ``limit``, or ``limit`` drawn at random.

    >>> list(pick(5, 3, None)), sorted(pick(5, None, 0))
    ([0, 1, 2], [0, 1, 2, 3, 4])
    """
    count = size if limit is None else min(limit, size)
    if shuffle_seed is None:
        return range(count)
    return random.Random(shuffle_seed).sample(range(size), count)


def _looks_local(path: str) -> bool:
    """A path that cannot be a hub name (``owner/name``): a file suffix, ``./``, ``/``, ``~``."""
    p = Path(path)
    suffixes = [s for s in p.suffixes if s not in COMPRESSIONS]
    return (
        path.startswith((".", "/", "~"))
        or bool(suffixes and suffixes[-1] in BUILDERS)
        or path.count("/") > 1
    )


def _file(path: Path, src: DataSource, key: str) -> Table:
    if src.split not in (None, "train"):
        raise DataError(
            f"recipe key {key}.split: {path} is a single file, which is one split; "
            "drop split, or point path at a folder with a file per split"
        )
    suffixes = [s for s in path.suffixes if s not in COMPRESSIONS]
    builder = BUILDERS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        known = ", ".join(BUILDERS)
        raise DataError(f"{path}: not a data file r1kit reads ({known}) (recipe key {key})")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: no rows (recipe key {key})")
    options: dict[str, Any] = {}
    if builder == "csv":  # every column as text, and only an empty cell is missing
        options = {"features": _text_features(path), "keep_default_na": False, "na_values": [""]}
    if suffixes[-1] == ".jsonl":  # read here: exact JSON types and line numbers, which
        return _jsonl_table(path)  # Arrow's one-type-per-column inference loses
    import datasets

    try:
        with _quiet():
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except (datasets.exceptions.DatasetsError, ValueError) as e:  # pyarrow's errors too
        raise DataError(f"{path}: datasets cannot read it as {builder}: {_cause(e)}") from None
    return _dataset_table(ds, str(path))


def _jsonl_table(path: Path) -> Table:
    """A JSONL file (compressed too) read line by line, each row as JSON typed it: Arrow would
    give a column one type (``"3"`` next to ``6`` turns into integers) and lose line numbers.
    A line that is not a JSON object raises its error here, naming the line."""
    rows, lines = [], []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: a row must be a JSON object")
            rows.append(row)
            lines.append(lineno)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return Table(
        str(path),
        columns,
        len(rows),
        lambda indices: (rows[i] for i in indices),
        lambda i: f"{path}:{lines[i]}",
    )


def _folder(path: Path, src: DataSource, key: str) -> Table:
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        import datasets

        if src.name is not None:
            raise DataError(f"recipe key {key}.name: {path} holds one saved dataset, no configs")
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            split = src.split or "train"
            if split not in ds:
                raise DataError(
                    f"{path}: no split {split!r} (recipe key {key}.split); it has {list(ds)}"
                )
            ds = ds[split]
        elif src.split not in (None, "train"):
            raise DataError(f"recipe key {key}.split: {path} holds one saved split")
        return _dataset_table(ds, str(path))
    with _quiet():
        return _load_dataset(str(path), src, key)


def _load_dataset(path: str, src: DataSource, key: str) -> Table:
    """``datasets.load_dataset(path, name=..., split=...)``: a hub name, or a local folder."""
    import datasets

    split = src.split or "train"
    try:
        ds = datasets.load_dataset(path, name=src.name, split=split)
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataError(
            f"recipe key {key}.path: cannot load {path!r}: no such local file or folder, and "
            f"the Hugging Face hub does not give it here ({_cause(e)}). On a machine without "
            "network, download it once where there is (then HF_DATASETS_OFFLINE=1 reads the "
            "cache), or point path at a local file"
        ) from None
    except ValueError as e:  # an unknown split or config: datasets names the choices
        raise DataError(f"recipe key {key}: {path}: {e}") from None
    shown = ", ".join(p for p in (src.name, split) if p)
    return _dataset_table(ds, f"{path} ({shown})")


def _dataset_table(ds: Any, name: str) -> Table:
    def read(indices: Sequence[int]) -> Iterator[dict[str, Any]]:
        whole = isinstance(indices, range) and indices == range(len(ds))
        yield from ds if whole else ds.select(indices)

    if len(ds) == 0:
        raise DataError(f"{name}: no rows")
    return Table(name, list(ds.column_names), len(ds), read, lambda i: f"{name}: row {i}")


def _reasoning_gym(src: DataSource, key: str, seed: int) -> Table:
    import reasoning_gym

    task, config = src.reasoning_gym, dict(src.config)
    if task not in reasoning_gym.factory.DATASETS:
        raise DataError(
            f"recipe key {key}.reasoning_gym: no reasoning-gym task {task!r}; tasks: "
            + ", ".join(sorted(reasoning_gym.factory.DATASETS))
        )
    if {"size", "seed"} & config.keys():
        raise DataError(f"recipe key {key}.config: set size and seed as {key}.size / {key}.seed")
    options = {"seed": seed, **({"size": src.size} if src.size else {})}
    try:
        generated = reasoning_gym.create_dataset(task, **options, **config)
    except (TypeError, ValueError, AssertionError) as e:  # its config dataclass refused a key
        raise DataError(f"recipe key {key}.config: reasoning-gym {task}: {e}") from None
    scorer = {"task": task, "config": config}

    def read(indices: Sequence[int]) -> Iterator[dict[str, Any]]:
        for i in indices:
            yield {**generated[i], "reasoning_gym": scorer}

    name = f"reasoning_gym {task}"
    return Table(
        name, REASONING_GYM_COLUMNS, len(generated), read, lambda i: f"{name}: row {i}", False
    )


def _text_features(path: Path) -> Any:
    """Features that read every column of a CSV file (named by its header) as a string."""
    import datasets

    with _open_text(path) as f:
        header = next(csv.reader(f), None)
    if not header:
        raise DataError(f"{path}: no header row")
    return datasets.Features({name: datasets.Value("string") for name in header})


def _open_text(path: Path) -> Any:
    if path.suffix in COMPRESSIONS:
        import fsspec

        return fsspec.open(str(path), "rt", compression="infer", newline="").open()
    return path.open(newline="")


def _cause(e: BaseException) -> str:
    """The innermost reason of a (datasets-wrapped) exception, as one line."""
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars or warnings from datasets while it reads a local file: a bad file is
    then one error line, not a page of logs."""
    import datasets
    from datasets.utils import logging as ds_logging

    bars, verbosity = datasets.is_progress_bar_enabled(), ds_logging.get_verbosity()
    datasets.disable_progress_bars()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
