"""Multiplication facts (``What is 7 * 14?``) for a real pretrained policy's CPU recipe.

SmolLM2-135M-Instruct knows many of them and answers in prose; asked to end with "The answer
is N." it does so some of the time and is right some of the time (greedy, strict math reward:
16% on 2-12 x 2-12 when measured on 100 problems). GRPO has signal from the first step. Every
pair a x b with 2 <= a <= max_a, 2 <= b <= max_b is one problem; the held-out problems are
drawn first and appear in no training row.
"""

from __future__ import annotations

import random


def generate(
    n_eval: int = 200, max_a: int = 12, max_b: int = 30, seed: int = 0
) -> dict[str, list[dict]]:
    """``{"rl": rows, "eval": rows}`` of ``{"prompt", "answer"}``; no SFT rows.

    >>> rows = generate(n_eval=5, max_a=3, max_b=4)
    >>> len(rows["eval"]), len(rows["rl"])  # (3 - 1) * (4 - 1) = 6 pairs
    (5, 1)
    """
    pairs = [(a, b) for a in range(2, max_a + 1) for b in range(2, max_b + 1)]
    if n_eval >= len(pairs):
        raise ValueError(f"only {len(pairs)} problems: widen max_a or max_b for {n_eval} held out")
    random.Random(seed).shuffle(pairs)

    def row(a: int, b: int) -> dict:
        return {"prompt": f"What is {a} * {b}?", "answer": str(a * b)}

    return {
        "rl": [row(a, b) for a, b in pairs[n_eval:]],
        "eval": [row(a, b) for a, b in pairs[:n_eval]],
    }
