"""Shard a policy with FSDP2 from outside the model (the model files hold no distributed code)."""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def apply_fsdp(
    model: torch.nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype | None = None
) -> None:
    """``fully_shard`` each decoder layer, then the root (embeddings, norm, head).

    With ``param_dtype`` (e.g. bf16) compute runs in that dtype while the sharded master
    weights and gradient reduction stay in float32.
    """
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    layers = model.get_decoder().layers
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
