import doctest

import pytest

import rewards.format
import rewards.math
import rewards.math_compare
import rewards.registry
import rewards.shaping


@pytest.mark.parametrize(
    "module",
    [rewards.math, rewards.math_compare, rewards.format, rewards.registry, rewards.shaping],
)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
