"""Asynchronous GRPO against the synchronous loop, side by side on the demo (issue 15).

    python -m bench.staleness [--staleness 0,1,2] [--seeds 0,1,2] [--steps 60]
                              [--prompts 16] [--lr 5e-5] [--out bench/results/staleness.json]

One starting checkpoint (the demo's SFT stage, cached under bench/.cache), then GRPO runs of
the demo recipe from it at ``--lr`` with ``grpo.max_staleness`` k (k > 0 with the decoupled
token-level correction), for every seed, interleaved (seed-major, k alternating), so that the
machine's drift hits every k alike. Per run:

- ``samples_per_s``: samples over the wall time of steps 2..S (step 1 fills caches);
- ``final_accuracy``: greedy held-out accuracy after GRPO (the demo's 512 held-out rows);
- ``wall_to_sync_reward_s``: GRPO wall seconds until the train reward (mean over the last
  ``WINDOW`` steps) first reaches the synchronous run's final one (the same mean over its
  last ``WINDOW`` steps) of the same seed; null if it never does.

Writes ``{"rows": [{"max_staleness", "seed", "samples_per_s", "final_accuracy",
"wall_to_sync_reward_s", ...}], "summary": {k: means}, "machine", "settings"}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import yaml

from bench.compare import ROOT, _r1kit, machine, run_watched, starting_policy, versions

DEMO = ROOT / "recipes" / "demo.yaml"
WINDOW = 5  # steps in the train-reward mean
KEPT = ROOT / "bench" / ".cache" / "staleness"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--staleness", default="0,1,2", help="values of grpo.max_staleness")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=60, help="GRPO steps per run")
    parser.add_argument("--prompts", type=int, default=16, help="grpo.prompts_per_step")
    parser.add_argument(
        "--lr",
        type=float,
        default=5e-5,
        help="grpo.lr for every k (the demo's 1e-4 is too high for k > 0: docs/async.md)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "staleness.json"))
    args = parser.parse_args()
    ks = [int(k) for k in args.staleness.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if 0 not in ks:
        raise SystemExit("--staleness must include 0: the synchronous run is the reference")

    recipe = yaml.safe_load(DEMO.read_text())
    recipe["grpo"].update(steps=args.steps, prompts_per_step=args.prompts)
    policy, rl_file = starting_policy(recipe)  # cached by the SFT recipe: the same for any lr
    recipe["grpo"]["lr"] = args.lr
    runs: dict[tuple[int, int], dict] = {}
    for seed in seeds:
        order = ks if seed % 2 == 0 else ks[::-1]
        for k in order:
            print(f"seed {seed}, max_staleness {k} ...", flush=True)
            runs[k, seed] = run_grpo(recipe, policy, rl_file, k, seed)
            print(f"  {brief(runs[k, seed])}", flush=True)

    rows = result_rows(runs, seeds, ks)
    summary = summarize_rows(rows, ks)
    result = {
        "rows": rows,
        "summary": summary,
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "recipe": "recipes/demo.yaml",
            "steps": args.steps,
            "prompts_per_step": args.prompts,
            "lr": args.lr,
            "group_size": recipe["grpo"]["group_size"],
            "window": WINDOW,
            "correction": "token (k > 0)",
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for k, s in summary.items():
        print(
            f"k={k}: {s['samples_per_s']:.1f} samples/s, step {s['step_s']:.2f} s, held-out "
            f"{s['final_accuracy']:.3f}, reached the synchronous reward in "
            f"{s['reached_sync_reward']} runs (mean {s['wall_to_sync_reward_s']} s)"
        )
    print(f"wrote {args.out}")


def result_rows(runs: dict[tuple[int, int], dict], seeds: list[int], ks: list[int]) -> list:
    """One row per (seed, k), timed against the same seed's synchronous run."""
    rows = []
    for seed in seeds:
        target = final_reward(runs[0, seed]["rewards"])
        for k in ks:
            run = runs[k, seed]
            rows.append(
                {
                    "max_staleness": k,
                    "seed": seed,
                    "samples_per_s": run["samples_per_s"],
                    "final_accuracy": run["final_accuracy"],
                    "wall_to_sync_reward_s": wall_to_reward(run["rewards"], run["walls"], target),
                    "sync_final_train_reward": target,
                    "final_train_reward": final_reward(run["rewards"]),
                    "step_s": run["step_s"],
                    "time_split": run["time_split"],
                    "peak_rss_mb": run["peak_rss_mb"],
                }
            )
    return rows


