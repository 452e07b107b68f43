"""reasoning-gym's own scorers as a reward (``reasoning_gym`` in ``rewards.weights``).

Rows from a recipe's ``data.<stage>.reasoning_gym`` task carry what the task's scorer reads:
``reasoning_gym`` (``{"task", "config"}``), reasoning-gym's ``metadata``, ``answer`` (absent
for tasks with no one answer) and the question. The reward builds the task once per process
(per task and config) and returns its ``score_answer(answer, entry)``: the task's own score in
[0, 1], partial credit included (countdown gives 0.05 for an expression that uses the wrong
numbers, 0.01 for none); held-out accuracy counts only 1.0.

What the scorer is given, from the completion (``final_answer``): reasoning-gym's prompts ask
for the answer inside ``<answer>...</answer>`` (its system prompts, e.g.
``reasoning_gym.utils.SYSTEM_PROMPTS["default"]``, say so), so

1. the text after the last ``</think>`` if there is one (the thinking is not the answer),
   else the whole completion;
2. in it, the content of the last ``<answer>...</answer>``, stripped (as reasoning-gym's own
   ``extract_answer``);
3. else, after a ``</think>``, all of that text, stripped;
4. else None: no answer (the scorer scores None, usually 0 or its format floor).

Some scorers run the answer through Python: with ``eval`` to read a list (binary_matrix,
n_queens, spiral_matrix, string_insertion), or sympy's ``parse_expr``, which calls ``eval``
(countdown, puzzle24, polynomial_multiplication, simple_integration,
intermediate_integration). Model output must not run as code, so here the ``eval`` of the
first group is ``ast.literal_eval`` (the same lists and strings read; nothing else runs), and
an answer for the second group whose names are not math (single-letter symbols, ``sin``,
``sqrt``, ``pi``, ...) is refused with ``UnsafeAnswer``, which the reward pool scores 0 and
counts as an error. ``tests/rewards/test_reasoning_gym.py`` fails when a reasoning-gym version
adds a scorer that evaluates text and is in neither group.
"""

from __future__ import annotations

import ast
import io
import json
import re
import sys
import tokenize
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from .registry import RewardDataError

LITERAL_EVAL_TASKS = frozenset({"binary_matrix", "n_queens", "spiral_matrix", "string_insertion"})
"""Tasks whose scorer calls Python's ``eval`` on the answer (reasoning-gym 0.1.25)."""
PARSE_EXPR_TASKS = frozenset(
    {
        "countdown",
        "intermediate_integration",
        "polynomial_multiplication",
        "puzzle24",
        "simple_integration",
    }
)
"""Tasks whose scorer calls sympy's ``parse_expr`` (an ``eval``) on the answer."""
MATH_NAMES = frozenset({
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot",
    "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "exp", "log", "ln", "sqrt",
    "Abs", "Integral", "pi", "E", "I", "oo",
})  # fmt: skip
"""Names an answer for a ``PARSE_EXPR_TASKS`` scorer may use besides one-letter symbols."""

_ANSWER_TAG = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)
_SYMBOL = re.compile(r"[A-Za-z]\d*")


class UnsafeAnswer(ValueError):
    """An answer that a scorer would evaluate as code, and that is more than math."""


def reasoning_gym_reward(
    completion: str,
    *,
    reasoning_gym: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    answer: str | None = None,
    question: str | None = None,
    prompt: str | None = None,
    **_: object,
) -> float:
    """The task's own score of the completion's final answer (see the module docstring).

    >>> row = {"reasoning_gym": {"task": "chain_sum", "config": {}}, "answer": "7",
    ...        "metadata": {}}
    >>> reasoning_gym_reward("<think>3+4</think><answer>7</answer>", **row)
    1.0
    >>> reasoning_gym_reward("<think>3+4</think><answer>8</answer>", **row)
    0.0
    """
    if not isinstance(reasoning_gym, Mapping) or not isinstance(reasoning_gym.get("task"), str):
        raise RewardDataError(
            "the row has no 'reasoning_gym' field {task, config}: load it from a "
            "reasoning-gym task (data.<stage>.reasoning_gym)"
        )
    task = reasoning_gym["task"]
    score = _scorer(task, json.dumps(reasoning_gym.get("config") or {}, sort_keys=True))
    given = final_answer(completion)
    if given is not None and task in PARSE_EXPR_TASKS and not math_only(given):
        raise UnsafeAnswer(f"{task}: the answer uses names that are not math: {given[:80]!r}")
    entry = {"question": question or prompt, "answer": answer, "metadata": dict(metadata or {})}
    return float(score(given, entry))


def final_answer(completion: str) -> str | None:
    """What the scorer is given: the last ``<answer>`` content after any think block.

    >>> final_answer("<think>maybe <answer>1</answer></think> <answer> 2 </answer>")
    '2'
    >>> final_answer("<think>2 + 2</think>\\n4\\n"), final_answer("4") is None
    ('4', True)
    """
    has_think = "</think>" in completion
    region = completion.rsplit("</think>", 1)[1] if has_think else completion
    tags = _ANSWER_TAG.findall(region)
    if tags:
        return tags[-1].strip()
    return region.strip() if has_think else None


def math_only(answer: str) -> bool:
    """True if every name in ``answer`` (read as Python tokens, as sympy does) is a
    one-letter symbol (``x``, ``x2``) or in ``MATH_NAMES``, with no attribute access.

    >>> math_only("94*4 - 61 - 6"), math_only("2*sin(x)**2 + C")
    (True, True)
    >>> math_only("__import__('os').system('id')"), math_only("exec(chr(49))")
    (False, False)
    """
    if not answer.isascii():  # Python folds other letters into ASCII names (NFKC)
        return False
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(answer).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return False
    for token in tokens:
        if token.type == tokenize.OP and token.string == ".":
            return False
        if token.type == tokenize.NAME and not (
            _SYMBOL.fullmatch(token.string) or token.string in MATH_NAMES
        ):
            return False
    return True


@lru_cache(maxsize=64)
def _scorer(task: str, config_json: str) -> Callable[[str | None, dict], float]:
    """The task's ``score_answer``, built once per process for each task and config."""
    import reasoning_gym as rg

    if task not in rg.factory.DATASETS:
        raise RewardDataError(f"no reasoning-gym task {task!r}")
    dataset = rg.create_dataset(task, **json.loads(config_json))
    if task in LITERAL_EVAL_TASKS:  # its module's `eval` now only reads literals
        sys.modules[type(dataset).__module__].eval = _literal_eval
    return dataset.score_answer


def _literal_eval(source: str, *_: object) -> Any:
    return ast.literal_eval(source)
