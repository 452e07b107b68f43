"""Selective logprobs (chunked, no log-softmax kept) against the plain formula; logits from the
first completion position only against a full forward."""

import pytest
import torch

from model import new_policy
from rl.batch import make_batch
from rl.logprobs import first_target, selected_logprobs, token_logprobs

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
