"""Multi-turn rollouts: the policy samples, calls a tool, reads its output, samples on.

Each sample is an episode with its own environment (``rollouts.tools``). A turn is one vLLM
request whose prompt is the episode's tokens so far; it ends at the end of the policy's turn,
at one of the environment's stop strings (a tool call's closing fence) or at a token limit.
The environment's ``step`` then runs in a thread pool *while the engine keeps decoding every
other episode* (the engine is stepped here, request by request, not called once per batch),
and its observation is appended as tool tokens; the next turn is a new request over the whole
history (with prefix caching, only the new tokens are prefilled).

Token in, token out: an episode's sequence is exactly the sampled token ids plus the tokens
of each observation, appended in order and never re-rendered, so the learner trains on what
the engine saw (a chat template that rewrites history, such as Qwen3's dropping earlier think
blocks, cannot move a token). Sampled tokens carry mask 1 and the engine's logprobs; tool
tokens mask 0 and logprob 0. An ``inline`` observation is tokenized on its own; a
``tool_message`` one is the chat template's rendering of a ``tool`` message after the
assistant's end-of-turn token, through the opening of the next assistant turn
(``model.chat.ToolTurn``).

Budgets: ``max_tokens`` for the whole completion (sampled and tool tokens, what the learner
sees), ``ToolSpec.max_turn_tokens`` per turn, ``max_turns`` turns; hitting any of them while
the episode is still going ends it as truncated (``finish_reason == "length"``).
"""

from __future__ import annotations

import concurrent.futures
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.chat import ToolTurn
from rollouts.tools import Step, ToolSpec, as_step, make_environment
from rollouts.types import Completion, ToolTrace

_TURN_SEED = 1_000_003  # turn k of a sample is seeded seed + k * this


@dataclass
class Episode:
    """One sample's trajectory while it is being generated."""

    prompt_index: int
    prompt: list[int]
    env: Any  # rollouts.tools.Environment
    seed: int | None
    tokens: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    trace: ToolTrace = field(default_factory=lambda: ToolTrace(turns=0))
    finish_reason: str | None = None  # set when the episode is over

    def add(self, ids: Sequence[int], logprobs: Sequence[float] | None) -> None:
        """Append sampled tokens (with their logprobs) or tool tokens (``logprobs=None``)."""
        who = "policy" if logprobs is not None else "tool"
        self.tokens += ids
        self.mask += [int(logprobs is not None)] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        self.trace.segments.append((who, len(ids)))

    def record(self, step: Step) -> None:
        trace = self.trace
        trace.tool_calls += step.tool_call and not step.refused
        trace.refused_calls += step.refused
        trace.tool_errors += step.error
        trace.tool_timeouts += step.timed_out
        trace.void_turns += step.void
        trace.tool_latency_s += step.latency_s
        if step.reward is not None:
            trace.env_reward = step.reward


def run_episodes(
    engine: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    n: int,
    spec: ToolSpec,
    sampling: Callable[..., Any],
    max_tokens: int,
    seeds: Sequence[int | None],
    rows: Sequence[Mapping[str, Any]] | None,
    tool_turn: ToolTurn | None,
    pool: concurrent.futures.Executor,
) -> list[Completion]:
    """``n`` multi-turn episodes per prompt on a vLLM ``LLMEngine``; completions grouped by
    prompt in input order. ``sampling(max_tokens=, stop=, seed=)`` makes one turn's
    ``SamplingParams``; episode ``j`` of prompt ``i`` is seeded ``seeds[i] + j``."""
    episodes = []
    for i, prompt in enumerate(prompts):
        for j in range(n):
            env = make_environment(spec)
            env.reset(rows[i] if rows is not None else {})
            seed = None if seeds[i] is None else seeds[i] + j
            episodes.append(Episode(i, list(prompt), env, seed))
    _Runner(engine, tokenizer, spec, sampling, max_tokens, tool_turn, pool).run(episodes)
    texts = tokenizer.batch_decode([ep.tokens for ep in episodes], skip_special_tokens=True)
    return [
        Completion(
            ep.prompt_index, ep.tokens, text, ep.logprobs, ep.finish_reason, ep.mask, ep.trace
        )
        for ep, text in zip(episodes, texts, strict=True)
    ]


@dataclass
class _Runner:
    """Steps the engine and the tool pool until every episode is over."""

    engine: Any
    tokenizer: Any
    spec: ToolSpec
    sampling: Callable[..., Any]
    max_tokens: int
    tool_turn: ToolTurn | None
    pool: concurrent.futures.Executor
    running: dict[str, Episode] = field(default_factory=dict)
    pending: dict[concurrent.futures.Future, tuple[Episode, bool]] = field(default_factory=dict)
    ids: Any = field(default_factory=itertools.count)

    def run(self, episodes: list[Episode]) -> None:
        for ep in episodes:
            self.submit(ep)
        while self.running or self.pending:
            if self.running:
                for out in self.engine.step():
                    if out.finished:
                        self.turn_done(self.running.pop(out.request_id), out.outputs[0])
            ready = [f for f in self.pending if f.done()]
            if not ready and self.pending and not self.running:  # nothing decodes: wait
                done = concurrent.futures.wait(
                    self.pending, return_when=concurrent.futures.FIRST_COMPLETED
                ).done
                ready = list(done)
            for future in ready:
                ep, ended = self.pending.pop(future)
                self.step_done(ep, ended, as_step(future.result()))

    def submit(self, ep: Episode) -> None:
        """The episode's next turn as an engine request (or its end, out of turns or tokens)."""
        from vllm.inputs import TokensPrompt

        left = self.max_tokens - len(ep.tokens)
        if ep.trace.turns >= self.spec.max_turns or left <= 0:
            ep.finish_reason = "length"
            return
        params = self.sampling(
            max_tokens=min(left, self.spec.max_turn_tokens or left),
            stop=list(getattr(ep.env, "stop", ())),
            seed=None if ep.seed is None else ep.seed + ep.trace.turns * _TURN_SEED,
        )
        request_id = f"turn-{next(self.ids)}"
        self.running[request_id] = ep
        prompt = TokensPrompt(prompt_token_ids=ep.prompt + ep.tokens)
        self.engine.add_request(request_id, prompt, params)

    def turn_done(self, ep: Episode, sample: Any) -> None:
        """A turn came back: keep its tokens, hand its text to the environment."""
        from rollouts.engine import _sampled_logprobs

        ep.trace.turns += 1
        turn = list(sample.token_ids)
        ep.add(turn, _sampled_logprobs(sample))
        if sample.finish_reason == "length":  # the turn's or the sample's token limit
            ep.finish_reason = "length"
            return
        ended = not isinstance(sample.stop_reason, str)  # eos / end of turn, not a stop string
        text = self.tokenizer.decode(turn, skip_special_tokens=True)
        self.pending[self.pool.submit(ep.env.step, text)] = (ep, ended)

    def step_done(self, ep: Episode, ended: bool, step: Step) -> None:
        """The environment answered: end the episode, or append its observation and go on."""
        ep.record(step)
        inline = getattr(ep.env, "observation_format", "inline") == "inline"
        if step.done or (ended and (inline or step.observation is None)):
            ep.finish_reason = "stop"
            return
        if step.observation is not None:
            if inline or self.tool_turn is None:
                obs = self.tokenizer.encode(step.observation, add_special_tokens=False)
            else:
                obs = self.tool_turn.ids(step.observation)
            left = self.max_tokens - len(ep.tokens)
            ep.add(obs[:left], None)
            if len(obs) >= left:
                ep.finish_reason = "length"
                return
        self.submit(ep)
