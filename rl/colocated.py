"""Rollout engines colocated with learner ranks: one process (and, on GPUs, one device) per rank
runs both (verl's hybrid engine, TRL's ``vllm_mode="colocate"``).

``ColocatedRank`` is a ``LearnerRank`` whose Ray actor also builds a ``VLLMEngine`` in its own
process (``start_engine``). What that changes:

- no engine process of its own: its Python, torch and vLLM runtime are the rank's (here
  ~0.6-0.7 GB of resident memory per engine that a separate actor would take again);
- the weight sync stays in memory: the rank gathers the full weights (every rank, when
  more than one hosts an engine) and its engine reloads them from those tensors, with no
  serialization, no copy through Ray's object store or /dev/shm (``sync_engine``);
- the phases take turns on the same device: generation and learning never overlap, so
  ``grpo.max_staleness`` must be 0. On a GPU the engine sleeps while its rank trains
  (vLLM's sleep mode, level 1: KV cache dropped, weights moved to host memory) and wakes
  for the next sync; vLLM's sleep mode is CUDA-only, so on CPU both stay resident.

The driver sees these actors twice: as the learner's ranks (``LearnerGroup``) and as the
rollout workers (``RolloutGroup(actors=...)``); a Ray actor runs its calls one at a time,
in the order they were submitted. A dead colocated actor is a dead learner rank: the run
restarts the learner (and so its engines) from the latest checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from rl.batch import Batch
from rl.learner import LearnerRank


class ColocatedRank(LearnerRank):
    """A learner rank that also runs rollout engine ``rank`` (when ``start_engine`` is called)."""

    engine: Any = None  # rollouts.VLLMEngine, built by start_engine

    def start_engine(self, model_dir: str, **engine_kwargs: Any) -> None:
        """Build this rank's vLLM engine in this process (after ``setup``), sleep mode on."""
        from rollouts.engine import VLLMEngine

        self.engine = VLLMEngine(model_dir, sleep_mode=True, **engine_kwargs)

    # -- the learner's turn: its engine sleeps (on GPUs) -------------------------------------

    def _learner_turn(self) -> None:
        if self.engine is not None:
            self.engine.sleep()

    def sft_step(self, batch: Batch, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._learner_turn()
        return super().sft_step(batch, *args, **kwargs)

    def logprobs(self, batch: Batch, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._learner_turn()
        return super().logprobs(batch, *args, **kwargs)

    def grpo_step(self, batch: Batch, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._learner_turn()
        return super().grpo_step(batch, *args, **kwargs)

    # -- the engine's turn --------------------------------------------------------------------

    def _engine(self) -> Any:
        if self.engine is None:
            raise RuntimeError(f"learner rank {self.rank} hosts no rollout engine")
        if self.engine.asleep:
            if torch.cuda.is_available():  # what the learner's step left cached goes first
                torch.cuda.empty_cache()
            self.engine.wake_up()
        return self.engine

    def sync_engine(
        self, version: int | None, full: bool = False, everywhere: bool = False
    ) -> dict:
        """Every rank gathers the full weights (rank 0 only, unless ``everywhere``: other
        ranks host engines too); a rank with an engine loads them into it from memory.
        Returns this rank's sync figures (bytes, tensors and seconds; {} without an engine)."""
        t0 = time.perf_counter()
        state = self._full_state_dict(everywhere)
        if self.engine is None or not state:
            return {}
        gathered = time.perf_counter()
        named = list(self._synced(state, full))
        loaded = self._engine().load_weights(named, version)
        self.last_export = {
            "sync_bytes": sum(t.numel() * t.element_size() for _, t in named),
            "sync_buckets": 1,
            "sync_gather_rank_s": gathered - t0,
            "sync_load_rank_s": time.perf_counter() - gathered,
            "sync_tensors": loaded,
        }
        return self.last_export

    def generate(self, prompts: Sequence[Sequence[int]], **kwargs: Any) -> list:
        return self._engine().generate(prompts, **kwargs)

    def score(self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> list:
        return self._engine().score(sequences, prompt_lens)

    def update_weights(self, blobs: Any, version: int | None = None) -> int:
        return self._engine().update_weights(blobs, version)

    def fingerprint(self, draft: bool = False) -> dict[str, str]:
        return self._engine().fingerprint(draft)

    def speculative_counts(self) -> dict[str, int]:
        return self._engine().speculative_counts()

    def cache_info(self) -> dict[str, int]:
        return self._engine().cache_info()

    def engine_asleep(self) -> bool:
        """Whether this rank's engine sleeps now (GPU only; False on CPU)."""
        return self.engine is not None and self.engine.asleep
