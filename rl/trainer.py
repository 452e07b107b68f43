"""The driver: SFT, then GRPO, on Ray actors (learner ranks, a vLLM rollout worker).

One GRPO step, as the code below runs it:

1. sample ``prompts_per_step`` prompts; the rollout worker generates G completions each,
   returning token ids and the sampling distribution's logprobs (no re-tokenization);
2. the reward pool scores every completion (separate processes, killed on timeout);
3. advantages per group (``rl.advantages``);
4. the learner ranks take one on-policy step of the clipped policy-gradient loss
   (``rl.losses``), each on its share of the rows, normalised by the global token count;
5. the learner's weights go to the rollout worker (one gather, one blob) for the next step.

Everything a run writes lands in ``--out``: data, metrics.jsonl, checkpoints, summary.json,
reward_curve.png.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from rewards import stats
from rl.advantages import compute_advantages
from rl.batch import make_batch
from rl.config import Recipe
from rl.data import check_disjoint, read_rows, write_rows
from rl.errors import ConfigError
from rl.metrics import plot_reward_curve
from rl.schedule import lr_at
from rl.setup import Run, import_object, start_run


def train(recipe: Recipe, out: Path, rollout=None) -> dict:
    """Run the recipe's stages; return (and write) summary.json's content.

    ``rollout``: an already running rollout worker to use (tests share one per session);
    it receives the learner's weights before anything is sampled.
    """
    start = time.time()
    if (out / "metrics.jsonl").exists():
        raise ConfigError(f"{out} already holds a run (metrics.jsonl): choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.resolved.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n")
    data = load_data(recipe, out)
    run = start_run(recipe, out, data, rollout)
    summary: dict = {"eval": {}}
    try:
        if recipe.sft.steps > 0:
            run_sft(run, data["sft"])
            summary["eval"]["sft"] = evaluate(run, data["eval"], "sft")
            run.learner.save(str(out / "checkpoints" / "sft"))
        if recipe.grpo.steps > 0:
            run_grpo(run, data["rl"])
            summary["eval"]["grpo"] = evaluate(run, data["eval"], "grpo")
            run.learner.save(str(out / "checkpoints" / "grpo"))
    finally:
        run.close()
    summary["wall_seconds"] = round(time.time() - start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_reward_curve(out / "metrics.jsonl", out / "reward_curve.png")
    return summary


def load_data(recipe: Recipe, out: Path) -> dict[str, list[dict]]:
    """Rows from the recipe's generator (written to OUT/data and read back) or its files."""
    files = {"sft": recipe.data.sft_file, "rl": recipe.data.rl_file, "eval": recipe.data.eval_file}
    if recipe.data.generator:
        generated = import_object(recipe.data.generator, "data.generator")(
            **recipe.data.generator_args
        )
        for kind, rows in generated.items():
            if files.get(kind) is None:
                files[kind] = str(write_rows(out / "data" / f"{kind}.jsonl", rows))
    needed = {"sft": recipe.sft.steps > 0, "rl": recipe.grpo.steps > 0, "eval": True}
    for kind, need in needed.items():
        if need and not files[kind]:
            raise ConfigError(f"recipe: {kind} data needed: set data.{kind}_file or data.generator")
    data = {k: read_rows(files[k], k, f"data.{k}_file") if files[k] else [] for k in files}
    check_disjoint(data["sft"] + data["rl"], data["eval"], "data.eval_file")
    return data


def run_sft(run: Run, rows: list[dict]) -> None:
    """Supervised fine-tuning on the completions (loss on completion tokens only)."""
    cfg = run.recipe.sft
    run.learner.configure_optimizer(cfg.lr, cfg.weight_decay)
    order = _cycle(len(rows), run.recipe.seed)
    bar = tqdm(range(1, cfg.steps + 1), desc="SFT", unit="step", dynamic_ncols=True)
    for step in bar:
        picked = [rows[next(order)] for _ in range(cfg.batch_size)]
        prompts = [run.prompt_ids(r["prompt"]) for r in picked]
        targets = [run.completion_ids(r["completion"]) for r in picked]
        lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps)
        t0 = time.time()
        out = run.learner.sft_step(
            make_batch(prompts, targets, run.pad_id), lr, run.recipe.learner.micro_batch_size
        )
        bar.set_postfix(loss=f"{out['loss']:.3f}")
        if step % run.recipe.log_every == 0 or step == cfg.steps:
            run.log.write(
                step=step,
                stage="sft",
                loss=out["loss"],
                grad_norm=out["grad_norm"],
                lr=lr,
                time_learner=time.time() - t0,
            )
    run.sync_weights()


