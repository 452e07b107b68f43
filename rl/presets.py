"""Algorithm presets: GRPO, Dr. GRPO and DAPO are configurations of the same trainer.

``algorithm: NAME`` in a recipe (or ``algorithm=NAME`` on the command line) fills in the
``grpo.*`` keys below; keys the recipe sets itself win. Adding a variant is adding an entry.
A value may be a function of the grpo section (the recipe's keys over the preset's other keys
over the defaults, typed and checked), for a key that scales with another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rl.errors import ConfigError

ALGORITHMS: dict[str, dict[str, Any]] = {
    # DeepSeekMath / R1: group-normalised advantages, symmetric clip.
    "grpo": {"estimator": "grpo", "clip_low": 0.2, "clip_high": 0.2},
    # Dr. GRPO (Liu et al. 2025): no std division, no length normalisation per sequence.
    "dr_grpo": {
        "estimator": "dr_grpo",
        "loss_agg": "seq-mean-token-sum-norm",
        "clip_low": 0.2,
        "clip_high": 0.2,
    },
    # DAPO (Yu et al. 2025): clip-higher, dynamic sampling, token-level loss, overlong
    # shaping: a soft penalty over the last fifth of the length budget (the paper's 4096-token
    # buffer on 20480 new tokens), and truncated completions masked out of the loss.
    "dapo": {
        "estimator": "grpo",
        "loss_agg": "token-mean",
        "clip_low": 0.2,
        "clip_high": 0.28,
        "dynamic_sampling": True,
        "max_refill_rounds": 3,
        "overlong_buffer": lambda grpo: grpo.max_new_tokens // 5,
        "mask_truncated": True,
    },
}


def apply_algorithm(
    raw: dict[str, Any], source: str, build_grpo: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    """The raw recipe with the named algorithm's grpo keys filled in under its own.

    ``build_grpo`` turns a raw grpo mapping into the typed, checked section (``GRPOConfig``)
    that a preset's functions read.
    """
    name = raw.get("algorithm")
    if name is None:
        return raw
    if not isinstance(name, str) or name not in ALGORITHMS:
        raise ConfigError(
            f"{source}: key 'algorithm' must be one of {sorted(ALGORITHMS)} or null, got {name!r}"
        )
    grpo = raw.get("grpo") or {}
    if not isinstance(grpo, dict):
        return raw  # reported by the type check that follows
    preset = ALGORITHMS[name]
    merged = {**{k: v for k, v in preset.items() if not callable(v)}, **grpo}
    derived = {k: f for k, f in preset.items() if callable(f) and k not in grpo}
    if derived:
        section = build_grpo(merged)
        merged |= {k: f(section) for k, f in derived.items()}
    return {**raw, "grpo": merged}
