"""Asynchronous GRPO: a sampler thread that generates and scores batches ahead of the learner.

With ``grpo.max_staleness: k > 0`` the driver trains step ``s`` while this thread samples
steps ``s + 1 .. s + k``. The schedule is fixed, so a run is reproducible and every batch's
weight version is known in advance:

- batch ``t`` is sampled by the weights of step ``max(first - 1, t - 1 - k)`` (the learner
  trains it at version ``t - 1``: staleness at most ``k``);
- the driver's weight sync after step ``s`` waits until batch ``s + k`` is generated (its
  calls are all queued on the engines under the old weights) and is not overlapped by any
  generation call: the engines' queue orders it, and nothing in flight is aborted or thrown
  away;
- the thread then samples batch ``s + k + 1`` with the new weights while the learner trains
  step ``s + 1``.

Scoring runs in this thread too (the reward pool is used from no other thread meanwhile),
so the learner's only wait is for a batch that is not finished yet: ``idle_learner_s`` in
the metrics; the engines' wait for new weights is ``idle_rollout_s``.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time

from rl.data import DataOrder
from rl.grpo import Sampled, sample_batch
from rl.setup import Run


class AheadSampler:
    """Samples GRPO batches ``first .. last`` in a background thread, at most ``max_staleness``
    weight versions ahead of the learner (see the module docstring). ``synced(s)`` tells it
    the engines hold step ``s``'s weights; ``take(t)`` waits for batch ``t``. With
    ``max_staleness`` 0 it keeps the synchronous schedule (each batch after the previous
    step's sync), in a thread: what tests compare the asynchronous path with."""

    def __init__(
        self,
        run: Run,
        rows: list[dict],
        order: DataOrder,
        first: int,
        last: int,
        max_staleness: int,
    ) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.first, self.last, self.max_staleness = first, last, max_staleness
        # the same actors and pools, with a tokenizer of its own: a fast (Rust) tokenizer
        # used from two threads at once raises "Already borrowed"
        self._run = dataclasses.replace(run, tokenizer=copy.deepcopy(run.tokenizer))
        self._rows, self._order = rows, order
        self._cond = threading.Condition()
        self._synced = first - 1  # the version the engines hold
        self._generated = first - 1  # the last batch sampled (generated and scored)
        self._batches: dict[int, Sampled] = {}
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="r1kit-sampler", daemon=True)
        self._thread.start()

    def version_for(self, step: int) -> int:
        """The weight version batch ``step`` is sampled by."""
        return max(self.first - 1, step - 1 - self.max_staleness)

    # -- the driver's side -------------------------------------------------------------------

    def take(self, step: int) -> tuple[Sampled, float]:
        """Batch ``step`` and the seconds the caller waited for it."""
        t0 = time.time()
        with self._cond:
            self._cond.wait_for(lambda: step in self._batches or self._error or self._closed)
            self._raise()
            return self._batches.pop(step), time.time() - t0

    def before_sync(self, step: int) -> float:
        """Wait until the batches sampled by step ``step - 1``'s weights are generated (so the
        sync after ``step`` changes none of their calls); returns the seconds waited."""
        t0 = time.time()
        until = min(self.last, step + self.max_staleness)
        with self._cond:
            self._cond.wait_for(lambda: self._generated >= until or self._error or self._closed)
            self._raise()
        return time.time() - t0

    def synced(self, step: int) -> None:
        """The engines hold step ``step``'s weights now."""
        with self._cond:
            self._synced = step
            self._cond.notify_all()

    def close(self) -> None:
        """Stop after the call in flight (idempotent); the thread is a daemon either way."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=self._run.rollouts.timeout_s if self._error is None else 1)

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the rollout sampler failed: {self._error}") from self._error
        if self._closed:
            raise RuntimeError("the rollout sampler is closed")

    # -- the thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            for step in range(self.first, self.last + 1):
                need = self.version_for(step)
                t0 = time.time()
                with self._cond:
                    self._cond.wait_for(lambda n=need: self._synced >= n or self._closed)
                    if self._closed:
                        return
                idle = time.time() - t0
                sampled = sample_batch(self._run, self._rows, self._order, step)
                sampled.timing["idle_rollout_s"] = idle
                with self._cond:
                    self._batches[step] = sampled
                    self._generated = step
                    self._cond.notify_all()
        except BaseException as err:  # handed to the driver, which raises it
            with self._cond:
                self._error = err
                self._cond.notify_all()
