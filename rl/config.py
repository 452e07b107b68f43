"""Recipe configuration: typed dataclasses, one per component, validated at load.

A recipe is a YAML file whose keys mirror these dataclasses. Loading checks every key and
type and names the offending key (``grpo.stpes``) in one clear error; ``key=value``
overrides from the command line go through the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rl.errors import ConfigError
from rl.presets import apply_algorithm


@dataclass
class ModelConfig:
    preset: str | None = "tiny-dsv3"
    """Named preset trained from scratch (see model/presets.py); ignored when `path` is set."""
    path: str | None = None
    """A local Hugging Face model folder (an r1kit checkpoint, Qwen2.5, ...) to start from."""
    dtype: str = "float32"
    """Weights' dtype in the learner and the rollout engine: float32 or bfloat16."""
    init_seed: int = 0
    """Seed of the random initialisation of a preset."""


@dataclass
class DataConfig:
    generator: str | None = None
    """`module:function` returning {"sft": rows, "rl": rows, "eval": rows}; its rows are
    written to OUT/data/*.jsonl and read back like user files."""
    generator_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the generator."""
    sft_file: str | None = None
    """JSONL of SFT rows: {"prompt", "completion", "answer"}."""
    rl_file: str | None = None
    """JSONL of RL prompts: {"prompt", "answer", ...extra fields passed to rewards}."""
    eval_file: str | None = None
    """JSONL of held-out rows: {"prompt", "answer"}; must not overlap the training rows."""


@dataclass
class SFTConfig:
    steps: int = 0
    """Optimizer steps of supervised fine-tuning on completions (0 skips the stage)."""
    batch_size: int = 64
    """Sequences per optimizer step (over all learner ranks)."""
    lr: float = 1e-3
    """Peak learning rate (AdamW), linear warm-up then constant."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""


