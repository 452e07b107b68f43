"""Weight sync, full weights vs LoRA, side by side: bytes and seconds per sync.

    python -m bench.sync [--reps 5] [--out bench/results/sync.json]

Builds the tiny-dsv3 preset, starts one vLLM rollout worker and two 2-rank FSDP2 learners (one
full, one LoRA r=16 on attention + shared experts + dense MLP), then alternates syncs of each
(gather on the learner, buckets through Ray's object store, in-place reload in vLLM) and
reports the median time and the bytes moved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray

from model import new_policy, save_policy
from rl.learner_group import LearnerGroup
from rollouts import RolloutGroup

LORA = {
    "r": 16,
    "alpha": 32.0,
    "targets": ["attention", "shared_experts", "dense_mlp"],
    "dropout": 0.0,
}


def sync_once(learner: LearnerGroup, rollouts: RolloutGroup) -> tuple[float, int]:
    t0 = time.perf_counter()
    rollouts.update_weights(learner.export_weights())
    return time.perf_counter() - t0, learner.last_export_size()["sync_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="bench/results/sync.json")
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = new_policy("tiny-dsv3", "0123456789+-= ", seed=0)
        path = str(save_policy(model, tokenizer, Path(tmp) / "policy"))
        rollouts = RolloutGroup(path, 1, dtype="float32", max_model_len=128)
        learners = {
            "full": LearnerGroup(path, 2, threads=1),
            "lora": LearnerGroup(path, 2, threads=1, lora=LORA),
        }
        times: dict[str, list[float]] = {k: [] for k in learners}
        sizes: dict[str, int] = {}
        try:
            for _ in range(args.reps):
                for name, learner in learners.items():  # alternate: same machine state
                    seconds, sizes[name] = sync_once(learner, rollouts)
                    times[name].append(seconds)
        finally:
            for learner in learners.values():
                learner.shutdown()
            rollouts.shutdown()
    result = {
        name: {"bytes": sizes[name], "median_s": statistics.median(t), "all_s": t}
        for name, t in times.items()
    }
    result["lora_over_full"] = {
        "bytes": sizes["lora"] / sizes["full"],
        "time": result["lora"]["median_s"] / result["full"]["median_s"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name in learners:
        print(
            f"{name}: {sizes[name] / 1e6:.2f} MB per sync, median {result[name]['median_s']:.3f} s"
        )
    print(
        f"LoRA / full: bytes {result['lora_over_full']['bytes']:.2f}, time {result['lora_over_full']['time']:.2f}"
    )


if __name__ == "__main__":
    main()
