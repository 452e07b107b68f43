"""Rewards for R1-style GRPO: graders of completions, and a pool that runs them safely.

A reward function is `fn(completion: str, **row) -> float` (see `rewards.registry`). Score
untrusted model output through `RewardPool`, which bounds each sample's time and turns what the
reward functions raise into counted zeros.
"""

from .format import format_reward
from .math import extract_answer, final_answers, math_reward
from .pool import RewardPool, ScoreResult, stats
from .registry import RewardDataError, RewardFn, get_reward
from .shaping import overlong_penalty

__all__ = [
    "RewardDataError",
    "RewardFn",
    "RewardPool",
    "ScoreResult",
    "extract_answer",
    "final_answers",
    "format_reward",
    "get_reward",
    "math_reward",
    "overlong_penalty",
    "stats",
]
