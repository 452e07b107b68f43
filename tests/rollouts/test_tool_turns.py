"""Tool messages through real chat templates (Qwen2.5's and Qwen3's, with the real Qwen2
vocabulary): the tokens a multi-turn rollout appends for a tool result, between the sampled
turns, are exactly what the template renders for that conversation; and where a template
rewrites what the policy wrote (Qwen3 reformats a think block), re-rendering would move tokens
that the rollout keeps as they were sampled."""

import pytest

from model import assets
from model.chat import ChatFormat, ToolTurn
from rollouts.tools.functions import tool_schemas
from tests.rollouts.test_tools import multiply

CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 347, "b": 829}}\n</tool_call>'
ROW = {"prompt": "What is 347 * 829?"}


def render_ids(tok, messages, tools):
    return list(
        tok.apply_chat_template(
            messages, tools=tools, tokenize=True, return_dict=False, add_generation_prompt=True
        )
    )


def sampled(tok, chat, text):
    """A turn as the engine samples it: its tokens, then the end-of-turn token."""
    return tok.encode(text, add_special_tokens=False) + [chat.end_of_turn_id]


@pytest.mark.parametrize("version", ["2.5", "3"])
def test_tool_turn_tokens_are_the_templates_rendering(version):
    tok = assets.qwen_tokenizer(version)
    tools = tool_schemas([multiply])
    chat = ChatFormat(tok, tools=tools)
    turn = ToolTurn(tok, chat.end_of_turn_id)
    first, second = f"Let me call the tool.\n{CALL}", "The answer is 287663."
    ours = (
        chat.prompt_ids(ROW)
        + sampled(tok, chat, first)
        + turn.ids("287663")
        + sampled(tok, chat, second)
    )
    convo = [
        *chat.messages(ROW),
        {"role": "assistant", "content": first},
        {"role": "tool", "content": "287663"},
        {"role": "assistant", "content": second},
    ]
    rendered = render_ids(tok, convo[:-1], tools) + sampled(tok, chat, second)
    assert ours == rendered
    # the "\n" after <|im_end|> that TRL#5317 lost is in the tool turn, as rendered
    assert tok.decode(turn.ids("287663")).startswith("\n<|im_start|>user\n<tool_response>\n287663")
    assert tok.decode(turn.ids("x")).endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_qwen3_rerendering_would_rewrite_the_sampled_think_block():
    tok = assets.qwen_tokenizer("3")
    chat = ChatFormat(tok, tools=tool_schemas([multiply]))
    turn = ToolTurn(tok, chat.end_of_turn_id)
    first = f"<think>I should not multiply by hand.</think>{CALL}"  # as a policy may write it
    ours = chat.prompt_ids(ROW) + sampled(tok, chat, first) + turn.ids("287663")
    convo = [
        *chat.messages(ROW),
        {"role": "assistant", "content": first},
        {"role": "tool", "content": "287663"},
        {"role": "assistant", "content": "<think>\nDone.\n</think>\n\nIt is 287663."},
    ]
    full = list(tok.apply_chat_template(convo, tools=chat.tools, tokenize=True, return_dict=False))
    assert first in tok.decode(ours)  # the rollout keeps what was sampled
    # re-rendered, the template reformats the think block: other tokens than were sampled
    assert full[: len(ours)] != ours
    assert first not in tok.decode(full)


def test_a_template_without_tool_messages_is_one_clear_error():
    from model.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer("abc")  # r1kit's char template renders no tool role
    with pytest.raises(ValueError, match="does not render a tool message"):
        ToolTurn(tok, tok.eos_token_id)
