"""Where a GRPO step's time goes on this machine, as the batch grows: docs/scaling.png.

    python -m bench.scaling [--steps 6] [--policy deepseek_v3] [--out docs/scaling]

Runs r1kit's GRPO (bench/recipe.yaml, from the bench's SFT starting checkpoint) for
``--steps`` steps at G = 4, 8, 16 (16 prompts per step) and at 8, 16, 32, 48 (the demo's
batch), 64 prompts per step (G = 8), in one process with two vLLM engines shared by
every run, and plots the mean step time split into phases (steps after the first) against
each, plus each phase's share. Also measures the Ray round trip to a learner rank and to the rollout worker
(the fixed cost of each call a step makes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray
import yaml

from bench.compare import PHASES, POLICIES, RECIPE, starting_policy

GROUP_SIZES = (4, 8, 16)
PROMPTS = (8, 16, 32, 48, 64)  # 48 x 8: the demo's batch
# engines beside the learner (the bench's layout until 2026-12-07, when it colocated one
# engine with the rank): the points share them, so they are the driver's to start
ENGINES = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--policy", default="deepseek_v3", choices=sorted(POLICIES))
    parser.add_argument("--out", default="docs/scaling", help="writes OUT.png and OUT.json")
    args = parser.parse_args()

    from rl.config import load_recipe
    from rl.trainer import train
    from rollouts import RolloutGroup

    base = yaml.safe_load(RECIPE.read_text())
    base["model"]["preset"], base["sft"]["steps"] = POLICIES[args.policy]
    policy, rl_file = starting_policy(base)
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    rollouts = RolloutGroup(
        str(policy),
        ENGINES,  # shared by every point
        dtype="float32",
        max_model_len=base["rollout"]["max_model_len"],
        max_num_seqs=max(PROMPTS) * 8,
    )
    points = [(16, g) for g in GROUP_SIZES] + [(p, 8) for p in PROMPTS if p != 16]
    results = []
    try:
        for prompts, group in points:
            with tempfile.TemporaryDirectory() as tmp:
                recipe_file = Path(tmp) / "recipe.yaml"
                recipe_file.write_text(yaml.safe_dump(base))
                recipe = load_recipe(
                    recipe_file,
                    [
                        f"model.path={policy}",
                        f"data.rl_file={rl_file}",
                        "sft.steps=0",
                        "eval.limit=16",
                        "rollout.colocate=false",  # the shared engines above, not the ranks' own
                        f"rollout.workers={ENGINES}",
                        f"grpo.steps={args.steps}",
                        f"grpo.prompts_per_step={prompts}",
                        f"grpo.group_size={group}",
                    ],
                )
                train(recipe, Path(tmp) / "run", rollouts=rollouts)
                rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").open()]
            steps = [r for r in rows if r.get("stage") == "grpo"][1:]
            point = {
                "prompts_per_step": prompts,
                "group_size": group,
                **{p: statistics.fmean(r[p] for r in steps) for p in PHASES},
                "sync_bytes": steps[-1]["sync_bytes"],
            }
            point["step_s"] = sum(point[p] for p in PHASES)
            print(json.dumps(point), flush=True)
            results.append(point)
        ray_rtt = round_trips(rollouts)
    finally:
        rollouts.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"policy": POLICIES[args.policy][0], "points": results, "ray_round_trip_ms": ray_rtt}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, out.with_suffix(".png"), summary["policy"])
    print(f"ray round trip (ms): {ray_rtt}; wrote {out}.png and {out}.json")


def round_trips(rollouts, calls: int = 200) -> dict[str, float]:
    """Median milliseconds of an empty actor call: the Ray cost of each call a step makes."""
    from rl.learner_group import LearnerGroup

    out = {}
    learner = LearnerGroup(rollouts.model_dir, 1, threads=1)
    try:
        for name, actor in (("learner", learner.ranks[0]), ("rollout", rollouts.workers[0])):
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                ray.get(actor.__ray_ready__.remote())
                times.append(1e3 * (time.perf_counter() - t0))
            out[name] = round(statistics.median(times), 3)
    finally:
        learner.shutdown()
    return out


def plot(points: list[dict], path: Path, policy: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = [
        ([p for p in points if p["prompts_per_step"] == 16], "group_size", "G (16 prompts/step)"),
        ([p for p in points if p["group_size"] == 8], "prompts_per_step", "prompts/step (G = 8)"),
    ]
    colors = plt.get_cmap("tab10").colors
    for ax, (rows, key, label) in zip(axes, panels, strict=False):
        rows = sorted(rows, key=lambda r: r[key])
        xs = [str(r[key]) for r in rows]
        bottom = [0.0] * len(rows)
        for color, phase in zip(colors, PHASES, strict=False):
            values = [r[phase] for r in rows]
            ax.bar(xs, values, bottom=bottom, label=phase[5:], color=color)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per step")
    axes[0].legend()
    rows = sorted(points, key=lambda r: r["prompts_per_step"] * r["group_size"])
    samples = [f"{r['prompts_per_step']}x{r['group_size']}" for r in rows]
    bottom = [0.0] * len(rows)
    for color, phase in zip(colors, PHASES, strict=False):
        shares = [100 * r[phase] / r["step_s"] for r in rows]
        axes[2].bar(samples, shares, bottom=bottom, color=color)
        bottom = [b + v for b, v in zip(bottom, shares, strict=True)]
    axes[2].set_xlabel("prompts x G per step")
    axes[2].set_ylabel("% of step")
    fig.suptitle(f"r1kit GRPO step time on this machine ({policy}, 48 new tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
