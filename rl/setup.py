"""Start what a run needs (initial policy, Ray, learner ranks, rollout worker, reward pools)
and tear it down again."""

from __future__ import annotations

import os
import shutil
import string
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from model.chat import ChatFormat
from rewards import RewardPool
from rl.check import quick_check
from rl.config import Recipe, ToolsConfig
from rl.errors import ConfigError
from rl.learner_group import LearnerGroup
from rl.metrics import MetricsLog


@dataclass
class Run:
    """Handles of one run's actors and resources."""

    recipe: Recipe
    out: Path
    tokenizer: Any
    learner: LearnerGroup
    rollouts: Any  # rollouts.RolloutGroup: the vLLM workers
    pool: RewardPool
    accuracy_pool: RewardPool  # the training pool itself where the accuracy reward is all it scores
    log: MetricsLog
    own_rollouts: bool = True
    wall_offset: float = 0.0  # wall seconds of earlier sessions of a resumed run - start time
    sync_folder: str | None = None  # shared memory for weight syncs; None: Ray's object store
    collective: bool = False  # weight syncs broadcast over a torch.distributed group
    colocated: bool = False  # the engines run in learner ranks' processes (rl/colocated.py)
    # the Ray node of every learner rank and rollout worker (summary.json's ``placement``)
    placement: dict[str, list[str]] = field(default_factory=dict)
    learner_restarts: int = 0  # learners this run started again after a rank died
    speculative_counts: dict[str, int] = field(default_factory=dict)  # at the last step's end
    _syncs: int = 0

    @property
    def pad_id(self) -> int:
        from model import pad_token_id

        return pad_token_id(self.tokenizer)

    @cached_property
    def chat(self) -> ChatFormat:
        """Rows -> prompt token ids, completions -> targets, through the chat template."""
        data = self.recipe.data
        schemas = self.recipe.tools.schemas()  # a template that shows tools gets them
        return ChatFormat(self.tokenizer, data.system_prompt, data.prompt_template, tools=schemas)

    @cached_property
    def environment(self) -> Any:
        """One instance of the recipe's tool environment, in the driver (None without one):
        how it shows tool output, for SFT targets."""
        from rollouts.tools import make_environment

        spec = self.recipe.tools.spec()
        return None if spec is None else make_environment(spec)

    def generate(self, rows: list[dict], *, tools: bool = True, **sampling: Any) -> list:
        """Completions of ``rows`` from the rollout workers, stopped at the end of turn;
        multi-turn episodes with the recipe's tools (unless ``tools`` is false)."""
        spec = self.recipe.tools.spec() if tools else None
        return generate_rows(self.rollouts, self.chat, rows, spec, **sampling)

    def sync_weights(self, full: bool = False, version: int = 0) -> dict[str, int]:
        """Learner -> rollout workers: one gather on the learner, buckets of about
        ``rollout.sync_bucket_mb`` (files in shared memory when learner and engines share a
        machine, else through Ray's object store once, for all workers), reloaded one by one.
        With LoRA only the adapted weights move, unless ``full`` (an engine that may hold
        other weights). ``version`` labels the weights in the engines: the GRPO step that
        made them (0 before GRPO). Returns the sync's bytes and buckets, and its seconds in
        the learner (gather and pack) and in the engines (transfer and reload)."""
        if self.collective:
            return self._sync_collective(full, version)
        t0 = time.time()
        if self.colocated:  # in memory: each engine reloads from its rank's gathered tensors
            figures = self.learner.sync_colocated(version, self.rollouts.num_workers, full)
            return {
                **{k: figures[k] for k in ("sync_bytes", "sync_buckets")},
                "sync_gather_s": figures["sync_gather_rank_s"],
                "sync_load_s": time.time() - t0 - figures["sync_gather_rank_s"],
            }
        folder = None
        if self.sync_folder is not None:
            self._syncs += 1
            folder = os.path.join(self.sync_folder, str(self._syncs))
        buckets = self.learner.export_weights(
            bucket_mb=self.recipe.rollout.sync_bucket_mb, full=full, folder=folder
        )
        t1 = time.time()
        self.rollouts.update_weights(buckets, version=version)
        if folder is not None:  # the engines hold these weights now: the previous files go
            shutil.rmtree(os.path.join(self.sync_folder, str(self._syncs - 1)), ignore_errors=True)
        return {
            **self.learner.last_export_size(),
            "sync_gather_s": t1 - t0,
            "sync_load_s": time.time() - t1,
        }

    def _sync_collective(self, full: bool, version: int) -> dict[str, Any]:
        """``sync_weights`` over the weight-sync group (formed again after a replacement):
        rank 0 broadcasts flat buckets, each engine reloads each as it arrives. If an engine
        dies meanwhile, the same weights go through Ray's object store (which replaces it)
        and the group forms again at the next sync; counted in ``sync_fallbacks``."""
        from rollouts.group import RolloutWorkerError

        t0 = time.time()
        if not self.rollouts.weight_group_current:
            host, port, backend = self.learner.weight_group_address()
            joins = self.rollouts.join_weight_group(host, port, backend)
            world = self.rollouts.num_workers + 1
            ray.get([self.learner.join_weight_group(host, port, world), *joins], timeout=600)
        layout = ray.get(
            self.learner.export_weights(
                bucket_mb=self.recipe.rollout.sync_bucket_mb, full=full, collective=True
            )
        )
        t1 = time.time()
        sent = self.learner.send_weights()
        fallbacks = 0
        try:
            self.rollouts.receive_weights(layout, version, restore=self.learner.last_sync_blobs)
            ray.get(sent)
        except (RolloutWorkerError, ray.exceptions.RayTaskError) as err:
            tqdm.write(f"weight sync over the group failed ({err}); through Ray's object store")
            ray.wait([sent], timeout=600)  # rank 0 has failed or finished its broadcast
            self.rollouts.update_weights(self.learner.last_sync_blobs(), version=version)
            fallbacks = 1
        return {
            **self.learner.last_export_size(),
            "sync_gather_s": t1 - t0,
            "sync_load_s": time.time() - t1,
            "sync_fallbacks": fallbacks,
        }

    def close(self) -> None:
        if self.sync_folder is not None:
            shutil.rmtree(self.sync_folder, ignore_errors=True)
        self.pool.close()
        self.accuracy_pool.close()
        self.learner.shutdown()
        self.log.close()
        if self.own_rollouts:
            self.rollouts.shutdown()


