"""A bad source or row is one error naming the file, the row (a JSONL line, else the 0-based row
index) and the field; a missing column names the ones there are."""

import json
import re

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rl.config import DataFields, DataSource
from rl.data import check_disjoint, read_rows
from rl.errors import ConfigError, DataError
from rl.rows import load_rows


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def verl_rows(n):
    return [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
            "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
            "extra_info": {"index": i},
        }
        for i in range(n)
    ]


def load(path, kind="rl", key="data.rl", template="{prompt}", **source):
    return load_rows(DataSource(path=str(path), **source), kind, key, template)


def fails(message, *args, **kwargs):
    with pytest.raises(DataError) as info:
        load(*args, **kwargs)
    assert str(info.value) == message
    return info


def test_verl_row_without_ground_truth_names_file_row_and_field(tmp_path):
    rows = verl_rows(20)
    rows[17]["reward_model"] = {"style": "rule", "ground_truth": None}
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    fails(
        f"{path}: row 17: missing or empty string field 'reward_model.ground_truth' "
        "(the row's answer)",
        path,
    )


def test_a_mapped_column_that_is_not_there_names_the_columns(tmp_path):
    path = tmp_path / "math.parquet"
    rows = [{"problem": "1+1", "solution": "\\boxed{2}", "level": "Level 1", "type": "Algebra"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    fails(
        f"{path}: no column 'question' (recipe key data.rl.fields.prompt); "
        "its columns: problem, solution, level, type",
        path,
        fields=DataFields(prompt="question", answer="solution"),
    )
    fails(
        f"{path}: no column 'answer' (name one with recipe key data.rl.fields.answer); "
        "its columns: problem, solution, level, type",
        path,
        fields=DataFields(prompt="problem"),
    )
    fails(
        f"{path}: no column 'prompt' or 'messages' (name one with recipe key "
        "data.rl.fields.prompt or data.rl.fields.messages); its columns: problem, solution, "
        "level, type",
        path,
    )
    fails(
        f"{path}: no column 'completion' (name one with recipe key data.sft.fields.completion, "
        "or give messages ending with the assistant turn); its columns: problem, solution, "
        "level, type",
        path,
        kind="sft",
        key="data.sft",
        fields=DataFields(prompt="problem"),
    )


def test_a_nested_key_that_is_not_there_names_the_row(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(verl_rows(3)), path)
    fails(
        f"{path}: row 0: missing or empty string field 'reward_model.answer' (the row's answer)",
        path,
        fields=DataFields(answer="reward_model.answer"),
    )


def test_jsonl_errors_name_the_line_counting_blank_lines(tmp_path):
    path = tmp_path / "rl.jsonl"
    good = json.dumps({"prompt": "1+2", "answer": "3"})
    path.write_text(f"{good}\n\n{good}\n{json.dumps({'prompt': '3+3'})}\n{good}\n")
    fails(f"{path}:4: missing or empty string field 'answer'", path)
    path.write_text(f"{good}\n\n" + json.dumps({"prompt": "", "answer": "1"}) + "\n")
    fails(f"{path}:3: missing or empty string field 'prompt'", path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "3+3", "answer": "6"', "malformed JSON: Expecting ',' delimiter"),
        ('["3+3", "6"]', "a row must be a JSON object"),
        ('{"prompt": "3+3", "answer": 6}', "field 'answer' must be a string, got int"),
        ('{"prompt": ["3+3"], "answer": "6"}', "field 'prompt' must be a string, got list"),
    ],
)
def test_malformed_jsonl_lines(tmp_path, line, message):
    good = json.dumps({"prompt": "1+2", "answer": "3"})
    path = tmp_path / "rl.jsonl"
    path.write_text(f"{good}\n{good}\n\n{line}\n")
    fails(f"{path}:4: {message}", path)


def test_an_answer_the_normalizer_cannot_read_names_the_row(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    rows = [{"question": "q1", "answer": "so\n#### 5"}, {"question": "q2", "answer": "about 5"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fails(
        f"{path}:2: field 'answer' (answer_format gsm8k): no '#### <number>' in 'about 5'",
        path,
        fields=DataFields(prompt="question"),
        answer_format="gsm8k",
    )
    parquet = tmp_path / "math.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "p", "solution": "x = 2"}]), parquet)
    fails(
        f"{parquet}: row 0: field 'solution' (answer_format math): no \\boxed{{...}} in 'x = 2'",
        parquet,
        fields=DataFields(prompt="problem", answer="solution"),
        answer_format="math",
    )


def test_the_prompt_template_is_checked_against_every_row(tmp_path):
    path = tmp_path / "math.parquet"
    rows = [{"prompt": f"p{i}", "answer": "1", "question": "q"} for i in range(4)]
    del rows[3]["question"]
    pq.write_table(pa.Table.from_pylist(rows), path)
    fails(f"{path}: row 3: prompt_template needs field 'question'", path, template="{question}")
    assert len(load(path, template="{prompt} ({answer})")) == 4
    chat = tmp_path / "chat.jsonl"  # a conversation is not formatted: nothing to check
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "answer": "1"}))
    assert load(chat, template="{question}")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Solve {} now", "{} is positional; name a row field"),
        ("Solve {0}", "{0} is positional; name a row field"),
        ("Solve {prompt", "expected '}' before end of string"),
        ("Solve } this", "Single '}' encountered"),
    ],
)
def test_a_template_str_format_cannot_use_is_a_config_error(tmp_path, template, message):
    path = tmp_path / "rl.jsonl"
    path.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n")
    with pytest.raises(
        ConfigError, match=f"^recipe key 'data.prompt_template': .*{re.escape(message)}"
    ):
        load(path, template=template)


