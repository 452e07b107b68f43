"""Score completions in worker processes that can be killed.

Reward functions run on untrusted model output, and a pathological expression can keep sympy
busy for minutes. `RewardPool` runs them in worker processes: each sample goes to an idle worker,
and a worker that takes longer than `timeout_s` is SIGKILLed (with anything it started) and
replaced, and its sample scores 0 with `timed_out=True`.

This is the one place where errors from reward functions are caught: any exception a reward
function raises on a completion (math-verify's `TimeoutException`, a BaseException, included)
scores that component 0 and is reported in `ScoreResult.error`, and `stats` counts them. A
`RewardDataError` (a bad data row) is re-raised in the caller instead, or, with
`score(..., on_data_error="report")`, reported in that sample's `ScoreResult.data_error`. A
`RewardSetupError` (the reward cannot run safely here, e.g. no sandbox) is always re-raised.

Workers are started with "spawn": the caller has torch and many threads loaded, and forking it
is unsafe. They start on the first `score` call, import the reward functions once, and are
reused until `close`. A script that creates a pool needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from .registry import RewardDataError, RewardFn, RewardSetupError, get_reward

MAX_WORKERS = 8
"""Default cap on the number of workers."""
START_TIMEOUT_S = 120.0
"""A worker that has not imported its reward functions by then is an infrastructure error."""
MAX_ERROR_CHARS = 300
"""Error messages quote model output: keep them short."""


@dataclass(frozen=True)
class ScoreResult:
    """The score of one completion."""

    reward: float
    """Weighted sum of the components."""
    components: dict[str, float]
    """Each reward function's score by name; 0.0 where it raised or timed out."""
    latency_s: float
    """Seconds from dispatch to the result (or to the kill, on a timeout)."""
    timed_out: bool = False
    """The sample took longer than `timeout_s`; its worker was killed."""
    error: str | None = None
    """`"<ExceptionType>: msg"` for each reward function that raised, joined by "; "."""
    data_error: str | None = None
    """With `on_data_error="report"`: why the row could not be scored (then reward is 0.0)."""


def stats(results: list[ScoreResult]) -> dict[str, float]:
    """Counts of timeouts and errors, and the mean and p99 (nearest rank) latency."""
    latencies = sorted(r.latency_s for r in results)
    p99 = latencies[math.ceil(0.99 * len(latencies)) - 1] if latencies else 0.0
    return {
        "reward_timeouts": sum(r.timed_out for r in results),
        "reward_errors": sum(r.error is not None for r in results),
        "reward_latency_mean_s": sum(latencies) / len(latencies) if latencies else 0.0,
        "reward_latency_p99_s": p99,
    }


def default_num_workers() -> int:
    """One worker per core but one (the caller's), at least 1, at most `MAX_WORKERS`."""
    return min(MAX_WORKERS, max(1, (os.cpu_count() or 1) - 1))


# ---- inside a worker process -------------------------------------------------------------


def _worker_main(conn: Connection, names: list[str]) -> None:
    """Serve (completion, row) jobs until told to stop (None) or the parent goes away."""
    # Own process group: Ctrl-C reaches only the parent (which then closes the pool), and a
    # kill of the group also ends whatever a reward function started.
    os.setpgrp()
    fns = {name: get_reward(name) for name in names}
    conn.send(("ready",))
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the parent is gone
            return
        if job is None:
            return
        conn.send(_score_sample(fns, *job))


def _score_sample(fns: dict[str, RewardFn], completion: str, row: dict[str, Any]) -> tuple:
    """("result", components, errors), or ("data_error" | "setup_error", message)."""
    components: dict[str, float] = {}
    errors: list[str] = []
    # A row may carry a reference "completion" (an SFT target); the scored one is ours.
    fields = {k: v for k, v in row.items() if k != "completion"}
    for name, fn in fns.items():
        try:
            components[name] = float(fn(completion, **fields))
        except RewardDataError as exc:
            return ("data_error", f"reward {name!r}: {exc}")
        except RewardSetupError as exc:
            return ("setup_error", f"reward {name!r}: {exc}")
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # untrusted output: score 0 and report it, whatever it was
            components[name] = 0.0
            errors.append(f"{type(exc).__name__}: {str(exc)[:MAX_ERROR_CHARS]}")
    return ("result", components, errors)


# ---- in the caller's process ---------------------------------------------------------------


class _Worker:
    """A worker process, the parent's end of its pipe, and the sample it is scoring."""

    def __init__(self, ctx: mp.context.BaseContext, names: list[str]) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, args=(child_conn, names), name="reward-worker", daemon=True
        )
        self.process.start()
        child_conn.close()  # so that the worker's death shows as EOF on self.conn
        self.started_at = time.monotonic()
        self.ready = False
        self.job: tuple[int, float] | None = None  # (sample index, dispatch time)

    def kill(self) -> None:
        """SIGKILL the worker's process group, then reap the worker."""
        # ProcessLookupError: it had not called setpgrp yet, or the group is gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.kill()
        self.process.join()
        self.conn.close()