def run_grpo(run: Run, rows: list[dict]) -> None:
    """GRPO: sample groups, score, advantages, one policy-gradient step, push weights."""
    cfg = run.recipe.grpo
    run.learner.configure_optimizer(cfg.lr, cfg.weight_decay)
    order = _cycle(len(rows), run.recipe.seed + 1)
    bar = tqdm(range(1, cfg.steps + 1), desc="GRPO", unit="step", dynamic_ncols=True)
    for step in bar:
        picked = [rows[next(order)] for _ in range(cfg.prompts_per_step)]
        metrics = grpo_step(run, picked, step)
        run.log.write(step=step, stage="grpo", **metrics)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{metrics['loss']:.3f}")


def grpo_step(run: Run, picked: list[dict], step: int) -> dict:
    cfg, timing = run.recipe.grpo, {}
    prompts = [run.prompt_ids(r["prompt"]) for r in picked]

    t0 = time.time()
    completions = ray.get(
        run.rollout.generate.remote(
            prompts,
            n=cfg.group_size,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_new_tokens,
            seed=run.recipe.rollout.seed + 100_003 * step,
        )
    )
    timing["time_generate"] = time.time() - t0

    t0 = time.time()
    rows = [picked[c.prompt_index] for c in completions]
    scored = run.pool.score([c.text for c in completions], rows)
    rewards = torch.tensor([s.reward for s in scored])  # (P * G,)
    timing["time_reward"] = time.time() - t0

    advantages = compute_advantages(rewards, cfg.group_size, cfg.estimator)
    batch = make_batch(
        [prompts[c.prompt_index] for c in completions],
        [c.token_ids for c in completions],
        run.pad_id,
        advantages=advantages.tolist(),
        rollout_logprobs=[c.logprobs for c in completions],
    )
    t0 = time.time()
    lr = lr_at(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.lr_schedule)
    update = run.learner.grpo_step(
        batch,
        lr,
        run.recipe.learner.micro_batch_size,
        loss_cfg={"clip_low": cfg.clip_low, "clip_high": cfg.clip_high, "loss_agg": cfg.loss_agg},
        temperature=cfg.temperature,
        max_grad_norm=cfg.max_grad_norm,
    )
    timing["time_learner"] = time.time() - t0

    t0 = time.time()
    run.sync_weights()
    timing["time_sync"] = time.time() - t0
    return {
        **rollout_health(rewards, completions, cfg.group_size),
        "lr": lr,
        **update,
        **stats(scored),
        **timing,
        "time_step": sum(timing.values()),
    }


def rollout_health(rewards: torch.Tensor, completions: list, group_size: int) -> dict:
    """Reward and length statistics of one step's rollouts."""
    groups = rewards.view(-1, group_size)
    lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float32)
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "zero_variance_frac": float((groups.max(1).values == groups.min(1).values).float().mean()),
        "truncation_rate": sum(c.truncated for c in completions) / len(completions),
        "response_len_mean": float(lengths.mean()),
        "response_len_max": int(lengths.max()),
    }


def evaluate(run: Run, rows: list[dict], stage: str) -> dict:
    """Greedy pass@1 on the held-out rows, scored by the accuracy reward."""
    limit = run.recipe.eval.limit
    rows = rows[:limit] if limit else rows
    prompts = [run.prompt_ids(r["prompt"]) for r in rows]
    completions = ray.get(
        run.rollout.generate.remote(
            prompts, n=1, temperature=0.0, max_tokens=run.recipe.eval.max_new_tokens
        )
    )
    scored = run.accuracy_pool.score([c.text for c in completions], rows)
    correct = sum(s.reward >= 1.0 for s in scored)
    result = {"accuracy": correct / len(rows), "n": len(rows)}
    run.log.write(step=None, stage=f"eval_{stage}", **result)
    samples = [
        {"prompt": r["prompt"], "answer": r["answer"], "completion": c.text, "reward": s.reward}
        for r, c, s in zip(rows, completions, scored, strict=True)
    ]
    write_rows(run.out / f"eval_{stage}.jsonl", samples)
    tqdm.write(
        f"held-out accuracy after {stage.upper()}: {result['accuracy']:.3f} ({correct}/{len(rows)})"
    )
    return result


def _cycle(n: int, seed: int):
    """Endless shuffled passes over range(n)."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order
