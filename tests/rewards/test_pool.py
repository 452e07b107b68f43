"""RewardPool with real worker processes; each test checks one hostile property."""

import multiprocessing as mp
import os
import time

import pytest

from rewards import RewardDataError, RewardPool, RewardSetupError, ScoreResult, stats

TIMEOUT_S = 1.5
HOSTILE = "tests.rewards.hostile:"
REWARDS = {
    "math": 1.0,
    "format": 0.5,
    # Weight 0: they only misbehave on their trigger word (see hostile.py).
    **{
        HOSTILE + name: 0.0
        for name in [
            "sleep_forever",
            "sleep_briefly",
            "raise_error",
            "raise_timeout",
            "exit_process",
            "spawn_and_hang",
            "refuse_setup",
        ]
    },
}


@pytest.fixture(scope="module")
def pool():
    with RewardPool(REWARDS, num_workers=2, timeout_s=TIMEOUT_S) as pool:
        pool.score(["warm up"] * 2, [{"answer": "1"}] * 2)  # start both workers
        yield pool


def worker_pids() -> set[int]:
    return {p.pid for p in mp.active_children() if p.name == "reward-worker"}


def boxed(value) -> str:
    return f"<think>...</think> \\boxed{{{value}}}"


def test_results_keep_input_order(pool):
    # Sample 0 is slow, so it finishes after the others; odd samples are wrong.
    completions = [boxed(0) + " SLOW"] + [boxed(i) for i in range(1, 8)]
    rows = [{"answer": str(i if i % 2 == 0 else i + 100)} for i in range(8)]
    results = pool.score(completions, rows)
    # Even: math 1.0 * 1.0 + format 1.0 * 0.5 = 1.5; odd: format only, 0.5.
    assert [r.reward for r in results] == [1.5, 0.5] * 4
    assert [r.components["math"] for r in results] == [1.0, 0.0] * 4
    assert results[0].latency_s >= 0.5
    assert stats(results)["reward_errors"] == stats(results)["reward_timeouts"] == 0


def test_hanging_reward_times_out_and_the_pool_recovers(pool):
    results = pool.score([boxed(1) + " HANG", boxed(2)], [{"answer": "1"}, {"answer": "2"}])
    hung, fine = results
    assert hung.timed_out and hung.reward == 0.0 and hung.error is None
    assert set(hung.components.values()) == {0.0}  # the killed worker's scores are lost
    # killed once its time was up, not before; the upper bound only catches a kill that
    # waited for something else (10x the timeout: not a speed check)
    assert TIMEOUT_S <= hung.latency_s < 10 * TIMEOUT_S
    assert fine == ScoreResult(1.5, fine.components, fine.latency_s)
    assert stats(results)["reward_timeouts"] == 1
    # The killed worker is replaced, and the pool keeps serving correct results.
    rows = [{"answer": "3"}, {"answer": "4"}, {"answer": "6"}]
    again = pool.score([boxed(3), boxed(4), boxed(5)], rows)
    assert [r.reward for r in again] == [1.5, 1.5, 0.5]


def test_raising_reward_scores_zero_and_is_counted(pool):
    before = worker_pids()
    results = pool.score([boxed(3) + " RAISE", boxed(3) + " ALARM"], [{"answer": "3"}] * 2)
    raised, alarmed = results
    assert raised.components[HOSTILE + "raise_error"] == 0.0
    assert raised.error == "ZeroDivisionError: division by zero"
    # math-verify's TimeoutException is a BaseException: caught and counted all the same.
    assert alarmed.error == "TimeoutException: Operation timed out!"
    # The other rewards of the same sample still count.
    assert raised.reward == alarmed.reward == 1.5
    assert stats(results)["reward_errors"] == 2
    assert worker_pids() == before  # the workers survived


def test_crashing_worker_scores_zero_and_is_counted(pool):
    results = pool.score([boxed(1) + " EXIT", boxed(1)], [{"answer": "1"}] * 2)
    assert results[0].reward == 0.0
    assert results[0].error == "WorkerDied: exit code 3"
    assert results[1].reward == 1.5
    assert pool.score([boxed(2)], [{"answer": "2"}])[0].reward == 1.5


