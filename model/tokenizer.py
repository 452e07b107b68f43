"""A character-level tokenizer built locally with the `tokenizers` library.

The tiny presets are trained from scratch on a recipe's own alphabet, so there is no
pretrained vocabulary to reuse: every character of the alphabet is one token, the think tags
are single special tokens, and a small chat template renders the R1-style conversation.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>"]
THINK_TOKENS = ["<think>", "</think>"]

# Renders: <bos><|user|>{question}<|assistant|>{answer}<eos>
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A fast tokenizer with one token per character of ``alphabet`` plus the special tokens.

    Characters outside the alphabet map to ``<unk>``. Decoding concatenates tokens (no spaces
    are inserted), so ``decode(encode(s)) == s`` for any ``s`` over the alphabet.
    """
    chars = sorted(set(alphabet))
    if not chars:
        raise ValueError("tokenizer alphabet is empty")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + THINK_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    # BPE with no merges is a character-level model; with no pre-tokenizer, spaces and
    # newlines are ordinary characters.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=False))
    core.add_special_tokens(SPECIAL_TOKENS)
    # The think tags are added tokens but not special ones: decoding with
    # skip_special_tokens (vLLM's default) must keep them in the text the rewards read.
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok
