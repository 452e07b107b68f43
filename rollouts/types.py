"""What a rollout engine returns."""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"
