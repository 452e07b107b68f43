"""One GRPO step: sample groups, score them, turn rewards into advantages, update, sync.

1. ``sample_groups``: ``prompts_per_step`` prompts, G completions each from the rollout
   worker (token ids and the sampling distribution's logprobs: no re-tokenization), scored by
   the reward pool. With DAPO's dynamic sampling, groups whose rewards are all equal (no
   learning signal) are dropped and more prompts are drawn, up to ``max_refill_rounds``
   extra generation rounds; the batch is then the first ``prompts_per_step`` kept groups.
2. Shaping: DAPO's soft overlong penalty is added to the reward; truncated completions can be
   masked out of the loss (they still count in their group's baseline).
3. ``compute_advantages`` per group; ``update_policy``: ``epochs`` passes over the batch, each
   ``mini_batches`` optimizer steps, with old logprobs from the learner or the rollout.
4. The learner's weights go to the rollout workers (one gather; buckets in shared memory,
   or through the object store once, whatever the number of workers); a step that took no
   optimizer step (every group's rewards equal) has nothing to sync.

Everything random in a step is a function of the step number (sampling seeds, shuffles), and
prompts come from a ``DataOrder`` whose position is checkpointed: a resumed run repeats the
steps of an uninterrupted one.

``grpo_step`` is ``sample_batch`` then ``learn_step``; asynchronous GRPO
(``grpo.max_staleness`` > 0, ``rl.async_sampler``) runs ``sample_batch`` ahead in a thread
and ``learn_step`` leaves rows sampled by weights too old out of the loss (``drop_stale``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rewards import ScoreResult, stats
from rl.advantages import compute_advantages
from rl.batch import Batch, make_batch
from rl.dashboards import grpo_samples
from rl.data import DataOrder
from rl.loss_config import LossConfig
from rl.losses import kl_in_reward, kl_penalty
from rl.metrics import combine_updates, expert_load_summary
from rl.schedule import lr_at
from rl.setup import Run
from rl.tool_metrics import tool_metrics
from rollouts.group import split_evenly
from rollouts.types import Completion

PHASES = ("time_generate", "time_reward", "time_learner", "time_sync")


@dataclass
class Groups:
    """Scored completions, G consecutive per prompt."""

    prompts: list[list[int]]  # one per completion
    completions: list  # rollouts.types.Completion
    scored: list  # rewards.ScoreResult
    rewards: torch.Tensor  # (N,) the reward pool's

    def select(self, groups: list[int], size: int) -> Groups:
        rows = [g * size + i for g in groups for i in range(size)]
        return Groups(
            [self.prompts[r] for r in rows],
            [self.completions[r] for r in rows],
            [self.scored[r] for r in rows],
            self.rewards[rows],
        )

    def __add__(self, other: Groups) -> Groups:
        return Groups(
            self.prompts + other.prompts,
            self.completions + other.completions,
            self.scored + other.scored,
            torch.cat([self.rewards, other.rewards]),
        )


@dataclass
class Sampled:
    """One step's scored groups as the sampler hands them to the learner."""

    groups: Groups
    info: dict  # sampling figures (first-round reward stats, dynamic sampling counts)
    timing: dict  # time_generate, time_reward, time_reward_overlapped of this batch
    position: int  # the data order's position after this batch's draws (what a resume needs)


def grpo_step(run: Run, rows: list[dict], order: DataOrder, step: int) -> dict:
    """Sample, score, update, sync; returns the step's metrics row."""
    start = time.time()
    sampled = sample_batch(run, rows, order, step)
    metrics = learn_step(run, sampled, step, start)
    # the synchronous loop: each side waits for the whole of the other's work
    metrics["idle_learner_s"] = sampled.timing["time_generate"] + sampled.timing["time_reward"]
    metrics["idle_rollout_s"] = metrics["time_learner"] + metrics["time_sync"]
    return metrics


