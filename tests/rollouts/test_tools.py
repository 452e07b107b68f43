"""The tools a policy calls in a rollout, run for real: the sandboxed interpreter against
hostile programs (the code reward's attacks, now as tool calls), typed functions with
malformed calls, and user environments. Nothing here needs an engine."""

import concurrent.futures
import os
import time
from pathlib import Path

import pytest

from rollouts.tools import Step, ToolSpec, as_step, make_environment
from rollouts.tools.functions import FunctionTools, tool_schemas
from rollouts.tools.python import PythonTool, last_python_block, split_outputs
from tests.rewards.test_code_hostile import sandbox_processes

TIMEOUT_S = 2.0


def call(tool: PythonTool, code: str) -> Step:
    return tool.step(f"<think>let me compute\n```python\n{code}\n```\n")


@pytest.fixture
def tool():
    env = PythonTool(timeout_s=TIMEOUT_S, output_chars=200, max_tool_calls=2)
    env.reset({})
    yield env
    deadline = time.monotonic() + 5  # the sandbox reaps a killed run's uid right after it
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sandbox_processes()  # every call's processes are gone


def test_a_call_returns_its_stdout_as_an_output_block(tool):
    step = call(tool, "print(347 * 829)")
    assert step.observation == "```output\n287663\n```\n"
    assert step.tool_call and not step.error and not step.done and step.latency_s > 0


def test_an_error_returns_the_tracebacks_last_line(tool):
    step = call(tool, "print('before')\n1 / 0")
    assert step.error and step.observation == (
        "```output\nbefore\nZeroDivisionError: division by zero\n```\n"
    )


def test_calls_past_the_cap_are_refused_not_run(tool):
    call(tool, "print(1)")
    call(tool, "print(2)")
    step = call(tool, "print(3)")
    assert step.refused and "limit of 2 tool calls" in step.observation
    assert "3" not in step.observation.replace("limit of 2", "")


def test_a_turn_without_code_is_not_a_call_and_an_empty_one_is_void(tool):
    assert tool.step("</think>42") == Step(None, done=False)
    assert tool.step("  \n").void
    assert tool.step("```\nplain text block\n```\n").observation is None


@pytest.mark.parametrize(
    ("code", "expect"),
    [
        ("while True:\n    pass", f"(timed out after {TIMEOUT_S:g} s)"),
        ("import time\ntime.sleep(10**6)", f"(timed out after {TIMEOUT_S:g} s)"),
        (
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
            "",
        ),
        ("blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))", "MemoryError"),
        ("while True:\n    print('x' * 10000)", "(output limit exceeded)"),
    ],
    ids=["infinite-loop", "sleep", "fork-bomb", "memory-bomb", "output-flood"],
)
def test_hostile_calls_become_tool_output_and_the_host_is_untouched(tool, code, expect):
    t0 = time.monotonic()
    step = call(tool, code)
    assert time.monotonic() - t0 < 10 * TIMEOUT_S  # a hang bound, not a speed check
    assert step.tool_call and (step.error or step.timed_out)
    assert expect in step.observation
    assert len(step.observation) < 300  # cut to output_chars


