r"""Held-out evaluation: greedy pass@1, and pass@k, mean@k and maj@k of k samples per row.

``r1kit evaluate`` (``rl.evaluate_model``: a model and a data set, with its own Ray, one vLLM
rollout worker and a reward pool) and ``r1kit train``'s held-out evaluations
(``evaluate_held_out``, on the run's workers) both run ``evaluate_rows``:

1. one greedy completion per row (temperature 0): **pass@1** is the fraction scored correct;
2. k completions per row sampled at ``temperature``, row i of the data seeded ``seed + i``
   (the same samples whatever the batching): per row, c of the k correct, **pass@k**
   (unbiased, Chen et al. 2021), **mean@k** (the mean reward), **maj@k** (whether the majority
   answer is correct); ``rl.eval_metrics`` has the formulas. With temperature 0, k must be 1
   and the greedy completions are the samples.

A completion is correct when the accuracy reward (the ``RewardPool`` given) scores what rewards
read (``ChatFormat.scored_text``) >= 1.0. Rows go to the engine ``batch_rows`` at a time; with
more than one batch, a progress bar (off a terminal, a line now and then: ``rl.progress``)
counts them.

maj@k's answers: a sample's answer is what the math reward reads as its final answer
(``rewards.math.final_answers``: ``\boxed{}``, ``<answer>`` tags, the text after ``</think>``,
"the answer is ..."), whitespace collapsed; a sample that gives none, or several different ones
(hedging, which the math reward scores 0), does not vote. With a ``code`` reward the answer is
the extracted program (``rewards.code.extract_code``). Answers are compared as strings, not as
math (``0.5`` and ``\frac{1}{2}`` are two answers): parsing model output as math runs sympy,
which r1kit does only in the reward pool's killable workers. The most frequent answer wins, a
tie goes to the answer given first in sample order, and maj@k is the correctness of the first
sample giving it (with the math reward every sample whose only final answer is that string
scores the same, up to a timeout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from rewards import RewardPool, ScoreResult, extract_code, final_answers, stats
from rl.data import write_rows
from rl.errors import DataError
from rl.eval_metrics import majority_vote, mean_at_k, pass_at_k, pass_curve
from rl.progress import StepProgress

if TYPE_CHECKING:
    from rl.setup import Run

CORRECT = 1.0
"""A completion is correct when the accuracy reward gives it at least this."""

Vote = Callable[[str], "str | None"]


def vote_key(reward: str) -> Vote:
    """How maj@k reads a sample's answer under the accuracy reward ``reward`` (see above)."""
    return _program if reward in ("code", "code_binary") else _final_answer


def _final_answer(text: str) -> str | None:
    r"""The one final answer the text gives (whitespace collapsed); None for none or several.

    >>> _final_answer(r"<think>1+1</think> \boxed{ 2 }"), _final_answer(r"\boxed{2} or \boxed{3}")
    ('2', None)
    """
    answers = {" ".join(a.split()) for a in final_answers(text)}
    return answers.pop() if len(answers) == 1 else None


def _program(text: str) -> str | None:
    return " ".join(extract_code(text).split()) or None


@dataclass
class Policy:
    """What an evaluation samples from and scores with."""

    generate: Callable[..., list]
    """``(rows, n=, temperature=, max_tokens=, seed=)`` -> ``rollouts.Completion`` s, n per row,
    grouped by row in row order, row i seeded ``seed + i`` (as ``rl.setup.Run.generate``)."""
    scored_text: Callable[[str], str]
    """A completion -> what rewards read (``ChatFormat.scored_text``)."""
    pool: RewardPool
    """The accuracy reward, alone."""


