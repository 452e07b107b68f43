"""Ray placement-group strategies for the rollout workers.

Kept apart from ``rollouts/group.py`` (Ray, torch) so that recipe validation can name them
without importing either.
"""

from __future__ import annotations

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""Ray's names; ``RolloutGroup`` and recipes take them in any case (recipes: lowercase)."""
