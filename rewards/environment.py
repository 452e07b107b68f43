"""The reward an environment gave its own episode (multi-turn rollouts with tools)."""

from __future__ import annotations


def environment_reward(completion: str, *, env_reward: float | None = None, **_: object) -> float:
    """The episode's ``env_reward`` (what the environment's last ``step`` returned as its
    reward), 0.0 where it gave none. Multi-turn samples reach every reward with ``turns``,
    ``tool_calls`` and ``env_reward`` besides the row's fields."""
    return 0.0 if env_reward is None else float(env_reward)
