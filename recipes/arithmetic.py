"""Chain-sum arithmetic for the default recipe, from reasoning-gym's offline generator.

A problem is a chain of additions and subtractions (``57+87-70``). The SFT completion shows
the work as partial sums inside the think block, then the answer:
``<think>57+87=144 144-70=74</think>74``. Held-out problems are disjoint from every training
problem; answers are checked by the math reward (math-verify).
"""

from __future__ import annotations

import reasoning_gym


def _problems(count: int, seed: int, min_terms: int, max_terms: int, max_digits: int) -> list[str]:
    data = reasoning_gym.create_dataset(
        "chain_sum",
        size=count,
        seed=seed,
        min_terms=min_terms,
        max_terms=max_terms,
        min_digits=1,
        max_digits=max_digits,
    )
    return [item["metadata"]["expression"].replace(" ", "") for item in data]


def solve(expression: str) -> tuple[str, int]:
    """The worked completion and the value of ``expression`` (digits and + - only).

    >>> solve("57+87-70")
    ('<think>57+87=144 144-70=74</think>74', 74)
    """
    terms, signs, current = [], [], ""
    for ch in expression:
        if ch in "+-" and current:
            terms.append(int(current))
            signs.append(ch)
            current = ""
        else:
            current += ch
    terms.append(int(current))
    total, steps = terms[0], []
    for sign, term in zip(signs, terms[1:], strict=True):
        new = total + term if sign == "+" else total - term
        steps.append(f"{total}{sign}{term}={new}")
        total = new
    return f"<think>{' '.join(steps)}</think>{total}", total


def generate(
    n_sft: int = 4000,
    n_rl: int = 4000,
    n_eval: int = 256,
    seed: int = 0,
    min_terms: int = 2,
    max_terms: int = 3,
    max_digits: int = 2,
) -> dict[str, list[dict]]:
    """Rows for the SFT, RL and held-out sets; held-out prompts appear in neither training set."""
    held_out = list(
        dict.fromkeys(_problems(4 * n_eval, seed + 1, min_terms, max_terms, max_digits))
    )
    held_out = held_out[:n_eval]
    exclude = set(held_out)
    train = [
        p
        for p in _problems(2 * (n_sft + n_rl), seed, min_terms, max_terms, max_digits)
        if p not in exclude
    ]
    if len(train) < n_sft + n_rl or len(held_out) < n_eval:
        raise ValueError("not enough distinct problems: widen max_terms or max_digits")

    def row(expression: str) -> dict:
        completion, value = solve(expression)
        return {"prompt": expression, "answer": str(value), "completion": completion}

    return {
        "sft": [row(p) for p in train[:n_sft]],
        "rl": [row(p) for p in train[n_sft : n_sft + n_rl]],
        "eval": [row(p) for p in held_out],
    }
