"""LoRA on DeepSeek-V3 policies through peft, with targets named explicitly by family.

A family is a set of weights, named by a regex over the transformers model's own names:

- ``attention``: MLA's ``q_a_proj q_b_proj kv_a_proj_with_mqa kv_b_proj o_proj`` (and ``q_proj``,
  ``k_proj``, ``v_proj`` where a model has them) of every layer.
- ``dense_mlp``: ``mlp.gate_proj up_proj down_proj`` of the dense layers (DeepSeek-V3's first
  ``first_k_dense_replace`` layers; every layer of a dense model).
- ``shared_experts``: ``mlp.shared_experts.gate_proj up_proj down_proj`` of the MoE layers.
- ``routed_experts``: the fused 3-D expert weights ``mlp.experts.gate_up_proj`` (E, 2I, H) and
  ``mlp.experts.down_proj`` (E, H, I), adapted through peft's ``target_parameters``
  (``lora.ParamWrapper``): each expert gets its own rank-``r`` pair, and ``gate_up_proj`` gets one
  pair for gate and up together. peft supports no dropout there (``dropout`` must be 0).

Why the names are built here: peft 0.21, on transformers 5, rewrites every target ending in
``gate_proj``/``up_proj``/``down_proj`` of a DeepSeek-V3 model (even a full module name, even a
regex) into ``target_parameters`` on the routed experts, for loading v4-era adapters. The dense
and shared-expert MLPs then get no adapter, and the routed experts get one nobody asked for.
``apply_lora`` passes exact names and switches that rewrite off, so peft never guesses;
``lora_targets_report`` says which weights got adapters.

For a rollout engine, ``merge_full_state`` turns a gathered LoRA state dict into the plain
model's, ``W + (alpha / r) B @ A`` for every adapted ``nn.Linear`` (``to_vllm_weights`` then
splits the experts).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from unittest import mock

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer, ParamWrapper
from peft.utils import transformers_weight_conversion
from torch import nn

from model.lora_families import FAMILIES, PARAMETER_FAMILIES

_ADAPTER_TENSOR = re.compile(r"\.lora_[A-Za-z_]+\.")


@contextmanager
def _explicit_targets() -> Iterator[None]:
    """Switch off peft's v4->v5 MoE target rewrite (see the module docstring) for this block."""
    with mock.patch.object(
        transformers_weight_conversion,
        "convert_peft_config_for_transformers",
        lambda *args, **kwargs: None,
    ):
        yield


def lora_target_names(model: nn.Module, targets: list[str]) -> tuple[list[str], list[str]]:
    """``(module names, parameter names)`` of ``model`` that the families ``targets`` select.

    Module names are ``nn.Linear`` layers; parameter names are 3-D expert weights. Raises
    ValueError for an unknown family, naming the known ones, and for a family that selects
    nothing in this model (e.g. ``dense_mlp`` on a model whose every layer is MoE).
    """
    unknown = [t for t in targets if t not in FAMILIES]
    if unknown or not targets:
        raise ValueError(f"unknown LoRA target families {unknown}; known: {sorted(FAMILIES)}")
    modules: list[str] = []
    parameters: list[str] = []
    for family in targets:
        pattern = re.compile(FAMILIES[family])
        if family in PARAMETER_FAMILIES:
            found = [n for n, p in model.named_parameters() if pattern.fullmatch(n) and p.ndim == 3]
            parameters += found
        else:
            found = [
                n
                for n, m in model.named_modules()
                if pattern.fullmatch(n) and isinstance(m, nn.Linear)
            ]
            modules += found
        if not found:
            raise ValueError(f"LoRA target family {family!r} selects nothing in this model")
    return modules, parameters


def apply_lora(
    model: nn.Module, *, r: int, alpha: float, targets: list[str], dropout: float = 0.0
) -> PeftModel:
    """Wrap ``model`` (in place) in a peft LoRA adapter on exactly the families ``targets``.

    The scale is ``alpha / r``; B starts at zero, so the wrapped model starts equal to ``model``.
    The base weights are frozen; only the adapter trains. ``dropout`` applies to the input of
    each adapted ``nn.Linear`` and must be 0 when ``routed_experts`` is targeted (peft cannot
    drop out the input of a 3-D expert weight).
    """
    if isinstance(model, PeftModel):
        raise TypeError("model already carries a peft adapter; pass the plain transformers model")
    if dropout and "routed_experts" in targets:
        raise ValueError(
            "LoRA dropout is not supported on the routed experts (peft's ParamWrapper adapts "
            "the 3-D weight, not a layer input); use dropout=0.0 or leave out 'routed_experts'"
        )
    modules, parameters = lora_target_names(model, targets)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=modules,
        target_parameters=parameters or None,
        bias="none",
    )
    with _explicit_targets():
        return get_peft_model(model, config)


def _adapted(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """``(base name of the adapted weight, peft layer)`` for every LoRA layer in ``model``.

    The base name is the weight's name in the plain model: ``...o_proj.weight`` for a linear,
    ``...mlp.experts.gate_up_proj`` for a 3-D expert weight.
    """
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and len(module.lora_A) > 0:
            base = name.replace(".base_layer", "")
            if isinstance(module, ParamWrapper):
                yield f"{base}.{module.parameter_name}", module
            else:
                yield f"{base}.weight", module


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def lora_targets_report(model: nn.Module) -> dict[str, list[str]]:
    """``{family: sorted names of the adapted modules (or 3-D parameters)}`` for a LoRA model.

    Every family of ``FAMILIES`` is a key (an empty list when none of its weights has an
    adapter), plus ``"other"`` for adapters outside every family.
    """
    report: dict[str, list[str]] = {family: [] for family in [*FAMILIES, "other"]}
    for weight_name, module in _adapted(_base_model(model)):
        name = weight_name if isinstance(module, ParamWrapper) else weight_name[: -len(".weight")]
        family = next((f for f, p in FAMILIES.items() if re.fullmatch(p, name)), "other")
        report[family].append(name)
    return {family: sorted(names) for family, names in report.items()}


_PEFT_PREFIX = "base_model.model."


def merge_full_state(state: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A gathered peft state dict (``get_model_state_dict`` of a LoRA model, e.g. under FSDP2)
    as the plain model's, adapters merged: ``W = base_layer.weight + scale * B @ A`` for every
    ``nn.Linear`` adapter, ``scale = alpha / r``. 3-D expert adapters are not handled (raise).

    >>> s = {"base_model.model.x.base_layer.weight": torch.zeros(2, 2),
    ...      "base_model.model.x.lora_A.default.weight": torch.ones(1, 2),
    ...      "base_model.model.x.lora_B.default.weight": torch.ones(2, 1)}
    >>> merge_full_state(s, 0.5)["x.weight"].tolist()
    [[0.5, 0.5], [0.5, 0.5]]
    """
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        name = name.removeprefix(_PEFT_PREFIX)
        if _ADAPTER_TENSOR.search(name):
            continue
        if ".base_layer." in name:
            module = name.split(".base_layer.")[0]
            a = state.get(f"{_PEFT_PREFIX}{module}.lora_A.default.weight")
            b = state.get(f"{_PEFT_PREFIX}{module}.lora_B.default.weight")
            if a is None or b is None:
                raise ValueError(f"{name}: no lora_A/lora_B next to it (a 3-D expert adapter?)")
            tensor = tensor + scale * (b.to(tensor.dtype) @ a.to(tensor.dtype))
            name = name.replace(".base_layer.", ".")
        merged[name] = tensor
    return merged
