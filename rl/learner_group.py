"""The driver's handle on all learner ranks (Ray actors)."""

from __future__ import annotations

from typing import Any

import ray

from rl.batch import Batch, shard_rows
from rl.learner import LearnerRank

TIMEOUT_S = 1800  # no single learner call should take this long on any machine we target


class LearnerGroup:
    """``world_size`` LearnerRank actors forming one process group over one policy."""

    def __init__(
        self,
        model_dir: str,
        world_size: int,
        *,
        dtype: str = "float32",
        backend: str = "auto",
        threads: int | None = None,
        seed: int = 0,
        num_gpus_per_rank: float = 0,
    ) -> None:
        actor = ray.remote(num_cpus=0, num_gpus=num_gpus_per_rank)(LearnerRank)
        self.world_size = world_size
        self.ranks = [
            actor.remote(
                r, world_size, model_dir, dtype=dtype, backend=backend, threads=threads, seed=seed
            )
            for r in range(world_size)
        ]
        addr, port = ray.get(self.ranks[0].address.remote(), timeout=TIMEOUT_S)
        counts = self._all("setup", addr, port)
        self.num_params = counts[0]

    def _all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        refs = [getattr(r, method).remote(*args, **kwargs) for r in self.ranks]
        return ray.get(refs, timeout=TIMEOUT_S)

    def _split(self, method: str, batch: Batch, **kwargs: Any) -> list[Any]:
        """Equal row counts per rank: FSDP2 needs every rank to run the same number of
        forward/backward passes (its collectives pair up), so a batch whose rows do not
        divide evenly gets inert padding rows (global loss denominators are counted before)."""
        batch = batch.padded(-len(batch) % self.world_size)
        parts = shard_rows(len(batch), self.world_size)
        refs = [
            getattr(r, method).remote(batch.select(s), **kwargs)
            for r, s in zip(self.ranks, parts, strict=True)
        ]
        return ray.get(refs, timeout=TIMEOUT_S)

    def configure_optimizer(self, lr: float, weight_decay: float = 0.0) -> None:
        self._all("configure_optimizer", lr, weight_decay)

    def sft_step(self, batch: Batch, lr: float, micro_batch_size: int) -> dict[str, float]:
        num_tokens = float(batch.loss_mask.sum())
        outs = self._split(
            "sft_step", batch, num_tokens=num_tokens, lr=lr, micro_batch_size=micro_batch_size
        )
        return {"loss": sum(o["loss"] for o in outs), "grad_norm": outs[0]["grad_norm"]}

    def grpo_step(
        self,
        batch: Batch,
        lr: float,
        micro_batch_size: int,
        loss_cfg: dict[str, Any],
        temperature: float,
        max_grad_norm: float,
    ) -> dict[str, float]:
        num_tokens = float(batch.loss_mask.sum())
        num_seqs = float((batch.loss_mask.sum(1) > 0).sum())
        # A row with advantage 0 (e.g. every row of an all-equal group) adds exactly 0 to the
        # policy-gradient loss and its gradient; with the denominators counted above on the
        # whole batch, skipping those rows changes nothing but the time. Health metrics
        # (entropy, learner-vs-rollout logprob diff) are then over the rows that learn.
        batch = batch.select(batch.advantages != 0)
        if len(batch) == 0:  # nothing to learn from: no optimizer step either
            return {
                "loss": 0.0,
                "grad_norm": 0.0,
                "rows_learned": 0,
                "logprob_diff_mean": None,
                "logprob_diff_max": None,
                "entropy": None,
                "clip_frac_low": None,
                "clip_frac_high": None,
            }
        rows_learned = len(batch)
        outs = self._split(
            "grpo_step",
            batch,
            num_tokens=num_tokens,
            num_seqs=num_seqs,
            lr=lr,
            micro_batch_size=micro_batch_size,
            loss_cfg=loss_cfg,
            temperature=temperature,
            max_grad_norm=max_grad_norm,
        )
        tokens = max(sum(o["tokens"] for o in outs), 1.0)
        return {
            "loss": sum(o["loss"] for o in outs),
            "grad_norm": outs[0]["grad_norm"],
            "logprob_diff_mean": sum(o["lp_diff_sum"] for o in outs) / tokens,
            "logprob_diff_max": max(o["lp_diff_max"] for o in outs),
            "entropy": sum(o["entropy_sum"] for o in outs) / tokens,
            "clip_frac_low": sum(o["clip_low_sum"] for o in outs) / tokens,
            "clip_frac_high": sum(o["clip_high_sum"] for o in outs) / tokens,
            "rows_learned": rows_learned,
        }

    def export_weights(self) -> ray.ObjectRef:
        """Gather once; an ObjectRef to rank 0's weight blob (ship it to rollout workers)."""
        refs = [r.export_weights.remote() for r in self.ranks]
        ray.wait(refs, num_returns=len(refs), timeout=TIMEOUT_S)
        return refs[0]

    def save(self, path: str) -> None:
        self._all("save", path)

    def shutdown(self) -> None:
        try:
            self._all("shutdown")
        finally:
            for r in self.ranks:
                ray.kill(r)