@dataclass(frozen=True)
class Sampling:
    """How an evaluation samples."""

    k: int = 1
    """Samples per row for pass@k, mean@k and maj@k."""
    temperature: float = 1.0
    """Their temperature; 0: greedy, then k must be 1 and the samples are the greedy ones."""
    max_new_tokens: int = 64
    """Completion length cap, greedy and sampled."""
    seed: int = 0
    """Row i's samples are drawn with seed + i."""
    batch_rows: int = 256
    """Rows per generation call (one progress step)."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.temperature < 0 or self.batch_rows < 1:
            raise ValueError(f"need k >= 1, temperature >= 0, batch_rows >= 1: {self}")
        if self.temperature == 0 and self.k != 1:
            raise ValueError(
                f"temperature 0 (greedy) gives one completion per row: k must be 1, got {self.k}"
            )

    @property
    def separate(self) -> bool:
        """Whether the k samples are drawn apart from the greedy completions."""
        return self.temperature > 0


def evaluate_rows(
    policy: Policy, rows: Sequence[dict], sampling: Sampling, vote: Vote = _final_answer
) -> dict[str, Any]:
    """The evaluation report of ``rows`` (see ``report``). ``vote`` reads a sample's answer
    for maj@k (``vote_key``). Raises ``DataError`` on a row the reward cannot score."""
    if not rows:
        raise DataError("no rows to evaluate")
    size = sampling.batch_rows
    batches = -(-len(rows) // size)
    steps: Any = range(1, batches + 1)
    if batches > 1:
        per_row = 1 + sampling.k * sampling.separate
        steps = StepProgress(1, batches, f"evaluate ({size} rows x {per_row} completions)")
    results: list[dict] = []
    scores: list[ScoreResult] = []
    for step in steps:
        start = (step - 1) * size
        part, scored = evaluate_batch(
            policy, list(rows[start : start + size]), start, sampling, vote
        )
        results += part
        scores += scored
        if isinstance(steps, StepProgress):
            greedy = sum(r["greedy"]["reward"] >= CORRECT for r in results) / len(results)
            passed = sum(r["pass@k"] for r in results) / len(results)
            steps.set_postfix(**{"pass@1": f"{greedy:.3f}", f"pass@{sampling.k}": f"{passed:.3f}"})
    return report(results, scores, sampling)


def evaluate_batch(
    policy: Policy, batch: list[dict], start: int, sampling: Sampling, vote: Vote
) -> tuple[list[dict], list[ScoreResult]]:
    """Per-row results of ``batch`` (rows ``start, start + 1, ...`` of the data), and every
    score it took."""
    k = sampling.k
    greedy = policy.generate(batch, n=1, temperature=0.0, max_tokens=sampling.max_new_tokens)
    greedy_scores = _score(policy, greedy, batch, start, 1)
    samples, sample_scores = greedy, greedy_scores
    if sampling.separate:
        samples = policy.generate(
            batch,
            n=k,
            temperature=sampling.temperature,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed + start,
        )
        sample_scores = _score(policy, samples, [r for r in batch for _ in range(k)], start, k)
    results = []
    for i, row in enumerate(batch):
        mine = list(
            zip(samples[i * k : (i + 1) * k], sample_scores[i * k : (i + 1) * k], strict=True)
        )
        rewards = [s.reward for _, s in mine]
        answers = [vote(policy.scored_text(c.text)) for c, _ in mine]
        correct = sum(r >= CORRECT for r in rewards)
        winner = majority_vote(answers)
        results.append(
            {
                "index": start + i,
                "prompt": row.get("prompt", row.get("messages")),
                "answer": row.get("answer"),
                "greedy": _entry(greedy[i], greedy_scores[i]),
                "samples": [
                    {**_entry(c, s), "vote": a} for (c, s), a in zip(mine, answers, strict=True)
                ],
                "correct": correct,
                "pass@k": pass_at_k(k, correct, k),
                "mean@k": mean_at_k(rewards),
                "maj@k": float(winner is not None and rewards[winner] >= CORRECT),
                "maj_answer": None if winner is None else answers[winner],
            }
        )
    return results, greedy_scores + (sample_scores if sampling.separate else [])


def _score(policy: Policy, completions: list, rows: list[dict], start: int, k: int) -> list:
    """Scores of ``completions`` (k per row of ``rows``, row 0 being data row ``start``)."""
    texts = [policy.scored_text(c.text) for c in completions]
    scores = policy.pool.score(texts, rows, on_data_error="report")
    bad = next((i for i, s in enumerate(scores) if s.data_error), None)
    if bad is not None:
        row = start + bad // k
        raise DataError(f"evaluation row {row + 1} cannot be scored: {scores[bad].data_error}")
    return scores


def _entry(completion: Any, score: ScoreResult) -> dict:
    out = {
        "completion": completion.text,
        "reward": score.reward,
        "finish_reason": completion.finish_reason,
    }
    if completion.trace is not None:  # a multi-turn sample
        out["tool_calls"] = completion.trace.tool_calls
    if score.timed_out or score.error:
        out["reward_error"] = "timed out" if score.timed_out else score.error
    return out


def report(rows: list[dict], scores: list[ScoreResult], sampling: Sampling) -> dict[str, Any]:
    """``n_rows``, ``k``, ``pass@1`` (greedy), ``pass@k``, ``mean@k``, ``maj@k`` (means of the
    rows'), ``pass_curve`` (unbiased pass@j, j = 1, 2, 4, ..., k, from the same samples), the
    sampling settings, truncation rates, reward errors and timeouts; with tools, the shares
    of greedy completions (``tool_use_frac``) and of samples that called one; and the per-row
    ``rows``: greedy completion and samples with their rewards, c ``correct``, pass@k, mean@k, maj@k and
    the majority answer."""

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    pool = stats(scores)
    tools = {}
    if any("tool_calls" in r["greedy"] for r in rows):  # multi-turn rollouts with tools
        tools = {
            "tool_use_frac": mean(r["greedy"].get("tool_calls", 0) > 0 for r in rows),
            "sample_tool_use_frac": mean(
                s.get("tool_calls", 0) > 0 for r in rows for s in r["samples"]
            ),
        }
    return {
        "n_rows": len(rows),
        "k": sampling.k,
        "pass@1": mean(r["greedy"]["reward"] >= CORRECT for r in rows),
        "pass@k": mean(r["pass@k"] for r in rows),
        "mean@k": mean(r["mean@k"] for r in rows),
        "maj@k": mean(r["maj@k"] for r in rows),
        "pass_curve": pass_curve(sampling.k, [r["correct"] for r in rows]),
        "temperature": sampling.temperature,
        "max_new_tokens": sampling.max_new_tokens,
        "seed": sampling.seed,
        "greedy_truncation_rate": mean(r["greedy"]["finish_reason"] == "length" for r in rows),
        "sample_truncation_rate": mean(
            s["finish_reason"] == "length" for r in rows for s in r["samples"]
        ),
        "reward_errors": pool["reward_errors"],
        "reward_timeouts": pool["reward_timeouts"],
        **tools,
        "rows": rows,
    }


# ---- r1kit train's held-out evaluations, on the run's workers --------------------------------


def evaluate_held_out(run: Run, rows: list[dict], stage: str) -> dict[str, Any]:
    """The held-out evaluation after ``stage`` (start, sft, grpo) of a training run: greedy
    pass@1 as ``accuracy`` with ``n`` rows, and with ``eval.n`` > 1 also ``k``, ``pass@k``,
    ``mean@k``, ``maj@k`` of that many samples at ``eval.temperature``. Written to
    metrics.jsonl (stage ``eval_{stage}``, step null), the dashboards (with the first
    completions) and ``eval_{stage}.jsonl`` (every row's prompt, answer, greedy completion and
    reward; with samples, its samples and majority answer); returned for summary.json."""
    cfg, rollout = run.recipe.eval, run.recipe.rollout
    rows = rows[: cfg.limit] if cfg.limit else rows
    sampling = Sampling(
        k=cfg.n,
        temperature=cfg.temperature if cfg.n > 1 else 0.0,  # n = 1: the greedy completions
        max_new_tokens=cfg.max_new_tokens,
        seed=rollout.seed,
        batch_rows=max(1, rollout.workers * rollout.max_num_seqs // cfg.n),  # an engine batch
    )
    tools = run.recipe.tools.environment is not None and run.recipe.tools.in_eval
    policy = Policy(partial(run.generate, tools=tools), run.chat.scored_text, run.accuracy_pool)
    done = evaluate_rows(policy, rows, sampling, vote_key(run.recipe.rewards.accuracy))
    if run.accuracy_pool is not run.pool:  # the next evaluation starts them again
        run.accuracy_pool.release()
    result = {"accuracy": done["pass@1"], "n": done["n_rows"]}
    if tools:  # greedy completions that called a tool
        result["tool_use_frac"] = done.get("tool_use_frac", 0.0)
    if cfg.n > 1:
        result.update({key: done[key] for key in ("k", "pass@k", "mean@k", "maj@k")})
    run.log.write(step=None, stage=f"eval_{stage}", **result)
    per_row = [
        {
            "prompt": r["prompt"],
            "answer": r["answer"],
            "completion": r["greedy"]["completion"],
            "reward": r["greedy"]["reward"],
            **({"samples": r["samples"], "maj_answer": r["maj_answer"]} if cfg.n > 1 else {}),
        }
        for r in done["rows"]
    ]
    write_rows(run.out / f"eval_{stage}.jsonl", per_row)
    shown = (  # the prompt as the policy saw it, like GRPO's samples
        {"prompt": run.chat.key(row), "completion": r["completion"], "reward": r["reward"]}
        for row, r in zip(rows, per_row, strict=True)
    )
    run.log.write_samples(f"eval_{stage}", None, shown)
    correct = sum(r["reward"] >= CORRECT for r in per_row)
    sampled = f", pass@{cfg.n} {done['pass@k']:.3f}" if cfg.n > 1 else ""
    tqdm.write(
        f"held-out accuracy after {stage.upper()}: {result['accuracy']:.3f} "
        f"({correct}/{result['n']}){sampled}"
    )
    return result
