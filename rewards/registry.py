"""Reward functions by name, and the contract every reward function follows.

A reward function scores one completion: `fn(completion: str, **row) -> float`, where `row`
holds the data row's fields (e.g. `answer`) and the function ignores the fields it does not use.
Whatever the model wrote, the function returns a score; it raises `RewardDataError` when the
*row* is bad (an unparsable gold answer), because a data error must stop a run, not score 0, and
`RewardSetupError` when it cannot grade safely here at all (no sandbox for code).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

RewardFn = Callable[..., float]

# Module paths relative to this package, so that `get_reward` works wherever it is installed.
BUILTIN_REWARDS: dict[str, str] = {
    "math": ".math:math_reward",
    "format": ".format:format_reward",
    "code": ".code:code_reward",
    "code_binary": ".code:code_reward_binary",
    "reasoning_gym": ".reasoning_gym:reasoning_gym_reward",
    "environment": ".environment:environment_reward",
}


class RewardDataError(ValueError):
    """The data row, not the completion, is invalid (e.g. an unparsable gold answer)."""


class RewardSetupError(RuntimeError):
    """The reward cannot run safely on this machine (e.g. no sandbox for code): stop, never 0."""


def get_reward(name: str) -> RewardFn:
    """The reward function called `name`: a built-in name, or "package.module:function".

    >>> get_reward("format").__name__
    'format_reward'
    """
    target = BUILTIN_REWARDS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not (sep and module_name and attr):
        known = ", ".join(sorted(BUILTIN_REWARDS))
        raise ValueError(f"unknown reward {name!r}: use one of {known}, or 'module:function'")
    module = importlib.import_module(module_name, package=__package__)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward {name!r}: module {module_name!r} has no function {attr!r}")
    return fn
