"""A stand-in for VLLMEngine inside a Ray actor: starts in a second, and its samples are a
pure function of (weights, prompt, seed), so where or how often a chunk ran cannot show."""

from __future__ import annotations

import os

from rollouts.types import Completion

DIE = [-1]  # a prompt that kills the worker serving it, every time
BAD = [-2]  # a prompt the engine rejects (an ordinary error, not a death)


class EngineDeadError(RuntimeError):
    """Named like vLLM's: raised by every call once the engine process is gone."""


class FakeEngine:
    def __init__(self, model_dir: str, *, seed: int = 0, kv_cache_gib: float | None = None) -> None:
        self.weights = f"loaded {model_dir}"
        self.weight_version = 0
        self.engine_dead = False

    def generate(
        self,
        prompts,
        *,
        n=1,
        temperature=1.0,
        top_p=1.0,
        max_tokens=64,
        seed=None,
        seed_offset=0,
        stop_token_ids=None,
    ):
        if self.engine_dead:
            raise EngineDeadError("engine core died")
        if DIE in prompts:
            os._exit(1)
        if BAD in prompts:
            raise ValueError("bad prompt")
        return [
            Completion(
                i,
                [*p, seed + seed_offset + i, k],
                self.weights,
                [],
                "stop",
                weight_version=self.weight_version,
            )
            for i, p in enumerate(prompts)
            for k in range(n)
        ]

    def update_weights(self, blobs, version=None):
        if self.engine_dead:
            raise EngineDeadError("engine core died")
        if version is not None:
            self.weight_version = version
        blobs = [blobs] if isinstance(blobs, bytes) else blobs
        if not blobs:
            return 0
        self.weights = b"".join(blobs).decode()
        return len(blobs)

    def fingerprint(self):
        return {"weights": self.weights}

    def kill_engine(self):
        self.engine_dead = True
