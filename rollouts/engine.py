"""A vLLM engine behind the small interface the trainer needs: sample groups, reload weights.

The engine takes prompts as token ids (no re-tokenization) and returns token ids, text,
per-token logprobs and finish reasons. New weights arrive as ``(name, tensor)`` pairs in
checkpoint naming and go through vLLM's own ``reload_weights``, which re-runs the loaders'
post-processing: on the CPU build this repacks Linear weights and recomputes MLA's absorbed
projections, so an in-place copy into parameters would leave the engine stale or fail.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from model.memory import kv_cache_bytes_per_token
from rollouts.tools import ToolSpec
from rollouts.types import Completion
from rollouts.vllm_cpu import CPU_FIXES

# Shipping the reload function to the engine process through collective_rpc pickles it.
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")


def _reload(worker, blob: bytes | str | list[tuple[str, torch.Tensor]]) -> int:
    """Runs inside vLLM's worker process: one bucket (a safetensors blob or file, or the
    ``(name, tensor)`` pairs a collective sync received) through vLLM's reload."""
    from safetensors.torch import load, load_file

    if isinstance(blob, list):
        named = dict(blob)
    else:
        named = load_file(blob) if isinstance(blob, str) else load(blob)
    model = worker.model_runner.get_model()
    mtp = _mtp_names(model.config, named)
    target = {k: v for k, v in named.items() if k not in mtp}
    if target:
        worker.model_runner.reload_weights(weights_iterator=iter(target.items()))
        _repack_cpu_experts(model, target)
        _retie_lm_head(model, target)
    _reload_draft(worker, mtp)
    return len(named)


def _mtp_names(config, named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``named`` that belong to MTP layers (``model.layers.{i}.*`` with
    i >= num_hidden_layers): the target model never loads them (one without a draft would
    fail on them), the draft does."""
    first = int(getattr(config, "num_hidden_layers", 0))
    return {
        k: v
        for k, v in named.items()
        if k.startswith("model.layers.") and int(k.split(".")[2]) >= first
    }


def _reload_draft(worker, mtp: Mapping[str, torch.Tensor]) -> int:
    """Runs inside vLLM's worker: give the speculative draft (the policy's MTP module) the
    MTP tensors of a sync (``_mtp_names``), through the same in-place reload and
    post-processing as the target (MLA's absorbed projections, the CPU expert prepack); the
    draft shares the target's embedding and head, which the target's reload already wrote.
    Returns tensors loaded."""
    from vllm.model_executor.model_loader.reload.inplace import reload_weights

    draft = worker.model_runner.get_draft_model()
    if draft is None or not mtp:
        return 0
    reload_weights(
        worker.model_runner.vllm_config, draft, iter(mtp.items()), None, is_checkpoint_format=True
    )
    _repack_cpu_experts(draft, mtp)
    return len(mtp)


def _retie_lm_head(model: torch.nn.Module, loaded: dict[str, torch.Tensor]) -> bool:
    """Give a tied output head the input embedding a reload just wrote.

    With tied embeddings the learner sends ``embed_tokens`` once (no ``lm_head.weight``).
    vLLM's reload then writes the embedding, but the head keeps what its kernel prepared at
    the first load (on CPU, a packed copy of the weight for its GEMM): the policy's logits
    would come from the old weights. The head is tied to the new embedding again and its
    kernel preparation re-run. Returns whether it did."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    if not any(name.endswith("embed_tokens.weight") for name in loaded):
        return False
    heads = [m for m in model.modules() if isinstance(m, ParallelLMHead)]
    embeddings = [
        m
        for m in model.modules()
        if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)
    ]
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    if len(heads) != 1 or len(embeddings) != 1 or not tied:
        return False
    head, embedding = heads[0], embeddings[0]
    head.weight = embedding.weight
    head.quant_method.process_weights_after_loading(head)
    return True