def sample_batch(run: Run, rows: list[dict], order: DataOrder, step: int) -> Sampled:
    """Step ``step``'s scored groups from the engines' current weights."""
    timing = {"time_generate": 0.0, "time_reward": 0.0, "time_reward_overlapped": 0.0}
    groups, info = sample_groups(run, rows, order, step, timing)
    return Sampled(groups, info, timing, order.position)


def learn_step(
    run: Run,
    sampled: Sampled,
    step: int,
    start: float,
    max_staleness: int | None = None,
    before_sync: Callable[[], float] | None = None,
) -> dict:
    """Advantages, update and weight sync of one step's batch; its metrics row.

    ``max_staleness`` (asynchronous GRPO): rows sampled by weights more than this many
    versions older than the learner's (version ``step - 1``) are left out of the loss and
    counted; None: no check (the synchronous loop: every row is the learner's own).
    ``before_sync``: called before the weight sync; returns the seconds it waited."""
    cfg = run.recipe.grpo
    groups, sampling, timing = sampled.groups, dict(sampled.info), dict(sampled.timing)
    run.log.write_samples("grpo", step, grpo_samples(run.tokenizer, groups))  # dashboards
    # of the batch trained on: 0 once dynamic sampling kept groups
    sampling["batch_zero_variance_frac"] = float(
        _zero_variance(groups.rewards, cfg.group_size).float().mean()
    )

    batch, shaping = training_batch(run, groups, step, max_staleness)

    t0 = time.time()
    lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.lr_schedule)
    update = update_policy(run, batch, lr, step)
    timing["time_learner"] = time.time() - t0

    if before_sync is not None:
        timing["time_wait_sync"] = before_sync()
    t0 = time.time()
    sync = _push_weights(run, step, changed=bool(update["optimizer_steps"]))
    timing["time_sync"] = time.time() - t0
    step_time = time.time() - start
    # sampled meanwhile, in an asynchronous run: not part of this step's wall time
    spent = PHASES if max_staleness is None else ("time_learner", "time_sync", "time_wait_sync")
    return {
        **sampling,
        **shaping,
        **rollout_health(groups),
        **speculative_metrics(run),
        **tool_metrics(groups.completions, _accuracies(run, groups)),
        "lr": lr,
        **update,
        **stats(groups.scored),
        **sync,
        **timing,
        # batching, advantages, Ray calls (reward scoring overlapped with generation is in
        # time_generate too); in an asynchronous run, also the wait for the batch
        "time_other": step_time - sum(v for k, v in timing.items() if k in spent),
        "time_step": step_time,
    }


def training_batch(
    run: Run, groups: Groups, step: int, max_staleness: int | None
) -> tuple[Batch, dict]:
    """The learner's batch of ``groups``: tokens, shaped rewards, advantages and loss mask
    (void trajectories, truncation, staleness); with the shaping metrics."""
    cfg = run.recipe.grpo
    batch = make_batch(
        groups.prompts,
        [c.token_ids for c in groups.completions],
        run.pad_id,
        rollout_logprobs=[c.logprobs for c in groups.completions],
        completion_masks=[c.mask for c in groups.completions],
    )
    rewards, shaping = shape_rewards(run, groups, batch)
    _void_trajectories(run, groups, batch, rewards, shaping)
    batch.advantages = compute_advantages(rewards, cfg.group_size, cfg.estimator)
    if cfg.mask_truncated:
        truncated = torch.tensor([c.truncated for c in groups.completions])
        batch.loss_mask[truncated] = 0.0
        # rows the loss no longer sees (every truncated one, if the masking took)
        shaping["rows_masked_truncated"] = int((batch.loss_mask.sum(1) == 0).sum())
    if max_staleness is not None:
        shaping.update(drop_stale(groups, batch, step - 1, max_staleness))
    return batch, shaping


