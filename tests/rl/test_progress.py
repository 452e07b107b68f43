"""Progress lines when the output is not a terminal: readable, a few per stage, no \\r."""

import io

from rl.progress import StepProgress


def run(first, total, **kw):
    stream = io.StringIO()
    progress = StepProgress(first, total, "GRPO", stream=stream, interactive=False, **kw)
    steps = []
    for step in progress:
        progress.set_postfix(reward=f"{step / 100:.3f}")
        steps.append(step)
    return steps, stream.getvalue()


def test_a_line_every_twentieth_of_the_stage_and_at_the_end():
    steps, out = run(1, 200, max_quiet_s=1e9)
    assert steps == list(range(1, 201)) and "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 20  # steps 10, 20, ..., 200
    assert lines[0].startswith("GRPO 10/200 (5%) ") and lines[0].endswith(": reward 0.100")
    assert lines[-1].startswith("GRPO 200/200 (100%) ") and "ETA 0m00s" in lines[-1]


def test_a_resumed_stage_counts_from_where_it_starts_and_ends_on_its_last_step():
    steps, out = run(58, 63, max_quiet_s=1e9)  # every 3rd step of 63, and the last
    assert steps == [58, 59, 60, 61, 62, 63]
    assert [line.split()[1] for line in out.splitlines()] == ["60/63", "63/63"]


def test_a_quiet_stretch_longer_than_max_quiet_s_gets_a_line():
    _, out = run(1, 200, max_quiet_s=0.0)  # every step is "late"
    assert len(out.splitlines()) == 200


def test_a_terminal_gets_the_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    assert list(StepProgress(1, 3, "SFT", stream=stream)) == [1, 2, 3]
    assert "\r" in stream.getvalue()  # tqdm redraws in place
