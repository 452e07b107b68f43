"""Reward shaping that depends on the completion's length, not its text."""

from __future__ import annotations


def overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO's soft overlong punishment for a completion of `length` tokens.

    With L the completion length, L_max = `max_length` (the generation cap) and
    L_cache = `buffer` (DAPO, Yu et al. 2025, eq. 13):

        0                              if L <= L_max - L_cache
        ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
        -1                             if L > L_max

    It is added to the task reward, so a completion that runs into the cap is pushed to finish
    earlier without the cliff of a hard truncation penalty. A pure function of integers: the
    trainer calls it with the number of generated tokens (EOS included).

    Raises ValueError unless 0 < buffer <= max_length and length >= 0.

    >>> overlong_penalty(3000, max_length=4096, buffer=1024)  # 3000 <= 3072
    0.0
    >>> overlong_penalty(3584, max_length=4096, buffer=1024)  # (3072 - 3584) / 1024
    -0.5
    >>> overlong_penalty(4096, max_length=4096, buffer=1024)
    -1.0
    """
    if not 0 < buffer <= max_length:
        raise ValueError(
            f"need 0 < buffer <= max_length, got buffer={buffer}, max_length={max_length}"
        )
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    start = max_length - buffer
    if length <= start:
        return 0.0
    if length > max_length:
        return -1.0
    return (start - length) / buffer
