"""Dashboards: the TensorBoard event files MetricsLog writes, read back; wandb through a
stand-in module (the real one needs an account or writes offline runs; see the last test)."""

import json
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rl.config import load_recipe
from rl.dashboards import TensorBoard, run_log
from rl.errors import ConfigError
from rl.metrics import MetricsLog


def read_board(logdir):
    board = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    board.Reload()
    scalars = {  # (steps, values); values are float32 in the event files
        tag: ([e.step for e in board.Scalars(tag)], [e.value for e in board.Scalars(tag)])
        for tag in board.Tags()["scalars"]
    }
    texts = {
        tag.removesuffix("/text_summary"): [
            (e.step, e.tensor_proto.string_val[0].decode()) for e in board.Tensors(tag)
        ]
        for tag in board.Tags()["tensors"]
    }
    return scalars, texts


def samples(n, consumed):
    for i in range(n):
        consumed.append(i)
        yield {"prompt": f"<user>{i}+{i}", "completion": f"{2 * i}\nend", "reward": float(i)}


def write_a_run(log):
    consumed = []
    log.write(step=1, stage="sft", loss=2.5, grad_norm=1.0, lr=1e-3)
    log.write(step=2, stage="sft", loss=1.5, grad_norm=0.5, lr=1e-3)
    log.write(step=None, stage="eval_sft", accuracy=0.25, n=8)
    for step, reward in ((1, 0.25), (2, 0.5)):
        log.write_samples("grpo", step, samples(3, consumed))
        log.write(
            step=step,
            stage="grpo",
            reward_mean=reward,
            kl=None,  # no reference policy
            ratio_min=float("inf"),  # no update: null in metrics.jsonl
            expert_load={"1": [3, 1], "2": [2, 2]},
            expert_load_cv={"1": 0.5, "2": 0.0},
        )
    log.write(step=None, stage="eval_grpo", accuracy=0.5, n=8, k=4, **{"pass@k": 0.75})
    log.write_samples("eval_grpo", None, samples(5, consumed))
    log.close()
    return consumed


def test_event_files_hold_every_numeric_field_by_stage_at_its_step(tmp_path):
    log = MetricsLog(
        tmp_path / "metrics.jsonl",
        dashboards=[TensorBoard(tmp_path / "tb")],
        samples=2,
        samples_every=2,
    )
    consumed = write_a_run(log)
    scalars, texts = read_board(tmp_path / "tb")
    assert scalars["sft/loss"] == ([1, 2], [2.5, 1.5])
    assert scalars["sft/lr"][1] == pytest.approx([1e-3, 1e-3], rel=1e-6)
    assert scalars["grpo/reward_mean"] == ([1, 2], [0.25, 0.5])
    assert scalars["grpo/expert_load_cv/1"] == ([1, 2], [0.5, 0.5])  # a dict: one per layer
    # evaluations at the last step of the stage they follow
    assert scalars["eval/sft/accuracy"] == ([2], [0.25]) and scalars["eval/sft/n"] == ([2], [8])
    assert scalars["eval/grpo/pass@k"] == ([2], [0.75]) and scalars["eval/grpo/k"] == ([2], [4])
    assert not [t for t in scalars if "expert_load/" in t or "kl" in t or "ratio_min" in t]
    assert not [t for t in scalars if t.endswith("/step") or t.endswith("/stage")]
    # samples: every 2nd GRPO step, the first 2; and the evaluation's first 2
    assert list(texts) == ["grpo/completions", "eval/grpo/completions"]
    ((step, text),) = texts["grpo/completions"]
    assert step == 2 and "reward 1.000" in text and "    <user>1+1" in text and "    end" in text
    assert "<user>2+2" not in text
    assert [s for s, _ in texts["eval/grpo/completions"]] == [2]
    assert consumed == [0, 1, 0, 1]  # step 1's generator was never read, nor past 2 items
    # metrics.jsonl is as it was: nulls where a value is missing or not finite
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[3] == {
        "step": 1,
        "stage": "grpo",
        "reward_mean": 0.25,
        "kl": None,
        "ratio_min": None,
        "expert_load": {"1": [3, 1], "2": [2, 2]},
        "expert_load_cv": {"1": 0.5, "2": 0.0},
    }
    assert rows[2] == {"step": None, "stage": "eval_sft", "accuracy": 0.25, "n": 8}


