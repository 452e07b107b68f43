"""Learning-rate schedules, values derived by hand."""

import pytest

from rl.schedule import lr_at


def test_warmup_then_constant():
    # warm-up 4 steps to peak 2.0: 0.5, 1.0, 1.5, 2.0, then 2.0 flat
    assert [lr_at(s, 10, 2.0, warmup=4) for s in range(1, 7)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_linear_decay_reaches_ten_percent_at_the_last_step():
    # no warm-up, 11 steps: progress (s-1)/10, lr = 1 - 0.9 * progress
    # step 1 -> 1.0, step 6 -> 1 - 0.45 = 0.55, step 11 -> 0.1
    assert lr_at(1, 11, 1.0, schedule="linear") == pytest.approx(1.0)
    assert lr_at(6, 11, 1.0, schedule="linear") == pytest.approx(0.55)
    assert lr_at(11, 11, 1.0, schedule="linear") == pytest.approx(0.1)


def test_degenerate_and_unknown():
    assert lr_at(1, 1, 3.0, schedule="linear") == 3.0  # a single step gets the peak
    with pytest.raises(ValueError, match="unknown lr schedule 'cosine'"):
        lr_at(1, 5, 1.0, schedule="cosine")


def test_wsd_is_flat_then_decays_over_the_last_fifth():
    # 10 steps, no warm-up: decay starts after step 8 (80%); steps 9, 10 -> 1 - 0.9 * (1/2, 2/2)
    lrs = [lr_at(s, 10, 1.0, schedule="wsd") for s in range(1, 11)]
    assert lrs[:8] == [1.0] * 8
    assert lrs[8:] == pytest.approx([0.55, 0.1])
