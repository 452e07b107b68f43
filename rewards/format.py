"""The R1 format reward: one think block, then an answer."""

from __future__ import annotations

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def format_reward(completion: str, *, prompt_has_think: bool = False, **_: object) -> float:
    """1.0 if the completion is `<think>` reasoning `</think>` then a non-empty answer, else 0.0.

    Nothing may come before `<think>`; there is exactly one `<think>` and one `</think>`;
    whitespace between the block and the answer is allowed; the answer must not be blank. The
    reasoning itself may be empty.

    When the prompt already ends in `<think>` (`prompt_has_think=True`), the completion starts
    inside the block: it is checked as if `<think>` were prepended, so it must close the block
    exactly once and must not open another.

    >>> format_reward("<think>2 + 2 = 4</think> 4")
    1.0
    >>> format_reward("2 + 2 = 4</think>\\n4", prompt_has_think=True)
    1.0
    >>> format_reward("4")
    0.0
    """
    text = THINK_OPEN + completion if prompt_has_think else completion
    if not text.startswith(THINK_OPEN):
        return 0.0
    if text.count(THINK_OPEN) != 1 or text.count(THINK_CLOSE) != 1:
        return 0.0
    answer = text.split(THINK_CLOSE, 1)[1]
    return 1.0 if answer.strip() else 0.0
