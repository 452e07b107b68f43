"""rollouts/weight_transfer.py: buckets as flat buffers, and the weight-sync group.

The group tests spawn real processes that meet over a real TCP store and gloo (nccl is the
same calls on a GPU: not run here).
"""

import multiprocessing as mp
import socket
import time

import pytest
import torch

from rollouts.weight_transfer import ALIGN, WeightGroup, bucket_bytes, flatten, unflatten

TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mixed_tensors() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        ("a.weight", torch.randn(3, 5, generator=g)),
        ("b.bias", torch.randn(7, generator=g).to(torch.bfloat16)),
        ("c.index", torch.arange(6, dtype=torch.int64).view(2, 3)),
        ("d.empty", torch.empty(0, 4)),
        ("e.half", torch.randn(2, 2, generator=g).half()),
        ("f.strided", torch.randn(4, 6, generator=g).t()),  # not contiguous
        ("g.scalar", torch.tensor(2.5)),
    ]


def test_flatten_then_unflatten_gives_every_tensor_back_bit_for_bit():
    named = mixed_tensors()
    buffer, metas = flatten(named)
    assert buffer.dtype == torch.uint8 and buffer.dim() == 1
    assert buffer.numel() == bucket_bytes(metas)
    assert [m.nbytes for m in metas] == [t.numel() * t.element_size() for _, t in named]
    back = unflatten(buffer, metas)
    assert [n for n, _ in back] == [n for n, _ in named]
    for (_, want), (_, got) in zip(named, back, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)
    # in order, each aligned for any dtype's view, padded by less than the alignment
    assert all(m.offset % ALIGN == 0 for m in metas)
    gaps = [b.offset - (a.offset + a.nbytes) for a, b in zip(metas, metas[1:], strict=False)]
    assert all(0 <= gap < ALIGN for gap in gaps) and metas[0].offset == 0


def test_an_empty_bucket_is_an_empty_buffer():
    buffer, metas = flatten([])
    assert buffer.numel() == 0 and metas == [] and unflatten(buffer, metas) == []


def _member(port, rank, world, queue, die_after_join=False):
    group = WeightGroup("127.0.0.1", port, rank, world, timeout_s=60)
    if die_after_join:
        queue.put((rank, "joined"))
        time.sleep(0.5)
        return  # exits: its sockets close, as a SIGKILLed engine's would
    try:
        named = mixed_tensors() if rank == 0 else None
        buffer, metas = flatten(mixed_tensors())  # every member knows the layout beforehand
        if rank != 0:
            buffer = torch.zeros_like(buffer)
        for _ in range(2):  # two buckets, in order
            received = unflatten(group.broadcast(buffer), metas)
        ok = all(
            torch.equal(a, b)
            for (_, a), (_, b) in zip(received, named or mixed_tensors(), strict=True)
        )
        queue.put((rank, ok))
    except Exception as err:  # noqa: BLE001 - the test reads what happened
        queue.put((rank, f"{type(err).__name__}: {err}"))


def _run(world, die=()):
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [
        ctx.Process(target=_member, args=(port, r, world, queue, r in die)) for r in range(world)
    ]
    for p in procs:
        p.start()
    t0 = time.time()
    results = dict(queue.get(timeout=TIMEOUT_S) for _ in procs)
    for p in procs:
        p.join(timeout=TIMEOUT_S)
    return results, time.time() - t0


@pytest.mark.slow
def test_member_zero_broadcasts_to_every_member():
    results, _ = _run(3)
    assert results == {0: True, 1: True, 2: True}


@pytest.mark.slow
def test_a_member_that_dies_fails_the_broadcast_promptly_not_at_the_timeout():
    results, seconds = _run(3, die={2})
    assert results[2] == "joined"
    assert isinstance(results[0], str) and "Error" in results[0], results
    assert seconds < 30  # the group's timeout is 60 s


def test_an_unknown_backend_is_one_clear_error():
    with pytest.raises(ValueError, match="gloo or nccl, got 'mpi'"):
        WeightGroup("127.0.0.1", free_port(), 0, 1, backend="mpi", timeout_s=5)
