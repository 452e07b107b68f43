"""A reward for evaluation tests that a random policy earns now and then (the math reward
needs an answer it never writes)."""


def first_char(completion: str, answer: str, **_: object) -> float:
    """1.0 if the completion starts with the gold answer's first character.

    >>> first_char("3 and more", answer="34"), first_char("", answer="3")
    (1.0, 0.0)
    """
    return float(completion[:1] == answer[:1])
