"""What a GRPO run of a model needs, as r1kit runs it: learner ranks (FSDP2), the frozen
reference, vLLM rollout engines, host RAM and the weight sync; and a layout that fits.

Every figure is a formula of the config and the run's shape, written out below:

- learner, per rank (FSDP2 over ``ranks``, fp32 master weights, bf16 compute): 4 B/param
  of master weights, 4 of gradients and 8 of AdamW moments, all sharded (16 B/param / ranks;
  host RAM instead with ``offload``); plus the gathered bf16 layer and the one FSDP2
  prefetches (2 x 2 B x the largest layer) and the root module's embedding and head, which
  stay gathered through a step;
- activations per micro-batch of ``micro_batch_tokens`` tokens (Korthikanti et al.,
  2205.05198, 16-bit, no tensor parallelism, with a fused attention kernel so no s^2 term):
  34 h bytes per token per layer, of which 19 h are the MLP's (scaled by the active expert
  width of an MoE layer); with activation checkpointing only each layer's input (2 h bytes)
  is kept and one layer is recomputed at a time; plus the logprob path over the vocabulary,
  counted as the logits in the compute dtype and four fp32 tensors of their size. That is a
  measured figure, not a derivation: rl/logprobs.py chunks the log-softmax and the entropy,
  but the backward makes the logits' gradient and the LM head's own. A SmolLM2 learner rank
  on this CPU (fp32) grows by 1.99 MB per micro-batch token (2.18 before the logits were
  picked ahead of the head instead of sliced and copied), against 1.35 MB when only the
  logits and one log-softmax were counted (tests/rl/test_plan.py holds the planner to the
  measured peak within 15%);
- the KL reference (``kl``): r1kit keeps it as a sharded fp32 copy, 4 B/param / ranks;
- an engine (vLLM, bf16 weights, tensor parallel over ``tp`` GPUs): 2 B/param / tp per GPU;
  the KV cache per token from model/memory.py, which tensor parallelism shards by key-value
  heads, except MLA's one latent head, replicated on every rank; what is left of
  ``gpu_memory_utilization`` after weights and a fixed overhead holds the batch;
- the sync: bf16 weights once per step, at ``sync_gbps``; r1kit's rank 0 gathers the full
  fp32 state in its host's RAM first (4 B/param on one node);
- the learner's compute per step, an estimate that starts from a measured utilisation: 6 x
  active params per trained token (forward + backward), plus 2 x for the forward that gives
  the old logprobs, over the learner GPUs' bf16 peak at ``mfu`` (0.19: verl's DeepSeek-V3 run
  on 96 H20, docs/perf/dpsk.md); generation time is not estimated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from model.memory import is_mla, kv_cache_bytes_per_token
from model.params import ParamCount, count_params, text_config
from rl.plan.gpus import GPU

GIB = 2**30
ENGINE_OVERHEAD_GIB = 4.0  # vLLM's activations, CUDA graphs and allocator slack per GPU
LEARNER_OVERHEAD_GIB = 3.0  # CUDA context, NCCL buffers, allocator fragmentation per rank
HEADROOM = 0.92  # a layout is planned to use at most this share of a GPU


@dataclass
class Shape:
    """The run: what each GRPO step samples and trains on, and how."""

    prompts: int = 128
    group: int = 8
    prompt_len: int = 512
    response_len: int = 4096
    micro_batch_tokens: int = 16384
    kl: bool = False
    activation_checkpointing: bool = True
    compute_dtype: str = "bfloat16"  # what the learner's forward runs in (float32 on a CPU)
    gpu_memory_utilization: float = 0.9
    sync_gbps: float = 25.0  # GB/s between the learner's rank 0 and the engines
    learner_overhead_gib: float = LEARNER_OVERHEAD_GIB  # the runtime's own memory per rank
    mfu: float = 0.19  # learner model-FLOPs utilisation (verl's DeepSeek-V3 on H20)
    host_ram_gib: float = 2048.0  # per node


@dataclass
class Layout:
    learner_gpus: int
    engine_tp: int
    engines: int
    offload: bool


def learner_gib(
    p: ParamCount, config: Mapping[str, Any], shape: Shape, ranks: int, offload: bool
) -> dict[str, float]:
    """Per-rank learner memory on its GPU, by part (GiB)."""
    config = text_config(config)
    h, vocab = int(config["hidden_size"]), int(config["vocab_size"])
    width = 2 if shape.compute_dtype in ("bfloat16", "float16") else 4  # bytes per element
    states = 0.0 if offload else 16 * p.total / ranks
    gathered = width * (2 * p.largest_layer + p.embedding)
    tokens = shape.micro_batch_tokens
    active_width = _active_mlp_width(config, p)
    # Korthikanti's 16-bit bytes per token and layer: 15 h outside the MLP, 19 h in it
    per_token_layer = (15 + 19 * active_width / (4 * h)) * h * width / 2
    if shape.activation_checkpointing:
        activations = p.layers * width * h * tokens + per_token_layer * tokens
    else:
        activations = p.layers * per_token_layer * tokens
    logits = (width + 4 * 4) * vocab * tokens
    reference = 4 * p.total / ranks if shape.kl else 0.0
    parts = {
        "weights_grads_optimizer": states,
        "gathered_layers": gathered,
        "activations": activations,
        "logits": logits,
        "reference": reference,
    }
    out = {k: v / GIB for k, v in parts.items()}
    out["overhead"] = shape.learner_overhead_gib
    out["total"] = sum(out.values())
    return out


def _active_mlp_width(config: Mapping[str, Any], p: ParamCount) -> float:
    """The intermediate width a token runs through in an average layer's MLP."""
    if not p.moe_layers:
        return float(config["intermediate_size"])
    moe = int(config.get("moe_intermediate_size") or config["intermediate_size"])
    k = int(config.get("num_experts_per_tok") or 1)
    shared = int(config.get("n_shared_experts") or 0)
    moe_width = (k + shared) * moe
    dense = p.layers - p.moe_layers
    return (dense * int(config["intermediate_size"]) + p.moe_layers * moe_width) / p.layers


