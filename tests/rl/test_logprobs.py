"""Selective logprobs (chunked, no log-softmax kept) against the plain formula; logits from the
first completion position only against a full forward; rows packed by shared prompt against
rows one by one; micro-batch cuts by rows and tokens."""

import pytest
import torch

from model import new_policy
from rl.batch import make_batch, micro_batch_starts
from rl.logprobs import (
    first_target,
    selected_logprobs,
    share_prompts,
    shared_token_logprobs,
    token_logprobs,
)

ALPHABET = "0123456789+-= "


def plain(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, targets[..., None]).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_selected_logprobs_values_and_gradients_match_log_softmax(temperature, chunk):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 7, 50, generator=gen, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 50, (3, 7), generator=gen)
    weights = torch.randn(3, 7, generator=gen, dtype=torch.float64)

    ours = selected_logprobs(logits, targets, temperature, chunk=chunk)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), logits)
    ref = plain(logits, targets, temperature)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), logits)

    assert ours.dtype == torch.float32 and ours.shape == (3, 7)
    torch.testing.assert_close(ours.double(), ref.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_ours, grad_ref, atol=1e-5, rtol=1e-5)


def test_selected_logprobs_bf16_logits_get_bf16_gradients_close_to_fp32():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 1000, generator=gen)
    targets = torch.randint(0, 1000, (64,), generator=gen)
    low = logits.bfloat16().requires_grad_()
    ours = selected_logprobs(low, targets, chunk=16)
    ours.sum().backward()
    full = logits.clone().requires_grad_()
    plain(full, targets, 1.0).sum().backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours, plain(low, targets, 1.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low.grad.float(), full.grad, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-dsv3"])
def test_logits_from_the_first_target_on_equal_full_forward_on_the_mask(preset):
    model, tok = new_policy(preset, ALPHABET, seed=0)
    prompts = [[1, 4, 12, 13, 5, 3], [1, 4, 14, 5], [1, 4, 12, 15, 16, 5]]
    completions = [[14, 12, 2], [13, 7, 7, 7, 2], [12, 2]]
    batch = make_batch(prompts, completions, tok.pad_token_id)
    start = first_target(batch.loss_mask)
    assert start == 3  # the shortest prompt (4 tokens) predicts its first completion token at 3

    full, full_entropy = token_logprobs(
        model, batch.input_ids, batch.attention_mask, 0.7, with_entropy=True
    )
    part, part_entropy = token_logprobs(
        model, batch.input_ids, batch.attention_mask, 0.7, with_entropy=True, start=start
    )
    mask = batch.loss_mask > 0
    assert part.shape == full.shape and (part[:, :start] == 0).all()
    torch.testing.assert_close(part[mask], full[mask], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(part_entropy[mask], full_entropy[mask], atol=1e-6, rtol=1e-6)


def test_first_target_of_an_empty_mask_is_zero():
    assert first_target(torch.zeros(2, 5)) == 0


def _group_batch(tok):
    """Two prompts of different lengths, three and two completions each, one row of the first
    prompt with an empty loss mask (as a truncated row or an inert padding row has)."""
    a, b = [1, 4, 12, 13, 5, 3], [1, 4, 14, 5]
    prompts = [a, b, a, a, b, a]
    completions = [[14, 12, 2], [13, 7, 7, 7, 2], [12, 2], [9, 9, 9, 9, 9, 9, 2], [8, 2], [6, 2]]
    batch = make_batch(prompts, completions, tok.pad_token_id)
    batch.loss_mask[5] = 0
    return batch


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-dsv3"])
@pytest.mark.parametrize("max_tokens", [1024, 14])  # 14: the first prompt's rows in two packs
def test_shared_prompt_packs_give_the_same_logprobs_entropies_and_gradients(preset, max_tokens):
    model, tok = new_policy(preset, ALPHABET, seed=0)
    batch = _group_batch(tok)
    packed = share_prompts(batch.input_ids, batch.loss_mask, max_tokens, min_saving=0.0)
    assert packed is not None
    assert len(packed.input_ids) == (2 if max_tokens == 1024 else 3)
    assert packed.input_ids.shape[1] <= max(max_tokens, 6 + 7)  # a row longer than the cap: alone

    mask = batch.loss_mask > 0
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0)) * mask
    start = first_target(batch.loss_mask)
    ref, ref_entropy = token_logprobs(
        model, batch.input_ids, batch.attention_mask, 0.7, with_entropy=True, start=start
    )
    (ref * weights).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ours, entropy = shared_token_logprobs(
        model, packed, batch.input_ids, batch.loss_mask, 0.7, with_entropy=True
    )
    (ours * weights).sum().backward()

    assert ours.shape == ref.shape and (ours[~mask] == 0).all()
    torch.testing.assert_close(ours[mask], ref[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy[mask], ref_entropy[mask], atol=1e-5, rtol=1e-5)
    assert ref_grads and sum(g.abs().sum() for g in ref_grads.values()) > 0
    for name, grad in ref_grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-5, rtol=1e-4)


def test_no_shared_prompt_or_no_saving_means_no_packing():
    _, tok = new_policy("tiny-qwen2", ALPHABET, seed=0)
    batch = make_batch([[1, 4, 5], [1, 6, 5]], [[7, 2], [8, 2]], tok.pad_token_id)
    assert share_prompts(batch.input_ids, batch.loss_mask, 1024) is None  # distinct prompts
    batch = _group_batch(tok)
    assert share_prompts(batch.input_ids, batch.loss_mask, 1024, min_saving=0.9) is None
    batch.loss_mask.zero_()
    assert share_prompts(batch.input_ids, batch.loss_mask, 1024, min_saving=0.0) is None


def test_micro_batch_starts_cut_by_rows_and_by_padded_tokens():
    lengths = [50, 40, 30, 20, 10, 10, 10, 10]  # longest first
    assert micro_batch_starts(lengths, 3, None) == [0, 3, 6]
    assert micro_batch_starts(lengths, 8, 100) == [0, 2, 5]  # 50, 40 | 30, 20, 10 | 10, 10, 10
    assert micro_batch_starts(lengths, 8, 30) == [0, 1, 2, 3, 4, 7]  # over the cap: alone
    assert micro_batch_starts([], 4, 100) == []
