"""Speculative rollouts drafted by the policy's own MTP module, on vLLM's CPU build: greedy
decoding is the policy's argmax token for token, sampled decoding is the policy's distribution
(its logprobs, and a calibration test of what it samples), the engine accepts drafts as often
as the learner's MTP forward predicts (the two implementations agree on what the module
computes), and a weight sync reaches the draft."""

from __future__ import annotations

import math
import random

import pytest
import torch

from model import load_policy
from model.mtp import MTPForward, attach_mtp
from rl.logprobs import token_logprobs
from tests.rollouts.mtp_policy import LENGTH, digit_ids, prompt_ids, train_mtp_policy

pytestmark = pytest.mark.slow
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def mtp_policy(tmp_path_factory):
    path = train_mtp_policy(tmp_path_factory.mktemp("mtp") / "policy")
    model, tokenizer = load_policy(path)
    return path, model.eval(), tokenizer


@pytest.fixture(scope="module")
def engine(mtp_policy):
    from rollouts.engine import VLLMEngine

    engine = VLLMEngine(mtp_policy[0], speculative_tokens=1, max_model_len=64, max_num_seqs=256)
    yield engine
    del engine.llm


def _prompts(tokenizer, n: int) -> list[list[int]]:
    return [prompt_ids(tokenizer, i % 10) for i in range(n)]


def _batch(prompts, completions):
    """(B, T) ids and attention mask of prompt + completion rows, right-padded with 0."""
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
    return ids, attn


def _generate(engine, prompts, **kw):
    before = engine.speculative_counts()
    out = engine.generate(prompts, max_tokens=LENGTH + 1, **kw)
    after = engine.speculative_counts()
    return out, {k: after[k] - before.get(k, 0) for k in after}


