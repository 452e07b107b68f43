"""The reward lab's picture: the distribution of rewards and of per-row latency."""

from __future__ import annotations

from pathlib import Path

from .pool import ScoreResult


def plot_lab(
    path: str | Path,
    reward: str,
    results: list[ScoreResult],
    compare: str | None = None,
    other: list[ScoreResult] | None = None,
) -> Path:
    """Write a PNG: reward histogram (both graders with --compare) and latency histogram (ms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(reward, [r for r in results if r.data_error is None])]
    if compare is not None and other is not None:
        series.append((compare, [r for r in other if r.data_error is None]))
    import numpy as np

    rewards = [[r.reward for r in scored] for _, scored in series]
    latencies = [[1000 * r.latency_s for r in scored] for _, scored in series]
    # Shared bins, so that the two graders' bars line up.
    reward_bins = np.histogram_bin_edges(sum(rewards, []) or [0.0, 1.0], bins=20)
    latency_bins = np.histogram_bin_edges(sum(latencies, []) or [0.0, 1.0], bins=40)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for (name, scored), values, times in zip(series, rewards, latencies, strict=True):
        left.hist(values, bins=reward_bins, alpha=0.6, label=f"{name} (n={len(scored)})")
        right.hist(times, bins=latency_bins, alpha=0.6, label=name)
    left.set(title="reward per row", xlabel="reward", ylabel="rows")
    right.set(title="latency per row", xlabel="ms", ylabel="rows")
    left.legend()
    right.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
