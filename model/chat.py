"""Prompts and completions as token ids, through a model's own chat template.

Token-in, token-out: a prompt is rendered once by the tokenizer's chat template (with the
generation prompt); what the policy then samples is kept as the engine returns it, and the
learner trains on exactly those ids. Re-rendering a conversation that holds a completion is
what drifts: DeepSeek-R1-Distill's template cuts everything up to ``</think>`` out of an
assistant message, Qwen3's drops earlier think blocks, and a ``\\n`` after ``<|im_end|>`` is
not something the policy sampled. So SFT targets are ``tokenize(completion) + [end of turn]``
after the rendered prompt, not a rendering of the whole conversation.

What a template implies, found by rendering probe conversations once:

- ``end_of_turn_id``: the first special token the template puts after an assistant message's
  content (ChatML ``<|im_end|>``, Llama-3 ``<|eot_id|>``, R1-Distill ``<｜end▁of▁sentence｜>``,
  r1kit's character tokenizer ``<eos>``). Sampling stops there and SFT targets end with it.
- ``tool_turn``: the tokens of a ``tool`` message between two assistant turns (what a
  multi-turn rollout appends after a tool call, and what SFT on a conversation with tool
  turns leaves out of the loss).
- ``opened``: text the generation prompt opens and the completion continues, e.g. the
  ``<think>\\n`` that R1-Distill's generation prompt ends with. Rewards that read the whole
  response (the R1 format reward) score ``opened + completion``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

_PROBE_USER = "r1kit probe question"
_PROBE_ANSWER = "r1kit probe answer 4217"


@dataclass
class ChatFormat:
    """How rows become prompt token ids and completions become training targets.

    A row is ``{"prompt": str, ...}`` (one user turn, formatted by ``prompt_template``) or
    ``{"messages": [{"role", "content"}, ...], ...}`` (a conversation whose last turn is the
    user's). ``system_prompt`` is prepended as a system turn unless the row has one.
    """

    tokenizer: Any
    system_prompt: str | None = None
    prompt_template: str = "{prompt}"
    thinking: bool = True
    """Passed to templates as ``enable_thinking`` (Qwen3, QwQ and llama.cpp's R1 templates
    close the think block in the generation prompt when it is false or unset)."""
    tools: list[dict] | None = None
    """JSON schemas of the functions the policy may call, for templates that show them."""
    _cache: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        """The conversation a row asks the policy to continue."""
        if row.get("messages"):
            turns = [dict(m) for m in row["messages"]]
        else:
            turns = [{"role": "user", "content": self.prompt_template.format_map(row)}]
        if self.system_prompt is not None and turns[0].get("role") != "system":
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def key(self, row: Mapping[str, Any]) -> str:
        """The rendered prompt text: what makes two rows the same question."""
        return self._render(self.messages(row), generation_prompt=True)

    def prompt_ids(self, row: Mapping[str, Any]) -> list[int]:
        """Token ids of the rendered conversation, ending with the assistant turn's opening."""
        key = self.key(row)
        if key not in self._cache:
            self._cache[key] = self._ids(self.messages(row))
        return self._cache[key]

    def completion_ids(self, completion: str) -> list[int]:
        """An SFT target: the completion's tokens and the end-of-turn token."""
        ids = self.tokenizer.encode(completion, add_special_tokens=False)
        return [*ids, self.end_of_turn_id]

    def scored_text(self, completion: str) -> str:
        """What rewards read: the completion after what the generation prompt opened."""
        return self.opened + completion

    def assistant_text(self, message: Mapping[str, Any]) -> str:
        """What the policy writes for an assistant message of a conversation (an SFT row's
        turn): its content; with ``tool_calls`` (OpenAI style), the template's own rendering
        of the turn, up to its end-of-turn token (Qwen2.5: ``<tool_call>\\n{"name": ...,
        "arguments": {...}}\\n</tool_call>``), which is the format rollouts parse."""
        if not message.get("tool_calls"):
            return message.get("content") or ""
        user = [{"role": "user", "content": _PROBE_USER}]
        head = self._render(user, generation_prompt=True)
        full = self._render([*user, dict(message)], generation_prompt=False)
        end = self.tokenizer.convert_ids_to_tokens(self.end_of_turn_id)
        if not full.startswith(head) or end not in full[len(head) :]:
            raise ValueError(
                "the chat template does not render an assistant turn with tool_calls after "
                "its generation prompt: write the call into the turn's content instead"
            )
        return full[len(head) : full.index(end, len(head))]

    @cached_property
    def tool_turn(self) -> ToolTurn:
        """The tokens of a ``tool`` message between two assistant turns (``ToolTurn``)."""
        return ToolTurn(self.tokenizer, self.end_of_turn_id, self.thinking)

    @cached_property
    def end_of_turn_id(self) -> int:
        """The first special token after an assistant message's content (eos if none)."""
        full = self._render(
            [
                {"role": "user", "content": _PROBE_USER},
                {"role": "assistant", "content": _PROBE_ANSWER},
            ],
            generation_prompt=False,
        )
        tail = full[full.rindex(_PROBE_ANSWER) + len(_PROBE_ANSWER) :]
        special = set(self.tokenizer.all_special_ids) | {
            i for i, t in self.tokenizer.added_tokens_decoder.items() if t.special
        }
        for token in self.tokenizer.encode(tail, add_special_tokens=False):
            if token in special:
                return token
        if self.tokenizer.eos_token_id is None:
            raise ValueError(
                "the chat template ends an assistant turn with no special token and the "
                "tokenizer has no eos token: cannot tell where a completion ends"
            )
        return self.tokenizer.eos_token_id

    @cached_property
    def opened(self) -> str:
        """A ``<think>`` block the generation prompt leaves open (else '')."""
        user = [{"role": "user", "content": _PROBE_USER}]
        with_prompt = self._render(user, generation_prompt=True)
        without = self._render(user, generation_prompt=False)
        suffix = with_prompt[len(without) :] if with_prompt.startswith(without) else with_prompt
        start = suffix.rfind("<think>")
        return suffix[start:] if start >= 0 and "</think>" not in suffix[start:] else ""

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=generation_prompt,
            tokenize=False,
            enable_thinking=self.thinking,
            tools=self.tools,
        )

    def _ids(self, messages: list[dict[str, str]]) -> list[int]:
        return list(
            self.tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
                enable_thinking=self.thinking,
                tools=self.tools,
            )
        )


