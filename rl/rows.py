"""A stage's rows in r1kit's row contract, from a table of raw rows (``rl/sources.py``).

After loading, every row holds

- exactly one of ``prompt`` (a non-empty string, the user turn through
  ``data.prompt_template``) or ``messages`` (a list of ``{"role", "content"}`` strings whose
  last turn is the user's);
- ``answer`` (a non-empty string, after ``answer_format``): required in rl and eval rows
  (but for reasoning-gym tasks that have no one answer), kept in SFT rows that have one;
- ``completion`` (a non-empty string): required in SFT rows; an SFT conversation whose
  last user turn is followed by tool turns (assistant, tool, ..., assistant: what a
  multi-turn rollout samples) also keeps those turns as ``completion_turns``, and its
  ``completion`` is the last assistant turn;
- every other column of the dataset, as it is (nested columns stay nested; null values are
  left out). Rewards get them all as keyword arguments.

Which column fills each of those four names (``data.<stage>.fields``; a dotted path reaches
into a nested column):

- a field the recipe maps: that column;
- otherwise the column of the same name, ``messages`` before ``prompt``; an SFT row whose
  messages end with the assistant's turn takes it as its completion;
- verl's RL parquet schema is recognised by its columns (``prompt`` a list of chat messages,
  ``reward_model`` a struct): ``messages`` from ``prompt``, ``answer`` from
  ``reward_model.ground_truth``; ``data_source``, ``ability``, ``reward_model`` and
  ``extra_info`` stay as extra fields;
- a reasoning-gym task: ``prompt`` from its ``question``; ``answer``, ``metadata`` (what its
  scorer reads) and ``reasoning_gym`` (the task and its config) are kept.

A column whose name is one of the four but that fills none of them (a string ``prompt`` when
``messages`` is used, verl's chat-list ``prompt``) is left out, so the four names always mean
what this contract says. A bad row is one ``DataError`` naming the row and the field:
``train.parquet: row 17: missing or empty string field 'reward_model.ground_truth'``.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from rl.answers import ANSWER_FORMATS
from rl.config import DataSource
from rl.errors import ConfigError, DataError
from rl.sources import Table, open_table, pick

NAMES = ("prompt", "messages", "answer", "completion")
"""The fields r1kit itself reads from a row."""
REQUIRED = {"sft": ("completion",), "rl": ("answer",), "eval": ("answer",)}
"""Besides a prompt or messages."""


class RowError(ValueError):
    """What is wrong with one row; the caller adds where the row is."""


def load_rows(
    src: DataSource,
    kind: str,
    key: str,
    prompt_template: str = "{prompt}",
    recipe_seed: int = 0,
) -> list[dict[str, Any]]:
    """The rows of ``src`` for stage ``kind`` (sft, rl, eval); ``key`` is its recipe key.

    Every row is checked here, the prompt template included, so that a bad row stops the run
    before anything starts, with one error naming its file, row and field.
    """
    check_template(prompt_template)
    table = open_table(src, key, kind, recipe_seed)
    mapping = field_map(table, src, kind, f"data.{kind}")
    required = tuple(n for n in REQUIRED[kind] if n != "answer" or table.needs_answer)
    indices = pick(table.size, src.limit, src.shuffle_seed)
    rows = []
    for index, raw in zip(indices, table.read(indices), strict=True):
        try:
            row = shape_row(raw, mapping, kind, required, src.answer_format)
            _check_prompt(row, prompt_template)
        except RowError as e:
            raise DataError(f"{table.where(index)}: {e}") from None
        rows.append(row)
    return rows


def field_map(table: Table, src: DataSource, kind: str, key: str) -> dict[str, str]:
    """r1kit field -> the column (path) it comes from, for the fields this table fills;
    ``key`` is the stage's recipe key (``data.rl``), whose ``fields`` can name columns."""
    columns, first = table.columns, next(table.read(range(1)))
    explicit = {n: p for n in NAMES if (p := getattr(src.fields, n)) is not None}
    for name, path in explicit.items():
        if _top(path, columns) is None:
            raise DataError(
                f"{table.name}: no column {path!r} (recipe key {key}.fields.{name}); "
                f"its columns: {', '.join(columns)}"
            )
    defaults = dict(_schema_defaults(columns, first))
    for name in NAMES:
        if name in columns and name not in defaults.values():
            defaults.setdefault(name, name)
    mapping = dict(explicit)
    if "prompt" not in mapping and "messages" not in mapping:
        question = "messages" if "messages" in defaults else "prompt"
        if question not in defaults:
            raise DataError(
                f"{table.name}: no column 'prompt' or 'messages' (name one with recipe key "
                f"{key}.fields.prompt or {key}.fields.messages); its columns: {', '.join(columns)}"
            )
        mapping[question] = defaults[question]
    for name in ("answer", "completion"):
        if name not in mapping and name in defaults:
            mapping[name] = defaults[name]
    for name in REQUIRED[kind]:
        from_messages = name == "completion" and "messages" in mapping
        if name not in mapping and not from_messages:
            raise DataError(
                f"{table.name}: no column {name!r} (name one with recipe key {key}.fields.{name}"
                f"{', or give messages ending with the assistant turn' if kind == 'sft' else ''});"
                f" its columns: {', '.join(columns)}"
            )
    return mapping


