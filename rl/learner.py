"""The learner: ranks of one torch.distributed group, each a Ray actor holding an FSDP2 shard.

``LearnerRank`` is one rank (usable without Ray in tests); ``LearnerGroup`` is the driver's
handle on all of them: it splits each batch across ranks, passes every rank the *global*
token and sequence counts (so the loss does not depend on how rows are split across ranks or
micro-batches), and combines the ranks' metrics.

Gradient scaling: each rank's loss is (its rows' sum) / (global denominator), so the sum of
the ranks' losses is the global loss. FSDP2 averages gradients over ranks, so each rank
backpropagates ``world_size * loss`` and the reduced gradient is the global one.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from model.moe import RoutingRecorder, expert_load, update_router_bias
from rl.batch import Batch
from rl.fsdp import apply_fsdp, gather_full_state
from rl.logprobs import (
    first_target,
    share_prompts,
    shared_token_logprobs,
    token_logprobs,
)
from rl.losses import kl_loss, mismatch_weights, policy_loss, sft_loss

# Per-rank sums the LearnerGroup adds up (token-weighted where a mean is reported).
_SUMMED = (
    "loss",
    "kl",
    "lp_diff_sum",
    "entropy_sum",
    "clip_frac_low",
    "clip_frac_high",
    "ratio_mean",
    "is_weight_sum",
    "is_capped_sum",
    "tokens",
)


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
    ) -> None:
        self.rank, self.world_size, self.model_dir = rank, world_size, model_dir
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
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return socket.gethostbyname(
            socket.gethostname()
        ) if self.world_size > 1 else "127.0.0.1", port

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
        param_dtype = torch.bfloat16 if self.dtype == "bfloat16" else None
        apply_fsdp(model, mesh, param_dtype=param_dtype)
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
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_config(self.model.config).to(self.device)
        param_dtype = torch.bfloat16 if self.dtype == "bfloat16" else None
        apply_fsdp(reference, self.mesh, param_dtype=param_dtype)
        set_model_state_dict(reference, get_model_state_dict(self.model))
        self.reference = reference.requires_grad_(False).eval()

    def _reshard(self) -> None:
        """Register the sharded parameters again. FSDP2 keeps the root module's parameters
        unsharded after a forward until backward reshards them; after a no-grad forward
        nothing does, and an optimizer or a state dict would then see other tensors."""
        self.model.reshard()

    def configure_optimizer(self, lr: float, weight_decay: float = 0.0) -> None:
        """A fresh AdamW (each stage starts its own optimizer state)."""
        self._reshard()
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

    def _shared_logprobs(self, model: torch.nn.Module, mb: Batch, temperature: float, **kw):
        """``(_token_logprobs result, tokens computed (N, L))``: from rows packed by prompt
        (rl.logprobs.share_prompts) when that saves work, values on the loss mask only."""
        packed = None
        if self.share_prompts and model.config._attn_implementation == "sdpa":
            packed = share_prompts(mb.input_ids, mb.loss_mask, self.share_prompts)
        if packed is None:
            return self._token_logprobs(model, mb, temperature, **kw), mb.attention_mask
        packed = packed.to(self.device)
        out = shared_token_logprobs(model, packed, mb.input_ids, mb.loss_mask, temperature, **kw)
        return out, packed.valid

    def _to(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(self.device)

    def _step(self, lr: float, max_grad_norm: float | None) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), max_grad_norm or float("inf")
        )
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def sft_step(
        self,
        batch: Batch,
        num_tokens: float,
        lr: float,
        micro_batch_size: int,
        max_grad_norm: float | None = 1.0,
        starts: Sequence[int] | None = None,
    ) -> dict[str, float]:
        """One optimizer step of NLL on the completion tokens (mean over the global batch)."""
        self.model.train()
        total = 0.0
        for _, mb in self._micro_batches(batch, micro_batch_size, starts):
            lp = self._token_logprobs(self.model, mb)
            loss = sft_loss(lp, self._to(mb.loss_mask), num_tokens=num_tokens)
            (loss * self.world_size).backward()
            total += float(loss.detach())
        return {"loss": total, "grad_norm": self._step(lr, max_grad_norm)}

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
        loss_cfg: dict[str, Any],
        temperature: float = 1.0,
        max_grad_norm: float | None = 1.0,
        kl: dict[str, Any] | None = None,
        mismatch: dict[str, Any] | None = None,
        gradients_only: bool = False,
        starts: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """One optimizer step of the clipped policy-gradient loss on this rank's rows
        (``gradients_only``: no step; the full, reduced gradient is returned instead).

        Old logprobs are ``batch.old_logprobs`` when set (a step after the first on one batch);
        otherwise this forward's own, detached: ratio 1, the plain policy gradient.
        ``loss_cfg``: policy_loss's clip / aggregation / ratio_level / entropy_coef keys.
        ``kl``: {"coef", "kind"}: add coef * KL(policy || reference) to the loss (needs
        ``batch.ref_logprobs``). ``mismatch``: {"level", "cap"}: truncated importance weights
        old / rollout on every token's loss (rollout/learner mismatch correction)."""
        self.model.train()
        sums = dict.fromkeys(_SUMMED, 0.0)
        sums.update(lp_diff_max=0.0, ratio_min=float("inf"), ratio_max=0.0, is_weight_max=0.0)
        entropy_coef = loss_cfg.get("entropy_coef", 0.0)
        denominators = {"num_tokens": num_tokens, "num_seqs": num_seqs}
        load: dict[int, torch.Tensor] = {}
        for _, mb in self._micro_batches(batch, micro_batch_size, starts):
            mask = self._to(mb.loss_mask)
            with RoutingRecorder(self.model) as routing:
                (lp, entropy), tokens = self._shared_logprobs(
                    self.model, mb, temperature, with_entropy=True, entropy_grad=entropy_coef > 0
                )
            _add_load(load, routing.records, self._to(tokens), self.model.config)
            old = lp.detach() if mb.old_logprobs is None else self._to(mb.old_logprobs)
            rollout = self._to(mb.rollout_logprobs)
            weights, wm = None, None
            if mismatch:
                weights, wm = mismatch_weights(old, rollout, mask, **mismatch)
            loss, m = policy_loss(
                lp,
                old,
                self._to(mb.advantages),
                mask,
                weights=weights,
                entropy=entropy if entropy_coef else None,
                **denominators,
                **loss_cfg,
            )
            kl_value = None
            if kl:
                kl_value = kl_loss(
                    lp,
                    self._to(mb.ref_logprobs),
                    mask,
                    kind=kl["kind"],
                    loss_agg=loss_cfg.get("loss_agg", "token-mean"),
                    **denominators,
                )
                loss = loss + kl["coef"] * kl_value
            (loss * self.world_size).backward()
            n = float(mask.sum())
            if n == 0:  # inert padding rows only
                continue
            _accumulate(sums, n, loss, kl_value, (lp.detach() - rollout).abs() * mask, m, wm)
            sums["entropy_sum"] += float((entropy.detach() * mask).sum())
        sums["expert_load"] = load  # {layer: tokens per expert}, this rank's rows
        if gradients_only:  # leave the weights alone; return the full gradient instead
            sums["gradients"] = {
                name: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).cpu()
                for name, p in self.model.named_parameters()
                if p.grad is not None
            }
            self.optimizer.zero_grad(set_to_none=True)
            return sums
        sums["grad_norm"] = self._step(lr, max_grad_norm)
        return sums

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

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict on rank 0, on the CPU; {} elsewhere."""
        state = gather_full_state(self.model.state_dict(), self.rank, self.world_size)
        if self.lora and self.rank == 0:  # the plain model's weights, adapters merged in
            from model.lora import merge_full_state

            state = merge_full_state(state, self.lora["alpha"] / self.lora["r"])
        return state

    def export_weights(
        self, exclude: tuple[str, ...] = (), bucket_mb: float = 256, full: bool = False
    ) -> list[bytes] | None:
        """All ranks gather (once); rank 0 returns the weights in vLLM's checkpoint naming as
        safetensors buckets of about ``bucket_mb`` MB, cut between layers. ``exclude``: leave
        out tensors whose name contains one of these (a deliberately broken sync, to test
        ``r1kit check``). ``full``: every weight even with LoRA (an engine holding anything)."""
        from model import to_vllm_weights
        from rollouts.engine import pack_buckets

        t0 = time.perf_counter()
        state = self._full_state_dict()
        if self.rank != 0:
            return None
        gathered = time.perf_counter()
        if self.lora and not full:  # only adapted weights (and buffers) change: sync those
            state = {k: v for k, v in state.items() if k in self._lora_synced}
        kept = [(k, v) for k, v in state.items() if not any(part in k for part in exclude)]
        buckets = pack_buckets(to_vllm_weights(kept), int(bucket_mb * 2**20))
        self.last_export = {
            "sync_bytes": sum(map(len, buckets)),
            "sync_buckets": len(buckets),
            "sync_gather_rank_s": gathered - t0,
            "sync_pack_s": time.perf_counter() - gathered,
        }
        return buckets

    def last_export_size(self) -> dict[str, int]:
        """Bytes and buckets of this rank's last ``export_weights`` (rank 0's are the sync's)."""
        return self.last_export

    def save(self, path: str) -> str | None:
        """All ranks gather; rank 0 writes a Hugging Face checkpoint folder."""
        from transformers import AutoModelForCausalLM

        from model import save_policy

        state = self._full_state_dict()
        if self.rank != 0:
            return None
        with torch.device("meta"):
            shell = AutoModelForCausalLM.from_config(self.model.config)
        shell.load_state_dict(state, strict=False, assign=True)
        save_policy(shell, self.tokenizer, Path(path))
        return path

    def _training_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        if self.reference is not None:
            state["reference"] = get_model_state_dict(self.reference)
        return state

    def save_state(self, path: str) -> None:
        """All ranks write their shards of model, optimizer (and reference policy) state:
        a resumable checkpoint."""
        import torch.distributed.checkpoint as dcp

        dcp.save(self._training_state(), checkpoint_id=path)
        torch.save(torch.get_rng_state(), Path(path) / f"rng-rank{self.rank}.pt")

    def load_state(self, path: str) -> None:
        """Restore what ``save_state`` wrote (optimizer, and reference if any, set up first)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        state = self._training_state()
        dcp.load(state, checkpoint_id=path)
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
        if self.reference is not None:
            set_model_state_dict(self.reference, state["reference"])
        torch.set_rng_state(torch.load(Path(path) / f"rng-rank{self.rank}.pt"))

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _add_load(
    total: dict[int, torch.Tensor], records: dict, attention_mask: Tensor, config: Any
) -> None:
    """Add one forward's tokens per expert (padding left out) to ``total``, per MoE layer."""
    n_experts = getattr(config, "n_routed_experts", None)
    if not records or not n_experts:
        return
    for layer, (counts, _) in expert_load(records, n_experts, mask=attention_mask).items():
        total[layer] = total.get(layer, 0) + counts


