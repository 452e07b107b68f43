r"""The math reward: extract a completion's final answer and check it with math-verify.

`extract_answer` finds the final answer as text; `math_reward` parses it and the gold answer with
math-verify and compares them as math objects (`0.5` equals `\frac{1}{2}`; `3 or 4` is the set
{3, 4}, which does not equal 3).

math-verify bounds its own work with `signal.alarm`, which only works on a process's main thread
(elsewhere it raises ValueError). Callers in other threads pass `timeout_s=None` and must bound the
time themselves; `rewards.pool.RewardPool` does, by killing its worker processes.
"""

from __future__ import annotations

import re
from functools import lru_cache

from math_verify import parse, verify
from sympy import Basic, MatrixBase

from .registry import RewardDataError

MAX_INPUT_CHARS = 4000
"""Only the last this-many characters of a completion are searched for the answer."""
MAX_ANSWER_CHARS = 200
"""A longer answer is refused (None): it is not a final answer, and it can be slow to parse."""
DEFAULT_TIMEOUT_S = 5
"""math-verify's whole-second alarm for each parse and each comparison."""

_BOXED = "\\boxed"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# "The answer is X." up to the end of the sentence or line; a decimal point does not end it.
_ANSWER_IS = re.compile(r"(?i:the (?:final )?answer is):?\s*(.+?)\s*(?:\.(?=\s|$)|$)", re.MULTILINE)
_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[")


def extract_answer(completion: str) -> str | None:
    r"""The final answer of a completion, as text; None if it has none.

    The first rule that finds a non-blank answer decides:
    1. the content of the last `\boxed{...}` (with balanced braces);
    2. the content of the last `<answer>...</answer>`;
    3. the text after the last `</think>` (or, inside it, what follows "the answer is");
    4. what follows the last "The answer is" (up to the end of the sentence).
    Only the last `MAX_INPUT_CHARS` characters are searched, and an answer longer than
    `MAX_ANSWER_CHARS` gives None.

    >>> extract_answer(r"<think>4/2 = 2</think> So \boxed{\frac{4}{2}}.")
    '\\frac{4}{2}'
    >>> extract_answer("<think>7 * 6</think>The answer is 42.")
    '42'
    >>> extract_answer("I am not sure.") is None
    True
    """
    text = completion[-MAX_INPUT_CHARS:]
    for find in (_last_boxed, _last_answer_tag, _after_think, _answer_is):
        answer = find(text)
        if answer:
            return answer if len(answer) <= MAX_ANSWER_CHARS else None
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the `\\boxed{...}` that opens last among those whose braces balance."""
    open_braces: list[int] = []
    last: tuple[int, int] | None = None
    for i, char in enumerate(text):
        if char not in "{}" or (i > 0 and text[i - 1] == "\\"):  # `\{` is a literal brace
            continue
        if char == "{":
            open_braces.append(i)
        elif open_braces:
            start = open_braces.pop()
            if text.endswith(_BOXED, 0, start) and (last is None or start > last[0]):
                last = (start, i)
    return text[last[0] + 1 : last[1]].strip() if last else None


def _last_answer_tag(text: str) -> str | None:
    matches = _ANSWER_TAG.findall(text)
    return matches[-1].strip() if matches else None


def _after_think(text: str) -> str | None:
    if "</think>" not in text:
        return None
    after = text.rsplit("</think>", 1)[1].strip()
    return _answer_is(after) or after


def _answer_is(text: str) -> str | None:
    matches = _ANSWER_IS.findall(text)
    return matches[-1].strip("* \t") if matches else None


def _as_latex(answer: str) -> str:
    """The answer in `$...$` unless it has math delimiters already, so math-verify reads it
    as one LaTeX expression (bare `3 or 4` would otherwise be read as its last number, 4)."""
    return answer if _MATH_DELIMITER.search(answer) else f"${answer}$"


@lru_cache(maxsize=4096)
def _parse_gold(answer: str, timeout_s: int | None) -> tuple:
    parsed = parse(_as_latex(answer), parsing_timeout=timeout_s)
    if not any(isinstance(p, (Basic, MatrixBase)) for p in parsed):
        raise RewardDataError(f"gold answer {answer!r} does not parse as math")
    return tuple(parsed)


def math_reward(
    completion: str, answer: str, *, timeout_s: int | None = DEFAULT_TIMEOUT_S, **_: object
) -> float:
    r"""1.0 if the completion's final answer equals the gold `answer` as math, else 0.0.

    The final answer is `extract_answer(completion)`. Both sides are parsed with math-verify
    (plain answers such as `-17` or `3/4` are read as LaTeX) and compared with `verify`.
    Model text is only parsed, never evaluated.

    Raises `RewardDataError` if `answer` does not parse. math-verify's timeouts and unexpected
    errors propagate: `rewards.pool.RewardPool` scores them 0 and counts them. `timeout_s` is
    math-verify's whole-second alarm; pass None off the main thread (see the module docstring).

    >>> math_reward(r"<think>half</think> \boxed{0.5}", answer=r"\frac{1}{2}")
    1.0
    >>> math_reward("<think>hmm</think> The answer is 3 or 4.", answer="3")
    0.0
    """
    gold = list(_parse_gold(answer, timeout_s))
    predicted = extract_answer(completion)
    if predicted is None:
        return 0.0
    parsed = parse(_as_latex(predicted), parsing_timeout=timeout_s, raise_on_error=True)
    if not parsed:
        return 0.0
    return float(verify(gold, parsed, timeout_seconds=timeout_s, raise_on_error=True))