def generate_rows(
    rollouts: Any, chat: ChatFormat, rows: list[dict], tools: Any = None, **sampling: Any
) -> list:
    """Completions of ``rows`` (rendered by ``chat``) from ``rollouts``, stopped at the end
    of turn; multi-turn episodes with ``tools`` (a ``rollouts.tools.ToolSpec``) if given."""
    return rollouts.generate(
        [chat.prompt_ids(r) for r in rows],
        stop_token_ids=[chat.end_of_turn_id],
        tools=tools,
        rows=[plain_row(r) for r in rows] if tools is not None else None,
        **sampling,
    )


def plain_row(row: dict) -> dict:
    """A row as an environment gets it in a rollout worker (JSON-able values only)."""
    return {k: v for k, v in row.items() if isinstance(v, str | int | float | bool | list | dict)}


def check_tools(tools: ToolsConfig, key: str = "tools") -> None:
    """Build the tool environment once here, so a bad name or a missing sandbox stops the
    run before any worker starts (errors name the recipe key or option ``key``)."""
    spec = tools.spec()
    if spec is None:
        return
    from rollouts.tools import make_environment

    try:
        make_environment(spec)
        if spec.environment == "python":
            from rewards.sandbox import check_sandbox

            check_sandbox()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key}: {e}") from None


