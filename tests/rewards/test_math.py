import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewards import RewardDataError, extract_answer, final_answers, math_reward
from rewards.math import MAX_ANSWER_CHARS, MAX_INPUT_CHARS


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (r"<think>2+2</think> \boxed{4}", "4"),
        (r"first \boxed{3}, then \boxed{5}", "5"),  # the last one
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are literal
        (r"\boxed{3} and then \boxed{4", "3"),  # an unclosed box (truncated) does not count
        (r"<answer> 7 </answer> x <answer>8</answer>", "8"),
        (r"<answer>9</answer> but \boxed{10}", "10"),  # boxed wins over the answer tag
        ("<think>The answer is 5.</think>\n 6 ", "6"),  # after </think>, not inside it
        ("<think>work</think>So the answer is 12.", "12"),
        ("Therefore, the final answer is: -3.5.", "-3.5"),
        ("The answer is 1. No wait, the answer is **2**.", "2"),
        ("The answer is 7\nand more text", "7"),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "I do not know.",
        r"\boxed{}",  # blank
        "<think>still thinking, no end",
        "<think>done</think>   ",  # nothing after the think block
    ],
)
def test_extract_answer_none(completion):
    assert extract_answer(completion) is None


def test_extract_answer_refuses_long_answers():
    assert extract_answer(r"\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + "}") is None
    assert extract_answer(r"\boxed{" + "1" * MAX_ANSWER_CHARS + "}") == "1" * MAX_ANSWER_CHARS


def test_extract_answer_reads_only_the_tail():
    early = r"\boxed{1}"
    assert extract_answer(early + " " * MAX_INPUT_CHARS) is None
    assert extract_answer(early + " " * (MAX_INPUT_CHARS - len(early))) == "1"


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        (r"\boxed{42}", "42"),
        (r"\boxed{-17}", "-17"),
        (r"\boxed{0.5}", r"\frac{1}{2}"),  # equal as values
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{3/4}", "3/4"),
        (r"\boxed{\dfrac{3}{4}}", "0.75"),
        (r"\boxed{1,000}", "1000"),
        (r"\boxed{x = 3}", "3"),
        (r"\boxed{2\sqrt{3}}", r"\sqrt{12}"),
        ("<think>6*7</think>42", "42"),
        ("<answer>$-17$</answer>", "-17"),
        ("The answer is 3/4.", "3/4"),
        (r"\boxed{\{1, 2\}}", r"\{2, 1\}"),
    ],
)
def test_math_reward_correct(completion, answer):
    assert math_reward(completion, answer=answer) == 1.0


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        (r"\boxed{41}", "42"),
        (r"\boxed{17}", "-17"),  # the sign matters
        (r"\boxed{0.499}", r"\frac{1}{2}"),
        (r"\boxed{4/3}", "3/4"),
        ("no answer here", "42"),
        (r"\boxed{}", "42"),
        (r"\boxed{3 \text{ or } 4}", "3"),  # hedged: a set is not a number
        ("<think>?</think>3 or 4", "3"),
        (r"\boxed{3, 4}", "3"),
        (r"\boxed{3} wait, no: \boxed{4}", "3"),  # only the last box counts
        (r"\boxed{x}", "3"),
        (r"\boxed{\frac{1}{0}}", "1"),  # odd but harmless input
    ],
)
def test_math_reward_wrong(completion, answer):
    assert math_reward(completion, answer=answer) == 0.0


def test_math_reward_ignores_other_row_fields():
    assert math_reward(r"\boxed{5}", answer="5", question="2 + 3?", id=7) == 1.0


def test_math_reward_without_signal_timeouts():
    assert math_reward(r"\boxed{5}", answer="5", timeout_s=None) == 1.0


@pytest.mark.parametrize("answer", ["", "???", r"\frac{1}{", "("])
def test_unparsable_gold_answer_is_a_data_error(answer):
    with pytest.raises(RewardDataError, match=re.escape(f"gold answer {answer!r}")):
        math_reward(r"\boxed{5}", answer=answer)


def test_data_error_is_a_value_error():
    with pytest.raises(ValueError):
        math_reward("no answer at all", answer="")


