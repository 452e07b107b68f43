"""Shared by the parity tests: transformers' teacher-forced logprobs of a completion."""

import torch


def teacher_forced(model, prompt, completion, temperature=1.0):
    """Logprobs (len(completion),) of ``completion`` after ``prompt`` under logits / T."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, :-1].float() / temperature, -1)
    return lp[len(prompt) - 1 :].gather(-1, torch.tensor(completion)[:, None])[:, 0]