def initial_policy(recipe: Recipe, out: Path, data: dict[str, list[dict]]) -> Path:
    """The starting checkpoint as an HF folder: a local model, or a preset built from scratch
    with a character tokenizer over the data's alphabet; with ``model.mtp``, one that holds
    an MTP module (added and saved under checkpoints/init when the model has none)."""
    from model import new_policy, save_policy
    from model.tokenizer import THINK_TOKENS

    if recipe.model.path:
        path = _local_policy(recipe)
        return _with_mtp(path, out / "checkpoints" / "init") if recipe.model.mtp else path
    chat = ChatFormat(None, recipe.data.system_prompt, recipe.data.prompt_template)
    text = "".join(
        turn["content"] + r.get("completion", "") + str(r.get("answer", ""))
        for rows in data.values()
        for r in rows
        for turn in chat.messages(r)
    )
    for tag in THINK_TOKENS:  # single tokens of their own
        text = text.replace(tag, "")
    if recipe.tools.environment is not None:  # tool output can hold any printable character
        text += string.printable
    model, tokenizer = new_policy(
        recipe.model.preset,
        "".join(sorted(set(text))),
        seed=recipe.model.init_seed,
        mtp=recipe.model.mtp,
    )
    return save_policy(model, tokenizer, out / "checkpoints" / "init")


def _local_policy(recipe: Recipe) -> Path:
    """The HF folder of ``model.path``: a pretrained model by name, a GGUF file converted
    once, a hub snapshot or a local folder."""
    from model.assets import PRETRAINED

    if recipe.model.path.lower() in PRETRAINED:
        return PRETRAINED[recipe.model.path.lower()](recipe.model.dtype)
    path = Path(recipe.model.path).expanduser()
    if path.suffix == ".gguf":
        from model.gguf import converted

        if not path.is_file():
            raise ConfigError(f"recipe key 'model.path': GGUF file not found: {path}")
        return converted(path, recipe.model.dtype)
    if not (path / "config.json").is_file() and _hub_name(recipe.model.path):
        return _from_hub(recipe.model.path)
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"recipe key 'model.path': {path} is not a Hugging Face model folder "
            "(no config.json) nor a .gguf file"
        )
    return path


def _with_mtp(path: Path, out: Path) -> Path:
    """``path`` itself when its checkpoint holds an MTP module, else a copy with one added
    (model/mtp.py's initialisation) saved at ``out``."""
    from model import load_policy, save_policy
    from model.mtp import attach_mtp, has_mtp_support, mtp_layer

    model, tokenizer = load_policy(path)
    if not has_mtp_support(model):
        raise ConfigError(
            f"recipe key 'model.mtp': multi-token prediction needs a DeepSeek-V3 policy; "
            f"{path} is {model.config.model_type!r}"
        )
    if mtp_layer(model) is not None:
        return path
    attach_mtp(model)
    return save_policy(model, tokenizer, out)


def _hub_name(name: str) -> bool:
    """``org/model`` that is not a local path: a Hugging Face hub repository."""
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not name.startswith((".", "~"))
        and not Path(name).exists()
    )


