"""The driver: SFT, then GRPO, on Ray actors (learner ranks, vLLM rollout workers).

``train`` runs a recipe's stages: SFT on completions, a held-out evaluation, GRPO steps
(``rl.grpo.grpo_step``: sample -> score -> advantages -> update -> push weights), a second
evaluation. Every ``checkpoint.every`` steps, and at the end of each stage, the learner's
sharded model and optimizer state and the driver's position are checkpointed
(``rl.checkpoint``); ``resume=True`` continues from the latest.

Everything a run writes lands in ``--out``: data, metrics.jsonl, checkpoints, summary.json,
reward_curve.png.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from rl.batch import make_batch
from rl.checkpoint import (
    DriverState,
    list_checkpoints,
    load_driver_state,
    save_checkpoint,
)
from rl.config import DataSource, Recipe
from rl.config_loader import import_object
from rl.data import (
    STAGES,
    DataOrder,
    check_disjoint,
    load_rows,
    stage_sources,
    write_rows,
)
from rl.errors import ConfigError, LearnerDiedError
from rl.metrics import plot_reward_curve
from rl.progress import StepProgress
from rl.schedule import lr_at

if TYPE_CHECKING:
    from rl.async_sampler import AheadSampler
    from rl.setup import Run

# The learner, the engines and the rewards (transformers, vLLM, Ray, math-verify: ~8 s) are
# imported where used, after the data is read: bad data is one error in seconds.

# Recipe sections a resumed run may change: where the cluster is, how often to checkpoint,
# where metrics are shown.
RESUME_MAY_CHANGE = ("ray.", "checkpoint.", "logging.")


def train(recipe: Recipe, out: Path, rollouts=None, resume: bool = False) -> dict:
    """Run the recipe's stages; return (and write) summary.json's content.

    ``rollouts``: an already running ``RolloutGroup`` to use (tests share one per session);
    it receives the learner's weights before anything is sampled. ``resume``: continue the
    run in ``out`` from its latest resumable checkpoint (the recipe must be the same).

    A learner rank that dies (LearnerDiedError) restarts the learner: new ranks load the
    latest checkpoint, the engines (kept running) get its weights, and the steps after it are
    taken again, as a ``--resume`` would, at most ``learner.max_restarts`` times.
    """
    engines, owned = rollouts, None  # owned: engines a failed attempt started and handed on
    try:
        for restarts in range(recipe.learner.max_restarts + 1):
            try:
                return _train_once(recipe, out, engines, resume, restarts)
            except LearnerDiedError as err:
                if err.rollouts is not None:
                    engines = owned = err.rollouts
                if restarts == recipe.learner.max_restarts or not list_checkpoints(out):
                    raise
                resume = True
                tqdm.write(
                    f"{err}: restarting the learner from the latest checkpoint "
                    f"({restarts + 1} of learner.max_restarts {recipe.learner.max_restarts})"
                )
        raise AssertionError("unreachable")
    finally:
        if owned is not None:
            owned.shutdown()


def _train_once(
    recipe: Recipe, out: Path, rollouts: Any, resume: bool, learner_restarts: int
) -> dict:
    """``train``'s stages, once: a learner rank's death ends it with LearnerDiedError
    (the run's own engines, still running, attached)."""
    start = time.time()
    state = _resume_state(recipe, out) if resume else _new_run(recipe, out)
    data = load_data(recipe, out)
    from rl.setup import start_run

    run = start_run(recipe, out, data, rollouts, metrics_rows=state.metrics_rows if state else None)
    run.wall_offset = (state.wall_seconds if state else 0.0) - start
    run.learner_restarts = learner_restarts
    summary: dict = {
        "eval": dict(state.summary.get("eval", {})) if state else {},
        "learner_restarts": learner_restarts,
        "placement": run.placement,
    }
    try:
        if recipe.sft.steps > 0 and "sft" not in summary["eval"]:
            run_sft(run, data["sft"], _stage_state(state, "sft"), summary)
            summary["eval"]["sft"] = evaluate(run, data["eval"], "sft")
            run.learner.save(str(out / "checkpoints" / "sft"))
        if recipe.sft.steps == 0 and recipe.grpo.steps > 0 and not summary["eval"]:
            summary["eval"]["start"] = evaluate(run, data["eval"], "start")  # GRPO's baseline
        if recipe.grpo.steps > 0 and "grpo" not in summary["eval"]:
            run_grpo(run, data["rl"], _stage_state(state, "grpo"), summary)
            summary["eval"]["grpo"] = evaluate(run, data["eval"], "grpo")
            run.learner.save(str(out / "checkpoints" / "grpo"))
    except Exception as err:
        dead = run.learner.dead_ranks()
        if not dead:
            raise
        # engines of their own outlive this learner; colocated ones died with it
        handed = run.rollouts if run.own_rollouts and not run.colocated else None
        run.own_rollouts = False  # the engines outlive this learner
        raise LearnerDiedError(
            f"learner rank(s) {dead} died ({type(err).__name__})", rollouts=handed
        ) from err
    finally:
        run.close()
    summary["rollout_restarts"] = getattr(run.rollouts, "restarts", 0)  # workers replaced
    summary["wall_seconds"] = round(time.time() + run.wall_offset, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_reward_curve(out / "metrics.jsonl", out / "reward_curve.png")
    return summary


def _new_run(recipe: Recipe, out: Path) -> None:
    if (out / "metrics.jsonl").exists():
        raise ConfigError(
            f"{out} already holds a run (metrics.jsonl): choose another --out, or --resume it"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.resolved.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")


def _resume_state(recipe: Recipe, out: Path) -> DriverState:
    """The latest checkpoint's driver state, after checking the recipe is the run's."""
    saved = out / "recipe.resolved.json"
    if not saved.is_file():
        raise ConfigError(f"--resume: {out} holds no run (no recipe.resolved.json)")
    checkpoints = list_checkpoints(out)
    if not checkpoints:
        raise ConfigError(f"--resume: {out} has no resumable checkpoint yet (checkpoints/state/)")
    before, now = _flatten(json.loads(saved.read_text())), _flatten(asdict(recipe))
    # a key the run's recipe predates (added to r1kit since) had its default then
    defaults = _flatten(asdict(Recipe()))
    before = {**{k: defaults[k] for k in now.keys() - before.keys() if k in defaults}, **before}
    changed = sorted(
        k
        for k in before.keys() | now.keys()
        if before.get(k) != now.get(k) and not k.startswith(RESUME_MAY_CHANGE)
    )
    if changed:
        diffs = ", ".join(f"{k} (run: {before.get(k)!r}, now: {now.get(k)!r})" for k in changed)
        raise ConfigError(f"--resume: the recipe differs from the run's at {diffs}")
    state = load_driver_state(checkpoints[-1])
    tqdm.write(f"resuming {out} from {checkpoints[-1].name}")
    return state


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "generator_args" and key != "weights":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _stage_state(state: DriverState | None, stage: str) -> DriverState | None:
    """The driver state to resume ``stage`` from, if the latest checkpoint is inside it."""
    return state if state is not None and state.stage == stage else None


def load_data(recipe: Recipe, out: Path) -> dict[str, list[dict]]:
    """Each stage's rows: from its source (``data.sft`` / ``rl`` / ``eval``, or the
    ``data.*_file`` shorthands), else from the recipe's generator (written to OUT/data and
    read back); held-out rows must not ask what training rows ask."""
    cfg = recipe.data
    sources = stage_sources(cfg)
    if cfg.generator:
        generated = import_object(cfg.generator, "data.generator")(**cfg.generator_args)
        for kind, rows in generated.items():
            if kind in STAGES and kind not in sources:
                path = write_rows(out / "data" / f"{kind}.jsonl", rows)
                sources[kind] = (DataSource(path=str(path)), "data.generator")
    needed = {"sft": recipe.sft.steps > 0, "rl": recipe.grpo.steps > 0, "eval": True}
    for kind, need in needed.items():
        if need and kind not in sources:
            raise ConfigError(
                f"recipe: {kind} data needed: set data.{kind}, data.{kind}_file or data.generator"
            )
    data = {kind: [] for kind in STAGES}
    for kind, (src, key) in sources.items():
        data[kind] = load_rows(src, kind, key, cfg.prompt_template, recipe.seed)
    with_tools = next((i for i, r in enumerate(data["sft"]) if "completion_turns" in r), None)
    if with_tools is not None and recipe.tools.environment is None:
        raise ConfigError(
            f"{sources['sft'][1]}: SFT row {with_tools + 1} has tool turns after its last user "
            "turn: set recipe key 'tools.environment' to the environment that answered them"
        )
    train_rows = data["sft"] + data["rl"]
    check_disjoint(
        train_rows, data["eval"], sources["eval"][1], cfg.system_prompt, cfg.prompt_template
    )
    return data


def run_sft(run: Run, rows: list[dict], state: DriverState | None, summary: dict) -> None:
    """Supervised fine-tuning on the completions (loss on completion tokens only)."""
    cfg = run.recipe.sft
    run.learner.configure_optimizer(cfg.lr, cfg.weight_decay)
    first, order = _start_stage(run, "sft", state, len(rows), run.recipe.seed)
    bar = StepProgress(first, cfg.steps, "SFT")
    for step in bar:
        picked = [rows[i] for i in order.take(cfg.batch_size)]
        prompts = [run.chat.prompt_ids(r) for r in picked]
        targets, masks = zip(*(sft_target(run, r) for r in picked), strict=True)
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        t0 = time.time()
        batch = make_batch(prompts, targets, run.pad_id, completion_masks=masks)
        out = run.learner.sft_step(
            batch, lr, run.recipe.learner.micro_batch_size, cfg.mtp_loss_weight
        )
        bar.set_postfix(loss=f"{out['loss']:.3f}")
        if step % run.recipe.log_every == 0 or step == cfg.steps:
            run.log.write(
                step=step,
                stage="sft",
                loss=out["loss"],
                grad_norm=out["grad_norm"],
                **{k: v for k, v in out.items() if k.startswith("mtp_")},
                lr=lr,
                time_learner=time.time() - t0,
                learner_restarts=run.learner_restarts,
            )
        _maybe_checkpoint(run, "sft", step, cfg.steps, order.position, summary)
    run.sync_weights()


def sft_target(run: Run, row: dict) -> tuple[list[int], list[int] | None]:
    """An SFT row's target tokens and their loss mask (None: all of them), after its prompt.

    Tool output is what a rollout appends, tokenized as a rollout appends it, and out of the
    loss: the ```output blocks of a completion written for the python tool; the ``tool``
    turns of a conversation (``completion_turns``), as the environment shows them (inline in
    the policy's turn, or the chat template's tool message between two assistant turns)."""
    if "completion_turns" in row:
        return _conversation_target(run, row["completion_turns"])
    completion = row["completion"]
    if run.recipe.tools.environment != "python":
        return run.chat.completion_ids(completion), None
    from rollouts.tools.python import split_outputs

    return _pieces_target(run, [*split_outputs(completion), (None, False)])


def _conversation_target(run: Run, turns: list[dict]) -> tuple[list[int], list[int]]:
    env = run.environment  # load_data made sure there is one
    inline = env.observation_format == "inline"
    pieces: list[tuple[str | None, bool]] = []
    for turn in turns:
        if turn["role"] == "assistant":
            pieces.append((run.chat.assistant_text(turn), False))
            if not inline:
                pieces.append((None, False))  # the policy ends its turn; the tool answers
        elif inline:  # the environment's own rendering of an output, in the policy's turn
            written = getattr(env, "observation", None)
            pieces.append((written(turn["content"]) if written else turn["content"], True))
        else:
            pieces.append((turn["content"], True))
    if inline:
        pieces.append((None, False))
    return _pieces_target(run, pieces, tool_message=not inline)


def _pieces_target(
    run: Run, pieces: list[tuple[str | None, bool]], tool_message: bool = False
) -> tuple[list[int], list[int]]:
    """Pieces ``(text, is_tool_output)`` as tokens and a loss mask; text None is the end of
    the policy's turn. With ``tool_message``, tool output is the template's tool turn."""
    ids: list[int] = []
    mask: list[int] = []
    for text, is_output in pieces:
        if text is None:
            piece = [run.chat.end_of_turn_id]
        elif is_output and tool_message:
            piece = run.chat.tool_turn.ids(text)
        else:
            piece = run.tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        mask += [0 if is_output else 1] * len(piece)
    return ids, mask


def run_grpo(
    run: Run,
    rows: list[dict],
    state: DriverState | None,
    summary: dict,
    threaded: bool | None = None,
) -> None:
    """GRPO: sample groups, score, advantages, policy-gradient updates, push weights; with
    ``grpo.max_staleness`` > 0, sampling runs ahead of the learner (rl.async_sampler).
    ``threaded``: sample in the sampler thread (default: when max_staleness > 0; at 0 it
    keeps the synchronous schedule, which tests compare with the synchronous loop)."""
    from rl.async_sampler import AheadSampler
    from rl.grpo import grpo_step

    cfg = run.recipe.grpo
    run.learner.configure_optimizer(cfg.lr, cfg.weight_decay)
    if cfg.kl_coef > 0:  # the policy as GRPO starts (a resume then loads the saved one)
        run.learner.snapshot_reference()
    first, order = _start_stage(run, "grpo", state, len(rows), run.recipe.seed + 1)
    bar = StepProgress(first, cfg.steps, "GRPO")
    sampler = None
    if threaded is None:
        threaded = cfg.max_staleness > 0
    if threaded and first <= cfg.steps:
        sampler = AheadSampler(run, rows, order, first, cfg.steps, cfg.max_staleness)
    try:
        for step in bar:
            if sampler is None:
                metrics = grpo_step(run, rows, order, step)
                position = order.position
            else:
                metrics, position = _async_step(run, sampler, step)
            wall = time.time() + run.wall_offset
            metrics["learner_restarts"] = run.learner_restarts
            metrics["rollout_restarts"] = getattr(run.rollouts, "restarts", 0)
            run.log.write(step=step, stage="grpo", wall=wall, **metrics)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{metrics['loss']:.3f}")
            _maybe_checkpoint(run, "grpo", step, cfg.steps, position, summary)
    finally:
        if sampler is not None:
            sampler.close()


def _async_step(run: Run, sampler: AheadSampler, step: int) -> tuple[dict, int]:
    """Step ``step`` on the batch the sampler made ahead; its metrics and the data position
    a resume starts from (after this batch's prompts: later batches are sampled again)."""
    from rl.grpo import learn_step

    start = time.time()
    sampled, waited = sampler.take(step)
    metrics = learn_step(
        run,
        sampled,
        step,
        start,
        max_staleness=sampler.max_staleness,
        before_sync=lambda: sampler.before_sync(step),
    )
    sampler.synced(step)
    metrics["idle_learner_s"] = waited
    return metrics, sampled.position


def _start_stage(
    run: Run, stage: str, state: DriverState | None, num_rows: int, seed: int
) -> tuple[int, DataOrder]:
    """The first step to run and the data order; from a checkpoint when resuming."""
    if state is None:
        return 1, DataOrder(num_rows, seed)
    path = list_checkpoints(run.out)[-1] / "learner"
    run.learner.load_state(str(path))
    # the engines hold the initial (or a shared run's) weights; labelled as the checkpoint's
    run.sync_weights(full=True, version=state.step if stage == "grpo" else 0)
    return state.step + 1, DataOrder(num_rows, seed, state.data_position)


def _maybe_checkpoint(
    run: Run, stage: str, step: int, last: int, position: int, summary: dict
) -> None:
    """A checkpoint after ``step`` if one is due; ``position``: the data order's position a
    resume continues from."""
    every = run.recipe.checkpoint.every
    if step != last and (every == 0 or step % every):
        return
    state = DriverState(
        stage=stage,
        step=step,
        data_position=position,
        summary={"eval": dict(summary["eval"])},
        metrics_rows=run.log.rows,
        wall_seconds=round(time.time() + run.wall_offset, 1),
    )
    save_checkpoint(run.learner, run.out, state, run.recipe.checkpoint.keep_last)


def evaluate(run: Run, rows: list[dict], stage: str) -> dict:
    """Held-out evaluation after ``stage``: greedy pass@1 as ``accuracy`` (and, with eval.n > 1,
    pass@n, mean@n, maj@n); ``rl.evaluation.evaluate_held_out`` says what it writes."""
    from rl.evaluation import evaluate_held_out

    result = evaluate_held_out(run, rows, stage)
    if run.recipe.rollout.speculative_tokens:  # its greedy drafts are no GRPO step's
        run.speculative_counts = run.rollouts.speculative_counts()
    return result
