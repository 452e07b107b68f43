"""Environments for the multi-turn engine tests, imported by name inside the rollout worker
(the session's tiny policy writes digits and + - = only, so its "tool calls" are those)."""

from __future__ import annotations

import time

from rollouts.tools import Step


class Echo:
    """Every "=" the policy writes is a call; the observation is ``<calls>+`` ... until
    ``row["calls"]`` calls, then the episode is done with reward = calls."""

    stop = ("=",)
    observation_format = "inline"

    def reset(self, row):
        self.limit, self.calls = row.get("calls", 2), 0

    def step(self, text):
        if not text.endswith("="):
            return Step(None, done=True, reward=float(self.calls))
        self.calls += 1
        if self.calls > self.limit:
            return Step(None, done=True, reward=float(self.limit))
        return Step(f" {self.calls}{self.calls}+", done=False, tool_call=True)


class Timed(Echo):
    """Echo that appends when each step ran to ``row["log"]``; a row with ``slow`` sleeps
    2 s in its first step (a slow tool call)."""

    def reset(self, row):
        super().reset(row)
        self.slow, self.log = row.get("slow", False), row["log"]

    def step(self, text):
        t0 = time.monotonic()
        if self.slow and self.calls == 0:
            time.sleep(2.0)
        with open(self.log, "a") as f:
            f.write(f"{'slow' if self.slow else 'fast'} {t0} {time.monotonic()}\n")
        return super().step(text)
