r"""Multi-digit multiplication, with the Python interpreter as a tool (`make demo-tools`).

A problem is ``a*b`` with a of 1-3 digits and b of 1-2 (``347*82``): the tiny policy cannot
multiply 3 digits by 2 in its head, but it can ask the sandbox. Its SFT cold start shows two
ways to answer, the direct one (most rows) and, in a few rows (``tool_frac``), a tool call::

    <think>```python
    print(347*82)
    ```
    ```output
    28454
    ```
    </think>28454

(the ```output block is tool output: loss mask 0 in SFT too). GRPO with the tool then finds
out which way pays. Held-out problems appear in no training row.
"""

from __future__ import annotations

import random


def tool_completion(a: int, b: int) -> str:
    """A demonstration of the tool call, its output and the answer.

    >>> tool_completion(12, 3)
    '<think>```python\\nprint(12*3)\\n```\\n```output\\n36\\n```\\n</think>36'
    """
    return f"<think>```python\nprint({a}*{b})\n```\n```output\n{a * b}\n```\n</think>{a * b}"


def generate(
    n_sft: int = 4000,
    n_rl: int = 8000,
    n_eval: int = 256,
    tool_frac: float = 0.1,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """``{"sft", "rl", "eval"}`` rows of ``{"prompt", "answer"}`` (SFT rows add
    ``completion``); a ``tool_frac`` share of the SFT rows demonstrate the tool.

    >>> rows = generate(n_sft=10, n_rl=5, n_eval=3)
    >>> [len(rows[k]) for k in ("sft", "rl", "eval")]
    [10, 5, 3]
    """
    rng = random.Random(seed)

    def problem() -> tuple[int, int]:
        return rng.randint(2, 10 ** rng.randint(1, 3) - 1), rng.randint(
            2, 10 ** rng.randint(1, 2) - 1
        )

    held_out: set[tuple[int, int]] = set()
    while len(held_out) < n_eval:
        held_out.add(problem())

    def training(count: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while len(out) < count:
            pair = problem()
            if pair not in held_out:
                out.append(pair)
        return out

    def row(a: int, b: int) -> dict:
        return {"prompt": f"{a}*{b}", "answer": str(a * b)}

    sft = []
    for a, b in training(n_sft):
        direct = f"<think></think>{a * b}"
        completion = tool_completion(a, b) if rng.random() < tool_frac else direct
        sft.append({**row(a, b), "completion": completion})
    return {
        "sft": sft,
        "rl": [row(a, b) for a, b in training(n_rl)],
        "eval": [row(a, b) for a, b in sorted(held_out)],
    }
