"""What a rollout engine returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ToolTrace:
    """What the tools did in one multi-turn completion (``rollouts.multiturn``)."""

    turns: int = 1
    """Generation turns (a turn ends at a tool call, the end of the answer or a limit)."""
    tool_calls: int = 0
    """Calls the environment ran."""
    tool_errors: int = 0
    """Calls that raised or exited non-zero (their error is the tool output)."""
    tool_timeouts: int = 0
    """Calls killed at the time limit."""
    refused_calls: int = 0
    """Calls past ``max_tool_calls``: not run, the policy was told so."""
    void_turns: int = 0
    """Turns with neither a tool call nor an answer (SimpleTIR's void turns)."""
    tool_latency_s: float = 0.0
    """Seconds the calls took, summed."""
    env_reward: float | None = None
    """The environment's own reward for the episode, if it gives one."""
    segments: list[tuple[str, int]] = field(default_factory=list)
    """``(who, tokens)`` in order: "policy" for sampled tokens, "tool" for tool output."""


@dataclass
class Completion:
    """One sampled completion of one prompt.

    ``logprobs[t]`` is the rollout engine's log-probability of ``token_ids[t]`` under the
    distribution it sampled from (temperature applied; with top_p/top_k < full, renormalised
    over the kept tokens), so that the learner can compare its own logprobs with it.
    """

    prompt_index: int
    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or stop string) or "length" (hit max_tokens)
    mask: list[int] | None = None
    trace: ToolTrace | None = None
    weight_version: int = 0
    """The version of the weights that sampled every one of its tokens (the engine's, as of
    its latest ``update_weights``): a weight update waits for the engine call in flight, so
    one completion never mixes versions."""

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"
