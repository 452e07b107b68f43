"""What the tools did in a GRPO step (or an evaluation), as metrics-row fields."""

from __future__ import annotations

from collections.abc import Sequence

from rollouts.types import Completion


def tool_metrics(completions: Sequence[Completion], accuracy: Sequence[float]) -> dict:
    """Per-sample tool use of multi-turn ``completions`` (empty for single-turn ones), with
    ``accuracy[i]`` the accuracy reward of completion ``i``:

    - ``tool_calls_per_sample``, ``tool_use_frac`` (samples that ran at least one call),
      ``turns_mean``, ``tool_refused_per_sample`` (calls past the cap);
    - ``tool_error_rate``, ``tool_timeout_rate`` (of the calls run), ``tool_latency_mean_s``
      (per call);
    - ``void_turn_frac`` (samples with a void turn);
    - ``accuracy_with_tool`` / ``accuracy_without_tool``: mean accuracy of the samples that
      did / did not call a tool (None where there are none);
    - ``tool_token_frac``: tool-output tokens over all completion tokens (masked from the loss).
    """
    traces = [c.trace for c in completions if c.trace is not None]
    if not traces:
        return {}
    n = len(traces)
    calls = sum(t.tool_calls for t in traces)
    used = [c.trace is not None and c.trace.tool_calls > 0 for c in completions]
    with_tool = [a for a, u in zip(accuracy, used, strict=True) if u]
    without = [a for a, u in zip(accuracy, used, strict=True) if not u]
    tokens = sum(len(c.token_ids) for c in completions)
    tool_tokens = sum(len(c.mask) - sum(c.mask) for c in completions if c.mask is not None)
    return {
        "tool_calls_per_sample": calls / n,
        "tool_use_frac": sum(used) / n,
        "turns_mean": sum(t.turns for t in traces) / n,
        "tool_refused_per_sample": sum(t.refused_calls for t in traces) / n,
        "tool_error_rate": sum(t.tool_errors for t in traces) / calls if calls else 0.0,
        "tool_timeout_rate": sum(t.tool_timeouts for t in traces) / calls if calls else 0.0,
        "tool_latency_mean_s": sum(t.tool_latency_s for t in traces) / calls if calls else 0.0,
        "void_turn_frac": sum(t.void_turns > 0 for t in traces) / n,
        "accuracy_with_tool": sum(with_tool) / len(with_tool) if with_tool else None,
        "accuracy_without_tool": sum(without) / len(without) if without else None,
        "tool_token_frac": tool_tokens / tokens if tokens else 0.0,
    }