def _repack_cpu_experts(model: torch.nn.Module, loaded: dict[str, torch.Tensor]) -> int:
    """Re-run vLLM-CPU's expert prepacking on the MoE layers a reload just wrote.

    vLLM 0.32's CPU MoE kernel prepacks ``w13``/``w2`` into its grouped-GEMM layout on the
    first load only; on a reload it copies the *plain* new weights into the packed storage
    and skips the prepack, so every routed expert silently computes garbage. This writes
    the packed layout back in place (same shape, same storage).
    """
    try:
        from vllm._custom_ops import cpu_prepack_moe_weight
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    except ImportError:  # a GPU build: its kernels take the plain layout
        return 0
    reloaded = {_layer_of(name) for name in loaded if ".experts." in name}
    repacked = 0
    for module_name, module in model.named_modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        if not isinstance(experts, CPUUnquantizedExperts) or getattr(
            experts, "_use_zentorch", False
        ):
            continue
        if _layer_of(module_name) not in reloaded:  # (a draft's is layers.N.mtp_block.mlp)
            continue  # not in this sync: its storage is still packed
        for name in ("w13_weight", "w2_weight"):
            weight = getattr(module, name)
            weight.data.copy_(cpu_prepack_moe_weight(weight.data.clone(), experts.isa))
        repacked += 1
    return repacked


def _fingerprint(worker, draft: bool = False) -> dict[str, str]:  # runs in vLLM's worker
    import hashlib

    model = worker.model_runner.get_draft_model() if draft else worker.model_runner.get_model()
    if model is None:
        return {}
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return {
        name: hashlib.sha1(
            t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        ).hexdigest()
        for name, t in tensors.items()
    }


