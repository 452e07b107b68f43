"""r1kit's math reward on a hand-labelled set, against raw math-verify.

`data/math_labels.jsonl`: 169 (completion, gold answer, label) rows written and labelled by hand,
81 of them (48%) non-matches: math-verify's known false matches (values that round together,
equations that both reduce to 0, malformed LaTeX), hedged answers, and plain wrong answers;
`note` says what each row tests.

Seen on 2026-11-23 (math-verify 0.9.0, latex2sympy2_extended 1.11.0):
- r1kit `math_reward`: precision 1.000, recall 1.000 (88 true matches, 0 false, 0 missed).
- raw math-verify, `verify(parse(gold), parse(answer))` with default settings on the same
  extracted answer strings: precision 0.577, recall 0.511 (45 / 33 / 43). Bare strings go
  through its plain-expression extractor, which reads `2^{100}` as 2 and `3x-y+13=0` as 0.
- the same with the strings wrapped in `$...$`: precision 0.815, recall 1.000 (88 / 20 / 0): the
  20 false matches are the rounding, malformed-LaTeX and hedging rows.
"""

import json
from pathlib import Path

from math_verify import parse, verify

from rewards import extract_answer, math_reward

ROWS = [json.loads(line) for line in (Path(__file__).parent / "data" / "math_labels.jsonl").open()]


def precision_recall(predicted: list[bool]) -> tuple[float, float]:
    labels = [bool(r["expected"]) for r in ROWS]
    tp = sum(p and y for p, y in zip(predicted, labels, strict=True))
    fp = sum(p and not y for p, y in zip(predicted, labels, strict=True))
    fn = sum(y and not p for p, y in zip(predicted, labels, strict=True))
    return tp / (tp + fp), tp / (tp + fn)


def test_the_set_is_large_and_hard_enough():
    assert len(ROWS) >= 150
    assert sum(r["expected"] == 0 for r in ROWS) >= 0.4 * len(ROWS)
    notes = " ".join(r["note"] for r in ROWS)
    for kind in ["values round together", "both reduce to 0", "malformed LaTeX", "HEDGE"]:
        assert kind in notes


def test_r1kit_math_reward_precision_and_recall():
    predicted = [math_reward(r["completion"], answer=r["answer"]) == 1.0 for r in ROWS]
    wrong = [r["note"] for p, r in zip(predicted, ROWS, strict=True) if p != bool(r["expected"])]
    precision, recall = precision_recall(predicted)
    assert precision == 1.0, wrong
    assert recall >= 0.97, wrong


def test_raw_math_verify_falls_for_the_false_matches():
    # The set must be able to tell the two apart: raw math-verify makes false matches on it.
    predicted = []
    for r in ROWS:
        answer = extract_answer(r["completion"])
        predicted.append(answer is not None and verify(parse(r["answer"]), parse(answer)))
    precision, _ = precision_recall(predicted)
    assert precision < 0.9
