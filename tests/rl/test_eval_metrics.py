"""pass@k, mean@k, maj@k: each figure derived by hand in its comment."""

import math
from fractions import Fraction

import pytest

from rl.eval_metrics import majority_vote, mean_at_k, pass_at_k, pass_curve


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 0, 1, 0.0),  # no correct sample: C(5, 1) / C(5, 1) = 1 -> 0
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),  # all correct: n - c = 0 < k
        (5, 5, 5, 1.0),
        (5, 2, 5, 1.0),  # k = n: any correct sample -> 1
        (5, 0, 5, 0.0),  # k = n, none correct -> 0
        (5, 3, 3, 1.0),  # k > n - c = 2: every 3-subset holds a correct one
        (10, 3, 1, 0.3),  # k = 1: c / n
        (5, 2, 2, 0.7),  # 1 - C(3, 2) / C(5, 2) = 1 - 3/10
        (4, 1, 2, 0.5),  # 1 - C(3, 2) / C(4, 2) = 1 - 3/6
        (10, 3, 5, 11 / 12),  # 1 - C(7, 5) / C(10, 5) = 1 - 21/252 = 1 - 1/12
    ],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-15)


def test_pass_at_k_is_the_exact_binomial_ratio_where_factorials_overflow_a_float():
    # c = 1: C(n - 1, k) / C(n, k) = (n - k) / n, so pass@k = k / n; C(2000, 1000) ~ 2e600
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5, abs=1e-12)
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4, rel=1e-12)
    # against exact rational arithmetic
    n, c, k = 300, 7, 40
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_pass_at_k_grows_with_k_and_with_c():
    assert [pass_at_k(8, 2, k) for k in range(1, 9)] == sorted(
        pass_at_k(8, 2, k) for k in range(1, 9)
    )
    assert [pass_at_k(8, c, 3) for c in range(9)] == sorted(pass_at_k(8, c, 3) for c in range(9))


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_at_k_is_the_mean_reward_not_the_fraction_correct():
    assert mean_at_k([1.0, 0.5, 0.0, 0.5]) == 0.5  # 2/4; only one is correct (>= 1)
    with pytest.raises(ValueError):
        mean_at_k([])


def test_majority_vote_most_frequent_then_first_given_and_none_abstains():
    assert majority_vote(["3", "4", "4"]) == 1  # "4" has 2 votes; its first sample is 1
    assert majority_vote([None, None, "7"]) == 2  # one vote beats abstentions
    assert majority_vote(["5", "4", "4", "5"]) == 0  # tie 2-2: "5" was given first
    assert majority_vote(["4", "5", "5", "4", "6"]) == 0
    assert majority_vote([None, "2", None, "1", "1"]) == 3
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote(["1/2", "0.5"]) == 0  # strings: two different answers, a tie


def test_pass_curve_averages_unbiased_pass_at_j_over_problems():
    # problem a: 2 of 4 correct; b: 0 of 4
    # pass@1 = (2/4 + 0) / 2 = 0.25; pass@2 = (1 - C(2,2)/C(4,2) + 0) / 2 = (5/6) / 2
    # pass@4 = (1 + 0) / 2
    curve = pass_curve(4, [2, 0])
    assert list(curve) == ["1", "2", "4"]
    assert curve["1"] == pytest.approx(0.25)
    assert curve["2"] == pytest.approx(5 / 12)
    assert curve["4"] == pytest.approx(0.5)
    assert list(pass_curve(6, [1])) == ["1", "2", "4", "6"]  # powers of 2, and n itself
    assert pass_curve(1, [1, 0]) == {"1": 0.5}
