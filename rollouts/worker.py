"""A rollout worker: a Ray actor owning one vLLM engine."""

from __future__ import annotations

import ray

from rollouts.engine import VLLMEngine

ENGINE_ENV = {
    "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",  # the weight-reload function crosses processes
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TOKENIZERS_PARALLELISM": "false",
}


def start_rollout_worker(
    model_dir: str, *, kv_cache_gib: int = 1, num_gpus: float = 0, **engine_kwargs
) -> ray.actor.ActorHandle:
    """Start a ``VLLMEngine`` actor on ``model_dir``; its methods are called with ``.remote``.

    It asks Ray for no CPU: the engine's own process does the work, and a reserved CPU here
    would only starve the learner's tasks (seen: silent hangs on a 2-core machine).
    """
    env = dict(ENGINE_ENV, VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib))
    actor = ray.remote(num_cpus=0, num_gpus=num_gpus, runtime_env={"env_vars": env})(VLLMEngine)
    return actor.remote(model_dir, kv_cache_gib=kv_cache_gib, **engine_kwargs)