@pytest.mark.parametrize(
    ("kind", "messages", "message"),
    [
        ("rl", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
         "field 'messages': the last turn must be the user's, got 'assistant'"),
        ("sft", [{"role": "user", "content": "hi"}],
         "field 'messages': no completion, and the last turn is the user's, not the assistant's"),
        ("rl", [{"role": "user"}], "field 'messages': turn 0 must have string 'role' and 'content'"),
        ("rl", [], "field 'messages' must be a non-empty list of chat turns, got []"),
        ("rl", "hi", "field 'messages' must be a non-empty list of chat turns, got 'hi'"),
    ],
)  # fmt: skip
def test_bad_conversations(tmp_path, kind, messages, message):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages, "answer": "1"}) + "\n")
    fails(f"{path}:1: {message}", path, kind=kind)


def test_file_level_errors(tmp_path):
    fails(
        f"data file not found: {tmp_path}/nowhere.jsonl (recipe key data.rl)",
        tmp_path / "nowhere.jsonl",
    )
    (tmp_path / "empty.jsonl").write_text("")
    fails(f"{tmp_path}/empty.jsonl: no rows (recipe key data.rl)", tmp_path / "empty.jsonl")
    (tmp_path / "rows.txt").write_text("1+1\n")
    fails(
        f"{tmp_path}/rows.txt: not a data file r1kit reads (.jsonl, .json, .parquet, .csv, "
        ".arrow) (recipe key data.rl)",
        tmp_path / "rows.txt",
    )
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(
        DataError, match=r"bad.parquet: datasets cannot read it as parquet: ArrowInvalid"
    ):
        load(tmp_path / "bad.parquet")
    (tmp_path / "ok.jsonl").write_text(json.dumps({"prompt": "1", "answer": "1"}) + "\n")
    fails(
        f"recipe key data.rl.split: {tmp_path}/ok.jsonl is a single file, which is one split; "
        "drop split, or point path at a folder with a file per split",
        tmp_path / "ok.jsonl",
        split="test",
    )


def test_csv_errors(tmp_path):
    path = tmp_path / "rl.csv"
    path.write_text("prompt,answer\n1+1,2\n2+2,\n")
    fails(f"{path}: row 1: missing or empty string field 'answer'", path)
    path.write_text("prompt,answer\n1+1,2\n2+2,4,extra\n")
    with pytest.raises(
        DataError, match=r"rl.csv: datasets cannot read it as csv: ParserError: .*line 3"
    ):
        load(path)


def test_read_rows_keeps_its_one_file_form(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "1+1", "completion": "2", "extra": [1]}) + "\n")
    assert read_rows(path, "sft", "data.sft_file") == [
        {"prompt": "1+1", "completion": "2", "extra": [1]}
    ]
    with pytest.raises(
        DataError,
        match=r"sft.jsonl: no column 'answer' \(name one with recipe key data.rl.fields.answer\)",
    ):
        read_rows(path, "rl")
    path.write_text(json.dumps({"prompt": "1+1", "answer": None}) + "\n")
    with pytest.raises(DataError, match="sft.jsonl:1: missing or empty string field 'answer'"):
        read_rows(path, "rl")


def test_held_out_overlap_is_found_across_prompt_and_messages_rows():
    train = [{"prompt": "What is 2+2?", "answer": "4"}, {"prompt": "3+3", "answer": "6"}]
    held_out = [{"messages": [{"role": "user", "content": "What is 2+2?"}], "answer": "4"}]
    with pytest.raises(
        DataError,
        match=r"^data.eval: 1 held-out prompts also in training data, e.g. 'What is 2\+2\?'$",
    ):
        check_disjoint(train, held_out, "data.eval")
    # The template is part of the question: "Q: 3+3" is what the policy sees for "3+3".
    templated = [{"messages": [{"role": "user", "content": "Q: 3+3"}], "answer": "6"}]
    check_disjoint(train, templated, "data.eval")
    with pytest.raises(DataError, match="e.g. 'Q: 3\\+3'"):
        check_disjoint(train, templated, "data.eval", prompt_template="Q: {prompt}")
    # A different system turn is a different conversation; the recipe's system prompt applies
    # to rows without one.
    system = [{"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "3+3"}], "answer": "6"}]  # fmt: skip
    check_disjoint(train, system, "data.eval")
    with pytest.raises(DataError, match="1 held-out prompts"):
        check_disjoint(train, system, "data.eval", system_prompt="Be brief.")