def engine_kv_bytes_per_gpu(config: Mapping[str, Any], tp: int) -> float:
    """KV cache per token on each GPU of a ``tp``-way engine (MLA's latent is replicated)."""
    config = text_config(config)
    per_token = kv_cache_bytes_per_token(config, "bfloat16")
    if is_mla(config):
        return float(per_token)
    kv_heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return per_token / min(tp, kv_heads)


def engine_gib(
    p: ParamCount, config: Mapping[str, Any], shape: Shape, gpu: GPU, tp: int
) -> dict[str, float]:
    """Per-GPU memory of a ``tp``-way engine and the sequences its KV cache holds."""
    weights = 2 * (p.total + p.mtp) / tp / GIB
    budget = shape.gpu_memory_utilization * gpu.memory_gib - weights - ENGINE_OVERHEAD_GIB
    kv_per_token = engine_kv_bytes_per_gpu(config, tp)
    seq = shape.prompt_len + shape.response_len
    sequences = max(0, int(budget * GIB // (kv_per_token * seq)))
    return {
        "weights": weights,
        "kv_cache": max(0.0, budget),
        "overhead": ENGINE_OVERHEAD_GIB,
        "total": shape.gpu_memory_utilization * gpu.memory_gib,
        "sequences": sequences,
        "kv_gib_per_sequence": kv_per_token * seq / GIB,
    }


def host_gib(p: ParamCount, gpu: GPU, learner_gpus: int, offload: bool) -> dict[str, float]:
    """Host RAM per node: offloaded shards of the ranks on it, and on rank 0's node the
    full fp32 state it gathers for a sync."""
    ranks_here = min(gpu.per_node, learner_gpus)
    offloaded = 16 * p.total / learner_gpus * ranks_here / GIB if offload else 0.0
    gather = 4 * p.total / GIB
    return {
        "offloaded_states": offloaded,
        "sync_gather_rank0": gather,
        "rank0_node": offloaded + gather,
    }


def evaluate(
    config: Mapping[str, Any], gpu: GPU, shape: Shape, layout: Layout, p: ParamCount | None = None
) -> dict[str, Any]:
    """Every figure of ``layout``, and whether (and why not) it fits."""
    p = p or count_params(config)
    learner = learner_gib(p, config, shape, layout.learner_gpus, layout.offload)
    engine = engine_gib(p, config, shape, gpu, layout.engine_tp)
    host = host_gib(p, gpu, layout.learner_gpus, layout.offload)
    samples = shape.prompts * shape.group
    concurrent = engine["sequences"] * layout.engines
    why = []
    if learner["total"] > HEADROOM * gpu.memory_gib:
        why.append(
            f"a learner rank needs {learner['total']:.0f} GiB of the {gpu.memory_gib:g} GiB "
            f"GPU ({_largest(learner)})"
        )
    if engine["sequences"] < 1:
        why.append(
            f"a TP{layout.engine_tp} engine's weights take {engine['weights']:.0f} GiB per GPU: "
            f"no room for one {shape.prompt_len + shape.response_len}-token sequence's KV cache "
            f"({engine['kv_gib_per_sequence']:.2f} GiB)"
        )
    if host["rank0_node"] > shape.host_ram_gib:
        why.append(
            f"rank 0's node needs {host['rank0_node']:.0f} GiB of host RAM "
            f"(the sync gathers the full fp32 state there: {host['sync_gather_rank0']:.0f} GiB) "
            f"of {shape.host_ram_gib:g}"
        )
    sync_bytes = 2 * p.total
    return {
        "fits": not why,
        "why": "; ".join(why) if why else "fits",
        "failures": len(why),
        "r1kit_needs": _needs(p, gpu, shape, learner, host),
        "layout": asdict(layout),
        "per_gpu_gib": {
            "learner": _rounded(learner),
            "engine": _rounded({k: v for k, v in engine.items() if k != "sequences"}),
        },
        "host_ram_gib": _rounded(host),
        "rollout": {
            "samples_per_step": samples,
            "sequences_in_flight": concurrent,
            "waves": math.ceil(samples / concurrent) if concurrent else None,
        },
        "sync": {"bytes": sync_bytes, "seconds": round(sync_bytes / (shape.sync_gbps * 1e9), 1)},
        "learner_seconds": round(learner_seconds(p, gpu, shape, layout.learner_gpus), 1),
    }


def learner_seconds(p: ParamCount, gpu: GPU, shape: Shape, learner_gpus: int) -> float:
    """The learner's compute per step at ``shape.mfu`` of its GPUs' bf16 peak: (6 + 2) x
    active params x the step's tokens (train, plus the old-logprob forward)."""
    tokens = shape.prompts * shape.group * (shape.prompt_len + shape.response_len)
    flops = 8 * p.active * tokens
    return flops / (learner_gpus * gpu.bf16_tflops * 1e12 * shape.mfu)


def _needs(
    p: ParamCount, gpu: GPU, shape: Shape, learner: Mapping[str, float], host: Mapping[str, float]
) -> list[str]:
    """What r1kit's learner lacks for this model, where the plan shows it matters."""
    needs = []
    if learner["gathered_layers"] > 0.25 * gpu.memory_gib:
        needs.append(
            f"expert parallelism in the learner: FSDP2 gathers a whole layer on every rank "
            f"({2 * p.largest_layer / GIB:.1f} GiB in bf16, twice with prefetch)"
        )
    if host["sync_gather_rank0"] > 0.5 * shape.host_ram_gib:
        needs.append(
            "a sync that streams buckets from the shards instead of gathering the full fp32 "
            f"state on rank 0 ({host['sync_gather_rank0']:.0f} GiB)"
        )
    if learner["logits"] > 0.1 * gpu.memory_gib:
        needs.append(
            "a logprob path that never holds a micro-batch's logits whole (with their "
            f"gradients they take {learner['logits']:.0f} GiB: fewer tokens per micro-batch "
            "cut it)"
        )
    return needs


def _largest(parts: Mapping[str, float]) -> str:
    name = max((k for k in parts if k != "total"), key=lambda k: parts[k])
    return f"{name.replace('_', ' ')} {parts[name]:.0f} GiB"


def _rounded(parts: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in parts.items()}


TPS = (1, 2, 4, 8, 16, 32, 64)


def _engine_tp(p: ParamCount, config: Mapping[str, Any], shape: Shape, gpu: GPU, gpus: int) -> int:
    """The smallest tensor-parallel size whose engine holds a sequence (the largest that
    ``gpus`` allow when none does)."""
    allowed = [tp for tp in TPS if tp <= gpus]
    for tp in allowed:
        if engine_gib(p, config, shape, gpu, tp)["sequences"] >= 1:
            return tp
    return allowed[-1]


def candidates(
    p: ParamCount, config: Mapping[str, Any], gpus: int, gpu: GPU, shape: Shape
) -> list[Layout]:
    """Learner / engine splits of ``gpus`` (whole nodes each above one node, else within
    it), fewest learner GPUs first, without optimizer offload before with; the rest run
    engines of the smallest tensor-parallel size that holds a sequence."""
    step = 1 if gpus <= gpu.per_node else gpu.per_node
    out = []
    for offload in (False, True):
        for learner in range(step, gpus, step):
            tp = _engine_tp(p, config, shape, gpu, gpus - learner)
            out.append(Layout(learner, tp, (gpus - learner) // tp, offload))
    return out


def best_layout(config: Mapping[str, Any], gpus: int, gpu: GPU, shape: Shape) -> dict[str, Any]:
    """The first layout that fits, or the closest miss (fewest failed constraints, then the
    smallest learner rank) and why it fails."""
    p = count_params(config)
    tried = [
        evaluate(config, gpu, shape, lay, p) for lay in candidates(p, config, gpus, gpu, shape)
    ]
    if not tried:
        return {"fits": False, "why": f"{gpus} GPU(s): a learner and an engine need at least 2"}
    for result in tried:
        if result["fits"]:
            return result
    return min(
        tried,
        key=lambda r: (
            r["failures"],
            r["host_ram_gib"]["rank0_node"],
            r["per_gpu_gib"]["learner"]["total"],
        ),
    )


def cluster_sizes(gpu: GPU, limit: int = 4096) -> list[int]:
    """The cluster sizes searched for the smallest fit: 2, 4, then whole nodes, coarser
    past 64 GPUs."""
    n = gpu.per_node
    sizes = [s for s in (2, 4) if s < n] + list(range(n, min(64, limit) + 1, n))
    return sizes + list(range(128, limit + 1, 64))


def smallest_cluster(
    config: Mapping[str, Any], gpu: GPU, shape: Shape, limit: int = 4096
) -> int | None:
    """The fewest GPUs (of ``cluster_sizes``) with a layout that fits, up to ``limit``."""
    for gpus in cluster_sizes(gpu, limit):
        if best_layout(config, gpus, gpu, shape)["fits"]:
            return gpus
    return None


def plan(config: Mapping[str, Any], gpus: int, gpu: GPU, shape: Shape) -> dict[str, Any]:
    """The planner's answer (``r1kit plan --json``)."""
    p = count_params(config)
    result = best_layout(config, gpus, gpu, shape)
    return {
        "params": {"total": p.total, "active": p.active, "mtp": p.mtp, **_breakdown(p)},
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(text_config(config), "bfloat16"),
        "gpu": asdict(gpu),
        "gpus": gpus,
        "shape": asdict(shape),
        **result,
        "smallest_cluster": smallest_cluster(config, gpu, shape),
    }


def _breakdown(p: ParamCount) -> dict[str, int]:
    keys = ("embedding", "attention", "dense_mlp", "shared_experts", "routed_experts", "router")
    out = {k: getattr(p, k) for k in keys}
    out |= {"per_expert": p.expert, "largest_layer": p.largest_layer, "layers": p.layers}
    return out
