"""`make demo-tools`: GRPO with the Python tool against the same start and budget without it.

1. ``r1kit train recipes/demo_tools.yaml --out OUT/tools``: SFT cold start (a few tool-use
   demonstrations), then GRPO with the sandboxed interpreter;
2. ``r1kit train ... --out OUT/no_tools model.path=OUT/tools/checkpoints/sft sft.steps=0
   tools.environment=null``: the same SFT checkpoint, the same GRPO steps and samples, no tool
   (a code block the policy writes is then only text);
3. ``OUT/summary.json``: ``{"eval": {"sft", "grpo", "start_no_tools", "grpo_no_tools"},
   "wall_seconds", "runs"}``, each eval ``{"accuracy", "n"}`` (greedy pass@1 on the same
   held-out problems; ``sft`` and ``grpo`` with the tool).

``python -m recipes.demo_tools [--recipe YAML] [--out DIR] [key=value ...]``: overrides go to
both runs; ``--recipe recipes/demo_tools_smollm2.yaml`` is the same demo with the real
SmolLM2-135M-Instruct policy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).with_name("demo_tools.yaml")


def train(recipe: Path, out: Path, overrides: list[str]) -> dict:
    """One ``r1kit train`` of ``recipe`` into ``out``; its summary.json."""
    cmd = [sys.executable, "-m", "rl.cli", "train", str(recipe), "--out", str(out), *overrides]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="default demo_tools.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs/demo-tools"))
    parser.add_argument("overrides", nargs="*", help="key=value for both runs")
    args = parser.parse_args(argv)
    if args.out.exists():  # an earlier run is kept, never overwritten
        shutil.move(
            args.out, args.out.with_name(f"{args.out.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        )
    start = time.time()
    with_tools = train(args.recipe, args.out / "tools", args.overrides)
    sft = args.out / "tools" / "checkpoints" / "sft"
    without = train(
        args.recipe,
        args.out / "no_tools",
        [*args.overrides, f"model.path={sft}", "sft.steps=0", "tools.environment=null"],
    )
    summary = {
        "eval": {
            "sft": with_tools["eval"]["sft"],
            "grpo": with_tools["eval"]["grpo"],
            "start_no_tools": without["eval"]["start"],
            "grpo_no_tools": without["eval"]["grpo"],
        },
        "wall_seconds": time.time() - start,
        "recipe": str(args.recipe),
        "runs": {"tools": str(args.out / "tools"), "no_tools": str(args.out / "no_tools")},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    e = summary["eval"]
    print(
        f"held-out accuracy (n={e['grpo']['n']}): SFT start {e['sft']['accuracy']:.3f} with the "
        f"tool, {e['start_no_tools']['accuracy']:.3f} without; after GRPO with the tool "
        f"{e['grpo']['accuracy']:.3f}, without {e['grpo_no_tools']['accuracy']:.3f}; "
        f"wall {summary['wall_seconds']:.0f}s; {args.out}/summary.json"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
