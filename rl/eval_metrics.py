r"""pass@k, mean@k and maj@k of k sampled completions per problem: pure functions.

For one problem with n sampled completions of which c are correct:

- ``pass_at_k(n, c, k)``: the unbiased estimator of pass@k of Chen et al. 2021 ("Evaluating
  Large Language Models Trained on Code", eq. 1), the probability that k of the n samples,
  drawn without replacement, hold at least one correct one::

      pass@k = 1 - C(n - c, k) / C(n, k)

  With n = k it is 1 if any sample is correct, else 0; with n > k it has lower variance than
  drawing k samples once. Computed as their numerically stable product, no factorials::

      C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)

  (both sides equal (n - c)! (n - k)! / ((n - c - k)! n!)); pass@k is 1 when n - c < k
  (every k of the n hold a correct one).
- ``mean_at_k(rewards)``: the mean reward of the k samples (for a 0/1 reward, the sampled
  pass@1 = c / n).
- ``majority_vote(answers)``: which sample's answer maj@k takes: the answer given by the most
  samples (answers compared as strings; samples without an answer (None) do not vote), ties
  broken by the answer first given in sample order. maj@k is that sample's correctness.

A data set's figure is the mean of its problems' figures (each problem counts once).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct, 1 <= k <= n.

    >>> pass_at_k(n=4, c=1, k=2)  # 1 - C(3, 2) / C(4, 2) = 1 - 3/6
    0.5
    >>> pass_at_k(n=4, c=3, k=2)  # n - c = 1 < k: every pair holds a correct sample
    1.0
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_at_k(rewards: Sequence[float]) -> float:
    """The mean reward of one problem's samples.

    >>> mean_at_k([1.0, 0.0, 0.5, 0.5])
    0.5
    """
    if not rewards:
        raise ValueError("mean@k of no samples")
    return sum(rewards) / len(rewards)


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """The index of the first sample giving the most frequent answer; None if no sample
    gives one. Ties go to the answer that appears first.

    >>> majority_vote(["4", None, "5", "5", "4"])  # 4 and 5 tie at 2 votes; 4 came first
    0
    >>> majority_vote(["4", "5", "5"]), majority_vote([None, None])
    (1, None)
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    most = max(votes.values())
    return next(i for i, a in enumerate(answers) if a is not None and votes[a] == most)


def pass_curve(n: int, correct: Sequence[int]) -> dict[str, float]:
    """Mean unbiased pass@j over problems for j = 1, 2, 4, ... up to n, and n itself, from
    ``correct[p]`` correct samples of ``n`` for each problem p.

    >>> pass_curve(4, [1, 0])  # pass@1 = (1/4 + 0) / 2; pass@2 = (0.5 + 0) / 2; pass@4 = 1/2
    {'1': 0.125, '2': 0.25, '4': 0.5}
    """
    ks = sorted({2**e for e in range(n.bit_length()) if 2**e <= n} | {n})
    return {str(k): sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}
