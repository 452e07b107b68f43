"""The driver's handle on all learner ranks (Ray actors)."""

from __future__ import annotations

from typing import Any

import ray
import torch

from rl.batch import Batch, micro_batch_starts
from rl.learner import LearnerRank
from rl.loss_config import LossConfig
from rl.metrics import MTPStats, UpdateStats

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
        lora: dict[str, Any] | None = None,
        micro_batch_tokens: int | None = None,
        share_prompts: int = 0,
        resources: dict[str, float] | None = None,
        activation_checkpointing: bool = False,
        offload_optimizer: bool = False,
        rank_cls: type = LearnerRank,
        env: dict[str, str] | None = None,
    ) -> None:
        """``rank_cls``: what each rank's actor holds (``rl.colocated.ColocatedRank`` for
        ranks that host rollout engines); ``env``: environment variables of their processes."""
        actor = ray.remote(
            num_cpus=0,
            num_gpus=num_gpus_per_rank,
            resources=resources or None,
            runtime_env={"env_vars": env} if env else None,
        )(rank_cls)
        self.world_size = world_size
        self.micro_batch_tokens = micro_batch_tokens
        self.ranks = [
            actor.remote(
                r,
                world_size,
                model_dir,
                dtype=dtype,
                backend=backend,
                threads=threads,
                seed=seed,
                lora=lora,
                share_prompts=share_prompts,
                activation_checkpointing=activation_checkpointing,
                offload_optimizer=offload_optimizer,
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
        """Rank ``r``'s result for rows ``self._rows(batch)[r]`` of ``batch``. With
        ``micro_batch_tokens``, passes of ``sft_step``/``logprobs``/``grpo_step`` are cut by
        padded tokens as well as rows, at the same rows on every rank (FSDP2 pairs passes)."""
        batch = batch.padded(-len(batch) % self.world_size)
        ranks_rows = self._rows(batch)
        if self.micro_batch_tokens and method in ("sft_step", "logprobs", "grpo_step"):
            longest = torch.stack([batch.attention_mask[rows].sum(1) for rows in ranks_rows])
            kwargs["starts"] = micro_batch_starts(
                longest.max(0).values.tolist(), kwargs["micro_batch_size"], self.micro_batch_tokens
            )
        refs = [
            getattr(r, method).remote(batch.select(rows), **kwargs)
            for r, rows in zip(self.ranks, ranks_rows, strict=True)
        ]
        return ray.get(refs, timeout=TIMEOUT_S)

    def _rows(self, batch: Batch) -> list[torch.Tensor]:
        """Each rank's rows, longest first, dealt round-robin from the length-sorted batch.

        Equal row counts per rank (FSDP2 needs every rank to run the same number of passes:
        its collectives pair up; ``_split`` pads with inert rows first, the loss
        denominators are counted before), near-equal token counts, and each rank's
        micro-batches cut from rows of similar length: little padding to compute on. Row
        order does not change any loss or gradient (token sums over global denominators)."""
        lengths = batch.attention_mask.sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        return [order[r :: self.world_size] for r in range(self.world_size)]

    def configure_optimizer(self, lr: float, weight_decay: float = 0.0) -> None:
        self._all("configure_optimizer", lr, weight_decay)

    def sft_step(
        self, batch: Batch, lr: float, micro_batch_size: int, mtp_loss_weight: float = 0.0
    ) -> dict[str, float]:
        """One SFT step; ``loss`` includes the MTP term, reported apart as ``mtp_loss`` with
        ``mtp_accuracy`` when the policy has an MTP module that trains."""
        num_tokens = float(batch.loss_mask.sum())
        outs = self._split(
            "sft_step",
            batch,
            num_tokens=num_tokens,
            lr=lr,
            micro_batch_size=micro_batch_size,
            mtp_loss_weight=mtp_loss_weight,
        )
        out = {"loss": sum(o["loss"] for o in outs), "grad_norm": outs[0]["grad_norm"]}
        return {**out, **_mtp_metrics(outs, acceptance=False)}

    def logprobs(
        self, batch: Batch, micro_batch_size: int, temperature: float, reference: bool = False
    ) -> torch.Tensor:
        """(B, T-1) logprobs of every row (no grad), 0 off the mask: under the current weights
        or, with ``reference``, the frozen reference policy's."""
        padded = batch.padded(-len(batch) % self.world_size)
        outs = self._split(
            "logprobs",
            padded,
            micro_batch_size=micro_batch_size,
            temperature=temperature,
            reference=reference,
        )
        out = torch.zeros_like(padded.loss_mask)
        for rows, part in zip(self._rows(padded), outs, strict=True):
            out[rows] = part
        return out[: len(batch)]

    def routing_agreement(self, batch: Batch, micro_a: int, micro_b: int) -> float | None:
        """Fraction of (token, MoE layer) pairs whose top-k expert set is the same in forwards
        cut into micro-batches of ``micro_a`` and of ``micro_b`` rows (None for dense)."""
        a, b = (self._split("routing", batch, micro_batch_size=m) for m in (micro_a, micro_b))
        same = total = 0
        for rank_a, rank_b in zip(a, b, strict=True):
            for layer, rows in rank_a.items():
                for x, y in zip(rows, rank_b[layer], strict=True):
                    same += int((x == y).all(-1).sum())
                    total += x.shape[0]
        return same / total if total else None

    def snapshot_reference(self) -> None:
        self._all("snapshot_reference")

    def grpo_step(
        self,
        batch: Batch,
        lr: float,
        micro_batch_size: int,
        loss: LossConfig,
        gradients_only: bool = False,
    ) -> dict[str, Any]:
        """One optimizer step over ``batch`` on all ranks; loss denominators are the batch's.
        Returns the update's metrics (rl.metrics.UpdateStats.report, ``grad_norm``,
        ``rows_learned``, ``expert_load`` for MoE policies); ``gradients_only``: no step, the
        metrics plus ``gradients`` (name -> full tensor)."""
        num_tokens = float(batch.loss_mask.sum())
        num_seqs = float((batch.loss_mask.sum(1) > 0).sum())
        if not loss.every_row_learns:
            # A row with advantage 0 (e.g. every row of an all-equal group) then adds exactly
            # 0 to the loss and its gradient; with the denominators counted above on the whole
            # batch, skipping it changes nothing but the time. Health metrics (entropy,
            # learner-vs-rollout logprob diff) are then over the rows that learn.
            batch = batch.select(batch.advantages != 0)
        if len(batch) == 0:  # nothing to learn from: no optimizer step either
            return {"loss": 0.0, "grad_norm": 0.0, "rows_learned": 0}
        outs = self._split(
            "grpo_step",
            batch,
            num_tokens=num_tokens,
            num_seqs=num_seqs,
            lr=lr,
            micro_batch_size=micro_batch_size,
            loss=loss,
            gradients_only=gradients_only,
        )
        stats = sum((o["stats"] for o in outs), UpdateStats())
        metrics = {
            **stats.report(kl=loss.kl_coef > 0, mismatch=loss.mismatch != "none"),
            "grad_norm": outs[0].get("grad_norm"),
            "rows_learned": len(batch),
            **_expert_load_metrics(outs),
            **_mtp_metrics(outs),
        }
        if gradients_only:
            metrics["gradients"] = outs[0]["gradients"]
        return metrics

    def export_weights(
        self,
        exclude: tuple[str, ...] = (),
        bucket_mb: float = 256,
        full: bool = False,
        folder: str | None = None,
        collective: bool = False,
    ) -> ray.ObjectRef:
        """Gather once; an ObjectRef to rank 0's list of weight buckets (ship it to rollout
        workers: it goes through the object store once, whatever their number), or of the
        paths of bucket files written to ``folder``, or (``collective``) of the buckets'
        layouts, their buffers kept on rank 0 for ``send_weights``."""
        refs = [
            r.export_weights.remote(exclude, bucket_mb, full, folder, collective)
            for r in self.ranks
        ]
        ray.wait(refs, num_returns=len(refs), timeout=TIMEOUT_S)
        return refs[0]

    def start_engines(
        self, model_dir: str, count: int, seed: int = 0, **engine_kwargs: Any
    ) -> list:
        """Ranks ``0..count-1`` (``ColocatedRank`` actors) each build a rollout engine in
        their process (engine seed ``seed + rank``); returns those actors, the workers of a
        ``RolloutGroup(actors=...)``."""
        engines = self.ranks[:count]
        ray.get(
            [
                r.start_engine.remote(model_dir, seed=seed + k, **engine_kwargs)
                for k, r in enumerate(engines)
            ],
            timeout=TIMEOUT_S,
        )
        return engines

    def sync_colocated(self, version: int | None, engines: int, full: bool = False) -> dict:
        """The weights into the colocated engines, in memory (``ColocatedRank.sync_engine``):
        one gather (an all-gather when more than one rank hosts an engine); rank 0's figures."""
        outs = self._all("sync_engine", version, full, engines > 1)
        return outs[0]

    def weight_group_address(self) -> tuple[str, int, str]:
        """Where the weight-sync group meets (rank 0's node address, a free port there) and
        its backend (nccl when rank 0 trains on a GPU, else gloo)."""
        return ray.get(self.ranks[0].weight_group_address.remote(), timeout=TIMEOUT_S)

    def join_weight_group(self, host: str, port: int, world_size: int) -> ray.ObjectRef:
        """Rank 0 joins (and hosts) the weight-sync group; completes once all members have."""
        return self.ranks[0].join_weight_group.remote(host, port, world_size)

    def send_weights(self) -> ray.ObjectRef:
        """Rank 0 broadcasts the last collective export (its seconds, when it completes)."""
        return self.ranks[0].send_weights.remote()

    def last_sync_blobs(self) -> ray.ObjectRef:
        """The last collective sync as safetensors blobs, for an engine that missed it."""
        return self.ranks[0].last_sync_blobs.remote()

    def update_router_bias(self, load: dict[int, list[int]], rate: float) -> None:
        self._all("update_router_bias", {k: torch.tensor(v) for k, v in load.items()}, rate)

    def node_id(self) -> str:
        """The Ray node rank 0 runs on (where weight exports are written)."""
        return self.node_ids()[0]

    def node_ids(self) -> list[str]:
        """The Ray node of every rank, in rank order."""
        return ray.get(
            [
                r.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
                for r in self.ranks
            ],
            timeout=TIMEOUT_S,
        )

    def last_export_size(self) -> dict[str, int]:
        return ray.get(self.ranks[0].last_export_size.remote(), timeout=TIMEOUT_S)

    def save(self, path: str) -> None:
        self._all("save", path)

    def save_state(self, path: str) -> None:
        self._all("save_state", path)

    def load_state(self, path: str) -> None:
        self._all("load_state", path)

    def dead_ranks(self, timeout_s: float = 30) -> list[int]:
        """The ranks whose actor is dead (a rank busy for ``timeout_s`` counts as alive)."""
        pings = [r.__ray_ready__.remote() for r in self.ranks]
        ray.wait(pings, num_returns=len(pings), timeout=timeout_s)
        dead = []
        for rank, ping in enumerate(pings):
            try:
                ray.get(ping, timeout=0)
            except ray.exceptions.RayActorError:
                dead.append(rank)
            except ray.exceptions.GetTimeoutError:
                pass
        return dead

    def shutdown(self) -> None:
        """Leave the process group and end every rank (a dead one's peers too)."""
        try:
            refs = [r.shutdown.remote() for r in self.ranks]
            ray.wait(refs, num_returns=len(refs), timeout=60)
        finally:
            for r in self.ranks:
                ray.kill(r)


def _expert_load_metrics(outs: list[dict]) -> dict[str, Any]:
    """Tokens per routed expert, summed over ranks, per MoE layer (absent for dense policies)."""
    layers = sorted({layer for o in outs for layer in o["expert_load"]})
    if not layers:
        return {}
    return {
        "expert_load": {
            str(layer): sum(
                o["expert_load"][layer] for o in outs if layer in o["expert_load"]
            ).tolist()
            for layer in layers
        }
    }


def _mtp_metrics(outs: list[dict], acceptance: bool = True) -> dict[str, float]:
    """The MTP module's metrics over ranks (rl.metrics.MTPStats); {} when it did not train."""
    parts = [o["mtp"] for o in outs if "mtp" in o]
    return sum(parts, MTPStats()).report(acceptance) if parts else {}
