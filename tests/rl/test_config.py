"""Recipe loading: every bad key, type or value is one error that names it."""

import dataclasses
import re
import typing

import pytest
import yaml

from rl.config import Recipe, load_recipe
from rl.errors import ConfigError

BASE = "data: {generator: a:b}\n"
LEARNER_FAMILIES = "['attention', 'dense_mlp', 'shared_experts']"


@pytest.fixture
def recipe_file(tmp_path):
    def write(text: str):
        path = tmp_path / "r.yaml"
        path.write_text(text)
        return path

    return write


def test_the_default_recipe_loads_with_overrides():
    recipe = load_recipe(
        "recipes/demo.yaml", ["grpo.steps=7", "learner.world_size=1", "sft.lr=3e-4"]
    )
    assert (recipe.grpo.steps, recipe.learner.world_size, recipe.sft.lr) == (7, 1, 3e-4)
    assert recipe.model.preset == "tiny-dsv3"


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        (
            "grpo: {stpes: 3}\ndata: {generator: a:b}",
            [],
            r"unknown key 'grpo.stpes' \(did you mean 'grpo.steps'\?\)",
        ),
        ("bogus: 1\ndata: {generator: a:b}", [], "unknown key 'bogus'"),
        (
            "grpo: {steps: many}\ndata: {generator: a:b}",
            [],
            "key 'grpo.steps' must be int, got 'many'",
        ),
        (
            "grpo: {estimator: ppo}\ndata: {generator: a:b}",
            [],
            "key 'grpo.estimator' must be one of",
        ),
        ("grpo: 3\ndata: {generator: a:b}", [], "key 'grpo' must be a mapping"),
        ("data: {generator: a:b}", ["sft.stepz=1"], "unknown key 'sft.stepz'"),
        ("data: {generator: a:b}", ["oops"], "expected key=value"),
        ("data: {generator: a:b}", ["data.generator.x=1"], "'generator' is not a section"),
        (
            "data: {generator: a:b, rl: {path: a.parquet, fields: {promt: question}}}",
            [],
            r"unknown key 'data.rl.fields.promt' \(did you mean 'data.rl.fields.prompt'\?\)",
        ),
        ("[1, 2]", [], "a recipe is a mapping"),
        ("a: [unclosed", [], "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_key(recipe_file, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe_file(text), overrides)


def test_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found: .*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


# Every field with choices or a range, and every rule between fields: each bad value with the
# whole error it must give (after "PATH: "), and the values at the edge that must load (None).
RULES = [
    # -- recipe, model, data
    (["seed=-1"], "key 'seed' must be >= 0, got -1"),
    (["seed=0"], None),
    (["log_every=0"], "key 'log_every' must be >= 1, got 0"),
    (["algorithm=ppo"], "key 'algorithm' must be one of ['dapo', 'dr_grpo', 'grpo'] or null, got 'ppo'"),
    (["algorithm=[grpo]"], "key 'algorithm' must be one of ['dapo', 'dr_grpo', 'grpo'] or null, got ['grpo']"),
    (["algorithm=dr_grpo"], None),
    (["algorithm=null"], None),
    (["model.dtype=fp8"], "key 'model.dtype' must be one of ['bfloat16', 'float32'], got 'fp8'"),
    (["model.dtype=bfloat16"], None),
    (["model.init_seed=-1"], "key 'model.init_seed' must be >= 0, got -1"),
    (["model.preset=null"], "key 'model' must be a preset or a path"),
    (["model.preset=null", "model.path=/some/model"], None),
    (["model.mtp=true"], None),
    (["model.mtp=true", "model.preset=tiny-qwen2"], "key 'model.mtp' must be false for preset 'tiny-qwen2': multi-token prediction needs a DeepSeek-V3 policy"),
    (["model.mtp=true", "model.preset=null", "model.path=/some/model"], None),
    (["rollout.speculative_tokens=2"], "key 'rollout.speculative_tokens' must be 0 unless the policy has an MTP module to draft with (model.mtp: true)"),
    (["rollout.speculative_tokens=2", "model.mtp=true"], None),
    (["rollout.speculative_tokens=-1"], "key 'rollout.speculative_tokens' must be >= 0, got -1"),
    (["sft.mtp_loss_weight=-0.1"], "key 'sft.mtp_loss_weight' must be >= 0, got -0.1"),
    (["grpo.mtp_loss_weight=-1"], "key 'grpo.mtp_loss_weight' must be >= 0, got -1"),
    (["grpo.mtp_loss_weight=0"], None),
    (["data.generator=null"], "key 'data' must be a generator or an eval source (data.eval or data.eval_file)"),
    (["data.generator=null", "data.eval_file=eval.jsonl"], None),
    (["data.generator=null", "data.eval.path=openai/gsm8k", "data.eval.name=main", "data.eval.split=test"], None),
    (["data.generator=null", "data.eval.reasoning_gym=countdown"], None),
    (["data.rl_file=a.jsonl", "data.rl.path=b.jsonl"], "key 'data.rl_file' must be unset when data.rl is set (one source)"),
    (["data.sft_file=a.jsonl", "data.sft.reasoning_gym=countdown"], "key 'data.sft_file' must be unset when data.sft is set (one source)"),
    (["data.rl.path=a.jsonl", "data.rl.reasoning_gym=countdown"], "key 'data.rl' must be a path or a reasoning_gym task, not both"),
    (["data.rl.limit=3"], "key 'data.rl' must be a path or a reasoning_gym task"),
    (["data.eval.fields.prompt=question"], "key 'data.eval' must be a path or a reasoning_gym task"),
    (["data.rl.split=test"], "key 'data.rl.split' must be unset without data.rl.path"),
    (["data.eval.name=main", "data.eval.reasoning_gym=countdown"], "key 'data.eval.name' must be unset without data.eval.path"),
    (["data.rl.path=a.jsonl", "data.rl.seed=0"], "key 'data.rl.seed' must be unset without data.rl.reasoning_gym"),
    (["data.rl.path=a.jsonl", "data.rl.size=8"], "key 'data.rl.size' must be unset without data.rl.reasoning_gym"),
    (["data.sft.path=a.jsonl", "data.sft.config={x: 1}"], "key 'data.sft.config' must be unset without data.sft.reasoning_gym"),
    (["data.rl.path=a.parquet", "data.rl.fields.prompt=question", "data.rl.fields.answer=reward_model.ground_truth"], None),
    (["data.rl.path=a.parquet", "data.rl.fields.prompt=3"], "key 'data.rl.fields.prompt' must be str or null, got 3"),
    (["data.rl.reasoning_gym=countdown", "data.rl.config={max_numbers: 3}"], None),
    *[
        row
        for stage in ("sft", "rl", "eval")
        for row in [
            ([f"data.{stage}.limit=0"], f"key 'data.{stage}.limit' must be >= 1 or null, got 0"),
            ([f"data.{stage}.path=a.jsonl", f"data.{stage}.limit=1"], None),
            ([f"data.{stage}.shuffle_seed=-1"], f"key 'data.{stage}.shuffle_seed' must be >= 0 or null, got -1"),
            ([f"data.{stage}.path=a.jsonl", f"data.{stage}.shuffle_seed=0"], None),
            ([f"data.{stage}.answer_format=boxed"], f"key 'data.{stage}.answer_format' must be one of ['gsm8k', 'math', 'raw'], got 'boxed'"),
            ([f"data.{stage}.path=a.jsonl", f"data.{stage}.answer_format=gsm8k"], None),
            ([f"data.{stage}.size=0"], f"key 'data.{stage}.size' must be >= 1 or null, got 0"),
            ([f"data.{stage}.seed=-1"], f"key 'data.{stage}.seed' must be >= 0 or null, got -1"),
            ([f"data.{stage}.reasoning_gym=countdown", f"data.{stage}.size=1", f"data.{stage}.seed=0"], None),
        ]
    ],
    # -- sft
    (["sft.steps=-1"], "key 'sft.steps' must be >= 0, got -1"),
    (["sft.steps=0"], None),
    (["sft.batch_size=0"], "key 'sft.batch_size' must be >= 1, got 0"),
    (["sft.batch_size=1"], None),
    (["sft.lr=0"], "key 'sft.lr' must be > 0, got 0"),
    (["sft.lr=-3e-4"], "key 'sft.lr' must be > 0, got '-3e-4'"),  # YAML 1.1: a string
    (["sft.warmup_steps=-1"], "key 'sft.warmup_steps' must be >= 0, got -1"),
    (["sft.weight_decay=-0.1"], "key 'sft.weight_decay' must be >= 0, got -0.1"),
    (["sft.weight_decay=0"], None),
    # -- grpo: ranges
    (["grpo.steps=-1"], "key 'grpo.steps' must be >= 0, got -1"),
    (["grpo.prompts_per_step=0"], "key 'grpo.prompts_per_step' must be >= 1, got 0"),
    (["grpo.prompts_per_step=1"], None),
    (["grpo.group_size=0"], "key 'grpo.group_size' must be >= 1, got 0"),
    (["grpo.lr=0"], "key 'grpo.lr' must be > 0, got 0"),
    (["grpo.lr=1e-6"], None),
    (["grpo.warmup_steps=-1"], "key 'grpo.warmup_steps' must be >= 0, got -1"),
    (["grpo.max_new_tokens=0"], "key 'grpo.max_new_tokens' must be >= 1, got 0"),
    (["grpo.temperature=0"], "key 'grpo.temperature' must be > 0, got 0"),
    (["grpo.temperature=true"], "key 'grpo.temperature' must be float, got True"),
    (["grpo.temperature=0.01"], None),
    (["grpo.top_p=0"], "key 'grpo.top_p' must be > 0 and <= 1, got 0"),
    (["grpo.top_p=1.5"], "key 'grpo.top_p' must be > 0 and <= 1, got 1.5"),
    (["grpo.top_p=1.0"], None),
    (["grpo.dynamic_sampling=2"], "key 'grpo.dynamic_sampling' must be bool, got 2"),
    (["grpo.max_refill_rounds=-1"], "key 'grpo.max_refill_rounds' must be >= 0, got -1"),
    (["grpo.max_refill_rounds=0"], None),
    (["grpo.max_staleness=-1"], "key 'grpo.max_staleness' must be >= 0, got -1"),
    (["grpo.max_staleness=1"], "key 'grpo.mismatch_correction' must be token or sequence when grpo.max_staleness > 0 (1): stale completions need the decoupled loss's weight to the policy that sampled them"),
    (["grpo.max_staleness=1", "grpo.mismatch_correction=sequence"], None),
    (["grpo.overlong_buffer=-1"], "key 'grpo.overlong_buffer' must be >= 0, got -1"),
    (["grpo.overlong_penalty=-1"], "key 'grpo.overlong_penalty' must be >= 0, got -1"),
    (["grpo.mask_truncated=1"], "key 'grpo.mask_truncated' must be bool, got 1"),
    (["grpo.epochs=0"], "key 'grpo.epochs' must be >= 1, got 0"),
    (["grpo.mini_batches=0"], "key 'grpo.mini_batches' must be >= 1, got 0"),
    (["grpo.clip_low=-0.1"], "key 'grpo.clip_low' must be >= 0 and < 1, got -0.1"),
    (["grpo.clip_low=1"], "key 'grpo.clip_low' must be >= 0 and < 1, got 1"),
    (["grpo.clip_low=0"], None),
    (["grpo.clip_high=-0.1"], "key 'grpo.clip_high' must be >= 0, got -0.1"),
    (["grpo.clip_high=0"], None),
    (["grpo.clip_ratio_c=1"], "key 'grpo.clip_ratio_c' must be > 1 or null, got 1"),
    (["grpo.clip_ratio_c=three"], "key 'grpo.clip_ratio_c' must be float or null, got 'three'"),
    (["grpo.clip_ratio_c=3"], None),
    (["grpo.clip_ratio_c=null"], None),
    (["grpo.entropy_coef=-0.01"], "key 'grpo.entropy_coef' must be >= 0, got -0.01"),
    (["grpo.kl_coef=-0.1"], "key 'grpo.kl_coef' must be >= 0, got -0.1"),
    (["grpo.kl_coef=0"], None),
    (["grpo.mismatch_cap=0.5"], "key 'grpo.mismatch_cap' must be >= 1, got 0.5"),
    (["grpo.mismatch_cap=1"], None),
    (["grpo.max_grad_norm=0"], "key 'grpo.max_grad_norm' must be > 0, got 0"),
    (["grpo.weight_decay=-1"], "key 'grpo.weight_decay' must be >= 0, got -1"),
    # -- grpo: choices
    (["grpo.lr_schedule=cosine"], "key 'grpo.lr_schedule' must be one of ['constant', 'linear', 'wsd'], got 'cosine'"),
    (["grpo.lr_schedule=wsd"], None),
    (["grpo.old_logprobs=engine"], "key 'grpo.old_logprobs' must be one of ['learner', 'rollout'], got 'engine'"),
    (["grpo.old_logprobs=rollout"], None),
    (["grpo.estimator=ppo"], "key 'grpo.estimator' must be one of ['dr_grpo', 'grpo', 'reinforce_pp_baseline', 'rloo'], got 'ppo'"),
    (["grpo.estimator=rloo"], None),
    (["grpo.loss_agg=seq-mean"], "key 'grpo.loss_agg' must be one of ['seq-mean-token-mean', 'seq-mean-token-sum', 'seq-mean-token-sum-norm', 'token-mean'], got 'seq-mean'"),
    (["grpo.loss_agg=seq-mean-token-sum-norm"], None),
    (["grpo.ratio_level=group"], "key 'grpo.ratio_level' must be one of ['sequence', 'token'], got 'group'"),
    (["grpo.ratio_level=sequence"], None),
    (["grpo.kl_estimator=k4"], "key 'grpo.kl_estimator' must be one of ['k1', 'k2', 'k3'], got 'k4'"),
    (["grpo.kl_estimator=k1"], None),
    (["grpo.kl_in=advantage"], "key 'grpo.kl_in' must be one of ['loss', 'reward'], got 'advantage'"),
    (["grpo.kl_in=reward"], None),
    (["grpo.mismatch_correction=tis"], "key 'grpo.mismatch_correction' must be one of ['none', 'sequence', 'token'], got 'tis'"),
    (["grpo.mismatch_correction=sequence"], None),
    # -- grpo: between fields
    (["grpo.prompts_per_step=8", "grpo.mini_batches=9"], "key 'grpo.mini_batches' must be <= grpo.prompts_per_step (8), got 9"),
    (["grpo.prompts_per_step=8", "grpo.mini_batches=8"], None),
    (["grpo.max_new_tokens=16", "grpo.overlong_buffer=16"], "key 'grpo.overlong_buffer' must be < grpo.max_new_tokens (16), got 16"),
    (["grpo.max_new_tokens=16", "grpo.overlong_buffer=15"], None),
    (["grpo.steps=1", "grpo.group_size=1"], "key 'grpo.group_size' must be >= 2 when grpo.steps > 0, got 1"),
    (["grpo.steps=1", "grpo.group_size=2"], None),
    (["grpo.steps=0", "grpo.group_size=1"], None),
    (["grpo.steps=1", "grpo.max_new_tokens=256"], "key 'grpo.max_new_tokens' must be < rollout.max_model_len (256), got 256"),
    (["grpo.steps=1", "grpo.max_new_tokens=255"], None),
    (["grpo.steps=0", "grpo.max_new_tokens=256"], None),  # no GRPO stage: no GRPO sampling
    (["rollout.max_model_len=64"], "key 'eval.max_new_tokens' must be < rollout.max_model_len (64), got 64"),
    (["rollout.max_model_len=65"], None),
    (["grpo.old_logprobs=rollout", "grpo.mismatch_correction=token"], "key 'grpo.mismatch_correction' must be none when grpo.old_logprobs is rollout (the weights would all be 1), got 'token'"),
    (["grpo.old_logprobs=learner", "grpo.mismatch_correction=token"], None),
    # -- rewards, eval
    (["rewards.workers=0"], "key 'rewards.workers' must be >= 1 or null, got 0"),
    (["rewards.workers=two"], "key 'rewards.workers' must be int or null, got 'two'"),
    (["rewards.workers=1"], None),
    (["rewards.workers=null"], None),
    (["rewards.timeout_s=0"], "key 'rewards.timeout_s' must be > 0, got 0"),
    (["rewards.timeout_s=0.5"], None),
    (["rewards.weights={math: heavy}"], "key 'rewards.weights.math' must be float, got 'heavy'"),
    (["rewards.weights=[math]"], "key 'rewards.weights' must be dict, got ['math']"),
    (["rewards.accuracy=format"], "key 'rewards.accuracy' names no reward of rewards.weights"),
    (["rewards.accuracy=format", "rewards.weights={math: 1, format: 0.5}"], None),
    (["eval.max_new_tokens=0"], "key 'eval.max_new_tokens' must be >= 1, got 0"),
    (["eval.limit=0"], "key 'eval.limit' must be >= 1 or null, got 0"),
    (["eval.limit=1"], None),
    (["eval.limit=null"], None),
    (["eval.n=0"], "key 'eval.n' must be >= 1, got 0"),
    (["eval.n=8"], None),
    (["eval.temperature=0"], "key 'eval.temperature' must be > 0, got 0"),
    (["eval.temperature=0.6"], None),
    # -- rollout
    (["rollout.kv_cache_gib=0"], "key 'rollout.kv_cache_gib' must be > 0 or null, got 0"),
    (["rollout.kv_cache_gib=0.25"], None),
    (["rollout.max_model_len=0"], "key 'rollout.max_model_len' must be >= 1, got 0"),
    (["rollout.max_num_seqs=0"], "key 'rollout.max_num_seqs' must be >= 1, got 0"),
    (["rollout.seed=-1"], "key 'rollout.seed' must be >= 0, got -1"),
    (["rollout.workers=0"], "key 'rollout.workers' must be >= 1, got 0"),
    (["rollout.workers=1"], None),
    (["rollout.placement=PACK"], "key 'rollout.placement' must be one of ['pack', 'spread', 'strict_pack', 'strict_spread'], got 'PACK'"),
    (["rollout.placement=strict_spread"], None),
    (["rollout.sync_transport=nccl"], "key 'rollout.sync_transport' must be one of ['auto', 'collective', 'object_store', 'shared_memory'], got 'nccl'"),
    (["rollout.sync_transport=collective"], None),
    (["rollout.sync_transport=object_store"], None),
    (["rollout.threads=0"], "key 'rollout.threads' must be >= 1 or null, got 0"),
    # -- tools
    (["tools.environment=python"], None),
    (["tools.environment=sandbox"], "key 'tools.environment' must be python, functions or module:Class, got 'sandbox'"),
    (["tools.environment=functions"], "key 'tools.functions' must be a non-empty list of module:function tools when tools.environment is functions"),
    (["tools.max_turns=0"], "key 'tools.max_turns' must be >= 1, got 0"),
    (["tools.max_tool_calls=-1"], "key 'tools.max_tool_calls' must be >= 0, got -1"),
    (["tools.max_turn_tokens=0"], "key 'tools.max_turn_tokens' must be >= 1 or null, got 0"),
    (["tools.output_chars=0"], "key 'tools.output_chars' must be >= 1, got 0"),
    (["tools.timeout_s=0"], "key 'tools.timeout_s' must be > 0, got 0"),
    (["tools.workers=0"], "key 'tools.workers' must be >= 1, got 0"),
    (["tools.void_trajectories=skip"], "key 'tools.void_trajectories' must be one of ['drop', 'keep', 'zero'], got 'skip'"),
    (["rollout.threads=null"], None),
    (["rollout.sync_bucket_mb=0"], "key 'rollout.sync_bucket_mb' must be > 0, got 0"),
    (["rollout.sync_bucket_mb=0.5"], None),
    # -- learner, ray
    (["learner.world_size=0"], "key 'learner.world_size' must be >= 1, got 0"),
    (["learner.micro_batch_size=0"], "key 'learner.micro_batch_size' must be >= 1, got 0"),
    (["learner.micro_batch_tokens=0"], "key 'learner.micro_batch_tokens' must be >= 1 or null, got 0"),
    (["learner.micro_batch_tokens=null"], None),
    (["learner.share_prompts=-1"], "key 'learner.share_prompts' must be >= 0, got -1"),
    (["learner.share_prompts=0"], None),
    (["learner.backend=mpi"], "key 'learner.backend' must be one of ['auto', 'gloo', 'nccl'], got 'mpi'"),
    (["learner.backend=gloo"], None),
    (["learner.threads=0"], "key 'learner.threads' must be >= 1 or null, got 0"),
    (["learner.max_restarts=-1"], "key 'learner.max_restarts' must be >= 0, got -1"),
    (["learner.max_restarts=0"], None),
    (["learner.activation_checkpointing=yes please"], "key 'learner.activation_checkpointing' must be bool, got 'yes please'"),
    (["learner.offload_optimizer=true"], None),
    (["rollout.tensor_parallel_size=0"], "key 'rollout.tensor_parallel_size' must be >= 1, got 0"),
    (["rollout.gpu_memory_utilization=1.5"], "key 'rollout.gpu_memory_utilization' must be > 0 and <= 1, got 1.5"),
    (["rollout.gpu_memory_utilization=0.9"], None),
    (["learner.resources={learner_node: many}"], "key 'learner.resources.learner_node' must be float, got 'many'"),
    (["learner.resources={learner_node: 1}"], None),
    (["rollout.resources=[rollout_node]"], "key 'rollout.resources' must be dict, got ['rollout_node']"),
    (["ray.num_cpus=0"], "key 'ray.num_cpus' must be >= 1 or null, got 0"),
    (["ray.num_cpus=1"], None),
    # -- lora, moe, checkpoint
    (["lora.r=-1"], "key 'lora.r' must be >= 0, got -1"),
    (["lora.alpha=0"], "key 'lora.alpha' must be > 0, got 0"),
    (["lora.targets=attention"], "key 'lora.targets' must be list, got 'attention'"),
    (["lora.targets=[attention, routed_experts]"], f"key 'lora.targets[1]' must be one of {LEARNER_FAMILIES}, got 'routed_experts'"),
    (["lora.targets=[dense_mlp, shared_experts]"], None),
    (["lora.r=8", "lora.targets=[]"], "key 'lora.targets' must be non-empty when lora.r > 0"),
    (["lora.r=0", "lora.targets=[]"], None),
    (["lora.dropout=1"], "key 'lora.dropout' must be >= 0 and < 1, got 1"),
    (["lora.dropout=0.1"], None),
    (["moe.bias_update_rate=-0.001"], "key 'moe.bias_update_rate' must be >= 0, got -0.001"),
    (["moe.bias_update_rate=0.001"], None),
    (["checkpoint.every=-1"], "key 'checkpoint.every' must be >= 0, got -1"),
    (["checkpoint.every=0"], None),
    (["checkpoint.keep_last=0"], "key 'checkpoint.keep_last' must be >= 1, got 0"),
    (["checkpoint.keep_last=1"], None),
    # -- logging
    (["logging.samples=-1"], "key 'logging.samples' must be >= 0, got -1"),
    (["logging.samples=0"], None),
    (["logging.wandb.mode=cloud"], "key 'logging.wandb.mode' must be one of ['offline', 'online'], got 'cloud'"),
    (["logging.wandb.mode=offline"], None),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), RULES, ids=[" ".join(o) for o, _ in RULES])
