"""Run as a script: one vLLM engine (fp32, on this CPU, in this process) of MODEL (a preset
or ``smollm2-135m-instruct``) samples PROMPTS x GROUP completions of TOKENS tokens; prints
JSON with the process's RSS after importing vLLM (the runtime), after the engine is built,
and its peak, with the KV cache vLLM was given. A fresh process, so that the peak is this
engine's alone (tests/rl/test_plan.py compares it with the planner)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def rss_mb(kind: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split(f"{kind}:")[1].split()[0]) / 1024


def main(model: str, prompts: int, group: int, tokens: int, kv_gib: float | None = None) -> dict:
    import os

    from rollouts.worker import ENGINE_ENV

    os.environ.update(ENGINE_ENV)  # as a rollout worker runs it: the engine core in-process
    import torch
    import vllm  # noqa: F401  (the runtime: imported before the first measurement)

    from rl.check import resolve_model
    from rollouts.engine import VLLMEngine

    torch.set_num_threads(2)
    path = resolve_model(model, Path(tempfile.mkdtemp()))
    runtime = rss_mb()
    runtime_file = rss_mb("RssFile")
    max_model_len = 128 + tokens
    engine = VLLMEngine(
        path,
        dtype="float32",
        max_model_len=max_model_len,
        max_num_seqs=prompts * group,
        kv_cache_gib=kv_gib,
    )
    built = rss_mb()
    built_file = rss_mb("RssFile")
    g = torch.Generator().manual_seed(0)
    vocab = min(engine.tokenizer.vocab_size, 1000)
    rows = [torch.randint(10, vocab, (32,), generator=g).tolist() for _ in range(prompts)]
    out = engine.generate(rows, n=group, max_tokens=tokens, seed=0, temperature=1.0)
    peak = rss_mb("VmHWM")  # not ru_maxrss: it keeps the forking parent's RSS over exec
    return {
        "model": model,
        "config": str(Path(path) / "config.json"),
        "runtime_mb": runtime,
        "runtime_file_mb": runtime_file,
        "built_mb": built,
        "built_file_mb": built_file,
        "end_file_mb": rss_mb("RssFile"),
        "end_mb": rss_mb(),
        "peak_mb": peak,
        "sequences": prompts * group,
        "max_model_len": max_model_len,
        "completion_tokens": sum(len(c.token_ids) for c in out),
        **engine.cache_info(),
    }


if __name__ == "__main__":
    model, *sizes = sys.argv[1:5]
    kv = float(sys.argv[5]) if len(sys.argv) > 5 else None
    print("\n" + json.dumps(main(model, *map(int, sizes), kv)), flush=True)
