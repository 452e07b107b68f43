"""GPU kinds the planner knows: memory as the driver reports it, dense bf16 throughput,
memory bandwidth (the vendors' SXM figures)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float  # what nvidia-smi reports as total
    bf16_tflops: float  # dense, no sparsity
    hbm_tbps: float  # memory bandwidth, TB/s (what a decode step is bound by)
    per_node: int = 8


GPUS = {
    g.name: g
    for g in (
        GPU("h100", 79.6, 989, 3.35),
        GPU("h200", 139.8, 989, 4.8),
        GPU("h20", 95.6, 148, 4.0),
        GPU("a100", 80.0, 312, 2.039),
        GPU("a100-40g", 40.0, 312, 1.555),
        GPU("b200", 178.4, 2250, 8.0),
        GPU("l40s", 44.5, 362, 0.864),
    )
}


def gpu_kind(name: str) -> GPU:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise ValueError(f"--gpu: unknown GPU {name!r}; known: {', '.join(GPUS)}") from None
