"""Shared by the parity tests: transformers' teacher-forced logprobs of a completion."""

import torch


def teacher_forced(model, prompt, completion, temperature=1.0):
    """Logprobs (len(completion),) of ``completion`` after ``prompt`` under logits / T."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0, :-1].float() / temperature, -1)
    return lp[len(prompt) - 1 :].gather(-1, torch.tensor(completion)[:, None])[:, 0]


def chat_prompts(tokenizer, questions):
    """Each question as a one-turn chat prompt's token ids (the generation prompt added)."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
        )
        for q in questions
    ]


def engine_gap(model, prompts, completions):
    """|teacher-forced logprob under ``model`` - the engine's logprob| of every sampled token
    of ``completions`` (rollouts.types.Completion of ``prompts``), concatenated."""
    return torch.cat(
        [
            (
                teacher_forced(model, prompts[c.prompt_index], c.token_ids)
                - torch.tensor(c.logprobs)
            ).abs()
            for c in completions
        ]
    )