@dataclass
class GRPOConfig:
    steps: int = 0
    """GRPO steps: sample, score, update, sync (0 skips the stage)."""
    prompts_per_step: int = 32
    """Prompts sampled per step."""
    group_size: int = 8
    """Completions per prompt (G)."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    lr_schedule: str = "constant"
    """After warm-up: constant; linear (decay to 10% of `lr` at the last step); or wsd
    (constant, then linear decay to 10% over the last 20% of the steps)."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    max_new_tokens: int = 64
    """Completion length cap; longer completions are truncated (finish reason "length")."""
    temperature: float = 1.0
    """Sampling temperature; the learner scales its logits by the same value."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and refill from more prompts."""
    max_refill_rounds: int = 3
    """Extra generation rounds per step for dynamic sampling (each of prompts_per_step)."""
    overlong_buffer: int = 0
    """DAPO's soft overlong penalty: the last this-many tokens before max_new_tokens cost up
    to ``overlong_penalty`` reward, linearly (0 disables)."""
    overlong_penalty: float = 1.0
    """Reward removed at max_new_tokens when overlong_buffer > 0."""
    mask_truncated: bool = False
    """Leave completions cut at max_new_tokens out of the loss (DAPO's overlong filtering);
    they still count in their group's baseline."""
    epochs: int = 1
    """Passes over each step's batch (PPO epochs)."""
    mini_batches: int = 1
    """Optimizer steps per pass: the batch splits into this many mini-batches of whole groups."""
    old_logprobs: str = "learner"
    """Old logprobs when a batch gets more than one optimizer step: ``learner`` (one no-grad
    forward before the updates) or ``rollout`` (the engine's sampling logprobs: no forward,
    equal to the learner's up to the engine's numerics; see ``logprob_diff_*`` in metrics).
    With one step per batch neither is needed: the update is on-policy."""
    estimator: str = "grpo"
    """Advantage estimator: grpo, dr_grpo, rloo, reinforce_pp_baseline."""
    loss_agg: str = "token-mean"
    """Loss aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum,
    seq-mean-token-sum-norm."""
    clip_low: float = 0.2
    """Lower clip of the importance ratio (1 - clip_low)."""
    clip_high: float = 0.2
    """Upper clip of the importance ratio (1 + clip_high); DAPO's clip-higher raises it."""
    clip_ratio_c: float | None = None
    """Dual clip (> 1): bounds the loss of negative-advantage tokens whose ratio ran away."""
    ratio_level: str = "token"
    """Importance ratio per token, or per sequence (GSPO: the length-normalised sequence
    ratio, clipped as one)."""
    entropy_coef: float = 0.0
    """Entropy bonus: the loss subtracts this times the aggregated policy entropy."""
    kl_coef: float = 0.0
    """beta of KL(policy || reference); the reference is the policy as GRPO starts, frozen
    (0 loads no reference at all)."""
    kl_estimator: str = "k3"
    """KL estimator: k1, k2 or k3 (Schulman)."""
    kl_in: str = "loss"
    """Where the KL goes: ``loss`` (a penalty term, aggregated like the policy loss) or
    ``reward`` (beta times each completion's summed KL subtracted before advantages)."""
    mismatch_correction: str = "none"
    """Rollout/learner mismatch correction: ``none``, ``token`` or ``sequence`` truncated
    importance sampling with weights min(pi_learner / pi_rollout, mismatch_cap)."""
    mismatch_cap: float = 2.0
    """Cap of the mismatch importance weights."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    weight_decay: float = 0.0
    """AdamW weight decay."""


@dataclass
class RewardsConfig:
    weights: dict[str, float] = field(default_factory=lambda: {"math": 1.0})
    """Reward name (math, format, or module:function) -> weight; the step reward is the sum."""
    accuracy: str = "math"
    """Reward that defines a correct answer for held-out accuracy."""
    workers: int | None = None
    """Reward processes (default: cores - 1)."""
    timeout_s: float = 5.0
    """Per-sample time limit; a sample over it is killed and scores 0."""


@dataclass
class EvalConfig:
    max_new_tokens: int = 64
    """Completion length cap of greedy evaluation."""
    limit: int | None = None
    """Evaluate on the first `limit` held-out rows only (default: all)."""


@dataclass
class RolloutConfig:
    kv_cache_gib: int = 1
    """vLLM-CPU KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)."""
    max_model_len: int = 256
    """Longest prompt + completion the engine accepts."""
    max_num_seqs: int = 256
    """Sequences vLLM batches at once."""
    seed: int = 0
    """Base sampling seed; each step and prompt derives its own."""
    workers: int = 1
    """vLLM rollout workers (Ray actors in one placement group); a step's prompts are split
    among them; a worker that dies is replaced and its share re-run."""
    placement: str = "pack"
    """Placement-group strategy of the workers: pack, spread, strict_pack, strict_spread."""
    threads: int | None = None
    """OpenMP threads of each engine on CPU (default: the machine's cores / workers)."""
    sync_bucket_mb: float = 256
    """Weight sync: the learner's weights travel in buckets of about this size (cut between
    layers), reloaded one by one: the engine's worker process holds one bucket at a time
    beyond the model."""


@dataclass
class LearnerConfig:
    world_size: int = 2
    """Learner ranks (Ray actors in one torch.distributed group, FSDP2-sharded)."""
    micro_batch_size: int = 64
    """Sequences per forward/backward on one rank; gradients accumulate across them."""
    micro_batch_tokens: int | None = 4096
    """Also at most this many padded tokens (rows x longest row) per forward/backward: rows
    are sorted by length, so short rows go many to a pass and long ones few. None: rows only."""
    share_prompts: int = 1024
    """GRPO forwards: a micro-batch's completions of one prompt go through the model as one
    packed row of at most this many tokens, [prompt, completion 1, completion 2, ...], each
    completion attending to the prompt and itself: the prompt is computed once, not G times.
    Same logprobs and gradients; a MoE layer's expert load then counts a shared prompt's
    tokens once. 0: off (also off for non-sdpa attention)."""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl on GPU, gloo on CPU), gloo, nccl."""
    threads: int | None = None
    """Torch threads per rank (default: cores / world_size, at least 1)."""


@dataclass
class RayConfig:
    address: str | None = None
    """Join an existing Ray cluster; default starts a local one."""
    num_cpus: int | None = None
    """CPUs of the local cluster (default: all)."""


@dataclass
class LoRAConfig:
    r: int = 0
    """LoRA rank; 0 trains every weight (full fine-tuning)."""
    alpha: float = 16.0
    """LoRA scale numerator: the adapter adds (alpha / r) B A."""
    targets: list[str] = field(default_factory=lambda: ["attention", "shared_experts", "dense_mlp"])
    """Weight families that get adapters (model/lora.py): attention (MLA projections),
    shared_experts, dense_mlp. routed_experts trains in model/lora.py but the learner cannot
    yet merge 3-D expert adapters for the sync."""
    dropout: float = 0.0
    """LoRA dropout."""


@dataclass
class MoEConfig:
    bias_update_rate: float = 0.0
    """Auxiliary-loss-free balancing during RL: after each GRPO step every MoE layer's
    e_score_correction_bias moves by this rate times sign(mean load - expert load), from the
    step's global expert load (DeepSeek-V3 used 1e-3 in pre-training). 0: off."""


