import pytest

from rewards import format_reward


@pytest.mark.parametrize(
    "completion",
    [
        "<think>2 + 2 = 4</think>4",
        "<think>\nreasoning\n</think>\n\n<answer>4</answer>",
        "<think></think> 4",  # empty reasoning is allowed; the answer is what is required
        "<think>a\nb\nc</think>\tThe answer is 4.",
    ],
)
def test_well_formed(completion):
    assert format_reward(completion) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "4",
        "<think>no end",
        "<think>reasoning</think>",  # no answer
        "<think>reasoning</think>  \n ",  # blank answer
        " <think>x</think> 4",  # something before <think>
        "Sure! <think>x</think> 4",
        "<think>a</think><think>b</think> 4",  # two think blocks
        "<think>a</think> 4 </think> 5",  # a second </think>
        "<think>a <think> b</think> 4",  # nested <think>
        "x</think> 4",  # starts inside the block, but the prompt did not open it
    ],
)
def test_malformed(completion):
    assert format_reward(completion) == 0.0


def test_prompt_ending_in_think():
    assert format_reward("reasoning</think> 4", prompt_has_think=True) == 1.0
    assert format_reward("</think> 4", prompt_has_think=True) == 1.0
    assert format_reward("reasoning</think>", prompt_has_think=True) == 0.0
    assert format_reward("reasoning, no end", prompt_has_think=True) == 0.0
    # The prompt opened the block already: opening it again makes two.
    assert format_reward("<think>reasoning</think> 4", prompt_has_think=True) == 0.0


def test_ignores_other_row_fields():
    assert format_reward("<think>x</think> 4", answer="4", question="?") == 1.0
