"""rl.checkpoint's filesystem rules: the newest ``keep_last`` checkpoints stay, in stage then
step order; a checkpoint appears complete or not at all; writing a step again replaces it.

The learner is a stand-in whose ``save_state`` writes one file: these rules are the driver's,
whatever the learner writes. The real sharded save and its restore are covered by
tests/rl/test_resume.py.
"""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from rl.checkpoint import DriverState, list_checkpoints, save_checkpoint


class FileLearner:
    """Writes ``shard.txt`` (holding ``tag``) where ``save_state`` is told to; with ``fail``
    it raises after that first file, as a run killed or out of disk mid-save would."""

    def __init__(self, tag: str = "", fail: bool = False) -> None:
        self.tag, self.fail = tag, fail

    def save_state(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "shard.txt").write_text(self.tag)
        if self.fail:
            raise OSError("No space left on device")


def names(out: Path) -> list[str]:
    return [p.name for p in list_checkpoints(out)]


def state(stage: str, step: int, **kw) -> DriverState:
    return DriverState(stage=stage, step=step, data_position=10 * step, **kw)


def test_keep_last_keeps_the_newest_by_stage_then_step(tmp_path):
    saved = []
    for stage, step in [("sft", 9), ("sft", 10), ("grpo", 1), ("grpo", 2)]:
        save_checkpoint(FileLearner(), tmp_path, state(stage, step), keep_last=2)
        saved.append(names(tmp_path))
    # oldest first; grpo comes after sft although "grpo" < "sft" by name
    assert saved == [
        ["sft-000009"],
        ["sft-000009", "sft-000010"],
        ["sft-000010", "grpo-000001"],
        ["grpo-000001", "grpo-000002"],
    ]
    # the pruned ones are gone from disk, not only from the listing
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "state").iterdir()) == [
        "grpo-000001",
        "grpo-000002",
    ]


def test_listing_orders_by_step_number_and_skips_foreign_folders(tmp_path):
    root = tmp_path / "checkpoints" / "state"
    for name in ["grpo-000100", "grpo-000020", "sft-000300", "notes-000001", "grpo-000003"]:
        (root / name).mkdir(parents=True)
        (root / name / "driver.json").write_text("{}")
    (root / "grpo-000500").mkdir()  # no driver.json: not a complete checkpoint
    assert names(tmp_path) == ["sft-000300", "grpo-000003", "grpo-000020", "grpo-000100"]


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_the_latest(tmp_path):
    before = state("grpo", 2, metrics_rows=7)
    save_checkpoint(FileLearner("step 2"), tmp_path, before, keep_last=2)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(FileLearner("step 4", fail=True), tmp_path, state("grpo", 4), keep_last=2)
    assert names(tmp_path) == ["grpo-000002"]
    # a failed re-write of that very step (a resumed run repeating it) leaves it intact too
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(FileLearner("again", fail=True), tmp_path, state("grpo", 2), keep_last=2)
    assert names(tmp_path) == ["grpo-000002"]
    latest = list_checkpoints(tmp_path)[-1]
    assert (latest / "learner" / "shard.txt").read_text() == "step 2"
    assert json.loads((latest / "driver.json").read_text()) == asdict(before)
    # the half-written folder is there, under its temporary name, unlisted
    stale = tmp_path / "checkpoints" / "state" / ".tmp-grpo-000002"
    assert (stale / "learner" / "shard.txt").read_text() == "again"


def test_a_stale_temporary_folder_is_ignored_then_replaced(tmp_path):
    # Killed after driver.json was written but before the rename: complete-looking, yet hidden.
    stale = tmp_path / "checkpoints" / "state" / ".tmp-grpo-000004"
    (stale / "learner").mkdir(parents=True)
    (stale / "learner" / "leftover.txt").write_text("from the killed run")
    (stale / "driver.json").write_text(json.dumps(asdict(state("grpo", 4))))
    assert names(tmp_path) == []
    now = state("grpo", 4, metrics_rows=9)
    final = save_checkpoint(FileLearner("resumed"), tmp_path, now, keep_last=2)
    assert final.name == "grpo-000004" and names(tmp_path) == ["grpo-000004"]
    assert sorted(p.name for p in (final / "learner").iterdir()) == ["shard.txt"]  # nothing stale
    assert json.loads((final / "driver.json").read_text()) == asdict(now)
    assert not stale.exists()


def test_writing_the_same_step_again_replaces_it(tmp_path):
    save_checkpoint(FileLearner("first"), tmp_path, state("grpo", 6, metrics_rows=1), keep_last=2)
    (list_checkpoints(tmp_path)[-1] / "learner" / "extra.txt").write_text("only in the first")
    again = state("grpo", 6, metrics_rows=2)
    save_checkpoint(FileLearner("second"), tmp_path, again, keep_last=2)
    assert names(tmp_path) == ["grpo-000006"]
    [final] = list_checkpoints(tmp_path)
    assert sorted(p.name for p in (final / "learner").iterdir()) == ["shard.txt"]
    assert (final / "learner" / "shard.txt").read_text() == "second"
    assert json.loads((final / "driver.json").read_text()) == asdict(again)
