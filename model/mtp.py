"""DeepSeek-V3's multi-token-prediction (MTP) module: build it, load and save it in the layout
vLLM reads, and run it inside the policy's forward.

The module (DeepSeek-V3 report, section 2.2) predicts token t+2 at position t from the main
model's final hidden state h_t and the embedding of token t+1, sharing the model's embedding
and output head::

    x_t   = eh_proj([enorm(embed(t+1)), hnorm(h_t)])     # (2H -> H), embedding first
    y_t   = block(x_t)                                   # one decoder layer, MLA + MoE
    p_t+2 = softmax(lm_head(shared_head.norm(y_t)))

vLLM 0.32 (``vllm/model_executor/models/deepseek_mtp.py``) loads it from the same checkpoint as
``model.layers.{num_hidden_layers}.{enorm, hnorm, eh_proj, shared_head.norm}`` plus the block's
own tensors under the same prefix (``self_attn.*``, ``mlp.*``, the two layer norms), takes
``h_t`` after the final norm, zeroes the embedding at position 0, and shares the target's
``embed_tokens`` and ``lm_head`` (``shared_head.head`` is replaced by the target's head after
loading). So the module lives here as ``model.model.layers[num_hidden_layers]``: its state-dict
names are already vLLM's, FSDP2 shards it like any decoder layer, and transformers' decoder
never runs it (it iterates ``layers[: num_hidden_layers]``).

transformers 5.19 neither builds nor loads MTP layers (its DeepSeek-V3 drops them as unexpected
keys, and its config defaults ``num_nextn_predict_layers`` to 1 whatever the checkpoint holds):
``attach_mtp`` and ``load_mtp`` do, and ``model.hf`` writes the true count into config.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
    DeepseekV3DecoderLayer,
    DeepseekV3RMSNorm,
)

MTP_MODEL_TYPES = ("deepseek_v3",)
MTP_LOSS_WEIGHT = 0.3
"""DeepSeek-V3's lambda for the first 10T pre-training tokens (0.1 for the rest)."""


