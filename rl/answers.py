r"""Gold answers out of the formats datasets write them in (a recipe's ``answer_format``).

Each normalizer takes the dataset's answer text and returns the answer rewards compare
against, or raises ``ValueError`` saying why it cannot: the loader turns that into an error
naming the row (``rl/rows.py``). A row whose gold answer cannot be read stops the load rather
than being skipped: skipping would silently shrink the data and change what held-out accuracy
is measured on, while the error names the row to fix or filter out.

- ``raw``: the text as it is.
- ``gsm8k``: GSM8K's worked solutions end with ``#### 72``: the number after the last
  ``####``, thousands separators dropped (``#### 1,234`` -> ``1234``).
- ``math``: MATH's solutions put the answer in ``\boxed{...}``: the content of the last
  non-empty ``\boxed{...}`` or ``\fbox{...}``, braces balanced (``\boxed{\frac{1}{2}}`` ->
  ``\frac{1}{2}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_GSM8K_MARK = "####"
# An optional sign, digits (commas only between groups of three), an optional decimal part.
_GSM8K_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_BOX_OPENING = re.compile(r"\\(?:boxed|fbox)\s*\{")
_EXCERPT_CHARS = 60


def raw_answer(text: str) -> str:
    """The answer as the dataset writes it.

    >>> raw_answer("72")
    '72'
    """
    return text


def gsm8k_answer(text: str) -> str:
    """The number after the last ``####`` of a GSM8K solution, without thousands separators.

    >>> gsm8k_answer("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n#### 1,234")
    '1234'
    >>> gsm8k_answer("####   -3.5 ")
    '-3.5'
    >>> gsm8k_answer("She has 1,2,3 left.\\n#### 1,2,3")
    Traceback (most recent call last):
    ValueError: '#### 1,2,3' is not a number
    """
    _, mark, tail = text.rpartition(_GSM8K_MARK)
    if not mark:
        raise ValueError(f"no '#### <number>' in {_excerpt(text)}")
    value = tail.strip()
    if not _GSM8K_NUMBER.fullmatch(value):
        raise ValueError(f"'#### {value}' is not a number")
    return value.replace(",", "")


def boxed_answer(text: str) -> str:
    r"""The content of the last non-empty ``\boxed{...}`` (or ``\fbox{...}``) of a solution.

    Braces nest; ``\{`` and ``\}`` are literal braces, not grouping. A box whose braces never
    close is not a box; an empty one (``put it in \boxed{}``) is passed over.

    >>> boxed_answer(r"So $x = \boxed{\frac{1}{2}}$.")
    '\\frac{1}{2}'
    >>> boxed_answer(r"First \boxed{3}, then \fbox{\{1, 2\}}. Write answers as \boxed{}.")
    '\\{1, 2\\}'
    >>> boxed_answer("The answer is 4.")
    Traceback (most recent call last):
    ValueError: no \boxed{...} in 'The answer is 4.'
    """
    contents = [c for c in _boxes(text) if c]
    if not contents:
        raise ValueError(f"no \\boxed{{...}} in {_excerpt(text)}")
    return contents[-1]


def _boxes(text: str) -> list[str]:
    """The stripped content of each box whose braces balance, in order."""
    found = []
    for opening in _BOX_OPENING.finditer(text):
        depth, i = 1, opening.end()
        while i < len(text) and depth:
            if text[i] == "\\":  # an escaped character, `\{` included, is skipped whole
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found.append(text[opening.end() : i - 1].strip())
    return found


def _excerpt(text: str) -> str:
    """The end of a long text (where answers are), quoted."""
    tail = text if len(text) <= _EXCERPT_CHARS else "..." + text[-_EXCERPT_CHARS:]
    return repr(tail)


ANSWER_FORMATS: dict[str, Callable[[str], str]] = {
    "raw": raw_answer,
    "gsm8k": gsm8k_answer,
    "math": boxed_answer,
}
"""``answer_format`` name -> normalizer; the recipe's choices are these names."""
