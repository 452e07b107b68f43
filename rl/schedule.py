"""Learning-rate schedules (pure): linear warm-up, then constant, linear decay, or
warmup-stable-decay (constant, then a linear decay over the last 20% of the steps)."""

from __future__ import annotations

SCHEDULES = ("constant", "linear", "wsd")
WSD_DECAY_FRACTION = 0.2


def lr_at(
    step: int,
    total: int,
    peak: float,
    warmup: int = 0,
    schedule: str = "constant",
    final_ratio: float = 0.1,
) -> float:
    """Learning rate of 1-based ``step`` of ``total``.

    Warm-up rises linearly to ``peak`` over ``warmup`` steps. Then ``constant`` stays at
    ``peak``; ``linear`` falls linearly to ``final_ratio * peak`` at the last step; ``wsd``
    stays at ``peak`` and falls linearly to ``final_ratio * peak`` over the last 20% of steps.

    >>> [round(lr_at(s, 10, 1.0, 4, "linear"), 6) for s in (1, 4, 5, 10)]
    [0.25, 1.0, 1.0, 0.1]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {SCHEDULES}")
    if warmup and step <= warmup:
        return peak * step / warmup
    decay_start = {
        "constant": total,
        "linear": warmup + 1,
        "wsd": max(warmup + 1, round(total * (1 - WSD_DECAY_FRACTION))),
    }[schedule]
    if step <= decay_start or total <= decay_start:
        return peak
    progress = (step - decay_start) / (total - decay_start)  # (0, 1] over the decay
    return peak * (1.0 - (1.0 - final_ratio) * progress)