class RewardPool:
    """Weighted reward functions scored in killable worker processes; a context manager.

    Args:
        rewards: reward name (see `rewards.registry.get_reward`) -> weight in the total reward.
        num_workers: worker processes; default `max(1, os.cpu_count() - 1)`, capped at 8.
        timeout_s: seconds one sample may take (all its reward functions together).

    Not thread-safe: call `score` from one thread at a time.
    """

    def __init__(
        self, rewards: dict[str, float], num_workers: int | None = None, timeout_s: float = 5.0
    ) -> None:
        if not rewards:
            raise ValueError("RewardPool needs at least one reward")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if num_workers is None:
            num_workers = default_num_workers()
        if num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers}")
        for name in rewards:  # fail here on a bad name, not in a worker
            get_reward(name)
        self.weights = dict(rewards)
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._closed = False

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def score(
        self, completions: list[str], rows: list[dict[str, Any]], *, on_data_error: str = "raise"
    ) -> list[ScoreResult]:
        """Score each completion with its data row; results are in input order.

        A bad row raises `RewardDataError` (`on_data_error="raise"`), or gives a result with
        `data_error` set and reward 0.0 (`"report"`): offline evaluation counts bad rows
        instead of stopping at the first.
        """
        if on_data_error not in ("raise", "report"):
            raise ValueError(f"on_data_error must be 'raise' or 'report', got {on_data_error!r}")
        if len(completions) != len(rows):
            raise ValueError(f"{len(completions)} completions but {len(rows)} rows")
        if self._closed:
            raise RuntimeError("RewardPool is closed")
        if not completions:
            return []
        results: list[ScoreResult | None] = [None] * len(completions)
        pending = deque(range(len(completions)))
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._ctx, list(self.weights)))
        try:
            while pending or any(w.job for w in self._workers):
                self._dispatch(pending, completions, rows)
                self._collect(results, on_data_error)
                self._expire(results)
        finally:
            # On an error (RewardDataError, Ctrl-C), kill the workers that hold a sample, so
            # that a later call cannot read its result; that call starts fresh ones.
            for worker in [w for w in self._workers if w.job]:
                worker.kill()
                self._workers.remove(worker)
        return results  # type: ignore[return-value]  # every slot is filled by now

    def close(self) -> None:
        """Stop the workers (SIGKILL after a second) and reap them. Idempotent."""
        self._closed = True
        self.release()

    def release(self) -> None:
        """Stop the workers as ``close`` does, but stay usable: the next ``score`` starts them
        again (a pool used now and then, e.g. for evaluations, frees their memory meanwhile)."""
        for worker in self._workers:
            with contextlib.suppress(OSError):  # already gone
                worker.conn.send(None)
        deadline = time.monotonic() + 1.0
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            worker.kill()
        self._workers = []

    def _dispatch(self, pending: deque[int], completions: list[str], rows: list[dict]) -> None:
        for worker in self._workers:
            if not pending:
                return
            if worker.ready and worker.job is None:
                index = pending.popleft()
                try:
                    worker.conn.send((completions[index], rows[index]))
                except OSError:  # it died while idle: retry the sample on another worker
                    pending.appendleft(index)
                    self._replace(worker)
                    continue
                worker.job = (index, time.monotonic())

    def _collect(self, results: list[ScoreResult | None], on_data_error: str) -> None:
        """Wait until a message arrives or the nearest deadline passes; handle the messages."""
        timeout = max(0.0, self._next_deadline() - time.monotonic())
        for conn in wait([w.conn for w in self._workers], timeout):
            worker = next(w for w in self._workers if w.conn is conn)
            try:
                message = conn.recv()
            except (EOFError, OSError):
                self._handle_death(worker, results)
                continue
            if message[0] == "ready":
                worker.ready = True
                continue
            index, dispatched_at = worker.job
            worker.job = None
            latency = time.monotonic() - dispatched_at
            if message[0] == "setup_error":
                raise RewardSetupError(message[1])
            if message[0] == "data_error" and on_data_error == "raise":
                raise RewardDataError(message[1])
            if message[0] == "data_error":
                results[index] = self._result({}, latency, [], data_error=message[1])
                continue
            _, components, errors = message
            results[index] = self._result(components, latency, errors)

    def _expire(self, results: list[ScoreResult | None]) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.job and now - worker.job[1] >= self.timeout_s:
                index, dispatched_at = worker.job
                self._replace(worker)
                latency = time.monotonic() - dispatched_at
                results[index] = self._result({}, latency, [], timed_out=True)
            elif not worker.ready and now - worker.started_at >= START_TIMEOUT_S:
                raise RuntimeError(f"a reward worker did not start within {START_TIMEOUT_S} s")

    def _handle_death(self, worker: _Worker, results: list[ScoreResult | None]) -> None:
        worker.process.join(0.5)  # it is exiting: let it, so that its exit code is its own
        if not worker.ready:
            worker.kill()
            self._workers.remove(worker)
            raise RuntimeError(
                f"a reward worker exited during start-up (exit code {worker.process.exitcode});"
                " its traceback is on stderr"
            )
        if worker.job:  # the completion crashed it (segfault, os._exit, out of memory)
            index, dispatched_at = worker.job
            latency = time.monotonic() - dispatched_at
            self._replace(worker)
            error = f"WorkerDied: exit code {worker.process.exitcode}"
            results[index] = self._result({}, latency, [error])
        else:
            self._replace(worker)

    def _next_deadline(self) -> float:
        deadlines = [w.job[1] + self.timeout_s for w in self._workers if w.job]
        deadlines += [w.started_at + START_TIMEOUT_S for w in self._workers if not w.ready]
        return min(deadlines, default=time.monotonic() + self.timeout_s)

    def _replace(self, worker: _Worker) -> None:
        """Kill a worker and start a fresh one in its place (it gets ready asynchronously)."""
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self._ctx, list(self.weights))

    def _result(
        self,
        components: dict[str, float],
        latency_s: float,
        errors: list[str],
        *,
        timed_out: bool = False,
        data_error: str | None = None,
    ) -> ScoreResult:
        components = {name: components.get(name, 0.0) for name in self.weights}
        reward = sum(self.weights[name] * value for name, value in components.items())
        error = "; ".join(errors) if errors else None
        return ScoreResult(reward, components, latency_s, timed_out, error, data_error)