class ToolTurn:
    """The tokens that carry a ``tool`` message: after the assistant's end-of-turn token,
    through the opening of the next assistant turn, as the model's chat template renders
    them (Qwen2.5: ``\\n<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>
    \\n<|im_start|>assistant\\n``). Found once by rendering a probe conversation; raises if
    the template does not render a tool message after an assistant turn."""

    _PROBE = "R1KIT-PROBE-ANSWER"
    _RESULT = "R1KIT-PROBE-RESULT"

    def __init__(self, tokenizer: Any, end_of_turn_id: int, thinking: bool = True) -> None:
        self.tokenizer = tokenizer
        convo = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": self._PROBE},
            {"role": "tool", "content": self._RESULT},
        ]
        text = tokenizer.apply_chat_template(
            convo, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        end = tokenizer.convert_ids_to_tokens(end_of_turn_id)
        after = text[text.rfind(self._PROBE) + len(self._PROBE) :]
        if not after.startswith(end) or self._RESULT not in after:
            raise ValueError(
                "the chat template does not render a tool message right after the assistant's "
                f"end-of-turn token {end!r}: use an inline environment (tools.environment: python)"
            )
        self.before, self.after = after[len(end) :].split(self._RESULT)

    def ids(self, observation: str) -> list[int]:
        text = self.before + observation + self.after
        return self.tokenizer.encode(text, add_special_tokens=False)
