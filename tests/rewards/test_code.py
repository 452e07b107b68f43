"""The code reward on honest programs: extraction, test styles, scoring, refusal without a sandbox."""

import pytest

from rewards import RewardDataError, code_reward, extract_code
from rewards.code import MAX_CODE_CHARS, code_reward_binary, outputs_match
from rewards.sandbox import SandboxUnavailable, check_sandbox

ADD_TEST = (
    "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
)
ADD = "def add(a, b):\n    return a + b\n"
DOUBLE = "print(2 * int(input()))\n"


def fenced(code: str, lang: str = "python") -> str:
    return f"<think>easy</think>\nHere it is:\n```{lang}\n{code}```\nDone."


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (fenced("x = 1\n"), "x = 1\n"),
        (fenced("x = 1\n", "py"), "x = 1\n"),
        (fenced("x = 1\n", "Python3"), "x = 1\n"),
        (fenced("x = 1\n") + fenced("x = 2\n"), "x = 2\n"),  # the last python block
        (fenced("x = 1\n") + fenced("echo hi\n", "bash"), "x = 1\n"),  # not a python block
        (fenced("x = 1\n", ""), "x = 1\n"),  # an unmarked block, when there is no python one
        ("<think>hmm</think>x = 3", "x = 3"),  # no block: the text after the think block
        ("x = 4", "x = 4"),  # no block, no think: the whole completion
    ],
)
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


@pytest.mark.parametrize(
    ("actual", "expected", "same"),
    [
        ("1\n2\n", "1\n2", True),
        ("1  \n2\n\n\n", "1\n2\n", True),  # trailing spaces and blank lines do not count
        ("1\r\n2\r\n", "1\n2\n", True),
        ("1\n", "1\n2\n", False),  # a missing line
        ("1\n2\n3\n", "1\n2\n", False),  # an extra line
        ("1 2\n", "1  2\n", False),  # inner spacing counts
        ("\n1\n", "1\n", False),  # a leading blank line counts
    ],
)
def test_outputs_match(actual, expected, same):
    assert outputs_match(actual, expected) is same


def test_assert_style_with_entry_point():
    assert code_reward(fenced(ADD), test=ADD_TEST, entry_point="add") == 1.0
    assert code_reward(fenced(ADD.replace("+", "-")), test=ADD_TEST, entry_point="add") == 0.0


def test_assert_style_cases_give_a_fraction():
    # MBPP style: one assert per case, no entry point. 2 of 3 hold for a + b + (a == 0).
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 5) == 5"]
    code = "def add(a, b):\n    return a + b + (a == 0)\n"
    assert code_reward(fenced(code), test=tests) == pytest.approx(2 / 3)
    assert code_reward_binary(fenced(code), test=tests) == 0.0
    assert code_reward_binary(fenced(ADD), test=tests) == 1.0


def test_tests_can_use_helpers_the_code_defines():
    # HumanEval/38 style: the test calls encode(), defined next to the entry point.
    code = "def encode(s):\n    return s[::-1]\n\ndef decode(s):\n    return s[::-1]\n"
    test = "def check(candidate):\n    assert candidate(encode('abc')) == 'abc'\n"
    assert code_reward(fenced(code), test=test, entry_point="decode") == 1.0


def test_code_that_does_not_load_fails_every_case():
    assert code_reward(fenced("def add(a, b:\n"), test=["assert 1", "assert 2"]) == 0.0
    assert code_reward(fenced("raise ValueError('no')\n"), test=ADD_TEST, entry_point="add") == 0.0


def test_stdio_cases_are_compared_line_by_line():
    cases = [{"input": "3\n", "output": "6\n"}, {"input": "5", "output": "10"}]
    assert code_reward(fenced(DOUBLE), stdio=cases) == 1.0
    wrong = [{"input": "3\n", "output": "6\n"}, {"input": "5", "output": "11"}]
    assert code_reward(fenced(DOUBLE), stdio=wrong) == 0.5
    assert code_reward_binary(fenced(DOUBLE), stdio=wrong) == 0.0


def test_stdio_missing_or_extra_line_fails():
    cases = [{"input": "2\n", "output": "4\n4\n"}]
    assert code_reward(fenced(DOUBLE), stdio=cases) == 0.0  # one line short
    extra = "print(2 * int(input()))\nprint('debug')\n"
    assert code_reward(fenced(extra), stdio=[{"input": "2", "output": "4"}]) == 0.0


def test_stdio_program_must_exit_zero():
    crash = "print(2 * int(input()))\nraise SystemExit(3)\n"
    assert code_reward(fenced(crash), stdio=[{"input": "2", "output": "4"}]) == 0.0
    fine = "print(2 * int(input()))\nraise SystemExit(0)\n"  # exiting 0 early is normal here
    assert code_reward(fenced(fine), stdio=[{"input": "2", "output": "4"}]) == 1.0


def test_too_long_code_is_not_run():
    code = ADD + "#" * MAX_CODE_CHARS
    assert code_reward(fenced(code), test=ADD_TEST, entry_point="add") == 0.0


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({}, "exactly one of 'test'"),
        ({"test": ADD_TEST, "stdio": [{"input": "", "output": ""}]}, "exactly one of 'test'"),
        ({"test": ""}, "'test' must be"),
        ({"test": [1]}, "'test' must be"),
        ({"test": "assert True", "entry_point": "add"}, "must define check"),
        ({"test": ADD_TEST, "entry_point": "not a name"}, "'entry_point' must be"),
        ({"stdio": []}, "'stdio' must be"),
        ({"stdio": [{"input": "1"}]}, "'stdio' must be"),
    ],
)
def test_malformed_rows_are_data_errors(row, message):
    with pytest.raises(RewardDataError, match=message):
        code_reward(fenced(ADD), **row)


def test_the_sandbox_works_here():
    # The machine this suite runs on has bubblewrap (the Makefile's system-deps).
    assert check_sandbox() == "bubblewrap"


def test_refuses_to_run_code_without_bubblewrap(monkeypatch):
    monkeypatch.setattr("rewards.sandbox._probe", lambda: (False, "`bwrap` not found"))
    monkeypatch.delenv("R1KIT_UNSAFE_NO_SANDBOX", raising=False)
    with pytest.raises(SandboxUnavailable, match="refusing to run model-written code.*bwrap"):
        code_reward(fenced(ADD), test=ADD_TEST, entry_point="add")


def test_unsafe_option_runs_code_without_bubblewrap(monkeypatch, capsys):
    monkeypatch.setattr("rewards.sandbox._probe", lambda: (False, "`bwrap` not found"))
    monkeypatch.setenv("R1KIT_UNSAFE_NO_SANDBOX", "1")
    assert code_reward(fenced(ADD), test=ADD_TEST, entry_point="add") == 1.0
    assert code_reward(fenced("import sys\nsys.exit(0)\n"), test=ADD_TEST, entry_point="add") == 0.0
    assert "WITHOUT a sandbox" in capsys.readouterr().err
