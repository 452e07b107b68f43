"""metrics.jsonl (one JSON object per step) and the reward curve plot."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    """Append-only JSONL; each row is flushed at once so a crash loses nothing written.

    ``keep_rows``: a resumed run first cuts the file back to the rows its checkpoint had
    seen (rows of steps after it are written again), atomically."""

    def __init__(self, path: Path, keep_rows: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        if keep_rows is not None and self.path.is_file():
            kept = self.path.read_text().splitlines(keepends=True)[:keep_rows]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(self.path)
            self.rows = len(kept)
        self._file = self.path.open("a")

    def write(self, **row) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()
        }
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        self.rows += 1

    def close(self) -> None:
        self._file.close()


def expert_load_summary(loads: list[dict[str, list[int]]]) -> dict:
    """Sum per-layer tokens-per-expert counts and add each layer's coefficient of variation
    (population std / mean: 0 for an even load, sqrt(E - 1) when one expert takes all).

    >>> expert_load_summary([{"1": [3, 1]}, {"1": [1, 3]}])["expert_load_cv"]
    {'1': 0.0}
    """
    total: dict[str, list[int]] = {}
    for load in loads:
        for layer, counts in load.items():
            total[layer] = [
                a + b for a, b in zip(total.get(layer, [0] * len(counts)), counts, strict=True)
            ]
    cv = {}
    for layer, counts in total.items():
        mean = sum(counts) / len(counts)
        std = math.sqrt(sum((c - mean) ** 2 for c in counts) / len(counts))
        cv[layer] = std / mean if mean > 0 else None
    known = [v for v in cv.values() if v is not None]
    return {
        "expert_load": total,
        "expert_load_cv": cv,
        "expert_load_cv_mean": sum(known) / len(known) if known else None,
    }


def read_metrics(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_reward_curve(metrics_path: Path, png_path: Path) -> Path | None:
    """Plot GRPO reward per step (with a moving average) and the held-out accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not Path(metrics_path).is_file():
        return None
    rows = read_metrics(metrics_path)
    grpo = [r for r in rows if r.get("stage") == "grpo"]
    evals = {r["stage"][5:]: r["accuracy"] for r in rows if r.get("stage", "").startswith("eval_")}
    fig, ax = plt.subplots(figsize=(7, 4))
    if grpo:
        steps = [r["step"] for r in grpo]
        reward = [r["reward_mean"] for r in grpo]
        window = max(1, len(reward) // 15)
        smooth = [
            sum(reward[max(0, i - window + 1) : i + 1])
            / len(reward[max(0, i - window + 1) : i + 1])
            for i in range(len(reward))
        ]
        ax.plot(steps, reward, alpha=0.35, label="reward (batch mean)")
        ax.plot(steps, smooth, label=f"reward ({window}-step mean)")
    for stage, acc in evals.items():
        ax.axhline(
            acc,
            linestyle="--",
            color="green" if stage == "grpo" else "gray",
            label=f"held-out accuracy after {stage.upper()}: {acc:.3f}",
        )
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("r1kit: GRPO reward")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)
