"""The ``r1kit`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rl.errors import R1kitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1kit", description="R1-style GRPO post-training.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a recipe (SFT and/or GRPO)")
    train.add_argument("recipe", help="recipe YAML file")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. grpo.steps=10")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    return parser


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after --out (the documented form); argparse leaves them over
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + extra
    try:
        return {"train": cmd_train}[args.command](args)
    except R1kitError as e:
        print(f"r1kit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
