"""Dashboards a run's metrics rows also go to: TensorBoard event files, Weights & Biases.

``MetricsLog`` (rl/metrics.py) writes metrics.jsonl and hands each row to its dashboards as
scalars (``rl.metrics.scalar_fields``: every numeric field, a dict of numbers flattened one
level, lists skipped) under the stage's prefix (``grpo``, ``sft``, ``eval/grpo``), at the row's
step (an evaluation row: the last step of the stage it follows); and sample completions
(``write_samples``: the first ``logging.samples`` of a GRPO batch every ``log_every`` steps,
and of each held-out evaluation). A dashboard is an object with

- ``scalars(prefix, step, values)``: ``values`` maps a field (``reward_mean``,
  ``expert_load_cv/1``) to a float;
- ``samples(prefix, step, samples)``: ``samples`` are ``{"prompt", "completion", "reward"}``;
- ``close()``.

``TensorBoard`` writes OUT/tensorboard (``tensorboard --logdir OUT``): scalars tagged
``{prefix}/{field}`` (``grpo/reward_mean``, ``eval/grpo/accuracy``) and the samples as one
markdown text per step, ``{prefix}/completions``. A resumed run rewrites its event files from
the metrics rows its checkpoint kept (samples logged before the resume are not kept).
``Wandb`` logs the same under the same names to a wandb run, each prefix with its own step
axis (``grpo/step``: SFT and GRPO both count from 1), and the samples as a table; it is
imported only when ``logging.wandb.project`` is set. A resumed run is a new wandb run, with the
kept rows replayed into it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rl.config import Recipe, WandbConfig
from rl.errors import ConfigError
from rl.metrics import MetricsLog


def run_log(recipe: Recipe, out: Path, keep_rows: int | None = None) -> MetricsLog:
    """A run's metrics.jsonl with the dashboards its recipe asks for (``keep_rows``: a
    resumed run's, see ``MetricsLog``)."""
    cfg = recipe.logging
    boards: list[Any] = []
    if cfg.wandb.project:  # first: a missing wandb fails before anything is written
        boards.append(Wandb(cfg.wandb, out, recipe.name, asdict(recipe)))
    if cfg.tensorboard:
        boards.append(TensorBoard(out / "tensorboard", fresh=keep_rows is not None))
    return MetricsLog(
        out / "metrics.jsonl",
        keep_rows=keep_rows,
        dashboards=boards,
        samples=cfg.samples,
        samples_every=recipe.log_every,
    )


def grpo_samples(tokenizer: Any, groups: Any) -> Iterator[dict]:
    """A GRPO batch's completions (``rl.grpo.Groups``) as samples, decoded as they are read:
    the prompt as the policy saw it (chat template included), the completion, its reward."""
    rewards = groups.rewards.tolist()
    for prompt, completion, reward in zip(groups.prompts, groups.completions, rewards, strict=True):
        yield {"prompt": tokenizer.decode(prompt), "completion": completion.text, "reward": reward}


def samples_markdown(samples: list[dict]) -> str:
    """Samples as markdown: a heading with the reward, then prompt and completion verbatim
    (indented code blocks: no markdown inside them is rendered).

    >>> print(samples_markdown([{"prompt": "1+1", "completion": "2", "reward": 1.0}]))
    **1.** reward 1.000
    <BLANKLINE>
    prompt:
    <BLANKLINE>
        1+1
    <BLANKLINE>
    completion:
    <BLANKLINE>
        2
    """

    def code(text: str) -> str:
        return "\n".join("    " + line for line in (text.splitlines() or [""]))

    return "\n\n---\n\n".join(
        f"**{i}.** reward {s['reward']:.3f}\n\nprompt:\n\n{code(s['prompt'])}\n\n"
        f"completion:\n\n{code(s['completion'])}"
        for i, s in enumerate(samples, 1)
    )


class TensorBoard:
    """Event files in ``logdir``; ``fresh``: delete earlier ones first (a resumed run replays
    its kept rows instead)."""

    def __init__(self, logdir: Path, fresh: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if fresh and logdir.is_dir():
            shutil.rmtree(logdir)
        self.writer = SummaryWriter(str(logdir), flush_secs=30)

    def scalars(self, prefix: str, step: int, values: dict[str, float]) -> None:
        for field, value in values.items():
            self.writer.add_scalar(f"{prefix}/{field}", value, step)

    def samples(self, prefix: str, step: int, samples: list[dict]) -> None:
        if samples:
            self.writer.add_text(f"{prefix}/completions", samples_markdown(samples), step)

    def close(self) -> None:
        self.writer.close()


class Wandb:
    """A wandb run (``wandb.init(project, name, mode, dir=out, config=recipe)``)."""

    def __init__(self, cfg: WandbConfig, out: Path, name: str, config: dict) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "recipe key 'logging.wandb.project' is set but wandb is not installed: "
                "pip install wandb, or leave the key unset"
            ) from None
        self.wandb = wandb
        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project, name=cfg.name or name, mode=cfg.mode, dir=str(out), config=config
        )
        self._axes: set[str] = set()

    def _axis(self, prefix: str) -> str:
        """``{prefix}/step``, declared as the x axis of ``{prefix}/*`` on first use."""
        axis = f"{prefix}/step"
        if prefix not in self._axes:
            self.run.define_metric(axis)
            self.run.define_metric(f"{prefix}/*", step_metric=axis)
            self._axes.add(prefix)
        return axis

    def scalars(self, prefix: str, step: int, values: dict[str, float]) -> None:
        logged = {f"{prefix}/{field}": value for field, value in values.items()}
        self.run.log({**logged, self._axis(prefix): step})

    def samples(self, prefix: str, step: int, samples: list[dict]) -> None:
        columns = ["prompt", "completion", "reward"]
        table = self.wandb.Table(columns=columns, data=[[s[c] for c in columns] for s in samples])
        self.run.log({f"{prefix}/completions": table, self._axis(prefix): step})

    def close(self) -> None:
        self.run.finish()
