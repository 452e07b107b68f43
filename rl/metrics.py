"""metrics.jsonl (one JSON object per step) and what its rows show on dashboards, the health
metrics of GRPO updates, and the reward curve plot."""

from __future__ import annotations

import itertools
import json
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL; each row is flushed at once so a crash loses nothing written.

    Every row also goes to the ``dashboards`` (``rl.dashboards``: TensorBoard, wandb), and
    ``write_samples`` hands them sample completions. ``keep_rows``: a resumed run first cuts
    the file back to the rows its checkpoint had seen (rows of steps after it are written
    again), atomically, and replays the kept rows into the dashboards."""

    def __init__(
        self,
        path: Path,
        keep_rows: int | None = None,
        dashboards: Sequence[Any] = (),
        samples: int = 0,
        samples_every: int = 1,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self.dashboards = list(dashboards)
        self.samples, self.samples_every = samples, samples_every
        self._last_step: dict[str, int] = {}  # stage -> step of its latest row
        if keep_rows is not None and self.path.is_file():
            kept = self.path.read_text().splitlines(keepends=True)[:keep_rows]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(kept))
            tmp.replace(self.path)
            self.rows = len(kept)
            for line in kept:
                self._publish(json.loads(line))
        self._file = self.path.open("a")

    def write(self, **row) -> None:
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()
        }
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        self.rows += 1
        self._publish(clean)

    def write_samples(self, stage: str, step: int | None, samples: Iterable[dict]) -> None:
        """Hand the first ``self.samples`` of ``samples`` (``{"prompt", "completion",
        "reward"}``, consumed only if logged: a generator may decode lazily) to the
        dashboards, at every ``samples_every``-th step; always for ``step`` None (an
        evaluation, shown at the step of the stage it follows)."""
        if not self.dashboards or self.samples == 0:
            return
        if step is not None and step % self.samples_every:
            return
        picked = list(itertools.islice(samples, self.samples))
        at = self._board_step(stage, step)
        for board in self.dashboards:
            board.samples(board_prefix(stage), at, picked)

    def close(self) -> None:
        self._file.close()
        for board in self.dashboards:
            board.close()

    def _publish(self, row: dict) -> None:
        stage, step = str(row.get("stage", "")), row.get("step")
        at = self._board_step(stage, step)
        if step is not None:
            self._last_step[stage] = step
        values = scalar_fields(row)
        for board in self.dashboards:
            board.scalars(board_prefix(stage), at, values)

    def _board_step(self, stage: str, step: int | None) -> int:
        """A row's step; for an evaluation row (no step) the latest step of the stage it
        evaluates (``eval_sft`` after SFT's last step; ``eval_start``: 0)."""
        if step is not None:
            return step
        return self._last_step.get(stage.removeprefix("eval_"), 0)


def board_prefix(stage: str) -> str:
    """A stage's dashboard tag prefix.

    >>> board_prefix("grpo"), board_prefix("eval_sft")
    ('grpo', 'eval/sft')
    """
    return "eval/" + stage.removeprefix("eval_") if stage.startswith("eval_") else stage


def scalar_fields(row: dict) -> dict[str, float]:
    """The numbers of a metrics row, as dashboard scalars: every int or float field but
    ``step`` (the x axis), skipping nulls, non-finite values and bools; a dict of numbers
    becomes one scalar per key (``expert_load_cv/1``: layer 1's); lists are skipped
    (``expert_load``'s tokens per expert and layer: ``expert_load_cv`` says how even they are).

    >>> scalar_fields({"step": 3, "stage": "grpo", "loss": 0.5, "kl": None, "samples": 32,
    ...                "expert_load": {"1": [3, 1]}, "expert_load_cv": {"1": 0.5, "2": None}})
    {'loss': 0.5, 'samples': 32.0, 'expert_load_cv/1': 0.5}
    """
    out = {}
    for key, value in row.items():
        if key == "step":
            continue
        if isinstance(value, dict):
            out.update({f"{key}/{k}": float(v) for k, v in value.items() if _is_number(v)})
        elif _is_number(value):
            out[key] = float(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class UpdateStats:
    """Running sums of one GRPO update's health metrics, under metrics.jsonl's names.

    A learner rank adds its micro-batches (``add``); the LearnerGroup adds the ranks'
    (``a + b``); ``report`` gives the update's metrics. Means are token-weighted (each
    micro-batch's means count by its tokens), extremes are over every token. ``loss`` and
    ``kl_loss`` are sums of micro-batch terms that are each over the whole batch's
    denominators, so their sum is the batch's loss."""

    tokens: float = 0.0
    loss: float = 0.0
    kl_loss: float = 0.0
    logprob_diff_sum: float = 0.0  # |learner - rollout engine| logprob of the sampled tokens
    logprob_diff_max: float = 0.0
    entropy_sum: float = 0.0
    clip_frac_low_sum: float = 0.0
    clip_frac_high_sum: float = 0.0
    ratio_sum: float = 0.0
    ratio_min: float = math.inf
    ratio_max: float = 0.0
    is_weight_sum: float = 0.0  # mismatch-correction weights
    is_weight_max: float = 0.0
    is_capped_sum: float = 0.0

    def add(
        self,
        tokens: float,
        loss: float,
        kl_loss: float,
        logprob_diff: Any,
        entropy: Any,
        policy: dict[str, Any],
        mismatch: dict[str, Any] | None = None,
    ) -> None:
        """One micro-batch of ``tokens`` loss tokens: its loss terms, its (masked) per-token
        |logprob diff| and entropy tensors, and the metrics of ``rl.losses.policy_loss`` and
        ``mismatch_weights`` (means over its tokens)."""
        self.tokens += tokens
        self.loss += loss
        self.kl_loss += kl_loss
        self.logprob_diff_sum += float(logprob_diff.sum())
        self.logprob_diff_max = max(self.logprob_diff_max, float(logprob_diff.max()))
        self.entropy_sum += float(entropy.sum())
        self.clip_frac_low_sum += float(policy["clip_frac_low"]) * tokens
        self.clip_frac_high_sum += float(policy["clip_frac_high"]) * tokens
        self.ratio_sum += float(policy["ratio_mean"]) * tokens
        self.ratio_min = min(self.ratio_min, float(policy["ratio_min"]))
        self.ratio_max = max(self.ratio_max, float(policy["ratio_max"]))
        if mismatch is not None:
            self.is_weight_sum += float(mismatch["mismatch_weight_mean"]) * tokens
            self.is_weight_max = max(self.is_weight_max, float(mismatch["mismatch_weight_max"]))
            self.is_capped_sum += float(mismatch["mismatch_capped_frac"]) * tokens

    def __add__(self, other: UpdateStats) -> UpdateStats:
        """The two ranks' (or parts') stats together: sums add, extremes combine."""
        pick = {"ratio_min": min, "logprob_diff_max": max, "ratio_max": max, "is_weight_max": max}
        return UpdateStats(
            **{
                f.name: pick.get(f.name, operator.add)(
                    getattr(self, f.name), getattr(other, f.name)
                )
                for f in fields(self)
            }
        )

    def report(self, kl: bool = False, mismatch: bool = False) -> dict[str, float]:
        """The update's metrics; ``kl_loss`` with a KL loss term, ``is_*`` with mismatch
        correction."""
        n = max(self.tokens, 1.0)
        out = {
            "loss": self.loss,
            "logprob_diff_mean": self.logprob_diff_sum / n,
            "logprob_diff_max": self.logprob_diff_max,
            "entropy": self.entropy_sum / n,
            "clip_frac_low": self.clip_frac_low_sum / n,
            "clip_frac_high": self.clip_frac_high_sum / n,
            "ratio_mean": self.ratio_sum / n,
            "ratio_min": self.ratio_min,
            "ratio_max": self.ratio_max,
        }
        if kl:
            out["kl_loss"] = self.kl_loss
        if mismatch:
            out["is_weight_mean"] = self.is_weight_sum / n
            out["is_weight_max"] = self.is_weight_max
            out["is_capped_frac"] = self.is_capped_sum / n
        return out


@dataclass
class MTPStats:
    """Running sums of the MTP module's training metrics (model/mtp.py ``MTPForward``) over
    micro-batches and ranks: ``mtp_loss`` (the weighted NLL term, summed like ``loss``),
    ``mtp_accuracy`` (the draft's argmax is the real token) and ``mtp_acceptance`` (expected
    acceptance of that greedy draft token under the policy; GRPO only), means over the draft
    positions."""

    tokens: float = 0.0
    loss: float = 0.0
    accuracy_sum: float = 0.0
    acceptance_sum: float = 0.0

    def add(self, mtp: Any, loss: float) -> None:
        if mtp.count:
            self.tokens += mtp.count
            self.accuracy_sum += mtp.accuracy * mtp.count
            if not math.isnan(mtp.acceptance):
                self.acceptance_sum += mtp.acceptance * mtp.count
        self.loss += loss

    def __add__(self, other: MTPStats) -> MTPStats:
        return MTPStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def report(self, acceptance: bool = True) -> dict[str, float]:
        n = max(self.tokens, 1.0)
        out = {"mtp_loss": self.loss, "mtp_accuracy": self.accuracy_sum / n}
        if acceptance:
            out["mtp_acceptance"] = self.acceptance_sum / n
        return out


def combine_updates(updates: list[dict], first_pass: int) -> dict:
    """One step's metrics from its updates' (``UpdateStats.report`` plus ``grad_norm`` and
    ``rows_learned``; the first ``first_pass`` updates are the first pass over the batch).
    Loss, grad norm, clip fractions, ratio mean, KL loss and mismatch weights: mean over the
    updates that stepped; extremes over them; learner-vs-rollout logprob diff and entropy from
    the first (before the weights moved); rows learned over the first pass."""
    done = [u for u in updates if u["rows_learned"]]
    first = done[0] if done else updates[0]  # steps that learned nothing left the weights as-is

    def mean(key: str) -> float | None:
        return sum(u[key] for u in done) / len(done) if done else None

    averaged = ("clip_frac_low", "clip_frac_high", "ratio_mean")
    optional = ("kl_loss", "is_weight_mean", "is_capped_frac")
    out = {k: mean(k) for k in (*averaged, *(k for k in optional if k in first))}
    if "is_weight_max" in first:
        out["is_weight_max"] = max(u["is_weight_max"] for u in done)
    return {
        **out,
        "loss": mean("loss") or 0.0,
        "grad_norm": mean("grad_norm") or 0.0,
        "optimizer_steps": len(done),
        "rows_learned": sum(u["rows_learned"] for u in updates[:first_pass]),
        "logprob_diff_mean": first.get("logprob_diff_mean"),
        "logprob_diff_max": first.get("logprob_diff_max"),
        "entropy": first.get("entropy"),
        "ratio_min": min((u["ratio_min"] for u in done), default=None),
        "ratio_max": max((u["ratio_max"] for u in done), default=None),
        **{k: first[k] for k in ("mtp_accuracy", "mtp_acceptance") if k in first},
        **({"mtp_loss": mean("mtp_loss")} if "mtp_loss" in first else {}),
    }


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
