"""Multi-turn rollouts on the session's real vLLM engine (rollouts/multiturn.py): token in,
token out over several turns, masks and logprobs of tool tokens, budgets, seeds, and tool
calls that run while the other samples keep decoding."""

import pytest
import ray
import torch

from model import load_policy, to_vllm_weights
from rollouts.engine import pack_weights
from rollouts.tools import ToolSpec
from tests.parity import teacher_forced

pytestmark = pytest.mark.slow
ECHO = ToolSpec(environment="tests.rollouts.envs:Echo", max_turns=6, workers=4)


@pytest.fixture(scope="module")
def policy(rollout_worker, tiny_policy_dir):
    model, tok = load_policy(tiny_policy_dir)
    ray.get(
        rollout_worker.update_weights.remote(
            pack_weights(to_vllm_weights(model.state_dict().items()))
        )
    )
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, return_dict=False
        )
        for p in ("1+2", "34-5", "7=")
    ]
    return model, tok, prompts


def episodes(worker, prompts, spec=ECHO, rows=None, **kw):
    kw = {"n": 4, "temperature": 1.0, "max_tokens": 48, "seed": 5, **kw}
    rows = rows or [{"calls": 2}] * len(prompts)
    return ray.get(worker.generate.remote(prompts, tools=spec, rows=rows, **kw))


def test_sequences_are_the_sampled_tokens_plus_the_tool_tokens(rollout_worker, policy):
    model, tok, prompts = policy
    out = episodes(rollout_worker, prompts)
    assert len(out) == 12 and [c.prompt_index for c in out] == [
        i for i in range(3) for _ in range(4)
    ]
    called = [c for c in out if c.trace.tool_calls]
    assert called, "the policy wrote no '=' in 12 samples"
    for c in out:
        assert len(c.token_ids) == len(c.mask) == len(c.logprobs) <= 48
        assert sum(n for _, n in c.trace.segments) == len(c.token_ids)
        at = 0
        for who, n in c.trace.segments:  # tool segments: mask 0, logprob 0, the observation
            piece = c.token_ids[at : at + n]
            assert c.mask[at : at + n] == [int(who == "policy")] * n
            if who == "tool":
                assert all(lp == 0.0 for lp in c.logprobs[at : at + n])
                assert tok.decode(piece) in {" 11+", " 22+"}
            at += n
        assert c.trace.tool_calls == sum(who == "tool" for who, _ in c.trace.segments)
        if c.finish_reason == "stop":  # ended by the environment, which said how
            assert c.trace.env_reward == float(c.trace.tool_calls)
    for c in called:  # the engine sampled each turn from exactly this sequence
        prompt = prompts[c.prompt_index]
        ours = teacher_forced(model, prompt, c.token_ids)
        sampled = torch.tensor(c.logprobs)
        on = torch.tensor(c.mask) == 1
        assert (ours[on] - sampled[on]).abs().max() < 1e-4
        scored = ray.get(rollout_worker.score.remote([prompt + c.token_ids], [len(prompt)]))[0]
        assert (torch.tensor(scored)[on] - sampled[on]).abs().max() < 1e-4


def test_seeded_episodes_repeat_and_budgets_hold(rollout_worker, policy):
    _, _, prompts = policy
    a = episodes(rollout_worker, prompts, seed=11)
    b = episodes(rollout_worker, prompts, seed=11)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    short = episodes(rollout_worker, prompts, max_tokens=6)
    assert all(len(c.token_ids) <= 6 for c in short)
    assert any(c.finish_reason == "length" for c in short)
    one_turn = episodes(
        rollout_worker, prompts, spec=ToolSpec(environment=ECHO.environment, max_turns=1)
    )
    assert all(c.trace.turns == 1 for c in one_turn)
    assert all(c.finish_reason == "length" for c in one_turn if c.trace.tool_calls)


def test_a_slow_tool_call_does_not_stop_the_others_decoding(rollout_worker, policy, tmp_path):
    """One sample's first call sleeps 2 s; the other samples' turns, each a decode on the
    engine, go on meanwhile (their steps run inside the slow call's interval)."""
    _, _, prompts = policy
    log = tmp_path / "steps.log"
    rows = [{"calls": 4, "slow": i == 0, "log": str(log)} for i in range(len(prompts))]
    spec = ToolSpec(environment="tests.rollouts.envs:Timed", max_turns=6, workers=4)
    episodes(rollout_worker, prompts, spec=spec, rows=rows, n=2, max_tokens=64)
    steps = [line.split() for line in log.read_text().splitlines()]
    slow = [(float(a), float(b)) for kind, a, b in steps if kind == "slow"]
    fast = [float(a) for kind, a, _ in steps if kind == "fast"]
    start, end = min(s for s, _ in slow), min(e for s, e in slow if e - s > 1.5)
    # a step starts as soon as its turn's request finishes in an engine step: steps that
    # start inside the slow call (not with it) are turns decoded while it ran
    during = [t for t in fast if start + 0.1 < t < end]
    assert len(during) >= 2, (slow, fast)
