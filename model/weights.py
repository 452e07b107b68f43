"""Rename a transformers state dict into the tensor names vLLM's loaders take.

transformers 5 keeps a MoE layer's routed experts as two fused 3-D parameters,
``mlp.experts.gate_up_proj`` (E, 2I, H) and ``mlp.experts.down_proj`` (E, H, I);
vLLM's DeepSeek loader takes the per-expert checkpoint names that ``save_pretrained``
writes, ``mlp.experts.{e}.{gate,up,down}_proj.weight``. Everything else keeps its name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

_GATE_UP = ".mlp.experts.gate_up_proj"
_DOWN = ".mlp.experts.down_proj"


def to_vllm_weights(
    named: Iterable[tuple[str, torch.Tensor]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` pairs in checkpoint naming, splitting fused expert tensors.

    >>> w = torch.arange(2 * 4 * 3.0).reshape(2, 4, 3)  # 2 experts, I=2, H=3
    >>> [n for n, _ in to_vllm_weights([("model.layers.1.mlp.experts.gate_up_proj", w)])][:2]
    ['model.layers.1.mlp.experts.0.gate_proj.weight', 'model.layers.1.mlp.experts.0.up_proj.weight']
    """
    for name, tensor in named:
        if name.endswith(_GATE_UP):
            prefix = name[: -len("gate_up_proj")]
            gate, up = tensor.chunk(2, dim=1)  # (E, I, H) each
            for e in range(tensor.shape[0]):
                yield f"{prefix}{e}.gate_proj.weight", gate[e]
                yield f"{prefix}{e}.up_proj.weight", up[e]
        elif name.endswith(_DOWN):
            prefix = name[: -len("down_proj")]
            for e in range(tensor.shape[0]):
                yield f"{prefix}{e}.down_proj.weight", tensor[e]
        else:
            yield name, tensor
