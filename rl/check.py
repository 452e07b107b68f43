"""``r1kit check``: does the rollout engine compute the learner's policy, before and after a sync?

1. Load the policy in the FSDP2 learner and in the vLLM engine; sample probe completions.
2. Parity: the learner's teacher-forced logprobs of the sampled tokens against the engine's
   sampling logprobs (|diff| mean, p99, max), and, for MoE policies, how often the learner's
   top-k expert choice agrees between the no-grad forward that computes old logprobs and the
   training forward (routing agreement).
3. Sync: one SFT step moves every weight the probe batch reaches; the weights go through the
   real sync path (gather, pack, reload); the engine's teacher-forced logprobs are compared
   with the learner's before and after. A sync must add no error: a tensor family left stale
   (``kv_b_proj``, the experts) shows as a jump of 1e-2 or more.

Thresholds: ``rl.parity.THRESHOLDS``, with the figures they come from.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from rl.batch import Batch, make_batch
from rl.learner_group import LearnerGroup
from rl.parity import THRESHOLDS, abs_diff_stats, probe_prompts

PROBE_ALPHABET = "0123456789+-*/=() abcdefghijklmnopqrstuvwxyz?."


def resolve_model(model: str, workdir: Path) -> Path:
    """A Hugging Face folder, or a preset built from scratch (seed 0) into ``workdir``."""
    from model import PRESETS, new_policy, save_policy
    from model.assets import PRETRAINED

    if model.lower() in PRETRAINED:
        return PRETRAINED[model.lower()]()
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return path
    if path.suffix == ".gguf" and path.is_file():
        from model.gguf import converted

        return converted(path)
    if model in PRESETS:
        policy, tokenizer = new_policy(model, PROBE_ALPHABET, seed=0)
        return save_policy(policy, tokenizer, workdir / model)
    raise ValueError(
        f"--model {model!r}: not a Hugging Face model folder, a .gguf file nor a preset "
        f"({sorted(PRESETS)})"
    )


def _learner_vs(learner: LearnerGroup, batch: Batch, engine_logprobs: torch.Tensor) -> torch.Tensor:
    """|learner - engine| over every completion token (flat); engine_logprobs (B, T-1)."""
    ours = learner.logprobs(batch, 64, 1.0)  # (B, T-1), 0 off the mask
    return (ours - engine_logprobs).abs()[batch.loss_mask > 0]


def probe_batch(
    rollout: Any, tokenizer: Any, prompts: int, samples: int, max_tokens: int, seed: int
) -> Batch:
    """``samples`` completions of each of ``prompts`` random probe prompts, sampled by the
    engine at temperature 1, as a Batch holding the engine's sampling logprobs."""
    from model import pad_token_id

    probes = probe_prompts(len(tokenizer), set(tokenizer.all_special_ids), prompts, seed=seed)
    completions = ray.get(
        rollout.generate.remote(
            probes, n=samples, temperature=1.0, max_tokens=max_tokens, seed=seed
        )
    )
    return make_batch(
        [probes[c.prompt_index] for c in completions],
        [c.token_ids for c in completions],
        pad_token_id(tokenizer),
        None,
        [c.logprobs for c in completions],
    )


def _engine_scores(rollout: Any, batch: Batch) -> torch.Tensor:
    """The engine's teacher-forced logprobs of the batch's completions, laid out like
    ``batch.loss_mask`` (B, T-1)."""
    lengths = batch.attention_mask.sum(1).tolist()
    prompt_lengths = (batch.loss_mask.argmax(1) + 1).tolist()  # first completion token
    sequences = [ids[:n].tolist() for ids, n in zip(batch.input_ids, lengths, strict=True)]
    scores = ray.get(rollout.score.remote(sequences, prompt_lengths))
    out = torch.zeros_like(batch.loss_mask)
    for row, (start, values) in enumerate(zip(prompt_lengths, scores, strict=True)):
        out[row, start - 1 : start - 1 + len(values)] = torch.tensor(values)
    return out


def quick_check(rollout: Any, learner: LearnerGroup, tokenizer: Any, dtype: str) -> dict:
    """The cheap start-of-run version: sampled-token parity on 4 x 2 probe completions.
    Raises ``R1kitError`` over the thresholds; returns the |diff| stats otherwise."""
    from rl.errors import R1kitError

    batch = probe_batch(rollout, tokenizer, prompts=4, samples=2, max_tokens=16, seed=1)
    stats = abs_diff_stats(_learner_vs(learner, batch, batch.rollout_logprobs))
    limits = THRESHOLDS[dtype]
    bad = [k for k in ("mean", "max") if stats[k] > limits[k]]
    if bad:
        raise R1kitError(
            "the rollout engine does not compute the learner's policy: logprob |diff| "
            + ", ".join(f"{k} {stats[k]:.3g} > {limits[k]:g}" for k in bad)
            + " (r1kit check --model ... reports the details)"
        )
    return stats


