"""Shard a policy with FSDP2 from outside the model (the model files hold no distributed code),
and gather its full weights back (for the rollout engines and HF checkpoints)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)


def apply_fsdp(
    model: torch.nn.Module,
    mesh: DeviceMesh,
    param_dtype: torch.dtype | None = None,
    offload: bool = False,
) -> None:
    """``fully_shard`` each decoder layer, then the root (embeddings, norm, head).

    With ``param_dtype`` (e.g. bf16) compute runs in that dtype while the sharded master
    weights and gradient reduction stay in float32. ``offload``: the sharded parameters,
    their gradients and so the optimizer's state and step live in CPU memory; each layer's
    weights come to the device for its forward and backward.
    """
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    policy = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload else OffloadPolicy()
    layers = model.get_decoder().layers
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp, offload_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=policy)


def gather_full_state(
    state: dict[str, Any], rank: int, world_size: int, everywhere: bool = False
) -> dict[str, torch.Tensor]:
    """FSDP2 state dict (dim-0 sharded DTensors, plain buffers) -> full CPU tensors on rank 0
    ({} elsewhere; on every rank with ``everywhere``, an all-gather) in one gather per dtype of every rank's shards flattened together: a
    collective per tensor (``get_model_state_dict``) costs ~100 ms for 60 tensors on gloo,
    this a few ms. Tensors sharded otherwise than ``Shard(0)`` are gathered on their own."""
    from torch.distributed.tensor import DTensor, Shard

    sharded = {
        k: v
        for k, v in state.items()
        if isinstance(v, DTensor) and tuple(v.placements) == (Shard(0),)
    }
    full = {
        k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu()
        for k, v in state.items()
        if k not in sharded
    }
    for dtype in sorted({v.dtype for v in sharded.values()}, key=str):
        group = {k: v for k, v in sharded.items() if v.dtype == dtype}
        full.update(_gather_dim0(group, rank, world_size, everywhere))
    return {k: full[k] for k in state} if rank == 0 or everywhere else {}


def _gather_dim0(
    sharded: dict[str, Any], rank: int, world_size: int, everywhere: bool = False
) -> dict[str, Tensor]:
    """Dim-0 sharded DTensors of one dtype -> full tensors on rank 0 (every rank with
    ``everywhere``), one collective."""
    if world_size == 1:
        return {k: v.to_local().detach().cpu() for k, v in sharded.items()}
    flat = torch.cat([v.to_local().detach().reshape(-1) for v in sharded.values()])
    longest = max(
        sum(
            _shard_rows(v.shape[0], world_size, r) * math.prod(v.shape[1:])
            for v in sharded.values()
        )
        for r in range(world_size)
    )
    padded = torch.zeros(longest, dtype=flat.dtype, device=flat.device)
    padded[: flat.numel()] = flat
    if everywhere:
        gathered = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(gathered, padded)
    else:
        gathered = [torch.empty_like(padded) for _ in range(world_size)] if rank == 0 else None
        dist.gather(padded, gathered, dst=0)
        if rank != 0:
            return {}
    pieces: dict[str, list[Tensor]] = {k: [] for k in sharded}
    for r, buf in enumerate(gathered):
        offset = 0
        for key, value in sharded.items():
            rows = _shard_rows(value.shape[0], world_size, r)
            numel = rows * math.prod(value.shape[1:])
            pieces[key].append(buf[offset : offset + numel].view(rows, *value.shape[1:]))
            offset += numel
    return {k: torch.cat(v).cpu() for k, v in pieces.items()}


def _shard_rows(dim0: int, world_size: int, rank: int) -> int:
    """Rows of a dim-0 FSDP2 shard: torch.chunk's split (ceil-sized, the tail shorter or
    empty), which FSDP2 uses; not the even split of rollouts.group.split_evenly."""
    size = -(-dim0 // world_size)
    return max(0, min(size, dim0 - rank * size))
