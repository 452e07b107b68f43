"""Raw math-verify as a custom reward (`module:function`), to compare r1kit's math reward with."""

from math_verify import parse, verify

from rewards import RewardDataError, extract_answer


def reward(completion: str, answer: str | None = None, **_: object) -> float:
    """verify(parse(gold), parse(answer)) with default settings on the extracted answer."""
    if not isinstance(answer, str):
        raise RewardDataError("the row has no string field 'answer'")
    predicted = extract_answer(completion)
    if predicted is None:
        return 0.0
    return float(verify(parse(answer), parse(predicted)))
