"""Resumable training state, written atomically, the last N kept.

A checkpoint is a folder ``OUT/checkpoints/state/<stage>-<step>/`` holding

- ``learner/``: every rank's shard of the model and optimizer state
  (``torch.distributed.checkpoint``, one file per rank; on several machines the folder must
  be on a shared filesystem), and each rank's torch RNG state;
- ``driver.json``: the stage and step, the data order's position, the evaluations done so
  far, the number of metrics.jsonl rows written, and the wall time spent.

It is written under a temporary name and renamed when complete, so a run killed while
writing leaves the previous checkpoint as the latest. Everything else a step depends on is a
function of the step number (learning rate, sampling seeds, mini-batch shuffles), so
resuming from step k repeats steps k+1... exactly as an uninterrupted run takes them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

STAGES = ("sft", "grpo")


@dataclass
class DriverState:
    """What the driver needs to continue a run where a checkpoint left it."""

    stage: str
    step: int
    data_position: int
    summary: dict[str, Any] = field(default_factory=dict)
    metrics_rows: int = 0
    wall_seconds: float = 0.0


def state_root(out: Path) -> Path:
    return Path(out) / "checkpoints" / "state"


def save_checkpoint(learner: Any, out: Path, state: DriverState, keep_last: int) -> Path:
    """Write the learner's shards and the driver state to a new checkpoint; prune old ones."""
    root = state_root(out)
    name = f"{state.stage}-{state.step:06d}"
    final, tmp = root / name, root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    learner.save_state(str(tmp / "learner"))
    (tmp / "driver.json").write_text(json.dumps(asdict(state), indent=2) + "\n")
    if final.exists():  # the same step written again (a resumed run): replace it
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(out)[:-keep_last]:
        shutil.rmtree(old)
    return final


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = state_root(out)
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if (p / "driver.json").is_file() and "-" in p.name]
    done = [p for p in done if p.name.split("-")[0] in STAGES]

    def order(p: Path) -> tuple[int, int]:
        stage, step = p.name.split("-")
        return STAGES.index(stage), int(step)

    return sorted(done, key=order)


def load_driver_state(checkpoint: Path) -> DriverState:
    return DriverState(**json.loads((checkpoint / "driver.json").read_text()))


def _learner_state(model: Any, optimizer: Any, reference: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    if reference is not None:
        state["reference"] = get_model_state_dict(reference)
    return state


def save_learner_state(path: str, rank: int, model: Any, optimizer: Any, reference: Any) -> None:
    """One learner rank's part of a checkpoint's ``learner/`` folder: its shards of the
    FSDP2 model, the optimizer and the reference policy (if any; torch.distributed.checkpoint,
    every rank together) and its torch RNG state."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_learner_state(model, optimizer, reference), checkpoint_id=path)
    torch.save(torch.get_rng_state(), Path(path) / f"rng-rank{rank}.pt")


def load_learner_state(path: str, rank: int, model: Any, optimizer: Any, reference: Any) -> None:
    """Restore ``save_learner_state``'s shards into a set-up rank (same world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    state = _learner_state(model, optimizer, reference)
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    if reference is not None:
        set_model_state_dict(reference, state["reference"])
    torch.set_rng_state(torch.load(Path(path) / f"rng-rank{rank}.pt"))
