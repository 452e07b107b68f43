"""What a rollout worker's Ray actor runs with (see ``rollouts.group.RolloutGroup``)."""

from __future__ import annotations

ENGINE_ENV = {
    "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",  # the weight-reload function crosses processes
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TOKENIZERS_PARALLELISM": "false",
}