def test_every_rule_names_its_key(recipe_file, overrides, message):
    path = recipe_file(BASE)
    if message is not None:
        with pytest.raises(ConfigError, match=f"^{re.escape(f'{path}: {message}')}$"):
            load_recipe(path, overrides)
        return
    recipe = load_recipe(path, overrides)
    for item in overrides:  # each value lands where its key says
        key, _, value = item.partition("=")
        node = recipe
        for part in key.split("."):
            node = getattr(node, part)
        expected = yaml.safe_load(value)
        assert node == (float(expected) if isinstance(node, float) else expected), key


def test_the_rules_cover_every_field_with_choices_or_a_range():
    """A new field with a Range or Literal gets a row in RULES (a bad value at least)."""

    def fields(cls, prefix=""):
        for f in dataclasses.fields(cls):
            kind = typing.get_type_hints(cls, include_extras=True)[f.name]
            if dataclasses.is_dataclass(kind):
                yield from fields(kind, f"{prefix}{f.name}.")
            elif re.search(r"Range|Literal", repr(kind)):
                yield prefix + f.name

    named = {re.match(r"key '([\w.]+)", m).group(1) for _, m in RULES if m}
    assert set(fields(Recipe)) - named == set()


@pytest.mark.parametrize(
    ("text", "overrides", "buffer"),
    [
        # DAPO's buffer is a fifth of the length budget (4096 of 20480), rounded down:
        ("algorithm: dapo\ngrpo: {max_new_tokens: 64}", [], 12),  # 64 / 5 = 12.8
        ("grpo: {max_new_tokens: 16}", ["algorithm=dapo"], 3),  # 16 / 5 = 3.2
        ("algorithm: dapo", ["grpo.max_new_tokens=100"], 20),
        ("algorithm: dapo", [], 12),  # GRPOConfig's default budget, 64
        ("algorithm: dapo\ngrpo: {max_new_tokens: 64, overlong_buffer: 4}", [], 4),  # own wins
        ("algorithm: dapo", ["grpo.overlong_buffer=0"], 0),  # even when it is 0
        ("algorithm: grpo", [], 0),
        ("algorithm: dr_grpo", [], 0),
        ("", [], 0),
    ],
)
def test_dapo_sets_its_overlong_buffer_from_max_new_tokens(recipe_file, text, overrides, buffer):
    recipe = load_recipe(recipe_file(f"{BASE}{text}\n"), overrides)
    assert recipe.grpo.overlong_buffer == buffer
    assert recipe.grpo.mask_truncated is (recipe.algorithm == "dapo")


def test_dapo_reads_a_checked_max_new_tokens(recipe_file):
    path = recipe_file(f"{BASE}algorithm: dapo\n")
    message = f"{path}: key 'grpo.max_new_tokens' must be int, got 'many'"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_recipe(path, ["grpo.max_new_tokens=many"])