def summarize_rows(rows: list[dict], ks: list[int]) -> dict:
    """Per k: means over seeds, accuracy per seed, how many runs reached the sync reward."""
    summary = {}
    for k in ks:
        mine = [r for r in rows if r["max_staleness"] == k]
        reached = [
            r["wall_to_sync_reward_s"] for r in mine if r["wall_to_sync_reward_s"] is not None
        ]
        summary[str(k)] = {
            **{
                key: statistics.fmean(r[key] for r in mine)
                for key in ("samples_per_s", "final_accuracy", "step_s")
            },
            "final_accuracy_per_seed": [r["final_accuracy"] for r in mine],
            "reached_sync_reward": f"{len(reached)}/{len(mine)}",
            "wall_to_sync_reward_s": statistics.fmean(reached) if reached else None,
        }
    return summary


def run_grpo(recipe: dict, policy: Path, rl_file: Path, k: int, seed: int) -> dict:
    """``r1kit train`` of GRPO only from ``policy``: per-step rewards and walls, throughput,
    held-out accuracy."""
    grpo = {**recipe["grpo"], "max_staleness": k}
    if k > 0:
        grpo["mismatch_correction"] = "token"
    rec = {
        **recipe,
        "seed": seed,
        "rollout": {**recipe["rollout"], "seed": seed},
        "model": {"path": str(policy), "dtype": recipe["model"]["dtype"]},
        "data": {**recipe["data"], "rl_file": str(rl_file)},
        "sft": {**recipe["sft"], "steps": 0},
        "grpo": grpo,
        "checkpoint": {"every": 0, "keep_last": 1},
    }
    with tempfile.TemporaryDirectory(prefix=f"staleness-{k}-{seed}-") as work:
        work = Path(work)
        (work / "recipe.yaml").write_text(yaml.safe_dump(rec))
        cmd = [_r1kit(), "train", str(work / "recipe.yaml"), "--out", str(work / "run")]
        peak_mb = run_watched(cmd, work / "log.txt")
        lines = (work / "run" / "metrics.jsonl").read_text().splitlines()
        KEPT.mkdir(parents=True, exist_ok=True)  # each run's metrics, to look into later
        (KEPT / f"k{k}-seed{seed}.metrics.jsonl").write_text("\n".join(lines) + "\n")
        steps = [r for r in map(json.loads, lines) if r.get("stage") == "grpo"]
        summary = json.loads((work / "run" / "summary.json").read_text())
    start = steps[0]["wall"] - steps[0]["time_step"]  # when GRPO's first step began
    timed = steps[1:]
    elapsed = timed[-1]["wall"] - steps[0]["wall"]
    phases = ("time_generate", "time_learner", "time_sync", "idle_learner_s", "idle_rollout_s")
    return {
        "rewards": [r["reward_mean"] for r in steps],
        "walls": [r["wall"] - start for r in steps],
        "samples_per_s": sum(r["samples"] for r in timed) / elapsed,
        "step_s": elapsed / len(timed),
        "time_split": {p: statistics.fmean(r.get(p, 0.0) for r in timed) for p in phases},
        "final_accuracy": summary["eval"]["grpo"]["accuracy"],
        "peak_rss_mb": round(peak_mb),
    }


def final_reward(rewards: list[float]) -> float:
    return statistics.fmean(rewards[-WINDOW:])


def wall_to_reward(rewards: list[float], walls: list[float], target: float) -> float | None:
    """Seconds until the trailing ``WINDOW``-step mean reward first reaches ``target``."""
    for i in range(WINDOW - 1, len(rewards)):
        if statistics.fmean(rewards[i - WINDOW + 1 : i + 1]) >= target - 1e-12:
            return round(walls[i], 1)
    return None


def brief(run: dict) -> str:
    split = " ".join(f"{k.removeprefix('time_')} {v:.2f}" for k, v in run["time_split"].items())
    return (
        f"{run['samples_per_s']:.1f} samples/s, step {run['step_s']:.2f} s ({split}), "
        f"final train reward {final_reward(run['rewards']):.3f}, held-out "
        f"{run['final_accuracy']:.3f}, peak RSS {run['peak_rss_mb']} MB"
    )


if __name__ == "__main__":
    main()
