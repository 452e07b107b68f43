"""Rollout engines (vLLM) behind one small interface, Ray rollout workers, weight sync."""

from rollouts.types import Completion

__all__ = ["Completion"]