def _push_weights(run: Run, step: int, changed: bool) -> dict:
    """Step ``step``'s weights to the engines, labelled with its version; a step without an
    optimizer step (every group's rewards equal) only relabels what the engines hold."""
    if changed:
        return run.sync_weights(version=step)
    run.rollouts.update_weights([], version=step)
    return {"sync_bytes": 0, "sync_buckets": 0}


def drop_stale(groups: Groups, batch: Batch, learner_version: int, max_staleness: int) -> dict:
    """Leave rows sampled by weights more than ``max_staleness`` versions behind
    ``learner_version`` out of the loss (they still count in their group's baseline);
    returns the batch's staleness figures and the number of rows dropped."""
    versions = torch.tensor([c.weight_version for c in groups.completions])
    staleness = learner_version - versions
    stale = staleness > max_staleness
    batch.loss_mask[stale] = 0.0
    return {
        "weight_version_min": int(versions.min()),
        "staleness_mean": float(staleness.float().mean()),
        "staleness_max": int(staleness.max()),
        "stale_dropped": int(stale.sum()),
    }


def shape_rewards(run: Run, groups: Groups, batch: Batch) -> tuple[torch.Tensor, dict]:
    """The rewards advantages are computed from: the pool's, plus DAPO's soft overlong
    penalty, minus beta x KL when the KL goes in the reward. Sets ``batch.ref_logprobs``
    when there is a KL term."""
    cfg = run.recipe.grpo
    rewards, metrics = groups.rewards.clone(), {"kl": None}  # no reference: no KL to report
    if cfg.overlong_buffer > 0:
        from rewards.shaping import overlong_penalty

        penalty = cfg.overlong_penalty * torch.tensor(
            [
                overlong_penalty(len(c.token_ids), cfg.max_new_tokens, cfg.overlong_buffer)
                for c in groups.completions
            ]
        )
        rewards += penalty
        metrics["overlong_penalty_mean"] = float(penalty.mean())
    if cfg.kl_coef > 0:
        batch.ref_logprobs = run.learner.logprobs(
            batch, run.recipe.learner.micro_batch_size, cfg.temperature, reference=True
        )
        mask = batch.loss_mask > 0
        per_token = kl_penalty(batch.rollout_logprobs, batch.ref_logprobs, cfg.kl_estimator)
        metrics["kl"] = float(per_token[mask].mean()) if mask.any() else 0.0
        if cfg.kl_in == "reward":
            kl_cost = cfg.kl_coef * kl_in_reward(
                batch.rollout_logprobs, batch.ref_logprobs, batch.loss_mask, cfg.kl_estimator
            )
            rewards -= kl_cost
            metrics["kl_reward_mean"] = float(kl_cost.mean())
    return rewards, metrics


def _void_trajectories(
    run: Run, groups: Groups, batch: Batch, rewards: torch.Tensor, metrics: dict
) -> None:
    """SimpleTIR's filter: samples with a void turn are dropped from the loss (their group's
    baseline still counts them) or scored 0, as ``tools.void_trajectories`` says."""
    how = run.recipe.tools.void_trajectories
    void = [c.trace is not None and c.trace.void_turns > 0 for c in groups.completions]
    if how == "keep" or not any(void):
        return
    rows = torch.tensor(void)
    if how == "drop":
        batch.loss_mask[rows] = 0.0
    else:
        rewards[rows] = 0.0
    metrics["void_trajectories"] = int(rows.sum())


def _accuracies(run: Run, groups: Groups) -> list[float]:
    """Each completion's accuracy reward (its total reward where that is not a component)."""
    key = run.recipe.rewards.accuracy
    return [s.components.get(key, s.reward) for s in groups.scored]