def test_host_files_secrets_and_network_stay_out_of_reach(tool, tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("still here")
    os.environ["R1KIT_TOOL_SECRET"] = "s3cret-77"
    try:
        code = f"""
import os, socket
try:
    os.remove({str(canary)!r}); print("LEAKED delete")
except OSError:
    pass
print(os.environ.get("R1KIT_TOOL_SECRET", "no secret"))
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1); print("LEAKED net")
except OSError:
    print("no network")
"""
        step = call(tool, code)
    finally:
        del os.environ["R1KIT_TOOL_SECRET"]
    assert "LEAKED" not in step.observation and "s3cret" not in step.observation
    assert "no secret" in step.observation and "no network" in step.observation
    assert canary.read_text() == "still here"


def test_hanging_calls_run_side_by_side_not_one_after_another():
    """Eight calls that each sleep past the limit, on the pool a rollout worker uses: they end
    together, in about one timeout (bounded at four: sequential would be eight)."""
    envs = [PythonTool(timeout_s=TIMEOUT_S) for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        t0 = time.monotonic()
        steps = list(pool.map(lambda e: call(e, "import time\ntime.sleep(60)"), envs))
        wall = time.monotonic() - t0
    assert all(s.timed_out for s in steps)
    assert wall < 4 * TIMEOUT_S, wall


def test_python_blocks_and_output_blocks_are_found_where_a_policy_writes_them():
    assert (
        last_python_block("```python\nx = 1\n```\nmore```python\nprint(2)\n```\n") == "print(2)\n"
    )
    assert last_python_block("```python\nprint(1)\n") is None  # not closed
    text = "<think>```python\nprint(2)\n```\n```output\n2\n```\n</think>2"
    assert [p for p, is_out in split_outputs(text) if is_out] == ["```output\n2\n```\n"]
    assert "".join(p for p, _ in split_outputs(text)) == text


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def slow(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return "done"


@pytest.mark.parametrize(
    ("turn", "expect", "error"),
    [
        (
            '<tool_call>\n{"name": "multiply", "arguments": {"a": 347, "b": 829}}\n</tool_call>',
            "287663",
            False,
        ),
        (
            '<tool_call>\n{"name": "multiply", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}\n</tool_call>',
            "6",
            False,
        ),
        ("<tool_call>\n{not json\n</tool_call>", "error: malformed tool call", True),
        (
            '<tool_call>{"name": "divide", "arguments": {}}</tool_call>',
            "error: no tool named 'divide'",
            True,
        ),
        (
            '<tool_call>{"name": "multiply", "arguments": {"a": 1}}</tool_call>',
            "error: TypeError",
            True,
        ),
        (
            '<tool_call>{"name": "multiply", "arguments": [1, 2]}</tool_call>',
            "error: malformed",
            True,
        ),
        (
            '<tool_call>{"name": "slow", "arguments": {"seconds": 30}}</tool_call>',
            "timed out",
            True,
        ),
    ],
    ids=[
        "call",
        "string-arguments",
        "bad-json",
        "unknown",
        "missing-argument",
        "list-arguments",
        "timeout",
    ],
)
def test_function_calls_and_malformed_ones_become_tool_output(turn, expect, error):
    tools = FunctionTools([multiply, slow], timeout_s=0.5)
    tools.reset({})
    step = tools.step(turn)
    assert expect in step.observation and step.error == error and not step.done
    assert tools.step("The answer is 287663.").done  # a turn without a call ends it


def test_tool_schemas_come_from_type_hints_and_docstrings():
    [schema] = tool_schemas([multiply])
    assert schema["function"]["name"] == "multiply"
    assert schema["function"]["parameters"]["properties"]["a"]["type"] == "integer"


class CountdownEnv:
    """A user environment: three observations, then done with a reward."""

    stop = ("!",)
    observation_format = "inline"

    def __init__(self, start: int = 3):
        self.start = start

    def reset(self, row):
        self.left = row.get("turns", self.start)

    def step(self, text):
        self.left -= 1
        return (None, True, 1.0) if self.left == 0 else (f"[{self.left} left]", False, None)


def test_a_user_environment_by_name_with_its_arguments():
    env = make_environment(ToolSpec(environment=f"{__name__}:CountdownEnv", env_args={"start": 2}))
    env.reset({})
    assert as_step(env.step("a!")) == Step("[1 left]", False, None)
    assert as_step(env.step("b!")) == Step(None, True, 1.0)
    with pytest.raises(ValueError, match="has no 'Nope'"):
        make_environment(ToolSpec(environment=f"{__name__}:Nope"))
    with pytest.raises(TypeError, match="Step or"):
        as_step("just text")


def test_the_sandbox_binary_is_the_code_rewards(tool):
    import rewards.sandbox
    import rollouts.tools.python

    assert rollouts.tools.python.run_python is rewards.sandbox.run_python
    assert Path(rewards.sandbox.HARNESS).is_file()
