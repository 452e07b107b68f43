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
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from rl.batch import Batch
from rl.fsdp import apply_fsdp
from rl.logprobs import token_logprobs
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
    ) -> None:
        self.rank, self.world_size, self.model_dir = rank, world_size, model_dir
        self.dtype, self.seed = dtype, seed
        self.backend = (
            backend if backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
        )
        if threads:
            torch.set_num_threads(threads)
        self.model = self.optimizer = self.reference = None

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
        model.to(device)
        param_dtype = torch.bfloat16 if self.dtype == "bfloat16" else None
        apply_fsdp(model, mesh, param_dtype=param_dtype)
        self.model, self.device, self.mesh = model, device, mesh
        return sum(p.numel() for p in model.parameters())

    def snapshot_reference(self) -> None:
        """Freeze a copy of the current weights (same sharding) as the KL reference policy."""
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

    def configure_optimizer(self, lr: float, weight_decay: float = 0.0) -> None:
        """A fresh AdamW (each stage starts its own optimizer state)."""
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay
        )

    def _micro_batches(self, batch: Batch, size: int):
        for start in range(0, len(batch), size):
            yield batch.select(slice(start, start + size)).trimmed()

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
    ) -> dict[str, float]:
        """One optimizer step of NLL on the completion tokens (mean over the global batch)."""
        self.model.train()
        total = 0.0
        for mb in self._micro_batches(batch, micro_batch_size):
            lp = token_logprobs(self.model, self._to(mb.input_ids), self._to(mb.attention_mask))
            loss = sft_loss(lp, self._to(mb.loss_mask), num_tokens=num_tokens)
            (loss * self.world_size).backward()
            total += float(loss.detach())
        return {"loss": total, "grad_norm": self._step(lr, max_grad_norm)}

    @torch.no_grad()
    def logprobs(
        self, batch: Batch, micro_batch_size: int, temperature: float = 1.0, reference: bool = False
    ) -> Tensor:
        """(B, T-1) logprobs of this rank's rows (no grad), 0 off the mask: under the current
        weights (old logprobs of a multi-update step) or the frozen reference policy's."""
        model = self.reference if reference else self.model
        if model is None:
            raise RuntimeError("no reference policy: call snapshot_reference() first")
        out = torch.zeros_like(batch.loss_mask)
        for start in range(0, len(batch), micro_batch_size):
            mb = batch.select(slice(start, start + micro_batch_size)).trimmed()
            lp = token_logprobs(
                model, self._to(mb.input_ids), self._to(mb.attention_mask), temperature
            )
            lp = torch.where(self._to(mb.loss_mask) > 0, lp, 0.0).cpu()
            out[start : start + len(mb), : lp.shape[1]] = lp
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
        for mb in self._micro_batches(batch, micro_batch_size):
            ids, attn, mask = (self._to(t) for t in (mb.input_ids, mb.attention_mask, mb.loss_mask))
            lp, entropy = token_logprobs(
                self.model, ids, attn, temperature, with_entropy=True, entropy_grad=entropy_coef > 0
            )
            old = lp.detach() if mb.old_logprobs is None else self._to(mb.old_logprobs)
            rollout = self._to(mb.rollout_logprobs)
            weights = None
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
            diff = (lp.detach() - rollout).abs() * mask
            sums["loss"] += float(loss.detach())
            sums["kl"] += float(kl_value.detach()) if kl_value is not None else 0.0
            sums["lp_diff_sum"] += float(diff.sum())
            sums["lp_diff_max"] = max(sums["lp_diff_max"], float(diff.max()))
            sums["entropy_sum"] += float((entropy.detach() * mask).sum())
            for key in ("clip_frac_low", "clip_frac_high", "ratio_mean"):
                sums[key] += float(m[key]) * n
            sums["ratio_min"] = min(sums["ratio_min"], float(m["ratio_min"]))
            sums["ratio_max"] = max(sums["ratio_max"], float(m["ratio_max"]))
            if mismatch:
                sums["is_weight_sum"] += float(wm["mismatch_weight_mean"]) * n
                sums["is_capped_sum"] += float(wm["mismatch_capped_frac"]) * n
                sums["is_weight_max"] = max(sums["is_weight_max"], float(wm["mismatch_weight_max"]))
            sums["tokens"] += n
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

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)  # gathered on rank 0 only

    def export_weights(self, exclude: tuple[str, ...] = ()) -> bytes | None:
        """All ranks gather; rank 0 returns the weights as a blob in vLLM's checkpoint naming.
        ``exclude``: leave out tensors whose name contains one of these (a deliberately broken
        sync, for testing ``r1kit check``)."""
        from model import to_vllm_weights
        from rollouts.engine import pack_weights

        state = self._full_state_dict()
        if self.rank != 0:
            return None
        kept = [(k, v) for k, v in state.items() if not any(part in k for part in exclude)]
        return pack_weights(to_vllm_weights(kept))

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