def _accumulate(
    sums: dict[str, float],
    n: float,
    loss: Tensor,
    kl_value: Tensor | None,
    diff: Tensor,
    m: dict[str, Tensor],
    wm: dict[str, Tensor] | None,
) -> None:
    """Add one micro-batch's metrics (``n`` tokens) to a rank's running sums: token-weighted
    where the LearnerGroup reports a mean, min/max where it reports extremes."""
    sums["loss"] += float(loss.detach())
    sums["kl"] += float(kl_value.detach()) if kl_value is not None else 0.0
    sums["lp_diff_sum"] += float(diff.sum())
    sums["lp_diff_max"] = max(sums["lp_diff_max"], float(diff.max()))
    for key in ("clip_frac_low", "clip_frac_high", "ratio_mean"):
        sums[key] += float(m[key]) * n
    sums["ratio_min"] = min(sums["ratio_min"], float(m["ratio_min"]))
    sums["ratio_max"] = max(sums["ratio_max"], float(m["ratio_max"]))
    if wm is not None:
        sums["is_weight_sum"] += float(wm["mismatch_weight_mean"]) * n
        sums["is_capped_sum"] += float(wm["mismatch_capped_frac"]) * n
        sums["is_weight_max"] = max(sums["is_weight_max"], float(wm["mismatch_weight_max"]))
    sums["tokens"] += n
