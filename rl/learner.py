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

from rl.batch import Batch
from rl.fsdp import apply_fsdp
from rl.logprobs import token_logprobs
from rl.losses import policy_loss, sft_loss


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
        self.model = self.optimizer = None

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
        self.model, self.device = model, device
        return sum(p.numel() for p in model.parameters())

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
    ) -> dict[str, float]:
        """One on-policy update: old logprobs are this forward's own (detached), so the ratio
        is 1 and the loss is the policy gradient; rollout logprobs are compared for health."""
        self.model.train()
        sums = {
            "loss": 0.0,
            "lp_diff_sum": 0.0,
            "lp_diff_max": 0.0,
            "entropy_sum": 0.0,
            "clip_low_sum": 0.0,
            "clip_high_sum": 0.0,
            "tokens": 0.0,
        }
        for mb in self._micro_batches(batch, micro_batch_size):
            ids, attn, mask = (
                self._to(mb.input_ids),
                self._to(mb.attention_mask),
                self._to(mb.loss_mask),
            )
            lp = token_logprobs(self.model, ids, attn, temperature)
            loss, m = policy_loss(
                lp,
                lp.detach(),
                self._to(mb.advantages),
                mask,
                num_tokens=num_tokens,
                num_seqs=num_seqs,
                **loss_cfg,
            )
            (loss * self.world_size).backward()
            n = float(mask.sum())
            diff = (lp.detach() - self._to(mb.rollout_logprobs)).abs() * mask
            sums["loss"] += float(loss.detach())
            sums["lp_diff_sum"] += float(diff.sum())
            sums["lp_diff_max"] = max(sums["lp_diff_max"], float(diff.max()))
            sums["entropy_sum"] += float((-lp.detach() * mask).sum())  # sampled-token surprisal
            sums["clip_low_sum"] += float(m["clip_frac_low"]) * n
            sums["clip_high_sum"] += float(m["clip_frac_high"]) * n
            sums["tokens"] += n
        sums["grad_norm"] = self._step(lr, max_grad_norm)
        return sums

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)  # gathered on rank 0 only

    def export_weights(self) -> bytes | None:
        """All ranks gather; rank 0 returns the weights as a blob in vLLM's checkpoint naming."""
        from model import to_vllm_weights
        from rollouts.engine import pack_weights

        state = self._full_state_dict()
        return pack_weights(to_vllm_weights(state.items())) if self.rank == 0 else None

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

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