def sample_groups(
    run: Run, rows: list[dict], order: DataOrder, step: int, timing: dict
) -> tuple[Groups, dict]:
    """``prompts_per_step`` scored groups; with dynamic sampling, only groups whose rewards
    differ, refilled from more prompts for at most ``max_refill_rounds`` extra rounds."""
    cfg = run.recipe.grpo
    picked = [rows[i] for i in order.take(cfg.prompts_per_step)]
    first = _generate_and_score(run, picked, step, 0, timing)
    zero_var = _zero_variance(first.rewards, cfg.group_size)
    info = {  # of the first round: what plain GRPO would have trained on
        "reward_mean": float(first.rewards.mean()),
        "reward_std": float(first.rewards.std()) if len(first.rewards) > 1 else 0.0,
        "zero_variance_frac": float(zero_var.float().mean()),
    }
    if not cfg.dynamic_sampling:
        return first, info
    info["refill_rounds"] = 0
    kept = first.select(torch.nonzero(~zero_var).flatten().tolist(), cfg.group_size)
    prompts_sampled = len(picked)
    for round_ in range(1, cfg.max_refill_rounds + 1):
        missing = cfg.prompts_per_step - len(kept.rewards) // cfg.group_size
        if missing <= 0:
            break
        picked = [rows[i] for i in order.take(cfg.prompts_per_step)]
        more = _generate_and_score(run, picked, step, round_, timing)
        keep = torch.nonzero(~_zero_variance(more.rewards, cfg.group_size)).flatten().tolist()
        kept = kept + more.select(keep, cfg.group_size)
        prompts_sampled += len(picked)
        info["refill_rounds"] = round_
    num_kept = min(cfg.prompts_per_step, len(kept.rewards) // cfg.group_size)
    info["prompts_sampled"] = prompts_sampled
    info["groups_kept"] = num_kept
    if num_kept == 0:  # no signal anywhere: the first round, all advantages 0, no update
        return first, info
    return kept.select(list(range(num_kept)), cfg.group_size), info


def _generate_and_score(
    run: Run, picked: list[dict], step: int, round_: int, timing: dict
) -> Groups:
    cfg = run.recipe.grpo
    results: dict[int, ScoreResult] = {}  # id(completion) -> its score

    def score(part: list[Completion]) -> float:
        t0 = time.time()
        rows = [_reward_row(picked[c.prompt_index], c) for c in part]
        texts = [run.chat.scored_text(c.text) for c in part]
        results.update(zip(map(id, part), run.pool.score(texts, rows), strict=True))
        return time.time() - t0

    def score_early(part: list[Completion]) -> None:  # while other workers still generate
        timing["time_reward_overlapped"] += score(part)

    t0 = time.time()
    completions = run.generate(
        picked,
        n=cfg.group_size,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_tokens=cfg.max_new_tokens,
        seed=run.recipe.rollout.seed + 100_003 * step + 7_919 * round_,
        on_early=score_early,
    )
    timing["time_generate"] += time.time() - t0
    timing["time_reward"] += score([c for c in completions if id(c) not in results])
    scored = [results[id(c)] for c in completions]
    return Groups(
        [run.chat.prompt_ids(picked[c.prompt_index]) for c in completions],
        completions,
        scored,
        torch.tensor([s.reward for s in scored], dtype=torch.float32),
    )


def _reward_row(row: dict, completion: Completion) -> dict:
    """What a reward function gets besides the completion: the row's fields and, for a
    multi-turn sample, its ``turns``, ``tool_calls`` and the environment's ``env_reward``."""
    trace = completion.trace
    if trace is None:
        return row
    return {
        **row,
        "turns": trace.turns,
        "tool_calls": trace.tool_calls,
        "env_reward": trace.env_reward,
    }


def _zero_variance(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(P,) True where a group's rewards are all equal."""
    groups = rewards.view(-1, group_size)
    return groups.max(1).values == groups.min(1).values


def update_policy(run: Run, batch: Batch, lr: float, step: int) -> dict:
    """``epochs`` passes over the batch, each ``mini_batches`` optimizer steps on whole groups.

    The first mini-batch of the first pass is on-policy (its old logprobs are its own); the
    later ones need the pre-update logprobs, from the learner (one no-grad forward) or the
    rollout engine. Metrics: loss, clip fractions and ratios over all updates; learner-vs-
    rollout logprob diff and entropy from the first update (before the weights move)."""
    cfg, learner_cfg = run.recipe.grpo, run.recipe.learner
    if cfg.epochs * cfg.mini_batches > 1:
        batch.old_logprobs = (
            batch.rollout_logprobs
            if cfg.old_logprobs == "rollout"
            else _learner_logprobs(run, batch)
        )
    group_rows = torch.arange(len(batch)).view(-1, cfg.group_size)  # (P, G)
    shuffle = torch.Generator().manual_seed(run.recipe.seed * 1_000_003 + step)
    loss = LossConfig.from_grpo(cfg)
    updates = []
    for epoch in range(cfg.epochs):
        order = torch.arange(len(group_rows))
        if epoch > 0:
            order = torch.randperm(len(group_rows), generator=shuffle)
        for part in split_evenly(len(order), cfg.mini_batches):
            rows = group_rows[order[part.start : part.stop]].reshape(-1)
            updates.append(
                run.learner.grpo_step(batch.select(rows), lr, learner_cfg.micro_batch_size, loss)
            )
    metrics = combine_updates(updates, cfg.mini_batches)
    # max |ratio - 1| of each optimizer step, in order (epoch-major)
    metrics["ratio_dev_by_update"] = [
        max(u["ratio_max"] - 1, 1 - u["ratio_min"]) for u in updates if u["rows_learned"]
    ]
    loads = [u["expert_load"] for u in updates[: cfg.mini_batches] if "expert_load" in u]
    if loads:  # a MoE policy: each row's routing once (the first pass)
        metrics.update(expert_load_summary(loads))
        rate = run.recipe.moe.bias_update_rate
        if rate > 0:
            run.learner.update_router_bias(
                {int(k): v for k, v in metrics["expert_load"].items()}, rate
            )
    return metrics


def _learner_logprobs(run: Run, batch: Batch) -> torch.Tensor:
    """The learner's logprobs of the rows that will learn; 0 elsewhere. Without a KL loss or
    an entropy bonus, rows with advantage 0 do not learn (see LearnerGroup.grpo_step)."""
    learn = batch.advantages != 0
    if LossConfig.from_grpo(run.recipe.grpo).every_row_learns:
        learn = torch.ones_like(learn)
    old = torch.zeros_like(batch.loss_mask)
    if learn.any():
        old[learn] = run.learner.logprobs(
            batch.select(learn), run.recipe.learner.micro_batch_size, run.recipe.grpo.temperature
        )
    return old


def speculative_metrics(run: Run) -> dict:
    """Speculative rollouts since the last step (``rollout.speculative_tokens``): tokens the
    MTP draft proposed, how many the policy accepted, and their ratio; {} without a draft.
    A worker replaced meanwhile restarts its counters: that step reports what is left."""
    if not run.recipe.rollout.speculative_tokens:
        return {}
    now = run.rollouts.speculative_counts()
    before = run.speculative_counts
    run.speculative_counts = now
    drafted = now.get("draft_tokens", 0) - before.get("draft_tokens", 0)
    accepted = now.get("accepted", 0) - before.get("accepted", 0)
    if drafted < 0 or accepted < 0:  # counters restarted
        drafted, accepted = now.get("draft_tokens", 0), now.get("accepted", 0)
    return {
        "spec_draft_tokens": drafted,
        "spec_accepted_tokens": accepted,
        "spec_acceptance": accepted / drafted if drafted else None,
    }


def rollout_health(groups: Groups) -> dict:
    """Truncation and length statistics of the batch trained on."""
    completions = groups.completions
    lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
    return {
        "batch_reward_mean": float(groups.rewards.mean()),
        "samples": len(completions),
        "truncation_rate": sum(c.truncated for c in completions) / len(completions),
        "response_len_mean": float(lengths.mean()),
        "response_len_max": int(lengths.max()),
    }
