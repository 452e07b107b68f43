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
            color="gray" if stage == "sft" else "green",
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