@dataclass
class CheckpointConfig:
    every: int = 50
    """Steps between resumable checkpoints (sharded model + optimizer, driver state) in each
    stage; the last step of a stage always gets one. 0: only at the end of each stage."""
    keep_last: int = 2
    """Resumable checkpoints kept (older ones are deleted)."""


@dataclass
class Recipe:
    name: str = "recipe"
    """Run name shown in logs."""
    seed: int = 0
    """Seed of data order and learner RNG."""
    log_every: int = 10
    """SFT steps between metrics rows."""
    algorithm: str | None = None
    """A preset of grpo.* keys: grpo, dr_grpo or dapo (rl/presets.py); the recipe's own
    grpo keys win over the preset's."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


LEARNER_LORA_FAMILIES = ("attention", "shared_experts", "dense_mlp")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply ``key=value`` overrides, validate; raise ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. grpo.steps=10")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    recipe = _build(Recipe, apply_algorithm(raw, str(path)), prefix="", source=str(path))
    _check(recipe, str(path))
    return recipe


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part!r} is not a section")
    node[leaf] = value


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: key '{prefix.rstrip('.')}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{prefix}{key}.", source)
        else:
            kwargs[key] = _coerce(kind, value, f"{prefix}{key}", source)
    return cls(**kwargs)


def _coerce(kind: Any, value: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``kind`` (ints are accepted as floats)."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    for option in options:
        origin = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return None
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool, dict, list) and isinstance(value, origin):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{source}: key '{key}' must be {names}, got {value!r}")


def _check(recipe: Recipe, source: str) -> None:
    """Cross-field checks that types alone do not catch."""
    from rl.advantages import ESTIMATORS
    from rl.losses import AGGREGATIONS, KL_ESTIMATORS, MISMATCH_LEVELS, RATIO_LEVELS
    from rl.schedule import SCHEDULES

    checks = [
        (recipe.grpo.estimator in ESTIMATORS, "grpo.estimator", f"one of {sorted(ESTIMATORS)}"),
        (recipe.grpo.loss_agg in AGGREGATIONS, "grpo.loss_agg", f"one of {sorted(AGGREGATIONS)}"),
        (recipe.grpo.lr_schedule in SCHEDULES, "grpo.lr_schedule", f"one of {SCHEDULES}"),
        (recipe.model.dtype in ("float32", "bfloat16"), "model.dtype", "float32 or bfloat16"),
        (
            recipe.learner.backend in ("auto", "gloo", "nccl"),
            "learner.backend",
            "auto, gloo or nccl",
        ),
        (recipe.learner.world_size >= 1, "learner.world_size", ">= 1"),
        (recipe.learner.micro_batch_size >= 1, "learner.micro_batch_size", ">= 1"),
        (
            recipe.learner.micro_batch_tokens is None or recipe.learner.micro_batch_tokens >= 1,
            "learner.micro_batch_tokens",
            ">= 1 or null",
        ),
        (recipe.learner.share_prompts >= 0, "learner.share_prompts", ">= 0"),
        (recipe.rollout.workers >= 1, "rollout.workers", ">= 1"),
        (recipe.rollout.threads is None or recipe.rollout.threads >= 1, "rollout.threads", ">= 1"),
        (
            recipe.rollout.placement.upper() in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
            "rollout.placement",
            "pack, spread, strict_pack or strict_spread",
        ),
        (recipe.grpo.epochs >= 1, "grpo.epochs", ">= 1"),
        (recipe.checkpoint.every >= 0, "checkpoint.every", ">= 0"),
        (recipe.grpo.ratio_level in RATIO_LEVELS, "grpo.ratio_level", "token or sequence"),
        (recipe.grpo.kl_coef >= 0, "grpo.kl_coef", ">= 0"),
        (recipe.moe.bias_update_rate >= 0, "moe.bias_update_rate", ">= 0"),
        (recipe.lora.r >= 0, "lora.r", ">= 0"),
        (
            recipe.lora.r == 0
            or (recipe.lora.targets and set(recipe.lora.targets) <= set(LEARNER_LORA_FAMILIES)),
            "lora.targets",
            f"a non-empty list of {LEARNER_LORA_FAMILIES}",
        ),
        (recipe.grpo.kl_estimator in KL_ESTIMATORS, "grpo.kl_estimator", "k1, k2 or k3"),
        (recipe.grpo.kl_in in ("loss", "reward"), "grpo.kl_in", "loss or reward"),
        (
            recipe.grpo.mismatch_correction in ("none", *MISMATCH_LEVELS),
            "grpo.mismatch_correction",
            "none, token or sequence",
        ),
        (recipe.grpo.mismatch_cap >= 1, "grpo.mismatch_cap", ">= 1"),
        (
            recipe.grpo.clip_ratio_c is None or recipe.grpo.clip_ratio_c > 1,
            "grpo.clip_ratio_c",
            "> 1 (or null)",
        ),
        (
            recipe.grpo.mismatch_correction == "none" or recipe.grpo.old_logprobs == "learner",
            "grpo.mismatch_correction",
            "none when grpo.old_logprobs is rollout (the weights would all be 1)",
        ),
        (recipe.checkpoint.keep_last >= 1, "checkpoint.keep_last", ">= 1"),
        (
            0 <= recipe.grpo.overlong_buffer < recipe.grpo.max_new_tokens,
            "grpo.overlong_buffer",
            "between 0 and grpo.max_new_tokens - 1",
        ),
        (
            1 <= recipe.grpo.mini_batches <= max(recipe.grpo.prompts_per_step, 1),
            "grpo.mini_batches",
            "between 1 and grpo.prompts_per_step",
        ),
        (
            recipe.grpo.old_logprobs in ("learner", "rollout"),
            "grpo.old_logprobs",
            "learner or rollout",
        ),
        (recipe.grpo.group_size >= 2 or recipe.grpo.steps == 0, "grpo.group_size", ">= 2"),
        (recipe.model.path or recipe.model.preset, "model", "a preset or a path"),
        (recipe.data.generator or recipe.data.eval_file, "data", "a generator or data files"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise ConfigError(f"{source}: key '{key}' must be {expected}")
    if recipe.rewards.accuracy not in recipe.rewards.weights and recipe.rewards.accuracy != "math":
        raise ConfigError(f"{source}: key 'rewards.accuracy' names no reward of rewards.weights")
