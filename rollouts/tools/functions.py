"""Typed Python functions as tools, called in the model family's own format.

A tool is a plain function with type hints and a Google-style docstring (its JSON schema is
what ``transformers.utils.get_json_schema`` makes of it, and what the chat template shows the
policy). The policy calls it the way Qwen2.5/Qwen3/Hermes-style templates teach::

    <tool_call>
    {"name": "multiply", "arguments": {"a": 347, "b": 829}}
    </tool_call>

then ends its turn; each call's result (``str`` of the return value, or ``error: ...``)
comes back as a ``tool`` message rendered by the model's chat template (loss mask 0), and a
new assistant turn opens. A turn without a call ends the episode. Malformed JSON, an unknown
name, wrong arguments or an exception inside the function become the tool's output, never an
error of the run. The functions run in the rollout worker's process (they are the user's own
code, not the model's: nothing is sandboxed); a call still running after ``timeout_s`` is
reported as timed out (its thread cannot be killed and finishes in the background).
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rollouts.tools.environment import Step, load_object, truncate_middle

_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def tool_schemas(functions: Sequence[Callable]) -> list[dict]:
    """The JSON schemas a chat template renders (``apply_chat_template(tools=...)``)."""
    from transformers.utils import get_json_schema

    return [get_json_schema(fn) for fn in functions]


def load_functions(specs: Sequence[str]) -> list[Callable]:
    """``module:function`` names -> the functions (one clear error per bad name)."""
    functions = [load_object(spec, "tool") for spec in specs]
    for spec, fn in zip(specs, functions, strict=True):
        if not callable(fn):
            raise ValueError(f"tool {spec!r} is not a function")
    return functions


class FunctionTools:
    """Typed functions as an environment (see the module docstring)."""

    stop: tuple[str, ...] = ()  # the policy ends its turn after its calls
    observation_format = "tool_message"

    def __init__(
        self,
        functions: Sequence[Callable],
        timeout_s: float = 5.0,
        output_chars: int = 256,
        max_tool_calls: int = 4,
    ) -> None:
        self.functions = {fn.__name__: fn for fn in functions}
        self.timeout_s = timeout_s
        self.output_chars = output_chars
        self.max_tool_calls = max_tool_calls
        self.calls = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def reset(self, row: Mapping[str, Any]) -> None:
        self.calls = 0

    def step(self, text: str) -> Step:
        calls = _CALL.findall(text)
        if not calls:
            return Step(None, done=True, void=not text.strip())
        if self.calls >= self.max_tool_calls:
            note = f"not run: the limit of {self.max_tool_calls} tool calls is reached"
            return Step(note, done=False, tool_call=True, refused=True)
        self.calls += 1
        t0 = time.monotonic()
        outputs, error, timed_out = [], False, False
        for raw in calls:
            out, failed, late = self._call(raw)
            outputs.append(out)
            error, timed_out = error or failed, timed_out or late
        return Step(
            truncate_middle("\n".join(outputs), self.output_chars),
            done=False,
            tool_call=True,
            error=error,
            timed_out=timed_out,
            latency_s=time.monotonic() - t0,
        )

    def _call(self, raw: str) -> tuple[str, bool, bool]:
        """One call's output, whether it failed, whether it timed out."""
        try:
            call = json.loads(raw)
            name, arguments = call["name"], call.get("arguments", {})
            if isinstance(arguments, str):  # some templates serialise the arguments twice
                arguments = json.loads(arguments)
            if not isinstance(arguments, dict):
                raise TypeError("arguments must be an object")
        except (ValueError, KeyError, TypeError) as e:
            return f"error: malformed tool call ({type(e).__name__}: {e})", True, False
        fn = self.functions.get(name) if isinstance(name, str) else None
        if fn is None:
            return f"error: no tool named {name!r} (tools: {sorted(self.functions)})", True, False
        future = self._pool.submit(fn, **arguments)
        try:
            result = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # leave it behind
            return f"error: {name} timed out after {self.timeout_s:g} s", True, True
        except Exception as e:  # the tool's own failure (or bad arguments) is its output
            return f"error: {type(e).__name__}: {e}", True, False
        return (
            (result if isinstance(result, str) else json.dumps(result, default=str)),
            False,
            False,
        )