def test_math_verify_timeouts_only_work_on_the_main_thread():
    with ThreadPoolExecutor(1) as executor:
        off = executor.submit(math_reward, r"\boxed{5}", answer="5", timeout_s=None)
        assert off.result() == 1.0
        on = executor.submit(math_reward, r"\boxed{5}", answer="6")
        with pytest.raises(ValueError, match="thread"):
            on.result()


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (r"<think>\boxed{1}</think> \boxed{2}", ["2"]),  # drafts in the think block do not count
        (r"\boxed{2} or \boxed{3}", ["2", "3"]),
        ("<think>x</think>The answer is 2. No, the answer is 3.", ["2", "3"]),
        ("<think>x</think><answer>2</answer><answer>3</answer>", ["2", "3"]),
        (r"<think>\boxed{1}</think>", []),  # nothing after the block
        (r"\boxed{" + "1" * (MAX_ANSWER_CHARS + 1) + r"} \boxed{2}", []),
    ],
)
def test_final_answers(completion, expected):
    assert final_answers(completion) == expected


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        (r"<think>x</think> \boxed{3} or \boxed{4}", "4", 0.0),  # hedging, gold is the last
        (r"<think>x</think> \boxed{3} or \boxed{4}", "3", 0.0),
        (r"<think>x</think> \boxed{4}, so \boxed{4}", "4", 1.0),  # repeating is not hedging
        (r"<think>x</think> \boxed{0.5} = \boxed{\frac{1}{2}}", "1/2", 1.0),  # same value
        (r"<think>x</think> \boxed{4} \boxed{4\sqrt(2)}", "4", 0.0),  # unparsable second answer
        (r"<think>\boxed{3}</think> \boxed{4}", "4", 1.0),  # a draft is not a hedge
    ],
)
def test_hedging_scores_zero(completion, answer, expected):
    assert math_reward(completion, answer=answer) == expected


@pytest.mark.parametrize(
    ("gold", "predicted"),
    [
        (r"\frac{1}{2^{99}}", r"\frac{1}{2^{98}}"),  # math-verify chops the 1.6e-30 difference
        (r"\frac{1}{2004!}", r"\frac{1}{2006!}"),
        ("2^{100}", "2^{100}+1"),
        ("3x-y+13=0", "3x+4y+14=0"),
        ("4", r"4\sqrt(2)"),  # malformed: math-verify's expression reader takes the 4
        ("10^{-7}", "0.0"),  # 6-decimal rounding of a float
        (r"\frac{x}{2^{99}}", r"\frac{x}{2^{98}}"),
        (r"\{\frac{1}{2^{99}}, 1\}", r"\{\frac{1}{2^{98}}, 1\}"),
    ],
)
def test_known_false_matches_of_math_verify_are_closed(gold, predicted):
    assert math_reward(rf"<think>x</think> \boxed{{{predicted}}}", answer=gold) == 0.0


@pytest.mark.parametrize(
    ("gold", "predicted"),
    [
        (r"\frac{1}{2^{99}}", "2^{-99}"),
        ("2^{100}", "1267650600228229401496703205376"),
        ("3x-y+13=0", "y = 3x + 13"),  # the same line: (3x-y+13) / (y-3x-13) = -1
        ("2x+3y=6", "4x+6y=12"),  # ratio 1/2
        (r"\frac{1}{3}", "0.333333"),  # a decimal to 6 places: relative error 1e-6 <= 1e-5
        ("x^2+2x+1", "(x+1)^2"),
    ],
)
def test_exact_checks_keep_true_matches(gold, predicted):
    assert math_reward(rf"<think>x</think> \boxed{{{predicted}}}", answer=gold) == 1.0


def test_missing_gold_answer_is_a_data_error():
    with pytest.raises(RewardDataError, match="no string field 'answer'"):
        math_reward(r"\boxed{5}")
    with pytest.raises(RewardDataError, match="no string field 'answer'"):
        math_reward(r"\boxed{5}", answer=5)


def test_model_text_is_never_evaluated(tmp_path):
    # math-verify's plain-expression reader hands text to sympy's parse_expr (which evals);
    # r1kit reads answers as LaTeX only.
    marker = tmp_path / "ran"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    assert math_reward(f"The answer is {payload}.", answer="1") == 0.0
    assert math_reward(rf"\boxed{{{payload}}}", answer="1") == 0.0
    assert not marker.exists()
