"""What a multi-turn rollout talks to: an environment that reads each policy turn and answers.

An environment is any object with

- ``stop``: strings that end a policy turn early for it (a tool call's closing fence), and
  ``observation_format``: ``"inline"`` (the observation's text continues the policy's own
  turn, as tool-integrated reasoning does with ```output blocks) or ``"tool_message"`` (the
  policy ends its turn, the observation is a ``tool`` message rendered by the model's chat
  template, and a new assistant turn opens);
- ``reset(row)``: a new episode for a dataset row (the prompt's row, all its columns);
- ``step(text) -> Step`` or ``(observation, done, reward)``: ``text`` is the policy's turn
  (decoded from the sampled tokens, stop string included); ``observation`` is appended as
  tool output (loss mask 0) and generation continues, unless ``done``. ``reward`` is the
  environment's own score of the episode (None: it gives none), which rewards can read.

Optionally, ``observation(output) -> str``: how a tool output written in a conversation
(an SFT row's ``tool`` turn) reads in an ``inline`` environment's turn (the python tool: a
```output block); without it the output is used as written.

With ``observation_format: inline``, a turn the policy ends itself (end of turn / eos) ends
the episode. ``step`` runs in a thread of the rollout worker while other samples decode;
it may block (a sandboxed process) but must not touch the engine.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Step:
    """An environment's answer to one policy turn."""

    observation: str | None
    """Tool output to append (None: nothing; the episode ends or the policy continues)."""
    done: bool
    reward: float | None = None
    tool_call: bool = False
    """The turn held a tool call that ran (or was refused)."""
    error: bool = False
    """The call failed (raised, exited non-zero, malformed): its error is the observation."""
    timed_out: bool = False
    refused: bool = False
    """A call past the episode's ``max_tool_calls``: not run."""
    void: bool = False
    """Neither a tool call nor an answer (SimpleTIR's void turn)."""
    latency_s: float = 0.0


class Environment(Protocol):
    stop: tuple[str, ...]
    observation_format: str

    def reset(self, row: Mapping[str, Any]) -> None: ...

    def step(self, text: str) -> Step | tuple[str | None, bool, float | None]: ...


def as_step(result: Step | tuple) -> Step:
    """A user environment's ``(observation, done, reward)`` as a ``Step``."""
    if isinstance(result, Step):
        return result
    try:
        observation, done, reward = result
    except (TypeError, ValueError):
        raise TypeError(
            f"an environment's step() returns a Step or (observation, done, reward), got {result!r}"
        ) from None
    if observation is not None and not isinstance(observation, str):
        raise TypeError(f"an observation is a string or None, got {type(observation).__name__}")
    return Step(observation, bool(done), None if reward is None else float(reward))


def load_object(spec: str, what: str) -> Any:
    """``module:name`` -> the object, with an error that names ``spec``."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"{what} {spec!r}: expected 'module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import {module_name!r}: {e}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"{what} {spec!r}: {module_name!r} has no {name!r}") from None


def truncate_middle(text: str, chars: int) -> str:
    """``text`` cut to about ``chars`` characters, keeping its head and tail (where a
    traceback's first frame and its error line are).

    >>> truncate_middle("abcdefghij", 6)
    'abc\\n...(4 chars cut)...\\nhij'
    """
    if len(text) <= chars:
        return text
    head, tail = (chars + 1) // 2, chars // 2
    return f"{text[:head]}\n...({len(text) - head - tail} chars cut)...\n{text[len(text) - tail :]}"