class MTPLayer(DeepseekV3DecoderLayer):
    """One MTP module: the decoder block it subclasses, plus ``enorm``, ``hnorm``, ``eh_proj``
    and ``shared_head.norm``; the embedding and output head are the policy's own."""

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        h, eps = config.hidden_size, config.rms_norm_eps
        self.enorm = DeepseekV3RMSNorm(h, eps=eps)
        self.hnorm = DeepseekV3RMSNorm(h, eps=eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.shared_head = nn.Module()
        self.shared_head.norm = DeepseekV3RMSNorm(h, eps=eps)

    def forward(  # type: ignore[override]
        self, previous_hidden: Tensor, inputs_embeds: Tensor, **block_kwargs
    ) -> Tensor:
        """(B, S, H) hidden states of the main model and embeddings of the next tokens ->
        (B, S, H) normed states whose logits (through the policy's head) predict one more."""
        x = self.eh_proj(torch.cat([self.enorm(inputs_embeds), self.hnorm(previous_hidden)], -1))
        return self.shared_head.norm(super().forward(x, **block_kwargs))


def has_mtp_support(model: PreTrainedModel) -> bool:
    return model.config.model_type in MTP_MODEL_TYPES


def mtp_layer(model: PreTrainedModel) -> MTPLayer | None:
    """The policy's MTP module, or None."""
    if not has_mtp_support(model):
        return None
    layers = model.get_decoder().layers
    n = model.config.num_hidden_layers
    return layers[n] if len(layers) > n and isinstance(layers[n], MTPLayer) else None


def attach_mtp(model: PreTrainedModel, init_from_last: bool = True) -> MTPLayer:
    """Add an MTP module to a DeepSeek-V3 policy that has none; returns it.

    Initialisation: the block is a copy of the last decoder layer (a trained block is a better
    start than noise), ``eh_proj`` passes the hidden state through (identity on its half, the
    embedding's half drawn like the model's other weights), the norms are ones. SFT or GRPO
    then trains it.
    """
    if not has_mtp_support(model):
        raise ValueError(
            f"multi-token prediction needs a DeepSeek-V3 policy; this one is "
            f"{model.config.model_type!r}"
        )
    if mtp_layer(model) is not None:
        raise ValueError("the policy already has an MTP module")
    config = model.config
    n = config.num_hidden_layers
    decoder = model.get_decoder()
    weight = next(decoder.layers[n - 1].parameters())
    with torch.device(weight.device):
        layer = MTPLayer(config, n).to(weight.dtype)
    with torch.no_grad():
        if init_from_last and weight.device.type != "meta":
            missing = layer.load_state_dict(decoder.layers[n - 1].state_dict(), strict=False)
            if missing.unexpected_keys:
                raise ValueError(f"last layer has tensors the MTP block lacks: {missing}")
            h = config.hidden_size
            std = config.initializer_range
            layer.eh_proj.weight.copy_(
                torch.cat([torch.randn(h, h) * std, torch.eye(h)], dim=1).to(weight.dtype)
            )
            layer.shared_head.norm.weight.copy_(decoder.norm.weight)
    decoder.layers.append(layer)
    config.num_nextn_predict_layers = 1
    return layer


_EXPERT = re.compile(r"^((?:.*\.)?mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def _fuse_experts(named: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoint naming (one tensor per expert) -> transformers 5's fused expert tensors:
    the inverse of ``model.weights.to_vllm_weights``."""
    out: dict[str, Tensor] = {}
    experts: dict[str, dict[str, dict[int, Tensor]]] = {}
    for name, tensor in named.items():
        match = _EXPERT.match(name)
        if match is None:
            out[name] = tensor
            continue
        prefix, e, kind = match.group(1), int(match.group(2)), match.group(3)
        experts.setdefault(prefix, {}).setdefault(kind, {})[e] = tensor
    for prefix, kinds in experts.items():
        count = len(kinds["down_proj"])
        gate = [kinds["gate_proj"][e] for e in range(count)]
        up = [kinds["up_proj"][e] for e in range(count)]
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([g, u], 0) for g, u in zip(gate, up, strict=True)]
        )
        out[f"{prefix}.down_proj"] = torch.stack([kinds["down_proj"][e] for e in range(count)])
    return out


def checkpoint_mtp_tensors(path: str | Path, num_hidden_layers: int) -> dict[str, Tensor]:
    """The MTP tensors of a safetensors checkpoint folder, ``{name within the layer: tensor}``
    ({} when it holds none)."""
    from safetensors import safe_open

    path = Path(path)
    prefix = f"model.layers.{num_hidden_layers}."
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(path.glob("*.safetensors"))]
    found: dict[str, Tensor] = {}
    for file in files:
        with safe_open(str(path / file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                if key.startswith(prefix):
                    found[key[len(prefix) :]] = f.get_tensor(key)
    found.pop("shared_head.head.weight", None)  # the policy's own head
    found.pop("embed_tokens.weight", None)  # the policy's own embedding
    return found


def load_mtp(model: PreTrainedModel, path: str | Path) -> MTPLayer | None:
    """Attach and load the MTP module a checkpoint holds; set the config's
    ``num_nextn_predict_layers`` to what it really holds (0 or 1). Returns the module."""
    if not has_mtp_support(model):
        return None
    tensors = checkpoint_mtp_tensors(path, model.config.num_hidden_layers)
    if not tensors:
        model.config.num_nextn_predict_layers = 0
        return None
    layer = attach_mtp(model, init_from_last=False)
    dtype = next(layer.parameters()).dtype
    fused = {k: v.to(dtype) for k, v in _fuse_experts(tensors).items()}
    result = layer.load_state_dict(fused, strict=False)
    expected_buffers = {name for name, _ in layer.named_buffers()}
    missing = [k for k in result.missing_keys if k not in expected_buffers]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path}: MTP layer {model.config.num_hidden_layers} does not match the config "
            f"(missing {missing}, unexpected {result.unexpected_keys})"
        )
    return layer


class MTPForward:
    """Run the MTP module inside each forward of the policy, on the main model's own hidden
    states, and keep the draft's log-probabilities of the tokens two ahead.

    Use::

        with MTPForward(model, mask) as mtp:      # mask (B, T-1): the loss mask
            out = model(input_ids, attention_mask=attention_mask)
        mtp.logprobs  # (n,) log q(token j+2 | ..., token j+1) at the masked slots, with grad

    Slot j (0 <= j < T-2) sees hidden state j and token j+1 and predicts token j+2; it counts
    where ``mask`` holds for both tokens j+1 and j+2 (``mask[:, j]`` and ``mask[:, j+1]``:
    the main model's targets), which is where a rollout engine drafts: from the second
    generated token on. The forward hook sits on the decoder (``model.get_decoder()``), so
    it runs inside the policy's own forward, where FSDP2 holds the root's embedding and head
    unsharded; the MTP module is an FSDP unit of its own.

    ``detach``: no gradient reaches the policy (its hidden states, embedding and head): the MTP
    module learns to follow the policy, and the policy's update is what it would be without
    one (GRPO). Otherwise the MTP loss trains the trunk too, as in DeepSeek-V3's pre-training.

    Also kept, without gradient: ``accuracy`` (the draft's argmax is the real token) and, when
    ``temperature`` is given, ``acceptance``: the mean probability, under the policy's
    distribution at that temperature, of the draft's argmax, i.e. the expected acceptance of a
    greedy draft token in vLLM's rejection sampler (which accepts it with probability p(x)).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        mask: Tensor,
        *,
        detach: bool = False,
        temperature: float | None = None,
    ) -> None:
        layer = mtp_layer(model)
        if layer is None:
            raise ValueError("the policy has no MTP module")
        self.model, self.layer, self.mask = model, layer, mask.bool()
        self.detach, self.temperature = detach, temperature
        self.logprobs: Tensor | None = None
        self.slots: Tensor | None = None  # (B, T-1) bool: the MTP block's real tokens
        self.accuracy = self.acceptance = float("nan")
        self.count = 0
        self._handle = None

    def __enter__(self) -> MTPForward:
        decoder = self.model.get_decoder()
        self._handle = decoder.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._handle.remove()

    def _hook(self, decoder: nn.Module, args: tuple, kwargs: dict, output) -> None:
        if self.logprobs is not None:
            raise RuntimeError("MTPForward saw a second forward; use one per forward")
        ids = kwargs.get("input_ids", args[0] if args else None)
        attention_mask = kwargs.get("attention_mask")
        position_ids = kwargs.get("position_ids")
        hidden = output.last_hidden_state
        B, T = ids.shape
        if self.mask.shape != (B, T - 1):
            raise ValueError(f"mask {tuple(self.mask.shape)} does not match ids {(B, T)}")
        if position_ids is None:
            position_ids = torch.arange(T, device=ids.device).expand(B, T)
        pos = position_ids[:, :-1]
        embeds = decoder.embed_tokens(ids[:, 1:])
        embeds = torch.where(pos.unsqueeze(-1) == 0, 0.0, embeds)  # as vLLM: none at position 0
        previous = hidden[:, :-1]
        if self.detach:
            embeds, previous = embeds.detach(), previous.detach()
        slot_mask = None if attention_mask is None else attention_mask[:, 1:]
        self.slots = (
            torch.ones(B, T - 1, dtype=torch.bool, device=ids.device)
            if slot_mask is None
            else slot_mask.bool()
        )
        causal = create_causal_mask(
            config=self.model.config,
            inputs_embeds=embeds,
            attention_mask=slot_mask,
            past_key_values=None,
            position_ids=pos,
        )
        out = self.layer(
            previous,
            embeds,
            attention_mask=causal,
            position_ids=pos,
            position_embeddings=decoder.rotary_emb(embeds, pos),
        )
        keep = self.mask[:, :-1] & self.mask[:, 1:]  # (B, T-2): slot j predicts token j+2
        head = self.model.get_output_embeddings().weight
        logits = F.linear(out[:, :-1][keep], head.detach() if self.detach else head)
        targets = ids[:, 2:][keep]
        logp = torch.log_softmax(logits.float(), -1)
        self.logprobs = logp.gather(-1, targets[:, None]).squeeze(-1)
        self.count = int(keep.sum())
        with torch.no_grad():
            draft = logits.argmax(-1)
            self.accuracy = float((draft == targets).float().mean()) if self.count else 0.0
            if self.temperature is not None and self.count:
                policy = F.linear(hidden[:, 1:-1][keep], head).float() / self.temperature
                p = torch.softmax(policy, -1).gather(-1, draft[:, None])
                self.acceptance = float(p.mean())

    def nll(self, denominator: float) -> Tensor:
        """The summed negative log-likelihood of the draft over ``denominator`` tokens."""
        if self.logprobs is None:
            raise RuntimeError("no forward ran inside MTPForward")
        return -self.logprobs.sum() / max(denominator, 1.0)
