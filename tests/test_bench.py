"""The benchmark's arithmetic (bench/compare.py): what a figure in the README is computed from."""

import pytest

from bench.compare import PHASES, median_run, summarize


def step(wall: float, reward: float, samples: int = 128, tokens: int = 2000) -> dict:
    return {
        "wall": wall,
        "samples": samples,
        "completion_tokens": tokens,
        "reward_mean": reward,
        **dict.fromkeys(PHASES, 0.1),
    }


def test_throughput_leaves_the_first_step_out_and_reward_covers_every_step():
    steps = [step(10.0, 0.0), step(11.0, 0.5), step(13.0, 1.0)]  # step 1 ends at 10 s
    r = summarize(steps, peak_mb=1234.4, setup_s=5.0, wall_s=20.0)
    assert r["samples_per_s"] == pytest.approx(256 / 3.0)  # steps 2..3 over 10 s -> 13 s
    assert r["tokens_per_s"] == pytest.approx(4000 / 3.0)
    assert r["mean_reward"] == pytest.approx(0.5)
    assert r["step_s"] == pytest.approx(1.5)
    assert r["peak_rss_mb"] == 1234
    assert set(r["time_split"]) == set(PHASES)


def test_a_run_of_one_step_is_refused():
    with pytest.raises(SystemExit, match="at least 2"):
        summarize([step(1.0, 0.0)], 1.0, None, 1.0)


def test_the_median_is_one_real_run():
    runs = [{"samples_per_s": s, "id": i} for i, s in enumerate([5.0, 1.0, 3.0])]
    assert median_run(runs)["id"] == 2
    assert median_run(runs[:2])["id"] == 1  # even count: the lower middle


def test_time_to_the_synchronous_reward_uses_the_trailing_mean():
    from bench.staleness import WINDOW, final_reward, wall_to_reward

    rewards = [0.0] * WINDOW + [1.0] * WINDOW
    walls = [float(i + 1) for i in range(len(rewards))]
    assert final_reward(rewards) == 1.0
    # the trailing mean first reaches 0.6 at the window's 3rd all-1 step
    assert wall_to_reward(rewards, walls, 0.6) == walls[WINDOW + 2]
    assert wall_to_reward(rewards, walls, 1.0) == walls[-1]
    assert wall_to_reward(rewards, walls, 1.1) is None