def pack_weights(named: Iterable[tuple[str, torch.Tensor]]) -> bytes:
    """Serialise ``(name, tensor)`` pairs into one safetensors blob (what a sync ships)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in named})


def _layer_of(name: str) -> str:
    """The unit a bucket never splits: ``model.layers.<i>`` (so all experts of a MoE layer,
    which vLLM-CPU repacks together after a reload, arrive together), or the tensor itself."""
    parts = name.split(".")
    return ".".join(parts[:3]) if parts[:2] == ["model", "layers"] else name


def pack_buckets(
    named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int, folder: str | None = None
) -> list[bytes] | list[str]:
    """Serialise ``(name, tensor)`` pairs into safetensors buckets of about ``bucket_bytes``
    each, cut only between layers (a layer larger than the bound is one bucket): blobs to ship
    through Ray's object store, or, with ``folder`` (on a tmpfs such as /dev/shm: memory, no
    disk), files written there whose paths an engine on the same machine reads."""
    buckets = split_buckets(named, bucket_bytes)
    if folder is None:
        return [pack_weights(bucket) for bucket in buckets]
    from safetensors.torch import save_file

    Path(folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for i, bucket in enumerate(buckets):
        path = str(Path(folder) / f"bucket-{i:04d}.safetensors")
        save_file({k: v.detach().contiguous() for k, v in bucket}, path)
        paths.append(path)
    return paths


def split_buckets(
    named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> list[list[tuple[str, torch.Tensor]]]:
    """``(name, tensor)`` pairs cut into buckets of about ``bucket_bytes``, only between
    layers (a layer larger than the bound is one bucket)."""
    buckets: list[list[tuple[str, torch.Tensor]]] = [[]]
    size, unit = 0, None
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if buckets[-1] and _layer_of(name) != unit and size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append((name, tensor))
        size, unit = size + nbytes, _layer_of(name)
    return [bucket for bucket in buckets if bucket]


def _sampled_logprobs(sample) -> list[float]:
    """The sampled token's logprob at each position of a ``logprobs=0``, flat-logprobs sample
    (the sampler puts the sampled token first at each position)."""
    flat = sample.logprobs
    picked = [flat.token_ids[s] for s in flat.start_indices]
    if picked != list(sample.token_ids):
        raise RuntimeError("vLLM's logprobs do not follow the sampled tokens")
    return [flat.logprobs[s] for s in flat.start_indices]


AUTO_KV_CAP_GIB = 1.0


def kv_cache_bytes(
    model_dir: str | Path,
    dtype: str,
    max_num_seqs: int,
    max_model_len: int,
    kv_cache_gib: float | None = None,
) -> int | None:
    """The engine's KV-cache size in bytes: ``kv_cache_gib`` when given; else, on CPU, what
    ``max_num_seqs`` sequences of ``max_model_len`` tokens take (model/memory.py), at most
    ``AUTO_KV_CAP_GIB``. vLLM-CPU touches its whole cache at start, so a fixed 1 GiB was
    1 GiB of resident memory per engine for a policy that needs 64 MiB. None on a GPU with
    no size given: vLLM sizes it from ``gpu_memory_utilization``."""
    if kv_cache_gib is not None:
        return int(kv_cache_gib * (1 << 30))
    if torch.cuda.is_available():
        return None
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if dtype == "auto":
        dtype = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    need = max_num_seqs * max_model_len * kv_cache_bytes_per_token(config, dtype)
    return min(need, int(AUTO_KV_CAP_GIB * (1 << 30)))


class VLLMEngine:
    """Owns one ``vllm.LLM``. Build it where it will live (a Ray actor, or a test process)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int = 256,
        max_num_seqs: int = 256,
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool = True,
        prefix_caching: bool = True,
        tensor_parallel_size: int = 1,
        speculative_tokens: int = 0,
        sleep_mode: bool = False,
    ) -> None:
        # vLLM-CPU's legacy variable (whole GiB) would override the size given below
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        from vllm import LLM  # heavy import, kept local so importing r1kit stays light

        kwargs: dict[str, Any] = {}
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            # an engine colocated with a learner rank frees its GPU memory while the rank
            # trains (sleep / wake_up); vLLM's sleep mode is CUDA-only (a no-op on CPU)
            kwargs["enable_sleep_mode"] = sleep_mode
        if tensor_parallel_size > 1:  # GPU only; one worker process per shard (not run here)
            kwargs.update(
                tensor_parallel_size=tensor_parallel_size, distributed_executor_backend="mp"
            )
        if speculative_tokens:  # the policy's own MTP module drafts (model/mtp.py)
            config = json.loads((Path(model_dir) / "config.json").read_text())
            if not config.get("num_nextn_predict_layers"):
                raise ValueError(
                    f"{model_dir}: speculative rollouts draft with the policy's MTP module, "
                    "and this checkpoint has none (num_nextn_predict_layers is 0)"
                )
            kwargs["speculative_config"] = {
                "method": "mtp",
                "num_speculative_tokens": speculative_tokens,
            }
            kwargs["disable_log_stats"] = False  # the acceptance counters
            if not torch.cuda.is_available():  # vLLM-CPU's sampling bug, verify-step speed
                kwargs["worker_extension_cls"] = CPU_FIXES
        kv_bytes = kv_cache_bytes(model_dir, dtype, max_num_seqs, max_model_len, kv_cache_gib)
        if kv_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = kv_bytes
        self.llm = LLM(
            model=str(model_dir),
            dtype=dtype,  # explicit: "auto" turns an fp32 checkpoint into bf16 on CPU
            seed=seed,
            enforce_eager=enforce_eager,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            # A group's G samples share their prompt's KV blocks: with SmolLM2, 16 prompts x 8
            # samples of ~20 tokens took 10-11 s instead of 17-18 s. A 32-token block (CPU
            # attention takes multiples of 32; its default 128 holds no short prompt whole)
            # makes short prompts count. vLLM-CPU turns both off for MLA itself.
            enable_prefix_caching=prefix_caching,
            **({"block_size": 32} if prefix_caching and not torch.cuda.is_available() else {}),
            # A prompt is prefilled in one step, never in chunks: vLLM discards the token it
            # samples after a partial prefill and then rewinds the request's seeded generator,
            # which a CPU generator cannot do ("CPU Generator does not use offset": seen with
            # SmolLM2, 32 prompts x 4 seeded samples). MLA on CPU has chunked prefill off anyway.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(max_model_len, 8192),
            # vLLM 0.32's CPU rotary kernel mis-rotates a 3-D (tokens, heads, dim) query with
            # more than one head; MLA passes exactly that (q_pe), so every trained MLA policy
            # samples from a wrong distribution. Its native (torch) rope is correct.
            compilation_config={"custom_ops": ["-rotary_embedding"]},
            # logprobs of the distribution sampled from (temperature applied), as the learner
            # computes them; vLLM's default is the raw, unscaled one
            logprobs_mode="processed_logprobs",
            **kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.weight_version = 0  # stamped on every completion; set by update_weights
        self._sleep_mode = sleep_mode and torch.cuda.is_available()
        self.asleep = False
        self._tool_pool = None  # threads that run tool calls, made on first use

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 64,
        seed: int | None = None,
        seed_offset: int = 0,
        stop_token_ids: Sequence[int] | None = None,
        tools: ToolSpec | None = None,
        rows: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[Completion]:
        """Sample ``n`` completions for each prompt (token ids). Greedy when temperature == 0.
        Sampling stops at the model's eos and at ``stop_token_ids`` (e.g. a chat template's
        end-of-turn token); the stop token is part of the completion's ``token_ids``.

        With ``tools``, each completion is a multi-turn episode (``rollouts.multiturn``): its
        environment gets the prompt's row from ``rows``; ``max_tokens`` bounds the whole
        completion, tool output included.

        Prompt ``i`` is sampled with seed ``seed + seed_offset + i``: a caller that splits one
        batch over several engines passes each chunk's start, so samples do not depend on the
        split. Returns ``len(prompts) * n`` completions, grouped by prompt in input order
        (``prompt_index`` counts from 0 within ``prompts``).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if tools is not None:
            episodes = self._episodes(
                prompts,
                n,
                tools,
                rows,
                temperature,
                top_p,
                max_tokens,
                stop_token_ids,
                None if seed is None else [seed + seed_offset + i for i in range(len(prompts))],
            )
            for c in episodes:
                c.weight_version = self.weight_version
            return episodes
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                logprobs=0,  # the sampled token's logprob only
                flat_logprobs=True,  # in flat lists, not a dict per token
                # texts are decoded once below: vLLM's incremental per-step detokenization
                # (and the decoded string it attaches to every logprob) cost ~5-10% of a step
                detokenize=False,
                stop_token_ids=list(stop_token_ids or []),
                seed=None if seed is None else seed + seed_offset + i,  # reproducible
            )
            for i in range(len(prompts))
        ]
        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        samples = [(i, c) for i, out in enumerate(outputs) for c in out.outputs]
        texts = self.tokenizer.batch_decode(
            [c.token_ids for _, c in samples], skip_special_tokens=True
        )
        return [
            Completion(
                i,
                list(c.token_ids),
                text,
                _sampled_logprobs(c),
                c.finish_reason or "stop",
                weight_version=self.weight_version,
            )
            for (i, c), text in zip(samples, texts, strict=True)
        ]

    def _episodes(
        self,
        prompts: Sequence[Sequence[int]],
        n: int,
        spec: ToolSpec,
        rows: Sequence[Mapping[str, Any]] | None,
        temperature: float,
        top_p: float,
        max_tokens: int,
        stop_token_ids: Sequence[int] | None,
        seeds: list[int] | None,
    ) -> list[Completion]:
        import concurrent.futures

        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from rollouts.multiturn import ToolTurn, run_episodes
        from rollouts.tools import make_environment

        if self._tool_pool is None:
            self._tool_pool = concurrent.futures.ThreadPoolExecutor(spec.workers)
        stops = list(stop_token_ids or [])
        tool_turn = None
        if getattr(make_environment(spec), "observation_format", "inline") != "inline":
            if not stops:
                raise ValueError("tool messages need the chat template's end-of-turn token")
            tool_turn = ToolTurn(self.tokenizer, stops[0])

        def sampling(max_tokens: int, stop: list[str], seed: int | None) -> SamplingParams:
            return SamplingParams(
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                logprobs=0,
                flat_logprobs=True,
                detokenize=bool(stop),  # stop strings are matched on the decoded text
                stop=stop or None,
                include_stop_str_in_output=True,
                stop_token_ids=stops,
                seed=seed,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )

        return run_episodes(
            self.llm.llm_engine,
            self.tokenizer,
            prompts,
            n=n,
            spec=spec,
            sampling=sampling,
            max_tokens=max_tokens,
            # episode j of prompt i: seeds[i] * 65_537 + j (distinct for any n < 65_537)
            seeds=[None] * len(prompts) if seeds is None else [s * 65_537 for s in seeds],
            rows=rows,
            tool_turn=tool_turn,
            pool=self._tool_pool,
        )

    def score(
        self, sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int]
    ) -> list[list[float]]:
        """Teacher-forced logprobs of each sequence's tokens after its first ``prompt_len``
        tokens, as the engine computes them (prefill path)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0)
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params, use_tqdm=False
        )
        return [
            [step[tok].logprob for step, tok in zip(out.prompt_logprobs[p:], seq[p:], strict=True)]
            for out, seq, p in zip(outs, sequences, prompt_lens, strict=True)
        ]

    def update_weights(
        self, blobs: bytes | str | Sequence[bytes] | Sequence[str], version: int | None = None
    ) -> int:
        """Load new weights in place from ``pack_weights`` / ``pack_buckets`` blobs or bucket
        files (checkpoint names, any subset of the model's tensors), one bucket at a time;
        returns the number of tensors loaded. ``version`` labels the weights held from now on
        (stamped on completions); no blobs with a version relabels unchanged weights."""
        if version is not None:
            self.weight_version = version
        if isinstance(blobs, bytes | str):
            blobs = [blobs]
        if not blobs:
            return 0
        loaded = sum(sum(self.llm.collective_rpc(_reload, args=(blob,))) for blob in blobs)
        # cached prompt KV blocks were computed by the old weights: never reuse them
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM kept its prefix cache after a weight update")
        return loaded

    def load_weights(
        self, named: Sequence[tuple[str, torch.Tensor]], version: int | None = None
    ) -> int:
        """Load ``(name, tensor)`` pairs in checkpoint naming that are already in this process
        (an engine colocated with its learner rank: no serialization, no copy on the way);
        as ``update_weights``."""
        if version is not None:
            self.weight_version = version
        if not named:
            return 0
        loaded = sum(self.llm.collective_rpc(_reload, args=(list(named),)))
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM kept its prefix cache after a weight update")
        return loaded

    def sleep(self) -> bool:
        """Free the engine's GPU memory while its device trains (vLLM's sleep mode, level 1:
        the KV cache dropped, the weights moved to host memory). Whether it slept: only a
        CUDA engine built with ``sleep_mode`` does; elsewhere nothing changes."""
        if not self._sleep_mode:
            return False
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True
        return True

    def wake_up(self) -> None:
        """Undo ``sleep`` (weights back on the GPU, a fresh KV cache); a no-op when awake."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def join_weight_group(
        self, host: str, port: int, rank: int, world_size: int, backend: str = "gloo"
    ) -> None:
        """Become member ``rank`` of the weight-sync group (rollouts/weight_transfer.py);
        returns once every member has joined."""
        from rollouts.weight_transfer import WeightGroup

        self._weight_group = WeightGroup(host, port, rank, world_size, backend)

    def receive_weights(self, buckets: Sequence[Sequence[Any]], version: int | None = None) -> int:
        """Receive a sync the learner's rank 0 broadcasts over the weight-sync group: one
        flat buffer per bucket (``buckets``: its ``TensorMeta`` rows), each reloaded as soon as
        it arrives (one bucket beyond the model held at a time); as ``update_weights``."""
        from rollouts.weight_transfer import bucket_bytes, unflatten

        group = getattr(self, "_weight_group", None)
        if group is None:
            raise RuntimeError("receive_weights before join_weight_group")
        loaded = 0
        try:
            for metas in buckets:
                buffer = torch.empty(bucket_bytes(metas), dtype=torch.uint8, device=group.device)
                named = unflatten(group.broadcast(buffer), metas)
                loaded += sum(self.llm.collective_rpc(_reload, args=(named,)))
        except Exception:  # a member died: leave (the others fail now, not at the timeout)
            group.close()
            self._weight_group = None
            raise
        self.weight_version = self.weight_version if version is None else version
        if buckets and not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM kept its prefix cache after a weight update")
        return loaded

    def speculative_counts(self) -> dict[str, int]:
        """vLLM's speculative-decoding counters since the engine started: ``drafts`` (verify
        steps), ``draft_tokens`` proposed, ``accepted`` of them; {} without a draft."""
        names = {
            "vllm:spec_decode_num_drafts": "drafts",
            "vllm:spec_decode_num_draft_tokens": "draft_tokens",
            "vllm:spec_decode_num_accepted_tokens": "accepted",
        }
        counts: dict[str, int] = {}
        for metric in self.llm.get_metrics() if self.llm.llm_engine.log_stats else []:
            if metric.name in names:
                key = names[metric.name]
                counts[key] = counts.get(key, 0) + int(metric.value)
        return counts

    def fingerprint(self, draft: bool = False) -> dict[str, str]:
        """A hash of every tensor the engine computes with (in its own, e.g. prepacked,
        layout): equal fingerprints mean bit-identical weights. ``draft``: the speculative
        draft's ({} without one; it shares the target's embedding and head)."""
        return self.llm.collective_rpc(_fingerprint, args=(draft,))[0]

    def cache_info(self) -> dict[str, int]:
        """The KV cache vLLM allocated: bytes asked for, blocks, tokens per block, tokens."""
        cache = self.llm.llm_engine.vllm_config.cache_config
        return {
            "kv_cache_bytes": int(cache.kv_cache_memory_bytes or 0),
            "num_blocks": int(cache.num_gpu_blocks),
            "block_size": int(cache.block_size),
            "tokens": int(cache.num_gpu_blocks) * int(cache.block_size),
        }
