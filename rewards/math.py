r"""The math reward: extract a completion's final answer and check it with math-verify.

`extract_answer` finds the final answer as text; `math_reward` parses it and the gold answer with
math-verify and compares them as math objects (`0.5` equals `\frac{1}{2}`; `3 or 4` is the set
{3, 4}, which does not equal 3). On top of math-verify:

- answers are parsed as LaTeX only. math-verify's other extractor reads plain expressions with
  sympy's `parse_expr`, which evaluates Python; it also reads the malformed `4\sqrt(2)` as 4 and
  `3x-y+13=0` as 0. Model text is parsed, never evaluated;
- `rewards.math_compare` drops math-verify's known false matches (values that only agree after
  rounding, equations that do not say the same thing);
- hedging scores 0: several different final answers (`\boxed{3}` ... `\boxed{4}`) are not one
  answer, even if one of them is right. Repeating the same answer is fine;
- only the last `MAX_INPUT_CHARS` characters are read, and answers are at most
  `MAX_ANSWER_CHARS` long.

math-verify bounds its own work with `signal.alarm`, which only works on a process's main thread
(elsewhere it raises ValueError). Callers in other threads pass `timeout_s=None` and must bound the
time themselves; `rewards.pool.RewardPool` does, by killing its worker processes.
"""

from __future__ import annotations

import re
from functools import lru_cache

from math_verify import LatexExtractionConfig, parse
from sympy import Basic, MatrixBase

from .math_compare import answers_match
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
_LATEX_ONLY = (LatexExtractionConfig(),)


def extract_answer(completion: str) -> str | None:
    r"""The final answer of a completion, as text; None if it has none.

    The last of `final_answers(completion)`.

    >>> extract_answer(r"<think>4/2 = 2</think> So \boxed{\frac{4}{2}}.")
    '\\frac{4}{2}'
    >>> extract_answer("<think>7 * 6</think>The answer is 42.")
    '42'
    >>> extract_answer("I am not sure.") is None
    True
    """
    answers = final_answers(completion)
    return answers[-1] if answers else None


def final_answers(completion: str) -> list[str]:
    r"""Every final answer the completion gives, in order; [] if it gives none.

    The answer region is the text after the last `</think>` when there is one (what the model
    thought inside the block is not its answer), else the whole completion; only its last
    `MAX_INPUT_CHARS` characters are read. The first rule that finds a non-blank answer decides:
    1. the contents of each `\boxed{...}` (with balanced braces);
    2. the contents of each `<answer>...</answer>`;
    3. after a `</think>`: what follows "the answer is", else the whole region;
    4. what follows each "The answer is" (up to the end of the sentence).
    An answer longer than `MAX_ANSWER_CHARS` makes the result [].

    >>> final_answers(r"<think>\boxed{1}?</think> \boxed{2} or maybe \boxed{3}")
    ['2', '3']
    """
    text = completion[-MAX_INPUT_CHARS:]
    has_think = "</think>" in text
    region = text.rsplit("</think>", 1)[1] if has_think else text
    rules = (_boxed, _answer_tags, _after_think if has_think else _answer_is)
    for find in rules:
        answers = [a for a in find(region) if a]
        if answers:
            return answers if all(len(a) <= MAX_ANSWER_CHARS for a in answers) else []
    return []


def _boxed(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` whose braces balance, in order of their openings."""
    open_braces: list[int] = []
    boxes: list[tuple[int, int]] = []
    for i, char in enumerate(text):
        if char not in "{}" or (i > 0 and text[i - 1] == "\\"):  # `\{` is a literal brace
            continue
        if char == "{":
            open_braces.append(i)
        elif open_braces:
            start = open_braces.pop()
            if text.endswith(_BOXED, 0, start):
                boxes.append((start, i))
    return [text[start + 1 : end].strip() for start, end in sorted(boxes)]


def _answer_tags(text: str) -> list[str]:
    return [m.strip() for m in _ANSWER_TAG.findall(text)]


def _after_think(region: str) -> list[str]:
    return _answer_is(region) or [region.strip()]


def _answer_is(text: str) -> list[str]:
    return [m.strip("* \t") for m in _ANSWER_IS.findall(text)]


def _as_latex(answer: str) -> str:
    """The answer in `$...$` unless it has math delimiters already, so math-verify reads it
    as one LaTeX expression (bare `3 or 4` would otherwise be read as its last number, 4)."""
    return answer if _MATH_DELIMITER.search(answer) else f"${answer}$"


def _parse(answer: str, timeout_s: int | None, *, raise_on_error: bool = True) -> list:
    """math-verify's parse of one answer, as LaTeX only (never `parse_expr`, which evaluates)."""
    return parse(
        _as_latex(answer),
        extraction_config=_LATEX_ONLY,
        parsing_timeout=timeout_s,
        raise_on_error=raise_on_error,
    )


@lru_cache(maxsize=4096)
def _parse_gold(answer: str, timeout_s: int | None) -> tuple:
    parsed = _parse(answer, timeout_s, raise_on_error=False)
    if not any(isinstance(p, (Basic, MatrixBase)) for p in parsed):
        raise RewardDataError(f"gold answer {answer!r} does not parse as math")
    return tuple(parsed)


def math_reward(
    completion: str,
    answer: str | None = None,
    *,
    timeout_s: int | None = DEFAULT_TIMEOUT_S,
    **_: object,
) -> float:
    r"""1.0 if the completion's one final answer equals the gold `answer` as math, else 0.0.

    The final answers are `final_answers(completion)`; several different ones (hedging) score
    0.0. The answer and the gold are parsed as LaTeX with math-verify (plain answers such as
    `-17` or `3/4` are read as LaTeX) and compared with `rewards.math_compare.answers_match`:
    math-verify's `verify`, without its known false matches. Model text is only parsed, never
    evaluated.

    Raises `RewardDataError` if `answer` is missing or does not parse. math-verify's timeouts
    and unexpected errors propagate: `rewards.pool.RewardPool` scores them 0 and counts them.
    `timeout_s` is math-verify's whole-second alarm; pass None off the main thread (see the
    module docstring).

    >>> math_reward(r"<think>half</think> \boxed{0.5}", answer=r"\frac{1}{2}")
    1.0
    >>> math_reward("<think>hmm</think> The answer is 3 or 4.", answer="3")
    0.0
    >>> math_reward(r"<think>hmm</think> \boxed{3}, or perhaps \boxed{4}", answer="4")
    0.0
    """
    if not isinstance(answer, str):
        raise RewardDataError("the row has no string field 'answer' (the gold answer)")
    gold = list(_parse_gold(answer, timeout_s))
    answers = final_answers(completion)
    if not answers:
        return 0.0
    predicted = _parse(answers[-1], timeout_s)
    if _hedges(answers, predicted, timeout_s):
        return 0.0
    return float(answers_match(gold, predicted, timeout_s=timeout_s))


def _hedges(answers: list[str], last: list, timeout_s: int | None) -> bool:
    """True if the answers are not all the same as the last one (compared as math)."""
    others = {" ".join(a.split()) for a in answers[:-1]} - {" ".join(answers[-1].split())}
    for other in others:
        parsed = _parse(other, timeout_s)
        if not (
            answers_match(parsed, last, timeout_s=timeout_s)
            and answers_match(last, parsed, timeout_s=timeout_s)
        ):
            return True
    return False
