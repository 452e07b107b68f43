"""One learner rank: a Ray actor (or, in tests, a plain object) holding an FSDP2 shard of the
policy and its optimizer state; ``rl.learner_group.LearnerGroup`` drives all ranks.

Gradient scaling: each rank's loss is (its rows' sum) / (global denominator), so the sum of
the ranks' losses is the global loss. FSDP2 averages gradients over ranks, so each rank
backpropagates ``world_size * loss`` and the reduced gradient is the global one.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from model.moe import RoutingRecorder, add_expert_load, update_router_bias
from model.mtp import MTPForward, mtp_layer
from rl.batch import Batch
from rl.checkpoint import load_learner_state, save_learner_state
from rl.fsdp import apply_fsdp, gather_full_state
from rl.logprobs import (
    first_target,
    share_prompts,
    shared_token_logprobs,
    token_logprobs,
)
from rl.loss_config import LossConfig
from rl.losses import decoupled_policy_loss, kl_loss, policy_loss, sft_loss
from rl.metrics import MTPStats, UpdateStats


class LearnerRank:
    """One rank: loads the policy, shards it, owns its optimizer state."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        model_dir: str,
        *,
        dtype: str = "float32",
        backend: str = "auto",
        threads: int | None = None,
        seed: int = 0,
        lora: dict[str, Any] | None = None,
        share_prompts: int = 0,
        activation_checkpointing: bool = False,
        offload_optimizer: bool = False,
    ) -> None:
        self.rank, self.world_size, self.model_dir = rank, world_size, model_dir
        self.activation_checkpointing = activation_checkpointing
        self.offload_optimizer = offload_optimizer
        self.dtype, self.seed, self.lora = dtype, seed, lora
        self.share_prompts = share_prompts  # max tokens of a packed row; 0: no packing
        self.backend = (
            backend if backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
        )
        if threads:
            torch.set_num_threads(threads)
        self.model = self.optimizer = self.reference = None
        self.last_export = {"sync_bytes": 0, "sync_buckets": 0}

    def address(self) -> tuple[str, int]:
        """Host and a free port for the group's rendezvous (asked of rank 0)."""
        host = socket.gethostbyname(socket.gethostname()) if self.world_size > 1 else "127.0.0.1"
        with socket.socket() as s:
            s.bind(("", 0))
            return host, s.getsockname()[1]

    def setup(self, master_addr: str, master_port: int) -> int:
        """Join the process group, load and shard the policy. Returns the parameter count."""
        from model import load_policy

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        if self.backend == "nccl":
            torch.cuda.set_device(self.rank % torch.cuda.device_count())
        dist.init_process_group(self.backend, rank=self.rank, world_size=self.world_size)
        device = "cuda" if self.backend == "nccl" else "cpu"
        mesh = dist.device_mesh.init_device_mesh(device, (self.world_size,))
        torch.manual_seed(self.seed)
        model, self.tokenizer = load_policy(self.model_dir, dtype="float32")
        if self.lora:  # adapters on the chosen families, everything else frozen
            from model.lora import apply_lora, lora_target_names

            adapted, _ = lora_target_names(model, self.lora["targets"])
            # what a sync moves: the merged adapted weights, and buffers (router biases)
            self._lora_synced = {f"{m}.weight" for m in adapted}
            self._lora_synced |= {name for name, _ in model.named_buffers()}
            model = apply_lora(model, **self.lora)
        model.to(device)
        if self.activation_checkpointing:  # each decoder layer recomputed in the backward
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        param_dtype = torch.bfloat16 if self.dtype == "bfloat16" else None
        apply_fsdp(model, mesh, param_dtype=param_dtype, offload=self.offload_optimizer)
        # the MTP module trains with its own loss, never under LoRA (adapters only train);
        # taken after sharding, which replaces every parameter with its DTensor
        layer = None if self.lora else mtp_layer(model)
        self._mtp_params = set() if layer is None else {id(p) for p in layer.parameters()}
        self.model, self.device, self.mesh = model, device, mesh
        return sum(p.numel() for p in model.parameters())

    def snapshot_reference(self) -> None:
        """Freeze a copy of the current weights (same sharding) as the KL reference policy.
        With LoRA the reference is the model with its adapters disabled: nothing to copy."""
        if self.lora:
            return
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            set_model_state_dict,
        )

        from model.hf import policy_from_config

        reference = policy_from_config(self.model.config).to(self.device)
        param_dtype = torch.bfloat16 if self.dtype == "bfloat16" else None
        apply_fsdp(reference, self.mesh, param_dtype=param_dtype)
        set_model_state_dict(reference, get_model_state_dict(self.model))
        self.reference = reference.requires_grad_(False).eval()

    def configure_optimizer(self, lr: float, weight_decay: float = 0.0) -> None:
        """A fresh AdamW (each stage starts its own optimizer state)."""
        # FSDP2 keeps the root's parameters unsharded after a no-grad forward (nothing
        # reshards them before a backward): an optimizer would then hold other tensors
        self.model.reshard()
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=lr,
            betas=(0.9, 0.99),
            weight_decay=weight_decay,
        )

    def _micro_batches(self, batch: Batch, size: int, starts: Sequence[int] | None = None):
        """``(first row, micro-batch)`` pairs, padding columns trimmed: ``size`` rows each, or
        cut at ``starts`` (LearnerGroup's token-budgeted cuts, the same count on every rank)."""
        starts = range(0, len(batch), size) if starts is None else starts
        for start, end in zip(starts, [*starts[1:], len(batch)], strict=True):
            yield start, batch.select(slice(start, end)).trimmed()

    def _token_logprobs(self, model: torch.nn.Module, mb: Batch, temperature: float = 1.0, **kw):
        """``token_logprobs`` of a micro-batch on this rank's device, from its first target."""
        ids, attn = self._to(mb.input_ids), self._to(mb.attention_mask)
        return token_logprobs(model, ids, attn, temperature, start=first_target(mb.loss_mask), **kw)

    def _shared_logprobs(
        self, model: torch.nn.Module, mb: Batch, temperature: float, pack: bool = True, **kw
    ):
        """``(_token_logprobs result, tokens computed (N, L))``: from rows packed by prompt
        (rl.logprobs.share_prompts) when that saves work and ``pack``, values on the loss mask
        only."""
        packed = None
        if pack and self.share_prompts and model.config._attn_implementation == "sdpa":
            packed = share_prompts(mb.input_ids, mb.loss_mask, self.share_prompts)
        if packed is None:
            return self._token_logprobs(model, mb, temperature, **kw), mb.attention_mask
        packed = packed.to(self.device)
        out = shared_token_logprobs(model, packed, mb.input_ids, mb.loss_mask, temperature, **kw)
        return out, packed.valid

    def _to(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(self.device)

    def _trains_mtp(self, weight: float) -> bool:
        return bool(weight and self._mtp_params)

    def _mtp(self, mb: Batch, weight: float, **kw) -> MTPForward | nullcontext:
        """The MTP module's forward inside the policy's (model/mtp.py), when it trains."""
        if not self._trains_mtp(weight):
            return nullcontext()
        return MTPForward(self.model, self._to(mb.loss_mask), **kw)

    def _step(self, lr: float, max_grad_norm: float | None) -> float:
        """Clip and step; returns the policy's gradient norm. The MTP module's gradients are
        clipped on their own: its loss never changes how far the policy moves."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        params = list(self.model.parameters())
        policy = [p for p in params if id(p) not in self._mtp_params and p.requires_grad]
        norm = self._clip(policy, max_grad_norm)
        mtp = [p for p in params if id(p) in self._mtp_params and p.grad is not None]
        if mtp:
            self._clip(mtp, max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    @staticmethod
    def _clip(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def sft_step(
        self,
        batch: Batch,
        num_tokens: float,
        lr: float,
        micro_batch_size: int,
        max_grad_norm: float | None = 1.0,
        starts: Sequence[int] | None = None,
        mtp_loss_weight: float = 0.0,
    ) -> dict[str, Any]:
        """One optimizer step of NLL on the completion tokens (mean over the global batch),
        plus ``mtp_loss_weight`` times the MTP module's NLL of the tokens two ahead (over the
        same denominator; its gradient reaches the trunk, as in DeepSeek-V3's training)."""
        self.model.train()
        total, mtp_stats = 0.0, MTPStats()
        for _, mb in self._micro_batches(batch, micro_batch_size, starts):
            with self._mtp(mb, mtp_loss_weight) as mtp:
                lp = self._token_logprobs(self.model, mb)
            loss = sft_loss(lp, self._to(mb.loss_mask), num_tokens=num_tokens)
            if mtp is not None:
                mtp_loss = mtp_loss_weight * mtp.nll(num_tokens)
                loss = loss + mtp_loss
                mtp_stats.add(mtp, float(mtp_loss.detach()))
            (loss * self.world_size).backward()
            total += float(loss.detach())
        out: dict[str, Any] = {"loss": total, "grad_norm": self._step(lr, max_grad_norm)}
        if self._trains_mtp(mtp_loss_weight):
            out["mtp"] = mtp_stats
        return out

    @torch.no_grad()
    def logprobs(
        self,
        batch: Batch,
        micro_batch_size: int,
        temperature: float = 1.0,
        reference: bool = False,
        starts: Sequence[int] | None = None,
    ) -> Tensor:
        """(B, T-1) logprobs of this rank's rows (no grad), 0 off the mask: under the current
        weights (old logprobs of a multi-update step) or the frozen reference policy's."""
        model = self.reference if reference and not self.lora else self.model
        if model is None:
            raise RuntimeError("no reference policy: call snapshot_reference() first")
        adapters_off = self.model.disable_adapter() if reference and self.lora else nullcontext()
        out = torch.zeros_like(batch.loss_mask)
        with adapters_off:
            for start, mb in self._micro_batches(batch, micro_batch_size, starts):
                lp, _ = self._shared_logprobs(model, mb, temperature)
                lp = torch.where(self._to(mb.loss_mask) > 0, lp, 0.0).cpu()
                out[start : start + len(mb), : lp.shape[1]] = lp
        model.reshard()
        return out

    def grpo_step(
        self,
        batch: Batch,
        num_tokens: float,
        num_seqs: float,
        lr: float,
        micro_batch_size: int,
        loss: LossConfig,
        gradients_only: bool = False,
        starts: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """One optimizer step of the clipped policy-gradient loss on this rank's rows, over the
        whole batch's ``num_tokens`` / ``num_seqs`` denominators. Returns ``stats``
        (rl.metrics.UpdateStats), ``expert_load`` and ``grad_norm``; with
        ``gradients_only`` no step is taken and the full, reduced ``gradients`` are returned.

        Old logprobs are ``batch.old_logprobs`` when set (a step after the first on one batch);
        otherwise this forward's own, detached: ratio 1, the plain policy gradient. A KL term
        needs ``batch.ref_logprobs``; mismatch correction weighs every token's loss by
        min(old / rollout, cap) from ``batch.rollout_logprobs``."""
        self.model.train()
        stats, load, mtp_stats = UpdateStats(), {}, MTPStats()
        n_layers = self.model.config.num_hidden_layers
        for _, mb in self._micro_batches(batch, micro_batch_size, starts):
            mtp_context = self._mtp(
                mb, loss.mtp_loss_weight, detach=True, temperature=loss.temperature
            )
            with RoutingRecorder(self.model) as routing, mtp_context as mtp:
                (lp, entropy), tokens = self._shared_logprobs(
                    self.model,
                    mb,
                    loss.temperature,
                    pack=mtp is None,  # the MTP module reads whole, unpacked rows
                    with_entropy=True,
                    entropy_grad=loss.entropy_coef != 0,
                )
            records = routing.records
            main = {k: v for k, v in records.items() if k < n_layers}
            add_expert_load(load, main, self._to(tokens), self.model.config)
            value = self._update_loss(lp, entropy, mb, loss, num_tokens, num_seqs, stats)
            if mtp is not None:  # the draft learns to follow the policy's own samples
                mtp_records = {k: v for k, v in records.items() if k >= n_layers}
                add_expert_load(load, mtp_records, mtp.slots, self.model.config)
                mtp_loss = loss.mtp_loss_weight * mtp.nll(num_tokens)
                value = value + mtp_loss
                mtp_stats.add(mtp, float(mtp_loss.detach()))
            (value * self.world_size).backward()
        out: dict[str, Any] = {"stats": stats, "expert_load": load}  # this rank's rows
        if self._trains_mtp(loss.mtp_loss_weight):
            out["mtp"] = mtp_stats
        if gradients_only:  # leave the weights alone; return the full gradient instead
            out["gradients"] = {
                name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).cpu()
                for name, p in self.model.named_parameters()
                if p.grad is not None
            }
            self.optimizer.zero_grad(set_to_none=True)
            return out
        out["grad_norm"] = self._step(lr, loss.max_grad_norm)
        return out

    def _update_loss(
        self,
        lp: Tensor,
        entropy: Tensor,
        mb: Batch,
        cfg: LossConfig,
        num_tokens: float,
        num_seqs: float,
        stats: UpdateStats,
    ) -> Tensor:
        """One micro-batch's share of the GRPO loss (policy loss, KL term); adds its health
        metrics to ``stats``."""
        mask, rollout = self._to(mb.loss_mask), self._to(mb.rollout_logprobs)
        old = lp.detach() if mb.old_logprobs is None else self._to(mb.old_logprobs)
        denominators = {"num_tokens": num_tokens, "num_seqs": num_seqs}
        options = {
            "entropy": entropy if cfg.entropy_coef else None,
            **denominators,
            **cfg.policy_loss_options(),
        }
        weight_metrics = None
        if cfg.mismatch != "none":  # the engine's logprobs are the behaviour policy
            value, metrics = decoupled_policy_loss(
                lp, old, rollout, self._to(mb.advantages), mask,
                level=cfg.mismatch, cap=cfg.mismatch_cap, **options,
            )  # fmt: skip
            weight_metrics = {k: metrics.pop(k) for k in list(metrics) if "mismatch" in k}
        else:
            value, metrics = policy_loss(lp, old, self._to(mb.advantages), mask, **options)
        kl_value = torch.zeros(())
        if cfg.kl_coef > 0:
            kl_value = kl_loss(
                lp,
                self._to(mb.ref_logprobs),
                mask,
                kind=cfg.kl_estimator,
                loss_agg=cfg.loss_agg,
                **denominators,
            )
            value = value + cfg.kl_coef * kl_value
        n = float(mask.sum())
        if n > 0:  # else inert padding rows only
            stats.add(
                n,
                float(value.detach()),
                float(kl_value.detach()),
                (lp.detach() - rollout).abs() * mask,
                entropy.detach() * mask,
                metrics,
                weight_metrics,
            )
        return value

    @torch.no_grad()
    def routing(self, batch: Batch, micro_batch_size: int) -> dict[int, list[Tensor]]:
        """``{MoE layer: per row, the sorted top-k experts (tokens, k) of its non-padding
        tokens}`` from forwards in micro-batches of ``micro_batch_size`` ({} if dense)."""
        rows: dict[int, list[Tensor]] = {}
        for _, mb in self._micro_batches(batch, micro_batch_size):
            ids, attn = self._to(mb.input_ids), self._to(mb.attention_mask)
            with RoutingRecorder(self.model) as recorder:
                self.model(input_ids=ids, attention_mask=attn, use_cache=False)
            for layer, chosen in recorder.records.items():
                chosen = chosen.view(*ids.shape, -1).sort(-1).values.cpu()  # (B, T, k)
                lengths = mb.attention_mask.sum(1).tolist()
                rows.setdefault(layer, []).extend(
                    c[:n] for c, n in zip(chosen, lengths, strict=True)
                )
        self.model.reshard()
        return rows

    @torch.no_grad()
    def update_router_bias(self, load: dict[int, torch.Tensor], rate: float) -> None:
        """Auxiliary-loss-free balancing from the *global* expert load (every rank gets the
        same counts, so the replicated biases stay equal)."""
        update_router_bias(self.model, load, rate)

    def _full_state_dict(self, everywhere: bool = False) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict on rank 0 (every rank with ``everywhere``), on the
        CPU; {} elsewhere. A tensor
        several names share (tied input and output embeddings) is in it once, under its
        first name: engines and HF loaders tie it again from the config."""
        seen, aliases = set(), set()  # (FSDP2's state dict gives each name its own tensor)
        for name, param in self.model.named_parameters(remove_duplicate=False):
            if id(param) in seen:
                aliases.add(name)
            seen.add(id(param))
        shards = {k: v for k, v in self.model.state_dict().items() if k not in aliases}
        state = gather_full_state(shards, self.rank, self.world_size, everywhere)
        if self.lora and state:  # the plain model's weights, adapters merged in
            from model.lora import merge_full_state

            state = merge_full_state(state, self.lora["alpha"] / self.lora["r"])
        return state

    def export_weights(
        self,
        exclude: tuple[str, ...] = (),
        bucket_mb: float = 256,
        full: bool = False,
        folder: str | None = None,
        collective: bool = False,
    ) -> list[bytes] | list[str] | list[list[Any]] | None:
        """All ranks gather (once); rank 0 returns the weights in vLLM's checkpoint naming as
        safetensors buckets of about ``bucket_mb`` MB, cut between layers: blobs, or files
        written to ``folder`` (shared memory, for engines on this machine). ``exclude``: leave
        out tensors whose name contains one of these (a deliberately broken sync, to test
        ``r1kit check``). ``full``: every weight even with LoRA (an engine holding anything).
        ``collective``: the buckets stay here as flat buffers for ``send_weights``; returns
        their layout (``TensorMeta`` rows per bucket, what the engines' receive takes)."""
        from rollouts.engine import pack_buckets, split_buckets
        from rollouts.weight_transfer import flatten

        t0 = time.perf_counter()
        state = self._full_state_dict()
        if self.rank != 0:
            return None
        gathered = time.perf_counter()
        kept = self._synced(state, full, exclude)
        if collective:
            named = split_buckets(kept, int(bucket_mb * 2**20))
            self._outgoing = [flatten(bucket) for bucket in named]
            buckets: list[Any] = [metas for _, metas in self._outgoing]
            nbytes = sum(buffer.numel() for buffer, _ in self._outgoing)
        else:
            buckets = pack_buckets(kept, int(bucket_mb * 2**20), folder)
            nbytes = sum(len(b) if isinstance(b, bytes) else os.path.getsize(b) for b in buckets)
        self.last_export = {
            "sync_bytes": nbytes,
            "sync_buckets": len(buckets),
            "sync_gather_rank_s": gathered - t0,
            "sync_pack_s": time.perf_counter() - gathered,
        }
        return buckets

    def _synced(
        self, state: dict[str, torch.Tensor], full: bool, exclude: tuple[str, ...] = ()
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """What a sync moves of a full state dict, in vLLM's checkpoint naming: with LoRA
        only the merged adapted weights and the buffers, unless ``full``; minus the names
        containing a part of ``exclude``."""
        from model import to_vllm_weights

        if self.lora and not full:  # only adapted weights (and buffers) change: sync those
            state = {k: v for k, v in state.items() if k in self._lora_synced}
        return to_vllm_weights(
            (k, v) for k, v in state.items() if not any(part in k for part in exclude)
        )

    def weight_group_address(self) -> tuple[str, int, str]:
        """This node's address, a free port (where the weight-sync group meets) and the
        group's backend: nccl when this rank trains on a GPU, else gloo."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port, self.backend

    def join_weight_group(self, host: str, port: int, world_size: int) -> None:
        """Rank 0 becomes member 0 of the weight-sync group (it hosts the group's store)."""
        from rollouts.weight_transfer import WeightGroup

        self._weight_group = WeightGroup(host, port, 0, world_size, self.backend)

    def send_weights(self) -> float:
        """Broadcast the buffers of the last collective ``export_weights`` to the group (the
        engines receive them in the same order); returns the seconds it took. The buffers
        are kept: ``last_sync_blobs`` gives them to a replacement engine."""
        t0 = time.perf_counter()
        try:
            for buffer, _ in self._outgoing:
                self._weight_group.broadcast(buffer.to(self._weight_group.device))
        except Exception:  # a member died: release the others, the driver forms a new group
            self._weight_group.close()
            raise
        return time.perf_counter() - t0

    def last_sync_blobs(self) -> list[bytes]:
        """The last collective sync as safetensors blobs (``update_weights`` takes them)."""
        from rollouts.engine import pack_weights
        from rollouts.weight_transfer import unflatten

        return [pack_weights(unflatten(buffer, metas)) for buffer, metas in self._outgoing]

    def last_export_size(self) -> dict[str, int]:
        """Bytes and buckets of this rank's last ``export_weights`` (rank 0's are the sync's)."""
        return self.last_export

    def save(self, path: str) -> str | None:
        """All ranks gather; rank 0 writes a Hugging Face checkpoint folder."""
        from model import save_policy
        from model.hf import policy_from_config

        state = self._full_state_dict()
        if self.rank != 0:
            return None
        with torch.device("meta"):
            shell = policy_from_config(self.model.config)
        shell.load_state_dict(state, strict=False, assign=True)
        shell.tie_weights()  # a tied output embedding was gathered once, as the input's
        save_policy(shell, self.tokenizer, Path(path))
        return path

    def save_state(self, path: str) -> None:
        """All ranks write their shards of model, optimizer (and reference policy) state and
        their RNG state: a resumable checkpoint (rl.checkpoint)."""
        save_learner_state(path, self.rank, self.model, self.optimizer, self.reference)

    def load_state(self, path: str) -> None:
        """Restore what ``save_state`` wrote (optimizer, and reference if any, set up first)."""
        load_learner_state(path, self.rank, self.model, self.optimizer, self.reference)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
