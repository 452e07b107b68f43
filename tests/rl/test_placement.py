"""Placement knobs: what the recipe's rollout and learner keys make of the engines' bundles
and the learner ranks' resources on a cluster with or without GPUs. The cluster's GPUs
decide (the driver itself often has none); the GPU runs themselves are marked ``gpu``
(tests/rl/test_learner_rank.py's memory knobs) or not run here (tensor parallelism)."""

import pytest

from rl.config import load_recipe
from rl.errors import ConfigError
from rl.setup import placement_options

KNOBS = [
    "rollout.tensor_parallel_size=2",
    "rollout.gpu_memory_utilization=0.55",
    "rollout.resources={rollout_node: 1}",
    "learner.resources={learner_node: 1}",
    "learner.activation_checkpointing=true",
    "learner.offload_optimizer=true",
]


def test_on_gpus_engines_take_their_tensor_parallel_gpus_and_each_rank_one():
    engines, ranks = placement_options(load_recipe("recipes/demo.yaml", KNOBS), gpus=8)
    assert engines["bundle"] == {"GPU": 2} and engines["resources"] == {"rollout_node": 1}
    assert engines["tensor_parallel_size"] == 2 and engines["gpu_memory_utilization"] == 0.55
    assert ranks["num_gpus_per_rank"] == 1 and ranks["resources"] == {"learner_node": 1}
    assert ranks["activation_checkpointing"] and ranks["offload_optimizer"]


def test_a_gloo_learner_takes_no_gpu_and_defaults_ask_for_none_of_the_knobs():
    engines, ranks = placement_options(
        load_recipe("recipes/demo.yaml", ["learner.backend=gloo"]), gpus=8
    )
    assert ranks["num_gpus_per_rank"] == 0 and engines["bundle"] == {"GPU": 1}
    assert not ranks["activation_checkpointing"] and not ranks["offload_optimizer"]
    assert engines["resources"] == {} and ranks["resources"] == {}


def test_without_gpus_everything_is_placed_on_cpus():
    engines, ranks = placement_options(load_recipe("recipes/demo.yaml", KNOBS[1:]), gpus=0)
    assert engines["bundle"] == {"CPU": 0.01} and ranks["num_gpus_per_rank"] == 0
    assert engines["resources"] == {"rollout_node": 1}  # custom resources still place them


def test_tensor_parallelism_without_gpus_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"tensor_parallel_size': 2 needs GPUs"):
        placement_options(load_recipe("recipes/demo.yaml", KNOBS[:1]), gpus=0)
