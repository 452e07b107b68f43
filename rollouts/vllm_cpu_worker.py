"""Imported by vLLM in a speculative engine's worker process on a CPU (``worker_extension_cls``,
rollouts/vllm_cpu.py): the import applies the CPU fixes there, before the worker is built."""

from rollouts.vllm_cpu import apply

apply()


class CPUSpeculativeFixes:
    """The worker extension vLLM mixes into its worker class: it adds no methods."""