def test_a_kill_also_ends_what_the_reward_started(pool, tmp_path):
    pid_file = tmp_path / "pid"
    row = {"answer": "1", "pid_file": str(pid_file)}
    [result] = pool.score(["ORPHAN"], [row])
    assert result.timed_out
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 2.0
    while is_running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_running(grandchild)


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for a slow init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_bad_data_row_raises_and_the_pool_recovers(pool):
    with pytest.raises(RewardDataError, match="gold answer '\\?\\?\\?'"):
        pool.score([boxed(1), boxed(1)], [{"answer": "1"}, {"answer": "???"}])
    assert [r.reward for r in pool.score([boxed(1)], [{"answer": "1"}])] == [1.5]


def test_bad_data_rows_can_be_reported_instead(pool):
    rows = [{"answer": "1"}, {"answer": "???"}, {"answer": "3"}]
    results = pool.score([boxed(1), boxed(2), boxed(3)], rows, on_data_error="report")
    assert [r.data_error is None for r in results] == [True, False, True]
    assert "gold answer '???'" in results[1].data_error
    assert [r.reward for r in results] == [1.5, 0.0, 1.5]
    assert stats(results)["reward_errors"] == 0  # a bad row is not a reward error


def test_a_setup_error_always_stops_scoring(pool):
    for mode in ("raise", "report"):
        with pytest.raises(RewardSetupError, match="no sandbox here"):
            pool.score([boxed(1) + " NOSANDBOX"], [{"answer": "1"}], on_data_error=mode)
    assert [r.reward for r in pool.score([boxed(1)], [{"answer": "1"}])] == [1.5]


def test_workers_start_lazily_are_reused_and_reaped():
    others = worker_pids()
    with RewardPool({"format": 1.0}, num_workers=1) as pool:
        assert worker_pids() == others
        first = pool.score(["<think>x</think> y"], [{}])
        ours = worker_pids() - others
        assert len(ours) == 1
        second = pool.score(["nope"], [{}])
        assert worker_pids() - others == ours
    assert [first[0].reward, second[0].reward] == [1.0, 0.0]
    assert not worker_pids() & ours
    with pytest.raises(ProcessLookupError):  # reaped, not a zombie
        os.kill(ours.pop(), 0)


def test_a_released_pool_stops_its_workers_and_starts_new_ones_when_used_again():
    others = worker_pids()
    with RewardPool({"format": 1.0}, num_workers=1) as pool:
        pool.score(["<think>x</think> y"], [{}])
        first = worker_pids() - others
        pool.release()
        assert not worker_pids() & first  # reaped: their memory is free
        again = pool.score(["<think>x</think> y"], [{}])
        assert again[0].reward == 1.0 and len(worker_pids() - others - first) == 1


def test_a_worker_that_cannot_start_is_an_error():
    pool = RewardPool({"tests.rewards.broken_in_worker:reward": 1.0}, num_workers=1)
    with pool, pytest.raises(RuntimeError, match="exited during start-up"):
        pool.score(["x"], [{}])


def test_arguments_are_checked_before_any_worker_starts():
    default = min(8, max(1, (os.cpu_count() or 1) - 1))
    with RewardPool({"format": 1.0}) as pool:
        assert pool.num_workers == default
        assert pool.score([], []) == []
        with pytest.raises(ValueError, match="2 completions but 1 rows"):
            pool.score(["a", "b"], [{}])
        with pytest.raises(ValueError, match="on_data_error"):
            pool.score(["a"], [{}], on_data_error="ignore")
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        RewardPool({"nope": 1.0})
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(["a"], [{}])


def test_stats():
    results = [ScoreResult(0.0, {}, latency, timed_out=latency > 3) for latency in range(1, 5)]
    results[0] = ScoreResult(0.0, {}, 1.0, error="ValueError: x")
    # Latencies 1, 2, 3, 4: mean 2.5; the p99 nearest rank is ceil(0.99 * 4) = 4th, i.e. 4.
    assert stats(results) == {
        "reward_timeouts": 1,
        "reward_errors": 1,
        "reward_latency_mean_s": 2.5,
        "reward_latency_p99_s": 4,
    }
    assert stats([])["reward_latency_p99_s"] == 0.0


def test_a_rows_reference_completion_does_not_replace_the_scored_one(pool):
    # SFT rows carry their own "completion"; the reward must grade the sampled text.
    rows = [{"answer": "3", "completion": boxed(3)}, {"answer": "3", "completion": boxed(9)}]
    results = pool.score([boxed(9), boxed(3)], rows)
    assert [r.components["math"] for r in results] == [0.0, 1.0]
    assert stats(results)["reward_errors"] == 0
