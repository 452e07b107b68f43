"""Rollout engines (vLLM) behind one small interface, Ray rollout workers, weight sync."""

from rollouts.types import Completion

__all__ = ["Completion", "RolloutGroup", "RolloutWorkerError"]


def __getattr__(name: str):
    """``RolloutGroup`` on first use: importing ``rollouts.types`` stays free of Ray and torch."""
    if name in ("RolloutGroup", "RolloutWorkerError"):
        from rollouts import group

        return getattr(group, name)
    raise AttributeError(f"module 'rollouts' has no attribute {name!r}")
