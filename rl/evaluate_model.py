"""``r1kit evaluate``: a model and a data set, evaluated on engines of its own.

``evaluate_model`` reads the rows as a recipe's held-out rows are read (``rl.rows.load_rows``:
any file, folder or hub data set, checked row by row), renders their prompts with the model's
chat template (``model.chat.ChatFormat``), starts Ray, one vLLM rollout worker sized to the
longest prompt plus the completion cap, and a reward pool of the accuracy reward, runs
``rl.evaluation.evaluate_rows``, writes the report, and stops what it started.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from rewards import RewardPool
from rl.config import DataSource, ToolsConfig
from rl.config_loader import build
from rl.errors import ConfigError
from rl.evaluation import Policy, Sampling, evaluate_rows, vote_key
from rl.rows import load_rows


def data_source(spec: str) -> DataSource:
    """``--data``: a file, folder or hub data set name, or a YAML mapping of a data source
    (``rl.config.DataSource``'s keys, as a recipe's ``data.eval``).

    >>> data_source("eval.jsonl").path
    'eval.jsonl'
    >>> gsm8k = data_source("{path: openai/gsm8k, name: main, split: test, "
    ...                     "fields: {prompt: question}, answer_format: gsm8k}")
    >>> gsm8k.split, gsm8k.fields.prompt, gsm8k.answer_format
    ('test', 'question', 'gsm8k')
    """
    if not spec.lstrip().startswith("{"):
        return DataSource(path=spec)
    try:
        raw = yaml.safe_load(spec)
    except yaml.YAMLError as e:
        raise ConfigError(f"--data: not a YAML mapping: {e}") from None
    return build(DataSource, raw, prefix="", source="--data")


def tools_config(spec: str) -> ToolsConfig:
    """``--tools``: an environment (``python``, or ``module:Class``), or a YAML mapping of a
    recipe's ``tools`` keys (``rl.config.ToolsConfig``).

    >>> tools_config("python").environment
    'python'
    >>> fns = tools_config("{environment: functions, functions: [mytools:multiply], max_turns: 2}")
    >>> fns.functions, fns.max_turns
    (['mytools:multiply'], 2)
    """
    if not spec.lstrip().startswith("{"):
        raw: Any = {"environment": spec}
    else:
        try:
            raw = yaml.safe_load(spec)
        except yaml.YAMLError as e:
            raise ConfigError(f"--tools: not a YAML mapping: {e}") from None
    tools = build(ToolsConfig, raw, prefix="", source="--tools")
    if tools.environment is None:
        raise ConfigError("--tools: name an environment (python, functions or module:Class)")
    if tools.environment == "functions" and not tools.functions:
        raise ConfigError("--tools: environment functions needs functions: [module:function, ...]")
    return tools


def evaluate_model(
    model: str | Path,
    data: str | DataSource,
    out: str | Path,
    sampling: Sampling,
    *,
    reward: str = "math",
    prompt_template: str = "{prompt}",
    system_prompt: str | None = None,
    limit: int | None = None,
    dtype: str = "float32",
    reward_timeout_s: float = 5.0,
    rollouts: Any = None,
    tools: ToolsConfig | None = None,
) -> dict[str, Any]:
    """Evaluate the Hugging Face model folder (or .gguf file) ``model`` on ``data`` (a
    ``data_source`` spec or a ``DataSource``: rows of ``{"prompt" or "messages", "answer",
    ...}``; its first ``limit`` rows), write the report (``evaluate_rows``'s, with ``model``,
    ``data``, ``reward``, ``wall_s``) to ``out`` as JSON and return it. Starts Ray (unless it
    runs), one vLLM rollout worker (unless ``rollouts``, a running ``RolloutGroup``, is given:
    the model's weights are loaded into it) and a reward pool of ``reward`` alone; stops what it
    started. With ``tools`` (a recipe's ``tools`` section), the samples are multi-turn
    episodes with them, as in training (``max_new_tokens`` bounds each one, tool output
    included)."""
    from transformers import AutoTokenizer

    from model.chat import ChatFormat
    from rl.setup import check_tools, generate_rows

    spec = None
    if tools is not None:
        check_tools(tools, "--tools")
        spec = tools.spec()

    t0 = time.time()
    model_dir = _model_folder(Path(model), dtype)
    src = data if isinstance(data, DataSource) else data_source(data)
    if limit is not None:
        src = replace(src, limit=limit)
    rows = load_rows(src, "eval", "--data", prompt_template)
    schemas = tools.schemas() if tools is not None else None
    chat = ChatFormat(
        AutoTokenizer.from_pretrained(model_dir), system_prompt, prompt_template, tools=schemas
    )
    longest = max(len(chat.prompt_ids(row)) for row in rows)
    with_tools = "" if spec is None else f", with tools {spec.environment!r}"
    tqdm.write(
        f"evaluate {model_dir}: {len(rows)} rows, greedy + {sampling.k} sample(s) per row at "
        f"temperature {sampling.temperature}, reward '{reward}'{with_tools}"
    )
    with (
        RewardPool({reward: 1.0}, timeout_s=reward_timeout_s) as pool,
        _engine(model_dir, dtype, longest + sampling.max_new_tokens, rollouts) as engine,
    ):
        generate = partial(generate_rows, engine, chat, tools=spec)
        policy = Policy(generate, chat.scored_text, pool)
        result = evaluate_rows(policy, rows, sampling, vote_key(reward))
    where = {"model": str(model), "data": src.path or src.reasoning_gym, "reward": reward}
    if spec is not None:
        where["tools"] = spec.environment
    figures = {k: v for k, v in result.items() if k != "rows"}
    result = {**figures, **where, "wall_s": round(time.time() - t0, 1), "rows": result["rows"]}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _model_folder(model: Path, dtype: str) -> Path:
    """``--model``: a Hugging Face folder, or a .gguf file converted once into the cache."""
    if model.suffix == ".gguf" and model.is_file():
        from model.gguf import converted

        return converted(model, dtype)
    if not (model / "config.json").is_file():
        raise ConfigError(
            f"--model {model}: not a Hugging Face model folder (no config.json) nor a .gguf file"
        )
    return model


@contextmanager
def _engine(model_dir: Path, dtype: str, needed_len: int, rollouts: Any) -> Iterator[Any]:
    """A rollout group holding the model: ``rollouts`` with its weights loaded, or one vLLM
    worker (and Ray, unless it runs) started for it and stopped after."""
    import ray

    if rollouts is not None:
        _load_weights(rollouts, model_dir)
        yield rollouts
        return
    from rollouts import RolloutGroup

    limit = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings")
    if limit is not None and needed_len > limit:
        raise ConfigError(
            f"the longest prompt plus --max-new-tokens is {needed_len} tokens, over the "
            f"model's context of {limit}"
        )
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        group = RolloutGroup(str(model_dir), 1, dtype=dtype, max_model_len=needed_len)
        try:
            yield group
        finally:
            group.shutdown()
    finally:
        if own_ray:
            ray.shutdown()


def _load_weights(rollouts: Any, model_dir: Path) -> None:
    """Load the folder's weights (checkpoint naming, as vLLM's loaders take them) into a
    running engine that may hold other ones."""
    from safetensors.torch import load_file

    from rollouts.engine import pack_buckets

    named = [item for f in sorted(model_dir.glob("*.safetensors")) for item in load_file(f).items()]
    rollouts.update_weights(pack_buckets(named, 256 << 20))
