"""``r1kit plan``: will a model fit a GRPO run, on how many GPUs, in which layout.

``resolve_config`` reads a config.json (a file, a model folder, or a shipped name:
rl/plan/configs/), ``rl.plan.estimate.plan`` answers, ``report`` says it in words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rl.errors import ConfigError

CONFIGS = Path(__file__).parent / "configs"


def shipped() -> list[str]:
    """The model names ``--model`` resolves to shipped configs."""
    return sorted(p.stem for p in CONFIGS.glob("*.json"))


def resolve_config(model: str) -> dict[str, Any]:
    """The config.json of ``model``: a shipped name, a config file, or a model folder."""
    path = CONFIGS / f"{model.lower()}.json"
    if not path.is_file():
        path = Path(model)
        if path.is_dir():
            path = path / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"--model {model!r}: no config.json there and no shipped config of that name "
            f"(shipped: {', '.join(shipped())})"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON ({e})") from None
    inner = config.get("text_config") or config
    missing = [k for k in ("hidden_size", "num_hidden_layers", "vocab_size") if k not in inner]
    if missing:
        raise ConfigError(f"{path}: not a causal LM config.json (no {', '.join(missing)})")
    return config


def report(result: dict[str, Any], model: str) -> str:
    """The plan in a few lines."""
    p, gpu = result["params"], result["gpu"]
    lines = [
        f"{model}: {p['total'] / 1e9:.1f}B parameters ({p['active'] / 1e9:.1f}B active per "
        f"token, MTP {p['mtp'] / 1e9:.1f}B), KV cache {result['kv_cache_bytes_per_token']:,} "
        f"B/token in bf16",
        f"on {result['gpus']} x {gpu['name']} ({gpu['memory_gib']:g} GiB): "
        + ("FITS" if result["fits"] else "does not fit"),
    ]
    if "layout" in result:
        lay = result["layout"]
        learner, engine = result["per_gpu_gib"]["learner"], result["per_gpu_gib"]["engine"]
        lines += [
            f"  layout: {lay['learner_gpus']} learner GPU(s) (FSDP2"
            f"{', optimizer offloaded to host' if lay['offload'] else ''}), {lay['engines']} "
            f"engine(s) x "
            + (
                f"EP{lay['engine_ep']} (experts spread, attention data-parallel)"
                if lay.get("engine_ep", 1) > 1
                else f"TP{lay['engine_tp']}"
            ),
            f"  learner per GPU {learner['total']:.1f} GiB: "
            + ", ".join(f"{k} {v:.1f}" for k, v in learner.items() if k != "total"),
            f"  engine per GPU: weights {engine['weights']:.1f} GiB, KV cache "
            f"{engine['kv_cache']:.1f} GiB ({engine['kv_gib_per_sequence']:.2f} GiB per "
            f"sequence); {result['rollout']['sequences_in_flight']} sequences in flight for "
            f"{result['rollout']['samples_per_step']} samples per step",
            f"  host RAM on rank 0's node {result['host_ram_gib']['rank0_node']:.0f} GiB; sync "
            f"{result['sync']['bytes'] / 1e9:.0f} GB, {result['sync']['seconds']:g} s per step; "
            f"learner compute ~{result['learner_seconds']:g} s per step at MFU "
            f"{result['shape']['mfu']:g}",
            f"  generation ~{result['rollout_seconds']:g} s per step "
            f"({result['rollout']['decode_steps']} decode steps of "
            f"{result['rollout']['decode_step_ms']:g} ms, at verl's measured share of the "
            f"roofline); step ~{result['step_seconds']:g} s",
        ]
    if not result["fits"]:
        lines.append(f"  why: {result['why']}")
    for need in result.get("r1kit_needs", []):
        lines.append(f"  r1kit would need {need}")
    smallest = result.get("smallest_cluster")
    lines.append(
        f"  smallest cluster that fits: {smallest} x {gpu['name']}"
        if smallest
        else "  no cluster up to 4096 GPUs fits as r1kit runs today"
    )
    return "\n".join(lines)
