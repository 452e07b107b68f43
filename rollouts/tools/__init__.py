"""Tools a policy calls during a rollout, and the environments that run them.

``ToolSpec`` is what crosses to a rollout worker (plain, picklable); ``make_environment``
builds a fresh environment from it for each sample there. Environments: ``python`` (the
sandboxed interpreter, ``rollouts.tools.python``), ``functions`` (typed Python functions in
the chat template's tool-call format, ``rollouts.tools.functions``), or a user class named
``module:Class`` (``rollouts.tools.environment`` says what it implements).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rollouts.tools.environment import Environment, Step, as_step, load_object

__all__ = ["Environment", "Step", "ToolSpec", "as_step", "make_environment"]


@dataclass(frozen=True)
class ToolSpec:
    """How a multi-turn rollout runs (the recipe's ``tools`` section, resolved)."""

    environment: str = "python"
    """``python``, ``functions`` or ``module:Class``."""
    functions: tuple[str, ...] = ()
    """``module:function`` names, for ``functions``."""
    max_turns: int = 4
    """Policy turns per sample; a sample still calling tools after the last is truncated."""
    max_tool_calls: int = 3
    """Calls run per sample; later ones are answered "not run"."""
    max_turn_tokens: int | None = None
    """Tokens one turn may sample (None: the sample's remaining budget)."""
    output_chars: int = 256
    """A tool's output is cut in the middle to this many characters."""
    timeout_s: float = 5.0
    """Seconds one call may run."""
    workers: int = 8
    """Calls that run at once in a rollout worker (while the others decode)."""
    env_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for a ``module:Class`` environment."""


def make_environment(spec: ToolSpec) -> Environment:
    """A new environment for one sample."""
    limits = {
        "timeout_s": spec.timeout_s,
        "output_chars": spec.output_chars,
        "max_tool_calls": spec.max_tool_calls,
    }
    if spec.environment == "python":
        from rollouts.tools.python import PythonTool

        return PythonTool(**limits)
    if spec.environment == "functions":
        from rollouts.tools.functions import FunctionTools, load_functions

        return FunctionTools(load_functions(spec.functions), **limits)
    cls = load_object(spec.environment, "tools.environment")
    env = cls(**spec.env_args)
    for attr in ("reset", "step"):
        if not callable(getattr(env, attr, None)):
            raise TypeError(f"tools.environment {spec.environment!r} has no {attr}() method")
    return env
