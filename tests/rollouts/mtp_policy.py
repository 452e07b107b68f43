"""A tiny DeepSeek-V3 policy with an MTP module, trained here in seconds on a language whose
next-token distribution is known: after ``d=`` come digits, each the previous plus 1 or plus
2 (mod 10) with probabilities 0.7 / 0.3, ``LENGTH`` of them, then end of sequence. The policy
learns those probabilities; the MTP module learns the token after next (plus 2, 3 or 4)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from model import new_policy, save_policy
from model.mtp import MTPForward

ALPHABET = "0123456789+-= "
P_ONE = 0.7  # probability of a +1 step
LENGTH = 12


def sample_digits(first: int, rng: random.Random) -> list[int]:
    digits = [first]
    for _ in range(LENGTH - 1):
        digits.append((digits[-1] + (1 if rng.random() < P_ONE else 2)) % 10)
    return digits


def prompt_ids(tokenizer, first: int) -> list[int]:
    return [tokenizer.bos_token_id, *tokenizer.encode(f"{first}=")]


def digit_ids(tokenizer, digits: list[int]) -> list[int]:
    return tokenizer.encode("".join(map(str, digits))) + [tokenizer.eos_token_id]


def train_mtp_policy(path: Path, steps: int = 300, seed: int = 0) -> Path:
    """Train the policy and its MTP module (full SFT, MTP loss weight 1) and save it."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, tok = new_policy("tiny-dsv3", ALPHABET, seed=seed, mtp=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        rows = []
        for _ in range(32):
            first = rng.randrange(10)
            rows.append(prompt_ids(tok, first) + digit_ids(tok, sample_digits(first, rng)))
        ids = torch.tensor(rows)  # all rows have one length
        mask = torch.zeros(ids.shape[0], ids.shape[1] - 1)
        mask[:, 2:] = 1.0  # targets: the digits after "d=" and the end of sequence
        with MTPForward(model, mask) as mtp:
            logits = model(input_ids=ids).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        )
        loss = (nll * mask.reshape(-1)).sum() / mask.sum() + mtp.nll(float(mask.sum()))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_policy(model, tok, path)
