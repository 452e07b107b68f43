r"""The Python interpreter as a tool: the policy writes a fenced block, r1kit's sandbox runs it.

The format is tool-integrated reasoning's (ToRL, SimpleTIR, ReTool), inside the policy's own
turn::

    ```python
    print(347 * 829)
    ```
    ```output
    287663
    ```

The policy's turn stops at the closing fence (the stop string ``"\n```\n"``, which an opening
fence never contains), the last ```python block of the turn runs as a program in the
bubblewrap sandbox that also runs the code reward (``rewards.sandbox``: no network, an
unprivileged uid, CPU, memory and process limits, killed at ``timeout_s``), and its stdout (on
an error, the last line of the traceback after it; on a timeout, a note) comes back as the
```output block, cut in the middle to ``output_chars``. Each call is a fresh process: no state
carries over between calls. Calls past ``max_tool_calls`` are not run; the policy is told.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from rewards.sandbox import SandboxLimits, run_python
from rollouts.tools.environment import Step, truncate_middle

FENCE_STOP = "\n```\n"
"""Ends a turn at a code block's closing fence."""
_OPEN = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n", re.IGNORECASE)


_OUTPUT = re.compile(r"(```output\n.*?```\n)", re.DOTALL)


def split_outputs(text: str) -> list[tuple[str, bool]]:
    """A written-out trajectory (an SFT completion) as ``(piece, is_tool_output)`` pieces: the
    ```output blocks are what the tool would have written.

    >>> split_outputs("a```output\\n1\\n```\\nb")
    [('a', False), ('```output\\n1\\n```\\n', True), ('b', False)]
    """
    pieces = _OUTPUT.split(text)
    return [(p, i % 2 == 1) for i, p in enumerate(pieces) if p]


def last_python_block(text: str) -> str | None:
    """The code of the last ```python block of ``text`` that its end closes (None if none).

    >>> last_python_block("<think>\\n```python\\nprint(1+1)\\n```\\n")
    'print(1+1)\\n'
    >>> last_python_block("```\\nplain\\n```\\n") is None
    True
    """
    opens = list(_OPEN.finditer(text))
    if not opens or not text.rstrip().endswith("```"):
        return None
    body = text[opens[-1].end() :].rstrip()
    return body[: -len("```")] if body.endswith("```") else None


class PythonTool:
    """The sandboxed interpreter as an environment (see the module docstring)."""

    stop = (FENCE_STOP,)
    observation_format = "inline"

    def __init__(
        self,
        timeout_s: float = 5.0,
        output_chars: int = 256,
        max_tool_calls: int = 4,
        memory_mb: int = 512,
    ) -> None:
        self.limits = SandboxLimits(
            wall_s=timeout_s, cpu_s=max(1, int(timeout_s)), memory_mb=memory_mb
        )
        self.output_chars = output_chars
        self.max_tool_calls = max_tool_calls
        self.calls = 0

    def reset(self, row: Mapping[str, Any]) -> None:
        self.calls = 0

    @staticmethod
    def observation(output: str) -> str:
        """A tool output written in a conversation (an SFT row's ``tool`` turn) as this
        environment shows it: the ```output block."""
        return _block(output)

    def step(self, text: str) -> Step:
        code = last_python_block(text)
        if code is None:  # the policy ended its turn (its answer), or closed a plain block
            return Step(None, done=False, void=not text.strip())
        if self.calls >= self.max_tool_calls:
            note = f"(not run: the limit of {self.max_tool_calls} tool calls is reached)"
            return Step(_block(note), done=False, tool_call=True, refused=True)
        self.calls += 1
        t0 = time.monotonic()
        result = run_python({"mode": "stdio", "code": code}, self.limits)
        latency = time.monotonic() - t0
        out = result.stdout.decode("utf-8", errors="replace")
        error = result.returncode != 0
        if result.timed_out:
            out += f"(timed out after {self.limits.wall_s:g} s)"
        elif result.output_overflow:
            out += "(output limit exceeded)"
        elif error:
            lines = result.stderr.decode("utf-8", errors="replace").strip().splitlines()
            out += lines[-1] if lines else f"(exit status {result.returncode})"
        return Step(
            _block(truncate_middle(out.rstrip("\n"), self.output_chars)),
            done=False,
            tool_call=True,
            error=error,
            timed_out=result.timed_out,
            latency_s=latency,
        )


def _block(output: str) -> str:
    return f"```output\n{output}\n```\n"