def run_check(
    rollout: Any,
    learner: LearnerGroup,
    tokenizer: Any,
    *,
    dtype: str = "float32",
    prompts: int = 16,
    samples: int = 4,
    max_tokens: int = 32,
    break_sync: tuple[str, ...] = (),
    folder: str | None = None,
    collective: bool = False,
) -> dict:
    """The parity report of ``rollout`` (a VLLMEngine actor) against ``learner``: see above.
    ``folder``: the sync goes through bucket files written there (shared memory) instead of
    Ray's object store; ``collective``: over a weight-sync group of rank 0 and the engine."""
    batch = probe_batch(rollout, tokenizer, prompts, samples, max_tokens, seed=0)
    sampled = _learner_vs(learner, batch, batch.rollout_logprobs)
    # old logprobs come from one forward over the batch, the update from training
    # micro-batches: same weights, other shapes; float noise may flip near-tied experts
    agreement = learner.routing_agreement(batch, micro_a=len(batch), micro_b=3)
    before = _learner_vs(learner, batch, _engine_scores(rollout, batch))

    # One large step (Adam moves every weight the batch reaches by ~lr, ~half an init std):
    # a family the sync leaves stale then costs far more than float noise.
    learner.configure_optimizer(1e-2)
    learner.sft_step(batch, lr=1e-2, micro_batch_size=64)
    t0 = time.time()
    if collective:
        host, port, backend = learner.weight_group_address()
        joined = rollout.join_weight_group.remote(host, port, 1, 2, backend)
        ray.get([learner.join_weight_group(host, port, 2), joined])
        t0 = time.time()  # the group forms once per run, not per sync
        layout = ray.get(learner.export_weights(exclude=break_sync, collective=True))
        ray.get([rollout.receive_weights.remote(layout), learner.send_weights()])
    else:
        blob = learner.export_weights(exclude=break_sync, folder=folder)
        ray.get(rollout.update_weights.remote(blob))
    sync_s = time.time() - t0
    after = _learner_vs(learner, batch, _engine_scores(rollout, batch))

    limits = THRESHOLDS[dtype]
    report = {
        "logprob_abs_diff": abs_diff_stats(sampled),
        "sync_added_error": max(0.0, float(after.mean() - before.mean())),
        "routing_agreement": agreement,
        "thresholds": limits,
        "teacher_forced_before_sync": abs_diff_stats(before),
        "teacher_forced_after_sync": abs_diff_stats(after),
        "tokens": int(sampled.numel()),
        "sync_seconds": round(sync_s, 3),
        "dtype": dtype,
        "transport": (
            "collective" if collective else "object_store" if folder is None else "shared_memory"
        ),
    }
    failures = [
        f"logprob |diff| {k} {report['logprob_abs_diff'][k]:.3g} > {limits[k]:g}"
        for k in ("mean", "p99", "max")
        if report["logprob_abs_diff"][k] > limits[k]
    ]
    if agreement is not None and agreement < limits["routing_agreement"]:
        failures.append(f"routing agreement {agreement:.4f} < {limits['routing_agreement']:g}")
    if report["sync_added_error"] > limits["sync_added_error"]:
        failures.append(
            f"the sync added {report['sync_added_error']:.3g} mean |diff| "
            f"(> {limits['sync_added_error']:g}): some weights did not reach the engine"
        )
    report["passed"] = not failures
    report["failures"] = failures
    return report


def check(
    model: str,
    out: Path,
    *,
    dtype: str = "float32",
    world_size: int = 2,
    break_sync: tuple[str, ...] = (),
    rollout: Any = None,
    transport: str = "auto",
) -> dict:
    """Start what the check needs (Ray, learner ranks, a vLLM worker), run it, write ``out``.
    ``transport``: how the checked sync travels (rollout.sync_transport's choices)."""
    import shutil

    from transformers import AutoTokenizer

    from rl.setup import sync_folder
    from rollouts import RolloutGroup

    with tempfile.TemporaryDirectory(prefix="r1kit-check-") as workdir:
        model_dir = resolve_model(model, Path(workdir))
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        group = None
        if rollout is None:
            group = RolloutGroup(str(model_dir), 1, dtype=dtype, max_model_len=128)
            rollout = group.workers[0]
        learner = LearnerGroup(str(model_dir), world_size, dtype=dtype)
        engine_node = rollout.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
        collective = transport == "collective"
        nodes = [learner.node_id(), ray.get(engine_node)]
        folder = None if collective else sync_folder(transport, nodes)
        try:
            if group is None:  # a shared engine may hold anything: give it this model's weights
                ray.get(rollout.update_weights.remote(learner.export_weights()))
            report = run_check(
                rollout,
                learner,
                tokenizer,
                dtype=dtype,
                break_sync=break_sync,
                folder=folder,
                collective=collective,
            )
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            learner.shutdown()
            if group is not None:
                group.shutdown()
    report["model"] = model
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report
