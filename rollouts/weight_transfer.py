"""Weights over a torch.distributed group: the learner's rank 0 broadcasts, the engines receive.

The group is its own (a TCP store and a ``ProcessGroupGloo`` or ``ProcessGroupNCCL`` built
directly), never the default one: the learner's ranks already hold FSDP2's and each vLLM
engine holds its own. Member 0 is the learner's rank 0 (it hosts the store), members 1..n the
engines. A sync is a list of buckets; each bucket travels as one flat byte buffer and is
described by ``TensorMeta`` rows that the driver hands the engines beforehand (names, dtypes,
shapes, offsets: a few KB), so every broadcast is a single contiguous message.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

STORE_PREFIX = "r1kit-weights"


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: str  # torch dtype name, e.g. "float32"
    shape: tuple[int, ...]
    offset: int  # bytes into the bucket's buffer
    nbytes: int


ALIGN = 16  # bytes: each tensor starts at a multiple (a view as int64 or fp32 needs 8 or 4)


def flatten(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, list[TensorMeta]]:
    """One bucket's tensors as one flat uint8 buffer, and where each lies in it (each at an
    offset that is a multiple of ``ALIGN``)."""
    parts, metas, offset = [], [], 0
    for name, tensor in named:
        raw = tensor.detach().contiguous().view(-1).view(torch.uint8)
        dtype = str(tensor.dtype).removeprefix("torch.")
        metas.append(TensorMeta(name, dtype, tuple(tensor.shape), offset, raw.numel()))
        pad = -raw.numel() % ALIGN
        parts += [raw, torch.zeros(pad, dtype=torch.uint8)] if pad else [raw]
        offset += raw.numel() + pad
    buffer = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
    return buffer, metas


def unflatten(buffer: torch.Tensor, metas: Sequence[TensorMeta]) -> list[tuple[str, torch.Tensor]]:
    """Views of ``buffer``'s tensors (no copies), as ``flatten`` laid them out."""
    out = []
    for m in metas:
        raw = buffer[m.offset : m.offset + m.nbytes]
        out.append((m.name, raw.view(getattr(torch, m.dtype)).view(m.shape)))
    return out


def bucket_bytes(metas: Sequence[TensorMeta]) -> int:
    """The size of the buffer ``flatten`` made for these rows (alignment padding included)."""
    if not metas:
        return 0
    last = metas[-1]
    return last.offset + last.nbytes + (-last.nbytes % ALIGN)


class WeightGroup:
    """Member ``rank`` of a weight-sync group of ``world_size`` at ``host:port`` (rank 0 hosts
    the store there, so it must be reachable from every member). Building one blocks until
    all members have joined."""

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        backend: str = "gloo",
        timeout_s: float = 600,
    ) -> None:
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = "cuda" if backend == "nccl" else "cpu"
        self._store = dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout)
        prefixed = dist.PrefixStore(f"{STORE_PREFIX}/", self._store)
        if backend == "gloo":
            self._group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
        elif backend == "nccl":  # not run here (no GPU was lent); the same calls as gloo
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self._group = dist.ProcessGroupNCCL(prefixed, rank, world_size, options)
        else:
            raise ValueError(f"weight-sync backend must be gloo or nccl, got {backend!r}")

    def broadcast(self, buffer: torch.Tensor) -> torch.Tensor:
        """Member 0's ``buffer`` into every member's ``buffer`` (same size, on ``device``)."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self._group.broadcast([buffer], options).wait()
        return buffer

    def close(self) -> None:
        """Leave the group: members waiting on a broadcast from here fail instead of
        waiting out the timeout (a peer's death fails the others' calls the same way)."""
        self._group = self._store = None
