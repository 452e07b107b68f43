import pytest

from rewards import format_reward, get_reward, math_reward


def test_builtin_names():
    assert get_reward("math") is math_reward
    assert get_reward("format") is format_reward


def test_module_function():
    from tests.rewards import hostile

    assert get_reward("tests.rewards.hostile:raise_error") is hostile.raise_error


@pytest.mark.parametrize("name", ["nope", "", "Math", "rewards.math", ":x", "rewards.math:"])
def test_unknown_name_lists_the_known_ones(name):
    with pytest.raises(ValueError, match="use one of code, code_binary, environment, format, math"):
        get_reward(name)


def test_missing_function():
    with pytest.raises(ValueError, match="has no function 'nope'"):
        get_reward("rewards.math:nope")
    with pytest.raises(ValueError, match="has no function 'MAX_INPUT_CHARS'"):
        get_reward("rewards.math:MAX_INPUT_CHARS")  # exists, but is not callable


def test_missing_module_propagates():
    with pytest.raises(ModuleNotFoundError):
        get_reward("no_such_module_here:fn")
