import pytest

from rewards import overlong_penalty


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        # max_length 20, buffer 8: no penalty up to 12, then (12 - L) / 8 down to -1 at 20.
        (0, 0.0),
        (12, 0.0),  # the last length without a penalty
        (13, -0.125),  # (12 - 13) / 8
        (16, -0.5),  # (12 - 16) / 8
        (19, -0.875),  # (12 - 19) / 8
        (20, -1.0),  # at the cap: (12 - 20) / 8
        (21, -1.0),  # past the cap (a caller that did not truncate)
        (1000, -1.0),
    ],
)
def test_linear_ramp_over_the_buffer(length, expected):
    assert overlong_penalty(length, max_length=20, buffer=8) == expected


def test_buffer_equal_to_max_length_penalises_from_the_first_token():
    # start = 0: L = 1 gives -1/4, L = 4 gives -1.
    assert overlong_penalty(0, max_length=4, buffer=4) == 0.0
    assert overlong_penalty(1, max_length=4, buffer=4) == -0.25
    assert overlong_penalty(4, max_length=4, buffer=4) == -1.0


def test_buffer_of_one_is_a_step_at_the_cap():
    assert overlong_penalty(9, max_length=10, buffer=1) == 0.0
    assert overlong_penalty(10, max_length=10, buffer=1) == -1.0


@pytest.mark.parametrize(
    ("length", "max_length", "buffer"), [(5, 10, 0), (5, 10, 11), (5, 10, -1), (-1, 10, 4)]
)
def test_bad_arguments(length, max_length, buffer):
    with pytest.raises(ValueError):
        overlong_penalty(length, max_length=max_length, buffer=buffer)