def test_a_resumed_run_rewrites_its_event_files_from_the_rows_it_kept(tmp_path):
    first = MetricsLog(tmp_path / "metrics.jsonl", dashboards=[TensorBoard(tmp_path / "tb")])
    for step in (1, 2, 3):
        first.write(step=step, stage="grpo", reward_mean=step / 10)
    first.close()
    # the checkpoint had seen 2 rows: step 3 runs again, with another result
    resumed = MetricsLog(
        tmp_path / "metrics.jsonl",
        keep_rows=2,
        dashboards=[TensorBoard(tmp_path / "tb", fresh=True)],
    )
    resumed.write(step=3, stage="grpo", reward_mean=0.9)
    resumed.write(step=None, stage="eval_grpo", accuracy=0.5, n=4)
    resumed.close()
    scalars, _ = read_board(tmp_path / "tb")
    steps, values = scalars["grpo/reward_mean"]
    assert steps == [1, 2, 3] and values == pytest.approx([0.1, 0.2, 0.9], rel=1e-6)
    assert scalars["eval/grpo/accuracy"] == ([3], [0.5])
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def test_the_recipe_chooses_the_dashboards(tmp_path):
    log = run_log(load_recipe("recipes/demo.yaml", ["logging.samples=3"]), tmp_path)
    assert [type(b).__name__ for b in log.dashboards] == ["TensorBoard"]
    assert (log.samples, log.samples_every) == (3, 10)  # log_every
    log.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    off = run_log(load_recipe("recipes/demo.yaml", ["logging.tensorboard=false"]), tmp_path / "b")
    assert off.dashboards == []
    off.close()


class FakeWandb(types.ModuleType):
    """What r1kit calls of wandb: init -> run (define_metric, log, finish), Table."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.calls = [], []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        calls = self.calls

        class Run:
            def define_metric(self, name, step_metric=None):
                calls.append(("define_metric", name, step_metric))

            def log(self, data):
                calls.append(("log", data))

            def finish(self):
                calls.append(("finish",))

        return Run()

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data


def test_wandb_gets_the_same_names_each_stage_on_its_own_step_axis(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    recipe = load_recipe(
        "recipes/demo.yaml",
        ["logging.wandb={project: r1kit-test, mode: offline}", "logging.tensorboard=false"],
    )
    log = run_log(recipe, tmp_path)
    log.write(step=1, stage="sft", loss=2.0)
    log.write(step=10, stage="grpo", reward_mean=0.5, expert_load_cv={"1": 0.25})
    log.write_samples("grpo", 10, iter([{"prompt": "p", "completion": "c", "reward": 1.0}]))
    log.write(step=None, stage="eval_grpo", accuracy=0.75, n=4)
    log.close()
    (init,) = fake.inits
    assert (init["project"], init["name"], init["mode"]) == ("r1kit-test", "demo", "offline")
    assert init["dir"] == str(tmp_path) and init["config"]["grpo"]["steps"] == 200
    assert ("define_metric", "grpo/*", "grpo/step") in fake.calls
    assert ("define_metric", "eval/grpo/*", "eval/grpo/step") in fake.calls
    logged = [c[1] for c in fake.calls if c[0] == "log"]
    assert logged[0] == {"sft/loss": 2.0, "sft/step": 1}
    assert logged[1] == {"grpo/reward_mean": 0.5, "grpo/expert_load_cv/1": 0.25, "grpo/step": 10}
    table = logged[2]["grpo/completions"]
    assert table.columns == ["prompt", "completion", "reward"] and table.data == [["p", "c", 1.0]]
    assert logged[3] == {"eval/grpo/accuracy": 0.75, "eval/grpo/n": 4.0, "eval/grpo/step": 10}
    assert fake.calls[-1] == ("finish",)


def test_wandb_asked_for_but_not_installed_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    recipe = load_recipe("recipes/demo.yaml", ["logging.wandb.project=p"])
    with pytest.raises(ConfigError, match="'logging.wandb.project' is set but wandb is not"):
        run_log(recipe, tmp_path)


@pytest.mark.slow
def test_real_wandb_writes_an_offline_run(tmp_path, monkeypatch):
    """Runs where wandb is installed (not in r1kit's dependencies); ~30 s: wandb's service."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = load_recipe(
        "recipes/demo.yaml",
        ["logging.wandb={project: r1kit-test, mode: offline}", "logging.tensorboard=false"],
    )
    log = run_log(recipe, tmp_path)
    log.write(step=1, stage="grpo", reward_mean=0.5)
    log.write_samples("grpo", 10, iter([{"prompt": "1+1", "completion": "2", "reward": 1.0}]))
    log.write(step=None, stage="eval_grpo", accuracy=0.75, n=4)
    log.close()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = run_file.read_bytes()  # protobuf records: the keys are there as strings
    assert b"grpo/reward_mean" in history and b"eval/grpo/accuracy" in history
    (table,) = tmp_path.glob("wandb/offline-run-*/files/media/table/grpo/completions*.json")
    assert json.loads(table.read_text())["data"] == [["1+1", "2", 1.0]]
