"""Session-wide fixtures: one tiny policy, one local Ray cluster, one vLLM rollout worker.

vLLM takes ~25 s to start and Ray ~4 s, so every test that needs them shares these.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ALPHABET = "0123456789+-= "


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """A freshly initialised tiny DeepSeek-V3 policy saved in HF format."""
    from model import new_policy, save_policy

    model, tokenizer = new_policy("tiny-dsv3", ALPHABET, seed=0)
    return str(save_policy(model, tokenizer, tmp_path_factory.mktemp("tiny") / "policy"))


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def rollouts(ray_cluster, tiny_policy_dir):
    """The session's one vLLM engine, as a one-worker RolloutGroup (what ``train`` takes).
    Tests that change its weights must restore them (or push their own) before sampling."""
    from rollouts import RolloutGroup

    group = RolloutGroup(tiny_policy_dir, 1, dtype="float32", max_model_len=128)
    yield group
    group.shutdown()


@pytest.fixture(scope="session")
def rollout_worker(rollouts):
    """The session engine's Ray actor (VLLMEngine methods through ``.remote``)."""
    return rollouts.workers[0]