def _from_hub(name: str) -> Path:
    """A hub model's local snapshot (downloaded once into the Hugging Face cache)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]
            )
        )
    except Exception as e:  # offline, unknown repository, gated model: say which, stop
        raise ConfigError(
            f"recipe key 'model.path': {name!r} is no local folder and could not be fetched "
            f"from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]})"
        ) from None


def placement_options(recipe: Recipe, gpus: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The RolloutGroup and LearnerGroup options of ``recipe`` on a cluster with ``gpus``
    GPUs: on GPUs each engine's bundle takes ``rollout.tensor_parallel_size`` of them and
    each learner rank one (unless the learner is set to gloo)."""
    lc, rc = recipe.learner, recipe.rollout
    if rc.tensor_parallel_size > 1 and not gpus:
        raise ConfigError(
            f"recipe key 'rollout.tensor_parallel_size': {rc.tensor_parallel_size} needs GPUs; "
            "this Ray cluster has none"
        )
    engines = {
        "placement": rc.placement,
        "bundle": {"GPU": rc.tensor_parallel_size} if gpus else {"CPU": 0.01},
        "resources": rc.resources,
        "kv_cache_gib": rc.kv_cache_gib,
        "dtype": recipe.model.dtype,
        "seed": rc.seed,
        "max_model_len": rc.max_model_len,
        "max_num_seqs": rc.max_num_seqs,
        "prefix_caching": rc.prefix_caching,
        "tensor_parallel_size": rc.tensor_parallel_size,
        "speculative_tokens": rc.speculative_tokens,
        "gpu_memory_utilization": rc.gpu_memory_utilization,
    }
    ranks = {
        "dtype": recipe.model.dtype,
        "backend": lc.backend,
        "seed": recipe.seed,
        "lora": asdict(recipe.lora) if recipe.lora.r > 0 else None,
        "micro_batch_tokens": lc.micro_batch_tokens,
        "share_prompts": lc.share_prompts,
        "resources": lc.resources,
        "num_gpus_per_rank": 1 if gpus and lc.backend != "gloo" else 0,
        "activation_checkpointing": lc.activation_checkpointing,
        "offload_optimizer": lc.offload_optimizer,
    }
    return engines, ranks


def cluster_gpus() -> float:
    """GPUs in the Ray cluster: what decides GPU placement, not the driver's own devices."""
    return float(ray.cluster_resources().get("GPU", 0))


def start_ray(recipe: Recipe) -> None:
    if ray.is_initialized():
        return
    if recipe.ray.address:
        ray.init(address=recipe.ray.address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=recipe.ray.num_cpus or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            # no idle worker processes started ahead (~80 MB each, one per CPU): every actor
            # of a run is started on purpose, and its own process is made for it
            _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False},
        )


