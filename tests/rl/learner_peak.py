"""Run as a script: one learner rank of MODEL (fp32, gloo, world of one; SmolLM2 unless a
preset or a folder is named) takes two GRPO steps on ROWS random rows of PROMPT +
COMPLETION tokens in one micro-batch; prints JSON with the
process's RSS after importing (the runtime), and its peak. A fresh process, so that the peak
is this rank's alone (tests/rl/test_plan.py compares it with the planner)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace


def rss_mb(kind: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split(f"{kind}:")[1].split()[0]) / 1024


def main(rows: int, prompt: int, completion: int, model: str = "smollm2-135m-instruct") -> dict:
    import tempfile
    from pathlib import Path

    import torch

    from rl.batch import make_batch
    from rl.check import resolve_model
    from rl.learner import LearnerRank
    from rl.loss_config import LossConfig

    path = resolve_model(model, Path(tempfile.mkdtemp()))
    vocab = min(json.loads((path / "config.json").read_text())["vocab_size"], 1000)
    runtime = rss_mb()
    rank = LearnerRank(0, 1, str(path), dtype="float32", backend="gloo", threads=2)
    rank.setup(*rank.address())
    rank.configure_optimizer(1e-6)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (prompt,), generator=g).tolist() for _ in range(rows)]
    completions = [
        torch.randint(3, vocab, (completion,), generator=g).tolist() for _ in range(rows)
    ]
    batch = make_batch(prompts, completions, 0, [1.0, -1.0] * (rows // 2))
    old = rank.logprobs(batch, micro_batch_size=rows, temperature=1.0)
    batch = replace(batch, old_logprobs=old, rollout_logprobs=old)
    for _ in range(2):
        rank.grpo_step(
            batch,
            num_tokens=float(batch.loss_mask.sum()),
            num_seqs=float(rows),
            lr=1e-6,
            micro_batch_size=rows,
            loss=LossConfig(),
        )
    peak = rss_mb("VmHWM")  # not ru_maxrss: it keeps the forking parent's RSS over exec
    rank.shutdown()
    return {
        "runtime_mb": runtime,
        "peak_mb": peak,
        "tokens": rows * (prompt + completion),
        "config": str(path / "config.json"),
    }


if __name__ == "__main__":
    print(json.dumps(main(*map(int, sys.argv[1:4]), *sys.argv[4:5])))
