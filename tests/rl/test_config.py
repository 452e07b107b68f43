"""Recipe loading: every bad key, type or value is one error that names it."""

import pytest

from rl.config import load_recipe
from rl.errors import ConfigError


@pytest.fixture
def recipe_file(tmp_path):
    def write(text: str):
        path = tmp_path / "r.yaml"
        path.write_text(text)
        return path

    return write


def test_the_default_recipe_loads_with_overrides():
    recipe = load_recipe(
        "recipes/demo.yaml", ["grpo.steps=7", "learner.world_size=1", "sft.lr=3e-4"]
    )
    assert (recipe.grpo.steps, recipe.learner.world_size, recipe.sft.lr) == (7, 1, 3e-4)
    assert recipe.model.preset == "tiny-dsv3"


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        (
            "grpo: {stpes: 3}\ndata: {generator: a:b}",
            [],
            r"unknown key 'grpo.stpes' \(did you mean 'grpo.steps'\?\)",
        ),
        ("bogus: 1\ndata: {generator: a:b}", [], "unknown key 'bogus'"),
        (
            "grpo: {steps: many}\ndata: {generator: a:b}",
            [],
            "key 'grpo.steps' must be int, got 'many'",
        ),
        (
            "grpo: {estimator: ppo}\ndata: {generator: a:b}",
            [],
            "key 'grpo.estimator' must be one of",
        ),
        ("grpo: 3\ndata: {generator: a:b}", [], "key 'grpo' must be a mapping"),
        ("data: {generator: a:b}", ["sft.stepz=1"], "unknown key 'sft.stepz'"),
        ("data: {generator: a:b}", ["oops"], "expected key=value"),
        (
            "model: {dtype: fp8}\ndata: {generator: a:b}",
            [],
            "key 'model.dtype' must be float32 or bfloat16",
        ),
        ("[1, 2]", [], "a recipe is a mapping"),
        ("a: [unclosed", [], "not valid YAML"),
    ],
)
def test_bad_recipes_name_the_key(recipe_file, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe_file(text), overrides)


def test_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found: .*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")