def cpu_threads(recipe: Recipe, cores: int) -> tuple[int, int]:
    """OpenMP threads per CPU engine and torch threads per learner rank, unless the recipe
    sets them. The synchronous loop's phases take turns, so each gets every core; with
    ``grpo.max_staleness`` > 0 they run at once and split the cores (half to the engines):
    oversubscribed, spinning OpenMP threads halved the throughput here (dense bench policy:
    132 samples/s synchronous, 63-109 overlapped on all cores, 128 on split cores)."""
    lc, rc = recipe.learner, recipe.rollout
    engine_cores, learner_cores = cores, cores
    if recipe.grpo.max_staleness > 0:
        engine_cores = max(1, cores // 2)
        learner_cores = max(1, cores - engine_cores)
    return (
        rc.threads or max(1, engine_cores // rc.workers),
        lc.threads or max(1, learner_cores // lc.world_size),
    )


def start_run(
    recipe: Recipe,
    out: Path,
    data: dict[str, list[dict]],
    rollouts=None,
    metrics_rows: int | None = None,
) -> Run:
    from transformers import AutoTokenizer

    from rl.dashboards import run_log

    t0 = time.time()
    check_tools(recipe.tools, "recipe key 'tools'")
    tqdm.write("starting: Ray, the vLLM rollout engines and the learner ranks (~40 s on 2 cores)")
    model_dir = initial_policy(recipe, out, data)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    start_ray(recipe)
    engine_threads, threads = cpu_threads(recipe, os.cpu_count() or 1)
    engines, ranks = placement_options(recipe, cluster_gpus())
    own_rollouts = rollouts is None
    if recipe.rollout.colocate:
        if not own_rollouts:
            raise ValueError("rollout.colocate: the engines are the learner ranks' own; got others")
        learner, rollouts = start_colocated(recipe, str(model_dir), threads, engines, ranks)
    else:
        learner, rollouts = start_separate(
            recipe, str(model_dir), rollouts, engine_threads, threads, engines, ranks
        )
    pool, accuracy_pool = reward_pools(recipe)
    run = Run(
        recipe,
        out,
        tokenizer,
        learner,
        rollouts,
        pool,
        accuracy_pool,
        run_log(recipe, out, keep_rows=metrics_rows),  # metrics.jsonl, TensorBoard, wandb
        own_rollouts=own_rollouts,
    )
    run.placement = {"learner": learner.node_ids(), "rollout": rollouts.node_ids()}
    run.collective = recipe.rollout.sync_transport == "collective"
    run.colocated = recipe.rollout.colocate
    if not (run.collective or run.colocated):  # rank 0 exports, the engines read
        nodes = [run.placement["learner"][0], *run.placement["rollout"]]
        run.sync_folder = sync_folder(recipe.rollout.sync_transport, nodes)
    if not own_rollouts:
        run.sync_weights(full=True)  # shared engines may hold anything: all the learner's weights
    try:
        parity = quick_check(rollouts.workers[0], learner, tokenizer, recipe.model.dtype)
    except Exception:
        run.close()
        raise
    print_plan(run, model_dir, time.time() - t0)
    tqdm.write(
        f"  parity check: learner vs rollout engine logprob |diff| mean {parity['mean']:.1e}, "
        f"max {parity['max']:.1e} (ok)"
    )
    return run


def start_separate(
    recipe: Recipe,
    model_dir: str,
    rollouts: Any,
    engine_threads: int,
    rank_threads: int,
    engines: dict[str, Any],
    ranks: dict[str, Any],
) -> tuple[LearnerGroup, Any]:
    """Learner ranks and, unless ``rollouts`` are given, a RolloutGroup of engine actors of
    their own, started while the ranks load."""
    from rollouts import RolloutGroup

    starting = None
    if rollouts is None:
        starting = ThreadPoolExecutor(1, thread_name_prefix="r1kit-start").submit(
            RolloutGroup, model_dir, recipe.rollout.workers, threads=engine_threads, **engines
        )
    learner = LearnerGroup(model_dir, recipe.learner.world_size, threads=rank_threads, **ranks)
    return learner, rollouts if starting is None else starting.result()  # vLLM engines built


def reward_pools(recipe: Recipe) -> tuple[RewardPool, RewardPool]:
    """The training reward pool and the accuracy one, one pool where the two score alike."""
    r = recipe.rewards
    pool = RewardPool(r.weights, r.workers, r.timeout_s)
    accuracy = {r.accuracy: 1.0}
    return pool, pool if accuracy == r.weights else RewardPool(accuracy, r.workers, r.timeout_s)


def start_colocated(
    recipe: Recipe, model_dir: str, threads: int, engines: dict[str, Any], ranks: dict[str, Any]
) -> tuple[LearnerGroup, Any]:
    """Learner ranks of which the first ``rollout.workers`` each build a vLLM engine in their
    own process (rl/colocated.py), and the RolloutGroup over those ranks. On CPU one thread
    count serves both (the phases take turns in the process): the learner's."""
    from rl.colocated import ColocatedRank
    from rollouts import RolloutGroup
    from rollouts.worker import ENGINE_ENV

    env = dict(ENGINE_ENV, **({} if cluster_gpus() else {"OMP_NUM_THREADS": str(threads)}))
    learner = LearnerGroup(
        model_dir,
        recipe.learner.world_size,
        threads=threads,
        rank_cls=ColocatedRank,
        env=env,
        **ranks,
    )
    engine_kwargs = {
        k: v for k, v in engines.items() if k not in ("placement", "bundle", "resources", "seed")
    }
    try:
        actors = learner.start_engines(
            model_dir, recipe.rollout.workers, seed=engines["seed"], **engine_kwargs
        )
    except BaseException:
        learner.shutdown()
        raise
    return learner, RolloutGroup(model_dir, len(actors), actors=actors)


def sync_folder(transport: str, node_ids: list[str]) -> str | None:
    """Where weight syncs are written: a fresh folder in shared memory (/dev/shm) when the
    learner's rank 0 and every rollout worker run on this machine (one write, no copies
    through Ray's object store: 538 MB took ~0.3 s against ~2.9 s here), else None (Ray's
    object store, which also crosses machines). ``transport``: auto, shared_memory or
    object_store (rollout.sync_transport); ``node_ids``: the Ray nodes of the learner's
    rank 0 and of every engine."""
    if transport == "object_store":
        return None
    local = set(node_ids) == {ray.get_runtime_context().get_node_id()}
    shm = "/dev/shm"
    usable = local and os.path.isdir(shm) and os.access(shm, os.W_OK)
    if transport == "shared_memory" and not usable:
        raise ConfigError(
            "recipe key 'rollout.sync_transport': shared_memory needs the learner's rank 0 "
            "and every rollout worker on the driver's machine, and a writable /dev/shm"
        )
    return tempfile.mkdtemp(prefix="r1kit-sync-", dir=shm) if usable else None


def print_plan(run: Run, model_dir: Path, setup_s: float) -> None:
    """The resolved plan: what one step of each stage does, on how many ranks."""
    r, g, ranks = run.recipe, run.recipe.grpo, run.recipe.learner.world_size
    samples = g.prompts_per_step * g.group_size
    per_update = -(-samples // g.mini_batches)  # rows of one optimizer step (at most)
    accumulation = -(-per_update // (ranks * r.learner.micro_batch_size))
    denominator = {
        "token-mean": "tokens of the mini-batch",
        "seq-mean-token-mean": "sequences of the mini-batch (token mean per sequence)",
        "seq-mean-token-sum": "sequences of the mini-batch (token sum per sequence)",
        "seq-mean-token-sum-norm": f"sequences x max_new_tokens ({g.max_new_tokens})",
    }[g.loss_agg]
    sampling = (
        f"dynamic sampling (zero-variance groups dropped, <= {g.max_refill_rounds} refill rounds)"
        if g.dynamic_sampling
        else "every group kept"
    )
    tqdm.write(
        f"r1kit run '{r.name}': policy {model_dir} ({run.learner.num_params / 1e6:.2f}M params, "
        f"{r.model.dtype}), {ranks} learner rank(s) (FSDP2), "
        f"{len(run.rollouts.workers)} vLLM rollout worker(s); "
        f"ready in {setup_s:.0f}s\n"
        f"  SFT : {r.sft.steps} steps x {r.sft.batch_size} sequences, lr {r.sft.lr:g}\n"
        f"  GRPO: {g.steps} steps x {g.prompts_per_step} prompts x G={g.group_size} = "
        f"{samples} samples/step ({sampling}); {g.epochs} epoch(s) x {g.mini_batches} "
        f"mini-batch(es) = {g.epochs * g.mini_batches} optimizer step(s)/step, "
        f"micro-batch {r.learner.micro_batch_size}/rank"
        f"{f' (<= {r.learner.micro_batch_tokens} tokens)' if r.learner.micro_batch_tokens else ''}"
        f", {accumulation} accumulation step(s)"
        f"{', prompts shared' if r.learner.share_prompts else ''}\n"
        f"        {r.algorithm or 'custom'}: estimator {g.estimator}, loss {g.loss_agg} "
        f"(denominator: {denominator}), clip [{1 - g.clip_low:g}, {1 + g.clip_high:g}], "
        f"old logprobs: {g.old_logprobs if g.epochs * g.mini_batches > 1 else 'on-policy'}, "
        f"{_kl_plan(g)}, lr {g.lr:g} ({g.lr_schedule})\n"
        f"  {_lora_plan(r)}\n"
        f"  rewards {r.rewards.weights}, accuracy by '{r.rewards.accuracy}'; "
        f"checkpoints every {r.checkpoint.every or 'stage end'} step(s), "
        f"last {r.checkpoint.keep_last} kept\n"
        f"  weight sync: {_sync_plan(run)}\n"
        f"  placement: {_placement_plan(run)}\n"
        f"  {_tools_plan(r)}\n"
        f"  {_schedule_plan(r)}"
    )


def _sync_plan(run: Run) -> str:
    if run.colocated:
        return "in memory (each engine runs in its learner rank's process)"
    if run.collective:
        return "collective group (rank 0 broadcasts to the engines)"
    return f"shared memory ({run.sync_folder})" if run.sync_folder else "Ray object store"


def _placement_plan(run: Run) -> str:
    """Where ranks and engines run, and the memory knobs that apply there."""
    lc, rc = run.recipe.learner, run.recipe.rollout
    where = run.placement
    nodes = sorted(set(where["learner"]) | set(where["rollout"]))
    if len(nodes) == 1:
        text = "all on one Ray node"
    else:
        short = {n: f"node {i} ({n[:8]})" for i, n in enumerate(nodes)}
        ranks = ", ".join(short[n] for n in where["learner"])
        workers = ", ".join(short[n] for n in where["rollout"])
        text = f"learner ranks on {ranks}; rollout workers on {workers}"
    if run.colocated:
        hosts = "rank 0's process" if rc.workers == 1 else f"ranks 0-{rc.workers - 1}'s processes"
        text += f"; engines colocated in learner {hosts}"
        text += " (sleeping on their GPU while it trains)" if cluster_gpus() else ""
    if cluster_gpus():
        text += (
            f"; a GPU per learner rank, {rc.tensor_parallel_size} per engine "
            f"(gpu_memory_utilization {rc.gpu_memory_utilization:g})"
        )
    knobs = [
        name
        for name, on in (
            ("activation checkpointing", lc.activation_checkpointing),
            ("optimizer offloaded to CPU", lc.offload_optimizer),
        )
        if on
    ]
    return text + (f"; learner: {', '.join(knobs)}" if knobs else "")


def _schedule_plan(r: Recipe) -> str:
    g, cores = r.grpo, os.cpu_count() or 1
    engine, learner = cpu_threads(r, cores)
    threads = f"CPU threads: {engine} per engine, {learner} per learner rank, of {cores} cores"
    if r.rollout.colocate:
        threads = f"CPU threads: {learner} per learner rank and its engine, of {cores} cores"
    if g.max_staleness == 0:
        return f"GRPO steps: synchronous (sample, learn, sync in turn); {threads}"
    return (
        f"GRPO steps: asynchronous, sampling up to {g.max_staleness} step(s) ahead of the "
        f"learner (batch t by step t-1-{g.max_staleness}'s weights), {g.mismatch_correction}-"
        f"level decoupled correction (cap {g.mismatch_cap:g}); {threads}"
    )


def _tools_plan(r: Recipe) -> str:
    t = r.tools
    if t.environment is None:
        return "rollouts: single turn"
    return (
        f"rollouts: multi-turn with tools.environment {t.environment!r}: up to {t.max_turns} "
        f"turns, {t.max_tool_calls} calls of {t.timeout_s:g} s, {t.workers} at once per "
        f"worker; tool output cut to {t.output_chars} chars, out of the loss; void "
        f"trajectories: {t.void_trajectories}; evaluations {'with' if t.in_eval else 'without'} tools"
    )


def _kl_plan(g) -> str:
    if g.kl_coef == 0:
        return "no KL (no reference policy loaded)"
    return (
        f"KL {g.kl_estimator} x {g.kl_coef:g} in the {g.kl_in} against the frozen policy "
        "as GRPO starts"
    )


def _lora_plan(r) -> str:
    if r.lora.r == 0:
        return "full fine-tuning (every weight trains and syncs)"
    return (
        f"LoRA r={r.lora.r} alpha={r.lora.alpha:g} on {', '.join(r.lora.targets)}: adapters "
        "train; the sync moves the merged adapted weights only; KL reference = adapters off"
    )
