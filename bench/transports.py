"""Weight-sync transports side by side: seconds and MB/s per full sync to two engines.

    python -m bench.transports [--reps 5] [--out bench/results/transports.json]

For each policy (the demo's tiny DeepSeek-V3 and the real SmolLM2-135M-Instruct, both fp32)
it starts one learner rank and two vLLM rollout workers, then alternates full syncs through
``Run.sync_weights`` (what training calls) over each ``rollout.sync_transport``: bucket files
in shared memory, the collective weight-sync group (gloo here), and Ray's object store. The
group forms once, before the first timed sync (a run forms it once, and again only after an
engine is replaced). Reported: the median seconds of a sync (gather + transfer + reload in
both engines) and the bytes moved per engine over it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray

from rl.config import load_recipe
from rl.learner_group import LearnerGroup
from rl.setup import Run
from rollouts import RolloutGroup

TRANSPORTS = ("shared_memory", "collective", "object_store")


def policies(tmp: Path) -> dict[str, str]:
    from model import new_policy, save_policy
    from model.assets import smollm2

    model, tokenizer = new_policy("tiny-dsv3", "0123456789+-= ", seed=0)
    return {
        "tiny-dsv3": str(save_policy(model, tokenizer, tmp / "tiny-dsv3")),
        "smollm2-135m": str(smollm2("float32")),
    }


def bench_policy(path: str, reps: int) -> dict:
    recipe = load_recipe("recipes/demo.yaml")  # its rollout.sync_bucket_mb (256)
    learner = LearnerGroup(path, 1, threads=1)
    rollouts = RolloutGroup(path, 2, dtype="float32", max_model_len=128)
    shm = tempfile.mkdtemp(prefix="r1kit-bench-sync-", dir="/dev/shm")
    run = Run(recipe, Path(shm), None, learner, rollouts, None, None, None)
    times: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
    nbytes = 0
    try:
        run.collective = True
        run.sync_weights(full=True)  # forms the group (not timed: once per run)
        for _ in range(reps):
            for transport in TRANSPORTS:  # alternate: the same machine state for each
                run.collective = transport == "collective"
                run.sync_folder = shm if transport == "shared_memory" else None
                t0 = time.perf_counter()
                sync = run.sync_weights(full=True)
                times[transport].append(time.perf_counter() - t0)
                nbytes = sync["sync_bytes"]
    finally:
        learner.shutdown()
        rollouts.shutdown()
        shutil.rmtree(shm, ignore_errors=True)
    out: dict = {"bytes": nbytes, "engines": 2}
    for transport, seconds in times.items():
        median = statistics.median(seconds)
        out[transport] = {
            "median_s": round(median, 4),
            "mb_per_s": round(nbytes / 1e6 / median, 1),
            "all_s": [round(s, 4) for s in seconds],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="bench/results/transports.json")
    args = parser.parse_args()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    result: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {ray.cluster_resources().get('CPU', 0):.0f} CPUs",
        "reps": args.reps,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in policies(Path(tmp)).items():
            result[name] = row = bench_policy(path, args.reps)
            cells = ", ".join(
                f"{t} {row[t]['median_s']:.3f} s ({row[t]['mb_per_s']:.0f} MB/s)"
                for t in TRANSPORTS
            )
            print(f"{name}: {row['bytes'] / 1e6:.1f} MB per sync to 2 engines: {cells}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
