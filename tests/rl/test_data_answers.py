r"""Answer normalizers (rl/answers.py): GSM8K's ``#### N`` and MATH's last ``\boxed{}``, on the
texts the datasets really hold and on the ones that break naive extractors."""

import pytest

from rl.answers import ANSWER_FORMATS, boxed_answer, gsm8k_answer, raw_answer

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GSM8K_SOLUTION, "72"),
        ("It costs 1,000 + 234 = <<1000+234=1234>>1,234.\n#### 1,234", "1234"),
        ("####1234567", "1234567"),
        ("#### 1,234,567", "1234567"),
        ("The loss is 3 - 8 = -5.\n####   -5  \n", "-5"),  # spaces around, a trailing newline
        ("#### +7", "+7"),
        ("#### 2.50", "2.50"),  # kept as written: math-verify compares values
        ("#### -0.5", "-0.5"),
        ("#### .5", ".5"),
        ("An aside: #### 3 was a typo.\n#### 4", "4"),  # the last mark wins
    ],
)
def test_gsm8k_reads_the_number_after_the_last_mark(text, expected):
    assert gsm8k_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("She has 72 clips.", r"no '#### <number>' in 'She has 72 clips.'"),
        ("#### ", "'#### ' is not a number"),
        ("#### 72 clips", "'#### 72 clips' is not a number"),
        ("#### 1,2,3", "'#### 1,2,3' is not a number"),  # commas that do not group thousands
        ("#### 12,34", "'#### 12,34' is not a number"),
        ("#### $18", r"'#### \$18' is not a number"),
        ("#### 7\nThe end.", "is not a number"),  # text after the number
        ("#### 3/4", "'#### 3/4' is not a number"),
    ],
)
def test_gsm8k_refuses_what_is_not_one_number(text, reason):
    with pytest.raises(ValueError, match=reason):
        gsm8k_answer(text)


def test_gsm8k_error_quotes_the_end_of_a_long_solution():
    text = "x" * 200 + " the end"
    with pytest.raises(ValueError, match=r"in '\.\.\.x+ the end'$") as info:
        gsm8k_answer(text)
    assert len(str(info.value)) < 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"So $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),  # nested braces
        (r"$\boxed{\sqrt{\frac{a^{2}}{b_{1}}}}$", r"\sqrt{\frac{a^{2}}{b_{1}}}"),  # deeper
        (r"First $\boxed{3}$ then, correcting it, $\boxed{4}$.", "4"),  # several: the last
        (r"The answer is $\fbox{12}$.", "12"),  # MATH writes a few with \fbox
        (r"$\boxed {5}$", "5"),  # TeX allows a space before the group
        (r"\boxed{ 7 }", "7"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"Write it as \boxed{}. We get \boxed{9}.", "9"),  # an empty box in the text
        (r"We get \boxed{9}. (Answers go in \boxed{}.)", "9"),  # ... even after the answer
        (r"\boxed{\text{(C)}}", r"\text{(C)}"),
        (r"\boxed{2} and \boxed{3", "2"),  # a box that never closes is no box
        (r"\boxed{\boxed{6}}", "6"),  # the inner box opens last
    ],
)
def test_math_reads_the_last_boxed_content(text, expected):
    assert boxed_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 4.",
        r"\boxed{}",
        r"\boxed{  }",
        r"\boxed{4",
        r"\boxed4",  # no group: not something MATH writes
        r"\mathbf{boxed}{4}",
    ],
)
def test_math_refuses_a_solution_without_a_box(text):
    with pytest.raises(ValueError, match=r"no \\boxed\{\.\.\.\} in"):
        boxed_answer(text)


def test_raw_keeps_the_text_and_the_names_are_the_recipe_choices():
    assert raw_answer(" #### 72 ") == " #### 72 "
    assert set(ANSWER_FORMATS) == {"raw", "gsm8k", "math"}
