"""The ``r1kit`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rl.errors import ConfigError, R1kitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1kit", description="R1-style GRPO post-training.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a recipe (SFT and/or GRPO)")
    train.add_argument("recipe", help="recipe YAML file")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. grpo.steps=10")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    add_eval_rewards_parser(sub)
    add_evaluate_parser(sub)
    check = sub.add_parser("check", help="rollout-vs-learner logprob parity and weight-sync check")
    check.add_argument("--model", required=True, help="a Hugging Face model folder or a preset")
    check.add_argument("--out", required=True, help="report JSON file")
    check.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    check.add_argument("--world-size", type=int, default=2, help="learner ranks (FSDP2)")
    check.add_argument(
        "--transport",
        default="auto",
        choices=["auto", "shared_memory", "collective", "object_store"],
        help="how the checked weight sync travels (default: shared memory on one machine)",
    )
    check.add_argument(
        "--break-sync",
        action="append",
        default=[],
        metavar="NAME",
        help="leave tensors whose name contains NAME out of the sync (to see the check fail)",
    )
    add_plan_parser(sub)
    convert = sub.add_parser("convert", help="a GGUF model file as a Hugging Face folder")
    convert.add_argument("--gguf", required=True, help="the .gguf file (quantized or not)")
    convert.add_argument("--out", required=True, help="the HF folder to write")
    convert.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    return parser


def add_eval_rewards_parser(sub: argparse._SubParsersAction) -> None:
    """`r1kit eval-rewards`: the reward lab (rewards/lab.py documents the report)."""
    lab = sub.add_parser(
        "eval-rewards", help="score a JSONL file of completions with a reward, offline"
    )
    lab.add_argument(
        "--reward", required=True, help="math, code, code_binary, format, reasoning_gym, module:fn"
    )
    lab.add_argument("--data", required=True, help="JSONL rows: completion + the reward's fields")
    lab.add_argument("--out", required=True, help="report JSON")
    lab.add_argument("--rows-out", help="per-row results (JSONL)")
    lab.add_argument("--workers", type=int, help="worker processes (default: cores - 1)")
    lab.add_argument("--timeout", type=float, default=30.0, help="seconds per row (default 30)")
    lab.add_argument("--compare", metavar="NAME2", help="a second reward: where do they disagree")
    lab.add_argument("--plot", help="PNG of the reward and latency distributions")
    lab.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="where bubblewrap cannot run, run code rewards WITHOUT isolation",
    )


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    """`r1kit evaluate`: greedy pass@1, pass@k, mean@k, maj@k of a model (rl/evaluation.py)."""
    ev = sub.add_parser(
        "evaluate", help="greedy pass@1 and pass@k / mean@k / maj@k of k samples of a model"
    )
    ev.add_argument("--model", required=True, metavar="DIR", help="an HF model folder or .gguf")
    ev.add_argument(
        "--data",
        required=True,
        metavar="FILE|DATASET",
        help='rows {"prompt", "answer", ...}: a file, folder, hub name, or a YAML mapping of '
        "a recipe's data.eval keys, e.g. '{path: openai/gsm8k, name: main, split: test, "
        "fields: {prompt: question}, answer_format: gsm8k}'",
    )
    ev.add_argument("--n", type=_positive, required=True, metavar="K", help="samples per row")
    ev.add_argument("--out", required=True, metavar="FILE.json", help="report JSON file")
    ev.add_argument(
        "--temperature", type=float, default=1.0, metavar="T", help="of the K samples (default 1)"
    )
    ev.add_argument("--max-new-tokens", type=_positive, default=64, metavar="M", help="default 64")
    ev.add_argument("--reward", default="math", metavar="NAME", help="math, code, module:fn")
    ev.add_argument(
        "--prompt-template", default="{prompt}", metavar="S", help="user turn: format over fields"
    )
    ev.add_argument("--system-prompt", metavar="S", help="a system turn before every prompt")
    ev.add_argument("--limit", type=_positive, metavar="N", help="the first N rows only")
    ev.add_argument("--seed", type=int, default=0, metavar="S", help="row i's samples: seed S + i")
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ev.add_argument("--reward-timeout", type=float, default=5.0, metavar="S", help="per completion")
    ev.add_argument(
        "--tools",
        metavar="ENV|YAML",
        help="multi-turn samples with tools: python (the sandboxed interpreter), module:Class, "
        "or a YAML mapping of a recipe's tools keys, e.g. '{environment: functions, functions: "
        "[mytools:multiply], max_turns: 3}'",
    )


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    """`r1kit plan`: memory, layout and sync of a GRPO run (rl/plan/estimate.py)."""
    plan = sub.add_parser("plan", help="will a model fit a GRPO run, on how many GPUs, how")
    plan.add_argument("--model", required=True, help="config.json, model folder or a name")
    plan.add_argument("--gpus", type=_positive, required=True, help="GPUs in the cluster")
    plan.add_argument("--gpu", required=True, help="h100, h200, h20, a100, a100-40g, b200, l40s")
    plan.add_argument("--prompts", type=_positive, default=128, help="prompts per step")
    plan.add_argument("--group", type=_positive, default=8, help="samples per prompt (G)")
    plan.add_argument("--prompt-len", type=_positive, default=512)
    plan.add_argument("--response-len", type=_positive, default=4096)
    plan.add_argument("--micro-batch-tokens", type=_positive, default=16384)
    plan.add_argument("--kl", action="store_true", help="a KL reference policy in the learner")
    plan.add_argument(
        "--no-activation-checkpointing", action="store_true", help="keep every activation"
    )
    plan.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="per engine GPU")
    plan.add_argument("--host-ram-gib", type=float, default=2048, help="host RAM per node")
    plan.add_argument("--sync-gbps", type=float, default=25, help="GB/s learner -> engines")
    plan.add_argument(
        "--mfu", type=float, default=0.19, help="learner FLOPs utilisation (verl, DeepSeek-V3)"
    )
    plan.add_argument(
        "--gen-efficiency",
        type=float,
        default=None,
        help="engines' share of the decode roofline (default 0.091: verl, DeepSeek-V3)",
    )
    plan.add_argument(
        "--offload",
        choices=("auto", "always", "never"),
        default="auto",
        help="optimizer offload to host RAM (auto: only where nothing fits without it)",
    )
    plan.add_argument("--json", action="store_true", help="print the JSON result")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    from rl.config import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    from rl.trainer import train

    summary = train(recipe, Path(args.out), resume=args.resume)
    evals = summary["eval"]
    parts = [f"{k.upper()} {v['accuracy']:.3f} (n={v['n']})" for k, v in evals.items()]
    print(
        f"held-out accuracy: {' -> '.join(parts)}; wall {summary['wall_seconds']:.0f}s; "
        f"outputs in {args.out}"
    )
    return 0


def cmd_eval_rewards(args: argparse.Namespace) -> int:
    from rewards.lab import LabError, run_lab

    try:
        report = run_lab(
            args.reward,
            args.data,
            args.out,
            rows_out=args.rows_out,
            workers=args.workers,
            timeout_s=args.timeout,
            compare=args.compare,
            plot=args.plot,
            unsafe_no_sandbox=args.unsafe_no_sandbox,
        )
    except LabError as e:
        raise R1kitError(str(e)) from None
    mean = "n/a" if report["mean"] is None else f"{report['mean']:.4f}"
    latency = report["latency"]
    print(
        f"{report['reward']}: n={report['n']} mean={mean} errors={report['errors']} "
        f"reward_errors={report['reward_errors']} timeouts={report['timeouts']} "
        f"latency mean {latency['mean_s']:.3f}s p99 {latency['p99_s']:.3f}s; "
        f"wall {report['wall_s']:.1f}s; report in {args.out}"
    )
    for bad in report["error_rows"][:5]:
        print(f"  not scored: {args.data}:{bad['line']}: {bad['error']}")
    if "compare" in report:
        c = report["compare"]
        c_mean = "n/a" if c["mean"] is None else f"{c['mean']:.4f}"
        print(f"{c['reward']}: mean={c_mean}; disagree on {c['disagree']} rows")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from model.gguf import convert_gguf

    try:
        out = convert_gguf(args.gguf, args.out, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as e:
        raise R1kitError(str(e)) from None
    print(f"converted {args.gguf} -> {out} ({args.dtype}); transformers and vLLM load it")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rl.evaluate_model import evaluate_model, tools_config
    from rl.evaluation import Sampling

    tools = tools_config(args.tools) if args.tools else None
    try:
        sampling = Sampling(
            k=args.n,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            batch_rows=max(1, 256 // args.n),  # one engine batch (vLLM's max_num_seqs)
        )
    except ValueError as e:
        raise R1kitError(f"--n/--temperature: {e}") from None
    report = evaluate_model(
        args.model,
        args.data,
        args.out,
        sampling,
        reward=args.reward,
        prompt_template=args.prompt_template,
        system_prompt=args.system_prompt,
        limit=args.limit,
        dtype=args.dtype,
        reward_timeout_s=args.reward_timeout,
        tools=tools,
    )
    k = report["k"]
    used = f", tool use {report['tool_use_frac']:.2f}" if "tool_use_frac" in report else ""
    print(
        f"r1kit evaluate {args.model}: {report['n_rows']} rows, pass@1 (greedy) "
        f"{report['pass@1']:.3f}, pass@{k} {report['pass@k']:.3f}, mean@{k} "
        f"{report['mean@k']:.3f}, maj@{k} {report['maj@k']:.3f}; reward errors "
        f"{report['reward_errors']}, timeouts {report['reward_timeouts']}{used}; wall "
        f"{report['wall_s']:.0f}s; report in {args.out}"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from rl.check import check

    try:
        report = check(
            args.model,
            Path(args.out),
            dtype=args.dtype,
            world_size=args.world_size,
            break_sync=tuple(args.break_sync),
            transport=args.transport,
        )
    except ValueError as e:
        raise R1kitError(str(e)) from None
    d = report["logprob_abs_diff"]
    verdict = "PASSED" if report["passed"] else "FAILED: " + "; ".join(report["failures"])
    print(
        f"r1kit check {args.model}: learner vs engine logprob |diff| mean {d['mean']:.2e}, "
        f"p99 {d['p99']:.2e}, max {d['max']:.2e} over {report['tokens']} tokens; "
        f"sync added {report['sync_added_error']:.2e}; {verdict} (report: {args.out})"
    )
    return 0 if report["passed"] else 1


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from rl.plan import report, resolve_config
    from rl.plan.estimate import Shape, plan
    from rl.plan.gpus import gpu_kind

    config = resolve_config(args.model)
    try:
        gpu = gpu_kind(args.gpu)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    shape = Shape(
        prompts=args.prompts,
        group=args.group,
        prompt_len=args.prompt_len,
        response_len=args.response_len,
        micro_batch_tokens=args.micro_batch_tokens,
        kl=args.kl,
        activation_checkpointing=not args.no_activation_checkpointing,
        gpu_memory_utilization=args.gpu_memory_utilization,
        sync_gbps=args.sync_gbps,
        host_ram_gib=args.host_ram_gib,
        mfu=args.mfu,
    )
    if args.gen_efficiency is not None:
        shape.gen_efficiency = args.gen_efficiency
    result = plan(config, args.gpus, gpu, shape, args.offload)
    print(json.dumps(result, indent=2) if args.json else report(result, args.model))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after --out (the documented form); argparse leaves them over
    takes_overrides = hasattr(args, "overrides")
    unknown = [a for a in extra if "=" not in a or a.startswith("-") or not takes_overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if takes_overrides:
        args.overrides = list(args.overrides) + extra
    try:
        commands = {
            "train": cmd_train,
            "eval-rewards": cmd_eval_rewards,
            "evaluate": cmd_evaluate,
            "check": cmd_check,
            "convert": cmd_convert,
            "plan": cmd_plan,
        }
        return commands[args.command](args)
    except R1kitError as e:
        print(f"r1kit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
