"""Progress of a long stage: a live bar on a terminal; on a pipe or a file (``make demo > log
2>&1``, a CI log) a readable line every few steps instead of thousands of carriage returns."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from tqdm import tqdm


class StepProgress:
    """Iterate over steps ``first..total`` of a stage named ``desc``, showing progress.

    ``set_postfix(reward=..., loss=...)`` sets the figures shown with it. On a terminal this is
    a tqdm bar; elsewhere a line such as ``GRPO 40/200 (20%) 3.10 s/step, ETA 8m16s: reward
    0.512 loss 0.013`` is printed at each ``every``-th step (default: a twentieth of the
    stage), at least every ``max_quiet_s`` seconds, and at the last step.
    """

    def __init__(
        self,
        first: int,
        total: int,
        desc: str,
        *,
        every: int | None = None,
        max_quiet_s: float = 60.0,
        stream: IO[str] | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.first, self.total, self.desc = first, total, desc
        self.stream = stream or sys.stderr
        if interactive is None:
            interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None
        if interactive:
            self.bar = tqdm(
                range(first, total + 1),
                initial=first - 1,
                total=total,
                desc=desc,
                unit="step",
                file=self.stream,
            )
        self.every = every or max(1, total // 20)
        self.max_quiet_s = max_quiet_s
        self.postfix: dict[str, str] = {}

    def set_postfix(self, **figures: Any) -> None:
        self.postfix = {k: str(v) for k, v in figures.items()}
        if self.bar is not None:
            self.bar.set_postfix(**figures)

    def __iter__(self) -> Iterator[int]:
        if self.bar is not None:
            yield from self.bar
            return
        start = last = time.monotonic()
        for step in range(self.first, self.total + 1):
            yield step
            now = time.monotonic()
            if step % self.every == 0 or step == self.total or now - last >= self.max_quiet_s:
                self.stream.write(self.line(step, (now - start) / (step - self.first + 1)) + "\n")
                self.stream.flush()
                last = now

    def line(self, step: int, seconds_per_step: float) -> str:
        """The progress line after ``step``, at ``seconds_per_step``.

        >>> p = StepProgress(1, 200, "GRPO", interactive=False)
        >>> p.set_postfix(reward="0.512", loss="0.013")
        >>> p.line(40, 3.1)  # 160 steps left x 3.1 s = 496 s
        'GRPO 40/200 (20%) 3.10 s/step, ETA 8m16s: reward 0.512 loss 0.013'
        """
        eta = round(seconds_per_step * (self.total - step))
        figures = " ".join(f"{k} {v}" for k, v in self.postfix.items())
        return (
            f"{self.desc} {step}/{self.total} ({100 * step // self.total}%) "
            f"{seconds_per_step:.2f} s/step, ETA {eta // 60}m{eta % 60:02d}s"
            + (f": {figures}" if figures else "")
        )