def shape_row(
    raw: Mapping[str, Any],
    mapping: Mapping[str, str],
    kind: str,
    required: tuple[str, ...] = (),
    answer_format: str = "raw",
) -> dict[str, Any]:
    """One raw row as a row of stage ``kind`` (see the module docstring); the ``required``
    fields must have values. RowError if it cannot be."""
    row = {k: v for k, v in raw.items() if v is not None and k not in (*NAMES, "completion_turns")}
    for name, path in mapping.items():
        value = _get(raw, path)
        if name == "messages":
            row["messages"] = _turns(value, path)
        elif value is not None or name in ("prompt", *required):
            row[name] = _text(value, path, name)
    if kind == "sft" and "completion" not in mapping:
        _completion_from_messages(row, mapping["messages"])
    if "messages" in row and (not row["messages"] or row["messages"][-1]["role"] != "user"):
        last = row["messages"][-1]["role"] if row["messages"] else "none"
        raise RowError(
            f"field {mapping['messages']!r}: the last turn must be the user's, got {last!r}"
        )
    if "answer" in row:
        try:
            row["answer"] = ANSWER_FORMATS[answer_format](row["answer"])
        except ValueError as e:
            raise RowError(
                f"field {mapping['answer']!r} (answer_format {answer_format}): {e}"
            ) from None
    return row


def _completion_from_messages(row: dict[str, Any], path: str) -> None:
    """An SFT row's completion: its last turn, the assistant's; or, when tool turns come
    after the last user turn (assistant, tool, assistant, ...), all of those turns as
    ``completion_turns`` and the last assistant turn's content as ``completion``."""
    turns = row["messages"]
    if turns[-1]["role"] != "assistant":
        raise RowError(
            f"field {path!r}: no completion, and the last turn is "
            f"the {turns[-1]['role']}'s, not the assistant's"
        )
    start = len(turns)
    while start > 0 and turns[start - 1]["role"] in ("assistant", "tool"):
        start -= 1
    trailing = turns[start:]
    if len(trailing) == 1 or not any(t["role"] == "tool" for t in trailing):
        last = turns.pop()
        if last.get("tool_calls"):
            raise RowError(f"field {path!r}: the last assistant turn calls a tool: no answer")
        row["completion"] = _text(last["content"], path, "completion")
        return
    for i, turn in enumerate(trailing):
        want = "assistant" if i % 2 == 0 else "tool"
        if turn["role"] != want:
            raise RowError(
                f"field {path!r}: turn {start + i} is the {turn['role']}'s; after the last "
                "user turn, assistant and tool turns must alternate"
            )
    del turns[start:]
    row["completion_turns"] = trailing
    row["completion"] = _text(trailing[-1]["content"], path, "completion")


def check_template(template: str) -> None:
    """Refuse a prompt template that ``str.format`` cannot use with a row's named fields."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"recipe key 'data.prompt_template': {e} in {template!r}") from None
    for _, name, _, _ in parts:
        if name is not None and (name == "" or name.isdigit()):
            raise ConfigError(
                f"recipe key 'data.prompt_template': {{{name}}} is positional; name a row field"
            )


def _check_prompt(row: dict[str, Any], template: str) -> None:
    if "messages" in row:
        return
    try:
        template.format_map(row)
    except KeyError as e:
        raise RowError(f"prompt_template needs field {e.args[0]!r}") from None
    except (AttributeError, IndexError, TypeError, ValueError) as e:
        raise RowError(f"prompt_template {template!r}: {type(e).__name__}: {e}") from None


def _schema_defaults(columns: list[str], first: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The fields a known schema puts in other columns: verl parquet, reasoning-gym."""
    if "reasoning_gym" in columns and "question" in columns:
        return [("prompt", "question")]
    verl = isinstance(first.get("prompt"), list) and isinstance(first.get("reward_model"), dict)
    if verl:
        return [("messages", "prompt"), ("answer", "reward_model.ground_truth")]
    return []


def _top(path: str, columns: list[str]) -> str | None:
    """The column a dotted path starts in (a column may itself have a dot in its name)."""
    if path in columns:
        return path
    head = path.split(".", 1)[0]
    return head if head in columns else None


def _get(raw: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``reward_model.ground_truth``, ``turns.0``); None if absent."""
    if path in raw:
        return raw[path]
    node: Any = raw
    for part in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _text(value: Any, path: str, name: str) -> str:
    if value is None or value == "":
        raise RowError(f"missing or empty string field {path!r}" + _as(path, name))
    if not isinstance(value, str):
        raise RowError(
            f"field {path!r} must be a string, got {type(value).__name__}" + _as(path, name)
        )
    return value


def _as(path: str, name: str) -> str:
    return "" if path == name else f" (the row's {name})"


def _turns(value: Any, path: str) -> list[dict[str, Any]]:
    """A conversation as a list of {"role", "content"} strings (null keys dropped); an
    assistant turn may instead call tools (``tool_calls``, OpenAI style, content optional)."""
    if not isinstance(value, list) or not value:
        raise RowError(f"field {path!r} must be a non-empty list of chat turns, got {value!r:.60}")
    turns = []
    for i, turn in enumerate(value):
        turn = (
            {k: v for k, v in turn.items() if v is not None} if isinstance(turn, Mapping) else turn
        )
        calls = isinstance(turn, dict) and turn.get("role") == "assistant" and "tool_calls" in turn
        if calls and not (
            isinstance(turn["tool_calls"], list)
            and turn["tool_calls"]
            and all(isinstance(c, Mapping) for c in turn["tool_calls"])
        ):
            raise RowError(f"field {path!r}: turn {i}: 'tool_calls' must be a list of calls")
        if calls and "content" not in turn:
            turn["content"] = ""
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("role"), str)
            and isinstance(turn.get("content"), str)
        ):
            raise RowError(f"field {path!r}: turn {i} must have string 'role' and 'content'")
        turns.append(turn)
    return turns
