r"""The code reward: run a completion's Python against a row's tests in the sandbox.

The code is the last fenced block marked ```python (or ```py, ```python3) in the completion;
failing that, the last unmarked ``` block; failing that, the text after the last `</think>`, or
the whole completion. Code longer than `MAX_CODE_CHARS` scores 0 without running.

A row carries its tests in one of two styles:

- assert-style (HumanEval, MBPP): `test` is the test code (a string: one case) or a list of
  test snippets (one case each). With `entry_point`, the test code defines `check(candidate)`
  and is called with the function the code defines under that name (HumanEval); without, it
  runs as it is (MBPP's `assert f(x) == y` lines). A case passes if it completes; the sandbox's
  harness proves completion with a per-run random token that the code cannot know
  (`rewards/harness.py`), so exiting early, skipping or raising `SystemExit` fails.
- stdin/stdout: `stdio` is a list of `{"input": str, "output": str}`. Each case is a fresh run
  of the program as `__main__` with that stdin; it passes if it exits 0 and its stdout equals
  the expected output line by line (trailing spaces and trailing blank lines ignored; a missing
  or extra line fails).

The reward is the fraction of cases that pass (`code_reward`), or 1.0 only if all pass
(`code_reward_binary`). Every run is sandboxed (`rewards.sandbox`); where the sandbox cannot
run, both raise `SandboxUnavailable` (a setup error that stops a run) instead of running code.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from .registry import RewardDataError
from .sandbox import RunResult, SandboxLimits, run_python

MAX_CODE_CHARS = 100_000
"""Longer code is not run: it scores 0."""
DEFAULT_LIMITS = SandboxLimits()
"""Limits of one run (each stdio case is one run; all assert-style cases share one)."""

_PYTHON_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_PLAIN_BLOCK = re.compile(r"```[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
    """The Python a completion gives as its answer (see the module docstring).

    >>> extract_code("Draft:\\n```python\\nx = 1\\n```\\nFinal:\\n```python\\nx = 2\\n```")
    'x = 2\\n'
    >>> extract_code("<think>easy</think>\\nprint(1)")
    '\\nprint(1)'
    """
    for block in (_PYTHON_BLOCK, _PLAIN_BLOCK):
        found = block.findall(completion)
        if found:
            return found[-1]
    return completion.rsplit("</think>", 1)[-1]


def code_reward(
    completion: str,
    *,
    test: str | list[str] | None = None,
    stdio: list[dict[str, str]] | None = None,
    entry_point: str | None = None,
    all_or_nothing: bool = False,
    limits: SandboxLimits = DEFAULT_LIMITS,
    **_: object,
) -> float:
    """Fraction of the row's test cases that the completion's code passes (module docstring).

    With `all_or_nothing`, 1.0 if every case passes, else 0.0 (stdin/stdout cases stop at the
    first failure). Raises `RewardDataError` if the row's tests are missing or malformed, and
    `SandboxUnavailable` where code cannot be run safely.
    """
    cases = _check_row(test, stdio, entry_point)
    code = extract_code(completion)
    if len(code) > MAX_CODE_CHARS:
        return 0.0
    if stdio is not None:
        results = run_stdio_cases(code, cases, limits, stop_at_failure=all_or_nothing)
    else:
        results = run_assert_cases(code, cases, entry_point, limits)
    passed = sum(results)
    if all_or_nothing:
        return 1.0 if passed == len(cases) else 0.0
    return passed / len(cases)


def code_reward_binary(completion: str, **row: Any) -> float:
    """`code_reward` all-or-nothing: 1.0 only if every test case passes."""
    return code_reward(completion, **{**row, "all_or_nothing": True})


def run_assert_cases(
    code: str, tests: list[str], entry_point: str | None, limits: SandboxLimits
) -> list[bool]:
    """Whether each assert-style test passes; one sandboxed run for all of them."""
    token = secrets.token_hex(16)
    job = {"mode": "assert", "code": code, "tests": tests, "entry_point": entry_point}
    result = run_python({**job, "token": token}, limits)
    bits = _proof(result, token, len(tests))
    return [bit == "1" for bit in bits] if bits else [False] * len(tests)


def _proof(result: RunResult, token: str, n: int) -> str | None:
    """The harness's pass/fail bits, if it printed its token line and exited 0."""
    if result.returncode != 0 or result.timed_out or result.output_overflow:
        return None
    lines = re.findall(rf"^{token} ([01]{{{n}}})$", result.stdout.decode(errors="replace"), re.M)
    return lines[0] if len(lines) == 1 else None


def run_stdio_cases(
    code: str, cases: list[dict[str, str]], limits: SandboxLimits, *, stop_at_failure: bool
) -> list[bool]:
    """Whether each stdin/stdout case passes; one sandboxed run per case."""
    results = []
    for case in cases:
        result = run_python({"mode": "stdio", "code": code}, limits, case["input"].encode())
        ok = result.returncode == 0 and not result.timed_out and not result.output_overflow
        results.append(ok and outputs_match(result.stdout.decode(errors="replace"), case["output"]))
        if stop_at_failure and not results[-1]:
            break
    return results + [False] * (len(cases) - len(results))


def outputs_match(actual: str, expected: str) -> bool:
    """Line by line, ignoring trailing whitespace on each line and trailing blank lines.

    >>> outputs_match("1 2 \\n3\\n\\n", "1 2\\n3")
    True
    >>> outputs_match("1\\n", "1\\n2")
    False
    """
    return _lines(actual) == _lines(expected)


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _check_row(test: object, stdio: object, entry_point: object) -> list:
    """The row's test cases; RewardDataError if they are missing or malformed."""
    if (test is None) == (stdio is None):
        raise RewardDataError("a code row needs exactly one of 'test' (assert-style) or 'stdio'")
    if entry_point is not None and not (
        isinstance(entry_point, str) and entry_point.isidentifier()
    ):
        raise RewardDataError(f"'entry_point' must be a Python name, got {entry_point!r}")
    if stdio is not None:
        ok = isinstance(stdio, list) and stdio and all(_is_case(c) for c in stdio)
        if not ok:
            raise RewardDataError(
                "'stdio' must be a non-empty list of {'input': str, 'output': str}"
            )
        return stdio
    cases = [test] if isinstance(test, str) else test
    if not (isinstance(cases, list) and cases and all(isinstance(t, str) and t for t in cases)):
        raise RewardDataError("'test' must be a non-empty string or list of strings")
    if entry_point is not None and not all("def check" in t for t in cases):
        raise RewardDataError("with 'entry_point', each test must define check(candidate)")
    return cases


def _is_case(case: object) -> bool:
    return (
        isinstance(case, dict)
        and isinstance(case.get("input"), str)
        and isinstance(case.get("output"), str)
    )
