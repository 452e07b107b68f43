"""Two fixes r1kit applies to vLLM 0.32's CPU build for speculative rollouts (MTP drafts), inside
the engine's worker process.

``VLLMEngine(speculative_tokens=k)`` on a CPU passes ``worker_extension_cls=CPU_FIXES``: vLLM
imports ``rollouts/vllm_cpu_worker.py`` in each worker process before it builds the worker (and
so before the attention backends), and that import calls ``apply()`` there. Nothing changes on
a GPU, nor in any other process.

1. **Sampling** (a correctness bug): the rejection sampler expands each request's temperature,
   top-k and top-p over its draft tokens with a CPU replacement of a Triton kernel
   (``vllm/utils/cpu_triton_utils.py: _expand_kernel_impl``) that hands ``_ensure_int64``
   copies of its tensors to the C++ kernel and never copies the result back: for a float
   tensor (temperature, top-p) the expansion stays uninitialised memory, and every sampled
   request verifies its draft against logits divided by garbage. Seen on the demo's trained
   policy with an MTP draft at temperature 0.7: acceptance 11% (the learner expected 56%), NaN
   logprobs, completions full of <bos> and <pad>; greedy requests (no expansion) were exact.
   Replaced by the same expansion in torch (``expand_batch_to_tokens``).

2. **Verify speed**: CPU MLA's metadata builder takes one query token per decode request
   (``QueryLenSupport.SINGLE_ONLY``), so each verify step (1 + k tokens per request) went
   through the prefill-with-context path: per request, the context gathered from the KV cache,
   attention by SDPA in chunks merged through logsumexp, in Python (the profile of a verify
   step: ~840 bmm, ~820 logsumexp and ~220 triu calls per MLA layer call, 82 ms against 2.3 ms
   for a decode step's ``mla_decode_kvcache``). Its decode kernel reads one query row against
   a block table and a sequence length, so a request's 1 + k query tokens are 1 + k rows with
   the same block table and the lengths ``L - q + 1 .. L``: causal attention over the cache,
   the verify tokens' own KV written before (``_multi_token_decode``). The builder then counts
   requests of up to 1 + k tokens as decodes (``QueryLenSupport.VARLEN``).
"""

from __future__ import annotations

import copy

import torch

CPU_FIXES = "rollouts.vllm_cpu_worker.CPUSpeculativeFixes"


def expand_batch_to_tokens(
    x: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    num_tokens: int,
    replace_from: int = 0,
    replace_to: int = 0,
) -> torch.Tensor:
    """vLLM's ``rejection_sampler.expand_batch_to_tokens`` (each request's value repeated
    over its draft tokens, ``replace_from`` turned into ``replace_to``) in plain torch."""
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    out = torch.repeat_interleave(x, counts, output_size=num_tokens)
    if replace_from != replace_to:
        out = torch.where(out == replace_from, torch.full_like(out, replace_to), out)
    return out


def decode_rows(
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query token of the decode requests: its request's block table and the sequence
    length it attends to (causal). Request r has ``q_r`` query tokens, the last ``q_r`` of its
    ``seq_lens[r]`` tokens; its token i (0-based) sees ``seq_lens[r] - q_r + 1 + i`` tokens.
    ``query_start_loc``: (R + 1,) offsets of the requests' tokens; returns (N, blocks), (N,)."""
    starts = query_start_loc.long()
    q_lens = starts[1:] - starts[:-1]  # (R,)
    n = int(starts[-1] - starts[0])
    request = torch.repeat_interleave(torch.arange(len(q_lens)), q_lens, output_size=n)  # (N,)
    position = torch.arange(n) + starts[0] - starts[request]  # (N,) index within its request
    lens = seq_lens.long()[request] - q_lens[request] + 1 + position
    return block_table[request], lens.to(torch.int32)


def _fix_sampling() -> None:
    import vllm.v1.sample.rejection_sampler as rejection_sampler

    rejection_sampler.expand_batch_to_tokens = expand_batch_to_tokens


def _multi_token_decode() -> None:
    from vllm.model_executor.layers.attention.mla_attention import (
        MLACommonMetadataBuilder,
        QueryLenSupport,
    )
    from vllm.v1.attention.backends.mla import cpu_mla

    class Builder(MLACommonMetadataBuilder):
        query_len_support = QueryLenSupport.VARLEN

    single_token = cpu_mla.CPUMLAImpl.forward_mqa

    def forward_mqa(self, q, kv_c_and_k_pe_cache, attn_metadata, layer):
        """vLLM's own decode, on one row per query token (``decode_rows``)."""
        n_decodes = attn_metadata.num_decodes
        if attn_metadata.num_decode_tokens != n_decodes:  # verify steps: 1 + k tokens each
            decode = copy.copy(attn_metadata.decode)
            decode.block_table, decode.seq_lens = decode_rows(
                attn_metadata.query_start_loc[: n_decodes + 1].cpu(),
                decode.seq_lens.cpu(),
                decode.block_table,
            )
            attn_metadata = copy.copy(attn_metadata)
            attn_metadata.decode = decode
        return single_token(self, q, kv_c_and_k_pe_cache, attn_metadata, layer)

    cpu_mla.CPUMLABackend.get_builder_cls = staticmethod(lambda: Builder)
    cpu_mla.CPUMLAImpl.forward_mqa = forward_mqa


def apply() -> bool:
    """Apply both fixes in this process (once); False where the platform is not the CPU."""
    global _applied
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    if not _applied:
        _fix_sampling()
        _multi_token_decode()
        _applied = True
    return True


_applied = False
