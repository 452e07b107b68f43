"""Each kind of source (rl/sources.py) read into r1kit's row contract (rl/rows.py): fixtures in
the datasets' own schemas (GSM8K, MATH, verl parquet, conversations, CSV, Arrow, a folder of
splits, a hub name, reasoning-gym), written here, read through ``datasets``."""

import json
import random
import subprocess
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rl.config import DataFields, DataSource
from rl.errors import DataError
from rl.rows import load_rows
from rl.sources import pick
from tests.rl.data_rows import GSM8K, MATH, VERL


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """datasets' cache (the Arrow copies of local files) inside the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_gsm8k_jsonl_with_a_field_map_and_its_answer_format(tmp_path):
    src = DataSource(
        path=write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K),
        fields=DataFields(prompt="question"),
        answer_format="gsm8k",
    )
    rows = load_rows(src, "rl", "data.rl")
    assert [r["answer"] for r in rows] == ["72", "1234"]
    assert rows[0]["prompt"] == GSM8K[0]["question"]
    assert rows[0]["question"] == GSM8K[0]["question"]  # the dataset's own columns stay


def test_gsm8k_sft_takes_the_worked_solution_as_completion(tmp_path):
    src = DataSource(
        path=write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K),
        fields=DataFields(prompt="question", completion="answer"),
    )
    rows = load_rows(src, "sft", "data.sft")
    assert rows[1]["completion"] == GSM8K[1]["answer"]


def test_math_parquet_reads_the_boxed_answer_and_keeps_level_and_type(tmp_path):
    src = DataSource(
        path=write_parquet(tmp_path / "math.parquet", MATH),
        fields=DataFields(prompt="problem", answer="solution"),
        answer_format="math",
    )
    rows = load_rows(src, "eval", "data.eval")
    assert [r["answer"] for r in rows] == ["\\frac{1}{2}", "2"]
    assert rows[0]["prompt"] == MATH[0]["problem"]
    assert (rows[1]["level"], rows[1]["type"]) == ("Level 2", "Algebra")
    assert rows[1]["solution"] == MATH[1]["solution"]


def test_verl_parquet_loads_as_it_is(tmp_path):
    rows = load_rows(DataSource(path=write_parquet(tmp_path / "train.parquet", VERL)), "rl", "k")
    assert len(rows) == 20
    row = rows[3]
    assert row["messages"] == VERL[3]["prompt"]
    assert row["answer"] == "6"
    assert "prompt" not in row  # the chat list became messages
    assert row["data_source"] == "openai/gsm8k"
    assert row["extra_info"] == {"split": "train", "index": 3}
    assert row["reward_model"] == {"style": "rule", "ground_truth": "6"}
    assert row["ability"] == "math"


def test_verl_fields_can_still_be_mapped(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", VERL)
    src = DataSource(path=path, fields=DataFields(answer="extra_info.index"))
    with pytest.raises(DataError, match=r"row 0: field 'extra_info.index' must be a string"):
        load_rows(src, "rl", "data.rl")


def test_conversations_in_jsonl(tmp_path):
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>2+2=4</think>4"},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": turns, "answer": "4", "id": 7}])
    (sft,) = load_rows(DataSource(path=path), "sft", "data.sft")
    assert sft["messages"] == turns[:2]  # the final assistant turn is the completion
    assert sft["completion"] == "<think>2+2=4</think>4"
    assert (sft["answer"], sft["id"]) == ("4", 7)
    path = write_jsonl(tmp_path / "rl.jsonl", [{"messages": turns[:2], "answer": "4"}])
    (rl,) = load_rows(DataSource(path=path), "rl", "data.rl")
    assert rl["messages"] == turns[:2] and rl["answer"] == "4" and "prompt" not in rl


def test_messages_win_over_a_prompt_column_like_the_chat_format(tmp_path):
    turns = [{"role": "user", "content": "full question"}]
    path = write_jsonl(
        tmp_path / "both.jsonl", [{"prompt": "short", "messages": turns, "answer": "1"}]
    )
    (row,) = load_rows(DataSource(path=path), "rl", "data.rl")
    assert row["messages"] == turns and "prompt" not in row


def test_csv_reads_every_column_as_text(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(
        'prompt,answer,note\n"Add 1,000 and 7, then pad to 4 digits",1007,x\nCode?,007,\n'
    )
    rows = load_rows(DataSource(path=str(path)), "rl", "data.rl")
    assert rows[0] == {
        "prompt": "Add 1,000 and 7, then pad to 4 digits",
        "answer": "1007",
        "note": "x",
    }
    assert rows[1]["answer"] == "007" and "note" not in rows[1]  # an empty cell is no field


def test_json_list_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(
        json.dumps([{"prompt": "1+1", "answer": "2"}, {"prompt": "1+2", "answer": "3"}])
    )
    assert [r["answer"] for r in load_rows(DataSource(path=str(path)), "rl", "k")] == ["2", "3"]


def test_arrow_saved_folder_and_arrow_file(tmp_path):
    rows = [{"problem": f"{i}+1", "solution": f"\\boxed{{{i + 1}}}"} for i in range(4)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    fields = DataFields(prompt="problem", answer="solution")
    src = DataSource(path=str(tmp_path / "saved"), fields=fields, answer_format="math")
    assert [r["answer"] for r in load_rows(src, "rl", "k")] == ["1", "2", "3", "4"]
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    src = DataSource(path=str(arrow), fields=fields, answer_format="math")
    assert [r["prompt"] for r in load_rows(src, "rl", "k")] == ["0+1", "1+1", "2+1", "3+1"]


def test_a_saved_dataset_dict_gives_its_splits(tmp_path):
    splits = {
        name: datasets.Dataset.from_list(
            [{"prompt": f"{name} {i}", "answer": "1"} for i in range(n)]
        )
        for name, n in (("train", 3), ("test", 2))
    }
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dict"))
    rows = load_rows(DataSource(path=str(tmp_path / "dict"), split="test"), "eval", "k")
    assert [r["prompt"] for r in rows] == ["test 0", "test 1"]
    with pytest.raises(DataError, match=r"no split 'valid' \(recipe key k.split\); it has"):
        load_rows(DataSource(path=str(tmp_path / "dict"), split="valid"), "eval", "k")


def test_a_folder_goes_through_load_dataset_like_a_hub_name(tmp_path):
    """A hub dataset is ``load_dataset(path, name=..., split=...)``; a local folder of split
    files takes the same call, so this is the hub path without the network."""
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    write_parquet(folder / "train.parquet", GSM8K[:1])
    write_parquet(folder / "test.parquet", GSM8K[1:])
    src = DataSource(
        path=str(folder), split="test", fields=DataFields(prompt="question"), answer_format="gsm8k"
    )
    rows = load_rows(src, "eval", "data.eval")
    assert [r["answer"] for r in rows] == ["1234"]
    src.split = None  # default: train
    assert [r["answer"] for r in load_rows(src, "eval", "data.eval")] == ["72"]
    src.split = "validation"
    with pytest.raises(DataError, match=r"recipe key data.eval: .*Unknown split \"validation\""):
        load_rows(src, "eval", "data.eval")


def test_a_hub_name_is_passed_to_load_dataset_with_its_config_and_split(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(GSM8K)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src = DataSource(
        path="openai/gsm8k",
        name="main",
        split="test",
        fields=DataFields(prompt="question"),
        answer_format="gsm8k",
    )
    rows = load_rows(src, "eval", "data.eval")
    assert calls == [("openai/gsm8k", "main", "test")]
    assert [r["answer"] for r in rows] == ["72", "1234"]
    src.fields = DataFields()
    with pytest.raises(DataError, match=r"^openai/gsm8k \(main, test\): no column 'prompt'"):
        load_rows(src, "eval", "data.eval")


@pytest.mark.slow
def test_offline_hub_error_says_what_to_do(tmp_path):
    script = (
        "from rl.config import DataSource\n"
        "from rl.rows import load_rows\n"
        "load_rows(DataSource(path='openai/gsm8k', name='main'), 'rl', 'data.rl')\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={**env, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[2])},
    )  # fmt: skip
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "rl.errors.DataError: recipe key data.rl.path: cannot load 'openai/gsm8k'"
    )
    assert "no such local file or folder" in last and "ConnectionError" in last
    assert "HF_DATASETS_OFFLINE=1" in last


def test_limit_takes_the_first_rows_and_shuffle_seed_a_random_pick(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(10)]
    path = write_jsonl(tmp_path / "ten.jsonl", rows)
    first = load_rows(DataSource(path=path, limit=3), "rl", "k")
    assert [r["answer"] for r in first] == ["0", "1", "2"]
    picked = load_rows(DataSource(path=path, limit=3, shuffle_seed=5), "rl", "k")
    expected = random.Random(5).sample(range(10), 3)
    assert [r["answer"] for r in picked] == [str(i) for i in expected]
    assert len(load_rows(DataSource(path=path, limit=50), "rl", "k")) == 10
    everything = load_rows(DataSource(path=path, shuffle_seed=5), "rl", "k")
    assert sorted(int(r["answer"]) for r in everything) == list(range(10))


def test_a_bad_row_is_named_by_its_place_in_the_source_not_in_the_pick(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(10)]
    rows[7]["answer"] = ""
    path = write_jsonl(tmp_path / "ten.jsonl", rows)
    seed = next(s for s in range(100) if 7 in random.Random(s).sample(range(10), 3))
    with pytest.raises(DataError, match=r"ten.jsonl:8: missing or empty string field 'answer'"):
        load_rows(DataSource(path=path, limit=3, shuffle_seed=seed), "rl", "k")
    assert load_rows(DataSource(path=path, limit=3), "rl", "k")  # rows 0-2 are fine


def test_pick_is_lazy_without_a_shuffle():
    assert pick(10**9, 4, None) == range(4)
    assert len(pick(10**9, 4, 1)) == 4


def test_reasoning_gym_task_by_name():
    src = DataSource(
        reasoning_gym="countdown", size=5, seed=3, config={"min_numbers": 3, "max_numbers": 3}
    )
    rows = load_rows(src, "rl", "data.rl")
    assert len(rows) == 5
    row = rows[0]
    assert row["prompt"] == row["question"] and "9, 81, 75" in row["prompt"]
    assert row["reasoning_gym"] == {
        "task": "countdown",
        "config": {"min_numbers": 3, "max_numbers": 3},
    }
    assert len(row["metadata"]["numbers"]) == 3 and "target" in row["metadata"]
    assert row["answer"] == row["metadata"]["expression"]
    again = load_rows(src, "rl", "data.rl")
    assert [r["prompt"] for r in again] == [r["prompt"] for r in rows]  # seeded


def test_reasoning_gym_stages_default_to_different_seeds():
    src = DataSource(reasoning_gym="chain_sum", size=4)
    rl = load_rows(src, "rl", "data.rl", recipe_seed=10)
    ev = load_rows(src, "eval", "data.eval", recipe_seed=10)
    assert [r["prompt"] for r in rl] == [
        r["prompt"]
        for r in load_rows(DataSource(reasoning_gym="chain_sum", size=4, seed=11), "rl", "k")
    ]
    assert [r["prompt"] for r in rl] != [r["prompt"] for r in ev]


def test_reasoning_gym_task_without_one_answer_still_loads():
    (row,) = load_rows(DataSource(reasoning_gym="graph_color", size=1, seed=0), "eval", "k")
    assert "answer" not in row and row["metadata"]


@pytest.mark.parametrize(
    ("src", "message"),
    [
        (
            DataSource(reasoning_gym="countdwn"),
            r"no reasoning-gym task 'countdwn'; tasks: .*countdown",
        ),
        (
            DataSource(reasoning_gym="countdown", config={"bogus": 1}),
            r"data.rl.config: reasoning-gym countdown: .*bogus",
        ),
        (
            DataSource(reasoning_gym="countdown", config={"size": 3}),
            r"set size and seed as data.rl.size",
        ),
        (DataSource(reasoning_gym="countdown"), r"no column 'completion'"),  # sft needs one
    ],
)
def test_reasoning_gym_errors_name_the_key(src, message):
    kind = "sft" if "completion" in message else "rl"
    with pytest.raises(DataError, match=message):
        load_rows(src, kind, "data.rl")
