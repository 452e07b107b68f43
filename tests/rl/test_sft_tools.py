"""SFT on conversations with tool turns: rows whose last user turn is followed by assistant
and tool turns become targets in exactly the tokens a multi-turn rollout produces (through the
real Qwen2.5 template: the template's own rendering of the conversation), with every tool
token out of the loss; bad conversations are one error naming the row."""

import json
from types import SimpleNamespace

import pytest

from model import assets
from model.chat import ChatFormat
from rl.config import DataSource, load_recipe
from rl.errors import ConfigError, DataError
from rl.rows import load_rows
from rl.trainer import load_data, sft_target
from rollouts.tools.functions import FunctionTools, tool_schemas
from rollouts.tools.python import PythonTool
from tests.rollouts.test_tools import multiply

CALL = {"type": "function", "function": {"name": "multiply", "arguments": {"a": 347, "b": 829}}}
CONVERSATION = [
    {"role": "user", "content": "What is 347 * 829?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "287663"},
    {"role": "assistant", "content": "It is 287663."},
]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sft_rows(tmp_path, rows):
    return load_rows(DataSource(path=write(tmp_path / "sft.jsonl", rows)), "sft", "data.sft")


def stand_in(tok, env, tools=None, environment="functions"):
    overrides = [f"tools.environment={environment}"]
    if environment == "functions":
        overrides.append("tools.functions=[tests.rollouts.test_tools:multiply]")
    recipe = load_recipe("recipes/demo_tools.yaml", overrides)
    chat = ChatFormat(tok, tools=tools)
    return SimpleNamespace(recipe=recipe, tokenizer=tok, chat=chat, environment=env)


def test_a_conversation_with_tool_calls_trains_on_the_rollouts_tokens(tmp_path):
    tok = assets.qwen_tokenizer("2.5")
    tools = tool_schemas([multiply])
    (row,) = sft_rows(tmp_path, [{"messages": CONVERSATION}])
    assert row["messages"] == CONVERSATION[:1] and row["completion"] == "It is 287663."
    assert [t["role"] for t in row["completion_turns"]] == ["assistant", "tool", "assistant"]
    run = stand_in(tok, FunctionTools([multiply]), tools)
    ids, mask = sft_target(run, row)
    assert len(ids) == len(mask)
    # prompt + target is the template's rendering of the whole conversation, token for token
    # (less the "\n" it writes after the last <|im_end|>, which the policy never samples)
    rendered = tok.apply_chat_template(CONVERSATION, tools=tools, tokenize=False)
    assert tok.decode(run.chat.prompt_ids(row) + ids) == rendered.removesuffix("\n")
    # the call is written as the rollout parses it, and the tool turn is what a rollout appends
    call = tok.decode([i for i, m in zip(ids, mask, strict=True) if m][:-1])
    assert call.startswith('<tool_call>\n{"name": "multiply", "arguments": {"a": 347, "b": 829}}')
    first_end = ids.index(run.chat.end_of_turn_id)
    tool = run.chat.tool_turn.ids("287663")
    assert ids[first_end + 1 : first_end + 1 + len(tool)] == tool
    assert mask == [1] * (first_end + 1) + [0] * len(tool) + [1] * (
        len(ids) - first_end - 1 - len(tool)
    )


def test_a_python_tool_conversation_equals_the_written_out_completion(tmp_path):
    tok = assets.qwen_tokenizer("2.5")
    run = stand_in(tok, PythonTool(), environment="python")
    turns = [
        {"role": "user", "content": "What is 6 * 7?"},
        {"role": "assistant", "content": "```python\nprint(6*7)\n```\n"},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "42"},
    ]
    written = "```python\nprint(6*7)\n```\n```output\n42\n```\n42"
    (conversation,) = sft_rows(tmp_path, [{"messages": turns}])
    completion = {"prompt": "What is 6 * 7?", "completion": written}
    ids, mask = sft_target(run, conversation)
    assert (ids, mask) == sft_target(run, completion)
    dropped = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert dropped == "```output\n42\n```\n"


@pytest.mark.parametrize(
    ("turns", "error"),
    [
        (
            [*CONVERSATION[:2], CONVERSATION[1], *CONVERSATION[2:]],
            "turn 2 is the assistant's; after the last user turn, assistant and tool turns",
        ),
        (CONVERSATION[:3], "no completion, and the last turn is the tool's"),
        (CONVERSATION[:2], "the last assistant turn calls a tool"),
        (
            [CONVERSATION[0], {"role": "assistant", "tool_calls": "multiply"}],
            "turn 1: 'tool_calls' must be a list of calls",
        ),
    ],
)
def test_bad_tool_conversations_name_the_row(tmp_path, turns, error):
    rows = [{"messages": CONVERSATION}, {"messages": turns}]
    with pytest.raises(DataError, match=f"sft.jsonl:2: .*{error}"):
        sft_rows(tmp_path, rows)


def test_tool_turns_without_an_environment_stop_the_run_before_it_starts(tmp_path):
    recipe = load_recipe(
        "recipes/demo.yaml",
        [
            f"data.sft_file={write(tmp_path / 'sft.jsonl', [{'messages': CONVERSATION}] * 2)}",
            f"data.eval_file={write(tmp_path / 'eval.jsonl', [{'prompt': '1+1', 'answer': '2'}])}",
            "grpo.steps=0",
        ],
    )
    with pytest.raises(ConfigError, match="SFT row 1 has tool turns.*'tools.environment'"):
        load_data(recipe, tmp_path)