@torch.no_grad()
def _argmax(model, prompt: list[int], n: int) -> list[int]:
    """The policy's greedy continuation of ``prompt``, ``n`` tokens, one forward per token."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_speculative_needs_a_checkpoint_with_an_mtp_module(tiny_policy_dir):
    from rollouts.engine import VLLMEngine

    with pytest.raises(ValueError, match="num_nextn_predict_layers is 0"):
        VLLMEngine(tiny_policy_dir, speculative_tokens=1)


def test_greedy_speculative_decoding_is_the_policy_argmax(mtp_policy, engine):
    _, model, tokenizer = mtp_policy
    prompts = _prompts(tokenizer, 10)
    out, counts = _generate(engine, prompts, temperature=0.0)
    for prompt, completion in zip(prompts, out, strict=True):
        assert completion.token_ids == _argmax(model, prompt, len(completion.token_ids))
    assert counts["draft_tokens"] > 0 and counts["accepted"] > 0


def test_sampled_speculative_decoding_keeps_the_policy_distribution(mtp_policy, engine):
    """The engine's logprobs are the policy's, and what it samples is calibrated: over every
    sampled digit, the count of +1 steps minus the policy's probability of a +1 step at that
    prefix is a sum of zero-mean terms, |z| < 4 (it was 19+ with vLLM-CPU's broken
    temperature expansion). The engine accepts drafts as often as the learner's MTP forward
    expects on these very samples."""
    _, model, tokenizer = mtp_policy
    prompts = _prompts(tokenizer, 20)
    out, counts = _generate(engine, prompts, n=16, temperature=TEMPERATURE, seed=0)
    rows = [prompts[c.prompt_index] for c in out]
    ids, attn = _batch(rows, [c.token_ids for c in out])
    with torch.no_grad():
        learner = token_logprobs(model, ids, attn, TEMPERATURE)
        probs = torch.softmax(model(input_ids=ids, attention_mask=attn).logits / TEMPERATURE, -1)
    digit = {d: tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)}
    worst, excess, variance = 0.0, 0.0, 0.0
    for i, (prompt, c) in enumerate(zip(rows, out, strict=True)):
        start = len(prompt) - 1
        engine_lp = torch.tensor(c.logprobs)
        worst = max(
            worst, float((learner[i, start : start + len(c.token_ids)] - engine_lp).abs().max())
        )
        text = [tokenizer.convert_ids_to_tokens(t) for t in c.token_ids]
        for t in range(1, len(text)):
            if not (text[t - 1].isdigit() and text[t].isdigit()):
                continue
            p = float(probs[i, start + t, digit[(int(text[t - 1]) + 1) % 10]])
            excess += (int(text[t]) == (int(text[t - 1]) + 1) % 10) - p
            variance += p * (1 - p)
    assert worst < 1e-3, f"engine logprobs are not the policy's: max |diff| {worst:.2e}"
    assert variance > 100  # enough sampled steps to tell
    z = excess / math.sqrt(variance)
    assert abs(z) < 4, f"samples are not the policy's distribution: z = {z:.1f}"

    mask = torch.zeros(ids.shape[0], ids.shape[1] - 1)
    for i, (prompt, c) in enumerate(zip(rows, out, strict=True)):
        mask[i, len(prompt) - 1 : len(prompt) - 1 + len(c.token_ids)] = 1
    with torch.no_grad(), MTPForward(model, mask, temperature=TEMPERATURE) as mtp:
        model(input_ids=ids, attention_mask=attn)
    engine_rate = counts["accepted"] / counts["draft_tokens"]
    assert counts["draft_tokens"] > 500
    assert abs(engine_rate - mtp.acceptance) < 0.08, (engine_rate, mtp.acceptance)


def test_a_weight_sync_reaches_the_draft(mtp_policy, engine):
    """A sync of other MTP weights changes the draft (not the target) and lowers acceptance;
    syncing the trained ones back restores both exactly (greedy decoding: same counts)."""
    from model import to_vllm_weights
    from rollouts.engine import pack_weights

    _, model, tokenizer = mtp_policy
    n = model.config.num_hidden_layers
    trained = {
        k: v
        for k, v in to_vllm_weights(model.state_dict().items())
        if k.startswith(f"model.layers.{n}.")
    }
    untrained_model, _ = load_policy(mtp_policy[0])
    untrained_model.get_decoder().layers = untrained_model.get_decoder().layers[:n]
    torch.manual_seed(1)
    attach_mtp(untrained_model, init_from_last=True)
    untrained = {
        k: v
        for k, v in to_vllm_weights(untrained_model.state_dict().items())
        if k.startswith(f"model.layers.{n}.")
    }
    prompts = _prompts(tokenizer, 10)
    target, draft = engine.fingerprint(), engine.fingerprint(draft=True)
    assert draft
    _, good = _generate(engine, prompts, temperature=0.0)

    assert engine.update_weights(pack_weights(untrained.items())) == len(untrained)
    assert engine.fingerprint() == target
    assert engine.fingerprint(draft=True) != draft
    _, bad = _generate(engine, prompts, temperature=0.0)
    assert bad["accepted"] / bad["draft_tokens"] < good["accepted"] / good["draft_tokens"] - 0.2

    engine.update_weights(pack_weights(trained.items()))
    assert engine.fingerprint(draft=True) == draft
    _, again = _generate(engine, prompts, temperature=0.0)
    assert again == good


def test_vllm_cpu_expand_kernel_still_drops_float_results():
    """Why ``rollouts.vllm_cpu._fix_sampling`` exists: vLLM-CPU's expansion of
    per-request values to draft tokens writes into an int64 copy of a float output and drops
    it. When this fails, vLLM fixed it: remove the patch."""
    pytest.importorskip("vllm._custom_ops")
    from vllm.utils.cpu_triton_utils import _expand_kernel_impl

    from rollouts.vllm_cpu import expand_batch_to_tokens

    values = torch.tensor([0.7, 0.0, 1.3])
    cu = torch.tensor([1, 3, 4], dtype=torch.int32)
    out = torch.full((4,), -5.0)
    _expand_kernel_impl(out, values, cu, 0, 1)
    assert out.tolist() == [-5.0] * 4  # untouched
    expected = [0.7, 1.0, 1.0, 1.3]
    assert expand_batch_to_tokens(values, cu, 4, 0, 1).tolist() == pytest.approx(expected)


def test_digit_language_is_what_the_policy_learned(mtp_policy):
    """The fixture's policy puts about P_ONE on a +1 step (else the calibration test above
    would test little): its mean probability of +1 over digits is 0.6-0.8."""
    _, model, tokenizer = mtp_policy
    rng = random.Random(3)
    from tests.rollouts.mtp_policy import sample_digits

    rows = [
        prompt_ids(tokenizer, d) + digit_ids(tokenizer, sample_digits(d, rng)) for d in range(10)
    ]
    ids = torch.tensor(rows)
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits, -1)
    p_one = []
    for i, row in enumerate(rows):
        text = tokenizer.convert_ids_to_tokens(row)
        for t in range(4, len(row) - 1):
            if text[t].isdigit():
                nxt = tokenizer.convert_tokens_to_ids(str((int(text[t]) + 1) % 10))
                p_one.append(float(probs[i, t, nxt]))
    assert 0.6 < sum(p_one) / len(p_one) < 0.8


def test_verify_tokens_become_causal_decode_rows():
    """``rollouts.vllm_cpu.decode_rows``: requests of 2, 1 and 3 query tokens (the last of
    7, 4 and 10 cached tokens) -> one row per token with its request's block table, each
    seeing the cache up to and including itself."""
    from rollouts.vllm_cpu import decode_rows

    blocks = torch.tensor([[5, 6], [7, 0], [8, 9]])
    table, lens = decode_rows(torch.tensor([0, 2, 3, 6]), torch.tensor([7, 4, 10]), blocks)
    assert lens.tolist() == [6, 7, 4, 8, 9, 10] and lens.dtype == torch.int32
    assert table.tolist() == [[5, 6], [5, 6], [7, 0], [8, 9], [8, 9], [8, 9]]
    # the decode requests of a batch need not start at token 0
    table, lens = decode_rows(torch.tensor([4, 6]), torch.tensor([7]), blocks[:1])
    assert lens.tolist() == [6, 7] and table.tolist() == [[5, 6], [5, 6]]


def test_two_draft_tokens_per_step_decode_the_policy_argmax(mtp_policy):
    """k = 2: verify steps of 3 tokens and, as drafts get rejected, of mixed lengths, through
    r1kit's multi-token decode rows on CPU (rollouts/vllm_cpu.py): still the argmax.

    Last in this file: a second engine in one process re-registers vLLM's Prometheus metrics,
    after which the module engine's speculative counters read 0 (each rollout worker of a run
    is a process of its own)."""
    from rollouts.engine import VLLMEngine

    _, model, tokenizer = mtp_policy
    engine = VLLMEngine(mtp_policy[0], speculative_tokens=2, max_model_len=64, max_num_seqs=32)
    try:
        prompts = _prompts(tokenizer, 10)
        out, counts = _generate(engine, prompts, temperature=0.0)
    finally:
        del engine.llm
    for prompt, completion in zip(prompts, out, strict=True):
        assert completion.token_ids == _argmax(model, prompt, len(completion.token_ids))
    assert counts["draft_tokens"] == 2 * counts["drafts"] and counts["accepted"] > 0
