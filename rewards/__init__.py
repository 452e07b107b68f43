"""Rewards for R1-style GRPO: graders of completions, and a pool that runs them safely.

A reward function is `fn(completion: str, **row) -> float` (see `rewards.registry`): math
(`rewards.math`), code run in a sandbox (`rewards.code`, `rewards.sandbox`), the R1 format
(`rewards.format`), reasoning-gym's own scorers (`rewards.reasoning_gym`), or any
`module:function`; `rewards.shaping` holds length-based shaping.
Score untrusted model output through `RewardPool`, which bounds each sample's time and turns
what the reward functions raise into counted zeros. `rewards.lab` evaluates a reward offline
(`r1kit eval-rewards`).
"""

from .code import code_reward, extract_code
from .format import format_reward
from .math import extract_answer, final_answers, math_reward
from .pool import RewardPool, ScoreResult, stats
from .registry import RewardDataError, RewardFn, RewardSetupError, get_reward
from .shaping import overlong_penalty

__all__ = [
    "RewardDataError",
    "RewardFn",
    "RewardSetupError",
    "RewardPool",
    "ScoreResult",
    "code_reward",
    "extract_answer",
    "extract_code",
    "final_answers",
    "format_reward",
    "get_reward",
    "math_reward",
    "overlong_penalty",
    "stats",
]
